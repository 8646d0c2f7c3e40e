"""The study's Optuna searcher: TPE through Ray Tune, with ASHA-stopped and diverged trials PRUNED.

Ray's ``OptunaSearch`` tells Optuna COMPLETE with the early value when ASHA stops a
trial, which TPE then treats as a finished result. This one tells PRUNED with the
last value. A diverged trial is PRUNED too, valued at its diverging epoch with the
worst value the study has seen: TPE ignores FAIL trials, so a failed divergence
would teach it nothing, and it would keep sampling the region that diverges.
Errored trials are FAIL. It survives a killed driver: orphaned Optuna trials are
closed, replayed results for closed trials skipped.
"""

from __future__ import annotations

import math
import warnings
from importlib import metadata

import optuna
from optuna.study import StudyDirection
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from ..metrics import DIVERGED, EPOCH, ERROR, result_step
from .space import PARAM_PREFIX
from .ray_internals import (optuna_trial_id, searcher_closed_trials, searcher_study, searcher_trials,
                            set_stored_user_attr, stored_trial)
from ..study.definition import Study
from .warm_start import WARM_START_ATTR, WarmStart

ORPHANED = "orphaned: its driver was interrupted before Ray recorded it"


class StudyOptunaSearch(OptunaSearch):
    def __init__(self, *args, max_epochs: int, warm_trials: list | None = None, warm_source: str = "", **kwargs):
        super().__init__(*args, **kwargs)
        # A trial reporting fewer epochs than this when it ends was stopped early.
        self.max_epochs = max_epochs
        # An earlier search's finished trials (warm_start.py), added once, to a study that has none yet.
        self.warm_trials = list(warm_trials or [])
        self.warm_source = warm_source

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        created = super().set_search_properties(metric, mode, config, **spec)
        if created:
            study = searcher_study(self)
            # Recorded with the study: TPE's defaults change between Optuna releases.
            study.set_user_attr("optuna_version", optuna.__version__)
            study.set_user_attr("icd_tune_version", metadata.version("icd-tune"))
            # The dashboard names the objective by this instead of "Objective 0".
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.set_metric_names([self.metric])
            if self.warm_trials and WARM_START_ATTR not in study.user_attrs and not study.trials:
                study.add_trials(self.warm_trials)
                study.set_user_attr(WARM_START_ATTR, self.warm_source)
        return created

    def restore(self, checkpoint_path):
        super().restore(checkpoint_path)
        # A driver killed between Optuna's ask() and Ray's next snapshot leaves an Optuna trial
        # that no Ray trial will ever report to; close it so TPE and the dashboard do not wait on it.
        study = searcher_study(self)
        known = {optuna_trial_id(t) for t in searcher_trials(self).values()}
        for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if optuna_trial_id(frozen) not in known:
                set_stored_user_attr(study, frozen, "failure", ORPHANED)
                study.tell(frozen.number, state=TrialState.FAIL)

    def closed_in_optuna(self, trial_id) -> bool:
        # After a killed driver resumes, Ray's snapshot can predate Optuna's record: a trial
        # Optuna already closed may report again. Optuna refuses updates to it; skip them.
        ot_trial = searcher_trials(self)[trial_id]
        return stored_trial(searcher_study(self), ot_trial).state.is_finished()

    def on_trial_result(self, trial_id, result):
        asked, closed = searcher_trials(self), searcher_closed_trials(self)
        if trial_id in asked and self.closed_in_optuna(trial_id):
            closed.add(trial_id)
            return
        # A divergence result carries no value (NaN); on_trial_complete values it at the worst seen.
        if self.metric in result and trial_id not in closed and not result.get(DIVERGED):
            value = result[self.metric]
            if isinstance(value, (int, float)) and math.isfinite(value):
                asked[trial_id].report(float(value), result_step(result))

    def on_trial_complete(self, trial_id, result=None, error=False):
        asked, closed = searcher_trials(self), searcher_closed_trials(self)
        if trial_id in closed or trial_id not in asked:
            return
        if self.closed_in_optuna(trial_id):
            closed.add(trial_id)
            return
        study, ot_trial = searcher_study(self), asked[trial_id]
        value = (result or {}).get(self.metric)
        diverged = bool((result or {}).get(DIVERGED))
        if diverged:
            tell_diverged(study, ot_trial, result)
        elif error or value is None or not math.isfinite(value):
            study.tell(ot_trial, state=TrialState.FAIL)
        elif int(result.get(EPOCH, self.max_epochs)) < self.max_epochs:
            # Ray skips the searcher for the result that stops a trial; report it here, since
            # Optuna takes the last intermediate value as a pruned trial's value.
            epoch = result_step(result)
            if epoch not in stored_trial(study, ot_trial).intermediate_values:
                ot_trial.report(float(value), epoch)
            study.tell(ot_trial, state=TrialState.PRUNED)
        else:
            study.tell(ot_trial, float(value), state=TrialState.COMPLETE)
        closed.add(trial_id)


def tell_diverged(study: optuna.Study, ot_trial: optuna.Trial, result: dict) -> None:
    """PRUNED, valued at the diverging epoch with the worst value seen: TPE ranks it last among trials that got as far.

    Before any value is seen it is PRUNED without one, which TPE ranks below every pruned trial with a value.
    """
    ot_trial.set_user_attr("diverged", str(result.get(ERROR) or "diverged"))
    worst = worst_value(study)
    epoch = result_step(result)
    if worst is not None and epoch not in stored_trial(study, ot_trial).intermediate_values:
        ot_trial.report(worst, epoch)
    study.tell(ot_trial, state=TrialState.PRUNED)


def worst_value(study: optuna.Study) -> float | None:
    """The worst finite value any trial of the study has reported, intermediate or final; None before any."""
    values = [v for t in study.get_trials(deepcopy=False)
              for v in (*t.intermediate_values.values(), *([t.value] if t.value is not None else []))
              if math.isfinite(v)]
    if not values:
        return None
    return min(values) if study.direction == StudyDirection.MAXIMIZE else max(values)


def make_searcher(study: Study, storage_url: str, max_epochs: int, warm: WarmStart | None = None) -> StudyOptunaSearch:
    """TPE seeded from the study, its Optuna study persisted at ``storage_url`` under the study's name.

    ``warm``: an earlier search's finished trials, told to the new Optuna study before its first sample.
    """
    storage = optuna.storages.RDBStorage(storage_url)
    sampler = optuna.samplers.TPESampler(seed=study.settings.search.seed)
    first = [{PARAM_PREFIX + k: v for k, v in point.items()} for point in study.settings.search.points_to_evaluate]
    return StudyOptunaSearch(metric=study.settings.metric, mode=study.settings.metric_mode, sampler=sampler,
                             points_to_evaluate=first or None,
                             storage=storage, study_name=study.name, max_epochs=max_epochs,
                             warm_trials=warm.trials if warm else None, warm_source=warm.source if warm else "")
