"""Distillation as a module that returns a dict of losses: {"loss", "logits", <each term>}.

    d = Distiller(student, teacher, arm_cfg)
    out = d(x, y); out["loss"].backward()

The teacher is frozen here and only here: eval mode, requires_grad off, forward under no_grad, its
outputs dropped as soon as the loss is computed. Seconds spent in teacher forwards are accumulated in
`teacher_s` (a breakdown of the training time, not added to it).
"""
from __future__ import annotations

import time

import torch
from torch import nn

from leankd.batching import input_device, logits_of
from leankd.distill import losses


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # a CPU-GPU sync point: only taken to time the teacher honestly


def freeze(model: nn.Module) -> nn.Module:
    model.eval()
    model.requires_grad_(False)
    return model


class Distiller(nn.Module):
    def __init__(self, student: nn.Module, teacher: nn.Module | None, arm, label_smoothing: float = 0.0,
                 regression: bool = False):
        super().__init__()
        self.student, self.arm, self.label_smoothing, self.regression = student, arm, label_smoothing, regression
        self.needs_teacher = arm.method != "plain"
        if self.needs_teacher and teacher is None:
            raise ValueError(f"arm method '{arm.method}' needs a teacher")
        # Kept outside the module tree so .train()/.parameters()/state_dict() never touch the teacher.
        self.__dict__["teacher"] = freeze(teacher) if (teacher is not None and self.needs_teacher) else None
        self.teacher_s = 0.0

    def train(self, mode: bool = True):
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # the teacher stays in eval mode everywhere (BN statistics frozen)
        return self

    def teacher_logits(self, x) -> torch.Tensor:
        dev = input_device(x)
        _sync(dev)
        t0 = time.perf_counter()
        with torch.no_grad():
            logits = logits_of(self.teacher, x)
        _sync(dev)
        self.teacher_s += time.perf_counter() - t0
        return logits

    def forward(self, x, y: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = logits_of(self.student, x)
        if not self.needs_teacher:
            loss = losses.mse(logits, y) if self.regression else losses.cross_entropy(logits, y, self.label_smoothing)
            return {"loss": loss, "logits": logits}
        t_logits = self.teacher_logits(x)
        if self.regression:  # STS-B: match the teacher's prediction (MSE) beside the gold score
            out = losses.regression_kd(logits, t_logits, y, self.arm.alpha)
        else:
            out = losses.hinton_kd(logits, t_logits, y, self.arm.temperature, self.arm.alpha, self.label_smoothing)
        del t_logits  # free the teacher's outputs as soon as the loss holds what it needs
        out["logits"] = logits
        return out
