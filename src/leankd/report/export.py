"""Export the results store to MLflow: one MLflow run per store row, in an MLflow experiment per leankd experiment.

    leankd export --mlflow sqlite:///runs/mlflow.db [--out runs] [--experiment NAME]

    from leankd.report.export import export_mlflow
    done = export_mlflow("runs/results.db", "sqlite:///runs/mlflow.db")   # [(experiment, logged, skipped)]

Each run (named `<arm>-seed<seed>`, started and ended when the row's job did) holds:

- params: the row's experiment, arm, seed, role, model, task, split, config hash, inference batch size, and the
  resolved config (`provenance.config`) flattened to dotted keys (`train.lr`, `arms.kd.temperature`; lists as JSON);
- metrics: the row's metrics (`accuracy`, `agreement`, ...), `val_<metric>`, every numeric ledger figure (train_s,
  teacher_s, cache_share_s, ranking_share_s, total_s, lost_s, train_flops, cache_share_flops, total_flops,
  infer_ms_*, peak_mem_mb, energy_j, params, size_mb) and `epoch_loss` (step = epoch). A figure that is missing
  or not finite is never logged as a number: the tag `unavailable.<figure>` says where it should have come from;
- tags: `leankd.store` (the store's absolute path) and `leankd.row_id`, which make re-exports skip what is
  already there; `provenance.*` (code hash, git commit, library versions, device, cpu, threads, precision);
  `precision` (the one that ran) and `source.<figure>` (the row's `sources`);
- artifacts: `<out>/report.md` and `<out>/report.html` (when they exist) under `report/`, in every run, as they
  were at export time.

MLflow is imported only here (it takes seconds to import); without it `MlflowMissingError` says how to install it.
For a `sqlite:///PATH` tracking URI, artifacts go to `mlartifacts/<experiment>/` beside the database file (MLflow's
own default would be `./mlruns` under the current directory).
"""
from __future__ import annotations

import json
import logging
import math
import re
from datetime import datetime
from pathlib import Path
from typing import Any

from leankd.errors import UserError
from leankd.report.table import LEDGER_FIGURES
from leankd.results.store import ResultsStore

log = logging.getLogger(__name__)

FIGURES = LEDGER_FIGURES + ("lost_s", "cache_share_flops")
PARAM_COLUMNS = ("experiment", "arm", "seed", "role", "model", "task", "split", "config_hash", "infer_batch_size")
_FIGURE_COLUMN_SOURCE = {"energy_j": "energy_source", "peak_mem_mb": "peak_mem_source"}
_BATCH = 100  # MLflow's log_batch takes at most 100 params and 100 tags per call
_MAX_VALUE = 5000  # longest param/tag value every MLflow >= 2.10 store accepts
INSTALL_HINT = 'pip install -e ".[mlflow]"'


class MlflowMissingError(UserError):
    """MLflow (or the SQL store it needs for sqlite:/// URIs) is not installed."""


class ExportError(UserError):
    """The tracking URI cannot be used, or the experiment there cannot receive runs."""


def _mlflow():
    """(MlflowClient, Metric, Param, RunTag, MlflowException): imported here, not at module import."""
    try:
        import mlflow  # noqa: F401  (imported first so a missing or blocked top-level package fails here)
        from mlflow.entities import Metric, Param, RunTag
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient
    except ImportError as err:
        raise MlflowMissingError(f"export error: MLflow is not installed ({err.name or err}); install it with "
                                 f"`{INSTALL_HINT}`") from None
    return MlflowClient, Metric, Param, RunTag, MlflowException


def _key(name: str) -> str:
    """An MLflow key: letters, digits, _ - . / and spaces only, at most 250 characters."""
    return re.sub(r"[^\w\-./ ]", "_", str(name))[:250]


def _text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= _MAX_VALUE else text[:_MAX_VALUE - 12] + "[truncated]"


def _ms(iso: str | None) -> int | None:
    try:
        return int(datetime.fromisoformat(iso).timestamp() * 1000) if iso else None
    except ValueError:
        return None


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": 0.1}} -> {"train.lr": 0.1}; lists and scalars are leaves."""
    if not isinstance(tree, dict) or (prefix and not tree):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for k, v in tree.items():
        out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _number(value: Any) -> float | None:
    """A finite float, or None (missing, not a number, NaN or infinite)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _source(row: dict, figure: str) -> str:
    """Where a figure came from: the row's `sources`, else its `<figure>_source` column."""
    sources = row.get("sources") or {}
    found = sources.get(figure) or (sources.get("infer_ms") if figure.startswith("infer_ms") else None)
    return str(found or row.get(_FIGURE_COLUMN_SOURCE.get(figure, "")) or "not recorded in the row")


