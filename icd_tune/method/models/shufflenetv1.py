"""ShuffleNet V1 for CIFAR (RepDistiller ``ShuffleV1``: g=3, widths 240/480/960).

Names follow RepDistiller's ``ShuffleNetv1.py``.
"""

from __future__ import annotations

from typing import List, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._registry import output, register_model


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    if groups == 1:
        return x
    n, c, h, w = x.shape
    # reshape (not view): channels_last inputs are not NCHW-contiguous.
    return x.reshape(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class Bottleneck(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, stride: int, groups: int) -> None:
        super().__init__()
        self.stride = stride
        mid_planes = out_planes // 4
        # The stem has only 24 channels, too few to split into groups, so the
        # very first pointwise conv is dense.
        self.shuffle_groups = 1 if in_planes == 24 else groups
        self.conv1 = nn.Conv2d(in_planes, mid_planes, kernel_size=1, groups=self.shuffle_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_planes)
        self.conv2 = nn.Conv2d(mid_planes, mid_planes, kernel_size=3, stride=stride, padding=1,
                               groups=mid_planes, bias=False)
        self.bn2 = nn.BatchNorm2d(mid_planes)
        self.conv3 = nn.Conv2d(mid_planes, out_planes, kernel_size=1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = nn.Sequential()
        if stride == 2:
            self.shortcut = nn.Sequential(nn.AvgPool2d(3, stride=2, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = channel_shuffle(out, self.shuffle_groups)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        res = self.shortcut(x)
        # Downsampling units concatenate (widening), others add.
        out = torch.cat([out, res], 1) if self.stride == 2 else out + res
        return F.relu(out)


class ShuffleNetV1(nn.Module):
    def __init__(self, out_planes: Sequence[int], num_blocks: Sequence[int], groups: int,
                 num_classes: int = 100) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.in_planes = 24
        self.layer1 = self._make_layer(out_planes[0], num_blocks[0], groups)
        self.layer2 = self._make_layer(out_planes[1], num_blocks[1], groups)
        self.layer3 = self._make_layer(out_planes[2], num_blocks[2], groups)
        self.feature_dim = out_planes[2]
        self.linear = nn.Linear(out_planes[2], num_classes)

    def _make_layer(self, out_planes: int, num_blocks: int, groups: int) -> nn.Sequential:
        layers: List[nn.Module] = []
        for i in range(num_blocks):
            stride = 2 if i == 0 else 1
            # The first unit concatenates its (pooled) input, so its branch
            # only has to produce the remaining channels.
            cat_planes = self.in_planes if i == 0 else 0
            layers.append(Bottleneck(self.in_planes, out_planes - cat_planes, stride, groups))
            self.in_planes = out_planes
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, with_features: bool = False):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer1(out)
        out = self.layer2(out)
        out = self.layer3(out)
        # Three stride-2 stages take 32x32 to 4x4.
        feats = torch.flatten(F.avg_pool2d(out, 4), 1)
        return output(self.linear(feats), feats, with_features)


@register_model("ShuffleV1", feature_dim=960)
def shufflev1(num_classes: int) -> ShuffleNetV1:
    return ShuffleNetV1(out_planes=(240, 480, 960), num_blocks=(4, 8, 4), groups=3, num_classes=num_classes)
