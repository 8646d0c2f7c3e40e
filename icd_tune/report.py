"""Turns finished trials into reports: text tables, Parquet files and plots.

Everything here works on plain records (see ``level_table`` for the trial
record layout), so reports can be rebuilt offline from saved results without
Ray, MLflow or torch installed. Statistics follow the ablation protocol: each
level is run over several seeds, levels are summarised by mean +- sample std
over seeds, and a level is compared with the baseline by differences paired
on the seed, which cancels the seed's shared effect (data order, init).

Trial record::

    {"trial_id": "a1b2_00003", "name": "invariance_weight=0.5 seed=1",
     "levels": {"invariance_weight": 0.5}, "params": {"loss.invariance_weight": 0.5, ...},
     "seed": 1, "status": "completed" | "stopped" | "failed", "epochs": 12,
     "final": {"test/acc1": 71.2, "val/best_acc1": 70.5, ...}, "error": None | "..."}

History rows: ``{"trial_id": ..., "epoch": 1, "train/loss": ..., "val/acc1": ...}``.
"""

from __future__ import annotations

import json
import math
import numbers
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from scipy import stats

__all__ = [
    "level_table",
    "best_configurations",
    "render_report",
    "write_parquet",
    "plot_factor",
    "plot_learning_curves",
    "write_report",
    "use_log_axis",
]

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
# tables


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


def _md_cell(text: str) -> str:
    # A literal pipe would split a markdown table cell.
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_table(headers: Sequence[str], rows: Sequence[Sequence[str]],
              right: Sequence[bool]) -> str:
    """A pipe table padded to fixed widths, so it reads in a terminal as is."""
    cells = [[_md_cell(h) for h in headers]] + [[_md_cell(c) for c in r] for r in rows]
    widths = [max(3, *(len(r[i]) for r in cells)) for i in range(len(headers))]

    def line(row):
        parts = [c.rjust(w) if r else c.ljust(w) for c, w, r in zip(row, widths, right)]
        return "| " + " | ".join(parts) + " |"

    sep = "|" + "|".join(("-" * (w + 1) + ":") if r else ("-" * (w + 2))
                         for w, r in zip(widths, right)) + "|"
    return "\n".join([line(cells[0]), sep] + [line(r) for r in cells[1:]])


def _fmt_mean_std(mean, std, n, expected) -> str:
    if mean is None:
        return _NA
    text = _fmt_num(mean) + (f" +- {_fmt_num(std)}" if std is not None else " +- n/a")
    # Flag means over fewer trials than ran OK (some did not report the metric).
    return text + (f" (n={n})" if n != expected else "")


def _fmt_diff(row: Mapping) -> str:
    if row.get("is_baseline"):
        return "(baseline)"
    n = row.get("diff_n", 0)
    if n == 0:
        return "n/a (no paired seeds)"
    mean = _fmt_num(row["diff_mean"], signed=True)
    if n == 1:
        return f"{mean} [CI undefined: 1 pair]"
    return (f"{mean} [{_fmt_num(row['diff_ci_low'], signed=True)}, "
            f"{_fmt_num(row['diff_ci_high'], signed=True)}] (n={n})")


def _baseline_for(baseline: Any, factor: str) -> Any:
    # One baseline value may serve every factor, or a dict names one per factor.
    if isinstance(baseline, Mapping):
        return baseline.get(factor)
    return baseline


