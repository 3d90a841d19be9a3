"""CIFAR ResNets: He et al. 2016 (resnet8/20/56) and torchvision-layout (resnet18/34/50).

All nets share torchvision module names (conv1, bn1, layer1.., avgpool, fc), return
logits only, and list every residual block in `feature_info` for forward hooks.

    from leankd.models import create_model
    model = create_model("resnet20", num_classes=10)
    model.feature_info[0]  # {"module": "layer1.0", "channels": 16, "reduction": 1}
"""

import torch
from torch import nn

from leankd.models.registry import register_model


def conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_ch: int, width: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv3x3(in_ch, width, stride)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width)
        self.bn2 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_ch: int, width: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        # stride on the 3x3 conv (torchvision "ResNet v1.5"), not on the first 1x1
        self.conv1 = nn.Conv2d(in_ch, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, width * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(width * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """CIFAR ResNet: 3x3 stride-1 stem, no max-pool, one stage per entry of `widths`.

    Stage i has `depths[i]` blocks of width `widths[i]`; every stage after the first
    halves the resolution. Shortcuts are identity, or 1x1 conv + BN (option B) where
    the shape changes.
    """

    def __init__(self, block: type[BasicBlock | Bottleneck], depths: list[int],
                 widths: list[int], num_classes: int = 10):
        super().__init__()
        self.in_ch = widths[0]
        self.conv1 = conv3x3(3, widths[0])
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.feature_info: list[dict] = []  # every residual block, for forward hooks
        self.stages, reduction = [], 1
        for i, (depth, width) in enumerate(zip(depths, widths)):
            stride = 1 if i == 0 else 2
            reduction, name = reduction * stride, f"layer{i + 1}"
            setattr(self, name, self._make_layer(block, width, depth, stride))
            self.stages.append(name)
            self.feature_info += [
                {"module": f"{name}.{j}", "channels": width * block.expansion, "reduction": reduction}
                for j in range(depth)
            ]
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.in_ch, num_classes)
        self._init_weights()

    def _make_layer(self, block, width: int, depth: int, stride: int) -> nn.Sequential:
        out_ch = width * block.expansion
        downsample = None  # option B: project only where the shape changes
        if stride != 1 or self.in_ch != out_ch:
            conv = nn.Conv2d(self.in_ch, out_ch, 1, stride=stride, bias=False)
            downsample = nn.Sequential(conv, nn.BatchNorm2d(out_ch))
        blocks = [block(self.in_ch, width, stride, downsample)]
        self.in_ch = out_ch
        blocks += [block(out_ch, width) for _ in range(depth - 1)]
        return nn.Sequential(*blocks)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # each residual branch starts as zero, so a block starts as identity:
        # trains faster on short schedules (Goyal et al. 2017)
        for m in self.modules():
            if isinstance(m, (BasicBlock, Bottleneck)):
                nn.init.zeros_(m.bn3.weight if isinstance(m, Bottleneck) else m.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        for name in self.stages:
            x = getattr(self, name)(x)
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


# He et al. 2016: depth 6n+2 with n blocks per stage; torchvision: ImageNet widths
HE_WIDTHS, TV_WIDTHS = [16, 32, 64], [64, 128, 256, 512]


@register_model
def resnet8(num_classes: int = 10) -> ResNet:
    return ResNet(BasicBlock, [1, 1, 1], HE_WIDTHS, num_classes)


@register_model
def resnet20(num_classes: int = 10) -> ResNet:
    return ResNet(BasicBlock, [3, 3, 3], HE_WIDTHS, num_classes)


@register_model
def resnet56(num_classes: int = 10) -> ResNet:
    return ResNet(BasicBlock, [9, 9, 9], HE_WIDTHS, num_classes)


@register_model
def resnet18(num_classes: int = 10) -> ResNet:
    return ResNet(BasicBlock, [2, 2, 2, 2], TV_WIDTHS, num_classes)


@register_model
def resnet34(num_classes: int = 10) -> ResNet:
    return ResNet(BasicBlock, [3, 4, 6, 3], TV_WIDTHS, num_classes)


@register_model
def resnet50(num_classes: int = 10) -> ResNet:
    return ResNet(Bottleneck, [3, 4, 6, 3], TV_WIDTHS, num_classes)
