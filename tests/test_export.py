"""`leankd export --mlflow URI`: one MLflow run per store row, read back with MLflow's own client; re-exports add
only new rows; without MLflow the command fails with one line. Rows are synthetic but built as the runner builds
them (the ledger's own `build_ledger`, a real resolved config, real provenance)."""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from leankd.cli import main
from leankd.config import load_config
from leankd.metering.ledger import build_ledger, shared_cost
from leankd.metering.provenance import provenance
from leankd.report.export import flatten
from leankd.report.table import summarise, to_markdown
from leankd.results.store import ResultsStore

REPO = Path(__file__).resolve().parents[1]
EXP = "demo-cifar10-resnet20-resnet8"  # the demo config's name


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


def _row(arm: str, seed: int, acc: float, energy: float | None, peak_rss: float | None, cfg: dict) -> dict:
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
            "extra": {"precision": "fp32", "precision_reason": "requested", "epoch_loss": [1.9, 1.4], "method": arm},
            "provenance": {**provenance("cpu", "fp32"), "config": cfg, "started_at": "2026-12-04T14:09:07+00:00",
                           "ended_at": "2026-12-04T14:10:37+00:00"},
            "started_at": "2026-12-04T14:09:07+00:00", "ended_at": "2026-12-04T14:10:37+00:00"}


@pytest.fixture
def out(tmp_path: Path) -> Path:
    """A store with a teacher row and three student rows (one with energy measured, one without peak memory),
    and the report files the export attaches."""
    cfg = load_config(REPO / "configs/demo/cifar10-resnet20-resnet8.yaml").model_dump(mode="json")
    store = ResultsStore(tmp_path / "out" / "results.db")
    for args in [("teacher", 0, 0.81, None, 744.0), ("plain", 0, 0.62, 512.5, 677.0), ("kd", 0, 0.64, None, 808.0),
                 ("kd", 1, 0.65, None, None)]:
        store.insert(_row(*args, cfg))
    (tmp_path / "out" / "report.md").write_text(to_markdown(summarise(store.rows()), EXP), encoding="utf-8")
    (tmp_path / "out" / "report.html").write_text("<html><body>report</body></html>", encoding="utf-8")
    return tmp_path / "out"


def _runs(client, name: str) -> dict[int, object]:
    exp = client.get_experiment_by_name(name)
    return {int(r.data.tags["leankd.row_id"]): r for r in client.search_runs([exp.experiment_id], max_results=1000)}


def test_export_one_run_per_row_then_nothing_new(out: Path, tmp_path: Path, tracking, capsys):
    uri, client = tracking
    rows = ResultsStore(out / "results.db").rows()
    assert main(["export", "--mlflow", uri, "--out", str(out)]) == 0
    assert f"{EXP}: 4 run(s) logged" in capsys.readouterr().out
    runs = _runs(client, EXP)
    assert sorted(runs) == [r["id"] for r in rows]
    for row in rows:
        run = runs[row["id"]]
        m, p, t = run.data.metrics, run.data.params, run.data.tags
        assert run.info.status == "FINISHED" and run.info.run_name == f"{row['arm']}-seed{row['seed']}"
        assert t["leankd.store"] == str((out / "results.db").resolve())
        assert m["accuracy"] == pytest.approx(row["metrics"]["accuracy"])
        for fig in ("train_s", "total_s", "total_flops", "cache_share_s", "infer_ms_p50", "params", "size_mb"):
            assert m[fig] == pytest.approx(row[fig]), fig
        assert (p["arm"], p["seed"], p["role"], p["config_hash"]) == (row["arm"], str(row["seed"]), row["role"],
                                                                        row["config_hash"])
        config = flatten(row["provenance"]["config"])
        assert p["train.lr"] == json.dumps(config["train.lr"]) and p["arms.kd.temperature"] == "4.0"
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
        names = sorted(Path(a.path).name for a in client.list_artifacts(run.info.run_id, "report"))
        assert names == ["report.html", "report.md"]
        assert run.info.artifact_uri.startswith((tmp_path / "ml" / "mlartifacts").as_uri())  # not ./mlruns
    no_peak = runs[rows[-1]["id"]].data
    assert "peak_mem_mb" not in no_peak.metrics and no_peak.tags["unavailable.peak_mem_mb"].startswith("unavailable")
    local = client.download_artifacts(runs[rows[0]["id"]].info.run_id, "report/report.md", str(tmp_path))
    assert Path(local).read_text(encoding="utf-8") == (out / "report.md").read_text(encoding="utf-8")

    assert main(["export", "--mlflow", uri, "--out", str(out)]) == 0  # the same store again: nothing new
    assert f"{EXP}: 0 run(s) logged" in capsys.readouterr().out
    assert sorted(_runs(client, EXP)) == [r["id"] for r in rows]


def test_export_adds_only_new_rows_and_redoes_unfinished(out: Path, tracking, capsys):
    uri, client = tracking
    assert main(["export", "--mlflow", uri, "--out", str(out)]) == 0
    store = ResultsStore(out / "results.db")
    cut = _runs(client, EXP)[store.rows()[1]["id"]]
    client.set_terminated(cut.info.run_id, "FAILED")  # as if an export had stopped half-way through this run
    cfg = store.rows()[0]["provenance"]["config"]
    new_id = store.insert(_row("kd", 2, 0.66, None, 790.0, cfg))
    capsys.readouterr()
    assert main(["export", "--mlflow", uri, "--out", str(out), "--experiment", EXP]) == 0
    assert f"{EXP}: 2 run(s) logged" in capsys.readouterr().out  # the new row and the unfinished one
    runs = _runs(client, EXP)
    assert sorted(runs) == [r["id"] for r in store.rows()] and new_id in runs
    assert all(r.info.status == "FINISHED" for r in runs.values())
    assert runs[store.rows()[1]["id"]].info.run_id != cut.info.run_id


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
