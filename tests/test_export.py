"""`leankd export --mlflow URI`: a parent run per experiment with one nested MLflow run per store row (its own arm's
settings, its seed, its metrics and ledger, its saved model, its data as an input), read back with MLflow's own
client (`MlflowClient.search_runs`: a list, no pandas); re-exports add only new rows and no second parent; without
MLflow the command fails with one line. Rows are synthetic but built as the runner builds them (the ledger's own
`build_ledger`, a real resolved config, real provenance, saved models, the real data's identity)."""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

from leankd.cli import main
from leankd.config import config_hash, load_config
from leankd.metering.ledger import build_ledger, shared_cost
from leankd.metering.provenance import provenance
from leankd.models.checkpoint import save_model
from leankd.report.export_rows import flatten
from leankd.report.table import summarise, to_markdown
from leankd.results.store import ResultsStore
from leankd.tasks import data_identity

REPO = Path(__file__).resolve().parents[1]
EXP = "demo-cifar10-resnet20-resnet8"  # the demo config's name
CONFIG = REPO / "configs/demo/cifar10-resnet20-resnet8.yaml"
PARENT = "mlflow.parentRunId"


@pytest.fixture(scope="module")
def data(data_dir: Path) -> dict:
    """The row's `extra.data` as the runner records it: the data folder and its files' identities (hashed once)."""
    return {"dir": str(data_dir), "files": data_identity(load_config(CONFIG), data_dir)}


@pytest.fixture(scope="module")
def empty_tracking_db(tmp_path_factory) -> Path:
    """An MLflow sqlite store with its tables made (MLflow's migrations take ~15 s on a busy core), copied by
    each test. Skips without MLflow, except in CI (`CI` set), which installs the extra."""
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        if os.environ.get("CI"):
            raise
        pytest.skip('MLflow not installed (pip install -e ".[mlflow]"); CI installs it')
    db = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    MlflowClient(f"sqlite:///{db}").search_experiments()  # creates the tables
    return db


@pytest.fixture
def tracking(empty_tracking_db: Path, tmp_path: Path):
    """(tracking URI, MLflow client) of a fresh store under this test's tmp_path."""
    from mlflow.tracking import MlflowClient

    db = tmp_path / "ml" / "mlflow.db"
    db.parent.mkdir()
    shutil.copyfile(empty_tracking_db, db)
    return f"sqlite:///{db}", MlflowClient(f"sqlite:///{db}")


def _row(arm: str, seed: int, acc: float, energy: float | None, peak_rss: float | None, cfg: dict,
         extra: dict | None = None) -> dict:
    teacher = arm == "teacher"
    cache = {"seconds": 83.4, "flops": 8_000_000_000, "experiment": EXP} if arm == "kd" else None
    costs = {"train_s": 90.0 + seed, "teacher_s": 0.0, "lost_s": 0.0, "resumed": None, "train_flops": 7_410_000_000,
             "infer_batch_size": 128, "infer_ms_p50": 27.1, "infer_ms_p90": 28.9, "infer_ms_p50_b1": 1.39,
             "infer_ms_p90_b1": 1.64, "energy_j": energy, "energy_source": "rapl" if energy else "unavailable",
             "params": 272_474 if teacher else 78_042, "size_mb": 1.05 if teacher else 0.30, "baseline_rss_mb": 300.0}
    ledger = build_ledger(costs, peak_rss, shared_cost("layer ranking", None, EXP, 1),
                          shared_cost("teacher cache build", cache, EXP, 1))
    metrics = {"accuracy": acc, "macro_f1": acc - 0.004} | ({} if teacher else {"agreement": acc + 0.05})
    return {"experiment": EXP, "config_hash": "teacherkey" if teacher else "1fa01ca98df3",
            "role": "teacher" if teacher else "student", "arm": arm, "seed": seed, "model": "resnet8", "task":
            "cifar10", "split": "test", "metrics": metrics, **ledger,
            "extra": {"precision": "fp32", "precision_reason": "requested", "epoch_loss": [1.9, 1.4], "method": arm,
                      **(extra or {})},
            "provenance": {**provenance("cpu", "fp32"), "config": cfg, "started_at": "2026-12-04T14:09:07+00:00",
                           "ended_at": "2026-12-04T14:10:37+00:00"},
            "started_at": "2026-12-04T14:09:07+00:00", "ended_at": "2026-12-04T14:10:37+00:00"}


def _saved(out: Path, arm: str, seed: int) -> Path:
    """Where the runner saves the row's model (`extra.checkpoint`): the teacher's under teachers/<key>/."""
    return out / "teachers" / "teacherkey" / "model.safetensors" if arm == "teacher" else \
        out / "students" / EXP / f"{arm}-seed{seed}.safetensors"


