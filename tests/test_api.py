"""The Python API takes any nn.Module as teacher or student, through the same runner and store."""
import json
import logging

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from leankd import api
from leankd.config import load_config
from leankd.experiment import run_experiment
from leankd.models import create_model
from leankd.results.store import ResultsStore


class TinyCNN(nn.Module):
    def __init__(self, width=8):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(width, 10)

    def forward(self, x):
        return self.head(self.body(x))


def test_user_modules_as_teacher_and_student(tmp_path, data_dir):
    cfg = load_config("tests/configs/tiny-cifar10.yaml", ["name=api", "data.train_limit=256", "data.test_limit=128"])
    torch.manual_seed(0)
    teacher = TinyCNN(16)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    rows = run_experiment(cfg, data_dir, tmp_path, student=lambda: TinyCNN(8), teacher=teacher)
    assert [r["arm"] for r in rows] == ["teacher", "plain", "kd"]
    assert rows[0]["model"] == "TinyCNN" and rows[0]["train_s"] == 0.0  # evaluated, not trained
    assert rows[0]["extra"]["from_checkpoint"]
    assert rows[2]["teacher_s"] > 0 and rows[2]["params"] == sum(p.numel() for p in TinyCNN(8).parameters())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert rows[1]["peak_mem_mb"] is None and "unavailable" in rows[1]["peak_mem_source"]
    assert len(ResultsStore(tmp_path / "results.db").rows("api")) == 3


def _small_data(src, dst, n_train=256, n_test=128):
    """A CIFAR-10 data directory holding a real slice (so a test can change its content). The files are sorted by
    class: take every k-th image so that every class is there (leankd refuses one-class training data)."""
    (dst / "cifar10").mkdir(parents=True)
    for split, n in (("train", n_train), ("test", n_test)):
        with np.load(src / "cifar10" / f"cifar10_{split}.npz") as z:
            step = len(z["labels"]) // n
            np.savez(dst / "cifar10" / f"cifar10_{split}.npz", images=z["images"][::step][:n],
                     labels=z["labels"][::step][:n])


def test_student_rows_are_redone_when_the_teacher_weights_or_the_data_change(tmp_path, data_dir):
    data, ckpt, out = tmp_path / "data", tmp_path / "teacher.safetensors", tmp_path / "runs"
    _small_data(data_dir, data)
    torch.manual_seed(0)
    save_file(create_model("resnet8", 10).state_dict(), str(ckpt))
    cfg = load_config("tests/configs/tiny-cifar10.yaml", [
        "name=ident", f"teacher.checkpoint={ckpt}", "arms={plain: {method: plain}}", "metering.isolate_arms=false"])
    assert [r["arm"] for r in run_experiment(cfg, data, out)] == ["teacher", "plain"]
    assert run_experiment(cfg, data, out) == []  # nothing changed: every row is reused
    torch.manual_seed(1)
    save_file(create_model("resnet8", 10).state_dict(), str(ckpt))  # same path, other weights
    assert [r["arm"] for r in run_experiment(cfg, data, out)] == ["teacher", "plain"]
    with np.load(data / "cifar10" / "cifar10_train.npz") as z:
        images, labels = z["images"], z["labels"]
    np.savez(data / "cifar10" / "cifar10_train.npz", images=images, labels=(labels + 1) % 10)  # same files, new data
    assert [r["arm"] for r in run_experiment(cfg, data, out)] == ["teacher", "plain"]
    assert len({r["config_hash"] for r in ResultsStore(out / "results.db").rows("ident") if r["arm"] == "plain"}) == 3


def test_the_python_api_writes_the_report_files_and_log_lines_of_leankd_run(tmp_path, data_dir, caplog):
    """leankd.api.run_experiment is what `leankd run` calls: the same start line, the report files, the table."""
    cfg = load_config("tests/configs/tiny-cifar10.yaml", ["name=apirep", "data.train_limit=256", "data.test_limit=128",
                                                          "arms={plain: {method: plain}}"])
    shown = []
    with caplog.at_level(logging.INFO, logger="leankd"):
        rows = api.run_experiment(cfg, data_dir, tmp_path, student=lambda: TinyCNN(8), teacher=TinyCNN(16),
                                  show=shown.append)
    assert [r["arm"] for r in rows] == ["teacher", "plain"]
    assert f"experiment apirep (config hash {cfg.hash()}): arms ['plain'], seeds [0]" in caplog.text
    assert f"wrote {tmp_path / 'report.md'} and report.html" in caplog.text
    assert len(shown) == 1 and "| plain" in shown[0] and "## apirep" in shown[0]
    assert "| plain" in (tmp_path / "report.md").read_text()
    assert "apirep" in json.loads((tmp_path / "report.json").read_text())
    assert (tmp_path / "report.html").stat().st_size > 0
