"""Model registry and CIFAR ResNets: sizes, shapes, names. Run: pytest tests/test_models.py"""

import pytest
import torch

from leankd.models import create_model, list_models
from leankd.models.registry import count_params, model_size_mb

# published sizes for 10 classes (He et al. 2016; torchvision layouts with a CIFAR stem)
EXPECTED_PARAMS = {"resnet8": 0.078e6, "resnet20": 0.27e6, "resnet18": 11.2e6, "resnet50": 23.5e6}


def test_registry_lists_all_resnets():
    assert set(list_models()) >= {"resnet8", "resnet20", "resnet56", "resnet18", "resnet34", "resnet50"}


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS))
def test_param_counts(name):
    model = create_model(name, num_classes=10)
    assert count_params(model) == pytest.approx(EXPECTED_PARAMS[name], rel=0.05)
    assert model_size_mb(model) > count_params(model) * 4 / 2**20  # fp32 params plus BN buffers


@pytest.mark.parametrize("name", ["resnet8", "resnet20", "resnet56", "resnet18", "resnet34", "resnet50"])
def test_forward_shape_and_feature_info(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 10)  # logits only, never features
    modules = dict(model.named_modules())
    assert model.feature_info and all(f["module"] in modules for f in model.feature_info)
    # the last block feeds the head: its channel count is the fc input width
    assert model.feature_info[-1]["channels"] == model.fc.in_features


def test_num_classes_sets_head():
    assert create_model("resnet8", num_classes=100).fc.out_features == 100


def test_unknown_name_suggests_close_match():
    with pytest.raises(ValueError, match=r"did you mean 'resnet20'\?.*known: .*resnet8"):
        create_model("resnet2", num_classes=10)


def test_residual_branches_start_at_zero():
    model = create_model("resnet50", num_classes=10)
    assert all(torch.all(b.bn3.weight == 0) for b in model.layer1)
    model = create_model("resnet20", num_classes=10)
    assert all(torch.all(b.bn2.weight == 0) for b in model.layer1)
