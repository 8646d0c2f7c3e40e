"""ICD distiller: CE + KD + contrastive + invariance, any weight may be zero.

With w_con = w_inv = 0 it is Hinton KD; with w_kd = 0 as well and no teacher it
is plain cross-entropy training (how teachers are trained).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..config import LossConfig
from ..losses import ICDHead, ce_loss, kd_loss


class ICDDistiller(nn.Module):
    def __init__(self, student: nn.Module, teacher: nn.Module | None, cfg: LossConfig, student_dim: int,
                 teacher_dim: int | None, num_train: int, batch_size: int, seed: int = 0):
        super().__init__()
        self.cfg = cfg
        self.student = student
        if cfg.uses_teacher and teacher is None:
            raise ValueError("this loss needs a teacher (kd_weight, contrastive_weight or invariance_weight > 0)")
        self.teacher = teacher if cfg.uses_teacher else None
        self.head = None
        if cfg.uses_icd:
            with torch.random.fork_rng(devices=[]):
                # The heads' initialisation depends on the seed only, not on the factor levels around it.
                torch.manual_seed(seed + 7919)
                self.head = ICDHead(student_dim, teacher_dim, cfg, num_train=num_train, batch_size=batch_size,
                                    bank_seed=seed + 104729)
        self.weights = {term: getattr(cfg, f"{term}_weight") for term in self.loss_terms(cfg)}

    @staticmethod
    def loss_terms(cfg: LossConfig) -> tuple[str, ...]:
        """The terms a training step returns with these weights; studies check metric names against them."""
        terms = ("ce",)
        if cfg.uses_teacher:
            terms += ("kd",)
        if cfg.uses_icd:
            terms += ("contrastive", "invariance")
        return terms

    def trainable_modules(self) -> list[nn.Module]:
        return [m for m in (self.student, self.head) if m is not None]

    def forward_train(self, x, y, index, variant, generator=None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        need_features = self.head is not None
        if need_features:
            logits, f_s = self.student(x, with_features=True)
        else:
            logits = self.student(x)
        terms = {"ce": ce_loss(logits.float(), y)}
        if self.teacher is not None:
            t_logits, f_t = self.teacher(x, index, variant)
            terms["kd"] = kd_loss(logits, t_logits, self.cfg.kd_temperature)
            if self.head is not None:
                terms["contrastive"], terms["invariance"] = self.head(f_s, f_t, index, generator)
        return logits, terms
