"""MLflow logging from the driver: one parent run per study invocation, one child per trial.

Logged through ``MlflowClient`` from a Tune callback, so worker nodes never
touch the tracking store. Runs are found again by tag on ``--resume``, so a
resumed study continues its runs instead of duplicating them.
"""

from __future__ import annotations

import contextlib

import math
import os
import re
import time
from pathlib import Path
from typing import Any, Callable

from ray import tune

from ...method.files import build_lock

from ..metrics import DIVERGED, EPOCH, ERROR, NODE_ID, TRAIN_LOSS, epochs_done, is_logged_metric, result_step
from ..raytune.ray_internals import snapshots_taken
from ..versions import git_commit, package_versions
from .outage import TrackingLink

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
PARENT_TAG = "mlflow.parentRunId"
TRIAL_TAG = "icd_tune.trial_id"
STUDY_RUN_TAG = "icd_tune.study_run"  # the results folder of one invocation
END_TAG = "icd_tune.end"  # how a run ended: completed, stopped early, failed, interrupted
TEACHER_TAG = "icd_tune.teacher"
BEST_TRIAL_TAG = "icd_tune.best_trial"
ORPHANED_RUN = "interrupted: its driver was killed before Ray recorded the trial, and no resumed trial continued it"
SECRET_PATTERN = re.compile(r"(token|secret|password|passwd|api[_-]?key|access[_-]?key|credential)", re.I)


def redact(params: dict[str, Any]) -> dict[str, Any]:
    """Drops any value whose key looks like a credential; those come from the environment only."""
    return {k: v for k, v in params.items() if not SECRET_PATTERN.search(k)}


def common_tags() -> dict[str, str]:
    tags = {f"version.{k}": v for k, v in package_versions().items()}
    commit = git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


def ui_runs_url(tracking_uri: str, experiment_id: str) -> str:
    base = tracking_uri if tracking_uri.startswith("http") else "http://127.0.0.1:5000"
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs"


def ui_command(tracking_uri: str) -> str:
    if tracking_uri.startswith("http"):
        return f"open {tracking_uri}"
    return f"mlflow ui --host 127.0.0.1 --port 5000 --backend-store-uri {tracking_uri}"


def numeric_metrics(result: dict) -> dict[str, float]:
    out = {}
    for key, value in result.items():
        if is_logged_metric(key) and isinstance(value, (int, float)) and not isinstance(value, bool):
            if math.isfinite(value):
                out[key] = float(value)
    return out


def default_artifact_root(tracking_uri: str) -> str | None:
    """Where a new experiment keeps its artifacts: beside a sqlite store; a server's own default otherwise.

    MLflow's default for a sqlite store is ./mlruns of whatever directory the command ran
    from, which scatters artifacts away from the database that lists them.
    """
    if tracking_uri.startswith("sqlite:///"):
        database = Path(tracking_uri[len("sqlite:///"):])
        return (database.parent / "mlartifacts").resolve().as_uri()
    return None


@contextlib.contextmanager
def store_lock(tracking_uri: str):
    """The file lock beside a sqlite store (``mlflow.lock`` for ``mlflow.db``); nothing for a server."""
    if not tracking_uri.startswith("sqlite:///"):
        yield
        return
    db = Path(tracking_uri[len("sqlite:///"):])
    db.parent.mkdir(parents=True, exist_ok=True)
    with build_lock(db):
        yield


