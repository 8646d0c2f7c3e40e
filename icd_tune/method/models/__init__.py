"""CIFAR model zoo, layout-compatible with the RepDistiller teacher checkpoints.

Every model maps a (B, 3, 32, 32) batch to logits; ``model(x, with_features=True)``
returns ``(logits, features)`` where ``features`` is the pooled penultimate
representation fed to the final linear layer (width ``feature_dim(name)``).
"""

from __future__ import annotations

import difflib
from typing import Tuple

import torch.nn as nn

# Imported for their registration side effect only; no model is built here.
from . import mobilenetv2, resnet, resnetv2, shufflenetv1, shufflenetv2, vgg, wrn  # noqa: F401
from ._registry import FEATURE_DIMS, MODEL_FACTORIES, register_model

MODEL_NAMES: Tuple[str, ...] = (
    "resnet8",
    "resnet14",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
    "resnet8x4",
    "resnet32x4",
    "ResNet50",
    "wrn_16_1",
    "wrn_16_2",
    "wrn_40_1",
    "wrn_40_2",
    "vgg8",
    "vgg11",
    "vgg13",
    "vgg16",
    "vgg19",
    "MobileNetV2",
    "ShuffleV1",
    "ShuffleV2",
)

# Fail at import (also under ``python -O``) if the public tuple and the
# registry drift apart, rather than at first use of the missing name.
if set(MODEL_NAMES) != set(MODEL_FACTORIES):
    raise RuntimeError(f"MODEL_NAMES and registry differ: {sorted(set(MODEL_NAMES) ^ set(MODEL_FACTORIES))}")


def _check_name(name: str) -> None:
    if name in MODEL_FACTORIES:
        return
    close = difflib.get_close_matches(str(name), MODEL_NAMES, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ";"
    raise ValueError(f"unknown model {name!r}{hint} allowed: {', '.join(MODEL_NAMES)}")


def create_model(name: str, num_classes: int) -> nn.Module:
    """Build zoo model ``name`` with a ``num_classes``-way linear head."""
    _check_name(name)
    return MODEL_FACTORIES[name](num_classes)


def feature_dim(name: str) -> int:
    """Width of the pooled penultimate features of ``name`` (no model is built)."""
    _check_name(name)
    return FEATURE_DIMS[name]


__all__ = ["MODEL_NAMES", "create_model", "feature_dim", "register_model"]
