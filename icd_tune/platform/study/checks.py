"""Checks across a study's fields and across its trials, made when the study file is read.

Field-by-field validation (types, ranges, misspelt keys) happens as the file is
parsed; what is checked here needs several fields at once, or every trial's
resolved config: the mode against the keys given, metric names against what
each trial reports, how often the selection metric is measured, and the epoch
budget against the learning-rate schedule. Each failure is a ``ConfigError``
naming the key path, the bad value and what is allowed, before Ray starts or
anything is written.
"""

from __future__ import annotations

from typing import Sequence

from ...method.config import TrialConfig
from ...method.data import val_size
from ...method.schema import ConfigError, suggest
from ..metrics import (EPOCH, EVALUATED_PREFIXES, NEEDS_VALIDATION, PAPER_ONLY, TEST_BEST_ACC1,
                      TRAIN_LOSS, TRANSFER_PREFIX, VAL_ACC1, metric_direction, trainer_metrics, transfer_metrics,
                      trial_metrics)
from .settings import StudySettings, register_refusal

# (display name, resolved config) of every trial a grid plans, or of corners of a search space.
Trials = Sequence[tuple[str, TrialConfig]]


def check_modes(settings: StudySettings, data: dict) -> None:
    """``mode`` against ``grid``, ``search``, ``baseline`` and ``seeds``: nothing given may be silently unused."""
    if settings.compare and settings.mode != "compare":
        raise ConfigError(f"bad value {settings.compare!r}: a compare section is for mode: compare, and this study "
                          f"is mode: {settings.mode}; remove 'compare' or set mode: compare", "compare")
    if settings.mode == "grid":
        if not settings.grid:
            raise ConfigError("mode: grid needs a grid: at least one factor with levels, e.g. grid: {invariance_weight: "
                              "{key: loss.invariance_weight, levels: [0.0, 0.5]}}; to sample configurations "
                              "instead, set mode: search", "grid")
        if data.get("search"):
            raise ConfigError(f"bad value {data['search']!r}: search settings are for mode: search, and this study "
                              f"is mode: grid; remove 'search' or set mode: search", "search")
        return
    if settings.mode == "compare":
        for key in ("grid", "baseline"):
            if data.get(key) is not None:
                raise ConfigError(f"bad value {data[key]!r}: a comparison builds its own grid of methods, each "
                                  f"against compare.reference; remove '{key}'", key)
        return
    if settings.grid:
        raise ConfigError(f"bad value {settings.grid!r}: a grid is for mode: grid, and this study is mode: search "
                          f"(it samples search.spaces and search.space); remove 'grid' or set mode: grid", "grid")
    if settings.baseline is not None:
        raise ConfigError(f"bad value {settings.baseline!r}: a baseline is a level of the first grid factor, and a "
                          f"search has no levels; remove 'baseline'", "baseline")
    if len(settings.seeds) > 1:
        raise ConfigError(f"bad value {settings.seeds!r}: a search runs every sample at one seed, so seeds after "
                          f"the first would be ignored; list one seed (then rerun the best configurations as a grid "
                          f"over seeds)", "seeds")


def protocol_defaults(data: dict) -> dict:
    """Study data with the defaults of its protocol: under ``paper``, metric and report_metric are test/best_acc1."""
    if data.get("protocol") != "paper":
        return data
    return {"metric": TEST_BEST_ACC1, "report_metric": TEST_BEST_ACC1, **data}


