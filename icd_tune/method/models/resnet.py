"""CIFAR ResNets (resnet8 ... resnet110 and the 4x-wide variants).

Module and attribute names follow the RepDistiller CIFAR zoo so its teacher
checkpoints load with ``strict=True``.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._registry import init_weights, output, register_model


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: Optional[nn.Module] = None,
    ) -> None:
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        # Stored even when None so the attribute layout mirrors the reference.
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + residual)


class ResNet(nn.Module):
    """Three-stage CIFAR ResNet; ``num_filters`` = [stem, stage1, stage2, stage3]."""

    def __init__(self, depth: int, num_filters: Sequence[int], num_classes: int = 100) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        block = BasicBlock
        self.inplanes = num_filters[0]
        self.conv1 = nn.Conv2d(3, num_filters[0], kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(num_filters[0])
        self.layer1 = self._make_layer(block, num_filters[1], n)
        self.layer2 = self._make_layer(block, num_filters[2], n, stride=2)
        self.layer3 = self._make_layer(block, num_filters[3], n, stride=2)
        # Fixed 8x8 window (not adaptive) as in the reference: CIFAR inputs
        # reach this point at 8x8 resolution.
        self.avgpool = nn.AvgPool2d(8)
        self.feature_dim = num_filters[3] * block.expansion
        self.fc = nn.Linear(self.feature_dim, num_classes)

        init_weights(self)

    def _make_layer(self, block, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers: List[nn.Module] = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(block(self.inplanes, planes))
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, with_features: bool = False):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer1(out)
        out = self.layer2(out)
        out = self.layer3(out)
        feats = torch.flatten(self.avgpool(out), 1)
        return output(self.fc(feats), feats, with_features)


_NARROW = (16, 16, 32, 64)
_WIDE = (32, 64, 128, 256)


@register_model("resnet8", feature_dim=64)
def resnet8(num_classes: int) -> ResNet:
    return ResNet(8, _NARROW, num_classes)


@register_model("resnet14", feature_dim=64)
def resnet14(num_classes: int) -> ResNet:
    return ResNet(14, _NARROW, num_classes)


@register_model("resnet20", feature_dim=64)
def resnet20(num_classes: int) -> ResNet:
    return ResNet(20, _NARROW, num_classes)


@register_model("resnet32", feature_dim=64)
def resnet32(num_classes: int) -> ResNet:
    return ResNet(32, _NARROW, num_classes)


@register_model("resnet44", feature_dim=64)
def resnet44(num_classes: int) -> ResNet:
    return ResNet(44, _NARROW, num_classes)


@register_model("resnet56", feature_dim=64)
def resnet56(num_classes: int) -> ResNet:
    return ResNet(56, _NARROW, num_classes)


@register_model("resnet110", feature_dim=64)
def resnet110(num_classes: int) -> ResNet:
    return ResNet(110, _NARROW, num_classes)


@register_model("resnet8x4", feature_dim=256)
def resnet8x4(num_classes: int) -> ResNet:
    return ResNet(8, _WIDE, num_classes)


@register_model("resnet32x4", feature_dim=256)
def resnet32x4(num_classes: int) -> ResNet:
    return ResNet(32, _WIDE, num_classes)