def _factor_section(trials, factor, baseline, metric, best_metric, mode) -> list[str]:
    lines = [f"## Factor: {factor}", ""]
    groups, missing = _group_by_level(trials, factor)
    if not groups:
        return lines + [f"No trial has a level for '{factor}'.", ""]
    note = None
    if baseline is not None:
        try:
            _find_level(groups, baseline)
        except ValueError:
            note = f"Baseline {_fmt_value(baseline)!s} is not a level of '{factor}'; no differences shown."
            baseline = None
    rows = level_table(trials, factor, metric=metric, best_metric=best_metric, baseline=baseline)

    headers = ["level", "n", "ok", f"{metric} mean +- std", f"{best_metric} mean +- std", "epochs"]
    right = [False, True, True, True, True, True]
    if baseline is not None:
        headers.append(f"diff vs {_fmt_value(baseline)} [95% CI]")
        right.append(False)
    body = []
    for row in rows:
        cells = [_fmt_value(row["level"]), str(row["n"]), str(row["n_completed"]),
                 _fmt_mean_std(row["metric_mean"], row["metric_std"], row["metric_n"], row["n_completed"]),
                 _fmt_mean_std(row["best_mean"], row["best_std"], row["best_n"], row["n_completed"]),
                 _fmt_num(row["epochs_mean"], 1)]
        if baseline is not None:
            cells.append(_fmt_diff(row))
        body.append(cells)
    lines.append(_md_table(headers, body, right))
    lines.append("")

    scored = [r for r in rows if r["metric_mean"] is not None]
    if len(scored) > 1:
        pick = max if mode == "max" else min
        best = pick(scored, key=lambda r: r["metric_mean"])
        lines.append(f"Best level by mean {metric} ({mode}): {_fmt_value(best['level'])}")
    if note:
        lines.append(note)
    if missing:
        lines.append(f"{len(missing)} trial(s) without a level for '{factor}' are not in this table.")
    if lines[-1] != "":
        lines.append("")
    return lines


def _varying_params(trials: Sequence[Mapping]) -> list[str]:
    """Params whose value differs between trials: the searched ones."""
    seen: dict[str, set] = {}
    order: list[str] = []
    for trial in trials:
        params = trial.get("params") or {}
        for key in params:
            if key not in seen:
                seen[key] = set()
                order.append(key)
    for key in order:
        for trial in trials:
            seen[key].add(repr((trial.get("params") or {}).get(key)))
    return [k for k in order if len(seen[k]) > 1]


def _best_section(trials, metric, best_metric, mode, top) -> list[str]:
    rank_metric = best_metric
    ranked = best_configurations(trials, metric=rank_metric, mode=mode, top=top)
    fallback = ""
    if not ranked and rank_metric != metric:
        # Ranking by validation keeps the test set out of model selection; fall
        # back to the report metric only when no trial has a validation value.
        rank_metric = metric
        ranked = best_configurations(trials, metric=rank_metric, mode=mode, top=top)
        fallback = f" (no trial reported {best_metric})"
    lines = [f"## Best configurations (top {top} by {rank_metric}, {mode}){fallback}", ""]
    if not ranked:
        return lines + ["No non-failed trial reported the metric.", ""]
    varying = _varying_params([t for t in trials if not _failed(t)])
    for entry in ranked:
        scores = [f"{rank_metric}={_fmt_num(entry['value'])}"]
        if metric != rank_metric:
            scores.append(f"{metric}={_fmt_num(_number(entry['final'].get(metric)))}")
        epochs = entry["epochs"]
        lines.append(f"{entry['rank']}. {entry['trial_id']} {entry['name'] or ''}".rstrip()
                     + f": {', '.join(scores)} ({entry['status']}, {_fmt_value(epochs)} epochs,"
                     + f" seed {_fmt_value(entry['seed'])})")
        shown = {k: entry["params"][k] for k in varying if k in entry["params"]}
        if shown:
            lines.append("   " + ", ".join(f"{k}={_fmt_value(v)}" for k, v in shown.items()))
    lines.append("")
    return lines


def _error_lines(error: Any, keep: int = 5, width: int = 200) -> list[str]:
    # A Ray error is a traceback whose useful part is at the end.
    text = str(error) if error is not None else "(no error message)"
    lines = [l.rstrip() for l in text.splitlines() if l.strip()] or ["(no error message)"]
    cut = len(lines) > keep
    lines = lines[-keep:]
    lines = [l if len(l) <= width else l[: width - 3] + "..." for l in lines]
    return (["..."] if cut else []) + lines


