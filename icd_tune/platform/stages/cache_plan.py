"""Whether each teacher's outputs are read from the exact cache, decided once for the dry run and the real run.

A study of several teachers decides for each with its own settings: those of the
first trial that uses it (``teacher.cache``, ``cache_dtype``,
``cache_memory_budget_gb``, ``data.augment``), weighed against the trial-epochs
of the trials that use it. ``--dry-run`` prints these decisions; the prepare
stage acts on them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from ..study.definition import Study
from ..study.trials import TrialPoint, trial_config
from .plan import planned_trial_epochs


@dataclass
class CacheDecision:
    identity: str  # method.teachers.teacher_identity
    trial: object  # the TrialConfig of the first trial that uses the teacher: its cache settings decide
    trials: int  # how many of the run's trials use the teacher
    trial_epochs: int  # their trial-epochs, which the cache shortens
    size_bytes: int
    enabled: bool
    reason: str


def cache_decision(study: Study, trial, num_train: int, feature_dim: int, num_classes: int,
                   smoke: bool = False, on_cluster: bool = False, trial_epochs: int | None = None,
                   who: str = "this study runs") -> tuple[bool, str]:
    """Whether ``trial``'s teacher is read from the exact cache, and why.

    ``trial_epochs``: what the cache would shorten (default: every trial-epoch the study plans).
    """
    from ...method.output_cache import build_cost_teacher_epochs, cache_size_bytes
    from ...method.teacher_outputs import decide_cache

    setting = trial.teacher.cache
    size = cache_size_bytes(num_train, feature_dim, num_classes, trial.teacher.cache_dtype)
    enabled, reason = decide_cache(setting, trial.data.augment, size, trial.teacher.cache_memory_budget_gb)
    if enabled and setting == "auto":
        cost = build_cost_teacher_epochs()
        planned = planned_trial_epochs(study) if trial_epochs is None else trial_epochs
        if smoke:
            return False, "off for a smoke run (teacher.cache: on forces it)"
        if planned < cost:
            # Building costs 162 teacher-epochs; a study that runs fewer trial-epochs pays more than it saves
            return False, (f"off: {who} {planned} trial-epochs, fewer than the {cost} teacher-epochs "
                           f"building it costs (set teacher.cache: on to build it anyway)")
    if enabled and on_cluster:
        reason += "; on a cluster each node builds its own copy once, on its own device, before its first trial"
    return enabled, reason


def teacher_cache_decisions(study: Study, base: dict, points: list[TrialPoint] | None, max_epochs: int,
                            num_train: int, num_classes: int, feature_dims: Mapping[str, int] | None = None,
                            smoke: bool = False, on_cluster: bool = False) -> dict[str, CacheDecision]:
    """Identity -> the cache decision of every teacher the run's trials use, in first-use order.

    ``points``: the run's grid trials (None for a search, whose draws all share trial0's teacher);
    ``feature_dims``: each loaded teacher's feature width (default: its architecture's). A study
    with one teacher weighs the cache against all the trial-epochs it plans; one with several
    weighs each teacher's against the trial-epochs of the trials that use it.
    """
    from ...method.models import feature_dim
    from ...method.output_cache import cache_size_bytes
    from ...method.teachers import teacher_identity

    trials = [trial_config(base, p.overrides, p.seed) for p in points or [study.first_point()]]
    first: dict[str, object] = {}
    counts: dict[str, int] = {}
    for cfg in [t for t in trials if t.uses_teacher] or trials[:1]:  # none: trial0's, as the prepare stage loads
        identity = teacher_identity(cfg.teacher)
        first.setdefault(identity, cfg)
        counts[identity] = counts.get(identity, 0) + 1
    out = {}
    for identity, trial in first.items():
        epochs = (counts[identity] * max_epochs if points is not None and len(first) > 1
                  else planned_trial_epochs(study))
        width = (feature_dims or {}).get(identity) or feature_dim(trial.teacher.arch)
        enabled, reason = cache_decision(study, trial, num_train, width, num_classes, smoke=smoke,
                                         on_cluster=on_cluster, trial_epochs=epochs,
                                         who=f"its {counts[identity]} trial(s) run" if len(first) > 1 else "this study runs")
        size = cache_size_bytes(num_train, width, num_classes, trial.teacher.cache_dtype)
        out[identity] = CacheDecision(identity, trial, counts[identity], epochs, size, enabled, reason)
    return out
