"""Distillation losses as pure functions, written once and shared by vision and text.

Logits are upcast to float32 inside each loss: softmax/KL in bf16 or fp16 loses the small
probabilities that carry the teacher's "dark knowledge".
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """logits (B, C), labels (B,) int64 -> scalar mean CE."""
    return F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)


def mse(predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Regression loss: predictions (B, 1) or (B,), targets (B,) float -> scalar mean squared error."""
    return F.mse_loss(predictions.float().reshape(-1), targets.float().reshape(-1))


def regression_kd(student_pred: torch.Tensor, teacher_pred: torch.Tensor, targets: torch.Tensor,
                  alpha: float) -> dict[str, torch.Tensor]:
    """(1 - alpha) * MSE(s, y) + alpha * MSE(s, t): distillation for regression heads (STS-B)."""
    gold, kd = mse(student_pred, targets), mse(student_pred, teacher_pred)
    return {"loss": (1 - alpha) * gold + alpha * kd, "mse": gold, "kd": kd}


def kd_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton's soft-target term: T^2 * KL(softmax(t/T) || softmax(s/T)), mean over the batch.

    student_logits, teacher_logits: (B, C). The T^2 factor keeps gradient magnitudes comparable
    across temperatures (Hinton et al. 2015)."""
    t = temperature
    log_p_s = F.log_softmax(student_logits.float() / t, dim=-1)
    log_p_t = F.log_softmax(teacher_logits.float() / t, dim=-1)
    return F.kl_div(log_p_s, log_p_t, log_target=True, reduction="batchmean") * (t * t)


def hinton_kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
              temperature: float, alpha: float, label_smoothing: float = 0.0) -> dict[str, torch.Tensor]:
    """(1 - alpha) * CE(s, y) + alpha * T^2 * KL(softmax(t/T) || softmax(s/T)); returns loss and terms."""
    ce = cross_entropy(student_logits, labels, label_smoothing)
    kl = kd_kl(student_logits, teacher_logits, temperature)
    return {"loss": (1 - alpha) * ce + alpha * kl, "ce": ce, "kd": kl}