def render_report(study_name: str, trials: Sequence[Mapping], factors: Iterable[str] | None,
                  baseline: Any = None, metric: str = "test/acc1", mode: str = "max",
                  best_metric: str = "val/best_acc1") -> str:
    """Plain-text, markdown-compatible report of a study.

    ``baseline`` is a level value applied to every factor that has it, or a
    dict factor -> level. Best configurations are ranked by ``best_metric``
    (validation) so the test metric is only reported, never selected on.
    """
    _check_mode(mode)
    trials = list(trials)
    factors = list(factors or [])
    statuses = [t.get("status") for t in trials]
    n_done, n_stop, n_fail = (statuses.count(s) for s in (COMPLETED, STOPPED, FAILED))
    other = len(trials) - n_done - n_stop - n_fail

    counts = f"Trials: {len(trials)} total | {n_done} completed | {n_stop} stopped early | {n_fail} failed"
    if other:
        counts += f" | {other} other status"
    lines = [f"# Study report: {study_name}", "", counts,
             f"Metric: final {metric} (mode {mode}); also {best_metric}.", ""]
    if factors:
        lines.append("Columns: n = trials, ok = not failed; mean +- sample std (ddof=1) over the ok "
                     "trials' seeds; diff = paired by seed with a 95% t interval.")
        if n_stop:
            lines.append("Early-stopped trials enter the means with their last reported values.")
        lines.append("")

    for factor in factors:
        lines += _factor_section(trials, factor, _baseline_for(baseline, factor),
                                 metric, best_metric, mode)

    lines += _best_section(trials, metric, best_metric, mode, top=3 if factors else 5)

    failed = [t for t in trials if _failed(t)]
    lines += [f"## Failed trials ({len(failed)})", ""]
    if not failed:
        lines.append("None.")
    for trial in failed:
        head = f"- {trial.get('trial_id')}"
        if trial.get("name"):
            head += f" ({trial['name']})"
        if trial.get("epochs") is not None:
            head += f", after {_fmt_value(trial['epochs'])} epoch(s)"
        err = _error_lines(trial.get("error"))
        lines.append(f"{head}: {err[0]}")
        lines += [f"    {l}" for l in err[1:]]
    return "\n".join(lines).rstrip() + "\n"


# --------------------------------------------------------------------------
# parquet


def _column(values: list) -> pa.Array:
    """An Arrow column that never fails on mixed values.

    A temperature level can be "learnable" in one trial and 0.1 in another;
    such a column, and any other Arrow cannot type, is stored as strings.
    """
    present = [v for v in values if v is not None]
    has_str = any(isinstance(v, str) for v in present)
    has_num = any(isinstance(v, numbers.Number) for v in present)
    if not (has_str and has_num):
        try:
            return pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
            pass

    def as_text(v):
        if v is None or isinstance(v, str):
            return v
        if isinstance(v, (list, tuple, dict)):
            return json.dumps(v, default=str)
        return str(v)

    return pa.array([as_text(v) for v in values], type=pa.string())


def _table(records: list[dict], columns: list[str], types: Mapping[str, pa.DataType]) -> pa.Table:
    arrays = {}
    for name in columns:
        arr = _column([r.get(name) for r in records])
        # Empty or all-null fixed columns keep a real type so files concatenate.
        if pa.types.is_null(arr.type) and name in types:
            arr = arr.cast(types[name])
        arrays[name] = arr
    return pa.table(arrays) if arrays else pa.table({})


def _ordered_keys(dicts: Iterable[Mapping | None]) -> list[str]:
    seen: dict[str, None] = {}
    for d in dicts:
        for key in d or {}:
            seen.setdefault(key, None)
    return list(seen)


_TRIAL_FIXED = {"trial_id": pa.string(), "name": pa.string(), "seed": pa.int64(),
                "status": pa.string(), "epochs": pa.int64(), "error": pa.string()}


