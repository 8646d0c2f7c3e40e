"""The transfer linear probe: a finished trial's student, frozen, read out by a new linear layer.

For each target set (``transfer_data.py``) a linear classifier on the student's pooled
penultimate features is trained with the ``transfer:`` recipe (SGD, step decay, pad-crop-flip
through ``TrainStream``) and scored on the target's test split: ``transfer/<dataset>/acc1``.

The student is frozen and in eval mode (batch-norm running statistics), so its features depend
only on (image, augmentation variant). They are either computed per batch (``live``: one
forward pass per image and epoch) or once per image and variant (``cached``: 162 passes per
image with augmentation, 1 without, then table lookups); ``auto`` caches when the bank costs
fewer live epochs than the probe runs (``BANK_PASS_COST``) and fits ``cache_memory_budget_gb``. Both read the same stream of (index, variant)
batches, so they train the same probe.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import TrialConfig
from .data import NUM_VARIANTS, Normalizer, TrainStream, augment, eval_batches
from .models import create_model, feature_dim
from .transfer_config import TransferConfig, transfer_metric
from .transfer_data import TargetSet, load_target

# Offsets the probe's random streams from the trial's own (data order, negatives).
PROBE_SEED_OFFSET = 2_000_003
# A bank pass (batches of 512) per image-variant costs about this share of a live probe step per
# image (batch 64): 0.56x and 0.69x in two CPU runs of bench/transfer_features.py (docs/benchmarks.md);
# the higher, rounded up, so auto caches only where the bank pays in both.
BANK_PASS_COST = 0.7


@dataclass
class ProbeResult:
    acc1: float
    features: str  # live or cached
    train_images: int
    test_images: int


def frozen_student(cfg: TrialConfig, weights: dict, num_classes: int, device: torch.device) -> nn.Module:
    """The trial's architecture with ``weights``, frozen in eval mode on ``device``."""
    student = create_model(cfg.student, num_classes)
    student.load_state_dict(weights)
    student.eval().requires_grad_(False)
    student = student.to(device)
    if device.type == "cuda":
        student = student.to(memory_format=torch.channels_last)
    return student


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


@torch.no_grad()
def features_of(student: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with _autocast(x.device):
        _, feats = student(x, with_features=True)
    return feats.float()


def bank_bytes(num_images: int, dim: int, augmented: bool, dtype_bytes: int = 2) -> int:
    return (NUM_VARIANTS if augmented else 1) * num_images * dim * dtype_bytes


def feature_mode(cfg: TransferConfig, num_images: int, dim: int) -> str:
    """``live`` or ``cached`` for a target of ``num_images`` training images and ``dim``-wide features."""
    if cfg.features != "auto":
        return cfg.features
    fits = bank_bytes(num_images, dim, cfg.augment) <= cfg.cache_memory_budget_gb * 2**30
    steps_cap = cfg.max_steps_per_epoch is not None  # a capped probe sees few images: building the bank would not pay
    bank_cost = (NUM_VARIANTS if cfg.augment else 1) * BANK_PASS_COST  # in live epochs
    return "cached" if fits and not steps_cap and bank_cost <= cfg.epochs else "live"


@torch.no_grad()
def feature_bank(student: nn.Module, images_u8: torch.Tensor, normalizer: Normalizer, augmented: bool,
                 chunk: int = 512) -> torch.Tensor:
    """(variants, N, D) float16 features of every image under every variant (one variant, the centre, without).

    Batches run over (variant, image) pairs, so a small target still fills whole batches.
    """
    device = images_u8.device
    n = images_u8.shape[0]
    variants = NUM_VARIANTS if augmented else 1
    bank = None
    for start in range(0, variants * n, chunk):
        flat = torch.arange(start, min(start + chunk, variants * n), device=device)
        raw = images_u8[flat % n]
        if augmented:
            raw = augment(raw, flat // n)
        f = features_of(student, normalizer(raw))
        if bank is None:
            bank = torch.empty(variants * n, f.shape[1], dtype=torch.float16, device=device)
        bank[flat] = f.half()
    return bank.view(variants, n, -1)


def linear_probe(student: nn.Module, target: TargetSet, cfg: TransferConfig, normalizer: Normalizer,
                 device: torch.device, seed: int, dim: int) -> ProbeResult:
    """Trains a linear classifier on the frozen ``student``'s features of ``target``; scores its test split."""
    generator = torch.Generator(device=device).manual_seed(seed + PROBE_SEED_OFFSET)
    stream = TrainStream(target.train_x, target.train_y, cfg.batch_size, device, generator, normalizer,
                         augment_images=cfg.augment)
    mode = feature_mode(cfg, target.train_x.shape[0], dim)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + PROBE_SEED_OFFSET)
        head = nn.Linear(dim, target.num_classes)
    head = head.to(device)
    optimizer = torch.optim.SGD(head.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, cfg.milestone_epochs(), gamma=cfg.gamma)
    bank = feature_bank(student, stream.images, normalizer, cfg.augment) if mode == "cached" else None
    for _ in range(cfg.epochs):
        if bank is None:
            batches = ((features_of(student, x), y) for x, y, _, _ in stream.epoch(cfg.max_steps_per_epoch))
        else:
            batches = ((bank[variant if cfg.augment else 0, index].float(), stream.labels[index])
                       for index, variant in stream.epoch_indices(cfg.max_steps_per_epoch))
        for feats, y in batches:
            loss = F.cross_entropy(head(feats), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        scheduler.step()
    correct = torch.zeros((), dtype=torch.long, device=device)
    with torch.no_grad():
        for x, y in eval_batches(target.test_x, target.test_y, 512, device, normalizer):
            correct += (head(features_of(student, x)).argmax(dim=1) == y).sum()
    n = max(1, target.test_y.shape[0])
    return ProbeResult(100.0 * correct.item() / n, mode, int(target.train_x.shape[0]), int(target.test_y.shape[0]))


def probe_weights(trainer) -> dict:
    """The student weights a trial's probe reads: the best-validation ones, else (no validation split) the last."""
    if trainer.best_student is not None:
        return trainer.best_student
    return {k: v.detach().to("cpu", copy=True) for k, v in trainer.student.state_dict().items()}


def run_transfer(trainer, log=None) -> dict[str, float]:
    """``transfer/<dataset>/acc1`` for each target of the trial's ``transfer:`` block; {} without one."""
    cfg: TrialConfig = trainer.cfg
    transfer = cfg.transfer
    if transfer is None:
        return {}
    device = trainer.device
    student = frozen_student(cfg, probe_weights(trainer), trainer.data.num_classes, device)
    # The student's own input normalisation: its features were learnt on inputs scaled so.
    normalizer = Normalizer(trainer.data.mean, trainer.data.std, device, channels_last=device.type == "cuda")
    metrics = {}
    for name in transfer.datasets:
        target = load_target(name, transfer, cfg.data)
        result = linear_probe(student, target, transfer, normalizer, device, cfg.seed, feature_dim(cfg.student))
        if log is not None:
            log(f"transfer probe on {name}: acc1 {result.acc1:.2f} ({result.train_images} training, "
                f"{result.test_images} test images, {result.features} features)")
        metrics[transfer_metric(name)] = result.acc1
    return metrics
