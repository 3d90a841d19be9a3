"""Taps, layer pairs and the feature-distilling Distiller on tiny models: hooked outputs equal the modules'
own outputs, no hook outlives an arm, presets expand as documented, adapters fit, truncation saves FLOPs."""
import pytest
import torch

from leankd.config import ArmConfig
from leankd.distill.distiller import Distiller
from leankd.distill.selection import build_pairs, init_layer_indices, layer_map, preset_layers
from leankd.distill.taps import Taps, candidate_layers, resolve_layer
from leankd.errors import ModelError
from leankd.metering.flops import count_flops
from leankd.models import create_model
from leankd.models.text import build_text_model, student_from_teacher


def hook_count(*models) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_hooks_with_kwargs) for model in models
               for m in model.modules())


@pytest.fixture
def cnns():
    torch.manual_seed(0)
    return create_model("resnet8", 10), create_model("resnet20", 10).eval()


def test_tapped_output_equals_what_the_module_returned(cnns):
    _, t = cnns
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        h = t.relu(t.bn1(t.conv1(x)))
        h = t.layer1(h)
        expected = t.layer2[1](t.layer2[0](h))  # layer2.1 computed by hand, module by module
        with Taps(t, ["layer2.1"]) as taps:
            logits = t(x)
            got = taps.pop()["layer2.1"]["out"]
        assert taps.pop() == {}  # cleared when read
    assert torch.equal(got, expected) and torch.equal(logits, t(x))
    assert hook_count(t) == 0


def test_tapped_encoder_layer_equals_hidden_states():
    torch.manual_seed(0)
    m = build_text_model("bert-tiny", 2).eval()
    x = {"input_ids": torch.randint(0, 1000, (2, 7)), "attention_mask": torch.ones(2, 7, dtype=torch.long)}
    assert candidate_layers(m)[1] == "bert.encoder.layer.1"
    with torch.no_grad(), Taps(m, ["bert.encoder.layer.1"], qkv=True) as taps:
        out = m(**x, output_hidden_states=True)
        captured = taps.pop()["bert.encoder.layer.1"]
    assert torch.equal(captured["out"], out.hidden_states[2])  # hidden_states[0] is the embeddings
    assert set(captured) == {"out", "q", "k", "v"} and captured["q"].shape == (2, 7, 128)


def test_unknown_layer_names_get_a_did_you_mean(cnns):
    s, t = cnns
    with pytest.raises(ModelError, match="did you mean 'layer2.1'"):
        resolve_layer(t, "layr2.1")
    with pytest.raises(ModelError, match=r"index 9 is out of range.*0\.\.8"):
        resolve_layer(t, 9)
    arm = ArmConfig(method="kd", pairs=["layer1.0", "layr2.0"])
    with pytest.raises(ModelError, match="did you mean 'layer2.0'"):
        layer_map(arm, s, t)


def test_presets_follow_their_definitions():
    assert preset_layers("last", 3, 9) == [6, 7, 8]
    assert preset_layers("skip", 3, 9) == [2, 5, 8]
    assert preset_layers("skip", 3, 6) == [1, 3, 5]  # PKD-Skip
    assert preset_layers("uniform", 3, 9) == [0, 4, 8]
    assert preset_layers("uniform", 3, 6) == [0, 3, 5]
    draws = {tuple(preset_layers("random", 3, 9, seed)) for seed in range(5)}
    assert len(draws) > 1 and all(len(set(d)) == 3 and list(d) == sorted(d) for d in draws)
    assert preset_layers("random", 3, 9, 1) == preset_layers("random", 3, 9, 1)  # a seeded draw repeats
    ranking = [{"index": 4}, {"index": 1}, {"index": 7}, {"index": 0}]
    assert preset_layers("auto", 3, 9, ranking=ranking) == [1, 4, 7]
    with pytest.raises(ModelError, match="only 3"):
        preset_layers("last", 4, 3)


def test_pairs_are_typed_records_with_inferred_adapters(cnns):
    s, t = cnns
    arm = ArmConfig(method="kd", pairs="last", feature_losses={"hint_mse": 1.0, "hint_cosine": 0.5})
    pairs = build_pairs(arm, s, t)
    assert [(p.student, p.teacher, p.loss) for p in pairs[:3]] == [("layer1.0", "layer3.0", "hint_mse"),
                                                                   ("layer2.0", "layer3.1", "hint_mse"),
                                                                   ("layer3.0", "layer3.2", "hint_mse")]
    assert [p.teacher_index for p in pairs] == [6, 7, 8] * 2 and pairs[0].weight == pytest.approx(1 / 3)
    x = torch.randn(4, 3, 32, 32)
    d = Distiller(s, t, arm, pairs=pairs, example=x[:2])
    assert pairs[0].adapter.startswith("conv1x1 16->64") and pairs[2].adapter == "none"
    with torch.no_grad():
        s_feats = (s(x), d.s_taps.pop())[1]
        t_feats = d.teacher_outputs(x)[1]
    for i, p in enumerate(pairs):  # adapter output channels match the teacher's
        f = s_feats[p.student]["out"]
        f = d.adapters[str(i)](f) if str(i) in d.adapters else f
        assert f.shape[1] == t_feats[p.teacher]["out"].shape[1]
    out = d(x, torch.randint(0, 10, (4,)))
    out["loss"].backward()
    assert {"loss", "ce", "kd", "hint_mse", "hint_cosine", "logits"} <= set(out)
    assert d.adapters["0"].weight.grad is not None and d.adapters["0"].weight.grad.abs().sum() > 0
    assert any(n.startswith("adapters.") for n, _ in d.named_parameters())  # the optimiser trains them
    d.close()
    assert hook_count(s, t) == 0


