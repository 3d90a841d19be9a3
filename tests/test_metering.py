"""Tests for leankd.metering: run with `pytest tests/test_metering.py -q` (tiny, CPU, a few seconds)."""

import copy
import datetime as dt
import glob
import math
import os
import re
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from leankd.metering import energy, flops, latency, memory, provenance


def _small_model():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 6 * 6, 5), nn.Dropout(0.5))


def _step(model, opt, x):
    opt.zero_grad()
    model(x).sum().backward()
    opt.step()


# ---- flops ---------------------------------------------------------------

def test_count_flops_leaves_state_untouched():
    torch.manual_seed(0)
    model = _small_model().train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(2, 3, 8, 8)
    _step(model, opt, x)  # real step: momentum buffers, BN stats and grads now exist
    model[4].bias.grad = None  # a None grad must come back as None
    params = list(model.parameters())
    before_sd = {k: v.clone() for k, v in model.state_dict().items()}
    before_grads = [None if p.grad is None else p.grad.clone() for p in params]
    before_opt = copy.deepcopy(opt.state_dict())
    before_rng = torch.get_rng_state()

    def fn():
        model(x).sum().backward()
        torch.rand(10)

    n = flops.count_flops(fn, model, optimizers=(opt,))
    assert n > 0
    after_sd = model.state_dict()
    assert set(after_sd) == set(before_sd)
    for k, v in before_sd.items():  # includes running_mean/var and num_batches_tracked
        assert torch.equal(after_sd[k], v), k
    for p, g in zip(params, before_grads):
        assert (p.grad is None) == (g is None)
        if g is not None:
            assert torch.equal(p.grad, g)
    assert list(model.parameters()) == params and all(a is b for a, b in zip(model.parameters(), params))
    after_opt = opt.state_dict()
    for i, st in before_opt["state"].items():
        assert torch.equal(after_opt["state"][i]["momentum_buffer"], st["momentum_buffer"])
    assert torch.equal(torch.get_rng_state(), before_rng)


def test_count_flops_does_not_change_training_that_follows():
    torch.manual_seed(0)
    a = _small_model().train()
    b = copy.deepcopy(a)
    opt_a = torch.optim.SGD(a.parameters(), lr=0.1, momentum=0.9)
    opt_b = torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(2, 3, 8, 8)
    torch.manual_seed(1)
    _step(a, opt_a, x)
    _step(a, opt_a, x)
    torch.manual_seed(1)
    _step(b, opt_b, x)
    flops.count_flops(lambda: _step(b, opt_b, x), b, optimizers=(opt_b,))  # counted step is undone
    _step(b, opt_b, x)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


def test_conv_and_linear_are_two_flops_per_mac():
    n, cin, cout, k, h = 2, 3, 4, 3, 8
    conv = nn.Conv2d(cin, cout, k)
    x = torch.randn(n, cin, h, h)
    hout = h - k + 1
    conv_macs = n * cout * hout * hout * cin * k * k
    assert flops.count_flops(lambda: conv(x), conv) == 2 * conv_macs

    lin = nn.Linear(144, 5)
    z = torch.randn(n, 144)
    assert flops.count_flops(lambda: lin(z), lin) == 2 * n * 144 * 5


def test_cpu_sdpa_counts_like_explicit_attention():
    b, h, length, d = 2, 3, 8, 4
    q, k, v = (torch.randn(b, h, length, d) for _ in range(3))
    explicit = flops.count_flops(lambda: torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d), -1) @ v)
    fused = flops.count_flops(lambda: F.scaled_dot_product_attention(q, k, v))
    one_bmm = 2 * b * h * length * length * d
    assert explicit == 2 * one_bmm
    assert fused == explicit

    if hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu_backward"):
        qg = q.clone().requires_grad_()
        total = flops.count_flops(lambda: F.scaled_dot_product_attention(qg, k, v).sum().backward())
        assert total == 2 * one_bmm + 5 * one_bmm  # backward recomputes scores, then 4 grad matmuls


def test_format_flops():
    assert flops.format_flops(1_234_000_000) == "1.23 GFLOP"
    assert flops.format_flops(512) == "512 FLOP"
    assert flops.format_flops(2_500_000) == "2.50 MFLOP"


