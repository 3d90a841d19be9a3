"""Which student layer learns from which teacher layer: presets and explicit lists -> typed `LayerPair`s.

    pairs = build_pairs(arm, student, teacher, ranking=ranked)   # arm.pairs = "skip" | "auto" | [2, 5, 8] | ...
    log.info("layer pairs: %s", describe(pairs))

Presets are defined on candidate layers (`taps.candidate_layers`: ResNet residual blocks, transformer encoder
layers), relative to the student's depth S and the teacher's depth T; student layer i gets teacher layer t_i:
  last     the teacher's last S layers                          t_i = T - S + i
  skip     every k-th layer, k = T // S (PKD-Skip)              t_i = k (i + 1) - 1
  uniform  evenly spaced, first and last included               t_i = round(i (T - 1) / (S - 1))
  auto     the S top-ranked teacher layers (`importance.rank`), in depth order
  random   S teacher layers drawn with `pair_seed` (the control), in depth order
An explicit list gives teacher layers for student layers 0, 1, ... (index or module name), or
{student, teacher} records for any subset.
"""
from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass

from torch import nn

from leankd.distill.taps import candidate_layers, layer_index, resolve_layer
from leankd.errors import ModelError


@dataclass
class LayerPair:
    student: str  # module names
    teacher: str
    loss: str  # a feature loss in leankd.distill.losses
    weight: float
    adapter: str = "none"  # filled in by the distiller's dry forward, e.g. "conv1x1 16->64"
    student_index: int | None = None  # position among the candidate layers, when it is one
    teacher_index: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def preset_layers(preset: str, s: int, t: int, seed: int = 0, ranking: list[dict] | None = None) -> list[int]:
    """Teacher candidate indices for student layers 0..s-1."""
    if s > t:
        raise ModelError(f"layer error: the student has {s} candidate layers but the teacher only {t}; "
                         "a preset gives each student layer its own teacher layer")
    if preset == "last":
        return list(range(t - s, t))
    if preset == "skip":
        k = t // s
        return [k * (i + 1) - 1 for i in range(s)]
    if preset == "uniform":
        return [0] if s == 1 else [math.floor(i * (t - 1) / (s - 1) + 0.5) for i in range(s)]
    if preset == "random":
        return sorted(random.Random(seed).sample(range(t), s))
    if preset == "auto":
        if ranking is None:
            raise ValueError("pairs=auto needs a layer ranking")
        return sorted(r["index"] for r in ranking[:s])
    raise ValueError(f"unknown preset '{preset}'")


def layer_map(arm, student: nn.Module, teacher: nn.Module, ranking: list[dict] | None = None) -> list[tuple[str, str]]:
    """[(student layer name, teacher layer name)] for the arm's `pairs` setting, every name checked."""
    if isinstance(arm.pairs, str):
        s_layers, t_layers = candidate_layers(student), candidate_layers(teacher)
        picks = preset_layers(arm.pairs, len(s_layers), len(t_layers), arm.pair_seed, ranking)
        return [(s_layers[i], t_layers[j]) for i, j in enumerate(picks)]
    out = []
    for i, item in enumerate(arm.pairs or []):
        s_ref, t_ref = (item.student, item.teacher) if hasattr(item, "teacher") else (i, item)
        out.append((resolve_layer(student, s_ref, "student layer"), resolve_layer(teacher, t_ref, "teacher layer")))
    return out


def build_pairs(arm, student: nn.Module, teacher: nn.Module, ranking: list[dict] | None = None) -> list[LayerPair]:
    """One LayerPair per (mapped layers, feature loss); weights are the loss weight / number of mapped pairs."""
    mapping = layer_map(arm, student, teacher, ranking)
    pairs = []
    for loss, weight in arm.feature_losses.items():
        for s_name, t_name in mapping:
            pairs.append(LayerPair(s_name, t_name, loss, weight / len(mapping),
                                   student_index=layer_index(student, s_name),
                                   teacher_index=layer_index(teacher, t_name)))
    return pairs


def describe(pairs: list[LayerPair]) -> str:
    """'layer1.0 <- layer1.2 [s0<-t2] hint_mse w=0.333 (conv1x1 16->16); ...' for logs and rows."""
    def idx(p: LayerPair) -> str:
        return f" [s{p.student_index}<-t{p.teacher_index}]" if p.teacher_index is not None else ""
    return "; ".join(f"{p.student} <- {p.teacher}{idx(p)} {p.loss} w={p.weight:.3g} ({p.adapter})" for p in pairs)


def teacher_indices(pairs: list[LayerPair]) -> list[int | str]:
    """The distinct teacher layers used, in order (index when a candidate, else name): the report's column."""
    seen = dict.fromkeys(p.teacher_index if p.teacher_index is not None else p.teacher for p in pairs)
    return list(seen)


def init_layer_indices(teacher: nn.Module, refs: list) -> list[int]:
    """Text students built from teacher layers: each ref (index or module name) -> encoder layer index."""
    out = []
    for ref in refs:
        idx = layer_index(teacher, resolve_layer(teacher, ref, "student init layer"))
        if idx is None:
            raise ModelError(f"layer error: student init layer '{ref}' is not an encoder layer of the teacher; "
                             "see `leankd layers CONFIG`")
        out.append(idx)
    return out
