"""Stage 6: the study's best students as MLflow Models, and the winner in the model registry when asked.

Runs after the record stage of a run that ended (a cut-short run publishes when
``--resume`` finishes it). The best ``export_models`` trials on the study's metric
(failed and unfinished ones never) get an MLflow Model in their child run
(``tracking.models``); a trial whose run has one already, from an earlier invocation
of the same run, keeps it and is not logged again. With ``--register NAME`` (or the
study key ``register``; never under ``--smoke``), the best of them on the validation
metric becomes a new version of registered model NAME (``tracking.registry``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from ..tracking.models import export_trial_model, model_context
from ..tracking.registry import Registration, candidate_from_run, register_student
from .plan import StudyPlan
from .prepare import Prepared
from .track import ParentRun
from .tune import TuneOutcome

EXPORTED_STATUSES = ("completed", "stopped")


@dataclass
class Published:
    models: dict[str, str] = field(default_factory=dict)  # trial name -> models:/ URI, best first
    registration: Registration | None = None

    def to_dict(self) -> dict:
        reg = self.registration
        return {"student_models": dict(self.models),
                "registered": None if reg is None else {"name": reg.name, "version": reg.version,
                                                        "promoted": reg.promoted, "reason": reg.reason}}


def ranked(trials: list[dict], metric: str, mode: str) -> list[int]:
    """Indices of the trials that may be published, best first on ``metric`` (ties: the earlier trial first)."""
    ok = [i for i, t in enumerate(trials) if t["status"] in EXPORTED_STATUSES and metric in t["final"]]
    return sorted(ok, key=lambda i: trials[i]["final"][metric], reverse=mode == "max")


def publish_students(plan: StudyPlan, prepared: Prepared, parent: ParentRun, outcome: TuneOutcome,
                     trials: list[dict], log: Callable[[str], None]) -> Published:
    from ..raytune.trainable import CHECKPOINT_FILE

    settings, register = plan.settings, plan.register_name
    published = Published()
    count = max(settings.export_models, 1 if register else 0)
    if outcome.stop_kind is not None or count == 0:
        return published
    tracker = parent.tracker
    if tracker.link.incomplete:  # the tracking server went away and was given up on: nothing to log models into
        log("no student model exported and nothing registered: the tracking server is unreachable (the run's "
            "records are incomplete)")
        return published
    order = ranked(trials, settings.metric, settings.metric_mode)[:count]
    if not order:
        log(f"no student model exported: no trial ended with {settings.metric}")
        return published
    context = model_context(prepared.data, plan.trial0.protocol, outcome.lineage)
    runs = tracker.children_by_trial()
    for i in order:
        trial, result = trials[i], outcome.result_grid[i]
        run_id = runs.get(trial["trial_id"])
        if run_id is None:
            continue
        uri = export_trial_model(tracker.client, plan.tracking_uri, tracker.experiment_id, run_id, result.checkpoint,
                                 CHECKPOINT_FILE, str(trial["params"].get("student")), result.config or {},
                                 trial["final"], context)
        if uri:
            published.models[trial["name"]] = uri
    best = trials[order[0]]["name"] if order else None
    log(f"student models ({len(published.models)}, best on {settings.metric} first): "
        + ", ".join(f"{name} {uri}" for name, uri in published.models.items()))
    if register and best in published.models:
        run_id = runs[trials[order[0]]["trial_id"]]
        candidate = candidate_from_run(tracker.client, run_id, plan.study.name, settings.metric, settings.metric_mode)
        published.registration = register_student(tracker.client, plan.tracking_uri, register, candidate)
        for line in published.registration.lines():
            log(line)
    return published