# ---- latency -------------------------------------------------------------

def test_measure_latency_percentiles_and_mode_restored():
    model = nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.1)).train()
    x = torch.randn(4, 8)
    out = latency.measure_latency(model, x, batches=5, warmup=1)
    assert set(out) == {"p50_ms", "p90_ms", "n"}
    assert 0 <= out["p50_ms"] <= out["p90_ms"] and out["n"] == 5
    assert model.training
    out_bf16 = latency.measure_latency(model.eval(), x, batches=3, warmup=0,
                                       autocast=lambda: torch.autocast("cpu", dtype=torch.bfloat16))
    assert out_bf16["n"] == 3 and not model.training


# ---- memory --------------------------------------------------------------

def test_rss_readings_positive():
    assert memory.current_rss_mb() > 0
    assert memory.peak_rss_mb() >= memory.current_rss_mb() * 0.99
    assert memory.cuda_peak_mb("cpu") is None
    memory.reset_cuda_peak("cpu")  # no-op off CUDA


def test_run_child_measured_peak_and_returncode():
    code = "import numpy as np; a=np.ones(200_000_000, dtype=np.uint8); a[:]=1"
    rc, peak = memory.run_child_measured([sys.executable, "-c", code])
    assert rc == 0 and peak >= 190
    rc, _ = memory.run_child_measured([sys.executable, "-c", "import sys; sys.exit(3)"])
    assert rc == 3


# ---- energy --------------------------------------------------------------

def _rapl_readable():
    for path in glob.glob("/sys/class/powercap/intel-rapl:*/energy_uj"):
        try:
            with open(path) as f:
                f.read()
            return True
        except OSError:
            pass
    return False


@pytest.mark.skipif(_rapl_readable(), reason="RAPL is readable on this machine")
def test_energy_unavailable_here_is_none():
    with energy.EnergyMeter("cpu") as em:
        sum(range(1000))
    assert em.joules is None and em.source == "unavailable"


def _write(path, value):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(f"{value}\n")


def test_energy_rapl_reader_on_fake_tree(tmp_path):
    root = str(tmp_path)
    _write(f"{root}/intel-rapl:0/energy_uj", 900)
    _write(f"{root}/intel-rapl:0/max_energy_range_uj", 1000)
    _write(f"{root}/intel-rapl:0:0/energy_uj", 5)  # sub-domain: must be ignored
    _write(f"{root}/intel-rapl:1/energy_uj", 0)
    _write(f"{root}/intel-rapl:1/max_energy_range_uj", 10**12)
    with energy.EnergyMeter("cpu", rapl_root=root) as em:
        _write(f"{root}/intel-rapl:0/energy_uj", 100)  # wrapped: 900 -> 1000 -> 100 = 200 uJ
        _write(f"{root}/intel-rapl:0:0/energy_uj", 10**9)
        _write(f"{root}/intel-rapl:1/energy_uj", 1_000_000)
    assert em.source == "rapl"
    assert em.joules == pytest.approx(1.0 + 200e-6)

    with energy.EnergyMeter("cpu", rapl_root=str(tmp_path / "empty")) as em2:
        pass
    assert em2.joules is None and em2.source == "unavailable"


# ---- provenance ----------------------------------------------------------

def test_provenance_keys_and_code_hash():
    rec = provenance.provenance("cpu", "fp32")
    keys = {"leankd_version", "torch_version", "python_version", "numpy_version", "platform", "cpu",
            "device", "threads", "precision", "git_commit", "git_dirty", "code_hash"}
    assert keys <= set(rec)
    assert re.fullmatch(r"[0-9a-f]{16}", rec["code_hash"])
    assert rec["device"] == "cpu" and rec["precision"] == "fp32" and rec["threads"] >= 1
    assert rec["git_dirty"] in (True, False, None)
    assert provenance.provenance("cpu", "fp32")["code_hash"] == rec["code_hash"]
    ts = dt.datetime.fromisoformat(provenance.now_iso())
    assert ts.utcoffset() == dt.timedelta(0) and ts.microsecond == 0
