"""``--sync-tracking``: MLflow filled from a run folder whose records did not all reach the tracking server.

The record stage leaves ``trials.parquet`` and ``history.parquet`` (every reported epoch of every
trial) and, in the state file, what the parent run still needs. This puts on the tracking store
what is missing, and nothing twice: the parent run is the one the state names (made again only
when the store lost it); each trial's child run is found by its ``icd_tune.trial_id`` tag (made
when missing, with its params); each child gets the epochs after the last one it holds (its
``train/loss`` history), as the trial callback does on ``--resume``; runs the trials' callback
already closed keep their end; the parent gets its importance metrics and summary once. No Ray:
the metrics are those the run folder keeps, the trainer's per epoch (a run made here lacks the
``system/...`` samples and the data-set input, which only the live run had). A finished trial's
student is logged from its latest checkpoint where the experiment storage is a local folder.
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import Callable

from ..metrics import EPOCH, IMPORTANCE_PREFIX, is_trainer_metric
from ..preflight import check_tracking_store
from ..report.importance import IMPORTANCE_FILE
from ..tracking.runs import END_TAG, PARENT_TAG, TRIAL_TAG
from .plan import StudyPlan
from .run_files import TRACKING_KEY
from .track import ParentRun, close_with_summary, mark_parent_interrupted, open_parent

BATCH = 900  # metrics per log_batch (MLflow takes at most 1000)


def tracking_incomplete(state: dict) -> bool:
    return not state.get(TRACKING_KEY, {}).get("complete", True)


def sync_tracking(plan: StudyPlan, log: Callable[[str], None]) -> dict:
    """Fills the tracking store from ``plan.run_folder``; returns what the record stage returned (``StudyResult``)."""
    from .record import StudyResult, log_importance, log_links

    state = plan.state
    record = state.get(TRACKING_KEY)
    trials_file = plan.run_folder / "trials.parquet"
    if record is None or not trials_file.is_file():
        from ..preflight import StudyRunError

        raise StudyRunError(f"--sync-tracking: {plan.run_folder} holds no finished records to sync (the run's record "
                            f"stage never ran); continue it with --resume")
    check_tracking_store(plan.tracking_uri)
    trials, history = read_records(plan.run_folder)
    parent = open_parent(plan, state.get("teacher_info", {}))
    cut_short = record.get("stop_kind") is not None
    made, filled = sync_children(plan, parent, trials, history)
    paths = {name: plan.run_folder / name for name in record.get("files", []) if (plan.run_folder / name).is_file()}
    run = parent.tracker.client.get_run(parent.run_id)
    if not any(k.startswith(IMPORTANCE_PREFIX) for k in run.data.metrics) and IMPORTANCE_FILE in paths:
        log_importance(parent, paths)
    summarised = run.data.tags.get(END_TAG) not in (None, "interrupted")  # close_with_summary reached it
    if cut_short:
        mark_parent_interrupted(parent)
    elif summarised:
        parent.tracker.end(parent.run_id, "FINISHED")
    else:
        close_with_summary(parent, paths.values(), trials, plan.settings.metric, plan.settings.metric_mode,
                           record.get("wall_seconds", 0.0), selects=plan.trial0.protocol != "paper")
    log_links(plan, parent, log)
    record["complete"] = True
    plan.save_state()
    log(f"tracking synced from {plan.run_folder}: {len(trials)} trial run(s), {made} made, {filled} epoch(s) logged")
    report = plan.run_folder / "report.txt"
    return StudyResult(run_folder=plan.run_folder, trials=trials, history=history, tracking_uri=plan.tracking_uri,
                       experiment_id=parent.experiment_id, parent_run_id=parent.run_id,
                       wall_seconds=record.get("wall_seconds", 0.0),
                       report=report.read_text() if report.is_file() else "", stop_kind=record.get("stop_kind"),
                       stop_reason=record.get("stop_reason"),
                       resume_command=plan.resume_command() if cut_short else None).to_dict()


def read_records(run_folder: Path) -> tuple[list[dict], list[dict]]:
    """The record stage's trial records and history rows, back from its Parquet files."""
    import pyarrow.parquet as pq

    trials = []
    for row in pq.read_table(run_folder / "trials.parquet").to_pylist():
        trial = {k: v for k, v in row.items() if "." not in k}
        for prefix, field in (("level.", "levels"), ("param.", "params"), ("final.", "final")):
            trial[field] = {k[len(prefix):]: v for k, v in row.items() if k.startswith(prefix) and v is not None}
        trials.append(trial)
    history = [{k: v for k, v in row.items() if v is not None and v == v}
               for row in pq.read_table(run_folder / "history.parquet").to_pylist()]
    return trials, history


