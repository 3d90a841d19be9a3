"""Feature-distillation losses against by-hand references and a real BERT's attention."""
import math

import pytest
import torch

from leankd.distill.losses import (
    align_spatial,
    attention_relation,
    attention_transfer,
    hint_cosine,
    hint_mse,
    relation_log_probs,
)

MASK = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])


def _rand(*shape):
    return torch.randn(*shape)


def _by_hand_mse_tokens(s, t, mask):
    """Mean over real tokens of the per-token mean over D, with explicit loops."""
    total, n = 0.0, 0
    for b in range(s.shape[0]):
        for i in range(s.shape[1]):
            if mask[b, i]:
                total += sum((a - c) ** 2 for a, c in zip(s[b, i].tolist(), t[b, i].tolist())) / s.shape[2]
                n += 1
    return total / n


def _by_hand_cos(u, v):
    dot = sum(a * c for a, c in zip(u, v))
    return dot / (math.sqrt(sum(a * a for a in u)) * math.sqrt(sum(c * c for c in v)))


def _with_huge_padding(x, mask):
    """Padding positions replaced by 1e4: a masked loss must not see them."""
    return torch.where(mask[..., None].bool(), x, torch.full_like(x, 1e4))


def test_align_spatial_pools_the_larger_dim_independently():
    torch.manual_seed(0)
    s, t = _rand(2, 3, 8, 4), _rand(2, 5, 4, 6)
    s2, t2 = align_spatial(s, t)
    assert s2.shape == (2, 3, 4, 4) and t2.shape == (2, 5, 4, 4)
    assert torch.allclose(s2[:, :, 0, 0], s[:, :, :2, 0].mean(-1))  # H 8 -> 4 averages pairs of rows
    h = _rand(2, 5, 7)
    assert align_spatial(h, h + 1)[0] is h and align_spatial(s, s)[1] is s


def test_hint_mse_matches_by_hand_maps_and_masked_tokens():
    torch.manual_seed(0)
    s, t = _rand(2, 3, 4, 4), _rand(2, 3, 4, 4)
    assert math.isclose(hint_mse(s, t).item(), ((s - t) ** 2).sum().item() / s.numel(), rel_tol=1e-5)
    s, t = _rand(2, 5, 6), _rand(2, 5, 6)
    expected = _by_hand_mse_tokens(s, t, MASK)
    assert math.isclose(hint_mse(s, t, MASK).item(), expected, rel_tol=1e-5)
    assert math.isclose(hint_mse(_with_huge_padding(s, MASK), t, MASK).item(), expected, rel_tol=1e-5)
    assert hint_mse(s, t).item() != pytest.approx(expected)  # the mask really changes the value
    with pytest.raises(ValueError, match=r"\(2, 3, 4, 4\).*\(2, 5, 4, 4\)"):
        hint_mse(_rand(2, 3, 4, 4), _rand(2, 5, 4, 4))


def test_hint_cosine_matches_by_hand_maps_and_masked_tokens():
    torch.manual_seed(0)
    s, t = _rand(2, 3, 2, 2), _rand(2, 3, 2, 2)
    per_pos = [1 - _by_hand_cos(s[b, :, i, j].tolist(), t[b, :, i, j].tolist())
               for b in range(2) for i in range(2) for j in range(2)]
    assert math.isclose(hint_cosine(s, t).item(), sum(per_pos) / len(per_pos), rel_tol=1e-5)
    s, t = _rand(2, 5, 6), _rand(2, 5, 6)
    per_tok = [1 - _by_hand_cos(s[b, i].tolist(), t[b, i].tolist())
               for b in range(2) for i in range(5) if MASK[b, i]]
    expected = sum(per_tok) / len(per_tok)
    assert math.isclose(hint_cosine(s, t, MASK).item(), expected, rel_tol=1e-5)
    assert math.isclose(hint_cosine(s, _with_huge_padding(t, MASK), MASK).item(), expected, rel_tol=1e-5)
    assert hint_cosine(s, 3 * s).item() == pytest.approx(0.0, abs=1e-6)  # scale-free


