"""Stage 4: the trials on Ray Tune: the trainable, a grid or the Optuna searcher, ASHA, the callbacks.

A fresh run builds a Tuner; --resume restores the interrupted one from its
experiment folder, and runs trials it adds as one more experiment beside it.
Returns the trials' results and the wall time they took.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ray import tune

from ..tracking.lineage import trial_lineage
from ..metrics import EPOCH
from ..raytune.progress import ProgressCallback
from ..raytune.ray_internals import set_restored_callbacks, snapshot_on_trial_changes
from ..raytune.resources import DEFAULT_PENDING_TIMEOUT_S
from ..raytune.searcher import make_searcher
from ..raytune.space import search_domains
from ..tracking.runs import MLflowTrialCallback
from ..raytune.trainable import icd_trainable
from ..raytune.watchdog import StudyWatch, budget_deadline, format_duration, graceful_sigterm
from .plan import FIRST_EXPERIMENT, Experiment, StudyPlan
from .prepare import Prepared
from .track import ParentRun, close_interrupted


@dataclass
class TuneOutcome:
    result_grid: list  # ray.tune.Result of every trial, over the run's experiments
    wall_seconds: float
    # Why the run ended before every trial did (watchdog.TIME_BUDGET, PENDING, SIGINT, SIGTERM); None: it ran out.
    stop_kind: str | None = None
    stop_reason: str | None = None
    unfinished: set[str] = field(default_factory=set)  # trial ids the early end left to --resume
    lineage: Any = None  # tracking.lineage.TrialLineage: what the trials' runs were trained from


@dataclass
class TrialSpace:
    """What Tune samples: a grid of planned points, or the searcher's draws from the search space."""

    param_space: dict
    searcher: Any  # searcher.StudyOptunaSearch, or None for a grid
    num_samples: int


def tune_trials(plan: StudyPlan, prepared: Prepared, parent: ParentRun, log: Callable[[str], None]) -> TuneOutcome:
    """Runs the plan's experiments in turn (one, unless --resume added trials) and gathers their results."""
    describe = plan.describer()
    parent.tracker.link.log = log
    lineage = trial_lineage(plan, prepared)
    trial_logger = MLflowTrialCallback(parent.tracker, describe, plan.max_epochs, parent.tags,
                                       log_students=plan.settings.log_students, lineage=lineage,
                                       trial_tags=parent.trial_tags)
    watch = study_watch(plan, prepared)
    snapshot_when_trials_join()
    trainable = tune.with_resources(
        tune.with_parameters(icd_trainable, data=prepared.data, teacher=prepared.teacher, base=plan.base,
                             run_settings=plan.run_settings(), output_cache=prepared.output_cache,
                             teachers=prepared.teachers if len(prepared.teachers) > 1 else None),
        {"cpu": plan.cpus, "gpu": plan.gpus})
    results: list = []
    started = time.time()
    for experiment in plan.experiments():
        if watch.stopped:
            break  # what is left stays planned for --resume
        progress = ProgressCallback(experiment.trials, plan.max_epochs, plan.settings.metric,
                                    plan.settings.metric_mode, describe=describe)
        callbacks = [trial_logger, progress, watch, *plan.opts.extra_callbacks]
        try:
            results += list(run_experiment(plan, experiment, trainable, callbacks, watch, log))
        except KeyboardInterrupt:
            mark_interrupted(plan, parent, trial_logger)
            log(f"interrupted; continue with: {plan.resume_command()}")
            raise
    outcome = TuneOutcome(results, time.time() - started, lineage=lineage)
    if watch.stopped and (watch.unfinished or len(results) < plan.run_trials):
        outcome.stop_kind, outcome.stop_reason, outcome.unfinished = watch.kind, watch.reason, set(watch.unfinished)
        mark_interrupted(plan, parent, trial_logger)
    parent.tracker.link.settle()  # the records waiting for a server that went away, up to the wait's bound
    return outcome


