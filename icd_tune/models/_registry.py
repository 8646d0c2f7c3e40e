"""Name -> factory registry shared by the model families.

Kept in its own module so the family modules can register themselves without
importing the package ``__init__`` (which imports them), avoiding a cycle.
"""

from __future__ import annotations

from typing import Callable, Dict

import torch.nn as nn

ModelFactory = Callable[[int], nn.Module]

MODEL_FACTORIES: Dict[str, ModelFactory] = {}
FEATURE_DIMS: Dict[str, int] = {}


def register_model(name: str, feature_dim: int) -> Callable[[ModelFactory], ModelFactory]:
    """Register ``factory(num_classes) -> nn.Module`` under ``name``.

    The feature width is declared alongside the factory so ``feature_dim(name)``
    can answer without building the (possibly large) network.
    """

    def decorator(factory: ModelFactory) -> ModelFactory:
        if name in MODEL_FACTORIES:
            raise ValueError(f"model {name!r} registered twice")
        MODEL_FACTORIES[name] = factory
        FEATURE_DIMS[name] = int(feature_dim)
        return factory

    return decorator


def output(logits, features, with_features: bool):
    """Common return convention of every zoo model's ``forward``."""
    if with_features:
        return logits, features
    return logits