def check_protocol(settings: StudySettings, protocol: str) -> None:
    """What each protocol allows: selection on the test set never, and under ``paper`` nothing that selects."""
    if settings.register is not None:
        refused = register_refusal(settings.register, protocol, settings.metric)
        if refused:
            raise ConfigError(f"bad value {settings.register!r}: {refused}", "register")
    if protocol != "paper":
        if settings.metric.startswith("test/"):
            raise ConfigError(f"bad value {settings.metric!r}: search, ASHA and the report select on this metric, and "
                              f"selection never touches the test set; use a validation metric such as {VAL_ACC1} "
                              f"(protocol paper reports test/best_acc1 and selects nothing)", "metric")
        return
    why = ("protocol paper has no validation split and reports each trial's best test accuracy (selected on the "
           "test set, as published); tuning under it would select on the test set")
    if settings.mode == "search":
        raise ConfigError(f"bad value 'search': {why}; run a grid under protocol paper, or search under protocol: "
                          f"validation", "mode")
    if settings.asha.enabled:
        raise ConfigError(f"bad value True: {why}, and ASHA would stop trials by it; set asha.enabled: false, or use "
                          f"protocol: validation", "asha.enabled")


def check_trials(settings: StudySettings, trials: Trials) -> None:
    protocols = {cfg.protocol for _, cfg in trials}
    if len(protocols) > 1:
        raise ConfigError(f"trials plan different protocols ({', '.join(sorted(protocols))}); the protocol decides "
                          f"the data split and what is reported, so one study runs one: set it at the top level",
                          "protocol")
    check_metric_name(settings, trials)
    for key in ("metric", "report_metric"):
        for name, cfg in trials:
            check_metric_reported(getattr(settings, key), key, name, cfg)
    check_cadence(settings, trials)
    check_budget(settings, trials)


def check_metric_name(settings: StudySettings, trials: Trials) -> None:
    """The selection metric is a quality or cost the trainer reports, optimised in its own direction."""
    known = list(trainer_metrics())
    known += sorted({m for _, cfg in trials for m in trial_metrics(cfg) + transfer_metrics(cfg)} - set(known))
    metric = settings.metric
    paper = any(cfg.protocol == "paper" for _, cfg in trials)
    selectable = [m for m in known if metric_direction(m) and not m.startswith(TRANSFER_PREFIX)
                  and (paper or not m.startswith("test/"))]
    if metric not in known:
        raise ConfigError(f"bad value {metric!r}: not a metric the trainer reports{suggest_metric(metric, selectable)}",
                          "metric")
    direction = metric_direction(metric)
    if direction is None:
        raise ConfigError(f"bad value {metric!r}: it measures neither quality nor cost, so search, ASHA and the "
                          f"report cannot select on it{suggest_metric(metric, selectable)}", "metric")
    if direction != settings.metric_mode:
        better = "higher" if direction == "max" else "lower"
        raise ConfigError(f"bad value {settings.metric_mode!r}: {metric} is better {better}, so it is "
                          f"{direction}imised; set metric_mode: {direction}", "metric_mode")
    report = settings.report_metric
    reportable = [m for m in known if m != EPOCH]
    if report not in reportable and not report.startswith(TRANSFER_PREFIX):  # check_metric_reported says which targets
        raise ConfigError(f"bad value {report!r}: not a metric the trainer reports{suggest_metric(report, reportable)}",
                          "report_metric")


def suggest_metric(name: str, allowed: Sequence[str]) -> str:
    """Like ``suggest``, but a name cut short (``val/acc``) means the first metric it begins (``val/acc1``)."""
    started = [m for m in allowed if m.startswith(name)] if "/" in name else []
    if started:
        return f"; did you mean '{started[0]}'? allowed: {', '.join(allowed)}"
    return suggest(name, allowed)