def write_parquet(trials: Sequence[Mapping], history: Sequence[Mapping],
                  out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``trials.parquet`` (one row per trial) and ``history.parquet``.

    Trial columns: trial_id, name, seed, status, epochs, error, then
    ``level.<factor>``, ``param.<dotted>`` and ``final.<metric>`` in first-seen
    order. History has one row per (trial_id, epoch); repeated reports for the
    same epoch are merged, later values winning.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    trials = list(trials)

    groups = [("level.", "levels"), ("param.", "params"), ("final.", "final")]
    columns = list(_TRIAL_FIXED)
    for prefix, field in groups:
        columns += [prefix + k for k in _ordered_keys(t.get(field) for t in trials)]
    records = []
    for trial in trials:
        rec = {k: trial.get(k) for k in _TRIAL_FIXED}
        for prefix, field in groups:
            rec.update({prefix + k: v for k, v in (trial.get(field) or {}).items()})
        records.append(rec)
    trials_path = out_dir / "trials.parquet"
    pq.write_table(_table(records, columns, _TRIAL_FIXED), trials_path)

    merged: dict[Any, dict] = {}
    for i, row in enumerate(history or []):
        epoch = row.get("epoch")
        key = (_hashable(row.get("trial_id")), epoch) if epoch is not None else ("__row__", i)
        merged.setdefault(key, {}).update(row)
    rows = list(merged.values())
    hist_columns = ["trial_id", "epoch"] + [k for k in _ordered_keys(rows) if k not in ("trial_id", "epoch")]
    history_path = out_dir / "history.parquet"
    pq.write_table(_table(rows, hist_columns, {"trial_id": pa.string(), "epoch": pa.int64()}),
                   history_path)
    return trials_path, history_path


# --------------------------------------------------------------------------
# plots


def _pyplot():
    # Agg is chosen here, not at import, so importing this module never
    # changes the backend of an interactive session that only builds tables.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def use_log_axis(levels: Iterable[Any]) -> bool:
    """Whether numeric levels read better on a log axis.

    True when all levels are positive and either span a decade or more, or
    (with three or more levels) step by a roughly constant ratio above 1.5,
    as in a 0.25/0.5/1/2 sweep.
    """
    values = [_number(v) for v in levels]
    if not values or any(v is None for v in values):
        return False
    distinct = sorted(set(values))
    if len(distinct) < 2 or distinct[0] <= 0:
        return False
    if distinct[-1] / distinct[0] >= 10:
        return True
    if len(distinct) < 3:
        return False
    ratios = np.asarray(distinct[1:]) / np.asarray(distinct[:-1])
    return bool(ratios.min() > 1.5 and ratios.max() / ratios.min() <= 1.5)


def _crowded(values: Sequence[float]) -> bool:
    # Levels like 0, 0.01, 0.1, 1 on a linear axis would print tick labels on
    # top of each other; such sweeps are shown evenly spaced instead.
    distinct = sorted(set(values))
    if len(distinct) < 3:
        return False
    span = distinct[-1] - distinct[0]
    return min(np.diff(distinct)) < 0.05 * span


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


def plot_factor(trials: Sequence[Mapping], factor: str, metric: str, path: str | Path,
                baseline: Any = None) -> Path:
    """Plot final ``metric`` against the levels of ``factor``; returns the PNG path.

    Means with std error bars over non-failed seeds, each seed as a faint
    point, a dashed line at the baseline level's mean when given. String
    levels (e.g. "learnable") put every level on an evenly spaced axis.
    """
    plt = _pyplot()
    groups, _ = _group_by_level(trials, factor)
    levels = [(g[0].get("levels") or {}).get(factor) for g in groups.values()]
    values = {k: [v for v in (_final(t, metric) for t in g if not _failed(t)) if v is not None]
              for k, g in groups.items()}
    keys = list(groups)

    numeric = bool(keys) and all(_is_numeric_level(l) for l in levels)
    log = numeric and use_log_axis(levels)
    categorical = not numeric or (not log and _crowded([_number(l) for l in levels]))
    if categorical:
        # Numbers first in ascending order, then named levels as they came.
        nums = sorted((i for i, l in enumerate(levels) if _is_numeric_level(l)),
                      key=lambda i: _number(levels[i]))
        order = nums + [i for i, l in enumerate(levels) if not _is_numeric_level(l)]
        xpos = {keys[i]: float(p) for p, i in enumerate(order)}
    else:
        order = sorted(range(len(keys)), key=lambda i: _number(levels[i]))
        xpos = {keys[i]: _number(levels[i]) for i in order}

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    try:
        ordered = [keys[i] for i in order]
        with_data = [k for k in ordered if values[k]]
        if not with_data:
            ax.text(0.5, 0.5, f"no non-failed trial reported {metric}", ha="center",
                    va="center", transform=ax.transAxes, color="0.4")
        for k in with_data:
            n = len(values[k])
            # A small deterministic spread keeps equal seeds visible on a
            # categorical axis; numeric positions must stay exact.
            jitter = np.linspace(-0.08, 0.08, n) if categorical and n > 1 else np.zeros(n)
            ax.scatter(xpos[k] + jitter, values[k], s=14, color="0.35", alpha=0.35, zorder=2,
                       label="seeds" if k == with_data[0] else None)
        if with_data:
            xs = [xpos[k] for k in with_data]
            means = [float(np.mean(values[k])) for k in with_data]
            errs = [float(np.std(values[k], ddof=1)) if len(values[k]) > 1 else 0.0 for k in with_data]
            ax.errorbar(xs, means, yerr=errs, fmt="o" if categorical else "o-", color="C0",
                        capsize=4, lw=1.5, ms=6, zorder=3, label="mean ± std")

        base_key = None
        if baseline is not None and keys:
            try:
                base_key = _find_level(keys, baseline)
            except ValueError:
                base_key = None
        if base_key is not None and values[base_key]:
            base_mean = float(np.mean(values[base_key]))
            ax.axhline(base_mean, ls="--", color="C3", lw=1.2, zorder=1,
                       label=f"baseline {factor}={_fmt_value(levels[keys.index(base_key)])}"
                             f" ({base_mean:.2f})")

        if log:
            ax.set_xscale("log")
        from matplotlib.ticker import NullFormatter

        ticks = [xpos[k] for k in ordered]
        labels = [f"{_fmt_value(levels[keys.index(k)])}\n(n={len(values[k])})" for k in ordered]
        ax.set_xticks(ticks)
        ax.set_xticklabels(labels, rotation=30 if len(ticks) > 6 else 0, fontsize=9)
        ax.xaxis.set_minor_formatter(NullFormatter())
        if categorical and ticks:
            ax.set_xlim(min(ticks) - 0.5, max(ticks) + 0.5)

        xlabel = factor + (" (log scale)" if log else "")
        if categorical and numeric:
            xlabel += " (evenly spaced)"
        ax.set_xlabel(xlabel)
        ax.set_ylabel(metric)
        ax.set_title(f"{metric} vs {factor}\nmean ± std over seeds, failed trials excluded",
                     fontsize=10)
        ax.grid(True, alpha=0.3)
        if with_data:
            ax.legend(fontsize=8, loc="best")
        fig.tight_layout()
        return _save(fig, path)
    finally:
        plt.close(fig)


def _series(rows: Sequence[Mapping], key: str) -> tuple[list, list]:
    pts = sorted((e, v) for r in rows
                 if (e := _number(r.get("epoch"))) is not None and (v := _number(r.get(key))) is not None)
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_learning_curves(history: Sequence[Mapping], trials: Sequence[Mapping], path: str | Path,
                         metric: str = "val/acc1") -> Path:
    """One line per trial of ``metric`` over epochs, plus train/loss if logged.

    Seeds of the same level share a colour and differ in line style, so the
    level effect stands out over seed noise. Legend only with <= 12 trials.
    """
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    by_trial: dict[Any, list] = {}
    for row in history or []:
        by_trial.setdefault(_hashable(row.get("trial_id")), []).append(row)
    info = {_hashable(t.get("trial_id")): t for t in trials}
    order = [k for k in info if k in by_trial] + [k for k in by_trial if k not in info]

    def group_of(tid):
        levels = (info.get(tid) or {}).get("levels") or {}
        return tuple(sorted((str(k), repr(v)) for k, v in levels.items())) if levels else ("id", repr(tid))

    groups = list(dict.fromkeys(group_of(t) for t in order))
    n_groups = max(len(groups), 1)
    if n_groups <= 10:
        palette = [plt.get_cmap("tab10")(i) for i in range(n_groups)]
    elif n_groups <= 20:
        palette = [plt.get_cmap("tab20")(i) for i in range(n_groups)]
    else:
        palette = list(plt.get_cmap("viridis")(np.linspace(0, 0.95, n_groups)))
    styles = ["-", "--", ":", "-."]

    has_loss = any(_number(r.get("train/loss")) is not None for r in history or [])
    fig, axes = plt.subplots(1, 2 if has_loss else 1, figsize=(11 if has_loss else 6.4, 4.2),
                             squeeze=False)
    axes = axes[0]
    try:
        used: dict[Any, int] = {}
        handles, labels = [], []
        drawn = set()
        for tid in order:
            trial = info.get(tid) or {}
            group = group_of(tid)
            within = used.get(group, 0)
            used[group] = within + 1
            color = palette[groups.index(group)]
            style = styles[within % len(styles)]
            failed = _failed(trial)
            label = str(trial.get("name") or tid)
            if failed:
                label += " (failed)"
            elif trial.get("status") == STOPPED:
                label += " (stopped)"
            line = None
            for ax, key in zip(axes, [metric, "train/loss"]):
                xs, ys = _series(by_trial[tid], key)
                if xs:
                    (line,) = ax.plot(xs, ys, style, color=color, lw=1.4, alpha=0.45 if failed else 0.9,
                                      marker="o" if len(xs) == 1 else None, ms=4)
                    drawn.add(tid)
            if line is not None:
                handles.append(line)
                labels.append(label)

        for ax, key in zip(axes, [metric, "train/loss"]):
            ax.set_xlabel("epoch")
            ax.set_ylabel(key)
            ax.set_title(key, fontsize=10)
            ax.grid(True, alpha=0.3)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if not ax.lines:
                ax.text(0.5, 0.5, f"no {key} in history", ha="center", va="center",
                        transform=ax.transAxes, color="0.4")
        if has_loss:
            # A diverging run can reach losses orders of magnitude above the
            # rest; a log axis keeps the healthy curves readable.
            ys = [y for l in axes[1].lines for y in l.get_ydata()]
            if ys and min(ys) > 0 and max(ys) / min(ys) > 50:
                axes[1].set_yscale("log")

        if 0 < len(drawn) <= 12:
            fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8,
                       frameon=False)
        fig.suptitle(f"Learning curves ({len(drawn)} trial{'s' if len(drawn) != 1 else ''})", fontsize=11)
        fig.tight_layout()
        return _save(fig, path)
    finally:
        plt.close(fig)


