"""Layer importance: the signal-carrying layer ranks first, hooks never leak, both model paths run."""
import math

import pytest
import torch
from torch import nn

from leankd.distill import losses
from leankd.distill.importance import format_ranking, layer_scores, rank


class Block(nn.Module):
    """Residual block on R^8: near-identity (h + 1e-3 W h), or the signal block h + e_1 * 10 h_0."""

    def __init__(self, signal: bool):
        super().__init__()
        self.signal = signal
        self.w = nn.Linear(8, 8, bias=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.signal:
            return h + torch.nn.functional.one_hot(torch.tensor(1), 8).float() * 10 * h[:, :1]
        return h + 1e-3 * self.w(h)


class Head(nn.Module):
    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.stack([-h[:, 1], h[:, 1]], dim=1)


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.Sequential(*[Block(signal=(i == 2)) for i in range(5)])
        self.head = Head()

    def forward(self, x):
        return self.head(self.blocks(x))


def toy_batches(n_batches: int = 2, b: int = 32):
    torch.manual_seed(0)
    out = []
    for _ in range(n_batches):
        x = torch.randn(b, 8)
        x[:, 1] = 0
        out.append((x, (x[:, 0] > 0).long()))
    return out


def test_signal_layer_ranks_first_by_ablation_and_influence():
    torch.manual_seed(0)
    names = [f"blocks.{i}" for i in range(5)]
    scores = layer_scores(Toy(), names, toy_batches(), losses.cross_entropy)
    assert [s["name"] for s in scores] == names and all(s["ablation_mode"] == "skip" for s in scores)
    assert rank(scores, "ablation")[0]["name"] == "blocks.2"
    assert rank(scores, "influence")[0]["name"] == "blocks.2"
    assert scores[2]["ablation"] > 0.5 and all(abs(scores[i]["ablation"]) < 1e-2 for i in (0, 1, 3, 4))
    assert all(0.5 <= s["probe"] <= 1.0 for s in scores)  # x_0 > 0 is decodable at every depth
    ranked = rank([{**s, "index": i} for i, s in enumerate(scores)], "ablation")
    assert [r["rank"] for r in ranked] == [1, 2, 3, 4, 5]
    table = format_ranking(ranked, "ablation")
    assert "blocks.2" in table.splitlines()[2] and "index" in table


def test_hooks_removed_and_modes_restored_even_on_error():
    model = Toy().train()
    layer_scores(model, ["blocks.1", "blocks.2"], toy_batches(1), losses.cross_entropy)
    assert all(not m._forward_hooks for m in model.modules()) and model.training

    def boom(logits, y):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        layer_scores(model, ["blocks.1", "blocks.2"], toy_batches(1), boom)
    assert all(not m._forward_hooks for m in model.modules()) and model.training


def test_shape_changing_layer_uses_mean_ablation():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 8, 3, stride=2, padding=1),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
    batches = [(torch.randn(16, 3, 8, 8), torch.arange(16) % 3)]
    s0, s1 = layer_scores(model, ["0", "1"], batches, losses.cross_entropy)
    assert s1["ablation_mode"] == "mean" and s1["influence"] is None
    assert s0["ablation_mode"] == "mean"  # 3 -> 4 channels changes the shape too
    assert math.isfinite(s1["ablation"]) and s1["probe"] is not None
    assert rank([s0, s1], "influence")[-1]["influence"] is None


def test_bert_dict_inputs():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                  intermediate_size=64, num_labels=2)
    model = transformers.BertForSequenceClassification(cfg).eval()
    mask = torch.ones(8, 6, dtype=torch.long)
    mask[::2, 4:] = 0  # padding on half the rows
    x = {"input_ids": torch.randint(0, 100, (8, 6)), "attention_mask": mask}
    y = torch.tensor([0, 0, 1, 1, 0, 0, 1, 1])  # both classes in the even (train) half
    with torch.no_grad():
        before = model(**x).logits
    names = [f"bert.encoder.layer.{i}" for i in range(3)]
    scores = layer_scores(model, names, [(x, y)], losses.cross_entropy)
    assert [s["name"] for s in scores] == names
    for s in scores:
        assert s["ablation_mode"] == "skip" and math.isfinite(s["ablation"])
        assert 0.0 <= s["influence"] <= 2.0 and s["probe"] is not None
    with torch.no_grad():
        torch.testing.assert_close(model(**x).logits, before)
    assert all(not m._forward_hooks for m in model.modules())


def test_rank_rejects_unknown_key():
    with pytest.raises(ValueError, match="ablation"):
        rank([{"name": "a", "ablation": 1.0, "influence": None}], by="probe")
