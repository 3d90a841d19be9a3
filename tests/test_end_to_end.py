"""End to end on real data: `leankd run` on a CIFAR-10 slice writes teacher + plain + kd rows with every
ledger field, `leankd report` prints them, `leankd eval` re-scores a saved student, and a rerun resumes."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score

from leankd.config import load_config
from leankd.metering.energy import EnergyMeter
from leankd.metering.ledger import PEAK_CHILD
from leankd.precision import Precision
from leankd.results.store import ResultsStore
from leankd.tasks import build_task, data_identity
from leankd.train import predict

from conftest import REPO

LEDGER = ["train_s", "teacher_s", "cache_share_s", "ranking_share_s", "total_s", "train_flops", "infer_batch_size",
          "infer_ms_p50", "infer_ms_p90", "infer_ms_p50_b1", "infer_ms_p90_b1", "peak_mem_mb", "energy_source",
          "params", "size_mb", "sources"]


def leankd(*args, data_dir, check=True):
    env = {**os.environ, "LEANKD_DATA_DIR": str(data_dir)}
    proc = subprocess.run([sys.executable, "-m", "leankd.cli", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"leankd {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("runs")
    proc = leankd("run", "tests/configs/tiny-cifar10.yaml", "--out", str(out), data_dir=data_dir)
    return out, proc


def test_run_writes_teacher_plain_kd_rows_with_full_ledger(tiny_run, data_dir):
    out, proc = tiny_run
    rows = ResultsStore(out / "results.db").rows("tiny-cifar10")
    files = data_identity(load_config("tests/configs/tiny-cifar10.yaml"), data_dir)
    assert sorted(r["arm"] for r in rows) == ["kd", "plain", "teacher"]
    with EnergyMeter("cpu") as probe:  # what this machine's energy counter says, whatever it is
        pass
    for r in rows:
        for field in LEDGER:
            assert r[field] is not None, (r["arm"], field)
        assert r["energy_source"] == probe.source and (r["energy_j"] is None) == (probe.source == "unavailable")
        assert r["total_s"] == r["train_s"] + r["cache_share_s"] + r["ranking_share_s"]
        assert r["train_s"] > 0 and r["train_flops"] > 0 and r["peak_mem_mb"] > 0
        assert r["peak_mem_source"] == PEAK_CHILD and r["sources"]["peak_mem_mb"] == PEAK_CHILD
        prov = r["provenance"]
        assert prov["seed"] == r["seed"] and prov["torch_version"] and prov["config"]["name"] == "tiny-cifar10"
        assert r["extra"]["data"] == {"dir": str(data_dir), "files": files}  # the data it ran on (MLflow's input)
    by_arm = {r["arm"]: r for r in rows}
    assert by_arm["plain"]["teacher_s"] == 0 and by_arm["kd"]["teacher_s"] > 0
    assert by_arm["kd"]["train_flops"] > by_arm["plain"]["train_flops"]  # teacher forwards are counted
    assert "agreement" in by_arm["kd"]["metrics"]
    # the run printed the report table
    assert "| kd" in proc.stdout and "| plain" in proc.stdout and "| teacher" in proc.stdout


def test_recorded_metrics_are_sklearn_scores_of_the_saved_models(tiny_run, data_dir):
    out, _ = tiny_run
    cfg = load_config("tests/configs/tiny-cifar10.yaml")
    task, cpu = build_task(cfg, data_dir), torch.device("cpu")
    rows = {r["arm"]: r for r in ResultsStore(out / "results.db").rows("tiny-cifar10")}
    teacher_logits = np.load(next(p for p in (out / "teachers").iterdir() if p.is_dir()) / "eval_logits.npy")
    for arm in ("plain", "kd"):
        model, _ = task.load(out / "students" / "tiny-cifar10" / f"{arm}-seed0.safetensors")
        logits, labels = predict(model, task.eval_loader("test", cfg.train.batch_size),
                                 Precision.create("fp32", cpu), cpu)
        pred = logits.argmax(-1)
        assert rows[arm]["metrics"]["accuracy"] == accuracy_score(labels, pred)
        assert rows[arm]["metrics"]["macro_f1"] == pytest.approx(f1_score(labels, pred, average="macro"), abs=1e-12)
        assert rows[arm]["metrics"]["agreement"] == (pred == teacher_logits.argmax(-1)).mean()


def test_report_markdown_and_json(tiny_run, data_dir):
    out, _ = tiny_run
    md = leankd("report", "--out", str(out), data_dir=data_dir).stdout
    assert "teacher" in md and "plain" in md and "kd" in md
    assert (out / "report.md").is_file()
    rows = json.loads(leankd("report", "--out", str(out), "--json", data_dir=data_dir).stdout)["tiny-cifar10"]
    assert [r["arm"] for r in rows] == ["teacher", "plain", "kd"]
    kd = rows[2]
    assert kd["total_s_vs_plain"] > 0 and kd["train_flops_vs_plain"] > 1


def test_eval_reproduces_recorded_accuracy(tiny_run, data_dir):
    out, _ = tiny_run
    ckpt = out / "students" / "tiny-cifar10" / "kd-seed0.safetensors"
    text = leankd("eval", str(ckpt), data_dir=data_dir).stdout
    line = next(line for line in text.splitlines() if "accuracy" in line)
    parts = line.split("accuracy:")[1].split("(recorded at training:")
    now, recorded = [float(p.split("%")[0].split()[-1]) for p in parts]
    assert now == recorded


def test_rerun_resumes_and_reuses_teacher(tiny_run, data_dir):
    out, _ = tiny_run
    proc = leankd("run", "tests/configs/tiny-cifar10.yaml", "--out", str(out), data_dir=data_dir)
    assert "already" in proc.stderr
    assert len(ResultsStore(out / "results.db").rows("tiny-cifar10")) == 3
    # a new experiment with the same teacher settings reuses the stored teacher without training it
    proc = leankd("run", "tests/configs/tiny-cifar10.yaml", "name=tiny-other", "arms={plain: {method: plain}}",
                  "--out", str(out), data_dir=data_dir)
    assert "reusing stored teacher" in proc.stderr and "training teacher" not in proc.stderr
    rows = ResultsStore(out / "results.db").rows("tiny-other")
    assert sorted(r["arm"] for r in rows) == ["plain", "teacher"]


def test_a_flop_matched_plain_arm_trains_for_the_kd_arms_flops(tiny_run, data_dir):
    """`match: kd` trains the plain recipe for as many FLOPs as kd's total, measured per seed from kd's row: the
    steps are plain's scaled by kd/plain total FLOPs, and FLOPs are linear in the samples seen."""
    out, _ = tiny_run
    proc = leankd("run", "tests/configs/tiny-cifar10.yaml", "arms.longer={method: plain, match: kd}", "--out", str(out),
                  data_dir=data_dir)
    assert "training teacher" not in proc.stderr and "matches kd's flops" in proc.stderr
    by_arm = {r["arm"]: r for r in ResultsStore(out / "results.db").rows("tiny-cifar10")}
    plain, kd, longer = by_arm["plain"], by_arm["kd"], by_arm["longer"]
    budget = longer["extra"]["budget"]
    steps_per_epoch = 512 // 128
    assert budget["steps"] == round(steps_per_epoch * kd["total_flops"] / plain["total_flops"]) > steps_per_epoch
    assert budget["match"] == "kd" and budget["by"] == "flops" and budget["base_arm"] == "plain"
    assert longer["extra"]["epochs"] == budget["epochs"] == budget["steps"] / steps_per_epoch
    assert longer["train_flops"] * 512 == plain["train_flops"] * budget["steps"] * 128
    assert abs(longer["total_flops"] - kd["total_flops"]) <= plain["train_flops"] / steps_per_epoch  # within a step
    assert longer["train_s"] > 0 and "accuracy" in longer["metrics"]


def test_bad_inputs_fail_with_one_line(tmp_path, data_dir):
    proc = leankd("run", "tests/configs/tiny-cifar10.yaml", "train.epoch=2", "--out", str(tmp_path), data_dir=data_dir,
                  check=False)
    assert proc.returncode == 2 and "did you mean 'train.epochs'" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    proc = leankd("run", "tests/configs/tiny-cifar10.yaml", "--out", str(tmp_path), "--data-dir", str(tmp_path),
                  data_dir=data_dir, check=False)
    assert proc.returncode == 2 and "cifar10_train.npz' not found" in proc.stderr
