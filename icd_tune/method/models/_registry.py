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


def init_weights(model, linear_std: float | None = None, zero_linear_bias: bool = False) -> None:
    """The zoo's initialisation: Kaiming fan-out convolutions, unit/zero BatchNorm, and optionally
    N(0, linear_std) linear weights with zero bias."""
    import torch.nn as nn

    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            if linear_std is not None:
                nn.init.normal_(m.weight, 0, linear_std)
            if linear_std is not None or zero_linear_bias:
                nn.init.zeros_(m.bias)
