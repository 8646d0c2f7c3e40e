"""Per-level summaries and seed-paired comparisons of trial records.

Also the value handling the rest of the package shares: what counts as a
number, how a level groups and how values are printed, which metric may
select (validation, never test) and what a trial's selection score is.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from scipy import stats

FAILED = "failed"
STOPPED = "stopped"
COMPLETED = "completed"
# Left running or waiting when the run was cut short (time budget, interruption); --resume continues it.
UNFINISHED = "unfinished"

_NA = "n/a"

# Below three seed pairs a t interval has at most one degree of freedom
# (t_0.975 = 12.7): it spans tens of points and says nothing.
MIN_PAIRS = 3


# --------------------------------------------------------------------------
# small helpers


def _number(value: Any) -> float | None:
    """A finite real as float, else None.

    NaN/inf finals (a run that blew up without being marked failed) and
    non-numeric values are treated as missing rather than poisoning a mean.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _is_numeric_level(value: Any) -> bool:
    return _number(value) is not None


def _final(trial: Mapping, metric: str) -> float | None:
    return _number((trial.get("final") or {}).get(metric))


def _failed(trial: Mapping) -> bool:
    return trial.get("status") == FAILED


def _completed(trial: Mapping) -> bool:
    # A stopped trial's last value comes from fewer epochs than its peers';
    # mixing it into a mean or a difference would compare unequal budgets.
    return trial.get("status") == COMPLETED


def is_test_metric(metric: str) -> bool:
    """Whether ``metric`` is measured on the test split (``test/...``)."""
    return any(part == "test" or part.startswith("test_")
               for part in str(metric).lower().split("/"))


def check_selection_metric(metric: str) -> None:
    """Refuse a test-set metric as the one that picks levels or configurations."""
    if is_test_metric(metric):
        raise ValueError(
            f"selection metric {metric!r} is measured on the test set; best levels and "
            "configurations are selected on validation (e.g. 'val/acc1' or 'val/best_acc1') "
            "and the test set is only reported"
        )


def best_val_name(metric: str) -> str:
    """The per-trial best-so-far name of a validation metric: val/acc1 -> val/best_acc1.

    A trial is judged by its best validation epoch, the epoch whose test
    accuracy it reports, not by wherever its last epoch happened to land.
    """
    head, sep, tail = str(metric).rpartition("/")
    if sep and head.split("/")[-1] == "val" and not tail.startswith("best_"):
        return f"{head}/best_{tail}"
    return metric


def selection_value(trial: Mapping, metric: str) -> float | None:
    """A trial's selection score: its best validation value, else final ``metric``."""
    best = _final(trial, best_val_name(metric))
    return best if best is not None else _final(trial, metric)


def selection_label(trials: Iterable[Mapping], metric: str) -> str:
    """The name the selection scores were read from, for headers and text."""
    best = best_val_name(metric)
    if best != metric and any(_final(t, best) is not None for t in trials):
        return best
    return metric


def _hashable(value: Any) -> Any:
    # Levels are normally scalars; a list-valued level (e.g. milestones) still
    # needs to group, so fall back to its repr.
    try:
        hash(value)
    except TypeError:
        return repr(value)
    return value


