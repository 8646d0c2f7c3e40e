"""The study report as plain text that also renders as markdown."""

from __future__ import annotations

import textwrap
from typing import Any, Iterable, Mapping, Sequence

from .stats import (
    COMPLETED,
    FAILED,
    MIN_PAIRS,
    STOPPED,
    UNFINISHED,
    _check_mode,
    _failed,
    _fmt_num,
    _fmt_value,
    _number,
    best_configurations,
    best_level,
    check_selection_metric,
    level_table,
    selection_label,
)

from .tables import comparison_lines, factor_opening, fmt_mean_std, md_table
from .transfer import transfer_section
from .paper import paper_factor_lines, paper_method_lines, protocol_lines

_AT_BEST_VAL = "_at_best_val"


def _last_epoch_name(metric: str) -> str | None:
    # test/acc1_at_best_val is reported beside test/acc1, the last epoch's
    # value, so a reader sees what selecting on validation changed.
    if metric.endswith(_AT_BEST_VAL):
        return metric[: -len(_AT_BEST_VAL)]
    return None


def _baseline_for(baseline: Any, factor: str) -> Any:
    # One baseline value may serve every factor, or a dict names one per factor.
    if isinstance(baseline, Mapping):
        return baseline.get(factor)
    return baseline


def _level_cells(row: Mapping, also: Sequence[str]) -> list[str]:
    done = row["n_completed"]
    cells = [_fmt_value(row["level"]), str(row["n"]), str(done), str(row["n_stopped"]),
             str(row["n_failed"]),
             fmt_mean_std(row["select_mean"], row["select_std"], row["select_n"], done),
             fmt_mean_std(row["metric_mean"], row["metric_std"], row["metric_n"], done)]
    for name in also:
        s = row["also"][name]
        cells.append(fmt_mean_std(s["mean"], s["std"], s["n"], done))
    return cells + [_fmt_num(row["epochs_mean"], 1)]


def _factor_section(trials, factor, baseline, metric, selection_metric, mode) -> list[str]:
    lines, groups, missing, _, note = factor_opening(trials, factor, baseline)
    if groups is None:
        return lines
    if note:
        baseline = None
    also = [n for n in [_last_epoch_name(metric)] if n]
    rows = level_table(trials, factor, metric=metric, baseline=baseline,
                       selection_metric=selection_metric, also=also)
    label = selection_label(trials, selection_metric)

    headers = ["level", "n", "completed", "stopped", "failed", label, metric,
               *[f"{n} (last epoch)" for n in also], "epochs"]
    right = [False] + [True] * (len(headers) - 1)
    lines += [md_table(headers, [_level_cells(r, also) for r in rows], right), ""]

    best = best_level(rows, mode)
    if best is not None:
        lines.append(f"Best level by mean {label} (selected on validation, {mode}): "
                     f"{_fmt_value(best['level'])}; its {metric}: "
                     + fmt_mean_std(best["metric_mean"], best["metric_std"],
                                     best["metric_n"], best["n_completed"]))
    elif len(rows) > 1:
        lines.append(f"No best level: fewer than two levels have a completed trial with {label}.")
    if not any(r["metric_mean"] is not None for r in rows):
        lines.append(f"No completed trial reported {metric}.")
    if note:
        lines.append(note)
    if missing:
        lines.append(f"{len(missing)} trial(s) without a level for '{factor}' are not in this table.")
    if lines[-1] != "":
        lines.append("")
    if baseline is not None:
        lines += comparison_lines(rows, factor, baseline, metric)
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


def _best_section(trials, metric, selection_metric, mode, top) -> list[str]:
    label = selection_label(trials, selection_metric)
    ranked = best_configurations(trials, metric=selection_metric, mode=mode, top=top,
                                 statuses=[COMPLETED])
    lines = [f"## Best configurations (top {top} by {label}, {mode}; completed trials, "
             "selected on validation)", ""]
    if not ranked:
        # Falling back to a test metric here would select on the test set.
        return lines + [f"No completed trial reported {label}; no configuration is selected.", ""]
    varying = _varying_params([t for t in trials if not _failed(t)])
    reported = [metric] + [n for n in [_last_epoch_name(metric)] if n]
    for entry in ranked:
        scores = [f"{label}={_fmt_num(entry['value'])}"]
        scores += [f"{m}={_fmt_num(_number(entry['final'].get(m)))}" for m in reported]
        epochs = entry["epochs"]
        lines.append(f"{entry['rank']}. {entry['trial_id']} {entry['name'] or ''}".rstrip()
                     + f": {', '.join(scores)} ({entry['status']}, {_fmt_value(epochs)} epochs,"
                     + f" seed {_fmt_value(entry['seed'])})")
        shown = {k: entry["params"][k] for k in varying if k in entry["params"]}
        if shown:
            lines.append("   " + ", ".join(f"{k}={_fmt_value(v)}" for k, v in shown.items()))
    lines.append("")
    return lines


def _levels_text(trial: Mapping) -> str:
    levels = trial.get("levels") or {}
    return ", ".join(f"{k}={_fmt_value(v)}" for k, v in levels.items()) or "-"


def _stopped_section(trials, selection_metric) -> list[str]:
    stopped = [t for t in trials if t.get("status") == STOPPED]
    lines = [f"## Stopped trials ({len(stopped)})", ""]
    if not stopped:
        return lines + ["None.", ""]
    lines += ["Stopped early by the scheduler (ASHA): their values come from fewer epochs, so "
              "they are in no mean, difference or ranking above.", ""]
    headers = ["trial", "level", "seed", "epoch reached", f"last {selection_metric}"]
    body = [[str(t.get("trial_id")), _levels_text(t), _fmt_value(t.get("seed")),
             _fmt_value(t.get("epochs")),
             _fmt_num(_number((t.get("final") or {}).get(selection_metric)))] for t in stopped]
    return lines + [md_table(headers, body, [False, False, True, True, True]), ""]