# --------------------------------------------------------------------------
# everything at once


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name)).strip("_") or "factor"


def write_report(out_dir: str | Path, study_name: str, trials: Sequence[Mapping],
                 history: Sequence[Mapping], factors: Iterable[str] | None, baseline: Any = None,
                 metric: str = "test/acc1", mode: str = "max") -> dict[str, Path]:
    """Write report.txt, trials/history Parquet, factor plots and learning curves.

    Returns file name -> path (``report.txt``, ``trials.parquet``,
    ``history.parquet``, ``factor_<name>.png`` per factor,
    ``learning_curves.png``). ``baseline`` may be one level for all factors
    or a dict factor -> level.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    trials = list(trials or [])
    history = list(history or [])
    factors = list(factors or [])
    paths: dict[str, Path] = {}

    report = out_dir / "report.txt"
    report.write_text(render_report(study_name, trials, factors, baseline=baseline,
                                    metric=metric, mode=mode), encoding="utf-8")
    paths[report.name] = report
    trials_path, history_path = write_parquet(trials, history, out_dir)
    paths[trials_path.name] = trials_path
    paths[history_path.name] = history_path
    for factor in factors:
        png = plot_factor(trials, factor, metric, out_dir / f"factor_{_safe_name(factor)}.png",
                          baseline=_baseline_for(baseline, factor))
        paths[png.name] = png
    curves = plot_learning_curves(history, trials, out_dir / "learning_curves.png")
    paths[curves.name] = curves
    return paths