def row_params(row: dict) -> dict[str, str]:
    """The resolved config flattened to dotted keys, then the row's identity columns."""
    config = (row.get("provenance") or {}).get("config") or {}
    params = {_key(k): _text(v) for k, v in flatten(config).items()}
    params.update({c: _text(row[c]) for c in PARAM_COLUMNS if row.get(c) is not None})
    return params


def row_metrics(row: dict) -> tuple[dict[str, float], dict[str, str]]:
    """({metric: value}, {"unavailable.<figure>": its source}) from the row's metrics and ledger figures."""
    values: dict[str, Any] = dict(row.get("metrics") or {})
    values.update({f"val_{k}": v for k, v in ((row.get("extra") or {}).get("val_metrics") or {}).items()})
    values.update({f: row.get(f) for f in FIGURES})
    metrics, unavailable = {}, {}
    for name, value in values.items():
        number = _number(value)
        if number is not None:
            metrics[_key(name)] = number
        else:
            why = _source(row, name) if value is None else f"{_source(row, name)} (value: {value!r})"
            unavailable[_key(f"unavailable.{name}")] = _text(why)
    return metrics, unavailable


def row_tags(row: dict, store_path: Path) -> dict[str, str]:
    """Identity (store path, row id), provenance, the precision that ran, each figure's source."""
    prov = row.get("provenance") or {}
    extra = row.get("extra") or {}
    tags = {"leankd.store": str(store_path), "leankd.row_id": str(row["id"]), "leankd.role": str(row["role"])}
    tags.update({_key(f"provenance.{k}"): _text(v) for k, v in prov.items()
                 if k != "config" and not isinstance(v, (dict, list))})
    if prov.get("git_commit"):
        tags["mlflow.source.git.commit"] = str(prov["git_commit"])
    for k in ("precision", "precision_reason", "teacher_precision", "method"):
        if extra.get(k) is not None:
            tags[k] = _text(extra[k])
    tags.update({_key(f"source.{k}"): _text(v) for k, v in (row.get("sources") or {}).items()})
    for column in _FIGURE_COLUMN_SOURCE.values():
        if row.get(column) is not None:
            tags[column] = _text(row[column])
    return tags


