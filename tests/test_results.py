"""Results store (SQLite, WAL): round trip, resume lookup, refused rows, documented schema."""
from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest

import leankd.results.store as store_mod
from leankd.errors import DataError
from leankd.metering.ledger import PEAK_CHILD, TIMER
from leankd.results.store import COLUMN_NAMES, ResultsStore
from test_report import _row as _report_row

EXP = "tiny"


def _row(*args, **kw) -> dict:
    """A store row (no `id`: the store assigns it) built like the report tests' rows."""
    row = _report_row(None, *args, **kw)
    del row["id"]
    return row


def _rows() -> list[dict]:
    return [
        _row("teacher", 0, 0.93, 100.0, 0.0, 5e12),
        _row("plain", 0, 0.80, 10.0, 0.0, 1e12, energy=50.0),
        _row("plain", 1, 0.82, 12.0, 0.0, 1e12),
        _row("kd", 0, 0.84, 14.0, 2.0, 1.5e12, metrics={"accuracy": 0.84, "agreement": 0.90}),
        _row("kd", 1, 0.86, 16.0, 2.0, 1.5e12, metrics={"accuracy": 0.86, "agreement": 0.92}),
    ]


@pytest.fixture
def store(tmp_path: Path) -> ResultsStore:
    s = ResultsStore(tmp_path / "runs" / "results.db")  # parent dir does not exist yet
    for r in _rows():
        s.insert(r)
    return s


def test_wal_mode_and_schema_version(store: ResultsStore):
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        version = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0]
    assert int(version) == store_mod.SCHEMA_VERSION
    ResultsStore(store.path)  # reopening an existing file is fine


def test_rows_round_trip(store: ResultsStore):
    rows = store.rows(EXP)
    assert [r["arm"] for r in rows] == ["teacher", "plain", "plain", "kd", "kd"]
    assert [r["id"] for r in rows] == sorted(r["id"] for r in rows)
    for got, want in zip(rows, _rows()):
        assert {k: got[k] for k in want} == want  # JSON columns decoded back to dicts
    assert rows[0]["energy_j"] is None
    assert store.experiments() == [EXP]
    assert store.rows("other") == []


def test_insert_refuses_unknown_key_and_bad_role(tmp_path: Path):
    s = ResultsStore(tmp_path / "r.db")
    with pytest.raises(ValueError, match="accuracy"):
        s.insert({"experiment": EXP, "role": "student", "arm": "kd", "accuracy": 0.9})
    with pytest.raises(ValueError, match="role"):
        s.insert({"experiment": EXP, "role": "pupil", "arm": "kd"})
    assert s.rows() == []


def test_insert_accepts_numpy_scalars(tmp_path: Path):
    s = ResultsStore(tmp_path / "r.db")
    s.insert({"experiment": EXP, "role": "student", "arm": "kd", "seed": np.int64(3),
              "train_flops": np.int64(7), "train_s": np.float32(1.5)})
    (row,) = s.rows()
    assert (row["seed"], row["train_flops"], row["train_s"]) == (3, 7, 1.5)


def test_find_returns_latest_match(store: ResultsStore):
    assert store.find(EXP, "h1", "kd", 1)["metrics"]["accuracy"] == 0.86
    assert store.find(EXP, "h2", "kd", 1) is None
    assert store.find(EXP, "h1", "kd", 7) is None
    assert store.insert(_row("kd", 1, 0.5, 1.0, 0.0, 1.0)) is None  # the same key again: nothing written
    assert store.find(EXP, "h1", "kd", 1)["metrics"]["accuracy"] == 0.86
    assert len(store.rows(EXP)) == len(_rows())
    edited = store.insert({**_row("kd", 1, 0.5, 1.0, 0.0, 1.0), "config_hash": "h2"})  # an edited config: its own key
    assert store.find(EXP, "h2", "kd", 1)["id"] == edited


def test_claims_skip_live_holders_and_take_over_dead_ones(store: ResultsStore, monkeypatch):
    import os
    key = (EXP, "h1", "kd", 5)
    assert store.claim(*key) is None  # this process claims it
    assert store.claim(*key) is None  # claiming again from the same process is fine
    with sqlite3.connect(store.path) as conn:  # a live other process (pid 1 always exists) holds it
        conn.execute("UPDATE claims SET pid = 1")
    assert store.claim(*key) == 1
    with sqlite3.connect(store.path) as conn:  # a dead process held it: taken over
        dead = max(int(p) for p in os.listdir("/proc") if p.isdigit()) + 10_000
        conn.execute("UPDATE claims SET pid = ?", (dead,))
    assert store.claim(*key) is None
    store.release(*key)
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM claims").fetchone()[0] == 0
    monkeypatch.setattr(store_mod.socket, "gethostname", lambda: "this-host")
    with sqlite3.connect(store.path) as conn:  # another host: live while its heartbeat is fresh
        conn.execute("INSERT INTO claims VALUES (?, ?, ?, ?, 1, 'other-host', ?)", (*key, store_mod.time.time()))
    assert store.claim(*key) == 1
    with sqlite3.connect(store.path) as conn:
        conn.execute("UPDATE claims SET heartbeat = heartbeat - ?", (store_mod.STALE_S + 1,))
    assert store.claim(*key) is None


