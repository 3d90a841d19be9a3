"""Adapters map a student feature onto its teacher feature's width, for hint losses (FitNets regressors).

Shapes come from one dry forward pass (`Distiller` does it on a real 2-sample batch), never from config:
    adapter, label = make_adapter("hint_mse", s_shape=(2, 16, 32, 32), t_shape=(2, 64, 8, 8))
    # -> Conv2d(16, 64, 1), "conv1x1 16->64 (spatial 32x32 pooled to 8x8 in the loss)"

Maps: a 1x1 conv when channels differ; hidden states: a linear layer when widths differ; else none.
Spatial sizes are aligned inside the losses (the larger map average-pooled), not here.
"""
from __future__ import annotations

from torch import nn

HINT_LOSSES = ("hint_mse", "hint_cosine")  # the losses that compare features element-wise


def make_adapter(loss: str, s_shape: tuple[int, ...], t_shape: tuple[int, ...]) -> tuple[nn.Module | None, str]:
    if loss not in HINT_LOSSES:
        return None, "none"  # attention transfer and relations compare maps/distributions, not raw features
    if len(s_shape) != len(t_shape):
        raise ValueError(f"cannot pair a student feature of shape {tuple(s_shape)} with a teacher feature of "
                         f"shape {tuple(t_shape)}: pick layers of the same kind")
    spatial = ""
    if len(s_shape) == 4:
        s_dim, t_dim = s_shape[1], t_shape[1]
        if s_shape[2:] != t_shape[2:]:
            spatial = f" (spatial {s_shape[2]}x{s_shape[3]} vs {t_shape[2]}x{t_shape[3]}: larger pooled in the loss)"
        module = nn.Conv2d(s_dim, t_dim, 1, bias=False) if s_dim != t_dim else None
        kind = "conv1x1"
    else:
        s_dim, t_dim = s_shape[-1], t_shape[-1]
        module = nn.Linear(s_dim, t_dim) if s_dim != t_dim else None
        kind = "linear"
    label = f"{kind} {s_dim}->{t_dim}" if module is not None else "none"
    return module, label + spatial
