"""Per-level summaries and seed-paired comparisons of trial records.

Also the value handling the rest of the package shares: what counts as a
number, how a level groups and how values are printed.
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

_NA = "n/a"


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
        if _failed(trial) or trial.get("seed") is None:
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
           "diff_half_width": None, "diff_ci_low": None, "diff_ci_high": None}
    if diffs.size == 0:
        return out
    out["diff_mean"] = float(diffs.mean())
    if diffs.size > 1:
        n = diffs.size
        sd = float(diffs.std(ddof=1))
        half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
        out.update(diff_sd=sd, diff_half_width=half,
                   diff_ci_low=out["diff_mean"] - half, diff_ci_high=out["diff_mean"] + half)
    return out


def _check_mode(mode: str) -> None:
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")


# --------------------------------------------------------------------------
# summaries


def level_table(trials: Sequence[Mapping], factor: str, metric: str = "test/acc1",
                best_metric: str = "val/best_acc1", baseline: Any = None) -> list[dict]:
    """One summary row per level of ``factor``, in first-seen order.

    Row keys: ``level``, ``n`` (all trials), ``n_completed`` (not failed; early
    stopped trials count and enter the means with their last reported value),
    ``metric_mean``/``metric_std``/``metric_n`` over non-failed trials that
    reported ``metric`` (sample std, None with fewer than two values), the same
    with ``best_`` prefix for ``best_metric``, ``epochs_mean`` over all trials.

    With ``baseline`` (a level value) each row also has ``is_baseline`` and,
    for other levels, the seed-paired difference ``diff_mean`` with
    ``diff_n`` pairs, ``diff_sd`` and the 95% t interval ``diff_ci_low``,
    ``diff_ci_high``, ``diff_half_width`` (None with fewer than two pairs).
    Trials that lack ``factor`` in their levels are ignored.
    """
    groups, _ = _group_by_level(trials, factor)
    base_key = _find_level(groups, baseline) if baseline is not None else None

    rows = []
    for level, members in groups.items():
        ok = [t for t in members if not _failed(t)]
        values = [v for v in (_final(t, metric) for t in ok) if v is not None]
        bests = [v for v in (_final(t, best_metric) for t in ok) if v is not None]
        epochs = [e for e in (_number(t.get("epochs")) for t in members) if e is not None]
        mean, std = _mean_std(values)
        best_mean, best_std = _mean_std(bests)
        row = {
            "level": (members[0].get("levels") or {}).get(factor),
            "n": len(members),
            "n_completed": len(ok),
            "n_failed": len(members) - len(ok),
            "metric_mean": mean, "metric_std": std, "metric_n": len(values),
            "best_mean": best_mean, "best_std": best_std, "best_n": len(bests),
            "epochs_mean": float(np.mean(epochs)) if epochs else None,
        }
        if baseline is not None:
            row["is_baseline"] = level == base_key
            if not row["is_baseline"]:
                row.update(_paired_diff(members, groups[base_key], metric))
        rows.append(row)
    return rows


def best_configurations(trials: Sequence[Mapping], metric: str = "val/best_acc1",
                        mode: str = "max", top: int = 5) -> list[dict]:
    """The ``top`` non-failed trials ranked by final ``metric``.

    Each entry: rank, trial_id, name, seed, status, epochs, value, levels,
    params, final. Trials without the metric are not ranked; ties keep input
    order.
    """
    _check_mode(mode)
    scored = [(v, i, t) for i, t in enumerate(trials)
              if not _failed(t) and (v := _final(t, metric)) is not None]
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
