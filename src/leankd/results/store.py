"""Run rows in one SQLite file (WAL mode): metrics, cost ledger and provenance of every run.

Usage::

    from leankd.results.store import ResultsStore
    store = ResultsStore("runs/results.db")          # creates runs/ and the schema if missing
    row_id = store.insert({"experiment": "cifar-demo", "config_hash": "ab12", "role": "student",
                           "arm": "kd", "seed": 0, "metrics": {"accuracy": 0.81}, "train_s": 41.2, ...})
    done = store.find("cifar-demo", "ab12", "kd", 0)  # latest matching row or None: skip finished work
    rows = store.rows("cifar-demo")                   # list of dicts, JSON columns decoded, by id
    store.claim("cifar-demo", "ab12", "kd", 0)        # None: this process runs it; else the live holder's pid
    store.record_failure("cifar-demo", "ab12", "kd", 0, "student", "loss became nan ... step 3")

Each ``insert`` is its own committed transaction, so a crash later loses no finished run. Every
method opens a short-lived connection, so several processes may share the file (WAL lets readers
run while one writer commits). Rows are append-only: a re-run adds a row, ``find`` returns the latest.
A file is read read-only before anything is written to it; a busy, full or damaged one is one line (DataError).

Schema of table ``runs`` (one row per trained model: the teacher once, each arm x seed once).
Absent figures are NULL, never 0. Seconds are wall-clock seconds with the device synchronised.

| column | type | unit / meaning |
|---|---|---|
| `id` | INTEGER | primary key, increases with insertion order |
| `experiment` | TEXT | experiment name (the config's name) |
| `config_hash` | TEXT | the row's identity: settings, data files, teacher weights (teacher rows: the teacher key) |
| `role` | TEXT | `teacher` or `student` |
| `arm` | TEXT | arm name (`plain`, `kd`, ...); `teacher` for the teacher row |
| `seed` | INTEGER | random seed of the run |
| `model` | TEXT | model name (registry name or Hugging Face name/path) |
| `task` | TEXT | task / data set (e.g. `cifar10`, `sst2`) |
| `split` | TEXT | split the metrics were computed on (`test` for CIFAR-10, `dev` for GLUE) |
| `metrics` | TEXT (JSON) | metric name -> value, fractions not percent (`accuracy`, `macro_f1`, `agreement`, ...) |
| `train_s` | REAL | s, the arm's whole training step loop; evaluation, checkpointing, warm-up excluded |
| `teacher_s` | REAL | s, teacher work of this arm (online: part of `train_s`; cached: its share of the cache build) |
| `cache_share_s` | REAL | s, the teacher cache build's seconds / the rows of its experiment that read it; 0 online |
| `total_s` | REAL | s, `train_s + cache_share_s + ranking_share_s`: the time compared across arms |
| `ranking_share_s` | REAL | s, the layer ranking's seconds / the rows of its experiment that read it; 0 otherwise |
| `ranking_share_flops` | INTEGER | FLOP, the layer ranking's FLOPs charged to this row (shared as `ranking_share_s`) |
| `lost_s` | REAL | s, training redone after a crash (progress lost since the checkpoint); not in `total_s` |
| `train_flops` | INTEGER | FLOP, of training incl. online teacher forwards, counted over the actual batch shapes |
| `cache_share_flops` | INTEGER | FLOP, the cache build's FLOPs charged to this job (shared as `cache_share_s`) |
| `total_flops` | INTEGER | FLOP, `train_flops + cache_share_flops + ranking_share_flops`: compared across arms |
| `infer_batch_size` | INTEGER | batch size of `infer_ms_p50` / `infer_ms_p90` (the training batch size) |
| `infer_ms_p50` | REAL | ms per batch, median over >= 20 batches after warm-up, at `infer_batch_size` |
| `infer_ms_p90` | REAL | ms per batch, 90th percentile, at `infer_batch_size` |
| `infer_ms_p50_b1` | REAL | ms per batch, median, at batch size 1 |
| `infer_ms_p90_b1` | REAL | ms per batch, 90th percentile, at batch size 1 |
| `peak_mem_mb` | REAL | MiB, peak memory of this run alone |
| `peak_mem_source` | TEXT | how the peak was read (`leankd.metering.ledger.PEAK_MEM_SOURCES`) |
| `energy_j` | REAL | J, energy of training; NULL when unavailable |
| `energy_source` | TEXT | `nvml`, `rapl` or `unavailable` (`leankd.metering.ledger.ENERGY_SOURCES`) |
| `params` | INTEGER | parameter count of the model |
| `size_mb` | REAL | MiB, size of the saved weights |
| `extra` | TEXT (JSON) | arm settings, losses, precision, val metrics, checkpoint; feature arms: layer pairs, ranking |
| `sources` | TEXT (JSON) | cost figure -> where it came from (timer, counter, sharing rule) |
| `provenance` | TEXT (JSON) | resolved config, git commit, code hash, library versions, device, threads, seed, times |
| `started_at` | TEXT | ISO-8601 time the run started |
| `ended_at` | TEXT | ISO-8601 time the run ended |

Tables ``resources`` (resource, kind, experiment, seconds, flops: a teacher cache build or a layer ranking) and
``reads`` (run_id, resource): which rows read which shared cost. A row's share is recomputed, in one transaction,
whenever a reader joins (``recharge``): the charged shares always sum to the build's cost.

Table ``meta`` (key, value) holds ``schema_version``; a file with another version is refused.
The same table is in docs/results-schema.md.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import sqlite3
import time
from contextlib import closing, contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

from leankd.errors import DataError, write_failed
from leankd.locks import pid_alive
from leankd.results.wal import to_wal

SCHEMA_VERSION = 5
IDENTITY_VERSION = 2  # the rule of a student row's config_hash (leankd.experiment.identity); in extra.identity_version

# (name, SQL type) in table order; `id` is added by the schema. Single source for schema and checks.
COLUMNS: tuple[tuple[str, str], ...] = (
    ("experiment", "TEXT NOT NULL"),
    ("config_hash", "TEXT"),
    ("role", "TEXT NOT NULL"),
    ("arm", "TEXT NOT NULL"),
    ("seed", "INTEGER"),
    ("model", "TEXT"),
    ("task", "TEXT"),
    ("split", "TEXT"),
    ("metrics", "TEXT"),
    ("train_s", "REAL"),
    ("teacher_s", "REAL"),
    ("cache_share_s", "REAL"),
    ("total_s", "REAL"),
    ("ranking_share_s", "REAL"),
    ("lost_s", "REAL"),
    ("cache_share_flops", "INTEGER"),
    ("ranking_share_flops", "INTEGER"),
    ("total_flops", "INTEGER"),
    ("train_flops", "INTEGER"),
    ("infer_batch_size", "INTEGER"),
    ("infer_ms_p50", "REAL"),
    ("infer_ms_p90", "REAL"),
    ("infer_ms_p50_b1", "REAL"),
    ("infer_ms_p90_b1", "REAL"),
    ("peak_mem_mb", "REAL"),
    ("peak_mem_source", "TEXT"),
    ("energy_j", "REAL"),
    ("energy_source", "TEXT"),
    ("params", "INTEGER"),
    ("size_mb", "REAL"),
    ("extra", "TEXT"),
    ("provenance", "TEXT"),
    ("sources", "TEXT"),
    ("started_at", "TEXT"),
    ("ended_at", "TEXT"),
)
COLUMN_NAMES: tuple[str, ...] = tuple(name for name, _ in COLUMNS)
JSON_COLUMNS = frozenset({"metrics", "extra", "provenance", "sources"})
# Versions: 1 (first), 2 (+ ranking_share_s, sources), 3 (+ cache_share_flops, total_flops), 4 (+ lost_s;
# tables claims and failures; unique row key), 5 (+ ranking_share_flops; tables resources and reads). Older files are
# migrated in place by adding the missing columns.
ROLES = ("teacher", "student")
KEY_SQL = "experiment TEXT NOT NULL, config_hash TEXT, arm TEXT NOT NULL, seed INTEGER"
STALE_S = 120.0  # a claim from another host with no heartbeat for this long is dead
BUSY_TIMEOUT_S = 30.0  # how long an access waits for another process's transaction before the store is called busy
TABLES = ("meta", "runs", "claims", "failures", "resources", "reads")
log = logging.getLogger(__name__)


def _alive(pid: int, host: str, heartbeat: float) -> bool:
    if host != socket.gethostname():
        return time.time() - heartbeat < STALE_S
    return pid_alive(pid)


def _to_sql(column: str, value: Any) -> Any:
    """Encode one value for its column: JSON columns as text, numpy/torch scalars as Python numbers."""
    if value is None:
        return None
    if column in JSON_COLUMNS:
        if isinstance(value, str):
            json.loads(value)  # already JSON text: refuse it now rather than fail on read
            return value
        # default=str keeps Paths, datetimes and dtypes readable instead of failing the whole run
        return json.dumps(value, sort_keys=True, default=str)
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return value.item()  # numpy / 0-d torch scalar: sqlite3 only binds Python types
    return value


class ResultsStore:
    """Append-only store of run rows in one SQLite file; see the module docstring for the schema."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            if not self._current():  # read-only first: a file that is not a store of this leankd is left unchanged
                self._open()
            with self._db() as conn:  # a writer stuck in a transaction: busy now, not after the first job
                conn.execute("BEGIN IMMEDIATE")
        except sqlite3.DatabaseError as err:  # garbage bytes, a truncated file: refuse it, never overwrite it
            raise self._refusal(err) or self._foreign(str(err)) from None

    def _foreign(self, why: str) -> DataError:
        return DataError(f"data error: '{self.path}' is not a leankd results store ({why}); move it aside or use "
                         "another --out")

    def _refusal(self, err: sqlite3.Error) -> DataError | None:
        """One line for an error of the file itself (busy, its disk full, damaged), None for any other."""
        name = getattr(err, "sqlite_errorname", "") or ""
        if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
            return DataError(f"data error: '{self.path}' is busy: another process held a transaction on it for "
                             f"{BUSY_TIMEOUT_S:g} s; let it finish (or stop it), then rerun: the store is intact")
        if name == "SQLITE_FULL" or (name.startswith("SQLITE_IOERR") and "READ" not in name):
            return DataError(write_failed(self.path, str(err)))
        if name in ("SQLITE_NOTADB", "SQLITE_CORRUPT"):
            return self._foreign(str(err))
        return None

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        """A short-lived connection, its statements one transaction (committed at the end); a busy, full or damaged
        file as one line."""
        try:
            with closing(self._connect()) as conn, conn:
                yield conn
        except sqlite3.DatabaseError as err:
            raise self._refusal(err) or err from None

    def _current(self) -> bool:
        """Whether the file is a store of this version, read without writing: False for a new (absent or empty) file
        or an older version (`_open` creates or migrates it); another program's file or a newer store is refused."""
        if not self.path.is_file() or self.path.stat().st_size == 0:
            return False
        uri = f"{self.path.resolve().as_uri()}?mode=ro"
        with closing(sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S)) as conn:
            names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
            found = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() \
                if "meta" in names else None
            wal = conn.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"
        if not names:
            return False
        if found is None or not str(found[0]).isdigit() or "runs" not in names:
            raise self._foreign(f"it holds {', '.join(sorted(n for n in names if not n.startswith('sqlite_')))} and "
                                "no leankd schema version")
        if int(found[0]) > SCHEMA_VERSION:
            raise DataError(f"data error: '{self.path}' has results schema version {found[0]}, this leankd reads "
                            f"version {SCHEMA_VERSION}; use another --out or a leankd that reads it")
        return int(found[0]) == SCHEMA_VERSION and wal and {*TABLES, "runs_key", "runs_lookup"} <= names

    def _open(self) -> None:
        cols = ",\n  ".join(f"{name} {sqltype}" for name, sqltype in COLUMNS)
        with closing(self._connect()) as conn, conn:
            mode = to_wal(conn, BUSY_TIMEOUT_S)  # a property of the file: set once, on for every later connection
            if mode.lower() != "wal":
                raise RuntimeError(f"{self.path}: could not switch SQLite to WAL mode (got {mode!r})")
            conn.execute("BEGIN IMMEDIATE")  # one transaction: a run opening it at once never sees half a schema
            conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            conn.execute(f"CREATE TABLE IF NOT EXISTS runs (\n  id INTEGER PRIMARY KEY,\n  {cols}\n)")
            conn.execute("CREATE INDEX IF NOT EXISTS runs_lookup "
                         "ON runs (experiment, config_hash, arm, seed)")
            conn.execute(f"CREATE TABLE IF NOT EXISTS claims ({KEY_SQL}, pid INTEGER NOT NULL, host TEXT NOT NULL, "
                         "heartbeat REAL NOT NULL, PRIMARY KEY (experiment, config_hash, arm, seed))")
            conn.execute(f"CREATE TABLE IF NOT EXISTS failures (id INTEGER PRIMARY KEY, {KEY_SQL}, role TEXT, "
                         "error TEXT NOT NULL, at TEXT NOT NULL)")
            conn.execute("CREATE TABLE IF NOT EXISTS resources (resource TEXT PRIMARY KEY, kind TEXT NOT NULL, "
                         "experiment TEXT, seconds REAL, flops INTEGER)")
            conn.execute("CREATE TABLE IF NOT EXISTS reads (run_id INTEGER NOT NULL, resource TEXT NOT NULL, "
                         "PRIMARY KEY (run_id, resource))")
            conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)",
                         (str(SCHEMA_VERSION),))
            found = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]
            if int(found) < SCHEMA_VERSION:  # older files gain the newer columns; their old rows read NULL there
                have = {r[1] for r in conn.execute("PRAGMA table_info(runs)")}
                for name, sqltype in COLUMNS:
                    if name not in have:
                        conn.execute(f"ALTER TABLE runs ADD COLUMN {name} {sqltype}")
                conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))
        self._unique_key()  # (a newer version was refused by `_current`, before any write)

    def _unique_key(self) -> None:
        """One row per (experiment, identity, arm, seed): a unique index (NULL identities, rows of a caller's own
        modules, never collide). A file migrated with duplicates already in it keeps them, and a warning."""
        try:
            with closing(self._connect()) as conn, conn:
                conn.execute("CREATE UNIQUE INDEX IF NOT EXISTS runs_key ON runs (experiment, config_hash, arm, seed)")
        except sqlite3.IntegrityError:
            log.warning("%s holds duplicate rows from an older leankd; new duplicates are still prevented by "
                        "claims", self.path)

    def _connect(self) -> sqlite3.Connection:
        # timeout: wait for another process's write instead of failing with "database is locked"
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S)
        conn.row_factory = sqlite3.Row
        return conn

    def insert(self, row: dict[str, Any], reads: list[dict] = ()) -> int | None:
        """Add one run row (keys = column names, minus `id`), commit it, return its id; None (nothing written)
        when a row with the same (experiment, config_hash, arm, seed) is already there. `reads`: the shared costs
        the row read ({"resource", "kind", "experiment", "seconds", "flops"}), recorded in the same transaction
        (then call `recharge` for each)."""
        unknown = sorted(set(row) - set(COLUMN_NAMES))
        if unknown:
            raise ValueError(f"unknown results column(s) {unknown}; known columns: {list(COLUMN_NAMES)}")
        missing = [c for c in ("experiment", "role", "arm") if row.get(c) is None]
        if missing:
            raise ValueError(f"results row lacks required column(s) {missing}")
        if row["role"] not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {row['role']!r}")
        names = [c for c in COLUMN_NAMES if c in row]
        values = [_to_sql(c, row[c]) for c in names]
        sql = (f"INSERT INTO runs ({', '.join(names)}) VALUES ({', '.join('?' * len(names))}) "
               "ON CONFLICT DO NOTHING")
        with self._db() as conn:  # `with conn` commits: one transaction per row
            cur = conn.execute(sql, values)
            if not cur.rowcount:
                return None
            run_id = int(cur.lastrowid)
            for r in reads:
                conn.execute("INSERT OR IGNORE INTO resources VALUES (?, ?, ?, ?, ?)",
                             (r["resource"], r["kind"], r["experiment"], r["seconds"], r["flops"]))
                conn.execute("INSERT OR IGNORE INTO reads VALUES (?, ?)", (run_id, r["resource"]))
            return run_id

    def recharge(self, resource: str, charge: Callable[[dict, list[dict]], dict[int, dict]]) -> None:
        """Recompute the shares of `resource`: `charge(resource row, its readers of the experiment it was made for,
        by id)` -> {run id: column -> new value}, read and written in one IMMEDIATE transaction, so concurrent
        readers joining never leave a stale share behind."""
        with self._db() as conn:
            conn.execute("BEGIN IMMEDIATE")
            res = conn.execute("SELECT * FROM resources WHERE resource = ?", (resource,)).fetchone()
            if res is None:
                return
            readers = [self._decode(r) for r in conn.execute(
                "SELECT runs.* FROM runs JOIN reads ON reads.run_id = runs.id WHERE reads.resource = ? AND "
                "runs.experiment IS ? ORDER BY runs.id", (resource, res["experiment"]))]
            for run_id, cols in charge(dict(res), readers).items():
                names = list(cols)
                conn.execute(f"UPDATE runs SET {', '.join(f'{c} = ?' for c in names)} WHERE id = ?",
                             [_to_sql(c, cols[c]) for c in names] + [run_id])

    def reads(self) -> list[dict[str, Any]]:
        """Every (row, shared cost) read, with the cost: run_id, resource, kind, experiment, seconds, flops."""
        with self._db() as conn:
            return [dict(r) for r in conn.execute(
                "SELECT reads.run_id, resources.* FROM reads JOIN resources USING (resource) ORDER BY run_id")]

    def get(self, run_id: int) -> dict[str, Any] | None:
        with self._db() as conn:
            r = conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        return None if r is None else self._decode(r)

    # ---------------------------------------------------------------- claims: one process per job at a time

    def claim(self, experiment: str, config_hash: str | None, arm: str, seed: int | None) -> int | None:
        """Claim a job for this process: None when done, or the pid of the live process that holds it; a claim
        of a dead process (same host: its pid is gone; another host: no heartbeat for STALE_S) is taken over."""
        key, me, host = (experiment, config_hash, arm, seed), os.getpid(), socket.gethostname()
        with self._db() as conn:
            conn.execute("BEGIN IMMEDIATE")  # claim check and write in one transaction: no two winners
            held = conn.execute("SELECT pid, host, heartbeat FROM claims WHERE experiment = ? AND config_hash IS ? "
                                "AND arm = ? AND seed IS ?", key).fetchone()
            if held is not None and held["pid"] != me and _alive(held["pid"], held["host"], held["heartbeat"]):
                return int(held["pid"])
            conn.execute("INSERT OR REPLACE INTO claims VALUES (?, ?, ?, ?, ?, ?, ?)", (*key, me, host, time.time()))
        return None

    def heartbeat(self, experiment: str, config_hash: str | None, arm: str, seed: int | None) -> None:
        with self._db() as conn:
            conn.execute("UPDATE claims SET heartbeat = ? WHERE experiment = ? AND config_hash IS ? AND arm = ? AND "
                         "seed IS ? AND pid = ?", (time.time(), experiment, config_hash, arm, seed, os.getpid()))

    def release(self, experiment: str, config_hash: str | None, arm: str, seed: int | None) -> None:
        with self._db() as conn:
            conn.execute("DELETE FROM claims WHERE experiment = ? AND config_hash IS ? AND arm = ? AND seed IS ? "
                         "AND pid = ?", (experiment, config_hash, arm, seed, os.getpid()))

    # ---------------------------------------------------------------- failures: jobs that stopped, with why

    def record_failure(self, experiment: str, config_hash: str | None, arm: str, seed: int | None, role: str,
                       error: str) -> None:
        with self._db() as conn:
            conn.execute("INSERT INTO failures (experiment, config_hash, arm, seed, role, error, at) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?)", (experiment, config_hash, arm, seed, role, error,
                                                           datetime.now(timezone.utc).isoformat(timespec="seconds")))

    def failures(self, experiment: str | None = None) -> list[dict[str, Any]]:
        """Failed jobs (newest last) that have no row since: what a rerun would try again."""
        sql = ("SELECT f.* FROM failures f WHERE NOT EXISTS (SELECT 1 FROM runs r WHERE r.experiment = f.experiment "
               "AND r.config_hash IS f.config_hash AND r.arm = f.arm AND r.seed IS f.seed)")
        args: tuple = ()
        if experiment is not None:
            sql, args = sql + " AND f.experiment = ?", (experiment,)
        with self._db() as conn:
            return [dict(r) for r in conn.execute(sql + " ORDER BY f.id", args)]

    def rows(self, experiment: str | None = None) -> list[dict[str, Any]]:
        """All rows (of one experiment when given), ordered by id, JSON columns decoded."""
        sql, args = "SELECT * FROM runs", ()
        if experiment is not None:
            sql, args = sql + " WHERE experiment = ?", (experiment,)
        with self._db() as conn:
            return [self._decode(r) for r in conn.execute(sql + " ORDER BY id", args)]

    def experiments(self) -> list[str]:
        """Experiment names, in the order their first row was inserted."""
        with self._db() as conn:
            cur = conn.execute("SELECT experiment FROM runs GROUP BY experiment ORDER BY MIN(id)")
            return [r[0] for r in cur]

    def find(self, experiment: str, config_hash: str | None, arm: str,
             seed: int | None) -> dict[str, Any] | None:
        """Latest row with these keys, or None. `IS` so that a NULL hash or seed matches NULL."""
        sql = ("SELECT * FROM runs WHERE experiment = ? AND config_hash IS ? AND arm = ? AND seed IS ? "
               "ORDER BY id DESC LIMIT 1")
        with self._db() as conn:
            r = conn.execute(sql, (experiment, config_hash, arm, seed)).fetchone()
        return None if r is None else self._decode(r)

    def _decode(self, r: sqlite3.Row) -> dict[str, Any]:
        out = dict(r)
        for c in JSON_COLUMNS:
            if out.get(c) is not None:
                try:
                    out[c] = json.loads(out[c])
                except ValueError as err:  # edited by hand, or written by something else
                    raise DataError(f"data error: '{self.path}' row {out.get('id')} has invalid JSON in column '{c}' "
                                    f"({err}); fix that cell, or delete the row (sqlite3 {self.path} \"DELETE FROM "
                                    f"runs WHERE id = {out.get('id')}\") and rerun to redo it") from None
        return out
