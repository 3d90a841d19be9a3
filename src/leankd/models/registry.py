"""Flat model registry: `@register_model` adds a constructor, `create_model` builds by name.

    from leankd.models import create_model, list_models
    model = create_model("resnet20", num_classes=10)
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from leankd.errors import ModelError, did_you_mean

MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register `fn` under its function name; the name must be new."""
    if fn.__name__ in MODELS:
        raise ValueError(f"model {fn.__name__!r} is already registered")
    MODELS[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    """Registered model names, in registration order."""
    return list(MODELS)


def create_model(name: str, num_classes: int) -> nn.Module:
    """Build the registered model `name`, with a "did you mean" hint for unknown names."""
    if name not in MODELS:
        raise ModelError(f"model error: unknown model '{name}'{did_you_mean(name, MODELS)}; known: {', '.join(MODELS)}")
    return MODELS[name](num_classes=num_classes)


def count_params(model: nn.Module) -> int:
    """Number of parameter elements (trainable or not); buffers excluded."""
    return sum(p.numel() for p in model.parameters())


def model_size_mb(model: nn.Module) -> float:
    """Parameter plus buffer bytes in MiB (2**20 bytes), at the tensors' current dtypes."""
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20