def test_failures_are_listed_until_a_row_replaces_them(store: ResultsStore):
    store.record_failure(EXP, "h1", "kd", 9, "student", "kd/s9: loss became nan or inf at epoch 1 step 3; ...")
    (failure,) = store.failures(EXP)
    assert (failure["arm"], failure["seed"], failure["role"]) == ("kd", 9, "student") and "step 3" in failure["error"]
    store.insert(_row("kd", 9, 0.5, 1.0, 0.0, 1.0))
    assert store.failures(EXP) == []


def test_ranking_share_and_sources_round_trip(tmp_path: Path):
    """The two newer columns: a REAL share of the layer ranking's seconds, and a JSON figure -> source map."""
    s = ResultsStore(tmp_path / "r.db")
    sources = {"train_s": TIMER, "peak_mem_mb": PEAK_CHILD, "energy_j": "rapl"}
    s.insert({"experiment": EXP, "role": "student", "arm": "kd", "ranking_share_s": 1.25, "sources": sources})
    s.insert({"experiment": EXP, "role": "student", "arm": "plain"})
    kd, plain = s.rows()
    assert kd["ranking_share_s"] == 1.25 and kd["sources"] == sources  # JSON decoded back to a dict
    assert plain["ranking_share_s"] is None and plain["sources"] is None  # absent is NULL, never 0


def test_version_1_file_gains_the_new_columns(tmp_path: Path):
    path = tmp_path / "v1.db"
    v1 = [(n, t) for n, t in store_mod.COLUMNS
          if n not in ("ranking_share_s", "sources", "cache_share_flops", "total_flops")]
    with sqlite3.connect(path) as conn:  # a file as version 1 of the store wrote it
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        conn.execute("INSERT INTO meta VALUES ('schema_version', '1')")
        conn.execute(f"CREATE TABLE runs (id INTEGER PRIMARY KEY, {', '.join(f'{n} {t}' for n, t in v1)})")
        conn.execute("INSERT INTO runs (experiment, role, arm, seed, train_s) VALUES (?, 'student', 'kd', 0, 2.0)",
                     (EXP,))
    conn.close()
    s = ResultsStore(path)
    s.insert({"experiment": EXP, "role": "student", "arm": "kd", "seed": 1, "ranking_share_s": 0.5,
              "sources": {"train_s": TIMER}})
    old, new = s.rows(EXP)
    assert (old["train_s"], old["ranking_share_s"], old["sources"], old["total_flops"]) == (2.0, None, None, None)
    assert (new["ranking_share_s"], new["sources"]) == (0.5, {"train_s": TIMER})
    with sqlite3.connect(path) as conn:
        version = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0]
    assert version == str(store_mod.SCHEMA_VERSION) == "5"
    conn.close()
    ResultsStore(path)  # reopening the migrated file is fine


def test_newer_schema_version_is_refused(tmp_path: Path):
    path = tmp_path / "future.db"
    ResultsStore(path)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(store_mod.SCHEMA_VERSION + 1),))
    conn.close()
    with pytest.raises(DataError, match="schema version"):
        ResultsStore(path)


def test_a_busy_store_waits_then_says_busy_and_works_once_it_is_free(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(store_mod, "BUSY_TIMEOUT_S", 0.2)
    s = ResultsStore(tmp_path / "r.db")
    holder = sqlite3.connect(s.path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process's write transaction, never ending
    started = time.monotonic()
    with pytest.raises(DataError, match=r"r.db' is busy: .* the store is intact"):
        s.insert({"experiment": EXP, "role": "student", "arm": "kd", "seed": 0})
    assert time.monotonic() - started >= 0.2  # it waited first
    assert s.rows() == []  # reading needs no lock (WAL)
    holder.close()
    assert s.insert({"experiment": EXP, "role": "student", "arm": "kd", "seed": 0}) is not None


def test_schema_documented():
    docs = Path(__file__).resolve().parents[1] / "docs" / "results-schema.md"
    for text in (store_mod.__doc__, docs.read_text()):
        for col in ("id",) + COLUMN_NAMES:
            assert f"| `{col}` |" in text, col


def _open_store(path: str) -> str:
    try:
        ResultsStore(path)
        return "ok"
    except Exception as err:  # reported to the parent: the assertion names it
        return f"{type(err).__name__}: {err}"


def test_runs_opening_a_fresh_store_at_once_never_see_half_a_schema(tmp_path):
    """Four `leankd run`s into one fresh --out create the store together: its schema is made in one transaction,
    so none of them reads a half-made file as "not a leankd results store" (it did, under load, in CI)."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(6) as pool:
        for i in range(8):
            outcomes = pool.map(_open_store, [str(tmp_path / f"s{i}" / "results.db")] * 6)
            assert outcomes == ["ok"] * 6
