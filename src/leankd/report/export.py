"""Export the results store to MLflow: in an MLflow experiment per leankd experiment, one parent run for the
experiment and, nested under it, one run per store row.

    leankd export --mlflow sqlite:///runs/mlflow.db [--out runs] [--experiment NAME]

    from leankd.report.export import export_mlflow
    done = export_mlflow("runs/results.db", "sqlite:///runs/mlflow.db")   # [(experiment, logged, skipped)]

The parent run (named after the experiment, tagged `leankd.store`, no `leankd.row_id`) holds `<out>/report.md` and
`<out>/report.html` (when they exist) under `report/`, as they were at the last export that logged a run. Each row's
run (named `<arm>-seed<seed>`, tag `mlflow.parentRunId` = the parent, started and ended when the row's job did)
holds:

- params: the row's experiment, arm, seed (the one it ran), role, model, task, split, config hash, inference batch
  size, and its resolved config (`provenance.config`) flattened to dotted keys (`train.lr`, `arms.kd.temperature`;
  lists as JSON) with only its own arm's settings: no other arm's `arms.<name>.*`, no seed list, and for the
  teacher no student-side settings (`arms`, `student`, `train`, `cache`, `ranking`);
- metrics: the row's metrics (`accuracy`, `agreement`, ...), `val_<metric>`, every numeric ledger figure (train_s,
  teacher_s, cache_share_s, ranking_share_s, total_s, lost_s, train_flops, cache_share_flops, total_flops,
  infer_ms_*, peak_mem_mb, energy_j, params, size_mb) and `epoch_loss` (step = epoch). A figure that is missing
  or not finite is never logged as a number: the tag `unavailable.<figure>` says where it should have come from;
- tags: `leankd.store` (the store's absolute path) and `leankd.row_id`, which make re-exports skip what is
  already there; `provenance.*` (code hash, git commit, library versions, device, cpu, threads, precision);
  `precision` (the one that ran) and `source.<figure>` (the row's `sources`);
- artifacts: the model the row saved (`extra.checkpoint`: the student's, or the teacher's for the teacher row) and
  its JSON sidecar, under `model/` (tag `leankd.model`); looked for under the store's folder first (an out folder
  moved or given as a relative path), then where the row says. None saved or the file gone: the tag
  `unavailable.model` says why, and the export goes on;
- input: the data it ran on (`extra.data`) as an MLflow dataset: name = the task, digest = a hash of the data files'
  identities (each file's sha256, listed in the input tag `leankd.data_files`), source = the data folder. A row of
  an older leankd records no data identity: the tag `unavailable.data` says so.

MLflow is imported only here (it takes seconds to import); without it `MlflowMissingError` says how to install it.
For a `sqlite:///PATH` tracking URI, artifacts go to `mlartifacts/<experiment>/` beside the database file (MLflow's
own default would be `./mlruns` under the current directory). Read runs back with the client, which returns a list:
`MlflowClient(uri).search_runs([experiment_id], "params.arm = 'kd'")` (`mlflow.search_runs` returns a pandas
DataFrame, and the `.[mlflow]` extra installs no pandas).
"""
from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from leankd.errors import UserError
from leankd.report.export_rows import key, model_files, ms, number, row_data, row_metrics, row_params, row_tags
from leankd.results.store import ResultsStore

log = logging.getLogger(__name__)

_BATCH = 100  # MLflow's log_batch takes at most 100 params and 100 tags per call
PARENT = "mlflow.parentRunId"  # the tag `mlflow.start_run(nested=True)` sets: the UI nests runs by it
INSTALL_HINT = 'pip install -e ".[mlflow]"'


class MlflowMissingError(UserError):
    """MLflow (or the SQL store it needs for sqlite:/// URIs) is not installed."""


class ExportError(UserError):
    """The tracking URI cannot be used, or the experiment there cannot receive runs."""