def _fmt_value(value: Any) -> str:
    """Level/param value for display: compact but without losing small lrs."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        return f"{float(value):.6g}"
    return str(value)


def _fmt_num(value: float | None, digits: int = 2, signed: bool = False) -> str:
    if value is None:
        return _NA
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    arr = np.asarray(values, dtype=float)
    std = float(arr.std(ddof=1)) if arr.size > 1 else None
    return float(arr.mean()), std


def _group_by_level(trials: Iterable[Mapping], factor: str) -> tuple[dict, list]:
    """Ordered level -> trials, plus the trials that carry no level for factor.

    A trial without the factor in ``levels`` is left out rather than filed
    under None, because None is itself a legitimate level (e.g. "no teacher").
    """
    groups: dict[Any, list] = {}
    missing = []
    for trial in trials:
        levels = trial.get("levels") or {}
        if factor not in levels:
            missing.append(trial)
            continue
        key = _hashable(levels[factor])
        groups.setdefault(key, []).append(trial)
    return groups, missing


def _find_level(levels: Iterable[Any], wanted: Any) -> Any:
    """The level equal to ``wanted``; a CLI may pass "0.5" for the float 0.5."""
    levels = list(levels)
    for level in levels:
        # True == 1 in Python, but a boolean level is not the number 1.
        if level == wanted and isinstance(level, bool) == isinstance(wanted, bool):
            return level
    for level in levels:
        if str(wanted) in (str(level), _fmt_value(level)):
            return level
    raise ValueError(
        f"baseline level {wanted!r} is not among the levels "
        f"{[_fmt_value(l) for l in levels]}"
    )


def _per_seed(trials: Iterable[Mapping], metric: str) -> dict[Any, float]:
    # Two trials with the same seed in one level (a rerun) are averaged so the
    # pairing unit stays the seed.
    collected: dict[Any, list] = {}
    for trial in trials:
        if not _completed(trial) or trial.get("seed") is None:
            continue
        value = _final(trial, metric)
        if value is not None:
            collected.setdefault(_hashable(trial["seed"]), []).append(value)
    return {seed: float(np.mean(vals)) for seed, vals in collected.items()}


def _paired_diff(level_trials, base_trials, metric: str) -> dict:
    here, base = _per_seed(level_trials, metric), _per_seed(base_trials, metric)
    seeds = [s for s in here if s in base]
    diffs = np.asarray([here[s] - base[s] for s in seeds], dtype=float)
    out = {"diff_n": int(diffs.size), "diff_seeds": seeds, "diff_mean": None, "diff_sd": None,
           "diff_half_width": None, "diff_ci_low": None, "diff_ci_high": None,
           "diff_dz": None, "p_value": None, "p_holm": None,
           "informative": bool(diffs.size >= MIN_PAIRS)}
    if diffs.size == 0:
        return out
    out["diff_mean"] = float(diffs.mean())
    if diffs.size > 1:
        n = diffs.size
        sd = float(diffs.std(ddof=1))
        half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
        out.update(diff_sd=sd, diff_half_width=half,
                   diff_ci_low=out["diff_mean"] - half, diff_ci_high=out["diff_mean"] + half)
        # Identical differences on every seed leave t, p and d_z undefined.
        if sd > 0:
            t_stat = out["diff_mean"] / (sd / math.sqrt(n))
            out["p_value"] = float(2.0 * stats.t.sf(abs(t_stat), n - 1))
            out["diff_dz"] = out["diff_mean"] / sd
    return out


def holm_adjust(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, in the input order.

    The i-th smallest of m p-values is multiplied by (m - i + 1), kept
    non-decreasing along the sorted order and capped at 1, so rejecting where
    the adjusted p < alpha holds the family-wise error rate at alpha.
    """
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * float(p_values[i])))
        adjusted[i] = running
    return adjusted


def _apply_holm(rows: list[dict]) -> None:
    # The family is the levels the report makes a claim about: those compared
    # to the baseline with enough pairs for a p-value.
    family = [r for r in rows if r.get("informative") and r.get("p_value") is not None]
    for row, adjusted in zip(family, holm_adjust([r["p_value"] for r in family])):
        row["p_holm"] = adjusted
        row["holm_m"] = len(family)


def _check_mode(mode: str) -> None:
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")


# --------------------------------------------------------------------------
# summaries


def _summary(values: Sequence[float]) -> dict:
    mean, std = _mean_std(values)
    return {"mean": mean, "std": std, "n": len(values)}


def _level_row(members: list, factor: str, metric: str, best_metric: str,
               selection_metric: str, also: Sequence[str]) -> dict:
    done = [t for t in members if _completed(t)]
    values = [v for v in (_final(t, metric) for t in done) if v is not None]
    bests = [v for v in (_final(t, best_metric) for t in done) if v is not None]
    scores = [v for v in (selection_value(t, selection_metric) for t in done) if v is not None]
    epochs = [e for e in (_number(t.get("epochs")) for t in members) if e is not None]
    mean, std = _mean_std(values)
    best_mean, best_std = _mean_std(bests)
    select = _summary(scores)
    return {
        "level": (members[0].get("levels") or {}).get(factor),
        "n": len(members),
        "n_completed": len(done),
        "n_stopped": sum(t.get("status") == STOPPED for t in members),
        "n_failed": sum(_failed(t) for t in members),
        "metric_mean": mean, "metric_std": std, "metric_n": len(values),
        "best_mean": best_mean, "best_std": best_std, "best_n": len(bests),
        "select_mean": select["mean"], "select_std": select["std"], "select_n": select["n"],
        "also": {m: _summary([v for v in (_final(t, m) for t in done) if v is not None])
                 for m in also},
        "epochs_mean": float(np.mean(epochs)) if epochs else None,
    }


