"""A study's own settings (everything in a study file that is not a trial default), validated.

The keys a study file may hold are ``STUDY_KEYS`` plus ``TRIAL_KEYS``, the trial
defaults of ``TrialConfig`` (student, teacher, data, loss, optim, ...).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from ...method.config import TrialConfig
from ...method.schema import join_path, require
from ..metrics import TEST_ACC1_AT_BEST_VAL, VAL_ACC1

TRIAL_KEYS = tuple(f.name for f in dataclasses.fields(TrialConfig) if f.name != "seed")


@dataclass
class AshaConfig:
    enabled: bool = False
    grace_period: int = 10
    reduction_factor: float = 3.0
    # None means the trial's epoch budget.
    max_epochs: Optional[int] = None

    def validate(self, path: str) -> None:
        require(self.grace_period >= 1, f"bad value {self.grace_period!r}: expected at least 1 epoch", join_path(path, "grace_period"))
        # ASHA promotes the top 1/factor of each rung, rungs at grace_period * factor^k epochs: below 2
        # it keeps most trials and judges them at rungs only an epoch or two apart.
        require(self.reduction_factor >= 2, f"bad value {self.reduction_factor!r}: expected a reduction factor of at "
                f"least 2 (each rung keeps 1/reduction_factor of its trials)", join_path(path, "reduction_factor"))
        if self.max_epochs is not None:
            require(self.max_epochs >= 1, f"bad value {self.max_epochs!r}: expected at least 1", join_path(path, "max_epochs"))


@dataclass
class SearchConfig:
    spaces: list[str] = field(default_factory=list)
    space: dict = field(default_factory=dict)
    num_samples: int = 20
    seed: int = 0
    # An earlier search's run folder, optuna.db or Optuna storage URL: its finished trials seed this one.
    warm_start: Optional[str] = None
    # Configurations ({dotted key: value} over the space's keys) the search evaluates first, e.g. the defaults.
    points_to_evaluate: list[dict] = field(default_factory=list)

    def validate(self, path: str) -> None:
        require(self.num_samples >= 1, f"bad value {self.num_samples!r}: expected at least 1 sample", join_path(path, "num_samples"))


@dataclass
class SmokeConfig:
    epochs: int = 1
    max_steps: int = 5
    teacher_epochs: int = 1
    # Optimizer steps per epoch of a teacher trained for the smoke run (a stand-in; its accuracy is not the point).
    teacher_steps: int = 2

    def validate(self, path: str) -> None:
        for name in ("epochs", "max_steps", "teacher_epochs", "teacher_steps"):
            value = getattr(self, name)
            require(value >= 1, f"bad value {value!r}: expected at least 1", join_path(path, name))


@dataclass
class TrackingSettings:
    """How the study's own MLflow calls wait: per request, and through an outage of a tracking server."""

    # Seconds an unreachable tracking server is waited for (records queued, trials training on) before the
    # run gives up on it, finishes without it and exits 6; --tracking-wait overrides it.
    outage_timeout: float = 1800.0
    # At most this many MLflow calls wait in memory through an outage (one per trial epoch, about); beyond, give up.
    max_queued: int = 10000
    # MLflow's own retries of one request and its timeout (MLFLOW_HTTP_REQUEST_MAX_RETRIES, ..._TIMEOUT), set for
    # the study's calls in place of MLflow's 7 retries and 120 s, which block the trials' loop for minutes.
    request_retries: int = 2
    request_timeout: int = 20  # whole seconds, as MLflow reads it

    def validate(self, path: str) -> None:
        for name in ("outage_timeout", "request_timeout"):
            value = getattr(self, name)
            require(value >= 0 if name == "outage_timeout" else value > 0,
                    f"bad value {value!r}: expected seconds, {'>= 0' if name == 'outage_timeout' else '> 0'}",
                    join_path(path, name))
        require(self.max_queued >= 1, f"bad value {self.max_queued!r}: expected at least 1", join_path(path, "max_queued"))
        require(self.request_retries >= 0, f"bad value {self.request_retries!r}: expected >= 0",
                join_path(path, "request_retries"))


# A name that becomes a folder, an MLflow experiment or a registered model: never a path.
PLAIN_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}")
PLAIN_NAME_RULE = ("a name must be plain: letters, digits, '-', '_' and '.', not starting with '.', at most 100 "
                   "characters, no path separator")


def is_plain_name(name: object) -> bool:
    return isinstance(name, str) and PLAIN_NAME.fullmatch(name) is not None


def register_refusal(name: object, protocol: str, metric: str) -> str | None:
    """Why the study's best student may not be registered as ``name``; None when it may."""
    if not is_plain_name(name):
        return f"bad registered model name {name!r}: {PLAIN_NAME_RULE}"
    if protocol == "paper":
        return ("nothing is registered under protocol paper: its students are the best-test ones, selected on the "
                "test set, so a registry's comparison of them would select on the test set; register a study run "
                "under protocol: validation")
    if not metric.startswith("val/"):
        return (f"the registry compares students on the study's selection metric, and {metric!r} is not measured on "
                f"the validation split; set metric to a val/ metric such as {VAL_ACC1}")
    return None


