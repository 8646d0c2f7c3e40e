"""Factor and learning-curve plots, written as PNG files."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .stats import (
    STOPPED,
    _completed,
    _failed,
    _final,
    _find_level,
    _fmt_value,
    _group_by_level,
    _hashable,
    _is_numeric_level,
    _number,
)


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


def _factor_axis(keys: list, levels: list) -> tuple[bool, bool, bool, list[int], dict]:
    """Where each level sits on the x axis.

    Returns (numeric, log, categorical, order, xpos): ``order`` lists level
    indices left to right, ``xpos`` maps a level key to its x position.
    """
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
    return numeric, log, categorical, order, xpos


def _draw_level_values(ax, with_data: list, values: Mapping, xpos: Mapping, categorical: bool,
                       metric: str) -> None:
    if not with_data:
        ax.text(0.5, 0.5, f"no completed trial reported {metric}", ha="center",
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


def _draw_baseline(ax, keys: list, levels: list, values: Mapping, factor: str,
                   baseline: Any) -> None:
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


def _set_level_ticks(ax, ticks: list, labels: list, log: bool, categorical: bool) -> None:
    if log:
        ax.set_xscale("log")
    from matplotlib.ticker import NullFormatter

    ax.set_xticks(ticks)
    ax.set_xticklabels(labels, rotation=30 if len(ticks) > 6 else 0, fontsize=9)
    ax.xaxis.set_minor_formatter(NullFormatter())
    if categorical and ticks:
        ax.set_xlim(min(ticks) - 0.5, max(ticks) + 0.5)


def plot_factor(trials: Sequence[Mapping], factor: str, metric: str, path: str | Path,
                baseline: Any = None) -> Path:
    """Plot final ``metric`` against the levels of ``factor``; returns the PNG path.

    Means with std error bars over completed seeds, each seed as a faint
    point, a dashed line at the baseline level's mean when given. String
    levels (e.g. "learnable") put every level on an evenly spaced axis.
    """
    plt = _pyplot()
    groups, _ = _group_by_level(trials, factor)
    levels = [(g[0].get("levels") or {}).get(factor) for g in groups.values()]
    values = {k: [v for v in (_final(t, metric) for t in g if _completed(t)) if v is not None]
              for k, g in groups.items()}
    keys = list(groups)
    numeric, log, categorical, order, xpos = _factor_axis(keys, levels)

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    try:
        ordered = [keys[i] for i in order]
        with_data = [k for k in ordered if values[k]]
        _draw_level_values(ax, with_data, values, xpos, categorical, metric)
        _draw_baseline(ax, keys, levels, values, factor, baseline)

        ticks = [xpos[k] for k in ordered]
        labels = [f"{_fmt_value(levels[keys.index(k)])}\n(n={len(values[k])})" for k in ordered]
        _set_level_ticks(ax, ticks, labels, log, categorical)

        xlabel = factor + (" (log scale)" if log else "")
        if categorical and numeric:
            xlabel += " (evenly spaced)"
        ax.set_xlabel(xlabel)
        ax.set_ylabel(metric)
        ax.set_title(f"{metric} vs {factor}\nmean ± std over seeds, completed trials only",
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



def _curve_group(info: Mapping, tid: Any) -> tuple:
    levels = (info.get(tid) or {}).get("levels") or {}
    return tuple(sorted((str(k), repr(v)) for k, v in levels.items())) if levels else ("id", repr(tid))


def _group_palette(plt, n_groups: int) -> list:
    if n_groups <= 10:
        return [plt.get_cmap("tab10")(i) for i in range(n_groups)]
    if n_groups <= 20:
        return [plt.get_cmap("tab20")(i) for i in range(n_groups)]
    return list(plt.get_cmap("viridis")(np.linspace(0, 0.95, n_groups)))


def _curve_label(trial: Mapping, tid: Any) -> str:
    label = str(trial.get("name") or tid)
    if _failed(trial):
        label += " (failed)"
    elif trial.get("status") == STOPPED:
        label += " (stopped)"
    return label


def _draw_curves(axes, order: list, by_trial: Mapping, info: Mapping, groups: list,
                 palette: list, metric: str) -> tuple[list, list, set]:
    """Plot each trial's curves; returns legend handles, their labels, trials drawn."""
    styles = ["-", "--", ":", "-."]
    used: dict[Any, int] = {}
    handles, labels = [], []
    drawn = set()
    for tid in order:
        trial = info.get(tid) or {}
        group = _curve_group(info, tid)
        within = used.get(group, 0)
        used[group] = within + 1
        color = palette[groups.index(group)]
        style = styles[within % len(styles)]
        failed = _failed(trial)
        line = None
        for ax, key in zip(axes, [metric, "train/loss"]):
            xs, ys = _series(by_trial[tid], key)
            if xs:
                (line,) = ax.plot(xs, ys, style, color=color, lw=1.4, alpha=0.45 if failed else 0.9,
                                  marker="o" if len(xs) == 1 else None, ms=4)
                drawn.add(tid)
        if line is not None:
            handles.append(line)
            labels.append(_curve_label(trial, tid))
    return handles, labels, drawn


def _dress_curve_axes(axes, metric: str, has_loss: bool) -> None:
    from matplotlib.ticker import MaxNLocator

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


def plot_learning_curves(history: Sequence[Mapping], trials: Sequence[Mapping], path: str | Path,
                         metric: str = "val/acc1") -> Path:
    """One line per trial of ``metric`` over epochs, plus train/loss if logged.

    Seeds of the same level share a colour and differ in line style, so the
    level effect stands out over seed noise. Legend only with <= 12 trials.
    """
    plt = _pyplot()
    by_trial: dict[Any, list] = {}
    for row in history or []:
        by_trial.setdefault(_hashable(row.get("trial_id")), []).append(row)
    info = {_hashable(t.get("trial_id")): t for t in trials}
    order = [k for k in info if k in by_trial] + [k for k in by_trial if k not in info]
    groups = list(dict.fromkeys(_curve_group(info, t) for t in order))
    palette = _group_palette(plt, max(len(groups), 1))

    has_loss = any(_number(r.get("train/loss")) is not None for r in history or [])
    fig, axes = plt.subplots(1, 2 if has_loss else 1, figsize=(11 if has_loss else 6.4, 4.2),
                             squeeze=False)
    axes = axes[0]
    try:
        handles, labels, drawn = _draw_curves(axes, order, by_trial, info, groups, palette, metric)
        _dress_curve_axes(axes, metric, has_loss)
        if 0 < len(drawn) <= 12:
            fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8,
                       frameon=False)
        fig.suptitle(f"Learning curves ({len(drawn)} trial{'s' if len(drawn) != 1 else ''})", fontsize=11)
        fig.tight_layout()
        return _save(fig, path)
    finally:
        plt.close(fig)