@pytest.fixture
def out(tmp_path: Path, data: dict) -> Path:
    """A store with a teacher row and three student rows (one with energy measured, one without peak memory), the
    models they saved (the teacher's recorded where its out folder was before it moved here; kd seed 1's deleted)
    and the report files the export attaches."""
    cfg = load_config(CONFIG).model_dump(mode="json")
    out = tmp_path / "out"
    store = ResultsStore(out / "results.db")
    for args in [("teacher", 0, 0.81, None, 744.0), ("plain", 0, 0.62, 512.5, 677.0), ("kd", 0, 0.64, None, 808.0),
                 ("kd", 1, 0.65, None, None)]:
        path = _saved(out, args[0], args[1])
        if args[:2] != ("kd", 1):
            save_model(torch.nn.Linear(4, 2), path, {"model": "resnet8", "arm": args[0], "seed": args[1]})
        recorded = Path("/elsewhere/runs", *path.parts[-3:]) if args[0] == "teacher" else path
        store.insert(_row(*args, cfg, {"checkpoint": str(recorded), "data": data}))
    (tmp_path / "out" / "report.md").write_text(to_markdown(summarise(store.rows()), EXP), encoding="utf-8")
    (tmp_path / "out" / "report.html").write_text("<html><body>report</body></html>", encoding="utf-8")
    return tmp_path / "out"


def _runs(client, name: str) -> tuple[object, dict[int, object]]:
    """(the experiment's one parent run, row id -> its nested run), read with the client: a list, no pandas."""
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    assert isinstance(runs, list)
    parents = [r for r in runs if "leankd.row_id" not in r.data.tags]
    assert len(parents) == 1, [r.info.run_name for r in parents]
    return parents[0], {int(r.data.tags["leankd.row_id"]): r for r in runs if "leankd.row_id" in r.data.tags}


def _artifacts(client, run_id: str, folder: str) -> list[str]:
    return sorted(Path(a.path).name for a in client.list_artifacts(run_id, folder))


def test_export_one_run_per_row_then_nothing_new(out: Path, tmp_path: Path, tracking, data: dict, capsys):
    uri, client = tracking
    rows = ResultsStore(out / "results.db").rows()
    assert main(["export", "--mlflow", uri, "--out", str(out)]) == 0
    assert f"{EXP}: 4 run(s) logged" in capsys.readouterr().out
    parent, runs = _runs(client, EXP)
    assert sorted(runs) == [r["id"] for r in rows]
    assert parent.info.run_name == EXP and parent.info.status == "FINISHED"
    assert _artifacts(client, parent.info.run_id, "report") == ["report.html", "report.md"]
    for row in rows:
        run = runs[row["id"]]
        m, p, t = run.data.metrics, run.data.params, run.data.tags
        assert run.info.status == "FINISHED" and run.info.run_name == f"{row['arm']}-seed{row['seed']}"
        assert t[PARENT] == parent.info.run_id  # nested under the experiment's parent
        assert t["leankd.store"] == str((out / "results.db").resolve())
        assert m["accuracy"] == pytest.approx(row["metrics"]["accuracy"])
        for fig in ("train_s", "total_s", "total_flops", "cache_share_s", "infer_ms_p50", "params", "size_mb"):
            assert m[fig] == pytest.approx(row[fig]), fig
        assert (p["arm"], p["seed"], p["role"], p["config_hash"]) == (row["arm"], str(row["seed"]), row["role"],
                                                                        row["config_hash"])
        config = flatten(row["provenance"]["config"])
        assert p["teacher.train.lr"] == json.dumps(config["teacher.train.lr"]) and "seeds" not in p
        own = {k for k in config if k.startswith(f"arms.{row['arm']}.")}
        assert own <= set(p) and not {k for k in p if k.startswith("arms.")} - own  # its own arm's settings only
        assert ("train.lr" in p) == (row["role"] == "student")  # the teacher trains with teacher.train
        assert t["provenance.code_hash"] == row["provenance"]["code_hash"] and t["precision"] == "fp32"
        assert t["provenance.torch_version"] == row["provenance"]["torch_version"]
        assert t["source.train_flops"] == row["sources"]["train_flops"]
        if row["energy_j"] is None:  # unavailable: a tag with its source, never a number
            assert "energy_j" not in m and t["unavailable.energy_j"] == "unavailable"
        else:
            assert m["energy_j"] == pytest.approx(512.5) and "unavailable.energy_j" not in t
        assert ("agreement" in m) == (row["role"] == "student")
        history = client.get_metric_history(run.info.run_id, "epoch_loss")
        assert [(h.step, h.value) for h in sorted(history, key=lambda h: h.step)] == [(0, 1.9), (1, 1.4)]
        assert run.info.artifact_uri.startswith((tmp_path / "ml" / "mlartifacts").as_uri())  # not ./mlruns
        (given,) = run.inputs.dataset_inputs  # the data it ran on
        assert (given.dataset.name, given.dataset.digest) == ("cifar10", config_hash(data["files"]))
        assert json.loads(given.dataset.source)["uri"] == data["dir"]
        assert {x.key: x.value for x in given.tags} == {"mlflow.data.context": "training",
                                                        "leankd.data_files": ",".join(data["files"])}
    kd = {r["seed"]: runs[r["id"]] for r in rows if r["arm"] == "kd"}
    assert kd[0].data.params["arms.kd.temperature"] == "4.0" and "arms.plain.method" not in kd[0].data.params
    assert _artifacts(client, kd[0].info.run_id, "model") == ["kd-seed0.json", "kd-seed0.safetensors"]
    local = client.download_artifacts(kd[0].info.run_id, "model/kd-seed0.safetensors", str(tmp_path / "dl"))
    assert Path(local).read_bytes() == _saved(out, "kd", 0).read_bytes()
    teacher = runs[rows[0]["id"]]  # its out folder moved: found under the store's folder
    assert _artifacts(client, teacher.info.run_id, "model") == ["model.json", "model.safetensors"]
    assert "not found" in kd[1].data.tags["unavailable.model"] and not client.list_artifacts(kd[1].info.run_id)
    no_peak = kd[1].data
    assert "peak_mem_mb" not in no_peak.metrics and no_peak.tags["unavailable.peak_mem_mb"].startswith("unavailable")
    local = client.download_artifacts(parent.info.run_id, "report/report.md", str(tmp_path))
    assert Path(local).read_text(encoding="utf-8") == (out / "report.md").read_text(encoding="utf-8")
    found = client.search_runs([parent.info.experiment_id], "params.arm = 'kd'",  # the README's read-back
                               order_by=["metrics.accuracy DESC"])
    assert [r.data.params["seed"] for r in found] == ["1", "0"]  # accuracy 0.65, then 0.64

    assert main(["export", "--mlflow", uri, "--out", str(out)]) == 0  # the same store again: nothing new
    assert f"{EXP}: 0 run(s) logged" in capsys.readouterr().out
    again, runs = _runs(client, EXP)  # still one parent, the same one
    assert again.info.run_id == parent.info.run_id and sorted(runs) == [r["id"] for r in rows]