class StudyTracker:
    """Owns the MLflow experiment and parent run; finds or creates child runs."""

    def __init__(self, tracking_uri: str, study_name: str, run_folder: str, artifact_root: str | None = None,
                 link: TrackingLink | None = None):
        from mlflow.tracking import MlflowClient

        # Every call made while trials run goes through it: queued, in order, while the server is away.
        self.link = link or TrackingLink(tracking_uri)
        # A client bound to this URI, not mlflow.set_tracking_uri: that exports MLFLOW_TRACKING_URI
        # to every process started afterwards.
        self.tracking_uri = tracking_uri
        # Invocations started together share one sqlite store: it is created and migrated, and the
        # experiment found or made, by one of them at a time (a lock file beside it; one machine only).
        with store_lock(tracking_uri):
            self.client = MlflowClient(tracking_uri)
            experiment = self.client.get_experiment_by_name(study_name)
            if experiment is None:
                self.experiment_id = self._create_experiment(study_name, artifact_root)
            else:
                self.experiment_id = experiment.experiment_id
                if experiment.tags.get(EXPERIMENT_KIND_TAG) != "custom_model_development":
                    self.client.set_experiment_tag(self.experiment_id, EXPERIMENT_KIND_TAG, "custom_model_development")
        self.run_folder = run_folder
        self.parent_run_id: str | None = None

    def _create_experiment(self, study_name: str, artifact_root: str | None) -> str:
        """Creates the study's experiment; one that another invocation created first (on a server) is used."""
        from mlflow.exceptions import MlflowException

        try:
            return self.client.create_experiment(
                study_name, artifact_location=artifact_root or default_artifact_root(self.tracking_uri),
                tags={EXPERIMENT_KIND_TAG: "custom_model_development"})
        except MlflowException:
            experiment = self.client.get_experiment_by_name(study_name)
            if experiment is None:
                raise
            return experiment.experiment_id

    def start_parent(self, name: str, params: dict[str, Any], tags: dict[str, str], resume_id: str | None = None) -> str:
        if resume_id:
            try:
                self.client.get_run(resume_id)
                self.client.update_run(resume_id, status="RUNNING")
                self.parent_run_id = resume_id
                return resume_id
            except Exception:
                pass  # the store was replaced; start a fresh parent
        run = self.client.create_run(self.experiment_id, run_name=name, tags={**tags, STUDY_RUN_TAG: self.run_folder})
        self.parent_run_id = run.info.run_id
        self.log_params(self.parent_run_id, params)
        return self.parent_run_id

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in sorted(redact(params).items())]
        for start in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[start:start + 100])

    def children_by_trial(self) -> dict[str, str]:
        """Tune trial id -> child run id, for every child run the parent has (one search, paged)."""
        out: dict[str, str] = {}
        token = None
        while True:
            page = self.client.search_runs([self.experiment_id],
                                           filter_string=f"tags.`{PARENT_TAG}` = '{self.parent_run_id}'",
                                           max_results=1000, page_token=token)
            out.update({r.data.tags[TRIAL_TAG]: r.info.run_id for r in page if TRIAL_TAG in r.data.tags})
            token = page.token
            if not token:
                return out

    def running_children(self) -> list:
        """The parent's child runs still RUNNING: a killed driver leaves them so."""
        return self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{PARENT_TAG}` = '{self.parent_run_id}' and attributes.status = 'RUNNING'")

    def last_logged_epoch(self, run_id: str) -> int:
        history = self.client.get_metric_history(run_id, TRAIN_LOSS)
        return max((m.step for m in history), default=0)

    def end(self, run_id: str, status: str) -> None:
        self.client.set_terminated(run_id, status=status)


class MLflowTrialCallback(tune.Callback):
    """Tune callback: a named child run per trial, metrics per epoch, how it ended."""

    def __init__(self, tracker: StudyTracker, describe: Callable[[dict], tuple[str, dict[str, Any]]],
                 max_epochs: int, tags: dict[str, str], log_students: bool = True, lineage=None, trial_tags=None):
        self.tracker = tracker
        self.trial_tags = trial_tags  # trial config -> more tags for its run (a comparison's method), or None
        self.log_students = log_students
        self.lineage = lineage  # lineage.TrialLineage: data set input and teacher tags per new run
        self.ended: list = []  # (trial, snapshots taken when it ended): older checkpoints wait for a later snapshot
        self.describe = describe  # trial config -> (display name, flat resolved params)
        self.max_epochs = max_epochs
        self.tags = tags
        self.runs: dict[str, str] = {}
        self.earlier: dict[str, str] | None = None  # child runs that existed before this callback started
        self.last_epoch: dict[str, int] = {}
        self.names: dict[str, str] = {}  # trial id -> display name, of the trials this invocation opened
        self.created: set[str] = set()  # trial ids whose run this invocation created
        self.described: set[str] = set()  # of those, the ones whose params and lineage are logged

    def child_run(self, trial) -> None:
        """Sends (or queues, through an outage) the opening of the trial's child run, once per invocation."""
        if trial.trial_id in self.names:
            return
        name, params = self.describe(trial.config)
        self.names[trial.trial_id] = name
        config = trial.config
        self.tracker.link.send(lambda: self._open_run(trial.trial_id, name, params, config))

    def _open_run(self, trial_id: str, name: str, params: dict, config: dict) -> None:
        """Finds the trial's run (by its tag: one an interrupted invocation left) or creates it with its params.

        A call replayed after an outage looks the runs up again: the first try may have reached the server.
        """
        client = self.tracker.client
        run_id = self.runs.get(trial_id)
        if run_id is None:
            if self.earlier is None or self.tracker.link.replaying:  # read once, not per trial
                self.earlier = self.tracker.children_by_trial()
            run_id = self.earlier.get(trial_id)
            if run_id is None:
                extra = self.trial_tags(config) if self.trial_tags else {}
                run_id = client.create_run(self.tracker.experiment_id, run_name=name, tags={
                    **self.tags, **extra, PARENT_TAG: self.tracker.parent_run_id, TRIAL_TAG: trial_id,
                    END_TAG: "running"}).info.run_id
                self.created.add(trial_id)
                self.last_epoch[trial_id] = 0
            self.runs[trial_id] = run_id
        if trial_id in self.created:
            if trial_id not in self.described:
                self.tracker.log_params(run_id, params)
                if self.lineage is not None:
                    self.lineage.log(client, run_id, config)
                self.described.add(trial_id)
            return
        client.update_run(run_id, status="RUNNING")
        self.last_epoch[trial_id] = self.tracker.last_logged_epoch(run_id)

    def on_trial_start(self, iteration, trials, trial, **info):
        self.child_run(trial)

    def on_trial_restore(self, iteration, trials, trial, **info):
        self.child_run(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        from mlflow.entities import Metric, RunTag

        self.child_run(trial)
        epoch = result_step(result)
        # Built now, sent now or after an outage: a replayed batch repeats the same values and timestamps.
        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, epoch) for k, v in numeric_metrics(result).items()]
        metrics.append(Metric(EPOCH, float(epoch), now, epoch))
        tags = []
        if result.get("node_ip"):
            tags.append(RunTag("ray.node_ip", str(result["node_ip"])))
        if result.get("hostname"):
            tags.append(RunTag("ray.hostname", str(result["hostname"])))
        if result.get(NODE_ID):
            tags.append(RunTag("ray.node_id", str(result[NODE_ID])))
        self.tracker.link.send(lambda: self._log_epoch(trial.trial_id, epoch, metrics, tags))

    def _log_epoch(self, trial_id: str, epoch: int, metrics: list, tags: list) -> None:
        if epoch <= self.last_epoch.get(trial_id, 0):
            return  # already logged before an interruption
        self.tracker.client.log_batch(self.runs[trial_id], metrics=metrics, tags=tags)
        self.last_epoch[trial_id] = epoch

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.child_run(trial)
        reason, status, checkpoint = self._ending(trial)
        self.tracker.link.send(lambda: self._close(trial, reason, status, checkpoint))
        self.ended.append((trial, snapshots_taken()))

    def _ending(self, trial) -> tuple[str, str, Any]:
        """How a trial that ended ran: the END tag, the run status, the checkpoint whose student is logged (or None)."""
        result = trial.last_result or {}
        epoch = epochs_done(result)
        if result.get(DIVERGED):
            reason = f"failed: {result.get(ERROR, 'diverged')}"
            status = "FAILED"
        elif epoch < self.max_epochs:
            reason, status = f"stopped early at epoch {epoch}", "FINISHED"
        else:
            reason, status = "completed", "FINISHED"
        return reason, status, trial.checkpoint if status == "FINISHED" and self.log_students else None

    def _close(self, trial, reason: str, status: str, checkpoint=None, run_id: str | None = None) -> None:
        run_id = run_id or self.runs[trial.trial_id]
        if checkpoint is not None:
            self.log_student(trial, run_id, checkpoint)
        self.tracker.client.set_tag(run_id, END_TAG, reason)
        self.tracker.end(run_id, status)

    def on_step_end(self, iteration, trials, **info):
        """Prunes ended trials' checkpoints once a Tune snapshot taken after their end has recorded it."""
        from .students import prune_checkpoints

        self.tracker.link.flush()  # calls waiting through an outage of the server
        now = snapshots_taken()
        waiting = [(trial, mark) for trial, mark in self.ended if mark >= now]
        for trial, mark in self.ended:
            if mark < now:
                prune_checkpoints(trial.checkpoint)
        self.ended = waiting

    def log_student(self, trial, run_id: str, checkpoint) -> None:
        from .students import log_student
        from ..raytune.trainable import CHECKPOINT_FILE

        _, params = self.describe(trial.config)
        log_student(self.tracker.client, run_id, checkpoint, CHECKPOINT_FILE, str(params.get("student")))

    def on_trial_error(self, iteration, trials, trial, **info):
        self.child_run(trial)
        self.tracker.link.send(lambda: self._close(trial, f"failed: {trial_error_text(trial)}"[:5000], "FAILED"))

    def on_experiment_end(self, trials, **info):
        """Closes the child runs a killed driver left RUNNING that no trial of this run continued.

        A trial that Ray recorded as ended before the kill is closed by its last result; a run
        whose trial Ray never recorded (the driver died in between) is closed KILLED, with why.
        """
        self.tracker.link.send(lambda: self._close_left_running(trials))
        self.on_step_end(0, trials)  # Tune's closing snapshot records the last trials to end
        self.on_step_end(0, trials)  # the trials closed here were ended in the snapshot Tune restored

    def _close_left_running(self, trials) -> None:
        by_id = {t.trial_id: t for t in trials}
        for run in self.tracker.running_children():
            trial = by_id.get(run.data.tags.get(TRIAL_TAG))
            if trial is None:
                self.tracker.client.set_tag(run.info.run_id, END_TAG, ORPHANED_RUN)
                self.tracker.end(run.info.run_id, "KILLED")
            elif trial.status == "TERMINATED":
                self._close(trial, *self._ending(trial), run_id=run.info.run_id)
                self.ended.append((trial, snapshots_taken()))
            elif trial.status == "ERROR":
                self._close(trial, f"failed: {trial_error_text(trial)}"[:5000], "FAILED", run_id=run.info.run_id)
            # Trials still pending or running: an interruption, which mark_interrupted closes.

    def mark_interrupted(self) -> None:
        self.tracker.link.send(self._close_interrupted)

    def _close_interrupted(self) -> None:
        for run_id in self.runs.values():
            run = self.tracker.client.get_run(run_id)
            if run.info.status == "RUNNING":
                self.tracker.client.set_tag(run_id, END_TAG, "interrupted")
                self.tracker.end(run_id, "KILLED")


def trial_error_text(trial) -> str:
    try:
        path = trial.error_file
        if path and os.path.exists(path):
            lines = [ln for ln in open(path).read().strip().splitlines() if ln.strip()]
            return lines[-1] if lines else "error"
    except Exception:
        pass
    return "error (see the trial's error file)"
