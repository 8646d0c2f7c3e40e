"""Runs a study on Ray Tune: the stages of ``icd_tune.platform.stages``, one after the other."""

from __future__ import annotations

from typing import Callable

from .cli import console
from .preflight import StudyRunError
from .raytune.searcher import make_searcher
from .stages.plan import RunOptions, planned_trial_epochs, resolve_plan
from .stages.cache_plan import cache_decision
from .stages.prepare import prepare
from .stages.publish import publish_students
from .stages.record import record_and_report
from .stages.track import open_parent_run
from .raytune.space import search_domains
from .stages.sync import sync_tracking, tracking_incomplete
from .stages.tune import tune_trials
from .tracking.outage import client_limits
from .study.definition import Study
from .raytune.trainable import icd_trainable


def run_study(study: Study, opts: RunOptions, log: Callable[[str], None] = console.say) -> dict:
    """Runs every trial of ``study``, logs them to MLflow and writes the report; returns what was recorded.

    The returned dict holds run_folder, trials, history, tracking_uri,
    experiment_id, parent_run_id, wall_seconds and report (the report's text).
    Unless ``opts.verbose``, Ray's, MLflow's and Optuna's own output goes to the run
    folder's log file instead of the terminal (``console``).
    """
    if study.compare is not None:  # its phases are studies of their own, each run as below
        from .stages.compare import run_comparison

        with client_limits(study.settings.tracking), console.quiet(not opts.verbose):  # one log for all phases
            return run_comparison(study, opts, run_study, log)
    plan = resolve_plan(study, opts)
    with client_limits(study.settings.tracking), console.quiet(not opts.verbose):
        # A run whose records did not all reach MLflow: filled from its folder first (a finished one: only that).
        if opts.within is None and (opts.sync_tracking or (opts.resume and tracking_incomplete(plan.state))):
            synced = sync_tracking(plan, log)
            if opts.sync_tracking or plan.state.get("status") == "finished":
                return synced
        prepared = prepare(plan, log)
        parent = open_parent_run(plan, prepared)
        outcome = tune_trials(plan, prepared, parent, log)
        result = record_and_report(plan, parent, outcome, log)
        published = publish_students(plan, prepared, parent, outcome, result.trials, log)
        return result.to_dict() | published.to_dict()


__all__ = ["RunOptions", "run_study", "icd_trainable", "StudyRunError", "cache_decision", "planned_trial_epochs",
           "make_searcher", "search_domains"]