def test_truncated_teacher_forward_costs_less_and_gives_identical_features(cnns):
    s, t = cnns
    x = torch.randn(2, 3, 32, 32)
    full = Distiller(s, t, ArmConfig(method="kd", pairs=[{"student": 1, "teacher": 4}]), pairs=build_pairs(
        ArmConfig(method="kd", pairs=[{"student": 1, "teacher": 4}]), s, t), example=x)
    arm = ArmConfig(method="features", pairs=[{"student": 1, "teacher": 4}])
    cut = Distiller(s, t, arm, pairs=build_pairs(arm, s, t), example=x)
    logits_full, feats_full = full.teacher_outputs(x)
    logits_cut, feats_cut = cut.teacher_outputs(x)
    assert logits_full is not None and logits_cut is None  # the forward stopped after layer2.1
    assert torch.equal(feats_full["layer2.1"]["out"], feats_cut["layer2.1"]["out"])
    with torch.no_grad():
        flops_full = count_flops(lambda: full.teacher_outputs(x), t)
        flops_cut = count_flops(lambda: cut.teacher_outputs(x), t)
    assert flops_cut < 0.75 * flops_full  # stage 3 and the head are never run
    y = torch.randint(0, 10, (2,))
    out = cut(x, y)
    assert set(out) == {"loss", "hint_mse", "logits"}  # no logit KD term in a features-only arm
    full.close()
    cut.close()
    assert hook_count(s, t) == 0


def test_truncation_follows_execution_order_not_registration_order(cnns):
    """downsample is registered after conv2 but runs before it: the cut must come after conv2's call."""
    s, t = cnns
    x = torch.randn(2, 3, 32, 32)
    names = ["layer2.0.downsample", "layer2.0.conv2"]
    arm = ArmConfig(method="features", pairs=[{"student": n, "teacher": n} for n in names])
    cut = Distiller(s, t, arm, pairs=build_pairs(arm, s, t), example=x)
    logits_cut, feats_cut = cut.teacher_outputs(x)
    with torch.no_grad(), Taps(t, names) as taps:  # the full, untruncated forward
        logits_full = t(x)
        feats_full = taps.pop()
    assert logits_cut is None and logits_full is not None
    for n in names:
        assert torch.equal(feats_cut[n]["out"], feats_full[n]["out"])
    with torch.no_grad():
        flops_cut = count_flops(lambda: cut.teacher_outputs(x), t)
        flops_full = count_flops(lambda: t(x), t)
    assert flops_cut < 0.6 * flops_full  # layer2.0's tail, layer2.1 onwards and the head are never run
    out = cut(x, torch.randint(0, 10, (2,)))
    out["loss"].backward()
    assert set(out) == {"loss", "hint_mse", "logits"} and torch.isfinite(out["loss"])
    cut.close()
    assert hook_count(s, t) == 0


def test_truncation_counts_calls_of_a_module_run_twice():
    """A module called twice per forward: the cut comes after its second call, which the store keeps."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))
    shared, calls = model[0], []
    head = model[1].register_forward_hook(lambda m, a, o: calls.append("head"))

    def forward(x):
        return model[1](shared(shared(x)))

    x = torch.randn(3, 4)
    with Taps(model, ["0"], truncate=True) as taps:
        with pytest.raises(RuntimeError, match="calibrate"):
            taps.run(forward, x)
        taps.calibrate(forward, x)
        full = taps.pop()["0"]["out"]
        calls.clear()
        assert taps.run(forward, x) is None and calls == []  # stopped before the head
        assert torch.equal(taps.pop()["0"]["out"], full)  # the second call's output
    head.remove()
    assert hook_count(model) == 0


def test_summary_and_replace_options():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    x = torch.randn(3, 4)
    with torch.no_grad(), Taps(model, ["0"], summary=lambda m, inp, h: (inp.sum(), h.mean(0))) as taps:
        model(x)
        got = taps.pop()["0"]
    assert set(got) == {"summary"}
    assert torch.equal(got["summary"][0], x.sum()) and torch.equal(got["summary"][1], model[0](x).mean(0))
    with torch.no_grad(), Taps(model, ["1"], replace=lambda m, inp, h: torch.zeros_like(h)):
        assert torch.equal(model(x), model[2](torch.zeros(3, 4)))  # the ReLU's output replaced
    assert hook_count(model) == 0


def test_attention_relation_pairs_on_transformers():
    torch.manual_seed(0)
    teacher = build_text_model("bert-mini", 2).eval()
    student = student_from_teacher(teacher, init_layer_indices(teacher, ["bert.encoder.layer.1", 3]))
    assert len(candidate_layers(student)) == 2
    arm = ArmConfig(method="kd", pairs="skip", feature_losses={"hint_mse": 1.0, "attention_relation": 1.0})
    pairs = build_pairs(arm, student, teacher)
    x = {"input_ids": torch.randint(0, 1000, (3, 9)), "attention_mask": torch.ones(3, 9, dtype=torch.long)}
    x["attention_mask"][1, 6:] = 0
    d = Distiller(student, teacher, arm, pairs=pairs, example={k: v[:2] for k, v in x.items()})
    out = d(x, torch.tensor([0, 1, 1]))
    out["loss"].backward()
    assert out["attention_relation"] > 0 and torch.isfinite(out["loss"])
    d.close()
    assert hook_count(student, teacher) == 0
