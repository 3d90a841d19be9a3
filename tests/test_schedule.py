"""LR schedules (leankd.train.build_scheduler): warm-up, then onecycle / cosine / constant, stepped for real."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from leankd.config import OptimConfig
from leankd.train import build_scheduler

LR, TOTAL = 0.1, 20


def _lrs(schedule: str, warmup_frac: float, total: int = TOTAL) -> list[float]:
    """The LR a real SGD optimizer uses at each of `total` steps (the scheduler stepped after each)."""
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=LR)
    sched = build_scheduler(opt, OptimConfig(lr=LR, schedule=schedule, warmup_frac=warmup_frac), total)
    lrs = []
    for _ in range(total):
        lrs.append(sched.get_last_lr()[0])
        assert opt.param_groups[0]["lr"] == lrs[-1]  # the optimizer really uses it
        opt.step()
        sched.step()
    return lrs


def _by_hand(schedule: str, warm: int, total: int = TOTAL) -> list[float]:
    """The definitions: linear warm-up (step+1)/warm, then linear decay, half-cosine, or flat."""
    out = []
    for step in range(total):
        if step < warm:
            f = (step + 1) / warm
        elif schedule == "onecycle":
            f = 1 - (step - warm) / (total - warm)
        elif schedule == "cosine":
            f = 0.5 * (1 + math.cos(math.pi * (step - warm) / (total - warm)))
        else:
            f = 1.0
        out.append(LR * f)
    return out


@pytest.mark.parametrize("schedule", ["onecycle", "cosine", "constant"])
def test_warmup_then_schedule_matches_definition(schedule):
    lrs = _lrs(schedule, warmup_frac=0.25)  # warm = int(0.25 * 20) = 5 steps
    assert lrs == pytest.approx(_by_hand(schedule, warm=5))
    assert lrs[0] == pytest.approx(LR / 5)  # first step: lr / warm
    assert lrs[4] == pytest.approx(LR)  # last warm-up step: the peak
    assert lrs[:5] == sorted(lrs[:5])


def test_end_of_each_schedule():
    # last step is 19: 14 of the 15 post-warm-up steps done
    assert _lrs("onecycle", 0.25)[-1] == pytest.approx(LR * (1 / 15))
    assert _lrs("cosine", 0.25)[-1] == pytest.approx(LR * 0.5 * (1 + math.cos(math.pi * 14 / 15)))
    assert _lrs("cosine", 0.25)[-1] < 0.011 * LR
    assert _lrs("constant", 0.25)[-1] == pytest.approx(LR)


@pytest.mark.parametrize("schedule", ["onecycle", "cosine", "constant"])
def test_no_warmup_starts_at_peak(schedule):
    lrs = _lrs(schedule, warmup_frac=0.0)
    assert lrs[0] == pytest.approx(LR)
    assert lrs == pytest.approx(_by_hand(schedule, warm=0))
    if schedule != "constant":
        assert all(a > b for a, b in itertools.pairwise(lrs))  # decays from the first step on