@dataclass
class StudySettings:
    name: str = ""
    description: str = ""
    mode: Literal["grid", "search", "compare"] = "grid"
    seeds: list[int] = field(default_factory=lambda: [0])
    grid: dict = field(default_factory=dict)
    # A level of the first grid factor, or {factor: level}: the levels compared with it, paired by seed.
    baseline: Any = None
    search: SearchConfig = field(default_factory=SearchConfig)
    # mode compare: {reference, methods: {label: {method, set, spaces, space}}, allow_unequal_budgets}; study.compare.
    compare: dict = field(default_factory=dict)
    asha: AshaConfig = field(default_factory=AshaConfig)
    # Under protocol paper both default to test/best_acc1 (study_checks.protocol_defaults).
    metric: str = VAL_ACC1
    metric_mode: Literal["max", "min"] = "max"
    report_metric: str = TEST_ACC1_AT_BEST_VAL
    max_retries: int = 2
    # Log each finished trial's student weights on its MLflow run (off for huge searches).
    log_students: bool = True
    # MLflow Models (torch.export, loadable without icd-tune) of the study's best trials on `metric`, exported
    # when the study ends; 0: none. Registering exports the best one whatever this says.
    export_models: int = 1
    # A registered model the study's best student (on the validation metric) joins as a new version; null: none.
    register: Optional[str] = None
    # Each trial reports its process's CPU and memory (and its GPU's) once per epoch as system/... metrics.
    system_metrics: bool = True
    checkpoint_every: int = 1
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_concurrent: Optional[int] = None
    results_dir: str = "results"
    # Refuse to start with less free disk than this (or than the study's own estimate).
    min_free_gb: float = 1.0
    smoke: SmokeConfig = field(default_factory=SmokeConfig)
    tracking: TrackingSettings = field(default_factory=TrackingSettings)
    # Fills {teachers_dir} in teacher.checkpoint (with {arch}, each trial's teacher.arch): where the
    # teacher checkpoints are, e.g. RepDistiller's save/models. Relative to the working directory.
    teachers_dir: Optional[str] = None
    # Published numbers to print beside the measured ones (paper_table.yaml): first grid factor's
    # level -> {teacher: %, student: %, <second factor's level>: %, ...}; see report.published.
    # null: none (a study extending one with published numbers drops them so).
    reported: Optional[dict] = field(default_factory=dict)
    reported_source: str = ""

    def validate(self, path: str) -> None:
        require(bool(self.name), "required key is missing: every study needs a name", join_path(path, "name"))
        require(is_plain_name(self.name), f"bad value {self.name!r}: {PLAIN_NAME_RULE} (it names the study's "
                f"results folder and its MLflow experiment)", join_path(path, "name"))
        require(not self.metric.startswith("transfer/"),
                f"bad value {self.metric!r}: transfer accuracies are measured on each target's test split after the "
                f"last epoch, so nothing may select on them; they are reported beside the study's metric",
                join_path(path, "metric"))
        require(self.export_models >= 0, f"bad value {self.export_models!r}: expected 0 (none) or more",
                join_path(path, "export_models"))
        if self.register is not None:
            require(is_plain_name(self.register), f"bad value {self.register!r}: {PLAIN_NAME_RULE} (it names a "
                    f"registered model)", join_path(path, "register"))
        require(len(self.seeds) >= 1, "bad value []: expected at least one seed", join_path(path, "seeds"))
        require(len(set(self.seeds)) == len(self.seeds), f"bad value {self.seeds!r}: seeds repeat", join_path(path, "seeds"))
        require(self.max_retries >= 0, f"bad value {self.max_retries!r}: expected >= 0", join_path(path, "max_retries"))
        require(self.checkpoint_every >= 1, f"bad value {self.checkpoint_every!r}: expected >= 1", join_path(path, "checkpoint_every"))
        require(self.cpus_per_trial > 0, f"bad value {self.cpus_per_trial!r}: expected > 0", join_path(path, "cpus_per_trial"))
        require(0 <= self.gpus_per_trial <= 1, f"bad value {self.gpus_per_trial!r}: expected 0 to 1; a trial trains on "
                f"one device (a fraction packs several trials on one GPU)", join_path(path, "gpus_per_trial"))
        if self.max_concurrent is not None:
            require(self.max_concurrent >= 1, f"bad value {self.max_concurrent!r}: expected >= 1 (leave it out for no "
                    f"limit)", join_path(path, "max_concurrent"))


STUDY_KEYS = tuple(f.name for f in dataclasses.fields(StudySettings))
