"""The trainer's own loss terms, shared by every method: cross-entropy and Hinton KD.

A method's ``loss:`` keys extend these (``distillers/base.py``); kept apart from the
method contract so that reading a config needs neither torch nor any method.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .schema import join_path, require


@dataclass
class LossConfig:
    """The trainer's terms, shared by every method: cross-entropy and Hinton KD.

    A method's own ``loss:`` keys are the fields of its ``config_class``, a dataclass
    extending this one (``distillers/base.py``); a trial's ``loss`` is an instance of it.
    """

    ce_weight: float = 1.0
    kd_weight: float = 0.0
    kd_temperature: float = 4.0

    def validate(self, path: str) -> None:
        for name in ("ce_weight", "kd_weight"):
            value = getattr(self, name)
            require(math.isfinite(value) and value >= 0, f"bad value {value!r}: loss weights must be finite and >= 0", join_path(path, name))
        require(self.kd_temperature > 0, f"bad value {self.kd_temperature!r}: expected a temperature > 0", join_path(path, "kd_temperature"))
