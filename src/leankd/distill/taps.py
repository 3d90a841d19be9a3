"""Taps: capture layer outputs by fully-qualified module name with forward hooks (models are never rewritten).

    layers = candidate_layers(model)                 # ["layer1.0", ...] or ["bert.encoder.layer.0", ...]
    name = resolve_layer(model, 3)                   # index into the candidates, or a module name
    with Taps(model, ["layer2.0"]) as taps:
        logits = model(x)
        feats = taps.pop()                           # {"layer2.0": {"out": tensor}}; the store is cleared

A tap keeps only what a loss needs: the output (first element when a module returns a tuple), and, for
attention-relation losses, the outputs of the layer's query/key/value projections. `stop_after` ends the
forward right after that layer's output is captured (a truncated teacher forward: the layers after it are
never run). Hooks are removed on `close()` / leaving the `with` block.
"""
from __future__ import annotations

import difflib

import torch
from torch import nn

from leankd.models.text import ModelError

# Names of the query/key/value projections inside an attention block (BERT/RoBERTa, DistilBERT, Llama-like).
QKV_NAMES = (("query", "key", "value"), ("q_lin", "k_lin", "v_lin"), ("q_proj", "k_proj", "v_proj"))


class StopForward(Exception):
    """Raised by the deepest tap of a truncated forward; caught by `Taps.run`."""


def candidate_layers(model: nn.Module) -> list[str]:
    """The layers a user distils: a ResNet's residual blocks (`feature_info`), else the encoder layers."""
    if getattr(model, "feature_info", None):
        return [info["module"] for info in model.feature_info]
    from leankd.models.text import encoder_layers

    parent, attr, stack = encoder_layers(model)
    prefix = next(n for n, m in model.named_modules() if m is parent)
    base = f"{prefix}.{attr}" if prefix else attr
    return [f"{base}.{i}" for i in range(len(stack))]


def resolve_layer(model: nn.Module, ref: int | str, what: str = "layer") -> str:
    """An index into `candidate_layers(model)` or any module name -> module name; a clear error otherwise."""
    if isinstance(ref, str) and ref.isdigit():
        ref = int(ref)
    try:
        cands = candidate_layers(model)
    except ModelError:
        cands = []  # a model with neither feature_info nor a layer list: module names still work
    if isinstance(ref, int):
        if not 0 <= ref < len(cands):
            raise ModelError(f"layer error: {what} index {ref} is out of range: {type(model).__name__} has "
                             f"{len(cands)} candidate layers (0..{len(cands) - 1}); see `leankd layers`")
        return cands[ref]
    names = [n for n, _ in model.named_modules() if n]
    if ref not in names:
        close = difflib.get_close_matches(ref, cands + names, n=1, cutoff=0.6)
        hint = f" (did you mean '{close[0]}'?)" if close else f"; candidates: {', '.join(cands[:12])}"
        raise ModelError(f"layer error: {what} '{ref}' is not a module of {type(model).__name__}{hint}")
    return ref


def layer_index(model: nn.Module, name: str) -> int | None:
    try:
        cands = candidate_layers(model)
    except ModelError:
        return None
    return cands.index(name) if name in cands else None


def qkv_modules(layer: nn.Module, layer_name: str) -> dict[str, str]:
    """{"q": name, "k": name, "v": name} of the projections inside `layer` (names relative to the model)."""
    found = {}
    for sub_name, _ in layer.named_modules():
        leaf = sub_name.rsplit(".", 1)[-1]
        for triple in QKV_NAMES:
            if leaf in triple:
                found.setdefault("qkv"[triple.index(leaf)], f"{layer_name}.{sub_name}")
    if len(found) != 3:
        raise ModelError(f"layer error: '{layer_name}' has no query/key/value projections (looked for "
                         f"{', '.join('/'.join(t) for t in QKV_NAMES)}); use a feature loss other than "
                         "attention_relation for it")
    return found


def _first(output):
    return output[0] if isinstance(output, (tuple, list)) else output


class Taps:
    def __init__(self, model: nn.Module, names: list[str], qkv: bool = False, stop_after: str | None = None):
        self.model, self.store, self.handles, self.running = model, {}, [], False
        for name in dict.fromkeys(names):  # each layer hooked once even if it appears in several pairs
            module = model.get_submodule(resolve_layer(model, name))
            self.handles.append(module.register_forward_hook(self._hook(name, "out", name == stop_after)))
            if qkv:
                for part, sub in qkv_modules(module, name).items():
                    self.handles.append(model.get_submodule(sub).register_forward_hook(self._hook(name, part)))
        if stop_after is not None and stop_after not in names:
            raise ValueError(f"stop_after '{stop_after}' is not one of the tapped layers")

    def _hook(self, name: str, part: str, stop: bool = False):
        def hook(module, args, output):
            self.store.setdefault(name, {})[part] = _first(output)
            if stop and self.running:  # only inside `run`: another user of this model is never cut short
                raise StopForward  # the rest of the forward is never computed
        return hook

    def pop(self) -> dict[str, dict[str, torch.Tensor]]:
        """What the last forward captured, {layer: {"out"[, "q", "k", "v"]}}; the store is emptied."""
        out, self.store = self.store, {}
        return out

    def run(self, fn, *args, **kwargs):
        """Call fn (a forward); returns its result, or None when a `stop_after` tap ended it early."""
        self.running = True
        try:
            return fn(*args, **kwargs)
        except StopForward:
            return None
        finally:
            self.running = False

    def close(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles, self.store = [], {}

    def __enter__(self) -> "Taps":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
