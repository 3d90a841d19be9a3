"""Distillation as a module that returns a dict of losses: {"loss", "logits", <each term>}.

    d = Distiller(student, teacher, arm_cfg, pairs=build_pairs(arm_cfg, student, teacher), example=x2)
    out = d(x, y); out["loss"].backward()
    d.close()                                  # removes every hook

Loss = label loss (CE, or MSE for regression) [mixed with logit KD by `alpha` when method is kd]
       + sum over layer pairs of weight * feature loss(adapter(student layer), teacher layer).

The teacher is frozen here and only here: eval mode, requires_grad off, forward under no_grad, its
outputs dropped as soon as the loss is computed. A features-only arm never needs the teacher's logits, so
its teacher forward stops right after the last tapped layer call in execution order (counted once, on the
dry forward that sizes the adapters). Seconds spent in teacher forwards are read from `teacher_s` (a
breakdown of the training time, not added to it; timed with CUDA events, so no per-step sync) and zeroed
with `reset_teacher_time()`. With `cached` (a `targets.CachedTeacher`) no teacher runs: its logits and the
attention maps of attention-transfer pairs come from the teacher cache (its measured difference to the online
teacher is in extra.cache.online_check: 0 for fp32 images).
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from leankd.batching import input_device, logits_of
from leankd.device import Timer
from leankd.distill import losses
from leankd.distill.adapters import make_adapter
from leankd.distill.taps import Taps
from leankd.distill.targets import CACHEABLE_LOSSES


def freeze(model: nn.Module) -> nn.Module:
    model.eval()
    model.requires_grad_(False)
    return model


class Distiller(nn.Module):
    def __init__(self, student: nn.Module, teacher: nn.Module | None, arm, label_smoothing: float = 0.0,
                 regression: bool = False, pairs=(), example=None, cached=None, teacher_autocast=None):
        super().__init__()
        self.student, self.arm, self.label_smoothing, self.regression = student, arm, label_smoothing, regression
        self.needs_teacher = arm.method != "plain"
        self.cached = cached  # (key, layers, logits) -> the teacher's targets for that batch, from a teacher cache
        self.teacher_autocast = teacher_autocast or contextlib.nullcontext  # the teacher's own precision
        if self.needs_teacher and teacher is None and cached is None:
            raise ValueError(f"arm method '{arm.method}' needs a teacher or a teacher cache")
        uncached = sorted({p.loss for p in pairs} - CACHEABLE_LOSSES)
        if cached is not None and uncached:
            raise ValueError(f"a teacher cache holds logits and attention maps only: {', '.join(uncached)} needs "
                             "the teacher online")
        # Kept outside the module tree so .train()/.parameters()/state_dict() never touch the teacher.
        online = teacher is not None and self.needs_teacher and cached is None
        self.__dict__["teacher"] = freeze(teacher) if online else None
        self._teacher_timer: Timer | None = None  # made on the first teacher forward, on the input's device
        self.pairs = list(pairs)
        self.adapters = nn.ModuleDict()  # trained with the student (they are in this module's parameters)
        self.s_taps = self.t_taps = None
        if self.pairs:
            qkv = any(p.loss == "attention_relation" for p in self.pairs)
            self.s_taps = Taps(student, [p.student for p in self.pairs], qkv=qkv)
            # features only: no teacher logits needed, so the teacher forward is cut after its last tapped call
            self.t_taps = Taps(self.teacher, [p.teacher for p in self.pairs], qkv=qkv,
                               truncate=arm.method == "features") if cached is None else None
            self._build_adapters(example)

    @torch.no_grad()
    def _build_adapters(self, example) -> None:
        """One dry forward of each model on a real 2-sample batch gives the shapes the adapters map between
        (and, for a truncated teacher, the hook call after which its forward stops). A cached teacher is not run:
        its targets are attention maps, which need no adapter."""
        if example is None:
            raise ValueError("layer pairs need an example batch to infer adapter shapes")
        was = self.student.training
        self.student.eval()  # eval: no BatchNorm statistics updated by the dry pass
        logits_of(self.student, example)
        self.student.train(was)
        if self.t_taps is not None and self.t_taps.truncate:
            self.t_taps.calibrate(logits_of, self.teacher, example)  # a full forward, counting hook calls
        elif self.t_taps is not None:
            logits_of(self.teacher, example)
        s_feats, t_feats = self.s_taps.pop(), self.t_taps.pop() if self.t_taps is not None else {}
        for i, p in enumerate(self.pairs):
            if p.teacher not in t_feats:  # cached: attention maps only
                p.adapter = "none"
                continue
            module, p.adapter = make_adapter(p.loss, tuple(s_feats[p.student]["out"].shape),
                                             tuple(t_feats[p.teacher]["out"].shape))
            if module is not None:
                self.adapters[str(i)] = module.to(next(self.student.parameters()).device)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # the teacher stays in eval mode everywhere (BN statistics frozen)
        return self

    @property
    def teacher_s(self) -> float:
        """Seconds spent in teacher forwards since the last reset (on CUDA: one sync, here, when read)."""
        return self._teacher_timer.seconds if self._teacher_timer is not None else 0.0

    def reset_teacher_time(self) -> None:
        if self._teacher_timer is not None:
            self._teacher_timer.reset()

    def teacher_outputs(self, x) -> tuple[torch.Tensor | None, dict]:
        """(teacher logits, or None after a truncated forward; tapped teacher features)."""
        if self._teacher_timer is None:
            self._teacher_timer = Timer(input_device(x))
        with self._teacher_timer, torch.no_grad(), self.teacher_autocast():
            if self.t_taps is None:
                logits, feats = logits_of(self.teacher, x), {}
            else:
                logits, feats = self.t_taps.run(logits_of, self.teacher, x), self.t_taps.pop()
        return logits, feats

    def feature_terms(self, s_feats: dict, t_feats: dict, mask: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Weighted feature loss per loss name, summed over its pairs."""
        terms: dict[str, torch.Tensor] = {}
        heads = self.arm.relation_heads or getattr(getattr(self.teacher, "config", None), "num_attention_heads", 1)
        for i, p in enumerate(self.pairs):
            s, t = s_feats[p.student], t_feats[p.teacher]
            if p.loss == "attention_relation":
                value = sum(losses.attention_relation(s[a], t[a], heads, mask, s[b], t[b])
                            for a, b in self.arm.relations) / len(self.arm.relations)
            elif p.loss == "attention_transfer":  # the teacher's map comes from the cache or from its features
                t_map = t["map"] if "map" in t else losses.attention_map(t["out"])
                value = losses.attention_transfer_maps(losses.attention_map(s["out"]), t_map)
            else:
                s_out = self.adapters[str(i)](s["out"]) if str(i) in self.adapters else s["out"]
                value = getattr(losses, p.loss)(s_out, t["out"], mask) if s_out.ndim == 3 else \
                    getattr(losses, p.loss)(s_out, t["out"])
            terms[p.loss] = terms.get(p.loss, 0.0) + p.weight * value
        return terms

    def forward(self, x, y: torch.Tensor, key: dict | None = None) -> dict[str, torch.Tensor]:
        """key: the batch's {"index", "view"} (from `loader.keyed_epoch`), needed only with a teacher cache."""
        if not self.needs_teacher:
            logits = logits_of(self.student, x)
            return {"loss": losses.label_loss(logits, y, self.regression, self.label_smoothing), "logits": logits}
        # The teacher first: its activations are freed before the student's (kept for backward) are made, so the
        # step's working set is smaller (~15% less CPU per kd step on CPU than student first; loop_overhead.py).
        if self.cached is not None:
            t_logits, t_feats = self.cached(key, [p.teacher for p in self.pairs], logits=self.arm.method != "features")
        else:
            t_logits, t_feats = self.teacher_outputs(x)
        logits = logits_of(self.student, x)
        s_feats = self.s_taps.pop() if self.s_taps is not None else {}
        if self.arm.method == "features":  # the labels' loss; the teacher speaks through features only
            out = {"loss": losses.label_loss(logits, y, self.regression, self.label_smoothing)}
        elif self.regression:  # STS-B: match the teacher's prediction (MSE) beside the gold score
            out = losses.regression_kd(logits, t_logits, y, self.arm.alpha)
        else:
            out = losses.hinton_kd(logits, t_logits, y, self.arm.temperature, self.arm.alpha, self.label_smoothing)
        if self.pairs:
            mask = x.get("attention_mask") if isinstance(x, dict) else None
            terms = self.feature_terms(s_feats, t_feats, mask)
            out["loss"] = out["loss"] + sum(terms.values())
            out.update(terms)
        del t_logits, t_feats, s_feats  # free the teacher's outputs as soon as the loss holds what it needs
        out["logits"] = logits
        return out

    def close(self) -> None:
        """Remove every hook this distiller registered (on the student and on the teacher)."""
        for taps in (self.s_taps, self.t_taps):
            if taps is not None:
                taps.close()
