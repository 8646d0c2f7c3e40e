"""The study report as plain text that also renders as markdown."""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

from .stats import (
    _NA,
    COMPLETED,
    FAILED,
    STOPPED,
    _check_mode,
    _failed,
    _find_level,
    _fmt_num,
    _fmt_value,
    _group_by_level,
    _number,
    best_configurations,
    level_table,
)


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
