"""Stage 3: the study's MLflow parent run, opened (or reopened on --resume) before any trial starts.

Each trial's child run hangs under it (``tracking.MLflowTrialCallback``); the
record stage closes it with the study's summary, an interruption with KILLED.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional

from ...method.schema import flatten, to_dict
from ..cli import console
from ..metrics import BEST_PREFIX, STUDY_WALL_SECONDS
from ..tracking.study_record import RESUME_COMMAND_TAG, command_line, log_study_record
from ..tracking.outage import TrackingLink
from ..tracking.runs import BEST_TRIAL_TAG, END_TAG, TEACHER_TAG, StudyTracker, common_tags
from .plan import ADDITIONS_KEY, StudyPlan
from .prepare import Prepared

# On a parent run that --resume grew: the trials each resume added (JSON), since its params keep the first values.
ADDITIONS_TAG = "icd_tune.additions"


@dataclass
class ParentRun:
    tracker: StudyTracker
    run_id: str
    tags: dict[str, str]  # versions and git commit, on the parent and every child run
    # A comparison's phase: more tags for each trial's run, from its config (the method it runs).
    trial_tags: Optional[Callable[[dict], dict[str, str]]] = None

    @property
    def experiment_id(self) -> str:
        return self.tracker.experiment_id


def open_parent_run(plan: StudyPlan, prepared: Prepared) -> ParentRun:
    if plan.opts.within is not None:
        return join_parent_run(plan)
    return open_parent(plan, prepared.teacher_info)


def join_parent_run(plan: StudyPlan) -> ParentRun:
    """A comparison's phase: its trial runs hang under the comparison's parent run, tagged with the phase."""
    within = plan.opts.within
    tracker = StudyTracker(plan.tracking_uri, plan.experiment_name, str(plan.run_folder), link=tracking_link(plan))
    tracker.parent_run_id = within.parent_run_id
    tags = {**common_tags(), **protocol_tags(plan.trial0.protocol, plan.settings.report_metric), **within.tags}
    plan.state["parent_run_id"] = within.parent_run_id
    plan.state["experiment_id"] = tracker.experiment_id
    plan.save_state()
    return ParentRun(tracker, within.parent_run_id, tags, within.trial_tags)


def tracking_link(plan: StudyPlan, log=console.say) -> TrackingLink:
    """The run's link to its tracking store, bounded by the study's ``tracking:`` keys and --tracking-wait."""
    settings = plan.settings.tracking
    wait = settings.outage_timeout if plan.opts.tracking_wait_s is None else plan.opts.tracking_wait_s
    return TrackingLink(plan.tracking_uri, wait, settings.max_queued, log)


def open_parent(plan: StudyPlan, teacher_info: dict) -> ParentRun:
    """The study's parent run: found again by the id the run's state holds, else created with the study's params."""
    tracker = StudyTracker(plan.tracking_uri, plan.experiment_name, str(plan.run_folder), link=tracking_link(plan))
    tags = {**common_tags(), **protocol_tags(plan.trial0.protocol, plan.settings.report_metric)}
    settings = to_dict(plan.settings)
    # Published numbers are keyed by level labels (wrn_40_2->wrn_16_2, ICD+KD) that MLflow refuses in a param name.
    reported = settings.pop("reported", None)
    params = {f"study.{k}": v for k, v in flatten(settings).items()}
    if reported:
        params["study.reported"] = json.dumps(reported, sort_keys=True)
    params.update({f"defaults.{k}": v for k, v in flatten(plan.base).items()})
    previous = plan.state.get("parent_run_id")
    run_id = tracker.start_parent(plan.parent_run_name, params, {**tags, TEACHER_TAG: json.dumps(teacher_info)},
                                  previous)
    if run_id != previous:  # a new parent run; a resumed one has these from its first invocation
        log_study_record(tracker.client, run_id, plan.study, plan.opts.command, tracker.log_params)
    else:
        tracker.client.set_tag(run_id, RESUME_COMMAND_TAG, command_line(plan.study, plan.opts.command)[:5000])
    if plan.state.get(ADDITIONS_KEY):
        tracker.client.set_tag(run_id, ADDITIONS_TAG, json.dumps(plan.state[ADDITIONS_KEY]))
    plan.state["parent_run_id"] = run_id
    plan.state["experiment_id"] = tracker.experiment_id
    plan.state["teacher_info"] = teacher_info  # for a parent run --sync-tracking has to make again
    plan.save_state()
    return ParentRun(tracker, run_id, tags)


# On the parent and every child run: which protocol produced the numbers, and what was selected on what.
PROTOCOL_TAG = "icd_tune.protocol"
SELECTION_TAG = "icd_tune.selection"


def protocol_tags(protocol: str, report_metric: str) -> dict[str, str]:
    if protocol == "paper":
        selection = (f"{report_metric} is selected on the test set (best test accuracy over epochs, as published); "
                     f"no validation split, nothing selected by the study")
    else:
        selection = f"selected on validation; {report_metric} is reported, never selected on"
    return {PROTOCOL_TAG: protocol, SELECTION_TAG: selection}


def close_interrupted(parent: ParentRun, trial_logger) -> None:
    """Marks the running child runs and the parent run as interrupted (KILLED); --resume reopens them."""
    trial_logger.mark_interrupted()
    parent.tracker.link.send(lambda: mark_parent_interrupted(parent))


def mark_parent_interrupted(parent: ParentRun) -> None:
    parent.tracker.client.set_tag(parent.run_id, END_TAG, "interrupted")
    parent.tracker.end(parent.run_id, "KILLED")


def close_with_summary(parent: ParentRun, artifacts: Iterable[Path], trials: list[dict], metric: str, mode: str,
                       wall_seconds: float, selects: bool = True) -> None:
    """Attaches the report files, the best trial's final metrics (``selects``: not under protocol paper, where
    the metric is measured on test) and the study's wall time; ends FINISHED."""
    client = parent.tracker.client
    for path in artifacts:
        client.log_artifact(parent.run_id, str(path))
    if selects:
        log_best_trial(parent, trials, metric, mode)
    client.log_metric(parent.run_id, STUDY_WALL_SECONDS, wall_seconds)
    failed = sum(t["status"] == "failed" for t in trials)
    client.set_tag(parent.run_id, END_TAG, f"{len(trials)} trials, {failed} failed")
    parent.tracker.end(parent.run_id, "FINISHED")


def log_best_trial(parent: ParentRun, trials: list[dict], metric: str, mode: str) -> None:
    ok = [t for t in trials if t["status"] != "failed" and metric in t["final"]]
    if not ok:
        return
    best = (max if mode == "max" else min)(ok, key=lambda t: t["final"][metric])
    for key, value in best["final"].items():
        if isinstance(value, (int, float)) and math.isfinite(value):
            parent.tracker.client.log_metric(parent.run_id, f"{BEST_PREFIX}{key}", float(value))
    parent.tracker.client.set_tag(parent.run_id, BEST_TRIAL_TAG, best["name"])
