"""CIFAR VGGs with BatchNorm (vgg8, vgg11, vgg13, vgg16, vgg19).

Five conv blocks ``block0..block4`` separated by ``pool0..pool4`` and a single
linear ``classifier``; names follow RepDistiller's ``vgg.py``.
"""

from __future__ import annotations

from typing import List, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._registry import init_weights, output, register_model

_CFGS = {
    "S": [[64], [128], [256], [512], [512]],
    "A": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "B": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "D": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "E": [[64, 64], [128, 128], [256, 256, 256, 256], [512, 512, 512, 512], [512, 512, 512, 512]],
}


def _make_block(widths: Sequence[int], in_channels: int, batch_norm: bool) -> nn.Sequential:
    layers: List[nn.Module] = []
    for v in widths:
        layers.append(nn.Conv2d(in_channels, v, kernel_size=3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(v))
        layers.append(nn.ReLU(inplace=True))
        in_channels = v
    # The block's last ReLU is applied in forward instead (the reference keeps
    # it out so pre-activation features can be tapped); dropping it here also
    # keeps the Sequential indices, and hence the state-dict keys, identical.
    return nn.Sequential(*layers[:-1])


class VGG(nn.Module):
    def __init__(self, cfg: Sequence[Sequence[int]], batch_norm: bool = True, num_classes: int = 100) -> None:
        super().__init__()
        self.block0 = _make_block(cfg[0], 3, batch_norm)
        self.block1 = _make_block(cfg[1], cfg[0][-1], batch_norm)
        self.block2 = _make_block(cfg[2], cfg[1][-1], batch_norm)
        self.block3 = _make_block(cfg[3], cfg[2][-1], batch_norm)
        self.block4 = _make_block(cfg[4], cfg[3][-1], batch_norm)
        self.pool0 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool1 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool2 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool3 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool4 = nn.AdaptiveAvgPool2d((1, 1))
        self.feature_dim = cfg[4][-1]
        self.classifier = nn.Linear(self.feature_dim, num_classes)

        init_weights(self, linear_std=0.01)

    def forward(self, x: torch.Tensor, with_features: bool = False):
        h = x.shape[2]
        x = self.pool0(F.relu(self.block0(x)))
        x = self.pool1(F.relu(self.block1(x)))
        x = self.pool2(F.relu(self.block2(x)))
        x = F.relu(self.block3(x))
        # 32x32 inputs are already 4x4 here; only 64x64 inputs (e.g. Tiny
        # ImageNet) get the extra downsampling, as in the reference.
        if h == 64:
            x = self.pool3(x)
        x = F.relu(self.block4(x))
        feats = torch.flatten(self.pool4(x), 1)
        return output(self.classifier(feats), feats, with_features)


@register_model("vgg8", feature_dim=512)
def vgg8(num_classes: int) -> VGG:
    return VGG(_CFGS["S"], batch_norm=True, num_classes=num_classes)


@register_model("vgg11", feature_dim=512)
def vgg11(num_classes: int) -> VGG:
    return VGG(_CFGS["A"], batch_norm=True, num_classes=num_classes)


@register_model("vgg13", feature_dim=512)
def vgg13(num_classes: int) -> VGG:
    return VGG(_CFGS["B"], batch_norm=True, num_classes=num_classes)


@register_model("vgg16", feature_dim=512)
def vgg16(num_classes: int) -> VGG:
    return VGG(_CFGS["D"], batch_norm=True, num_classes=num_classes)


@register_model("vgg19", feature_dim=512)
def vgg19(num_classes: int) -> VGG:
    return VGG(_CFGS["E"], batch_norm=True, num_classes=num_classes)
