"""CRD, contrastive representation distillation (Tian et al., ICLR 2020).

Both penultimate features are embedded linearly to ``crd_feat_dim`` and l2-normalised; a memory
bank per network holds an embedding of every training image, updated with momentum. Each
anchor is contrasted, through NCE, with its own row of the other network's bank (the positive)
and ``crd_negatives`` other rows, in both directions (student anchors against the teacher's
bank and teacher anchors against the student's), and the two losses are summed.

Defaults follow RepDistiller's ``train_student.py`` and ``crd/``: 128-d embeddings, 16,384
negatives, NCE temperature 0.07, bank momentum 0.5, weight 0.8 (``-b 0.8``), banks initialised
uniformly in +-1/sqrt(dim/3), and the NCE normalisation constant Z estimated once, on the first
batch, as the mean of exp(s/T) times the training-set size (kept as state, so a resumed run goes
on with the same Z). Unlike RepDistiller, whose CIFAR loader draws each anchor's negatives from
the other classes, the negatives here are one shared set per step drawn uniformly from the
images outside the batch (the draw the ICD memory negatives use), so the step needs no labels of
the training set and gathers one (K, D) block instead of a (B, K, D) one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..loss_config import LossConfig
from ..losses import check_negative_count, sample_excluding
from ..schema import join_path, require
from .base import OneTermDistiller, StepInputs

EPS = 1e-7  # RepDistiller's ContrastLoss eps


@dataclass
class CRDLossConfig(LossConfig):
    crd_weight: float = 0.8  # RepDistiller -b 0.8
    crd_feat_dim: int = 128  # --feat_dim
    crd_negatives: int = 16384  # --nce_k
    crd_temperature: float = 0.07  # --nce_t
    crd_momentum: float = 0.5  # --nce_m

    def validate(self, path: str) -> None:
        super().validate(path)
        require(math.isfinite(self.crd_weight) and self.crd_weight >= 0,
                f"bad value {self.crd_weight!r}: expected a finite weight >= 0", join_path(path, "crd_weight"))
        for name in ("crd_feat_dim", "crd_negatives"):
            require(getattr(self, name) >= 1, f"bad value {getattr(self, name)!r}: expected a positive integer",
                    join_path(path, name))
        require(self.crd_temperature > 0, f"bad value {self.crd_temperature!r}: expected a temperature > 0",
                join_path(path, "crd_temperature"))
        require(0 <= self.crd_momentum < 1, f"bad value {self.crd_momentum!r}: expected 0 <= crd_momentum < 1",
                join_path(path, "crd_momentum"))


def nce_loss(scores: torch.Tensor, num_train: int) -> torch.Tensor:
    """RepDistiller's ContrastLoss: ``scores`` (B, 1 + K) are exp(s/T)/Z, the positive first."""
    k = scores.shape[1] - 1
    noise = k / num_train  # K times the uniform noise probability 1/N
    positive = torch.log(scores[:, 0] / (scores[:, 0] + noise + EPS))
    negative = torch.log(noise / (scores[:, 1:] + noise + EPS))
    return -(positive.sum() + negative.sum()) / scores.shape[0]


