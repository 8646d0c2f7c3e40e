"""ICD: a contrastive term and an explicit invariance penalty between student and teacher embeddings.

Its ``loss:`` keys are ``contrastive_weight``, ``invariance_weight``, ``temperature``,
``feat_dim`` and ``negatives`` (the terms are in ``losses.py``). With both weights 0 it
adds nothing: cross-entropy, plus Hinton KD when ``loss.kd_weight`` > 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal, Union

import torch

from ..config import LossConfig, NegativesConfig
from ..losses import ICDHead, check_negative_count
from ..schema import join_path, require
from .base import Distiller, StepInputs

LOGIT_SCALE = "train/logit_scale"  # the head's logit scale, once an epoch


@dataclass
class ICDLossConfig(LossConfig):
    contrastive_weight: float = 1.0
    invariance_weight: float = 0.5
    # How the ICD logits are scaled (logits = scale * cosine + bias):
    #   `learnable`: scale = exp(theta), theta trained from 1 (scale e), capped at 10, plus a trained bias;
    #     the published CIFAR-100 table's setting.
    #   `frozen`: the same scale left untrained at its initial value e (T = 1/e = 0.36788), bias 0;
    #     what the authors' ImageNet script does. Equal to temperature 0.36787944117144233.
    #   a number T: a fixed temperature, scale = 1/T, bias 0 (logits are divided by T).
    temperature: Union[Literal["learnable", "frozen"], float] = "learnable"
    feat_dim: int = 128
    negatives: NegativesConfig = field(default_factory=NegativesConfig)

    def validate(self, path: str) -> None:
        super().validate(path)
        for name in ("contrastive_weight", "invariance_weight"):
            value = getattr(self, name)
            require(math.isfinite(value) and value >= 0, f"bad value {value!r}: loss weights must be finite and >= 0",
                    join_path(path, name))
        if self.temperature not in ("learnable", "frozen"):
            require(math.isfinite(self.temperature) and self.temperature > 0, f"bad value {self.temperature!r}: "
                    f"expected 'learnable', 'frozen' or a temperature > 0", join_path(path, "temperature"))
        require(self.feat_dim >= 1, f"bad value {self.feat_dim!r}: expected a positive integer", join_path(path, "feat_dim"))

    @property
    def uses_head(self) -> bool:
        return self.contrastive_weight > 0 or self.invariance_weight > 0


class ICDDistiller(Distiller):
    config_class = ICDLossConfig
    teacher_outputs = ("features",)
    student_features = True

    def __init__(self, loss: ICDLossConfig, student_dim: int, teacher_dim: int | None, num_train: int,
                 batch_size: int, seed: int = 0):
        super().__init__(loss, student_dim, teacher_dim, num_train, batch_size, seed)
        self.head = None
        if loss.uses_head:
            if teacher_dim is None:
                raise ValueError("ICD's head needs the teacher's feature width (contrastive_weight or "
                                 "invariance_weight > 0)")
            with torch.random.fork_rng(devices=[]):
                # The heads' initialisation depends on the seed only, not on the factor levels around it.
                torch.manual_seed(seed + 7919)
                self.head = ICDHead(student_dim, teacher_dim, loss, num_train=num_train, batch_size=batch_size,
                                    bank_seed=seed + 104729)
        self.student_features = self.head is not None  # the student's features feed the head only
        self.weights = {term: getattr(loss, f"{term}_weight") for term in self.loss_terms(loss)}

    @classmethod
    def needs_teacher(cls, loss: ICDLossConfig) -> bool:
        return loss.uses_head

    @classmethod
    def loss_terms(cls, loss: ICDLossConfig) -> tuple[str, ...]:
        return ("contrastive", "invariance") if loss.uses_head else ()

    @classmethod
    def metric_names(cls, loss: ICDLossConfig) -> tuple[str, ...]:
        return (LOGIT_SCALE,) if loss.uses_head else ()

    @classmethod
    def missing_metric_note(cls, loss: ICDLossConfig, metric: str) -> str | None:
        weights = ", ".join(f"loss.{w}_weight {getattr(loss, f'{w}_weight')}" for w in ("kd", "contrastive", "invariance"))
        if metric == LOGIT_SCALE:
            return f"it has no ICD head ({weights}); the head needs a contrastive or invariance weight > 0"
        if metric.startswith("train/loss_"):
            terms = ["train/loss_ce"] + (["train/loss_kd"] if loss.kd_weight > 0 or loss.uses_head else []) + [
                f"train/loss_{t}" for t in cls.loss_terms(loss)]
            return (f"with {weights} its loss terms are {', '.join(terms)} (the kd term needs a teacher, the "
                    f"contrastive and invariance terms an ICD head)")
        return None

    @classmethod
    def check_sizes(cls, loss: ICDLossConfig, num_train: int, batch_size: int) -> tuple[str, str] | None:
        if loss.negatives.source != "memory" or not loss.uses_head:
            return None
        try:
            check_negative_count(loss.negatives.count, num_train, batch_size)
        except ValueError as err:
            return str(err), "loss.negatives.count"
        return None

    @classmethod
    def state_bytes(cls, loss: ICDLossConfig, num_train: int) -> int:
        return 2 * num_train * loss.feat_dim * 4 if loss.negatives.source == "memory" else 0  # two fp32 banks

    @classmethod
    def fit_to_sizes(cls, loss: ICDLossConfig, num_train: int, batch_size: int) -> dict[str, Any]:
        allowed = num_train - batch_size
        if loss.negatives.source != "memory" or not loss.uses_head or loss.negatives.count <= allowed:
            return {}
        return {"loss.negatives.count": allowed}

    def step(self, inputs: StepInputs) -> dict[str, torch.Tensor]:
        if self.head is None:
            return {}
        contrastive, invariance = self.head(inputs.features, inputs.teacher_features, inputs.index, inputs.generator)
        return {"contrastive": contrastive, "invariance": invariance}

    def graph_key(self, epoch: int, epochs: int) -> None:
        return None  # the step does not read the epoch: captured once

    def epoch_metrics(self) -> dict[str, float]:
        if self.head is None:
            return {}
        return {LOGIT_SCALE: float(self.head.logit_scale().detach())}
