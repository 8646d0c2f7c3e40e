"""Datasets held as uint8 tensors on the training device, with batched augmentation.

CIFAR-style augmentation (zero-pad 4, random 32x32 crop, horizontal flip) has
exactly 9 x 9 x 2 = 162 outcomes per image. Each sample draws one *variant
index* ``v`` in ``[0, 162)`` and the batch is cropped and flipped in one gather
on the device. Anything that depends only on (image, variant), such as a frozen
teacher's outputs, can therefore be computed once and looked up.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F

from .config import DataConfig

PAD = 4
SIZE = 32
OFFSETS = 2 * PAD + 1  # 9 crop positions per axis
NUM_VARIANTS = OFFSETS * OFFSETS * 2  # 162

CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)


class DataUnavailableError(RuntimeError):
    """A dataset could not be found locally nor downloaded."""


@dataclass
class DataBundle:
    """Train/val/test splits as CPU tensors: images uint8 (N, 3, 32, 32), labels int64."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    # Everything that determines the tensors above, for cache keys.
    identity: dict

    @property
    def num_train(self) -> int:
        return int(self.train_x.shape[0])

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.identity, sort_keys=True).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------
# Augmentation by variant index


def decode_variant(variant: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """variant -> (row offset, column offset, flip) with v = (oy * 9 + ox) * 2 + flip."""
    flip = variant % 2
    ox = (variant // 2) % OFFSETS
    oy = variant // (2 * OFFSETS)
    return oy, ox, flip


def encode_variant(oy: int, ox: int, flip: int) -> int:
    return (oy * OFFSETS + ox) * 2 + flip


def augment(images: torch.Tensor, variants: torch.Tensor) -> torch.Tensor:
    """Crops and flips a uint8 batch (B, C, 32, 32) by variant index, in one gather."""
    b = images.shape[0]
    padded = F.pad(images, (PAD, PAD, PAD, PAD))
    oy, ox, flip = decode_variant(variants.to(images.device))
    # Strides cannot run backwards, so flipped samples read from a mirrored copy of the
    # padded batch instead. The crop at column ox of an image, mirrored, is the crop at
    # 2 * PAD - ox of the mirrored padded image.
    both = torch.cat([padded, padded.flip(-1)])
    source = torch.arange(b, device=images.device) + b * flip
    ox = torch.where(flip.bool(), 2 * PAD - ox, ox)
    # Every 32x32 window as a view (2B, C, 9, 9, 32, 32): each sample then needs three
    # scalar indices, not a (C, 32, 32) block of computed row/column offsets, which is
    # what made the gather about 4x slower on the CPU.
    windows = both.unfold(2, SIZE, 1).unfold(3, SIZE, 1)
    return windows[source, :, oy, ox]


class Normalizer:
    """uint8 -> float, (x / 255 - mean) / std folded into one multiply-add."""

    def __init__(self, mean, std, device, channels_last: bool = False):
        std_t = torch.tensor(std, dtype=torch.float32, device=device)
        mean_t = torch.tensor(mean, dtype=torch.float32, device=device)
        self.scale = (1.0 / (255.0 * std_t)).view(1, -1, 1, 1)
        self.shift = (-mean_t / std_t).view(1, -1, 1, 1)
        self.channels_last = channels_last

    def __call__(self, images_u8: torch.Tensor) -> torch.Tensor:
        x = torch.addcmul(self.shift, images_u8.float(), self.scale)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x


class TrainStream:
    """Epochs over the training set on the device: permutation, variants, batches.

    Batches are ``(x, y, index, variant)``; ``x`` is normalised float. The last
    partial batch is dropped so every step has the same shape (compiled graphs,
    contrastive terms over a full batch).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, device: torch.device,
                 generator: torch.Generator, normalizer: Normalizer, augment_images: bool = True):
        if images.shape[0] < batch_size:
            raise ValueError(f"the training set has {images.shape[0]} images, fewer than one batch of {batch_size}")
        self.images = images.to(device)
        self.labels = labels.to(device)
        self.batch_size = batch_size
        self.device = device
        self.generator = generator
        self.normalizer = normalizer
        self.augment_images = augment_images

    @property
    def steps_per_epoch(self) -> int:
        return self.images.shape[0] // self.batch_size

    def epoch(self, max_steps: int | None = None) -> Iterator[tuple[torch.Tensor, ...]]:
        for index, variant in self.epoch_indices(max_steps):
            raw = self.images[index]
            if self.augment_images:
                raw = augment(raw, variant)
            else:
                variant = torch.full_like(variant, encode_variant(PAD, PAD, 0))
            yield self.normalizer(raw), self.labels[index], index, variant

    def epoch_indices(self, max_steps: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The epoch's ``(index, variant)`` batches alone, for consumers of precomputed features."""
        n = self.images.shape[0]
        # Draw the whole epoch's randomness up front, so the stream's state after an
        # epoch does not depend on how many of its steps were taken.
        order = torch.randperm(n, generator=self.generator, device=self.device)
        variants_all = torch.randint(0, NUM_VARIANTS, (n,), generator=self.generator, device=self.device)
        steps = self.steps_per_epoch if max_steps is None else min(max_steps, self.steps_per_epoch)
        for step in range(steps):
            index = order[step * self.batch_size:(step + 1) * self.batch_size]
            yield index, variants_all[index]


def eval_batches(images: torch.Tensor, labels: torch.Tensor, batch_size: int, device, normalizer: Normalizer):
    for start in range(0, images.shape[0], batch_size):
        x = images[start:start + batch_size].to(device, non_blocking=True)
        yield normalizer(x), labels[start:start + batch_size].to(device, non_blocking=True)


# ---------------------------------------------------------------------------
# Datasets


def _split_validation(x: torch.Tensor, y: torch.Tensor, fraction: float, seed: int):
    n = x.shape[0]
    n_val = int(round(fraction * n))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val_idx, train_idx = perm[:n_val].sort().values, perm[n_val:].sort().values
    return x[train_idx], y[train_idx], x[val_idx], y[val_idx]


def _channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    xf = x.float() / 255.0
    mean = xf.mean(dim=(0, 2, 3))
    std = xf.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return tuple(round(float(v), 4) for v in mean), tuple(round(float(v), 4) for v in std)


def _load_cifar100(cfg: DataConfig):
    import torchvision

    root = Path(cfg.root or "data").expanduser().resolve()
    parts = {}
    for train in (True, False):
        try:
            ds = torchvision.datasets.CIFAR100(str(root), train=train, download=False)
        except RuntimeError:
            if not cfg.download:
                raise DataUnavailableError(
                    f"CIFAR-100 not found in {root} (looked for {root / 'cifar-100-python'}) and download is off. "
                    f"Fix: set data.download: true, or put the extracted 'cifar-100-python' folder there, "
                    f"or point data.root / --data-dir at a folder that has it.") from None
            try:
                ds = torchvision.datasets.CIFAR100(str(root), train=train, download=True)
            except Exception as err:  # network errors come in many types
                raise DataUnavailableError(
                    f"CIFAR-100 not found in {root} (looked for {root / 'cifar-100-python'}) and the download failed: "
                    f"{type(err).__name__}: {err}. Fix: download cifar-100-python.tar.gz on a machine with internet, "
                    f"extract it into {root}, or point data.root / --data-dir at a folder that has it.") from None
        images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
        labels = torch.tensor(ds.targets, dtype=torch.int64)
        parts[train] = (images, labels)
    return parts[True], parts[False], 100, CIFAR100_MEAN, CIFAR100_STD


def _load_digits(cfg: DataConfig):
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images).float()  # (1797, 8, 8), values 0..16
    images = F.interpolate(images[:, None], size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    images = (images.clamp(0, 16) * (255.0 / 16.0)).round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    labels = torch.from_numpy(digits.target).to(torch.int64)
    # A fixed split, independent of every study setting, so test numbers stay comparable.
    perm = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(20240716))
    n_test = images.shape[0] // 5
    test_idx, train_idx = perm[:n_test].sort().values, perm[n_test:].sort().values
    train = (images[train_idx], labels[train_idx])
    mean, std = _channel_stats(train[0])
    return train, (images[test_idx], labels[test_idx]), 10, mean, std


def _load_synthetic(cfg: DataConfig):
    """Seeded class prototypes plus noise: learnable, any size and class count."""
    g = torch.Generator().manual_seed(cfg.synthetic_seed)
    prototypes = torch.rand(cfg.num_classes, 3, SIZE, SIZE, generator=g) * 255.0

    def draw(n):
        labels = torch.randint(0, cfg.num_classes, (n,), generator=g)
        noise = torch.randn(n, 3, SIZE, SIZE, generator=g) * cfg.synthetic_noise
        return (prototypes[labels] + noise).clamp(0, 255).round().to(torch.uint8), labels

    train = draw(cfg.num_train)
    test = draw(cfg.num_test)
    mean, std = _channel_stats(train[0])
    return train, test, cfg.num_classes, mean, std


_LOADERS = {"cifar100": _load_cifar100, "digits": _load_digits, "synthetic": _load_synthetic}


def load_data(cfg: DataConfig) -> DataBundle:
    (train_x, train_y), (test_x, test_y), num_classes, mean, std = _LOADERS[cfg.name](cfg)
    train_x, train_y, val_x, val_y = _split_validation(train_x, train_y, cfg.val_fraction, cfg.split_seed)
    identity = {"name": cfg.name, "val_fraction": cfg.val_fraction, "split_seed": cfg.split_seed,
                "num_train": int(train_x.shape[0]), "num_val": int(val_x.shape[0]), "num_test": int(test_x.shape[0])}
    if cfg.name == "synthetic":
        identity.update(num_classes=cfg.num_classes, synthetic_seed=cfg.synthetic_seed, synthetic_noise=cfg.synthetic_noise,
                        total_train=cfg.num_train, total_test=cfg.num_test)
    return DataBundle(cfg.name, train_x, train_y, val_x, val_y, test_x, test_y, num_classes, mean, std, identity)


def train_size(cfg: DataConfig) -> int:
    """Training-set size after the validation split, known without loading the data."""
    return _full_train_size(cfg) - val_size(cfg)


def val_size(cfg: DataConfig) -> int:
    """Validation-split size, known without loading the data (as ``_split_validation`` rounds it)."""
    return int(round(cfg.val_fraction * _full_train_size(cfg)))


def _full_train_size(cfg: DataConfig) -> int:
    return {"cifar100": 50000, "digits": 1797 - 1797 // 5}.get(cfg.name, cfg.num_train)


def missing_data(cfg: DataConfig) -> str | None:
    """Why ``cfg``'s dataset is not on this machine, looked up without downloading; None when it is."""
    if cfg.name != "cifar100":
        return None  # digits ship with scikit-learn, synthetic data is drawn
    folder = Path(cfg.root or "data").expanduser().resolve() / "cifar-100-python"
    if all((folder / part).is_file() for part in ("train", "test", "meta")):
        return None
    return f"CIFAR-100 is not in {folder}"


def num_classes(cfg: DataConfig) -> int:
    return {"cifar100": 100, "digits": 10}.get(cfg.name, cfg.num_classes)
