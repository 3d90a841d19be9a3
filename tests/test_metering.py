"""Tests for leankd.metering: run with `pytest tests/test_metering.py -q` (tiny, CPU, a few seconds)."""

import copy
import datetime as dt
import math
import os
import re
import sys
import time

import numpy as np
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

class _Sleeper(nn.Module):
    """Forward sleeps the next duration of a fixed list (cycling) and records how it was called."""

    def __init__(self, durations_ms: list[float]):
        super().__init__()
        self.lin = nn.Linear(1, 1)  # a parameter, so the module is an ordinary model
        self.durations_ms = durations_ms
        self.calls: list[tuple[bool, bool]] = []  # (training, inference_mode) of each call

    def forward(self, x):
        self.calls.append((self.training, torch.is_inference_mode_enabled()))
        time.sleep(self.durations_ms[(len(self.calls) - 1) % len(self.durations_ms)] / 1000.0)
        return x


def test_measure_latency_known_sleeps_and_warmup_excluded():
    warmup, batches = 3, 20
    timed = [float(ms) for ms in range(1, 11)] * 2  # 1..10 ms, twice: p50 = 5.5 ms, p90 = 9.1 ms
    model = _Sleeper([100.0] * warmup + timed).train()  # slow warm-up calls: timed, they would top p90
    out = latency.measure_latency(model, torch.zeros(4, 1), batches=batches, warmup=warmup)
    assert out["n"] == batches and len(model.calls) == warmup + batches
    known_p50, known_p90 = float(np.percentile(timed, 50)), float(np.percentile(timed, 90))
    assert (known_p50, known_p90) == pytest.approx((5.5, 9.1))
    # Each timed call lasts at least its sleep, so each order statistic is at least the sleep's.
    # Upper bounds are generous (a shared, noisy machine), but well under the 100 ms warm-up calls.
    assert known_p50 <= out["p50_ms"] < known_p50 + 40
    assert known_p90 <= out["p90_ms"] < known_p90 + 40
    assert all(call == (False, True) for call in model.calls)  # eval mode, inference mode
    assert model.training  # mode restored


def test_measure_latency_fresh_autocast_per_call_and_eval_mode_kept():
    model = _Sleeper([0.0]).eval()
    made, seen = [], []
    model.register_forward_hook(lambda *_: seen.append(torch.get_autocast_dtype("cpu")
                                                        if torch.is_autocast_enabled("cpu") else None))

    def autocast():
        made.append(1)
        return torch.autocast("cpu", dtype=torch.bfloat16)

    out = latency.measure_latency(model, torch.zeros(2, 1), batches=3, warmup=2, autocast=autocast)
    assert out["n"] == 3 and len(made) == 5 and seen == [torch.bfloat16] * 5
    assert not model.training
    with pytest.raises(ValueError, match="batches"):
        latency.measure_latency(model, torch.zeros(2, 1), batches=0)


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

def _write(path, value):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(f"{value}\n")


def test_energy_rapl_exact_joules_on_fake_tree(tmp_path):
    root = str(tmp_path)
    _write(f"{root}/intel-rapl:0/energy_uj", 1_000_000)
    _write(f"{root}/intel-rapl:0/max_energy_range_uj", 10**12)
    with energy.EnergyMeter("cpu", rapl_root=root) as em:
        assert em.source == "rapl"
        _write(f"{root}/intel-rapl:0/energy_uj", 3_500_000)  # the counter advances 2.5 J in the block
    assert em.source == "rapl" and em.joules == 2.5


def test_energy_rapl_packages_summed_subdomains_ignored_wrap_counted(tmp_path):
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


def test_energy_unreadable_tree_is_none_and_unavailable(tmp_path):
    with energy.EnergyMeter("cpu", rapl_root=str(tmp_path / "missing")) as em:
        pass
    assert em.joules is None and em.source == "unavailable"

    garbled = tmp_path / "garbled"
    _write(f"{garbled}/intel-rapl:0/energy_uj", "not a number")
    os.makedirs(f"{garbled}/intel-rapl:1/energy_uj")  # a directory where the counter file should be
    with energy.EnergyMeter("cpu", rapl_root=str(garbled)) as em:
        pass
    assert em.joules is None and em.source == "unavailable"

    vanishing = tmp_path / "vanishing"
    _write(f"{vanishing}/intel-rapl:0/energy_uj", 5)
    with energy.EnergyMeter("cpu", rapl_root=str(vanishing)) as em:
        os.remove(f"{vanishing}/intel-rapl:0/energy_uj")  # readable at the start, gone at the end
    assert em.joules is None and em.source == "unavailable"


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
