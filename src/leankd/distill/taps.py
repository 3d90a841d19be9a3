"""Taps: capture what named layers compute with forward hooks (models are never rewritten), and cut a forward short.

    layers = candidate_layers(model)                 # ["layer1.0", ...] or ["bert.encoder.layer.0", ...]
    name = resolve_layer(model, 3)                   # index into the candidates, or a module name
    with Taps(model, ["layer2.0"]) as taps:
        logits = model(x)
        feats = taps.pop()                           # {"layer2.0": {"out": tensor}}; the store is cleared

A tap keeps only what a loss needs: the output (first element when a module returns a tuple), and, for
attention-relation losses, the outputs of the layer's query/key/value projections. Options:
  summary   fn(module, layer input, output) -> stored under "summary" instead of the output, computed at
            hook time (before a later in-place op can overwrite the output; keep a pooled vector, not a map)
  replace   fn(module, layer input, output) -> the tensor that replaces the layer's output (an ablation)
  truncate  `calibrate(fn, *args)` runs one full forward counting hook calls; each later `run(fn, *args)`
            ends right after that many calls, i.e. after the last tapped call in *execution* order (the
            layers after it are never run). Assumes a forward whose control flow does not depend on the input.
Hooks are removed on `close()` / leaving the `with` block.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from leankd.errors import ModelError, did_you_mean

# Names of the query/key/value projections inside an attention block (BERT/RoBERTa, DistilBERT, Llama-like).
QKV_NAMES = (("query", "key", "value"), ("q_lin", "k_lin", "v_lin"), ("q_proj", "k_proj", "v_proj"))


class StopForward(Exception):
    """Raised by the last tapped hook call of a truncated forward; caught by `Taps.run`."""


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
    """An index into `candidate_layers(model)` (int or digit string) or any module name -> module name.

    A string that is itself a module name is taken as one (the children of an nn.Sequential are "0", "1", ...);
    an unknown name or an out-of-range index is a ModelError with a did-you-mean hint."""
    names = [n for n, _ in model.named_modules() if n]
    if isinstance(ref, str) and ref in names:
        return ref
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
    hint = did_you_mean(ref, cands + names) or (f"; candidates: {', '.join(cands[:12])}" if cands else "")
    raise ModelError(f"layer error: {what} '{ref}' is not a module of {type(model).__name__}{hint}")


def layer_index(model: nn.Module, name: str) -> int | None:
    """Position of `name` among the candidate layers, or None when it is not one."""
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


def _with_first(output, new: torch.Tensor):  # keep the rest of a tuple (attention weights, cache)
    if isinstance(output, (tuple, list)):
        return (new, *output[1:]) if isinstance(output, tuple) else [new, *output[1:]]
    return new


def _layer_input(args: tuple, kwargs: dict):  # HF layers may get hidden_states by keyword
    return args[0] if args else kwargs.get("hidden_states")


Summary = Callable[[nn.Module, Any, torch.Tensor], Any]  # (module, layer input, output) -> value


class Taps:
    """Forward hooks on the named layers of `model`; `pop()` returns (and clears) what the last forward left."""

    def __init__(self, model: nn.Module, names: list, qkv: bool = False, truncate: bool = False,
                 summary: Summary | None = None, replace: Summary | None = None):
        self.model, self.store, self.handles = model, {}, []
        self.truncate, self.summary, self.replace = truncate, summary, replace
        self.calls, self.stop_at, self.running = 0, None, False
        self.names = list(dict.fromkeys(names))  # each layer hooked once even if it appears in several pairs
        try:
            for name in self.names:
                full = resolve_layer(model, name)
                module = model.get_submodule(full)
                self._register(module, name, "out")
                if qkv:
                    for part, sub in qkv_modules(module, full).items():
                        self._register(model.get_submodule(sub), name, part)
        except Exception:
            self.close()  # a bad name leaves no hook behind
            raise

    def _register(self, module: nn.Module, name, part: str) -> None:
        self.handles.append(module.register_forward_hook(self._hook(name, part), with_kwargs=True))

    def _hook(self, name, part: str):
        def hook(module, args, kwargs, output):
            if self.truncate:  # counted only where a forward is cut short: under torch.compile a counter that
                self.calls += 1  # grows across forwards would fail dynamo's guard (a recompile) every step
            h, new = _first(output), None
            if part == "out" and self.summary is not None:
                self.store.setdefault(name, {})["summary"] = self.summary(module, _layer_input(args, kwargs), h)
            else:
                self.store.setdefault(name, {})[part] = h
            if part == "out" and self.replace is not None:
                new = _with_first(output, self.replace(module, _layer_input(args, kwargs), h))
            if self.running and self.calls == self.stop_at:  # only inside `run`: other users are never cut short
                raise StopForward  # the rest of the forward is never computed
            return new  # None keeps the module's own output
        return hook

    def calibrate(self, fn: Callable, *args, **kwargs):
        """One full forward fn(*args, **kwargs) counting hook calls: later `run`s stop after that many.

        Returns fn's result; the store holds (only) what this forward captured. Needs truncate=True."""
        if not self.truncate:
            raise ValueError("calibrate needs Taps(..., truncate=True)")
        self.store, self.calls, self.stop_at = {}, 0, None
        out = fn(*args, **kwargs)
        missing = [n for n in self.names if n not in self.store]
        if missing:
            raise ValueError(f"tapped layer '{missing[0]}' never ran in the forward pass")
        self.stop_at = self.calls
        return out

    def pop(self) -> dict:
        """What the last forward captured, {layer: {"out"[, "q", "k", "v"]} or {"summary"}}; the store is emptied."""
        out, self.store = self.store, {}
        return out

    def run(self, fn: Callable, *args, **kwargs):
        """Call fn (a forward); returns its result, or None when truncation ended it early."""
        if self.truncate and self.stop_at is None:
            raise RuntimeError("Taps(truncate=True): call calibrate(fn, *args) once (a full forward) before run")
        self.running, self.calls = True, 0
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
