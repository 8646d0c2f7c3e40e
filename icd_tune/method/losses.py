"""Loss terms of Invariant Consistency Distillation (arXiv 2407.11802).

Notation follows the paper: z_s, z_t are L2-normalised student and teacher
embeddings, logits = scale * z_s z_t^T + bias. The contrastive term asks
student i to pick teacher i among the keys; the invariance term is
KL(Q_i || P_i) between teacher i's distribution over student keys (Q) and
student i's distribution over teacher keys (P).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

MAX_LOGIT_SCALE = 10.0
INITIAL_THETA = 1.0


def ce_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, labels)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton's KL(softmax(t/T) || softmax(s/T)) * T^2, averaged over the batch."""
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_p_t = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    return F.kl_div(log_p_s, log_p_t, log_target=True, reduction="batchmean") * (temperature * temperature)


def _kl_rows(log_q: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:
    """mean_i KL(Q_i || P_i) for row-wise log-distributions."""
    return (log_q.exp() * (log_q - log_p)).sum(dim=1).mean()


def icd_terms(z_s: torch.Tensor, z_t: torch.Tensor, logit_scale, logit_bias=0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(contrastive, invariance) with the batch as negatives; z_s, z_t are (B, D), L2-normalised."""
    with _fp32(z_s):
        return _icd_terms(z_s, z_t, logit_scale, logit_bias)


def _fp32(like: torch.Tensor):
    # Autocast would run the similarity matmuls in bf16 whatever their inputs' dtype; the
    # terms cost little next to the networks, so logits, softmaxes and KL stay in fp32.
    return torch.autocast(like.device.type, enabled=False)


def _icd_terms(z_s: torch.Tensor, z_t: torch.Tensor, logit_scale, logit_bias) -> tuple[torch.Tensor, torch.Tensor]:
    logits = (logit_scale * (z_s.float() @ z_t.float().T)) + logit_bias
    targets = torch.arange(logits.shape[0], device=logits.device)
    contrastive = F.cross_entropy(logits, targets)
    log_p = F.log_softmax(logits, dim=1)  # row i: student i over the teachers
    log_q = F.log_softmax(logits, dim=0).T  # row i: teacher i over the students
    return contrastive, _kl_rows(log_q, log_p)


def icd_terms_with_keys(z_s: torch.Tensor, z_t: torch.Tensor, teacher_keys: torch.Tensor, student_keys: torch.Tensor,
                        logit_scale, logit_bias=0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(contrastive, invariance) against explicit negative keys.

    For anchor i the keys are its positive (the other network's embedding of i)
    followed by the negatives. ``teacher_keys`` are keyed by the student anchors,
    ``student_keys`` by the teacher anchors; both are (K, D), one set shared by
    the batch, or (B, K, D), one set per anchor. The same key positions must
    refer to the same sample indices on both sides.
    """
    with _fp32(z_s):
        return _icd_terms_with_keys(z_s, z_t, teacher_keys, student_keys, logit_scale, logit_bias)


def _icd_terms_with_keys(z_s, z_t, teacher_keys, student_keys, logit_scale, logit_bias):
    z_s = z_s.float()
    z_t = z_t.float()
    positive = (z_s * z_t).sum(dim=1, keepdim=True)
    if teacher_keys.dim() == 2:
        s_neg = z_s @ teacher_keys.float().T
        t_neg = z_t @ student_keys.float().T
    else:
        s_neg = torch.einsum("bd,bkd->bk", z_s, teacher_keys.float())
        t_neg = torch.einsum("bd,bkd->bk", z_t, student_keys.float())
    student_logits = logit_scale * torch.cat([positive, s_neg], dim=1) + logit_bias
    teacher_logits = logit_scale * torch.cat([positive, t_neg], dim=1) + logit_bias
    targets = torch.zeros(z_s.shape[0], dtype=torch.long, device=z_s.device)
    contrastive = F.cross_entropy(student_logits, targets)
    invariance = _kl_rows(F.log_softmax(teacher_logits, dim=1), F.log_softmax(student_logits, dim=1))
    return contrastive, invariance


def sample_excluding(num_items: int, excluded: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` distinct indices from ``[0, num_items)`` minus the (distinct) ``excluded``, on the device.

    Draws ranks among the kept items and maps rank r to the r-th kept index:
    with the excluded indices sorted as e_0 < e_1 < ..., e_j - j kept items lie
    below e_j, so index = r + #{j : e_j - j <= r}. No host synchronisation.
    """
    device = excluded.device
    available = num_items - excluded.numel()
    if count > available:
        raise ValueError(f"cannot draw {count} negatives from {available} candidates")
    ranks = torch.randperm(available, generator=generator, device=device)[:count]
    e = excluded.sort().values
    below = e - torch.arange(e.numel(), device=device)
    return ranks + torch.searchsorted(below, ranks, right=True)


class ICDHead(nn.Module):
    """Projection heads, logit scale/bias and (for memory negatives) the two memory banks."""

    def __init__(self, student_dim: int, teacher_dim: int, cfg, num_train: int | None = None,
                 batch_size: int | None = None, bank_seed: int = 0):
        """``cfg``: ICD's ``loss:`` section (``distillers.icd.ICDLossConfig``)."""
        super().__init__()
        self.feat_dim = cfg.feat_dim
        self.proj_s = nn.Linear(student_dim, cfg.feat_dim)
        self.proj_t = nn.Linear(teacher_dim, cfg.feat_dim)
        self.learnable = cfg.temperature == "learnable"
        if self.learnable:
            self.theta = nn.Parameter(torch.tensor(INITIAL_THETA))
            self.bias = nn.Parameter(torch.tensor(0.0))
        else:
            # `frozen` keeps the learnable scale's starting point, untrained: scale e, T = 1/e.
            theta = INITIAL_THETA if cfg.temperature == "frozen" else math.log(1.0 / float(cfg.temperature))
            self.register_buffer("theta", torch.tensor(theta))
            self.register_buffer("bias", torch.tensor(0.0))
        self.source = cfg.negatives.source
        self.count = cfg.negatives.count
        self.momentum = cfg.negatives.momentum
        if self.source == "memory":
            if num_train is None or batch_size is None:
                raise ValueError("memory negatives need the training-set size and the batch size")
            check_negative_count(self.count, num_train, batch_size)
            g = torch.Generator().manual_seed(bank_seed)
            self.register_buffer("bank_s", F.normalize(torch.randn(num_train, cfg.feat_dim, generator=g), dim=1))
            self.register_buffer("bank_t", F.normalize(torch.randn(num_train, cfg.feat_dim, generator=g), dim=1))

    def logit_scale(self) -> torch.Tensor:
        if self.learnable:
            return self.theta.exp().clamp(max=MAX_LOGIT_SCALE)
        return self.theta.exp()

    def embed(self, f_s: torch.Tensor, f_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return F.normalize(self.proj_s(f_s).float(), dim=1), F.normalize(self.proj_t(f_t.to(self.proj_t.weight.dtype)).float(), dim=1)

    def forward(self, f_s: torch.Tensor, f_t: torch.Tensor, index: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        z_s, z_t = self.embed(f_s, f_t)
        scale = self.logit_scale()
        if self.source == "batch":
            return icd_terms(z_s, z_t, scale, self.bias)
        negatives = sample_excluding(self.bank_s.shape[0], index, self.count, generator)
        contrastive, invariance = icd_terms_with_keys(z_s, z_t, self.bank_t[negatives], self.bank_s[negatives],
                                                      scale, self.bias)
        self._update_banks(index, z_s.detach(), z_t.detach())
        return contrastive, invariance

    @torch.no_grad()
    def _update_banks(self, index: torch.Tensor, z_s: torch.Tensor, z_t: torch.Tensor) -> None:
        m = self.momentum
        self.bank_s[index] = F.normalize(m * self.bank_s[index] + (1 - m) * z_s, dim=1)
        self.bank_t[index] = F.normalize(m * self.bank_t[index] + (1 - m) * z_t, dim=1)


def check_negative_count(count: int, num_train: int, batch_size: int) -> None:
    available = num_train - batch_size
    if count > available:
        raise ValueError(
            f"negatives.count {count} is more than the data allows: {num_train} training samples minus a batch of "
            f"{batch_size} leave {available} candidate negatives; use at most {available}")