class CRDDistiller(OneTermDistiller):
    config_class = CRDLossConfig
    term = "crd"
    teacher_outputs = ("features",)
    student_features = True

    def __init__(self, loss: CRDLossConfig, student_dim: int, teacher_dim: int | None, num_train: int,
                 batch_size: int, seed: int = 0):
        super().__init__(loss, student_dim, teacher_dim, num_train, batch_size, seed)
        self.num_train = num_train
        if not self.weights:
            return
        if teacher_dim is None:
            raise ValueError("CRD needs the teacher's feature width")
        check_negative_count(loss.crd_negatives, num_train, batch_size)
        dim = loss.crd_feat_dim
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 7919)  # the seed alone decides the embeddings and banks, not the levels
            self.embed_s = nn.Linear(student_dim, dim)
            self.embed_t = nn.Linear(teacher_dim, dim)
            bound = 1.0 / math.sqrt(dim / 3)
            self.register_buffer("bank_s", torch.rand(num_train, dim).mul_(2 * bound).add_(-bound))
            self.register_buffer("bank_t", torch.rand(num_train, dim).mul_(2 * bound).add_(-bound))
        # Z for each direction, estimated on the first batch; ``z_ready`` says it has been.
        self.register_buffer("z", torch.ones(2))
        self.register_buffer("z_ready", torch.zeros((), dtype=torch.bool))

    @classmethod
    def check_sizes(cls, loss: CRDLossConfig, num_train: int, batch_size: int) -> tuple[str, str] | None:
        if loss.crd_weight <= 0:
            return None
        try:
            check_negative_count(loss.crd_negatives, num_train, batch_size)
        except ValueError as err:
            return str(err).replace("negatives.count", "crd_negatives"), "loss.crd_negatives"
        return None

    @classmethod
    def fit_to_sizes(cls, loss: CRDLossConfig, num_train: int, batch_size: int) -> dict:
        allowed = num_train - batch_size
        return {"loss.crd_negatives": allowed} if loss.crd_weight > 0 and loss.crd_negatives > allowed else {}

    @classmethod
    def state_bytes(cls, loss: CRDLossConfig, num_train: int) -> int:
        return 2 * num_train * loss.crd_feat_dim * 4 if loss.crd_weight > 0 else 0

    def graph_key(self, epoch: int, epochs: int) -> None:
        return None  # the step does not read the epoch: captured once

    def step(self, inputs: StepInputs) -> dict[str, torch.Tensor]:
        if not self.weights:
            return {}
        loss = self.loss
        with torch.autocast(inputs.x.device.type, enabled=False):  # the NCE terms stay in fp32
            v_s = F.normalize(self.embed_s(inputs.features.to(self.embed_s.weight.dtype)), dim=1)
            v_t = F.normalize(self.embed_t(inputs.teacher_features.to(self.embed_t.weight.dtype)), dim=1)
            index = inputs.index
            keys = torch.cat([index, sample_excluding(self.num_train, index, loss.crd_negatives, inputs.generator)])
            s_scores, t_scores = self.scores(v_s, v_t, index, keys)
            terms = {"crd": nce_loss(s_scores, self.num_train) + nce_loss(t_scores, self.num_train)}
            self.update_banks(index, v_s.detach(), v_t.detach())
        return terms

    def scores(self, v_s, v_t, index, keys) -> tuple[torch.Tensor, torch.Tensor]:
        """exp(s/T)/Z of each anchor against its positive row and the shared negatives, both directions."""
        t = self.loss.crd_temperature
        positive_t, positive_s = self.bank_t[index], self.bank_s[index]
        negatives_t, negatives_s = self.bank_t[keys[index.numel():]], self.bank_s[keys[index.numel():]]
        # student anchors against the teacher's bank, teacher anchors against the student's
        s_raw = torch.cat([(v_s * positive_t).sum(1, keepdim=True), v_s @ negatives_t.T], dim=1).div(t).exp()
        t_raw = torch.cat([(v_t * positive_s).sum(1, keepdim=True), v_t @ negatives_s.T], dim=1).div(t).exp()
        first = torch.stack([s_raw.detach().mean(), t_raw.detach().mean()]) * self.num_train
        z = torch.where(self.z_ready, self.z, first)
        with torch.no_grad():
            self.z.copy_(z)
            self.z_ready.fill_(True)
        return s_raw / z[0], t_raw / z[1]

    @torch.no_grad()
    def update_banks(self, index, v_s, v_t) -> None:
        m = self.loss.crd_momentum
        self.bank_s[index] = F.normalize(self.bank_s[index] * m + v_s * (1 - m), dim=1)
        self.bank_t[index] = F.normalize(self.bank_t[index] * m + v_t * (1 - m), dim=1)
