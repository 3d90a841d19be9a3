"""Distillation losses as pure functions, written once and shared by vision and text.

Logits are upcast to float32 inside each loss: softmax/KL in bf16 or fp16 loses the small
probabilities that carry the teacher's "dark knowledge".
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """logits (B, C), labels (B,) int64 -> scalar mean CE."""
    return F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)


def mse(predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Regression loss: predictions (B, 1) or (B,), targets (B,) float -> scalar mean squared error."""
    return F.mse_loss(predictions.float().reshape(-1), targets.float().reshape(-1))


def label_loss(logits: torch.Tensor, labels: torch.Tensor, regression: bool,
               label_smoothing: float = 0.0) -> torch.Tensor:
    """The one loss against gold labels: MSE for a regression head (logits (B, 1) or (B,), labels (B,) float),
    else cross-entropy (logits (B, C), labels (B,) int64) with optional label smoothing -> scalar."""
    return mse(logits, labels) if regression else cross_entropy(logits, labels, label_smoothing)


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


# --- Feature distillation ------------------------------------------------------------------
# Hidden states / feature maps are upcast too: squared errors and softmaxes over attention
# scores overflow or lose precision in half precision long before logits do.

def align_spatial(s: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Maps (B, C, H, W) with different H, W -> both at (min H, min W) by adaptive average pooling.

    Each dim is handled independently and only the larger map is pooled (never upsampled: an
    interpolated target invents detail the teacher never had). 3-D or same-size inputs pass through."""
    if s.dim() != 4 or t.dim() != 4 or s.shape[-2:] == t.shape[-2:]:
        return s, t
    size = (min(s.shape[-2], t.shape[-2]), min(s.shape[-1], t.shape[-1]))
    s, t = (x if tuple(x.shape[-2:]) == size else F.adaptive_avg_pool2d(x, size) for x in (s, t))
    return s, t


def _paired_features(s: torch.Tensor, t: torch.Tensor, mask: torch.Tensor | None):
    """Upcast, align and shape-check a (student, teacher) pair; with mask (B, L) keep only real
    tokens -> (N, D), so padding never enters the arithmetic (even inf/NaN there is harmless)."""
    s2, t2 = align_spatial(s.float(), t.float())
    if s2.shape != t2.shape:
        raise ValueError(f"student {tuple(s.shape)} and teacher {tuple(t.shape)} features differ "
                         "after spatial alignment; project the student to the teacher's width first")
    if mask is None:
        return s2, t2
    if s2.dim() != 3 or tuple(mask.shape) != tuple(s2.shape[:2]):
        raise ValueError(f"mask {tuple(mask.shape)} needs hidden states (B, L, D), got {tuple(s2.shape)}")
    keep = mask.bool()
    return s2[keep], t2[keep]


def hint_mse(s: torch.Tensor, t: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """FitNets hint: mean squared difference of maps (B, C, H, W) or hidden states (B, L, D).

    With mask (B, L) (1 = real token): mean over real tokens of the per-token mean over D."""
    s, t = _paired_features(s, t, mask)
    return (s - t).pow(2).mean()


def hint_cosine(s: torch.Tensor, t: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """1 - cosine similarity over the feature dim (C per spatial position of (B, C, H, W) maps,
    D per token of (B, L, D) states), averaged over positions / real tokens. Scale-free, so it
    matches direction even where student and teacher activations differ in magnitude."""
    s, t = _paired_features(s, t, mask)
    return (1 - F.cosine_similarity(s, t, dim=1 if s.dim() == 4 else -1)).mean()


def attention_map(f: torch.Tensor, p: float = 2) -> torch.Tensor:
    """(B, C, H, W) -> (B, 1, H, W) float32: channel mean of activation^p, not yet normalised (what a teacher cache
    stores for attention transfer: H x W floats per sample, whatever C is)."""
    if f.dim() != 4:
        raise ValueError(f"attention_transfer needs convolutional feature maps (B, C, H, W), got {tuple(f.shape)}; "
                         "for transformer layers use hint_mse, hint_cosine or attention_relation")
    return f.float().pow(p).mean(1, keepdim=True)


def attention_transfer_maps(a_s: torch.Tensor, a_t: torch.Tensor) -> torch.Tensor:
    """The attention-transfer loss between two attention maps (B, 1, H, W) from `attention_map`: the larger map
    average-pooled to the smaller size, each flattened and L2-normalised, then the mean squared difference."""
    a_s, a_t = align_spatial(a_s, a_t)
    a_s, a_t = (F.normalize(a.flatten(1), dim=1) for a in (a_s, a_t))
    return (a_s - a_t).pow(2).mean()


def attention_transfer(s: torch.Tensor, t: torch.Tensor, p: float = 2) -> torch.Tensor:
    """Zagoruyko & Komodakis 2017: mean squared difference of normalised spatial attention maps.

    s (B, C_s, H_s, W_s), t (B, C_t, H_t, W_t): each map is the channel mean of f^p (so C_s != C_t is fine);
    when H, W differ the larger *map* is average-pooled to the smaller size (pooling the signed features
    first would let positive and negative activations cancel), then each map is flattened and L2-normalised."""
    return attention_transfer_maps(attention_map(s, p), attention_map(t, p))


def relation_log_probs(x: torch.Tensor, y: torch.Tensor, heads: int,
                       mask: torch.Tensor | None = None) -> torch.Tensor:
    """Self-attention relation of x with y: x, y (B, L, D), mask (B, L) -> log-probs (B, heads, L, L).

    D is split into `heads` relation heads; scores = x_h @ y_h^T / sqrt(D / heads), padded keys
    get the most negative finite float (not -inf, which turns a fully masked row into NaN), then
    log_softmax over keys. With x = query, y = key outputs this is the model's attention."""
    x, y = x.float(), y.float()
    b, _, d = x.shape
    if d % heads:
        raise ValueError(f"feature dim {d} is not divisible by heads={heads}")
    x, y = (z.reshape(b, z.shape[1], heads, d // heads).transpose(1, 2) for z in (x, y))
    scores = x @ y.transpose(-1, -2) / math.sqrt(d // heads)
    if mask is not None:
        scores = scores.masked_fill(mask[:, None, None, :] == 0, torch.finfo(scores.dtype).min)
    return F.log_softmax(scores, dim=-1)


def attention_relation(s_x: torch.Tensor, t_x: torch.Tensor, heads: int, mask: torch.Tensor | None = None,
                       s_y: torch.Tensor | None = None, t_y: torch.Tensor | None = None) -> torch.Tensor:
    """MiniLM(v2) relation KD: KL(teacher || student) between relation_log_probs of each model.

    s_x (B, L, D_s), t_x (B, L, D_t) are a layer's query/key/value projection outputs; D_s != D_t
    is fine because relations are (L, L) per head. y defaults to x (Q-Q, K-K, V-V relations of
    MiniLMv2); x = q, y = k distils the attention distribution itself (MiniLM v1). KL is summed
    over keys and averaged over real query tokens (mask (B, L)), heads and batch."""
    if s_x.shape[-1] % heads or t_x.shape[-1] % heads:
        raise ValueError(f"student dim {s_x.shape[-1]} and teacher dim {t_x.shape[-1]} "
                         f"must both be divisible by heads={heads}")
    log_s = relation_log_probs(s_x, s_x if s_y is None else s_y, heads, mask)
    log_t = relation_log_probs(t_x, t_x if t_y is None else t_y, heads, mask)
    kl = F.kl_div(log_s, log_t, log_target=True, reduction="none").sum(-1)  # (B, heads, L)
    if mask is None:
        return kl.mean()
    return kl.transpose(1, 2)[mask.bool()].mean()  # (N_real, heads): padded queries dropped
