"""No distillation terms of its own: cross-entropy, plus Hinton KD when ``loss.kd_weight`` > 0.

How teachers are trained, and the plain-student or plain-KD baseline of a study.
"""

from __future__ import annotations

from .base import Distiller


class CrossEntropy(Distiller):
    @classmethod
    def loss_terms(cls, loss) -> tuple[str, ...]:
        return ()

    def graph_key(self, epoch: int, epochs: int) -> None:
        return None  # the step does not read the epoch: captured once

    def step(self, inputs) -> dict:
        return {}
