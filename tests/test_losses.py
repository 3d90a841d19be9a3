"""KD loss against the textbook formula computed by hand."""
import math

import torch
import torch.nn.functional as F

from leankd.distill.losses import cross_entropy, hinton_kd, kd_kl


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


def test_T_squared_scaling_is_applied():
    s, t = torch.randn(3, 4), torch.randn(3, 4)
    T = 3.0
    raw = F.kl_div(F.log_softmax(s / T, -1), F.softmax(t / T, -1), reduction="batchmean")
    assert torch.allclose(kd_kl(s, t, T), raw * T * T, rtol=1e-5)


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
