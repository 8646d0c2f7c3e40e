"""MobileNetV2 for CIFAR (RepDistiller ``mobile_half``: expansion 6, width 0.5).

Names follow RepDistiller's ``mobilenetv2.py``: ``conv1``, ``blocks`` (a
ModuleList of stages), ``conv2``, ``avgpool`` and ``classifier`` (a Sequential
holding one Linear, hence keys ``classifier.0.*``).
"""

from __future__ import annotations

from typing import List

import torch
import torch.nn as nn

from ._registry import init_weights, output, register_model


def _conv_bn(inp: int, oup: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, oup, 3, stride, 1, bias=False),
        nn.BatchNorm2d(oup),
        nn.ReLU(inplace=True),
    )


def _conv_1x1_bn(inp: int, oup: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, oup, 1, 1, 0, bias=False),
        nn.BatchNorm2d(oup),
        nn.ReLU(inplace=True),
    )


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        self.use_res_connect = stride == 1 and inp == oup
        hidden = inp * expand_ratio
        # Unlike torchvision, the expansion 1x1 conv is kept even when
        # expand_ratio == 1: the reference checkpoints contain its weights.
        self.conv = nn.Sequential(
            nn.Conv2d(inp, hidden, 1, 1, 0, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, expansion: int = 6, width_mult: float = 0.5, num_classes: int = 100,
                 input_size: int = 32) -> None:
        super().__init__()
        if input_size % 32 != 0:
            raise ValueError(f"input_size must be a multiple of 32, got {input_size}")
        input_channel = int(32 * width_mult)
        self.conv1 = _conv_bn(3, input_channel, 2)

        # t (expansion), c (channels), n (repeats), s (first stride)
        setting = [
            [1, 16, 1, 1],
            [expansion, 24, 2, 1],
            [expansion, 32, 3, 2],
            [expansion, 64, 4, 2],
            [expansion, 96, 3, 1],
            [expansion, 160, 3, 2],
            [expansion, 320, 1, 1],
        ]
        self.blocks = nn.ModuleList()
        for t, c, n, s in setting:
            output_channel = int(c * width_mult)
            layers: List[nn.Module] = []
            for stride in [s] + [1] * (n - 1):
                layers.append(InvertedResidual(input_channel, output_channel, stride, t))
                input_channel = output_channel
            self.blocks.append(nn.Sequential(*layers))

        # The head width only scales up, never down (1280 for width 0.5).
        self.last_channel = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.feature_dim = self.last_channel
        self.conv2 = _conv_1x1_bn(input_channel, self.last_channel)
        # Total stride is 16 on CIFAR, so this window covers the final map.
        self.avgpool = nn.AvgPool2d(input_size // 16, ceil_mode=True)
        self.classifier = nn.Sequential(nn.Linear(self.last_channel, num_classes))

        init_weights(self, linear_std=0.01)

    def forward(self, x: torch.Tensor, with_features: bool = False):
        out = self.conv1(x)
        for stage in self.blocks:
            out = stage(out)
        out = self.conv2(out)
        feats = torch.flatten(self.avgpool(out), 1)
        return output(self.classifier(feats), feats, with_features)


@register_model("MobileNetV2", feature_dim=1280)
def mobilenetv2(num_classes: int) -> MobileNetV2:
    return MobileNetV2(expansion=6, width_mult=0.5, num_classes=num_classes)
