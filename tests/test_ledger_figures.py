"""The ledger's figures are right: FLOP counting changes nothing and copies no teacher; costs add up; ranking
seconds are charged as a stated share; the schema docs list only what the code writes."""
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from leankd.config import ArmConfig, OptimConfig
from leankd.data.cifar10 import VisionLoader
from leankd.distill.distiller import Distiller
from leankd.distill.selection import build_pairs
from leankd.jobs.measure import count_train_flops
from leankd.metering import ledger
from leankd.models import create_model
from leankd.precision import Precision
from leankd.train import build_optimizer, build_scheduler, fit

from conftest import REPO

CPU = torch.device("cpu")
HINT = ArmConfig(method="kd", pairs=[{"student": 0, "teacher": 8}], feature_losses={"hint_mse": 1.0})


def _loader(n=48, bs=16):
    g = np.random.default_rng(0)
    return VisionLoader(g.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), g.integers(0, 10, n), batch_size=bs,
                        seed=0, augment=True, shuffle=True)


def _distiller(teacher):
    torch.manual_seed(0)
    student = create_model("resnet8", 10)
    loader = _loader()
    d = Distiller(student, teacher, HINT, pairs=build_pairs(HINT, student, teacher),
                  example=loader.example(None, 2)[0])
    assert len(d.adapters) == 1  # 16 -> 64 channels: a 1x1 conv adapter, trained with the student
    optim = OptimConfig(epochs=1, batch_size=16, lr=0.05)
    opt = build_optimizer(d, optim)
    return d, loader, opt, build_scheduler(opt, optim, len(loader))


def _teacher():
    torch.manual_seed(1)
    return create_model("resnet20", 10)


def _state(*modules):
    out = {}
    for i, m in enumerate(modules):
        out.update({f"{i}.{k}": v.detach().clone() for k, v in m.state_dict().items()})
        out.update({f"{i}.{k}.grad": None if p.grad is None else p.grad.clone() for k, p in m.named_parameters()})
    return out


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all((x is None and y is None) or (x is not None and y is not None and
                                        torch.equal(x, y)) for x, y in ((a[k], b[k]) for k in a))


def test_counting_flops_leaves_student_adapters_teacher_optimiser_and_rng_bit_identical():
    teacher = _teacher()
    d, loader, opt, _ = _distiller(teacher)
    before, opt_before, rng = _state(d.student, d.adapters, teacher), opt.state_dict(), torch.get_rng_state()
    flops = count_train_flops(d, opt, Precision.create("fp32", CPU), loader, epochs=1)
    assert flops["train_flops"] > flops["teacher_flops"] > 0
    assert _same(before, _state(d.student, d.adapters, teacher))  # adapter grads included
    assert opt.state_dict() == opt_before and torch.equal(torch.get_rng_state(), rng)
    assert d.teacher_s == 0.0  # counting is not training: no teacher seconds charged


def test_training_is_the_same_with_and_without_counting_flops():
    losses, weights = [], []
    for count in (False, True):
        d, loader, opt, sched = _distiller(_teacher())
        prec = Precision.create("fp32", CPU)
        if count:
            count_train_flops(d, opt, prec, loader, epochs=1)
        losses.append(fit(d, loader, opt, sched, prec, 1, CPU)["epoch_loss"])
        weights.append(_state(d.student, d.adapters))
    assert losses[0] == losses[1] and _same(*weights)


def _peak_mb() -> float:
    return int(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) / 1024


def test_counting_flops_adds_no_copy_of_the_teacher_to_peak_memory():
    teacher = _teacher()
    teacher.register_buffer("ballast", torch.ones(64 * 2**20))  # 256 MiB the teacher carries but never uses
    d, loader, opt, _ = _distiller(teacher)
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset this process's peak RSS to its current RSS
    except OSError:
        pytest.skip("cannot reset the peak RSS here (/proc/self/clear_refs)")
    start = _peak_mb()
    count_train_flops(d, opt, Precision.create("fp32", CPU), loader, epochs=1)
    assert _peak_mb() - start < 128  # a snapshot of the teacher would add >= 256 MiB


def test_total_is_train_plus_shares_and_ranking_is_a_stated_share():
    costs = {"train_s": 10.0, "teacher_s": 4.0, "train_flops": 7, "teacher_flops": 3, "infer_batch_size": 8,
             "infer_ms_p50": 1.0, "infer_ms_p90": 2.0, "infer_ms_p50_b1": 0.1, "infer_ms_p90_b1": 0.2,
             "energy_j": None, "energy_source": "unavailable", "params": 5, "size_mb": 0.1,
             "baseline_rss_mb": 100.0, "cuda_peak_mb": None}
    made_here = {"seconds": 6.0, "experiment": "exp"}
    share = ledger.shared_cost("layer ranking", made_here, "exp", users=3)
    row = ledger.build_ledger(costs, child_peak_rss_mb=350.0, ranking=share)
    assert row["ranking_share_s"] == 2.0 and row["total_s"] == 12.0 and row["teacher_s"] == 4.0
    assert row["peak_mem_mb"] == 250.0 and row["peak_mem_source"] == ledger.PEAK_CHILD
    assert "6.0 s / 3 job(s)" in row["sources"]["ranking_share_s"]
    reused = ledger.build_ledger(costs, None, ledger.shared_cost("layer ranking", made_here, "later", users=3))
    assert reused["ranking_share_s"] == 0.0 and "reused from experiment 'exp'" in reused["sources"]["ranking_share_s"]
    assert reused["peak_mem_mb"] is None and reused["peak_mem_source"] == ledger.PEAK_NONE


def test_schema_docs_name_exactly_the_sources_the_code_writes():
    docs = (REPO / "docs" / "results-schema.md").read_text()
    for source in ledger.PEAK_MEM_SOURCES + ledger.ENERGY_SOURCES:
        assert f"`{source}`" in docs, source
    assert "estimated" not in docs and "child_rss_minus_baseline" not in docs and "cuda_max_allocated" not in docs


class _FakeEvent:
    def __init__(self, enable_timing=False):
        self.t = None

    def record(self):
        _FakeEvent.clock += 1.0
        self.t = _FakeEvent.clock

    def elapsed_time(self, end):
        return (end.t - self.t) * 1000.0  # ms


def test_device_timer_on_cuda_records_events_and_syncs_once_when_read(monkeypatch):
    from leankd.device import Timer

    syncs = []
    _FakeEvent.clock = 0.0
    monkeypatch.setattr(torch.cuda, "Event", _FakeEvent)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: syncs.append(device))
    timer = Timer(torch.device("cuda"))
    for _ in range(50):  # e.g. the teacher forward of every training step
        with timer:
            pass
    assert syncs == []  # no per-step sync
    assert timer.seconds == pytest.approx(50 * 1000.0 / 1000.0) and len(syncs) == 1
    assert timer.seconds == pytest.approx(50.0) and len(syncs) == 1  # already summed: no second sync
