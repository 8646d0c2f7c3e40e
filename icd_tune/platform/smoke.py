"""A smoke run of any study on the machine at hand: one short trial (one per method in a study of
several methods), whatever the study asks for.

It checks the pipeline, not the accuracy: on a machine without the study's GPU it
runs on the CPUs there are; where the dataset or the teacher checkpoint is
missing it stands in synthetic data of the same shape and a briefly trained
teacher. Each substitution is listed in ``SmokeSetup.notes`` for the log.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..method.data import missing_data, num_classes, train_size
from .study.settings import StudySettings
from .study.trials import TrialPoint, trial_config

MIN_SMOKE_IMAGES = 256
SMOKE_TEST_IMAGES = 128


@dataclass
class SmokeSetup:
    base: dict
    points: list[TrialPoint]  # the first planned trial of each method the study runs
    cpus: float
    gpus: float
    notes: list[str] = field(default_factory=list)

    @property
    def point(self) -> TrialPoint:
        return self.points[0]


def smoke_points(study) -> list[TrialPoint]:
    """The first planned trial of each method a grid runs; a search's first point."""
    if study.settings.mode != "grid":
        return [study.first_point()]
    first: dict[str, TrialPoint] = {}
    for point in study.grid_points():
        first.setdefault(study.trial_config(point.overrides, point.seed).method, point)
    return list(first.values())


def local_cpus() -> int:
    """CPUs this process may use: its affinity, capped by a cgroup v2 quota (containers)."""
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:
        count = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            count = min(count, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return count


def local_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def capped_base(base: dict, settings: StudySettings) -> dict:
    """Trial defaults capped for a smoke run: few epochs and steps, for the trial and for the teacher."""
    smoke = settings.smoke
    teacher_optim = {**base["teacher"]["optim"], "epochs": smoke.teacher_epochs}
    teacher = {**base["teacher"], "optim": teacher_optim, "max_steps_per_epoch": smoke.teacher_steps}
    capped = {**base, "optim": {**base["optim"], "epochs": smoke.epochs}, "max_steps_per_epoch": smoke.max_steps,
              "teacher": teacher}
    if base.get("transfer"):
        capped["transfer"] = {**base["transfer"], "epochs": smoke.epochs, "max_steps_per_epoch": smoke.max_steps}
    return capped


def smoke_setup(base: dict, settings: StudySettings, points: list[TrialPoint], cpus: float, gpus: float,
                local: bool) -> SmokeSetup:
    """The smoke run's trial defaults, points and resources; ``local``: on the Ray instance the CLI starts."""
    setup = SmokeSetup(capped_base(copy.deepcopy(base), settings), list(points), cpus, gpus)
    if local:
        fit_local_machine(setup)
    substitute_data(setup, settings)
    substitute_teacher(setup)
    substitute_transfer(setup)
    fit_method_to_data(setup)
    return setup


def fit_local_machine(setup: SmokeSetup) -> None:
    cpus, gpus = local_cpus(), local_gpus()
    if setup.cpus > cpus:
        setup.notes.append(f"smoke: {setup.cpus:g} CPUs per trial asked, this machine has {cpus}: using {cpus}")
        setup.cpus = float(cpus)
    if setup.gpus and not gpus:
        setup.notes.append(f"smoke: {setup.gpus:g} GPU per trial asked, this machine has none: running on the CPU")
        setup.gpus = 0.0
    if setup.base.get("device") in ("auto", "cuda") and not setup.gpus:
        setup.base["device"] = "cpu"


def substitute_data(setup: SmokeSetup, settings: StudySettings) -> None:
    cfg = trial_config(setup.base, setup.point.overrides, setup.point.seed)
    why = missing_data(cfg.data)
    if why is None:
        return
    # Enough images for every capped step of both batches, so the smoke runs what the study would run.
    needed = max(MIN_SMOKE_IMAGES, cfg.optim.batch_size * settings.smoke.max_steps, cfg.teacher.optim.batch_size)
    total = math.ceil(needed / (1.0 - cfg.data.val_fraction)) + 1
    classes = num_classes(cfg.data)
    setup.base["data"] = {**setup.base["data"], "name": "synthetic", "num_classes": classes, "num_train": total,
                          "num_test": SMOKE_TEST_IMAGES, "download": False}
    setup.notes.append(f"smoke: {why} (and a smoke run downloads nothing): using {total} synthetic 32x32 images of "
                       f"{classes} classes instead; the run checks the pipeline, not the accuracy")


def substitute_teacher(setup: SmokeSetup) -> None:
    # Each smoke trial's own checkpoint: a template names one per teacher.arch.
    checkpoints = [trial_config(setup.base, p.overrides, p.seed).teacher.checkpoint for p in setup.points]
    missing = next((c for c in checkpoints if c and not Path(c).expanduser().is_file()), None)
    if missing:
        setup.base["teacher"] = {**setup.base["teacher"], "checkpoint": None}
        epochs = setup.base["teacher"]["optim"]["epochs"]
        setup.notes.append(f"smoke: teacher checkpoint {missing} does not exist: training a stand-in teacher "
                           f"briefly instead ({epochs} epoch(s) of at most {setup.base['teacher']['max_steps_per_epoch']} "
                           f"steps)")


def fit_method_to_data(setup: SmokeSetup) -> None:
    """The methods' own settings that ask for more than the smoke data holds (memory negatives, queues), fitted."""
    from ..method.distillers import get_method
    from ..method.schema import flatten

    for i, point in enumerate(setup.points):
        cfg = trial_config(setup.base, point.overrides, point.seed)
        fitted = get_method(cfg.method).fit_to_sizes(cfg.loss, train_size(cfg.data), cfg.optim.batch_size)
        if not fitted:
            continue
        current = flatten(cfg.to_dict())
        setup.points[i] = TrialPoint(point.name, point.levels, point.seed, {**point.overrides, **fitted})
        for key, value in fitted.items():
            setup.notes.append(f"smoke: {key.removeprefix('loss.')} {current.get(key)} is more than the smoke data "
                               f"allows: using {value}" + (f" ({cfg.method})" if len(setup.points) > 1 else ""))


def substitute_transfer(setup: SmokeSetup) -> None:
    """Transfer targets not on this machine become ``synthetic`` (a smoke run downloads nothing)."""
    from ..method.transfer_data import missing_target

    cfg = trial_config(setup.base, setup.point.overrides, setup.point.seed)
    if cfg.transfer is None:
        return
    offline = dataclasses.replace(cfg.transfer, download=False)
    missing = [name for name in cfg.transfer.datasets if missing_target(name, offline, cfg.data)]
    if not missing:
        return
    kept = [name for name in cfg.transfer.datasets if name not in missing]
    setup.base["transfer"] = {**setup.base["transfer"], "datasets": kept + ([] if "synthetic" in kept else ["synthetic"])}
    setup.notes.append(f"smoke: transfer target(s) {', '.join(missing)} not on this machine (and a smoke run "
                       f"downloads nothing): probing synthetic data instead")
