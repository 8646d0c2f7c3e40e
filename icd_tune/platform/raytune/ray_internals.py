"""The one place that reaches into Ray Tune's and Optuna's private attributes.

Each function stands in for a public API that Ray or Optuna does not offer, and
says which. Checked against ray 2.60.0 (ray/tune/search/optuna/optuna_search.py,
ray/tune/tuner.py, ray/tune/impl/tuner_internal.py) and optuna 5.0.0
(optuna/study/study.py, optuna/trial/_trial.py, optuna/trial/_frozen.py).
pyproject.toml bounds both below their next major version; before raising a
bound, re-read those files for each function here. The tests that break first
when one changes: tests/test_platform.py (searcher, resume) and
tests/test_resilience.py.
"""

from __future__ import annotations

from typing import Any


def searcher_study(searcher) -> Any:
    """The ``optuna.Study`` an ``OptunaSearch`` asks and tells.

    Stands in for a public ``OptunaSearch.study`` (there is none); the same study
    could be reopened with ``optuna.load_study(study_name=..., storage=...)``, but
    that is a second handle whose trials the searcher never sees.
    """
    return searcher._ot_study


def searcher_trials(searcher) -> dict[str, Any]:
    """Ray trial id -> the ``optuna.Trial`` the searcher asked for it.

    Stands in for a public mapping of Tune trials to Optuna trials (there is none).
    """
    return searcher._ot_trials


def searcher_closed_trials(searcher) -> set[str]:
    """The Ray trial ids whose Optuna trial the searcher has told (it ignores their later results).

    Stands in for a public ``OptunaSearch`` record of finished trials (there is none);
    the set is mutable, and adding to it is how a subclass closes a trial for Ray.
    """
    return searcher._completed_trials


def optuna_trial_id(trial) -> int:
    """The storage id of an ``optuna.Trial`` or ``FrozenTrial``.

    Stands in for a public trial id; the public ``number`` counts within a study,
    while Optuna's storage API addresses trials by this id.
    """
    return trial._trial_id


def study_storage(study) -> Any:
    """The ``BaseStorage`` behind an ``optuna.Study``.

    Stands in for a public ``Study.storage`` (``optuna.Trial.storage`` exists, a
    ``Study`` and a ``FrozenTrial`` offer none).
    """
    return study._storage


def stored_trial(study, trial) -> Any:
    """The storage's current ``FrozenTrial`` of ``trial``, which may have been finished by another process.

    Public stand-in: ``study.get_trials(deepcopy=False)`` filtered on ``number``, which
    reads every trial of the study at each call.
    """
    return study_storage(study).get_trial(optuna_trial_id(trial))


def set_stored_user_attr(study, trial, key: str, value: Any) -> None:
    """Sets a user attribute on a trial known only as a ``FrozenTrial``.

    ``FrozenTrial.set_user_attr`` changes the local copy only; the public
    ``optuna.Trial(study, trial_id)`` needs the private id as well.
    """
    study_storage(study).set_trial_user_attr(optuna_trial_id(trial), key, value)


def set_restored_callbacks(tuner, callbacks: list) -> None:
    """Gives a ``Tuner.restore``-d run this invocation's callbacks instead of the pickled ones.

    Stands in for a ``run_config=`` (or ``callbacks=``) argument of ``Tuner.restore``,
    which takes none: the restored run would otherwise log through the callbacks
    pickled by the interrupted driver, bound to its MLflow client and parent run.
    """
    tuner._local_tuner._run_config.callbacks = callbacks


def autoscaler_report() -> dict | None:
    """What Ray's autoscaler last reported: its node types and what it is launching; None when none reports.

    Stands in for a public "can this cluster add nodes?" (there is none; Tune itself
    guesses from ``~/ray_bootstrap_config.yaml`` on the driver's machine, which a job
    submitted to KubeRay never has). Autoscaler v1 writes its last report as JSON to the
    GCS key-value store under ``__autoscaling_status``, what ``ray status`` prints
    (ray/autoscaler/_private/monitor.py); v2 answers
    ``ray.autoscaler.v2.sdk.get_cluster_status``. Checked against ray 2.60.0.
    Returns {"types": set of node type names, "launching": {type: count}, "version": "v1" | "v2"}.
    """
    import json

    import ray
    from ray._private import ray_constants
    from ray.autoscaler.v2.utils import is_autoscaler_v2
    from ray.experimental.internal_kv import _internal_kv_get

    if is_autoscaler_v2(fetch_from_server=True):
        from ray.autoscaler.v2.sdk import get_cluster_status

        status = get_cluster_status(ray.get_runtime_context().gcs_address)
        nodes = [*status.active_nodes, *status.idle_nodes, *status.pending_nodes, *status.failed_nodes]
        launching: dict[str, int] = {}
        for launch in status.pending_launches:
            launching[launch.ray_node_type_name] = launching.get(launch.ray_node_type_name, 0) + launch.count
        return {"types": {n.ray_node_type_name for n in nodes} | set(launching), "launching": launching,
                "version": "v2"}
    raw = _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
    report = json.loads(raw).get("autoscaler_report") if raw else None
    if not report:
        return None
    launching = dict(report.get("pending_launches") or {})
    types = set(report.get("active_nodes") or {}) | set(report.get("idle_nodes") or {}) | set(launching)
    types |= {entry[1] for entry in [*(report.get("pending_nodes") or []), *(report.get("failed_nodes") or [])]}
    types |= set((report.get("node_type_mapping") or {}).values())
    return {"types": types, "launching": launching, "version": "v1"}


