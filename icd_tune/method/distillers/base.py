"""The method contract: what every distillation method is, whoever wrote it.

A method is one module holding a ``Distiller`` subclass. The trainer owns the student,
the frozen teacher, the optimiser and two terms every method shares: cross-entropy
(``loss.ce_weight``) and Hinton KD (``loss.kd_weight``, ``loss.kd_temperature``). A
method adds its own terms on top of them and declares:

* ``config_class``: a dataclass extending ``LossConfig`` whose extra fields are the
  method's own ``loss:`` keys (the schema validates them like any other key);
* ``needs_teacher(loss)`` and ``teacher_outputs`` (of ``"logits"``, ``"features"``),
  ``student_features`` (whether it reads the student's penultimate features);
* ``loss_terms(loss)``: the names of its own terms (metrics ``train/loss_<term>``),
  and ``weights``: how the trainer weighs each in the loss it minimises;
* its trainable modules (``trainable_modules()``, by default the method itself) and its
  state: ``state_dict()`` of the method module, which holds neither student nor teacher;
  the trainer checkpoints and restores it with the student;
* ``step(inputs)``: its unweighted terms for one batch, told the epoch and the epoch budget besides
  the batch.

``step`` runs every optimiser step: it must not synchronise with the host (no
``.item()``, ``.tolist()``, printing a tensor or branching on a tensor's value) and must
keep every shape fixed from step to step, so that a whole step can be replayed as one
CUDA graph. Per-epoch figures of its own go in ``epoch_metrics()``, read once an epoch.
A captured step keeps every Python value it computed at capture, so under ``step: graph``
the trainer captures it again whenever ``graph_key(epoch, epochs)`` changes: the default,
the epoch itself, is always right; a step that ignores the epoch returns None (captured
once), one that reads it through a warm-up returns that warm-up's factor.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Hashable

import torch
import torch.nn as nn

from ..loss_config import LossConfig

TEACHER_OUTPUTS = ("logits", "features")


@dataclass
class StepInputs:
    """What a method's ``step`` is told: the batch, both networks' outputs on it, and where training is."""

    x: torch.Tensor  # the normalised, augmented images
    y: torch.Tensor  # labels
    index: torch.Tensor  # each image's row in the training set (memory banks, caches)
    variant: torch.Tensor  # each image's augmentation variant
    logits: torch.Tensor  # the student's logits
    features: torch.Tensor | None  # the student's penultimate features when ``student_features``, else None
    teacher_logits: torch.Tensor | None  # None when the trial uses no teacher
    teacher_features: torch.Tensor | None
    epoch: int  # the epoch being trained, from 1; a Python int, the same for every step of an epoch
    epochs: int  # the trial's epoch budget (``optim.epochs``), for warm-ups given as a share of it
    generator: torch.Generator | None  # the trial's seeded generator for a method's own sampling


class Distiller(nn.Module):
    """Base class of every method; subclasses set the class attributes and override ``loss_terms`` and ``step``."""

    config_class: type = LossConfig
    teacher_outputs: tuple[str, ...] = ()
    student_features: bool = False
    method_name: str = ""  # set when the method is looked up: its registry name or import path

    def __init__(self, loss: LossConfig, student_dim: int, teacher_dim: int | None, num_train: int,
                 batch_size: int, seed: int = 0):
        super().__init__()
        self.loss = loss
        self.weights: dict[str, float] = {}

    # -- what the method is, asked before anything is built (study checks, the platform) --

    @classmethod
    def needs_teacher(cls, loss: LossConfig) -> bool:
        """Whether its own terms read the teacher with these settings (KD's need is the trainer's)."""
        return bool(cls.teacher_outputs)

    @classmethod
    def loss_terms(cls, loss: LossConfig) -> tuple[str, ...]:
        """The names of the terms ``step`` returns with these settings."""
        raise NotImplementedError

    @classmethod
    def metric_names(cls, loss: LossConfig) -> tuple[str, ...]:
        """Names of the per-epoch figures ``epoch_metrics`` reports with these settings."""
        return ()

    @classmethod
    def missing_metric_note(cls, loss: LossConfig, metric: str) -> str | None:
        """Why a metric the method can report is missing with these settings (for the study checks)."""
        return None

    @classmethod
    def check_sizes(cls, loss: LossConfig, num_train: int, batch_size: int) -> tuple[str, str] | None:
        """(message, key) when its settings ask for more than the training split holds; None when they fit."""
        return None

    @classmethod
    def state_bytes(cls, loss: LossConfig, num_train: int) -> int:
        """About how large its state is in a checkpoint when it grows with the data (memory banks); 0 otherwise."""
        return 0

    @classmethod
    def fit_to_sizes(cls, loss: LossConfig, num_train: int, batch_size: int) -> dict[str, Any]:
        """Overrides (``loss.<key>`` -> value) that fit its settings to a smaller training split (smoke runs)."""
        return {}

    # -- what it does, once built --

    def trainable_modules(self) -> list[nn.Module]:
        return [self]

    def step(self, inputs: StepInputs) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def epoch_metrics(self) -> dict[str, float]:
        return {}

    def graph_key(self, epoch: int, epochs: int) -> Hashable:
        """What ``step`` computes from the epoch as Python values; a captured step is captured again when it changes."""
        return epoch


class OneTermDistiller(Distiller):
    """A method with one term of its own, ``term``, weighted by its config's ``<term>_weight``.

    At weight 0 it adds nothing: no term, no teacher asked for, and ``weights`` empty.
    """

    term: str = ""

    def __init__(self, loss: LossConfig, student_dim: int, teacher_dim: int | None, num_train: int,
                 batch_size: int, seed: int = 0):
        super().__init__(loss, student_dim, teacher_dim, num_train, batch_size, seed)
        self.weights = {self.term: self.weight(loss)} if self.weight(loss) > 0 else {}

    @classmethod
    def weight(cls, loss: LossConfig) -> float:
        return getattr(loss, f"{cls.term}_weight")

    @classmethod
    def needs_teacher(cls, loss: LossConfig) -> bool:
        return cls.weight(loss) > 0

    @classmethod
    def loss_terms(cls, loss: LossConfig) -> tuple[str, ...]:
        return (cls.term,) if cls.weight(loss) > 0 else ()


def contract_problems(cls: Any) -> list[str]:
    """What ``cls`` lacks to be a method; empty when it fits the contract."""
    if not isinstance(cls, type) or not issubclass(cls, Distiller):
        return [f"a subclass of {Distiller.__module__}.Distiller (got {cls!r})"]
    problems = []
    config = cls.config_class
    if not (isinstance(config, type) and dataclasses.is_dataclass(config) and issubclass(config, LossConfig)):
        problems.append("config_class: a dataclass extending icd_tune.method.config.LossConfig")
    problems += [f"{name}()" for name in ("loss_terms", "step") if _inherited_base(cls, name)]
    unknown = [o for o in cls.teacher_outputs if o not in TEACHER_OUTPUTS]
    if unknown:
        problems.append(f"teacher_outputs of {', '.join(TEACHER_OUTPUTS)} (got {', '.join(map(str, unknown))})")
    return problems


def _inherited_base(cls: type, name: str) -> bool:
    """Whether ``cls`` takes ``name`` from Distiller itself rather than from a subclass between them."""
    for klass in cls.__mro__:
        if name in klass.__dict__:
            return klass is Distiller
    return True