def run_experiment(plan: StudyPlan, experiment: Experiment, trainable, callbacks: list, watch: StudyWatch,
                   log: Callable[[str], None]):
    """One Tune experiment: restored where an earlier invocation started it, else built fresh; its ResultGrid."""
    space = trial_space(plan, experiment)
    path = plan.path_of(experiment.name)
    if plan.opts.resume and tune.Tuner.can_restore(path):
        log(f"resuming {path}")
        tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True,
                                   param_space=space.param_space)
        set_restored_callbacks(tuner, callbacks)
    else:
        if experiment.name != FIRST_EXPERIMENT:
            log(f"running the {experiment.trials} added trial(s) as {path}")
        run_config = tune.RunConfig(
            name=experiment.name, storage_path=plan.storage_path, verbose=1 if plan.opts.verbose else 0,
            callbacks=callbacks, failure_config=tune.FailureConfig(max_failures=plan.settings.max_retries),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            stop={EPOCH: plan.max_epochs} if plan.max_epochs < plan.trial0.optim.epochs else None)
        tune_config = tune.TuneConfig(
            search_alg=space.searcher, scheduler=asha_scheduler(plan), num_samples=space.num_samples,
            max_concurrent_trials=plan.opts.max_concurrent or plan.settings.max_concurrent,
            trial_dirname_creator=lambda t: t.trial_id, reuse_actors=True)
        tuner = tune.Tuner(trainable, param_space=space.param_space, tune_config=tune_config, run_config=run_config)
    with graceful_sigterm(watch):
        return tuner.fit()


def study_watch(plan: StudyPlan, prepared: Prepared) -> StudyWatch:
    opts = plan.opts
    pending = opts.pending_timeout_s
    if pending is None and prepared.growth.can_grow:
        pending = DEFAULT_PENDING_TIMEOUT_S  # a cluster that may grow may also never do so
    return StudyWatch(deadline=budget_deadline(opts.started, opts.time_budget_s),
                      budget_text=format_duration(opts.time_budget_s or 0), pending_timeout_s=pending,
                      trial_cpus=plan.cpus, trial_gpus=plan.gpus)


def mark_interrupted(plan: StudyPlan, parent: ParentRun, trial_logger: MLflowTrialCallback) -> None:
    close_interrupted(parent, trial_logger)
    plan.state["status"] = "interrupted"
    plan.save_state()


def snapshot_when_trials_join() -> None:
    # num_to_keep forces experiment snapshots; on small, fast trials Ray warns about it at every epoch.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Snapshot the experiment state whenever a trial joins, so a trial is in it before its first
    # result: a driver killed in between would otherwise leave a trained trial that --resume does
    # not know (and re-samples), with a stray run in MLflow and Optuna. Between joins, Tune's own
    # clock ("auto": at most about 5% of the time) and its num_to_keep rule take the snapshots;
    # one at every step of the loop made the cost per trial grow with the trial count.
    snapshot_on_trial_changes()


def asha_scheduler(plan: StudyPlan):
    """ASHA on the epoch count when the study enables it (never for a smoke run); None runs every trial out."""
    settings = plan.settings
    if not settings.asha.enabled or plan.opts.smoke:
        return None
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(time_attr=EPOCH, metric=settings.metric, mode=settings.metric_mode,
                         max_t=plan.max_epochs, grace_period=min(settings.asha.grace_period, plan.max_epochs),
                         reduction_factor=settings.asha.reduction_factor)


def trial_space(plan: StudyPlan, experiment: Experiment) -> TrialSpace:
    settings = plan.settings
    if plan.searching:
        # Every experiment of a run shares one Optuna study: added draws learn from the earlier trials.
        searcher = make_searcher(plan.study, plan.optuna_storage_url, plan.max_epochs, plan.warm_start)
        return TrialSpace({"seed": settings.seeds[0], "params": search_domains(plan.study)}, searcher,
                          experiment.samples)
    return TrialSpace({"point": tune.grid_search([p.to_config() for p in experiment.points])}, None, 1)
