"""Typed configuration of one training trial (the method layer's input).

Defaults are the published ICD recipe for CIFAR-100 (arXiv 2407.11802):
240 epochs, batch 64, SGD momentum 0.9, lr 0.05 decayed x0.1 at epochs
150/180/210, weight decay 5e-4, w_ce 1, w_kd 0, w_con 1, w_inv 0.5, T 4, D 128.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Optional, Union

from .loss_config import LossConfig
from .schema import ConfigError, from_dict, join_path, require, to_dict
from .transfer_config import TransferConfig

# `optim.lr: auto` is 0.05, except for these students, trained at 0.01 in the published recipe.
LOW_LR_ARCHS = ("MobileNetV2", "ShuffleV1", "ShuffleV2")
AUTO_LR, LOW_LR = 0.05, 0.01
DEFAULT_METHOD = "icd"


def resolve_lr(lr: Union[str, float], arch: str) -> float:
    """The learning rate ``optim.lr`` means for a model ``arch``: a number as given, ``auto`` by the architecture."""
    if lr == "auto":
        return LOW_LR if arch in LOW_LR_ARCHS else AUTO_LR
    return float(lr)


@dataclass
class DataConfig:
    name: Literal["cifar100", "digits", "synthetic"] = "digits"
    # Where cifar100 is downloaded to or looked for; None means ./data.
    root: Optional[str] = None
    download: bool = True
    # A seeded share of the training set held out for tuning; test is never selected on.
    val_fraction: float = 0.1
    split_seed: int = 0
    augment: bool = True
    # synthetic data only
    num_train: int = 512
    num_test: int = 128
    num_classes: int = 10
    synthetic_seed: int = 0
    # Standard deviation of the pixel noise around each class prototype (0-255 scale): higher is harder.
    synthetic_noise: float = 48.0

    def validate(self, path: str) -> None:
        require(0.0 <= self.val_fraction < 1.0, f"bad value {self.val_fraction!r}: expected 0 <= val_fraction < 1", join_path(path, "val_fraction"))
        require(self.num_train >= 2, f"bad value {self.num_train!r}: expected at least 2", join_path(path, "num_train"))
        require(self.num_test >= 1, f"bad value {self.num_test!r}: expected at least 1", join_path(path, "num_test"))
        require(self.num_classes >= 2, f"bad value {self.num_classes!r}: expected at least 2", join_path(path, "num_classes"))
        require(self.synthetic_noise >= 0, f"bad value {self.synthetic_noise!r}: expected synthetic_noise >= 0",
                join_path(path, "synthetic_noise"))


@dataclass
class NegativesConfig:
    source: Literal["batch", "memory"] = "batch"
    # Negatives per anchor for `memory`; `batch` always uses the other B-1 samples.
    count: int = 16384
    # Memory-bank update m <- normalize(momentum * m + (1 - momentum) * z), as in CRD.
    momentum: float = 0.5

    def validate(self, path: str) -> None:
        require(self.count >= 1, f"bad value {self.count!r}: expected a positive integer", join_path(path, "count"))
        require(0.0 <= self.momentum < 1.0, f"bad value {self.momentum!r}: expected 0 <= momentum < 1", join_path(path, "momentum"))


def default_loss() -> LossConfig:
    """The default method's ``loss:`` section with its defaults."""
    from .distillers import get_method

    return get_method(DEFAULT_METHOD).config_class()


@dataclass
class OptimConfig:
    epochs: int = 240
    batch_size: int = 64
    # `auto`: 0.05, or 0.01 for MobileNetV2, ShuffleV1 and ShuffleV2 (see resolve_lr); a number overrides it.
    lr: Union[Literal["auto"], float] = "auto"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    # Step decay points as fractions of the epoch budget: 150/180/210 of 240.
    milestones: tuple[float, ...] = (0.625, 0.75, 0.875)
    gamma: float = 0.1

    def validate(self, path: str) -> None:
        require(self.epochs >= 1, f"bad value {self.epochs!r}: expected at least 1 epoch", join_path(path, "epochs"))
        require(self.batch_size >= 2, f"bad value {self.batch_size!r}: expected a batch size of at least 2 (contrastive terms need negatives)", join_path(path, "batch_size"))
        if self.lr != "auto":
            require(math.isfinite(self.lr) and self.lr > 0, f"bad value {self.lr!r}: expected 'auto' or an lr > 0",
                    join_path(path, "lr"))
        require(0 <= self.momentum < 1, f"bad value {self.momentum!r}: expected 0 <= momentum < 1", join_path(path, "momentum"))
        require(self.weight_decay >= 0, f"bad value {self.weight_decay!r}: expected weight_decay >= 0", join_path(path, "weight_decay"))
        for i, m in enumerate(self.milestones):
            require(0 < m < 1, f"bad value {m!r}: milestones are fractions of the epoch budget, 0 < m < 1", join_path(join_path(path, "milestones"), i))
        require(0 < self.gamma <= 1, f"bad value {self.gamma!r}: expected 0 < gamma <= 1", join_path(path, "gamma"))

    def milestone_epochs(self) -> list[int]:
        return sorted({max(1, round(m * self.epochs)) for m in self.milestones})


