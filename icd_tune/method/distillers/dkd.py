"""DKD, decoupled knowledge distillation (Zhao et al., CVPR 2022): KD split into a target-class
term (TCKD) and a non-target-class term (NCKD), weighted apart and warmed up.

Defaults are mdistiller's for resnet32x4 -> resnet8x4 (``configs/cifar100/dkd/res32x4_res8x4.yaml``
and ``mdistiller/engine/cfg.py``): alpha 1, beta 8, temperature 4, a linear warm-up over the
first 20 of 240 epochs (here a share of the epoch budget, as the milestones are), CE weight 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..loss_config import LossConfig
from ..schema import join_path, require
from .base import OneTermDistiller, StepInputs

MASKED = 1000.0  # subtracted from the target logit so that the non-target softmax ignores it


@dataclass
class DKDLossConfig(LossConfig):
    dkd_weight: float = 1.0  # the DKD term's weight in the loss (its warm-up scales it further)
    dkd_alpha: float = 1.0  # TCKD's weight inside the term (mdistiller DKD.ALPHA)
    dkd_beta: float = 8.0  # NCKD's weight inside the term (DKD.BETA, 8 for resnet32x4 -> resnet8x4)
    dkd_temperature: float = 4.0  # DKD.T
    dkd_warmup: float = 20 / 240  # share of the epoch budget over which the term rises linearly (DKD.WARMUP 20)

    def validate(self, path: str) -> None:
        super().validate(path)
        for name in ("dkd_weight", "dkd_alpha", "dkd_beta"):
            value = getattr(self, name)
            require(math.isfinite(value) and value >= 0, f"bad value {value!r}: expected a finite weight >= 0",
                    join_path(path, name))
        require(self.dkd_temperature > 0, f"bad value {self.dkd_temperature!r}: expected a temperature > 0",
                join_path(path, "dkd_temperature"))
        require(0 <= self.dkd_warmup <= 1, f"bad value {self.dkd_warmup!r}: the warm-up is a share of the epoch "
                f"budget, 0 <= dkd_warmup <= 1", join_path(path, "dkd_warmup"))


def dkd_terms(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor,
              temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(TCKD, NCKD), each a batch-mean KL times T^2, in fp32."""
    s, t = student.float() / temperature, teacher.float() / temperature
    target = F.one_hot(labels, s.shape[1]).to(s.dtype)
    p_s, p_t = s.softmax(dim=1), t.softmax(dim=1)
    # Binary distributions: the target class against all the others together.
    b_s = torch.stack([(p_s * target).sum(dim=1), (p_s * (1 - target)).sum(dim=1)], dim=1)
    b_t = torch.stack([(p_t * target).sum(dim=1), (p_t * (1 - target)).sum(dim=1)], dim=1)
    tckd = F.kl_div(b_s.clamp_min(1e-12).log(), b_t, reduction="batchmean")
    nckd = F.kl_div(F.log_softmax(s - MASKED * target, dim=1), F.softmax(t - MASKED * target, dim=1),
                    reduction="batchmean")
    scale = temperature * temperature
    return tckd * scale, nckd * scale


class DKDDistiller(OneTermDistiller):
    config_class = DKDLossConfig
    term = "dkd"
    teacher_outputs = ("logits",)

    def step(self, inputs: StepInputs) -> dict[str, torch.Tensor]:
        loss = self.loss
        if not self.weights:
            return {}
        tckd, nckd = dkd_terms(inputs.logits, inputs.teacher_logits, inputs.y, loss.dkd_temperature)
        warm = self.warm_factor(inputs.epoch, inputs.epochs)  # a Python float: no sync
        return {"dkd": warm * (loss.dkd_alpha * tckd + loss.dkd_beta * nckd)}

    def warm_factor(self, epoch: int, epochs: int) -> float:
        """The linear warm-up's factor on the term in ``epoch`` (1 once the warm-up is over)."""
        warm_epochs = self.loss.dkd_warmup * epochs
        return min(epoch / warm_epochs, 1.0) if warm_epochs > 0 else 1.0

    def graph_key(self, epoch: int, epochs: int) -> float:
        return self.warm_factor(epoch, epochs)  # a captured step holds the factor: a new one each warm-up epoch
