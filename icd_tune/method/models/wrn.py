"""Wide ResNets for CIFAR (wrn_16_1, wrn_16_2, wrn_40_1, wrn_40_2).

Pre-activation blocks; names follow RepDistiller's ``wrn.py``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._registry import init_weights, output, register_model


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.equal_in_out = in_planes == out_planes
        # The reference has no ``convShortcut`` key when shapes already match.
        self.convShortcut = None
        if not self.equal_in_out:
            self.convShortcut = nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, padding=0, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        # When the shape changes, the shortcut consumes the *pre-activated*
        # input (as in the original WRN code); otherwise it is the raw input.
        shortcut = x if self.convShortcut is None else self.convShortcut(pre)
        out = F.relu(self.bn2(self.conv1(pre)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        return out + shortcut


class NetworkBlock(nn.Module):
    def __init__(self, nb_layers: int, in_planes: int, out_planes: int, stride: int,
                 drop_rate: float = 0.0) -> None:
        super().__init__()
        self.layer = nn.Sequential(*[
            BasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, drop_rate)
            for i in range(nb_layers)
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    def __init__(self, depth: int, num_classes: int = 100, widen_factor: int = 1,
                 drop_rate: float = 0.0) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WRN depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        channels = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(3, channels[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, channels[0], channels[1], 1, drop_rate)
        self.block2 = NetworkBlock(n, channels[1], channels[2], 2, drop_rate)
        self.block3 = NetworkBlock(n, channels[2], channels[3], 2, drop_rate)
        # Blocks are pre-activation, so the trunk needs a final BN+ReLU.
        self.bn1 = nn.BatchNorm2d(channels[3])
        self.feature_dim = channels[3]
        self.fc = nn.Linear(channels[3], num_classes)

        init_weights(self, zero_linear_bias=True)

    def forward(self, x: torch.Tensor, with_features: bool = False):
        out = self.conv1(x)
        out = self.block1(out)
        out = self.block2(out)
        out = self.block3(out)
        out = F.relu(self.bn1(out))
        # Fixed 8x8 window like the reference (CIFAR trunk ends at 8x8).
        feats = torch.flatten(F.avg_pool2d(out, 8), 1)
        return output(self.fc(feats), feats, with_features)


@register_model("wrn_16_1", feature_dim=64)
def wrn_16_1(num_classes: int) -> WideResNet:
    return WideResNet(16, num_classes, widen_factor=1)


@register_model("wrn_16_2", feature_dim=128)
def wrn_16_2(num_classes: int) -> WideResNet:
    return WideResNet(16, num_classes, widen_factor=2)


@register_model("wrn_40_1", feature_dim=64)
def wrn_40_1(num_classes: int) -> WideResNet:
    return WideResNet(40, num_classes, widen_factor=1)


@register_model("wrn_40_2", feature_dim=128)
def wrn_40_2(num_classes: int) -> WideResNet:
    return WideResNet(40, num_classes, widen_factor=2)
