"""The Python API takes any nn.Module as teacher or student, through the same runner and store."""
import torch
from torch import nn

from leankd.config import load_config
from leankd.experiment import run_experiment
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
