"""Distillation as a module that returns a dict of losses: {"loss", "logits", <each term>}.

    d = Distiller(student, teacher, arm_cfg, pairs=build_pairs(arm_cfg, student, teacher), example=x2)
    out = d(x, y); out["loss"].backward()
    d.close()                                  # removes every hook

Loss = label loss (CE, or MSE for regression) [mixed with logit KD by `alpha` when method is kd]
       + sum over layer pairs of weight * feature loss(adapter(student layer), teacher layer).

The teacher is frozen here and only here: eval mode, requires_grad off, forward under no_grad, its
outputs dropped as soon as the loss is computed. A features-only arm never needs the teacher's logits, so
its teacher forward stops after the deepest tapped layer. Seconds spent in teacher forwards are accumulated
in `teacher_s` (a breakdown of the training time, not added to it).
"""
from __future__ import annotations

import time

import torch
from torch import nn

from leankd.batching import input_device, logits_of
from leankd.distill import losses
from leankd.distill.adapters import make_adapter
from leankd.distill.taps import Taps


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # a CPU-GPU sync point: only taken to time the teacher honestly


def freeze(model: nn.Module) -> nn.Module:
    model.eval()
    model.requires_grad_(False)
    return model


class Distiller(nn.Module):
    def __init__(self, student: nn.Module, teacher: nn.Module | None, arm, label_smoothing: float = 0.0,
                 regression: bool = False, pairs=(), example=None):
        super().__init__()
        self.student, self.arm, self.label_smoothing, self.regression = student, arm, label_smoothing, regression
        self.needs_teacher = arm.method != "plain"
        if self.needs_teacher and teacher is None:
            raise ValueError(f"arm method '{arm.method}' needs a teacher")
        # Kept outside the module tree so .train()/.parameters()/state_dict() never touch the teacher.
        self.__dict__["teacher"] = freeze(teacher) if (teacher is not None and self.needs_teacher) else None
        self.teacher_s = 0.0
        self.pairs = list(pairs)
        self.adapters = nn.ModuleDict()  # trained with the student (they are in this module's parameters)
        self.s_taps = self.t_taps = None
        if self.pairs:
            qkv = any(p.loss == "attention_relation" for p in self.pairs)
            t_names = [p.teacher for p in self.pairs]
            # features only: no teacher logits needed, so the teacher stops after its deepest tapped layer
            deepest = self._deepest(t_names) if arm.method == "features" else None
            self.s_taps = Taps(student, [p.student for p in self.pairs], qkv=qkv)
            self.t_taps = Taps(self.teacher, t_names, qkv=qkv, stop_after=deepest)
            self._build_adapters(example)

    def _deepest(self, names: list[str]) -> str:
        order = {n: i for i, (n, _) in enumerate(self.teacher.named_modules())}  # registration order ~ depth
        return max(dict.fromkeys(names), key=order.__getitem__)

    @torch.no_grad()
    def _build_adapters(self, example) -> None:
        """One dry forward of each model on a real 2-sample batch gives the shapes the adapters map between."""
        if example is None:
            raise ValueError("layer pairs need an example batch to infer adapter shapes")
        was = self.student.training
        self.student.eval()  # eval: no BatchNorm statistics updated by the dry pass
        logits_of(self.student, example)
        self.student.train(was)
        s_feats, (_, t_feats) = self.s_taps.pop(), self.teacher_outputs(example)
        self.teacher_s = 0.0
        for i, p in enumerate(self.pairs):
            module, p.adapter = make_adapter(p.loss, tuple(s_feats[p.student]["out"].shape),
                                             tuple(t_feats[p.teacher]["out"].shape))
            if module is not None:
                self.adapters[str(i)] = module.to(next(self.student.parameters()).device)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # the teacher stays in eval mode everywhere (BN statistics frozen)
        return self

    def teacher_outputs(self, x) -> tuple[torch.Tensor | None, dict]:
        """(teacher logits, or None after a truncated forward; tapped teacher features)."""
        dev = input_device(x)
        _sync(dev)
        t0 = time.perf_counter()
        with torch.no_grad():
            if self.t_taps is None:
                logits, feats = logits_of(self.teacher, x), {}
            else:
                logits, feats = self.t_taps.run(logits_of, self.teacher, x), self.t_taps.pop()
        _sync(dev)
        self.teacher_s += time.perf_counter() - t0
        return logits, feats

    def teacher_logits(self, x) -> torch.Tensor:
        return self.teacher_outputs(x)[0]

    def feature_terms(self, s_feats: dict, t_feats: dict, mask: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Weighted feature loss per loss name, summed over its pairs."""
        terms: dict[str, torch.Tensor] = {}
        heads = self.arm.relation_heads or getattr(getattr(self.teacher, "config", None), "num_attention_heads", 1)
        for i, p in enumerate(self.pairs):
            s, t = s_feats[p.student], t_feats[p.teacher]
            if p.loss == "attention_relation":
                value = sum(losses.attention_relation(s[a], t[a], heads, mask, s[b], t[b])
                            for a, b in self.arm.relations) / len(self.arm.relations)
            elif p.loss == "attention_transfer":
                value = losses.attention_transfer(s["out"], t["out"])
            else:
                s_out = self.adapters[str(i)](s["out"]) if str(i) in self.adapters else s["out"]
                value = getattr(losses, p.loss)(s_out, t["out"], mask) if s_out.ndim == 3 else \
                    getattr(losses, p.loss)(s_out, t["out"])
            terms[p.loss] = terms.get(p.loss, 0.0) + p.weight * value
        return terms

    def _label_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return losses.mse(logits, y) if self.regression else losses.cross_entropy(logits, y, self.label_smoothing)

    def forward(self, x, y: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = logits_of(self.student, x)
        if not self.needs_teacher:
            return {"loss": self._label_loss(logits, y), "logits": logits}
        s_feats = self.s_taps.pop() if self.s_taps is not None else {}
        t_logits, t_feats = self.teacher_outputs(x)
        if self.arm.method == "features":  # the labels' loss; the teacher speaks through features only
            out = {"loss": self._label_loss(logits, y)}
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