class _Exporter:
    """One tracking URI, one store: finds or creates experiments and logs rows not yet exported."""

    def __init__(self, tracking_uri: str, store_path: Path, reports: list[Path]):
        self.client_cls, self.Metric, self.Param, self.RunTag, self.MlflowException = _mlflow()
        self.uri, self.store_path, self.reports = tracking_uri, store_path, reports
        try:
            if tracking_uri.startswith("sqlite:///"):  # create the folder: sqlite does not
                Path(tracking_uri[len("sqlite:///"):]).expanduser().parent.mkdir(parents=True, exist_ok=True)
            self.client = self.client_cls(tracking_uri)
        except (self.MlflowException, OSError) as err:
            raise self._uri_error(err) from None

    def _uri_error(self, err: Exception) -> UserError:
        if isinstance(err, ImportError):  # a sqlite:/// URI with mlflow-skinny but without sqlalchemy/alembic
            return MlflowMissingError(f"export error: MLflow's SQL store needs {err.name or err}; install it with "
                                      f"`{INSTALL_HINT}`")
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return ExportError(f"export error: cannot use MLflow tracking URI '{self.uri}' ({first[:200]}); give a "
                           "reachable server or a writable sqlite:///PATH")

    def _artifact_location(self, name: str) -> str | None:
        if not self.uri.startswith("sqlite:///"):
            return None  # the server's or store's own default
        db = Path(self.uri[len("sqlite:///"):]).expanduser().resolve()
        return (db.parent / "mlartifacts" / _key(name).replace("/", "_")).as_uri()

    def experiment_id(self, name: str) -> str:
        try:
            found = self.client.get_experiment_by_name(name)
            if found is None:
                return self.client.create_experiment(name, artifact_location=self._artifact_location(name),
                                                     tags={"leankd.experiment": name})
        except (self.MlflowException, ImportError, OSError) as err:
            raise self._uri_error(err) from None
        if found.lifecycle_stage != "active":
            raise ExportError(f"export error: MLflow experiment '{name}' is deleted at '{self.uri}'; restore it "
                              f"(`mlflow experiments restore --experiment-id {found.experiment_id}`) or rename it")
        return found.experiment_id

    def exported(self, experiment_id: str) -> dict[str, Any]:
        """row id -> run, for runs of this store already in the experiment (every page of the search)."""
        path = str(self.store_path)
        quote = "'" if "'" not in path else '"'
        query = f"tags.`leankd.store` = {quote}{path}{quote}"
        runs, token = {}, None
        while True:
            page = self.client.search_runs([experiment_id], query, max_results=1000, page_token=token)
            runs.update({r.data.tags.get("leankd.row_id"): r for r in page})
            token = page.token
            if not token:
                return runs

    def log_row(self, experiment_id: str, row: dict) -> str:
        """Create the row's run, log everything, attach the report, mark it FINISHED; return the run id."""
        tags = row_tags(row, self.store_path)
        run = self.client.create_run(experiment_id, start_time=_ms(row.get("started_at")),
                                     tags={k: tags[k] for k in ("leankd.store", "leankd.row_id")},
                                     run_name=f"{row['arm']}-seed{row['seed']}")
        run_id = run.info.run_id
        metrics, unavailable = row_metrics(row)
        tags.update(unavailable)
        when = _ms(row.get("ended_at")) or _ms(row.get("started_at")) or 0
        steps = [self.Metric("epoch_loss", float(v), when, i)
                 for i, v in enumerate((row.get("extra") or {}).get("epoch_loss") or []) if _number(v) is not None]
        batch = [self.Metric(k, v, when, 0) for k, v in metrics.items()] + steps
        params = [self.Param(k, v) for k, v in row_params(row).items()]
        run_tags = [self.RunTag(k, v) for k, v in tags.items()]
        for i in range(0, max(len(batch), len(params), len(run_tags)), _BATCH):
            self.client.log_batch(run_id, metrics=batch[i:i + _BATCH], params=params[i:i + _BATCH],
                                  tags=run_tags[i:i + _BATCH])
        for report in self.reports:
            self.client.log_artifact(run_id, str(report), artifact_path="report")
        self.client.set_terminated(run_id, "FINISHED", end_time=_ms(row.get("ended_at")))
        return run_id

    def export(self, name: str, rows: list[dict]) -> tuple[int, int]:
        """(logged, skipped) for one leankd experiment's rows."""
        experiment_id = self.experiment_id(name)
        done = self.exported(experiment_id)
        logged = skipped = 0
        for row in rows:
            run = done.get(str(row["id"]))
            if run is not None and run.info.status == "FINISHED":
                skipped += 1
                continue
            if run is not None:  # an export that stopped half-way: redo that run from scratch
                self.client.delete_run(run.info.run_id)
            self.log_row(experiment_id, row)
            logged += 1
        log.info("MLflow experiment %r (%s): %d run(s) logged, %d already there", name, experiment_id, logged,
                 skipped)
        return logged, skipped


def export_mlflow(store_path: str | Path, tracking_uri: str, experiment: str | None = None,
                  report_dir: str | Path | None = None) -> list[tuple[str, int, int]]:
    """Log every row of the store (of one experiment when given) to MLflow; [(experiment, logged, skipped)].
    Rows already exported from this store to this tracking URI (same `leankd.store` and `leankd.row_id` tags, a
    FINISHED run) are skipped, so exporting again adds only new rows."""
    store_path = Path(store_path).resolve()
    if not store_path.is_file():
        raise ExportError(f"export error: no results store at '{store_path}'; run `leankd run CONFIG --out "
                          f"{store_path.parent}` first")
    store = ResultsStore(store_path)
    names = store.experiments()
    if experiment is not None and experiment not in names:
        raise ExportError(f"export error: no experiment '{experiment}' in {store_path}; known: "
                          f"{', '.join(names) or 'none yet'}")
    folder = Path(report_dir) if report_dir is not None else store_path.parent
    reports = [p for p in (folder / "report.md", folder / "report.html") if p.is_file()]
    if not reports:
        log.warning("no report.md in %s: runs get no report artifact (`leankd report --out %s` writes it)",
                    folder, folder)
    exporter = _Exporter(tracking_uri, store_path, reports)
    return [(name, *exporter.export(name, store.rows(name))) for name in ([experiment] if experiment else names)]
