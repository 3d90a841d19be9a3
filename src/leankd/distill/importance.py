"""Measured layer importance of a trained teacher, for choosing which layers to distil.

Each candidate layer (ResNet block "layer2.0", BERT layer "bert.encoder.layer.3") is scored on a
small calibration sample by what it does, not where it sits, so scores do not rise with depth:

    scores = layer_scores(teacher, ["layer1.0", "layer2.0", ...], batches, losses.cross_entropy)
    log.info("\n%s", format_ranking(rank(scores, by="ablation"), by="ablation"))

- ablation: rise in task loss with the layer removed: output := input ("skip"); for a residual block
  that changes shape, output := its own shortcut of the input, i.e. the residual branch removed
  ("shortcut": a `downsample` submodule, as in torchvision/timm/leankd ResNets); otherwise the output
  is replaced by its batch mean ("mean", a harsher ablation: compare those scores with care).
  The direct measure; one extra pass per layer.
- influence: mean 1 - cos(what the layer leaves unchanged, layer output) (Men et al. 2024, ShortGPT):
  the input, or the shortcut of the input. Free with the unablated pass; None in "mean" mode.
- probe: linear-probe accuracy (R^2 for regression) on pooled outputs, for reference only: it
  measures what is decodable at that depth, which tends to grow with depth.

All through `Taps` (forward hooks on the named modules: a summary kept at hook time, an output replaced for
the ablation); the model is never rewritten.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from leankd.batching import logits_of
from leankd.distill.taps import Taps

log = logging.getLogger(__name__)

RANK_BY = ("ablation", "influence")


def _unchanged(mod: nn.Module, inp, h: torch.Tensor) -> torch.Tensor | None:
    """What removing the layer leaves: its input, or a residual block's shortcut of it; None if neither fits."""
    if isinstance(inp, torch.Tensor) and inp.shape == h.shape:
        return inp
    shortcut = getattr(mod, "downsample", None)
    if isinstance(shortcut, nn.Module) and isinstance(inp, torch.Tensor):
        ref = shortcut(inp)
        return ref if ref.shape == h.shape else None
    return None


def _token_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """(B, L, ...) -> (B, ...): mean over real tokens (mask == 1) only, so padding never counts."""
    if mask is None or mask.shape != values.shape[:2]:
        return values.mean(dim=1)
    w = mask.to(values.dtype).reshape(*mask.shape, *([1] * (values.dim() - 2)))
    return (values * w).sum(dim=1) / w.sum(dim=1).clamp_min(1.0)


