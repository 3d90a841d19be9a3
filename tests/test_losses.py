"""KD loss against the textbook formula computed by hand; the label loss against torch's own losses."""
import math

import pytest
import torch
import torch.nn.functional as F

from leankd.distill.losses import cross_entropy, hinton_kd, kd_kl, label_loss


def _by_hand_kl(s, t, T):
    """sum_c p_t log(p_t / p_s) averaged over the batch, written out with plain exp/log."""
    total = 0.0
    for srow, trow in zip(s.tolist(), t.tolist()):
        zs = sum(math.exp(v / T) for v in srow)
        zt = sum(math.exp(v / T) for v in trow)
        for a, b in zip(srow, trow):
            ps, pt = math.exp(a / T) / zs, math.exp(b / T) / zt
            total += pt * math.log(pt / ps)
    return total / len(s)


def test_kd_kl_matches_textbook_formula_with_T_squared():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g) * 3
    for T in (1.0, 2.0, 4.0):
        expected = T * T * _by_hand_kl(s, t, T)
        assert math.isclose(kd_kl(s, t, T).item(), expected, rel_tol=1e-5)


def test_label_loss_is_cross_entropy_or_mse():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 1.0, -2.0]])
    labels = torch.tensor([0, 2])
    assert torch.equal(label_loss(logits, labels, regression=False), F.cross_entropy(logits, labels))
    assert torch.equal(label_loss(logits, labels, regression=False, label_smoothing=0.1),
                       F.cross_entropy(logits, labels, label_smoothing=0.1))
    assert label_loss(logits, labels, False, 0.1) != label_loss(logits, labels, False)
    pred, gold = torch.tensor([[1.0], [2.5], [-0.5]]), torch.tensor([1.5, 2.0, 0.5])
    assert torch.equal(label_loss(pred, gold, regression=True), F.mse_loss(pred.squeeze(1), gold))
    assert label_loss(pred, gold, regression=True).item() == pytest.approx((0.25 + 0.25 + 1.0) / 3)


def test_hinton_combination_and_alpha_zero_is_ce():
    s, t, y = torch.randn(6, 10), torch.randn(6, 10), torch.randint(0, 10, (6,))
    out = hinton_kd(s, t, y, temperature=4.0, alpha=0.0)
    assert torch.equal(out["loss"], F.cross_entropy(s, y))
    out = hinton_kd(s, t, y, temperature=4.0, alpha=0.7)
    expected = 0.3 * F.cross_entropy(s, y) + 0.7 * 16 * _by_hand_kl(s, t, 4.0)
    assert math.isclose(out["loss"].item(), expected, rel_tol=1e-5)


def test_logits_upcast_to_fp32():
    s, t = torch.randn(2, 3).bfloat16(), torch.randn(2, 3).bfloat16()
    assert kd_kl(s, t, 2.0).dtype == torch.float32
    assert cross_entropy(s, torch.tensor([0, 1])).dtype == torch.float32
