"""RRD, relational representation distillation (Giakoumoglou & Stathaki, arXiv 2407.12073; the ICD
authors' own): the student's similarities to a queue of teacher embeddings are trained towards the
teacher's own, sharper, similarities to the same queue (a soft cross-entropy).

Defaults follow the authors' CIFAR code (``cifar/train_student.py`` and ``cifar/distillers/RRD.py``,
the FIFO memory it selects by default): 128-d linear embeddings, l2-normalised; a FIFO queue of
16,384 teacher embeddings, this batch's enqueued before the similarities are taken; student
temperature 0.1 and teacher temperature 0.02, as the script's argument defaults give them (the
loss's docstring says the reverse, 0.02 for the student and 0.1 for the teacher; a study can set
either); weight 1 (``-b 1.0`` in their run script). As there, the queue starts as Gaussian noise
normalised over its rows' dimension 0, and the teacher side is detached, so the teacher's
embedding gets no gradient from this loss. The queue and its pointer are the method's state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..loss_config import LossConfig
from ..schema import join_path, require
from .base import OneTermDistiller, StepInputs


@dataclass
class RRDLossConfig(LossConfig):
    rrd_weight: float = 1.0  # -b 1.0
    rrd_feat_dim: int = 128  # --feat_dim
    rrd_queue: int = 16384  # --nce_k
    rrd_student_temperature: float = 0.1  # --nce_t_s (script default)
    rrd_teacher_temperature: float = 0.02  # --nce_t_t (script default)

    def validate(self, path: str) -> None:
        super().validate(path)
        require(math.isfinite(self.rrd_weight) and self.rrd_weight >= 0,
                f"bad value {self.rrd_weight!r}: expected a finite weight >= 0", join_path(path, "rrd_weight"))
        for name in ("rrd_feat_dim", "rrd_queue"):
            require(getattr(self, name) >= 1, f"bad value {getattr(self, name)!r}: expected a positive integer",
                    join_path(path, name))
        for name in ("rrd_student_temperature", "rrd_teacher_temperature"):
            require(getattr(self, name) > 0, f"bad value {getattr(self, name)!r}: expected a temperature > 0",
                    join_path(path, name))


def relational_loss(z_s: torch.Tensor, z_t: torch.Tensor, queue: torch.Tensor, t_s: float, t_t: float) -> torch.Tensor:
    """Soft cross-entropy of the student's similarities to ``queue`` against the teacher's (detached)."""
    target = F.softmax(z_t.detach() @ queue.T / t_t, dim=1)
    return -(target * F.log_softmax(z_s @ queue.T / t_s, dim=1)).sum(dim=1).mean()


class RRDDistiller(OneTermDistiller):
    config_class = RRDLossConfig
    term = "rrd"
    teacher_outputs = ("features",)
    student_features = True

    def __init__(self, loss: RRDLossConfig, student_dim: int, teacher_dim: int | None, num_train: int,
                 batch_size: int, seed: int = 0):
        super().__init__(loss, student_dim, teacher_dim, num_train, batch_size, seed)
        if not self.weights:
            return
        if teacher_dim is None:
            raise ValueError("RRD needs the teacher's feature width")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 7919)  # the seed alone decides the embeddings and the queue
            self.embed_s = nn.Linear(student_dim, loss.rrd_feat_dim)
            self.embed_t = nn.Linear(teacher_dim, loss.rrd_feat_dim)
            self.register_buffer("queue", F.normalize(torch.randn(loss.rrd_queue, loss.rrd_feat_dim), dim=0))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def graph_key(self, epoch: int, epochs: int) -> None:
        return None  # the step does not read the epoch: captured once

    def step(self, inputs: StepInputs) -> dict[str, torch.Tensor]:
        if not self.weights:
            return {}
        loss = self.loss
        with torch.autocast(inputs.x.device.type, enabled=False):  # similarities and softmaxes in fp32
            z_s = F.normalize(self.embed_s(inputs.features.to(self.embed_s.weight.dtype)), dim=1)
            z_t = F.normalize(self.embed_t(inputs.teacher_features.to(self.embed_t.weight.dtype)), dim=1)
            self.enqueue(z_t.detach())
            term = relational_loss(z_s, z_t, self.queue.detach(), loss.rrd_student_temperature,
                                   loss.rrd_teacher_temperature)
        return {"rrd": term}

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Overwrites the oldest rows with ``keys``, wrapping at the end; on the device, no host synchronisation."""
        size = self.queue.shape[0]
        rows = (self.queue_ptr + torch.arange(keys.shape[0], device=keys.device)) % size
        self.queue[rows] = keys
        self.queue_ptr.copy_((self.queue_ptr + keys.shape[0]) % size)