def sync_children(plan: StudyPlan, parent: ParentRun, trials: list[dict], history: list[dict]) -> tuple[int, int]:
    """Each trial's child run found (or made) and given the epochs it lacks; (runs made, epochs logged)."""
    tracker, client = parent.tracker, parent.tracker.client
    children = tracker.children_by_trial()
    made = filled = 0
    for trial in trials:
        tid = trial["trial_id"]
        run_id = children.get(tid)
        if run_id is None:
            run_id = client.create_run(parent.experiment_id, run_name=trial["name"], tags={
                **parent.tags, PARENT_TAG: parent.run_id, TRIAL_TAG: tid, END_TAG: "running"}).info.run_id
            tracker.log_params(run_id, trial["params"])
            made += 1
        last = tracker.last_logged_epoch(run_id)
        rows = sorted((r for r in history if r.get("trial_id") == tid and r.get(EPOCH, 0) > last),
                      key=lambda r: r[EPOCH])
        log_epochs(client, run_id, rows)
        filled += len(rows)
        run = client.get_run(run_id)
        if run.info.status == "RUNNING" or run.data.tags.get(END_TAG) == "running":
            close_child(plan, client, run_id, trial)
    return made, filled


def log_epochs(client, run_id: str, rows: list[dict]) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = []
    for row in rows:
        epoch = int(row[EPOCH])
        metrics += [Metric(k, float(v), now, epoch) for k, v in row.items()
                    if is_trainer_metric(k) and isinstance(v, (int, float)) and math.isfinite(v)]
        metrics.append(Metric(EPOCH, float(epoch), now, epoch))
    for start in range(0, len(metrics), BATCH):
        client.log_batch(run_id, metrics=metrics[start:start + BATCH])


def close_child(plan: StudyPlan, client, run_id: str, trial: dict) -> None:
    """Ends a child run the way the trials' callback would have: FINISHED, FAILED or (unfinished) KILLED."""
    status = trial["status"]
    if status == "failed":
        reason, run_status = f"failed: {trial.get('error') or 'error'}"[:5000], "FAILED"
    elif status == "unfinished":
        reason, run_status = "interrupted", "KILLED"
    elif status == "stopped":
        reason, run_status = f"stopped early at epoch {trial['epochs']}", "FINISHED"
    else:
        reason, run_status = "completed", "FINISHED"
    if run_status == "FINISHED" and plan.settings.log_students:
        log_latest_student(plan, client, run_id, trial)
    client.set_tag(run_id, END_TAG, reason)
    client.set_terminated(run_id, status=run_status)


class FolderCheckpoint:
    """A trial's checkpoint folder, as ``students.log_student`` reads a Ray checkpoint (no Ray needed)."""

    def __init__(self, path: Path):
        self.path = path

    @contextlib.contextmanager
    def as_directory(self):
        yield str(self.path)


def log_latest_student(plan: StudyPlan, client, run_id: str, trial: dict) -> None:
    from ..raytune.trainable import CHECKPOINT_FILE
    from ..tracking.students import log_student

    if "://" in plan.storage_path:
        return
    found = sorted(p for e in plan.experiments() for p in Path(plan.path_of(e.name), trial["trial_id"]).glob(
        "checkpoint_*") if (p / CHECKPOINT_FILE).is_file())
    if found:
        log_student(client, run_id, FolderCheckpoint(found[-1]), CHECKPOINT_FILE, str(trial["params"].get("student")))
