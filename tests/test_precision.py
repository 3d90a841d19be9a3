"""Precision object (leankd.precision): autocast dtype, scaler only for fp16, `auto` resolution, a real step."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import leankd.precision as precision_mod
from leankd.errors import ConfigError
from leankd.precision import Precision, resolve

CPU = torch.device("cpu")


def _matmul_dtype(prec: Precision) -> tuple[torch.dtype, torch.dtype | None]:
    """(dtype of a float32 matmul's output, autocast dtype in force or None) inside `prec.autocast()`."""
    a, b = torch.randn(4, 8), torch.randn(8, 3)
    with prec.autocast():
        active = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
        return (a @ b).dtype, active


def test_bf16_autocast_runs_matmuls_in_bf16_without_scaler():
    prec = Precision.create("bf16", CPU)
    assert prec.name == "bf16" and prec.scaler is None
    assert _matmul_dtype(prec) == (torch.bfloat16, torch.bfloat16)
    assert not torch.is_autocast_enabled("cpu")  # the context ended with the block


def test_fp32_autocast_is_a_no_op():
    prec = Precision.create("fp32", CPU)
    assert prec.name == "fp32" and prec.scaler is None and prec.reason == "requested"
    assert _matmul_dtype(prec) == (torch.float32, None)


def test_fp16_on_cpu_is_refused_naming_the_fix():
    for call in (lambda: Precision.create("fp16", CPU), lambda: resolve("fp16", CPU)):
        with pytest.raises(ConfigError, match="fp16") as err:
            call()
        assert "bf16" in str(err.value) and "fp32" in str(err.value)


def test_unknown_precision_is_refused():
    with pytest.raises(ConfigError, match="'fp8'.*auto, fp32, bf16, fp16"):
        resolve("fp8", CPU)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 (GradScaler) needs CUDA")
def test_fp16_on_cuda_has_a_grad_scaler():
    prec = Precision.create("fp16", torch.device("cuda"))
    assert isinstance(prec.scaler, torch.amp.GradScaler)


@pytest.mark.parametrize("native, name, why", [(True, "bf16", "AMX/AVX512-BF16"),
                                                (False, "fp32", "lacks native bf16")])
def test_auto_on_cpu_follows_native_bf16(monkeypatch, native, name, why):
    # cpu_has_native_bf16 is lru_cached: replace the module attribute rather than its result
    monkeypatch.setattr(precision_mod, "cpu_has_native_bf16", lambda: native)
    prec = Precision.create("auto", CPU)
    assert (prec.name, prec.reason) == resolve("auto", CPU)
    assert prec.name == name and prec.scaler is None
    assert prec.reason.startswith("auto: CPU") and why in prec.reason


def test_requested_bf16_on_cpu_without_native_support_says_it_is_slower(monkeypatch):
    monkeypatch.setattr(precision_mod, "cpu_has_native_bf16", lambda: False)
    name, reason = resolve("bf16", CPU)
    assert name == "bf16" and "no native bf16" in reason and "slower" in reason
    monkeypatch.setattr(precision_mod, "cpu_has_native_bf16", lambda: True)
    assert resolve("bf16", CPU) == ("bf16", "requested")


@pytest.mark.parametrize("name", ["fp32", "bf16"])
def test_backward_and_step_update_weights(name):
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    x, y = torch.randn(8, 4), torch.randn(8, 2)
    prec = Precision.create(name, CPU)
    with prec.autocast():
        loss = ((model(x).float() - y) ** 2).mean()
    prec.backward(loss)
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters())
    expected = [p.detach() - 0.1 * p.grad for p in model.parameters()]  # plain SGD, no scaling
    prec.step(opt)
    for p, b, e in zip(model.parameters(), before, expected):
        assert not torch.equal(p, b) and p.dtype == torch.float32
        torch.testing.assert_close(p.detach(), e)