def test_export_adds_only_new_rows_and_redoes_unfinished(out: Path, tracking, capsys):
    uri, client = tracking
    assert main(["export", "--mlflow", uri, "--out", str(out)]) == 0
    store = ResultsStore(out / "results.db")
    parent, runs = _runs(client, EXP)
    cut, old = runs[store.rows()[1]["id"]], runs[store.rows()[2]["id"]]
    client.set_terminated(cut.info.run_id, "FAILED")  # as if an export had stopped half-way through this run
    client.delete_tag(old.info.run_id, PARENT)  # as an export of an older leankd left it: not nested
    cfg = store.rows()[0]["provenance"]["config"]
    new_id = store.insert(_row("kd", 2, 0.66, None, 790.0, cfg))  # an older leankd's row: no model, no data
    capsys.readouterr()
    assert main(["export", "--mlflow", uri, "--out", str(out), "--experiment", EXP]) == 0
    assert f"{EXP}: 2 run(s) logged" in capsys.readouterr().out  # the new row and the unfinished one
    again, runs = _runs(client, EXP)
    assert again.info.run_id == parent.info.run_id and again.info.status == "FINISHED"
    assert sorted(runs) == [r["id"] for r in store.rows()] and new_id in runs
    assert all(r.info.status == "FINISHED" and r.data.tags[PARENT] == parent.info.run_id for r in runs.values())
    assert runs[store.rows()[1]["id"]].info.run_id != cut.info.run_id
    assert runs[store.rows()[2]["id"]].info.run_id == old.info.run_id  # kept, moved under the parent
    assert "no saved model" in runs[new_id].data.tags["unavailable.model"] and not runs[new_id].inputs.dataset_inputs
    assert "no data identity" in runs[new_id].data.tags["unavailable.data"]


def test_export_without_mlflow_is_one_line(out: Path, monkeypatch, capsys):
    for name in [m for m in sys.modules if m == "mlflow" or m.startswith("mlflow.")] + ["mlflow"]:
        monkeypatch.setitem(sys.modules, name, None)  # `import mlflow` now raises ImportError
    assert main(["export", "--mlflow", "sqlite:///unused.db", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'pip install -e ".[mlflow]"' in err and "MLflow is not installed" in err
    assert not Path("unused.db").exists()


def test_export_unknown_experiment_and_missing_store_are_one_line(out: Path, tmp_path: Path, capsys):
    assert main(["export", "--mlflow", "sqlite:///unused.db", "--out", str(out), "--experiment", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no experiment 'nope'" in err and EXP in err
    assert main(["export", "--mlflow", "sqlite:///unused.db", "--out", str(tmp_path / "empty")]) == 2
    assert "no results store" in capsys.readouterr().err


def test_export_bad_tracking_uri_is_one_line(out: Path, empty_tracking_db: Path, capsys):
    assert main(["export", "--mlflow", "bogus://nowhere", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot use MLflow tracking URI 'bogus://nowhere'" in err