def _mlflow() -> SimpleNamespace:
    """The MLflow names the export uses, imported here, not at module import. `MetaDataset` is None where this
    MLflow has none (rows then get an `unavailable.data` tag instead of an input)."""
    try:
        import mlflow  # noqa: F401  (imported first so a missing or blocked top-level package fails here)
        from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient
    except ImportError as err:
        raise MlflowMissingError(f"export error: MLflow is not installed ({err.name or err}); install it with "
                                 f"`{INSTALL_HINT}`") from None
    try:  # metadata only: no pandas, numpy or pyarrow
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.data.sources import LocalArtifactDatasetSource
    except ImportError:
        MetaDataset = LocalArtifactDatasetSource = None
    return SimpleNamespace(MlflowClient=MlflowClient, Metric=Metric, Param=Param, RunTag=RunTag, Dataset=Dataset,
                           DatasetInput=DatasetInput, InputTag=InputTag, MlflowException=MlflowException,
                           MetaDataset=MetaDataset, LocalSource=LocalArtifactDatasetSource)


class _Exporter:
    """One tracking URI, one store: finds or creates experiments and their parent runs, logs rows not yet
    exported."""

    def __init__(self, tracking_uri: str, store_path: Path, reports: list[Path]):
        self.ml = _mlflow()
        self.uri, self.store_path, self.reports = tracking_uri, store_path, reports
        try:
            if tracking_uri.startswith("sqlite:///"):  # create the folder: sqlite does not
                Path(tracking_uri[len("sqlite:///"):]).expanduser().parent.mkdir(parents=True, exist_ok=True)
            self.client = self.ml.MlflowClient(tracking_uri)
        except (self.ml.MlflowException, OSError) as err:
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
        return (db.parent / "mlartifacts" / key(name).replace("/", "_")).as_uri()

    def experiment_id(self, name: str) -> str:
        try:
            found = self.client.get_experiment_by_name(name)
            if found is None:
                return self.client.create_experiment(name, artifact_location=self._artifact_location(name),
                                                     tags={"leankd.experiment": name})
        except (self.ml.MlflowException, ImportError, OSError) as err:
            raise self._uri_error(err) from None
        if found.lifecycle_stage != "active":
            raise ExportError(f"export error: MLflow experiment '{name}' is deleted at '{self.uri}'; restore it "
                              f"(`mlflow experiments restore --experiment-id {found.experiment_id}`) or rename it")
        return found.experiment_id

    def exported(self, experiment_id: str) -> tuple[Any, dict[str, Any]]:
        """(the experiment's parent run or None, row id -> run) for runs of this store already in the experiment
        (every page of the search; of two parents, from exports that raced, the first one made)."""
        path = str(self.store_path)
        quote = "'" if "'" not in path else '"'
        query = f"tags.`leankd.store` = {quote}{path}{quote}"
        runs, token = [], None
        while True:
            page = self.client.search_runs([experiment_id], query, max_results=1000, page_token=token)
            runs += list(page)
            token = page.token
            if not token:
                break
        parents = sorted((r for r in runs if "leankd.row_id" not in r.data.tags), key=lambda r: r.info.start_time)
        return (parents[0] if parents else None), {r.data.tags["leankd.row_id"]: r for r in runs
                                                  if "leankd.row_id" in r.data.tags}

    def parent_run(self, experiment_id: str, name: str, rows: list[dict]) -> str:
        """A new parent run for the experiment, started when its first row started; its run id."""
        starts = [t for t in (ms(r.get("started_at")) for r in rows) if t is not None]
        run = self.client.create_run(experiment_id, start_time=min(starts) if starts else None, run_name=name,
                                     tags={"leankd.store": str(self.store_path), "leankd.experiment": name})
        return run.info.run_id

    def finish_parent(self, parent_id: str, rows: list[dict]) -> None:
        """The reports as they are now, and FINISHED when the experiment's last row ended."""
        for report in self.reports:
            self.client.log_artifact(parent_id, str(report), artifact_path="report")
        ends = [t for t in (ms(r.get("ended_at")) for r in rows) if t is not None]
        self.client.set_terminated(parent_id, "FINISHED", end_time=max(ends) if ends else None)

    def log_model(self, run_id: str, row: dict) -> dict[str, str]:
        """The row's saved model and its sidecar under `model/`; the tags saying what was logged, or why not."""
        files, why = model_files(row, self.store_path.parent)
        if why:
            return {"unavailable.model": why}
        for path in files:
            if path.is_dir():  # a save_pretrained folder (text models)
                self.client.log_artifacts(run_id, str(path), artifact_path=f"model/{path.name}")
            else:
                self.client.log_artifact(run_id, str(path), artifact_path="model")
        return {"leankd.model": str(files[0])}

    def log_data(self, run_id: str, row: dict) -> dict[str, str]:
        """The data the row ran on as the run's input (an MLflow dataset of metadata only); else the tag why not."""
        data, why = row_data(row)
        if why or self.ml.MetaDataset is None:
            return {"unavailable.data": why or "this MLflow has no mlflow.data.meta_dataset; upgrade mlflow-skinny"}
        dataset = self.ml.MetaDataset(self.ml.LocalSource(data["source"]), name=data["name"], digest=data["digest"])
        tags = [self.ml.InputTag("mlflow.data.context", data["context"]),
                self.ml.InputTag("leankd.data_files", data["files"])]
        self.client.log_inputs(run_id, datasets=[self.ml.DatasetInput(self.ml.Dataset(**dataset.to_dict()), tags)])
        return {}

    def log_row(self, experiment_id: str, parent_id: str, row: dict) -> str:
        """Create the row's run under the parent, log everything, mark it FINISHED; return the run id."""
        tags = row_tags(row, self.store_path)
        first = {k: tags[k] for k in ("leankd.store", "leankd.row_id")} | {PARENT: parent_id}
        run = self.client.create_run(experiment_id, start_time=ms(row.get("started_at")), tags=first,
                                     run_name=f"{row['arm']}-seed{row['seed']}")
        run_id = run.info.run_id
        metrics, unavailable = row_metrics(row)
        tags.update(unavailable)
        tags.update(self.log_model(run_id, row))
        tags.update(self.log_data(run_id, row))
        when = ms(row.get("ended_at")) or ms(row.get("started_at")) or 0
        steps = [self.ml.Metric("epoch_loss", float(v), when, i)
                 for i, v in enumerate((row.get("extra") or {}).get("epoch_loss") or []) if number(v) is not None]
        batch = [self.ml.Metric(k, v, when, 0) for k, v in metrics.items()] + steps
        params = [self.ml.Param(k, v) for k, v in row_params(row).items()]
        run_tags = [self.ml.RunTag(k, v) for k, v in tags.items()]
        for i in range(0, max(len(batch), len(params), len(run_tags)), _BATCH):
            self.client.log_batch(run_id, metrics=batch[i:i + _BATCH], params=params[i:i + _BATCH],
                                  tags=run_tags[i:i + _BATCH])
        self.client.set_terminated(run_id, "FINISHED", end_time=ms(row.get("ended_at")))
        return run_id

    def export(self, name: str, rows: list[dict]) -> tuple[int, int]:
        """(logged, skipped) for one leankd experiment's rows. Runs already there stay; any not under the parent
        (an export of an older leankd, or a parent deleted since) are moved under it."""
        experiment_id = self.experiment_id(name)
        parent, done = self.exported(experiment_id)
        parent_id = parent.info.run_id if parent is not None else self.parent_run(experiment_id, name, rows)
        logged = skipped = 0
        for row in rows:
            run = done.get(str(row["id"]))
            if run is not None and run.info.status == "FINISHED":
                skipped += 1
                if run.data.tags.get(PARENT) != parent_id:
                    self.client.set_tag(run.info.run_id, PARENT, parent_id)
                continue
            if run is not None:  # an export that stopped half-way: redo that run from scratch
                self.client.delete_run(run.info.run_id)
            self.log_row(experiment_id, parent_id, row)
            logged += 1
        if logged or parent is None or parent.info.status != "FINISHED":
            self.finish_parent(parent_id, rows)
        log.info("MLflow experiment %r (%s): %d run(s) logged under parent run %s, %d already there", name,
                 experiment_id, logged, parent_id, skipped)
        return logged, skipped


def export_mlflow(store_path: str | Path, tracking_uri: str, experiment: str | None = None,
                  report_dir: str | Path | None = None) -> list[tuple[str, int, int]]:
    """Log every row of the store (of one experiment when given) to MLflow, nested under a parent run per
    experiment; [(experiment, logged, skipped)].
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
        log.warning("no report.md in %s: the parent runs get no report artifact (`leankd report --out %s` writes it)",
                    folder, folder)
    exporter = _Exporter(tracking_uri, store_path, reports)
    return [(name, *exporter.export(name, store.rows(name))) for name in ([experiment] if experiment else names)]