def level_table(trials: Sequence[Mapping], factor: str, metric: str = "test/acc1_at_best_val",
                best_metric: str = "val/best_acc1", baseline: Any = None,
                selection_metric: str = "val/acc1", also: Sequence[str] = ()) -> list[dict]:
    """One summary row per level of ``factor``, in first-seen order.

    Only completed trials enter the statistics; stopped (ASHA) and failed
    trials are counted, not averaged. Row keys: ``level``, ``n`` (all
    trials), ``n_completed``, ``n_stopped``, ``n_failed``,
    ``metric_mean``/``metric_std``/``metric_n`` over completed trials that
    reported ``metric`` (sample std, None with fewer than two values), the same
    with ``best_`` prefix for ``best_metric`` and with ``select_`` prefix for
    the selection score (``selection_value``), ``also`` (metric ->
    {mean, std, n}) and ``epochs_mean`` over all trials.

    With ``baseline`` (a level value) each row also has ``is_baseline`` and,
    for other levels, the seed-paired difference of ``metric``: ``diff_mean``
    over ``diff_n`` pairs, ``diff_sd``, the 95% t interval ``diff_ci_low``,
    ``diff_ci_high``, ``diff_half_width`` (None with fewer than two pairs),
    Cohen's ``diff_dz`` (mean / sd of the differences), the two-sided paired
    t-test ``p_value``, ``informative`` (at least ``MIN_PAIRS`` pairs) and
    ``p_holm``, Holm-adjusted over the informative levels (``holm_m`` of them).
    Trials that lack ``factor`` in their levels are ignored.
    """
    check_selection_metric(selection_metric)
    groups, _ = _group_by_level(trials, factor)
    base_key = _find_level(groups, baseline) if baseline is not None else None

    rows = []
    for level, members in groups.items():
        row = _level_row(members, factor, metric, best_metric, selection_metric, also)
        if baseline is not None:
            row["is_baseline"] = level == base_key
            if not row["is_baseline"]:
                row.update(_paired_diff(members, groups[base_key], metric))
        rows.append(row)
    if baseline is not None:
        _apply_holm(rows)
    return rows


def best_level(rows: Sequence[Mapping], mode: str = "max") -> Mapping | None:
    """The row with the best mean selection score; None unless two levels have one."""
    _check_mode(mode)
    scored = [r for r in rows if r.get("select_mean") is not None]
    if len(scored) < 2:
        return None
    pick = max if mode == "max" else min
    return pick(scored, key=lambda r: r["select_mean"])


def best_configurations(trials: Sequence[Mapping], metric: str = "val/best_acc1",
                        mode: str = "max", top: int = 5,
                        statuses: Iterable[str] | None = None) -> list[dict]:
    """The ``top`` trials ranked by their selection score on ``metric``.

    ``metric`` must be a validation (not test) metric; a trial scores its
    best-so-far value (``val/best_acc1`` for ``val/acc1``) where present.
    ``statuses`` limits the trials ranked (default: all but failed). Each
    entry: rank, trial_id, name, seed, status, epochs, value, levels, params,
    final. Trials without a score are not ranked; ties keep input order.
    """
    _check_mode(mode)
    check_selection_metric(metric)
    allowed = set(statuses) if statuses is not None else None

    def eligible(trial):
        return trial.get("status") in allowed if allowed is not None else not _failed(trial)

    scored = [(v, i, t) for i, t in enumerate(trials)
              if eligible(t) and (v := selection_value(t, metric)) is not None]
    sign = -1.0 if mode == "max" else 1.0
    scored.sort(key=lambda item: (sign * item[0], item[1]))
    out = []
    for rank, (value, _, trial) in enumerate(scored[:max(top, 0)], start=1):
        out.append({
            "rank": rank, "trial_id": trial.get("trial_id"), "name": trial.get("name"),
            "seed": trial.get("seed"), "status": trial.get("status"),
            "epochs": trial.get("epochs"), "value": value,
            "levels": dict(trial.get("levels") or {}), "params": dict(trial.get("params") or {}),
            "final": dict(trial.get("final") or {}),
        })
    return out