def request_tune_stop() -> bool:
    """Ends the running ``Tuner.fit`` as Ctrl+C does: no new trials, running ones stopped, state saved for restore.

    Stands in for a public ``Tuner.stop()`` (there is none). While ``fit`` runs in the main
    thread, Tune handles SIGUSR1 exactly like a first SIGINT (``_setup_signal_catching`` in
    ray/tune/tune.py): it sets the run's interrupted event, the loop ends after its step and
    writes the experiment state with the unfinished trials still RUNNING or PENDING, so that
    ``Tuner.restore(..., resume_unfinished=True)`` continues them. Calling the installed
    handler delivers that signal synchronously. Returns False when Tune installed none.
    """
    import signal

    handler = signal.getsignal(signal.SIGUSR1) if hasattr(signal, "SIGUSR1") else None
    if not callable(handler):
        return False
    handler(signal.SIGUSR1, None)
    return True


_SNAPSHOTS = {"taken": 0}


def snapshots_taken() -> int:
    """How many experiment snapshots Tune has written in this process (counted by ``snapshot_on_trial_changes``)."""
    return _SNAPSHOTS["taken"]


def snapshot_on_trial_changes() -> None:
    """Makes Tune snapshot the experiment whenever a trial joins it, and otherwise on its own clock.

    Stands in for a public "snapshot when the trial list changes" setting (Tune offers only a
    period, ``TUNE_GLOBAL_CHECKPOINT_S``, and ``force=`` on its internal ``checkpoint``). A
    snapshot serialises every trial so far, so taking one at every step of Tune's loop costs
    time linear in the trial count at every step; taking one only when the trial list grows
    keeps what resume relies on (a trial is in the snapshot by the end of the step that added
    it, before its first result, so a killed driver does not leave a trained trial that
    ``--resume`` does not know) at one snapshot per trial. Results and ended trials reach the
    next snapshot, which Tune's own period (and its forced snapshot once a trial has written
    ``num_to_keep`` checkpoints since the last one) still bounds.

    Tune's syncer copies each snapshot from the driver's staging folder into the run folder in
    the background. A copy skipped because the previous one was still running is launched at a
    later step, once that one has ended (Tune itself would retry only at its next snapshot).

    Wraps ``_ExperimentCheckpointManager.sync_up_experiment_state``
    (ray/tune/execution/experiment_state.py), whose ``save_fn`` is the controller's bound
    ``save_to_dir`` (ray/tune/execution/tune_controller.py); idempotent.
    """
    import time

    from ray.tune.execution.experiment_state import _ExperimentCheckpointManager

    original = _ExperimentCheckpointManager.sync_up_experiment_state
    if getattr(original, "_icd_tune_wrapped", False):
        return

    def sync_up_experiment_state(self, save_fn, force: bool = False, wait: bool = False):
        trials = getattr(getattr(save_fn, "__self__", None), "_trials", None)
        if trials is not None and len(trials) != getattr(self, "_icd_tune_trial_count", None):
            self._icd_tune_trial_count = len(trials)
            # Due now, whatever the period. Not force=True: that would also block the loop until
            # the previous copy into the run folder ends, and the copy grows with the trial count.
            self._last_save_time = float("-inf")
        saved, synced = self._last_save_time, self._last_sync_time
        out = original(self, save_fn, force=force, wait=wait)
        if self._last_save_time != saved:
            _SNAPSHOTS["taken"] += 1
            # The copy is skipped while the previous one runs: launch it once that one has ended.
            self._icd_tune_unsynced = self._last_sync_time == synced
        elif getattr(self, "_icd_tune_unsynced", False) and self._storage.syncer.sync_up(
                self._storage.experiment_driver_staging_path, self._storage.experiment_fs_path):
            self._icd_tune_unsynced = False
            self._last_sync_time = time.monotonic()
        return out

    sync_up_experiment_state._icd_tune_wrapped = True
    _ExperimentCheckpointManager.sync_up_experiment_state = sync_up_experiment_state