def _unfinished_section(trials, selection_metric) -> list[str]:
    unfinished = [t for t in trials if t.get("status") == UNFINISHED]
    if not unfinished:
        return []
    lines = [f"## Unfinished trials ({len(unfinished)})", "",
             "Left running or waiting when the run was cut short; --resume continues them. They are in no "
             "mean, difference or ranking above.", ""]
    headers = ["trial", "level", "seed", "epoch reached", f"last {selection_metric}"]
    body = [[str(t.get("trial_id")), _levels_text(t), _fmt_value(t.get("seed")), _fmt_value(t.get("epochs")),
             _fmt_num(_number((t.get("final") or {}).get(selection_metric)))] for t in unfinished]
    return lines + [md_table(headers, body, [False, False, True, True, True]), ""]


def _failed_section(trials) -> list[str]:
    failed = [t for t in trials if _failed(t)]
    lines = [f"## Failed trials ({len(failed)})", ""]
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
    return lines


def _error_lines(error: Any, keep: int = 5, width: int = 200) -> list[str]:
    # A Ray error is a traceback whose useful part is at the end.
    text = str(error) if error is not None else "(no error message)"
    lines = [l.rstrip() for l in text.splitlines() if l.strip()] or ["(no error message)"]
    cut = len(lines) > keep
    lines = lines[-keep:]
    lines = [l if len(l) <= width else l[: width - 3] + "..." for l in lines]
    return (["..."] if cut else []) + lines


def _method_lines(trials, metric, selection_metric, mode, compared: bool) -> list[str]:
    label = selection_label(trials, selection_metric)
    best_of = f" (each trial's best {selection_metric})" if label != selection_metric else ""
    last = _last_epoch_name(metric)
    lines = [f"Selection: on validation only, by {label}{best_of}, mode {mode}; "
             "the test set is reported, never selected on.",
             f"Reported: {metric}"
             + (f" (test at the epoch of best validation), {last} of the last epoch beside it."
                if last else "."),
             "Statistics: completed trials only; stopped and failed trials are listed apart. "
             "Cells: mean +- sample std (ddof=1) over seeds."]
    if compared:
        lines += [
            f"Differences: {metric} paired by seed with the baseline level (shared init and data "
            "order), 95% t interval per comparison, effect size Cohen's d_z = mean / sd of the "
            "paired differences.",
            "Multiplicity: p from two-sided paired t-tests, Holm-Bonferroni adjusted over the "
            "factor's levels compared with the baseline. Holm controls the family-wise error rate "
            "over those comparisons, is uniformly more powerful than Bonferroni and assumes "
            "nothing about their dependence (all share the baseline's seeds).",
            f"Levels with fewer than {MIN_PAIRS} paired seeds get no interval or p-value and are "
            "not in the correction.",
        ]
    # One paragraph per line would run past a terminal's width.
    return [w for line in lines for w in textwrap.wrap(line, 100, subsequent_indent="  ")] + [""]


def render_report(study_name: str, trials: Sequence[Mapping], factors: Iterable[str] | None,
                  baseline: Any = None, metric: str = "test/acc1_at_best_val", mode: str = "max",
                  selection_metric: str = "val/acc1", notice: str | None = None, protocol: str = "validation",
                  extra: Sequence[str] = ()) -> str:
    """Plain-text, markdown-compatible report of a study.

    ``baseline`` is a level value applied to every factor that has it, or a
    dict factor -> level. Levels and configurations are selected on
    ``selection_metric`` in direction ``mode`` (a validation metric; a test
    metric raises ValueError); ``metric`` is the reported test number. Under
    ``protocol`` ``paper`` nothing is selected and ``metric`` is labelled as
    selected on test (``report.paper``). ``extra`` lines follow the factor tables.
    """
    _check_mode(mode)
    paper = protocol == "paper"
    if not paper:
        check_selection_metric(selection_metric)
    trials = list(trials)
    factors = list(factors or [])
    statuses = [t.get("status") for t in trials]
    n_done, n_stop, n_fail, n_left = (statuses.count(s) for s in (COMPLETED, STOPPED, FAILED, UNFINISHED))
    other = len(trials) - n_done - n_stop - n_fail - n_left

    counts = f"Trials: {len(trials)} total | {n_done} completed | {n_stop} stopped early | {n_fail} failed"
    if n_left:
        counts += f" | {n_left} unfinished"
    if other:
        counts += f" | {other} other status"
    compared = bool(factors) and any(_baseline_for(baseline, f) is not None for f in factors)
    lines = [f"# Study report: {study_name}", ""]
    if notice:
        lines += [w for w in textwrap.wrap(notice, 100, subsequent_indent="  ")] + [""]
    lines += protocol_lines(protocol)
    lines += [counts, ""]
    if paper:
        lines += paper_method_lines(metric, compared)
    else:
        lines += _method_lines(trials, metric, selection_metric, mode, compared)

    for factor in factors:
        if paper:
            lines += paper_factor_lines(trials, factor, _baseline_for(baseline, factor), metric)
        else:
            lines += _factor_section(trials, factor, _baseline_for(baseline, factor),
                                     metric, selection_metric, mode)
    lines += transfer_section(trials, factors, md_table)
    lines += list(extra)
    if not paper:
        lines += _best_section(trials, metric, selection_metric, mode, top=3 if factors else 5)
    lines += _stopped_section(trials, selection_metric)
    lines += _unfinished_section(trials, selection_metric)
    lines += _failed_section(trials)
    return "\n".join(lines).rstrip() + "\n"