def check_metric_reported(metric: str, key: str, trial: str, cfg: TrialConfig) -> None:
    """``metric`` is among what the trial reports; otherwise say which setting of the trial leaves it out."""
    if metric in trial_metrics(cfg) or metric in transfer_metrics(cfg):
        return
    prefix = f"bad value {metric!r}: trial '{trial}' does not report it"
    if metric.startswith(TRANSFER_PREFIX):
        probed = ", ".join(cfg.transfer.datasets) if cfg.transfer is not None else "none: it has no transfer: block"
        raise ConfigError(f"{prefix}: its transfer probe's targets are {probed}", key)
    if metric in PAPER_ONLY:
        raise ConfigError(f"{prefix}: only protocol paper reports the best test accuracy over epochs (this trial runs "
                          f"protocol {cfg.protocol}, which reports test/acc1_at_best_val); set protocol: paper", key)
    if metric.startswith("val/") or metric in NEEDS_VALIDATION:
        raise ConfigError(f"{prefix}: it has no validation split (data.val_fraction {cfg.data.val_fraction} holds "
                          f"out {val_size(cfg.data)} training images); set data.val_fraction > 0, e.g. 0.1, since "
                          f"selection never touches the test set", key)
    from ...method.distillers import get_method

    note = get_method(cfg.method).missing_metric_note(cfg.loss, metric)  # the method says why, where it can
    if note:
        raise ConfigError(f"{prefix}: {note}", key)
    if metric.startswith(TRAIN_LOSS + "_"):
        terms = [m for m in trial_metrics(cfg) if m.startswith(TRAIN_LOSS + "_")]
        raise ConfigError(f"{prefix}: its loss terms are {', '.join(terms)} (method {cfg.method}, loss.kd_weight "
                          f"{cfg.loss.kd_weight})", key)
    raise ConfigError(f"{prefix}{suggest(metric, trial_metrics(cfg))}", key)


def check_cadence(settings: StudySettings, trials: Trials) -> None:
    """A metric that drives ASHA or a search must be in every epoch's result: Ray Tune refuses results without it."""
    drivers = [what for what, on in (("the Optuna search", settings.mode == "search"),
                                     ("ASHA", settings.asha.enabled)) if on]
    if not drivers or not settings.metric.startswith(EVALUATED_PREFIXES):
        return
    shared = len({cfg.eval_every for _, cfg in trials}) == 1
    for name, cfg in trials:
        if cfg.eval_every > 1:
            # Carrying the last measured value forward would let ASHA and TPE judge a trial on an
            # epoch it has moved past, and before the first evaluation there is no value at all.
            where = "" if shared else f" (in trial '{name}')"
            raise ConfigError(
                f"bad value {cfg.eval_every!r}{where}: {settings.metric} drives {' and '.join(drivers)}, which read "
                f"it after every epoch, and it is only measured every eval_every epochs; set eval_every: 1",
                "eval_every")


def check_budget(settings: StudySettings, trials: Trials) -> None:
    """Every trial runs its whole learning-rate schedule: milestones are fractions of optim.epochs."""
    budgets: dict[int, str] = {}
    for name, cfg in trials:
        budgets.setdefault(cfg.optim.epochs, name)
    if len(budgets) > 1:
        # The report and ASHA judge every trial against one epoch budget; a shorter trial would
        # count as stopped early and drop out of the statistics.
        seen = ", ".join(f"{epochs} in '{name}'" for epochs, name in sorted(budgets.items()))
        raise ConfigError(f"trials plan different epoch budgets ({seen}); every trial of a study runs the same "
                          f"optim.epochs: run one study per budget", "optim.epochs")
    asha = settings.asha
    if not (asha.enabled and asha.max_epochs is not None) or not trials:
        return
    name, cfg = trials[0]
    if asha.max_epochs < cfg.optim.epochs:
        missed = [e for e in cfg.optim.milestone_epochs() if e > asha.max_epochs]
        decays = f", before its learning-rate decays at epochs {missed}" if missed else ""
        raise ConfigError(
            f"bad value {asha.max_epochs!r}: every trial would stop at epoch {asha.max_epochs} of the "
            f"{cfg.optim.epochs} its optim.epochs schedules{decays}; to tune on a {asha.max_epochs}-epoch budget set "
            f"optim.epochs: {asha.max_epochs} (its milestones, fractions of optim.epochs, scale with it) and drop "
            f"asha.max_epochs", "asha.max_epochs")