def _pool(h: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Per-sample feature vector: 4-D maps mean over H, W; 3-D hidden states masked mean over tokens."""
    return h.mean(dim=(2, 3)) if h.dim() == 4 else _token_mean(h, mask) if h.dim() == 3 else h.reshape(len(h), -1)


def _influence(inp: torch.Tensor, out: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Per-sample 1 - cos(in, out), cosine over channels (4-D) or the last (feature) dim."""
    dist = 1 - F.cosine_similarity(inp.float(), out.float(), dim=1 if out.dim() == 4 else -1)
    # (B, H, W): mean over positions; (B, L): over real tokens; (B,) for plain vectors
    return dist.mean(dim=(1, 2)) if dist.dim() == 3 else _token_mean(dist, mask) if dist.dim() == 2 else dist


def _probe(feats: torch.Tensor, targets: torch.Tensor) -> float | None:
    """Linear probe fitted on even-indexed samples, scored on odd ones (deterministic split)."""
    from sklearn.linear_model import LogisticRegression, Ridge  # import cost only when used
    from sklearn.preprocessing import StandardScaler
    if len(feats) < 8:
        return None
    x, y, regression = feats.numpy(), targets.numpy(), targets.is_floating_point()
    if not regression and len(set(y[0::2].tolist())) < 2:
        return None
    scaler = StandardScaler().fit(x[0::2])
    clf = Ridge() if regression else LogisticRegression(max_iter=1000)
    clf.fit(scaler.transform(x[0::2]), y[0::2])
    return float(clf.score(scaler.transform(x[1::2]), y[1::2]))  # R^2 or accuracy


def _mean_loss(model: nn.Module, batches: list[tuple], task_loss: Callable, autocast: Callable,
               before: Callable = lambda x: None, after: Callable = lambda: None) -> float:
    """Sample-weighted mean task loss over the batches (a short last batch counts for less)."""
    total = 0.0
    for x, y in batches:
        before(x)
        with autocast():
            total += float(task_loss(logits_of(model, x), y)) * len(y)
        after()
    return total / max(sum(len(y) for _, y in batches), 1)


def _base_pass(model: nn.Module, names: list[str], batches: list[tuple], task_loss: Callable,
               autocast: Callable) -> tuple[float, dict]:
    """The unablated pass: mean task loss and, per layer, its ablation mode, pooled features and influences."""
    ctx = {"mask": None}  # the current batch's attention mask, read at hook time
    seen = {n: {"feats": [], "infl": [], "mode": None} for n in names}

    def summary(mod, inp, h):  # at hook time: a later in-place op (ReLU(inplace=True)) may overwrite h
        ref = _unchanged(mod, inp, h)
        mode = "mean" if ref is None else "skip" if ref is inp else "shortcut"
        infl = _influence(ref, h, ctx["mask"]).cpu() if ref is not None else None
        return mode, _pool(h.detach().float(), ctx["mask"]).cpu(), infl

    def set_mask(x) -> None:  # before each forward: the token means read it at hook time
        ctx["mask"] = x.get("attention_mask") if isinstance(x, dict) else None

    def collect() -> None:  # after each forward: this batch's summaries
        for name, got in taps.pop().items():
            mode, feats, infl = got["summary"]
            s = seen[name]
            s["mode"] = mode if s["mode"] in (None, mode) else "mean"
            s["feats"].append(feats)
            if infl is not None:
                s["infl"].append(infl)

    with Taps(model, names, summary=summary) as taps:
        base = _mean_loss(model, batches, task_loss, autocast, before=set_mask, after=collect)
    return base, seen


def _ablation(mode: str) -> Callable:
    """A `Taps` replace function: output := what the layer leaves unchanged, or its batch mean ("mean")."""
    def replace(mod, inp, h):
        ref = _unchanged(mod, inp, h) if mode != "mean" else None
        return ref.to(h.dtype) if ref is not None else h.mean(dim=0, keepdim=True).expand_as(h)
    return replace


def layer_scores(model: nn.Module, names: list[str], batches: list[tuple], task_loss: Callable,
                 autocast: Callable = contextlib.nullcontext) -> list[dict]:
    """Score each named layer: {"name", "ablation", "ablation_mode", "influence", "probe"}.

    batches: (x, y) already on the model's device. Cost: 1 + len(names) passes over the batches;
    only pooled features and per-sample influences are kept, on CPU, so memory stays small."""
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.inference_mode():
            base, seen = _base_pass(model, names, batches, task_loss, autocast)
            targets = torch.cat([y.detach().reshape(-1).cpu() for _, y in batches])
            scores = []
            for name in names:
                s = seen[name]
                if not s["feats"]:
                    raise ValueError(f"layer {name!r} never ran in the model's forward pass")
                with Taps(model, [name], replace=_ablation(s["mode"])):
                    loss = _mean_loss(model, batches, task_loss, autocast)
                scores.append({
                    "name": name, "ablation": loss - base, "ablation_mode": s["mode"],
                    "influence": float(torch.cat(s["infl"]).mean()) if s["mode"] != "mean" else None,
                    "probe": _probe(torch.cat(s["feats"]), targets)})
                log.debug("importance %s: %s", name, scores[-1])
        return scores
    finally:
        for m, training in modes.items():  # per module: a frozen BatchNorm stays frozen
            m.train(training)


def rank(scores: list[dict], by: str = "ablation") -> list[dict]:
    """Copies of `scores`, highest `by` first (None last), each with "rank" (1 = most important)."""
    if by not in RANK_BY:
        raise ValueError(f"rank by {by!r}: choose one of {', '.join(RANK_BY)}")
    ordered = sorted(scores, key=lambda s: (s[by] is None, -(s[by] or 0.0)))
    return [{**s, "rank": r} for r, s in enumerate(ordered, start=1)]


def format_ranking(ranked: list[dict], by: str) -> str:
    """Aligned plain-text table of `rank` output; None shows as "n/a"."""
    cols = ["rank", "index", "name", "ablation", "ablation_mode", "influence", "probe"]
    cols = [c for c in cols if c != "index" or any("index" in s for s in ranked)]
    fmt = lambda v: "n/a" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)  # noqa: E731
    rows = [cols] + [[fmt(s.get(c)) for c in cols] for s in ranked]
    widths = [max(len(r[j]) for r in rows) for j in range(len(cols))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
    return f"layer importance, ranked by {by}\n" + "\n".join(lines)
