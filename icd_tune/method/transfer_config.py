"""The ``transfer:`` block of a trial: a linear probe of the finished student on other datasets.

Defaults are the published recipe for the STL-10 / Tiny-ImageNet transfer
experiment: the student frozen, a new linear classifier trained on the target's
training images at 32x32 with SGD lr 0.05, momentum 0.9, weight decay 5e-4,
batch 64, 120 epochs, lr x0.1 at epochs 30/60/90, pad-4 crop and flip.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Optional

from .schema import join_path, require

TRANSFER_DATASETS = ("stl10", "tiny_imagenet", "synthetic", "digits")
TransferDataset = Literal["stl10", "tiny_imagenet", "synthetic", "digits"]


TRANSFER_PREFIX = "transfer/"  # every metric of the probe starts with it


def transfer_metric(dataset: str) -> str:
    """The probe's accuracy on one target set, as a trial reports it."""
    return f"{TRANSFER_PREFIX}{dataset}/acc1"


@dataclass
class TransferConfig:
    # Target sets, each probed on its own: stl10, tiny_imagenet, or the offline synthetic / digits.
    datasets: list[TransferDataset] = field(default_factory=list)
    epochs: int = 120
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    # Step decay points as fractions of the probe's epochs: 30/60/90 of 120.
    milestones: tuple[float, ...] = (0.25, 0.5, 0.75)
    gamma: float = 0.1
    # Pad-4 random crop and horizontal flip of the target's training images.
    augment: bool = True
    # Where stl10 / tiny_imagenet are looked for; None means the trial's data.root (./data when unset).
    root: Optional[str] = None
    # Download STL-10 when it is not under root (Tiny-ImageNet is never downloaded).
    download: bool = True
    # Frozen-student features: computed per batch (live), or once per image and augmentation
    # variant (cached: 162 forward passes per image, then lookups); auto picks by epochs and memory.
    features: Literal["live", "cached", "auto"] = "auto"
    cache_memory_budget_gb: float = 8.0
    # Cap on the probe's optimizer steps per epoch (smoke runs, tests); None runs full epochs.
    max_steps_per_epoch: Optional[int] = None

    def validate(self, path: str) -> None:
        require(len(self.datasets) >= 1, "bad value []: expected at least one target dataset, from "
                + ", ".join(TRANSFER_DATASETS), join_path(path, "datasets"))
        require(len(set(self.datasets)) == len(self.datasets), f"bad value {self.datasets!r}: datasets repeat",
                join_path(path, "datasets"))
        require(self.epochs >= 1, f"bad value {self.epochs!r}: expected at least 1 epoch", join_path(path, "epochs"))
        require(self.batch_size >= 1, f"bad value {self.batch_size!r}: expected a batch size of at least 1",
                join_path(path, "batch_size"))
        require(math.isfinite(self.lr) and self.lr > 0, f"bad value {self.lr!r}: expected lr > 0", join_path(path, "lr"))
        require(0 <= self.momentum < 1, f"bad value {self.momentum!r}: expected 0 <= momentum < 1",
                join_path(path, "momentum"))
        require(math.isfinite(self.weight_decay) and self.weight_decay >= 0,
                f"bad value {self.weight_decay!r}: expected weight_decay >= 0", join_path(path, "weight_decay"))
        for i, m in enumerate(self.milestones):
            require(0 < m < 1, f"bad value {m!r}: milestones are fractions of the probe's epochs, 0 < m < 1",
                    join_path(join_path(path, "milestones"), i))
        require(0 < self.gamma <= 1, f"bad value {self.gamma!r}: expected 0 < gamma <= 1", join_path(path, "gamma"))
        require(self.cache_memory_budget_gb > 0, f"bad value {self.cache_memory_budget_gb!r}: expected > 0",
                join_path(path, "cache_memory_budget_gb"))
        if self.max_steps_per_epoch is not None:
            require(self.max_steps_per_epoch >= 1, f"bad value {self.max_steps_per_epoch!r}: expected a positive "
                    f"integer or null", join_path(path, "max_steps_per_epoch"))

    def milestone_epochs(self) -> list[int]:
        return sorted({max(1, round(m * self.epochs)) for m in self.milestones})
