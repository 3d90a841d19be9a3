"""Flat model registry: `@register_model` adds a constructor, `create_model` builds by name or import path.

    from leankd.models import create_model, list_models
    model = create_model("resnet20", num_classes=10)
    model = create_model("/home/me/models.py:tiny8", num_classes=10)   # a user's factory (models/user.py)

A model registered from a user's module or script is known to jobs by where its function was defined: a config
naming it is resolved to that import path (`resolve_model`), which each job's child process imports.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from torch import nn

from leankd.errors import ModelError, did_you_mean
from leankd.models.user import absolute_ref, is_import_path, load_factory, origin_of

MODELS: dict[str, Callable[..., nn.Module]] = {}
ORIGINS: dict[str, str | None] = {}  # a model registered outside leankd -> its import path (None: it has none)


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register `fn` under its function name; the name must be new (the same function imported again, from the
    same place, replaces itself)."""
    builtin = fn.__module__.startswith("leankd.")
    origin = None if builtin else origin_of(fn)
    if fn.__name__ in MODELS and (origin is None or ORIGINS.get(fn.__name__) != origin):
        raise ValueError(f"model {fn.__name__!r} is already registered")
    MODELS[fn.__name__] = fn
    if not builtin:
        ORIGINS[fn.__name__] = origin
    return fn


def resolve_model(name: str, base: Path | None = None) -> str:
    """The name a job's child process builds a model by: an import path checked to import and name a callable, its
    file made absolute (a relative one against `base`, default the working directory); a model registered by a
    user's module or script, the import path of its function; any other name unchanged."""
    if is_import_path(name):
        ref = absolute_ref(name, base)
        load_factory(ref)
        return ref
    return ORIGINS.get(name) or name


def list_models() -> list[str]:
    """Registered model names, in registration order."""
    return list(MODELS)


def create_model(name: str, num_classes: int) -> nn.Module:
    """Build the registered model `name`, or the factory an import path names (`fn(num_classes=...)`), with a "did
    you mean" hint for unknown names."""
    if is_import_path(name):
        model = load_factory(name)(num_classes=num_classes)
        if not isinstance(model, nn.Module):
            raise ModelError(f"model error: '{name}' returned a {type(model).__name__}, not a torch.nn.Module; make "
                             f"it return the model (it is called as fn(num_classes={num_classes}))")
        return model
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
