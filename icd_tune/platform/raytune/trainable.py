"""The Tune trainable: one trial in a Ray worker, reported and checkpointed epoch by epoch."""

from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ..metrics import DIVERGED, EPOCH, ERROR, NODE_ID
from .system_metrics import SystemSampler
from ..study.trials import check_checkpoint_config, point_of, trial_config

CHECKPOINT_FILE = "trainer.pt"


@dataclass
class TrialRunSettings:
    """What every trial of one study run shares beyond its config; saved as study_resolved.json."""

    metric: str
    seeds: list[int]
    cpus_per_trial: float
    checkpoint_every: int
    gpus_per_trial: float = 0.0
    system_metrics: bool = True  # each epoch's system/... samples of the trial's process and device
    # Folders the driver found the trials' methods under (methods named by import path), put on
    # each worker's sys.path so that it imports the same module.
    import_paths: list[str] = field(default_factory=list)


@dataclass
class OutputCacheSpec:
    """Where trials find (or, one per node, build) the teacher-output cache."""

    folder: str
    dtype: str  # the study's one teacher's cache dtype
    # Of several teachers, those whose cache is on (method.teachers.teacher_identity -> each one's
    # cache dtype); None: the study's one teacher.
    teachers: dict[str, str] | None = None


def icd_trainable(config: dict, data=None, teacher=None, base=None, run_settings: TrialRunSettings | None = None,
                  output_cache: OutputCacheSpec | None = None, teachers: dict | None = None):
    import torch
    from ray import tune

    from ...method.train import Trainer

    for folder in run_settings.import_paths:
        if folder not in sys.path:
            sys.path.insert(0, folder)
    point = point_of(config, run_settings.seeds[0])
    cfg = trial_config(base, point.overrides, point.seed)
    teacher = own_teacher(cfg, teacher, teachers)
    torch.set_num_threads(max(1, int(run_settings.cpus_per_trial)))
    outputs = cached_teacher_outputs(cfg, data, teacher, output_cache, run_settings.gpus_per_trial)
    trainer = Trainer(cfg, data, teacher, teacher_outputs=outputs)
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = torch.load(Path(folder) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
        # Continuing another config's weights would record a trial that never ran as configured.
        check_checkpoint_config(state.get("config"), cfg, point.name)
        trainer.load_state_dict(state)
    report_epochs(trainer, run_settings)


def own_teacher(cfg, teacher, teachers: dict | None):
    """This trial's teacher among a study's several (by identity), else the study's one."""
    if not teachers or not cfg.uses_teacher:
        return teacher
    from ...method.teachers import teacher_identity

    return teachers[teacher_identity(cfg.teacher)]


def cached_teacher_outputs(cfg, data, teacher, output_cache: OutputCacheSpec | None, gpus_per_trial: float = 1.0):
    """The teacher's outputs read from this node's cache, or None for the live teacher."""
    if output_cache is None or not cfg.uses_teacher:
        return None
    dtype = output_cache.dtype
    if output_cache.teachers is not None:
        from ...method.teachers import teacher_identity

        identity = teacher_identity(cfg.teacher)
        if identity not in output_cache.teachers:
            return None  # this teacher's cache is off (too large for the budget, say)
        dtype = output_cache.teachers[identity]
    from ...method.device import resolve_device
    from ...method.output_cache import get_or_build_cache
    from ...method.teacher_outputs import CachedTeacher

    # Opens this node's copy, or builds it (one trial per node builds; the others wait on its lock).
    cache = get_or_build_cache(teacher, data, output_cache.folder, dtype=dtype,
                               device=resolve_device(cfg.device), log=print, progress=False)
    # A device copy of the cache may take a quarter of this trial's share of the GPU's memory:
    # trials packed on one GPU each hold their own copy.
    return CachedTeacher(cache, gpu_share=0.25 * min(1.0, gpus_per_trial or 1.0))


def report_epochs(trainer, run_settings: TrialRunSettings) -> None:
    import ray
    from ray import tune

    from ...method.train import DivergenceError

    node_id = ray.get_runtime_context().get_node_id()
    metric = run_settings.metric
    every = int(run_settings.checkpoint_every)
    sampler = SystemSampler(trainer.device) if run_settings.system_metrics else None
    try:
        for metrics in trainer.epochs():
            # A metric that drives ASHA or a search is in every epoch's result: the study refuses
            # eval_every > 1 for it (study_checks.check_cadence), so nothing is carried forward here.
            metrics[NODE_ID] = node_id
            if trainer.epoch == trainer.cfg.optim.epochs and trainer.cfg.transfer is not None:
                # The probe's accuracies join the last epoch's result, so Tune, MLflow and the report see them.
                from ...method.transfer import run_transfer

                metrics.update(run_transfer(trainer, log=print))
            if sampler is not None:
                metrics.update(sampler.sample())
            if trainer.epoch % every == 0 or trainer.epoch == trainer.cfg.optim.epochs:
                with tempfile.TemporaryDirectory() as folder:
                    trainer.save(Path(folder) / CHECKPOINT_FILE)
                    tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))
            else:
                tune.report(metrics)
    except DivergenceError as err:
        # Divergence is deterministic: report it as this trial's end instead of raising, which
        # would make Ray retry the same computation.
        final = {EPOCH: err.epoch, DIVERGED: 1.0, ERROR: str(err)}
        # Tune insists on the metric in every result. NaN, never the last good value: ASHA would
        # rank a diverged trial at its rung by a value its run did not keep (ASHA's cutoffs skip
        # NaN), and the searcher values a divergence itself (searcher.tell_diverged).
        final[metric] = float("nan")
        tune.report(final)
