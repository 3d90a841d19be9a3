"""Count the FLOPs of one call (e.g. a training step) without side effects.

Usage::

    from leankd.metering.flops import count_flops, format_flops

    def step():
        loss = loss_fn(model(x), y)
        loss.backward()

    n = count_flops(step, model, optimizers=(opt,))
    log.info("one step: %s (measured by FlopCounterMode)", format_flops(n))

`count_flops` really runs `fn` (it is not a static estimate), so it costs one
extra step of compute. Everything the step could change -- weights, BatchNorm
buffers, `.grad`s, optimizer state, RNG -- is saved first and put back after,
so counting before training does not change the run that follows.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from typing import Callable, Iterator

import torch
from torch.utils import flop_counter as _fc

from leankd.batching import logits_of

log = logging.getLogger(__name__)

aten = torch.ops.aten


def _sdpa_cpu_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """Forward FLOPs of CPU flash attention: the two batched matmuls (QK^T, PV)."""
    return _fc.sdpa_flop_count(query_shape, key_shape, value_shape)


def _sdpa_cpu_backward_flop(grad_out_shape, query_shape, key_shape, value_shape,
                            *args, out_shape=None, **kwargs) -> int:
    """Backward FLOPs of CPU flash attention (recomputed scores + four grad matmuls)."""
    return _fc.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def _linear_dynamic_flop(input_shape, *args, out_shape=None, **kwargs) -> int:
    """An int8 dynamically quantised Linear (teacher.precision=int8): 2 x rows x in x out, as for its fp32 self."""
    rows_x_in = 1
    for d in input_shape:
        rows_x_in *= d
    return 2 * rows_x_in * out_shape[-1]


def _custom_mapping() -> dict:
    """Formulas torch's registry lacks: CPU sdpa and int8 dynamic Linear otherwise count as 0 FLOPs.

    We call torch's unwrapped `*_flop_count` helpers; the registered `sdpa_flop`
    is already shape-wrapped and FlopCounterMode would wrap it a second time.
    """
    mapping = {torch.ops.quantized.linear_dynamic: _linear_dynamic_flop}
    if hasattr(_fc, "sdpa_flop_count") and hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        mapping[aten._scaled_dot_product_flash_attention_for_cpu] = _sdpa_cpu_flop
    if hasattr(_fc, "sdpa_backward_flop_count") and hasattr(
            aten, "_scaled_dot_product_flash_attention_for_cpu_backward"):
        mapping[aten._scaled_dot_product_flash_attention_for_cpu_backward] = _sdpa_cpu_backward_flop
    return mapping


def _clone_grad(g: torch.Tensor | None) -> torch.Tensor | None:
    return None if g is None else g.detach().clone()


@contextlib.contextmanager
def preserved_state(*modules: torch.nn.Module, optimizers=()) -> Iterator[None]:
    """Run a block, then put modules, grads, optimizers and RNG back as they were.

    Usage: ``with preserved_state(model, optimizers=(opt,)): train_step()``.
    Tensors are restored in place (`copy_` under no_grad), so optimizers that
    hold references to the parameter objects keep working. Costs one extra copy
    of every state tensor and grad in memory while the block runs.
    """
    # Non-tensor entries (a module's extra_state) are left alone: nothing in a
    # forward/backward pass changes them.
    states = [{k: v.detach().clone() for k, v in m.state_dict(keep_vars=True).items()
               if isinstance(v, torch.Tensor)} for m in modules]
    grads = [[(p, _clone_grad(p.grad)) for p in m.parameters()] for m in modules]
    opt_states = [copy.deepcopy(o.state_dict()) for o in optimizers]
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        with torch.no_grad():
            for m, saved in zip(modules, states):
                live = m.state_dict(keep_vars=True)
                for k, v in saved.items():
                    live[k].copy_(v)
            for pairs in grads:
                for p, g in pairs:
                    if g is None:
                        p.grad = None
                    elif p.grad is None or p.grad.shape != g.shape:
                        p.grad = g
                    else:
                        p.grad.copy_(g)
        for o, s in zip(optimizers, opt_states):
            o.load_state_dict(s)
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)


def count_flops(fn: Callable[[], object], *modules: torch.nn.Module, optimizers=()) -> int:
    """Run `fn()` once under FlopCounterMode and return its total FLOPs.

    Pass every module and optimizer `fn` touches so their state is restored.
    A multiply-add counts as 2 FLOPs (an int8 one too); elementwise ops (activations, norms,
    optimizer updates, bias adds) are not counted, as in torch's counter.
    """
    with preserved_state(*modules, optimizers=optimizers):
        with _fc.FlopCounterMode(display=False, custom_mapping=_custom_mapping()) as counter:
            fn()
    total = int(counter.get_total_flops())
    log.debug("count_flops: %d FLOPs", total)
    return total


def format_flops(n: int) -> str:
    """Human-readable FLOP count, e.g. ``format_flops(1_234_000_000) == "1.23 GFLOP"``."""
    value = float(n)
    for unit in ("", "K", "M", "G", "T", "P"):
        if abs(value) < 1000 or unit == "P":
            return f"{value:.0f} FLOP" if unit == "" else f"{value:.2f} {unit}FLOP"
        value /= 1000
    raise AssertionError("unreachable")


def forward_flops(model: torch.nn.Module) -> Callable[[object], int]:
    """A function counting the FLOPs of one inference forward of `model` on a batch (tensor or dict of them)."""
    def count(x) -> int:
        def forward() -> None:
            with torch.inference_mode():
                logits_of(model, x)
        return count_flops(forward, model)
    return count