@dataclass
class TeacherConfig:
    arch: str = "resnet32x4"
    # A checkpoint file (ours or RepDistiller's {'model': state_dict}); None trains one.
    checkpoint: Optional[str] = None
    # Recipe for training the teacher when no checkpoint is given.
    optim: OptimConfig = field(default_factory=OptimConfig)
    seed: int = 0
    # Where trained teachers (and their output caches) are kept; None means ./results/teachers.
    cache_dir: Optional[str] = None
    # Exact teacher-output cache over the 162 augmentation variants: off, on, or auto
    # (on when the augmentation is pad-crop-flip and the cache fits the memory budget).
    cache: Literal["off", "on", "auto"] = "auto"
    cache_dtype: Literal["float16", "float32"] = "float16"
    cache_memory_budget_gb: float = 8.0
    # Cap on the teacher's optimizer steps per epoch (smoke runs); None trains full epochs.
    max_steps_per_epoch: Optional[int] = None

    def validate(self, path: str) -> None:
        from .models import MODEL_NAMES
        from .schema import suggest

        require(self.arch in MODEL_NAMES, f"unknown model '{self.arch}'{suggest(self.arch, MODEL_NAMES)}", join_path(path, "arch"))
        if self.max_steps_per_epoch is not None:
            require(self.max_steps_per_epoch >= 1, f"bad value {self.max_steps_per_epoch!r}: expected a positive integer "
                    f"or null", join_path(path, "max_steps_per_epoch"))


@dataclass
class TrialConfig:
    # The distiller: a registered name (icd_tune/method/distillers: icd, ce) or module:Class.
    # KD and plain contrastive distillation are loss-weight settings of "icd"; "ce" adds no terms.
    method: str = DEFAULT_METHOD
    # `validation` (select on a held-out split, report test at the best validation epoch) or
    # `paper` (no validation split; report the best test accuracy over epochs, selected on test).
    # `validation`: a held-out share of the training set selects epochs, levels and configurations;
    # `paper`: all training images, and each trial's best test accuracy over its epochs, as published.
    protocol: Literal["validation", "paper"] = "validation"
    student: str = "resnet8x4"
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=default_loss)  # the method's config_class
    optim: OptimConfig = field(default_factory=OptimConfig)
    seed: int = 0
    # Cap on optimizer steps per epoch (smoke runs); None runs full epochs.
    max_steps_per_epoch: Optional[int] = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    compile: bool = False
    # `graph`: each training step replayed as one CUDA graph (method/graph_step.py); on the CPU, and where
    # the teacher-output cache is read through host lookups, it runs eager and says so. Not with compile: true.
    step: Literal["eager", "graph"] = "eager"
    # How often (in epochs) val/test accuracy is measured; the last epoch always is.
    eval_every: int = 1
    # A linear probe of the finished student on other datasets (transfer_config.py); None: none.
    transfer: Optional[TransferConfig] = None

    def validate(self, path: str) -> None:
        from .models import MODEL_NAMES
        from .schema import suggest

        config_class = method_config_class(self.method, join_path(path, "method"))
        require(type(self.loss) is config_class, f"the loss section of method '{self.method}' is a "
                f"{config_class.__name__}, not a {type(self.loss).__name__}", join_path(path, "loss"))
        require(self.student in MODEL_NAMES, f"unknown model '{self.student}'{suggest(self.student, MODEL_NAMES)}", join_path(path, "student"))
        if self.max_steps_per_epoch is not None:
            require(self.max_steps_per_epoch >= 1, f"bad value {self.max_steps_per_epoch!r}: expected a positive integer or null", join_path(path, "max_steps_per_epoch"))
        require(not (self.step == "graph" and self.compile), "bad value 'graph': step: graph and compile: true cannot "
                "be combined (torch.compile's code is not captured into the step's CUDA graph); set compile: false "
                "or step: eager", join_path(path, "step"))
        require(self.eval_every >= 1, f"bad value {self.eval_every!r}: expected a positive integer", join_path(path, "eval_every"))
        if self.protocol == "paper":
            require(self.data.val_fraction == 0, f"bad value {self.data.val_fraction!r}: protocol paper trains on every "
                    f"training image and holds out none; set data.val_fraction: 0 or leave it out (it defaults to 0 "
                    f"under protocol paper), or use protocol: validation", join_path(join_path(path, "data"), "val_fraction"))

    @classmethod
    def from_dict(cls, data: dict, path: str = "") -> "TrialConfig":
        data = with_protocol_defaults(data)
        method = data.get("method", DEFAULT_METHOD) if isinstance(data, dict) else DEFAULT_METHOD
        if not isinstance(method, str):
            raise ConfigError(f"bad value {method!r}: expected a method name or module:Class", join_path(path, "method"))
        # The loss section is read as the method's own config class: its keys are the method's.
        return from_dict(cls, data, path, field_types={"loss": method_config_class(method, join_path(path, "method"))})

    @property
    def uses_teacher(self) -> bool:
        """Whether this trial reads a teacher: KD's weight, or its method's own terms."""
        from .distillers import uses_teacher

        return uses_teacher(self.method, self.loss)

    def to_dict(self) -> dict:
        return to_dict(self)


def method_config_class(method: str, path: str = "method") -> type:
    """The ``loss:`` dataclass of ``method``; a ConfigError naming what is wrong when there is no such method."""
    from .distillers import MethodError, get_method

    try:
        return get_method(method).config_class
    except MethodError as err:
        raise ConfigError(str(err), path) from None


def with_protocol_defaults(data: dict) -> dict:
    """Plain trial data with the defaults its protocol implies: ``paper`` holds out no validation split."""
    if not isinstance(data, dict) or data.get("protocol") != "paper":
        return data
    section = data.get("data")
    if section is None or (isinstance(section, dict) and "val_fraction" not in section):
        return {**data, "data": {**(section or {}), "val_fraction": 0.0}}
    return data


__all__ = [
    "ConfigError",
    "DataConfig",
    "LossConfig",
    "NegativesConfig",
    "OptimConfig",
    "TeacherConfig",
    "TransferConfig",
    "TrialConfig",
]