def _by_hand_at(f, p=2, pool=1):
    """Per sample: channel mean of f^p at each position, then (pool > 1) the mean of each pool x pool block
    of that map, then divided by the L2 norm over positions: the map is pooled, never the signed features."""
    out = []
    for b in range(f.shape[0]):
        a = [[sum(f[b, c, i, j].item() ** p for c in range(f.shape[1])) / f.shape[1]
              for j in range(f.shape[3])] for i in range(f.shape[2])]
        a = [sum(a[i * pool + di][j * pool + dj] for di in range(pool) for dj in range(pool)) / pool ** 2
             for i in range(f.shape[2] // pool) for j in range(f.shape[3] // pool)]
        norm = math.sqrt(sum(v * v for v in a))
        out.append([v / norm for v in a])
    return out


def test_attention_transfer_matches_by_hand_including_spatial_mismatch():
    torch.manual_seed(0)
    s, t = _rand(2, 3, 4, 4), _rand(2, 6, 8, 8)  # channels differ, teacher map 8x8 vs 4x4
    a_s, a_t = _by_hand_at(s), _by_hand_at(t, pool=2)  # the teacher's 8x8 map of t^2 averaged in 2x2 blocks
    expected = sum((x - y) ** 2 for rs, rt in zip(a_s, a_t) for x, y in zip(rs, rt)) / (2 * 16)
    assert math.isclose(attention_transfer(s, t).item(), expected, rel_tol=1e-5)
    assert attention_transfer(t, s).item() == pytest.approx(expected, rel=1e-5)  # either side may be larger
    same = sum((x - y) ** 2 for rs, rt in zip(_by_hand_at(s), _by_hand_at(2 * s + 1)) for x, y in zip(rs, rt))
    assert math.isclose(attention_transfer(s, 2 * s + 1).item(), same / (2 * 16), rel_tol=1e-5)


def test_attention_transfer_refuses_token_states():
    with pytest.raises(ValueError, match="convolutional feature maps.*hint_mse.*attention_relation"):
        attention_transfer(_rand(2, 5, 8), _rand(2, 5, 8))
    with pytest.raises(ValueError, match=r"\(2, 5, 8\)"):
        attention_transfer(_rand(2, 3, 4, 4), _rand(2, 5, 8))


def test_attention_relation_zero_for_self_positive_otherwise_and_checks_dims():
    torch.manual_seed(0)
    x, y = _rand(2, 5, 8), _rand(2, 5, 8)
    assert attention_relation(x, x, heads=2, mask=MASK).item() == pytest.approx(0.0, abs=1e-6)
    assert attention_relation(x, y, heads=2, mask=MASK).item() > 0
    assert attention_relation(x, y, heads=2, s_y=y, t_y=x).item() > 0  # q-k attention form
    assert attention_relation(x, _rand(2, 5, 12), heads=4, mask=MASK).item() > 0  # D_s 8 != D_t 12
    with pytest.raises(ValueError, match=r"8.*10"):
        attention_relation(x, _rand(2, 5, 10), heads=4)


def test_attention_relation_matches_by_hand_kl_and_ignores_padding():
    torch.manual_seed(0)
    s, t = _rand(2, 5, 4), _rand(2, 5, 6)
    total, n = 0.0, 0
    for b in range(2):
        real = [j for j in range(5) if MASK[b, j]]
        for h in range(2):
            for i in real:
                def probs(x):
                    dh = x.shape[-1] // 2
                    q = x[b, i, h * dh:(h + 1) * dh].tolist()
                    sc = [sum(a * c for a, c in zip(q, x[b, j, h * dh:(h + 1) * dh].tolist())) / math.sqrt(dh)
                          for j in real]
                    z = sum(math.exp(v) for v in sc)
                    return [math.exp(v) / z for v in sc]
                ps, pt = probs(s), probs(t)
                total += sum(b_ * math.log(b_ / a) for a, b_ in zip(ps, pt))
                n += 1
    expected = total / n
    assert math.isclose(attention_relation(s, t, heads=2, mask=MASK).item(), expected, rel_tol=1e-4)
    huge = attention_relation(_with_huge_padding(s, MASK), _with_huge_padding(t, MASK), heads=2, mask=MASK)
    assert math.isclose(huge.item(), expected, rel_tol=1e-4)


def test_relation_log_probs_reproduce_bert_attention_eager_and_sdpa():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    def bert(impl):  # a fresh config each: the model keeps (and _from_config edits) its config object
        cfg = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                      intermediate_size=64, vocab_size=100)
        return transformers.BertModel._from_config(cfg, attn_implementation=impl).eval()

    eager, sdpa = bert("eager"), bert("sdpa")
    assert (eager.config._attn_implementation, sdpa.config._attn_implementation) == ("eager", "sdpa")
    sdpa.load_state_dict(eager.state_dict())
    ids = torch.randint(0, 100, (2, 7))
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])

    def run(model, **kw):
        got, attn = {}, model.encoder.layer[0].attention.self
        hooks = [getattr(attn, n).register_forward_hook(lambda m, i, o, n=n: got.__setitem__(n, o.detach()))
                 for n in ("query", "key")]
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=mask, **kw)
        for hk in hooks:
            hk.remove()
        return got, out

    (qk, out), (qk_sdpa, _) = run(eager, output_attentions=True), run(sdpa)
    probs = relation_log_probs(qk["query"], qk["key"], heads=4, mask=mask).exp()
    real = mask.bool()[:, None, :, None].expand_as(probs)  # real query rows
    assert torch.allclose(probs[real], out.attentions[0][real], atol=1e-5)
    assert torch.allclose(qk_sdpa["query"], qk["query"], atol=1e-6)
    assert torch.allclose(qk_sdpa["key"], qk["key"], atol=1e-6)
    assert attention_relation(qk_sdpa["query"], qk["query"], heads=4, mask=mask,
                              s_y=qk_sdpa["key"], t_y=qk["key"]).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("name", ["hint_mse", "hint_cosine", "attention_transfer", "attention_relation"])
def test_gradients_reach_the_student(name):
    torch.manual_seed(0)
    if name == "attention_relation":
        s, t = _rand(2, 5, 8).requires_grad_(), _rand(2, 5, 12)
        loss = attention_relation(s, t, heads=4, mask=MASK)
    elif name == "attention_transfer":
        s, t = _rand(2, 3, 4, 4).requires_grad_(), _rand(2, 5, 8, 8)
        loss = attention_transfer(s, t)
    else:
        s, t = _rand(2, 5, 6).requires_grad_(), _rand(2, 5, 6)
        loss = {"hint_mse": hint_mse, "hint_cosine": hint_cosine}[name](s, t, MASK)
    loss.backward()
    assert loss.dim() == 0 and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    if name != "attention_transfer":  # padded tokens get no gradient
        assert (s.grad[1, 3:] == 0).all()


def test_half_precision_inputs_are_upcast():
    torch.manual_seed(0)
    s, t = _rand(2, 5, 8), _rand(2, 5, 8)
    for fn in (hint_mse, hint_cosine):
        assert fn(s.bfloat16(), t.bfloat16(), MASK).dtype == torch.float32
    assert attention_relation(s.half(), t.half(), heads=2, mask=MASK).dtype == torch.float32
    assert attention_transfer(s[..., None].half(), t[..., None].half()).dtype == torch.float32
