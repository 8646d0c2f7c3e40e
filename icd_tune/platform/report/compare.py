"""A comparison's report: each method tuned and at its default, the reference against each, what tuning cost.

Input: the phases' trial records (``report`` layout). The confirm phase's trials carry the
level ``method`` = ``<label>`` (the search's best configuration) or ``<label> (default)``.
Only completed trials enter a mean or a difference; differences are paired by seed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from .stats import (
    MIN_PAIRS,
    _completed,
    _failed,
    _final,
    _fmt_num,
    _fmt_value,
    _mean_std,
    _paired_diff,
    best_configurations,
    holm_adjust,
)
from .tables import fmt_mean_std, fmt_p, md_table

COMPARE_REPORT, COMPARE_JSON, COMPARE_PLOT = "compare_report.txt", "compare.json", "compare.png"


def best_overrides(trials: Sequence[Mapping], search) -> dict[str, Any]:
    """The search's best completed trial (on its validation metric) as overrides of its space's keys.

    ASHA-stopped trials ran fewer epochs than the confirm phase will; one is taken only when
    no trial of the search completed.
    """
    settings = search.settings
    ranked = (best_configurations(trials, settings.metric, settings.metric_mode, top=1, statuses=("completed",))
              or best_configurations(trials, settings.metric, settings.metric_mode, top=1))
    if not ranked:
        failed = sum(_failed(t) for t in trials)
        raise ValueError(f"no trial of {search.name} reported {settings.metric} ({failed} of {len(trials)} failed)")
    params = ranked[0]["params"]
    return {key: params[key] for key in search.space if key in params}


def _arm_trials(confirm: Sequence[Mapping], arm) -> tuple[list, list]:
    """A method's confirm trials: tuned (its label) and default (``study.compare.Arm.default_label``)."""
    tuned = [t for t in confirm if (t.get("levels") or {}).get("method") == arm.label]
    default = [t for t in confirm if (t.get("levels") or {}).get("method") == arm.default_label]
    return tuned, default


def _values(trials: Sequence[Mapping], metric: str) -> list[float]:
    return [v for v in (_final(t, metric) for t in trials if _completed(t)) if v is not None]


def _epochs(trials: Sequence[Mapping]) -> int:
    return int(sum(t.get("epochs") or 0 for t in trials))


def summarise(study, phases: Mapping[str, Mapping], best: Mapping[str, Mapping], smoke: bool = False) -> dict:
    """The comparison's numbers: per method tuned/default, the reference's paired differences (Holm), costs."""
    comparison, settings = study.compare, study.settings
    metric = settings.report_metric
    confirm = phases["confirm"]["trials"]
    methods = []
    for arm in comparison.arms:
        search = phases.get(f"search-{arm.slug}", {}).get("trials", [])
        tuned, default = _arm_trials(confirm, arm)
        same = not default  # the search's best was the default: one arm stands for both
        default = default or tuned
        t_mean, t_std = _mean_std(_values(tuned, metric))
        d_mean, d_std = _mean_std(_values(default, metric))
        ranked = best_configurations(search, arm.search.settings.metric, arm.search.settings.metric_mode, top=1)
        methods.append({
            "label": arm.label, "method": arm.method, "budget": arm.budget(),
            "tuned": {"mean": t_mean, "std": t_std, "n": len(_values(tuned, metric)), "trials": len(tuned)},
            "default": {"mean": d_mean, "std": d_std, "n": len(_values(default, metric)), "trials": len(default)},
            "tuning_gain": _paired_diff(tuned, default, metric), "best_is_default": same,
            "best": dict(best.get(arm.label, {})),
            "default_config": arm.default_config(),
            "best_search_value": ranked[0]["value"] if ranked else None,
            "search": {"trials": len(search), "completed": sum(t.get("status") == "completed" for t in search),
                       "stopped": sum(t.get("status") == "stopped" for t in search),
                       "failed": sum(_failed(t) for t in search), "trial_epochs": _epochs(search)},
            "confirm_trial_epochs": _epochs(tuned) + (0 if same else _epochs(default)),
        })
    ref_tuned, _ = _arm_trials(confirm, comparison.arm(comparison.reference))
    against = []
    for arm in comparison.arms:
        if arm.label != comparison.reference:
            other, _ = _arm_trials(confirm, arm)
            against.append({"method": arm.label, **_paired_diff(ref_tuned, other, metric)})
    family = [row for row in against if row["informative"] and row["p_value"] is not None]
    for row, adjusted in zip(family, holm_adjust([r["p_value"] for r in family])):
        row["p_holm"], row["holm_m"] = adjusted, len(family)
    return {"study": study.name, "reference": comparison.reference, "metric": metric,
            "selection_metric": settings.metric, "seeds": list(comparison.seeds),
            "unequal_budgets": comparison.unequal_budgets(), "methods": methods, "reference_against": against,
            "smoke": smoke}


def _config_text(config: Mapping[str, Any]) -> str:
    return " ".join(f"{k.rsplit('.', 1)[-1]}={_fmt_value(v)}" for k, v in config.items()) or "(no keys searched)"


def _diff_text(row: Mapping, signed_label: str = "") -> str:
    n = row.get("diff_n", 0)
    if not n:
        return "n/a (no paired seeds)"
    mean = _fmt_num(row["diff_mean"], signed=True)
    if not row.get("informative"):
        return f"{mean} (n={n}; fewer than {MIN_PAIRS} pairs, no interval)"
    return f"{mean} [{_fmt_num(row['diff_ci_low'], signed=True)}, {_fmt_num(row['diff_ci_high'], signed=True)}] (n={n})"


def render_compare(summary: Mapping) -> str:
    ref, metric = summary["reference"], summary["metric"]
    methods = summary["methods"]
    lines = []
    if summary.get("smoke"):
        lines.append("SMOKE RUN: no search ran; each method's default trained once, briefly, on this machine. These "
                     "numbers check the pipeline and say nothing about the methods.")
    elif summary["unequal_budgets"]:
        lines.append("UNEQUAL TUNING BUDGETS (compare.allow_unequal_budgets: true): the methods were not tuned "
                     "alike, so their differences mix method and budget: "
                     + "; ".join(f"{m['label']} {_budget_text(m['budget'])}" for m in methods))
    lines += [f"# Comparison {summary['study']}: {', '.join(m['label'] for m in methods)} (reference {ref})", ""]
    if not summary["unequal_budgets"] and not summary.get("smoke"):
        lines.append(f"Every method was tuned with the same budget: {_budget_text(methods[0]['budget'])}, "
                     f"Optuna on {summary['selection_metric']}; then its best configuration and its default were "
                     f"retrained on seeds {', '.join(str(s) for s in summary['seeds'])}.")
    lines += [f"Reported: {metric}, mean +- std over seeds (completed trials); never selected on.", ""]
    rows = [[m["label"] + (" (reference)" if m["label"] == ref else ""),
             fmt_mean_std(m["tuned"]["mean"], m["tuned"]["std"], m["tuned"]["n"], m["tuned"]["trials"]),
             fmt_mean_std(m["default"]["mean"], m["default"]["std"], m["default"]["n"], m["default"]["trials"]),
             "0 (the search's best is the default)" if m["best_is_default"] else _diff_text(m["tuning_gain"]),
             _fmt_num(m["best_search_value"])] for m in methods]
    lines += ["## Each method tuned and at its default", "",
              md_table(["method", "tuned", "default", "tuning gain, tuned - default [95% CI]",
                        f"best {summary['selection_metric']} in search"], rows, [False, True, True, False, True]), ""]
    body = [[r["method"], _diff_text(r), _fmt_num(r.get("diff_dz"), signed=True),
             fmt_p(r.get("p_value")) if r.get("informative") else "-",
             fmt_p(r.get("p_holm")) if r.get("informative") else "-"] for r in summary["reference_against"]]
    m = len([r for r in summary["reference_against"] if r.get("p_holm") is not None])
    lines += [f"## {ref} against each method after tuning ({ref} - method, paired by seed; Holm over {m} "
              f"comparison(s))", "",
              md_table(["method", f"{ref} - method [95% CI]", "d_z", "p", "p (Holm)"], body,
                       [False, False, True, True, True]), ""]
    lines += ["## What tuning chose", ""]
    lines += [f"- {m['label']}: tuned {_config_text(m['best'])}; default {_config_text(m['default_config'])}"
              for m in methods]
    cost = [[m["label"], str(m["search"]["trials"]), str(m["search"]["completed"]), str(m["search"]["stopped"]),
             str(m["search"]["failed"]), str(m["search"]["trial_epochs"]), str(m["confirm_trial_epochs"]),
             str(m["search"]["trial_epochs"] + m["confirm_trial_epochs"])] for m in methods]
    lines += ["", "## Trial-epochs spent", "",
              md_table(["method", "search trials", "completed", "stopped (ASHA)", "failed", "search trial-epochs",
                        "confirm trial-epochs", "total"], cost, [False] + [True] * 7)]
    return "\n".join(lines) + "\n"


def _budget_text(budget: Mapping) -> str:
    asha = budget["asha"]
    rule = (f"ASHA grace {asha['grace_period']} factor {asha['reduction_factor']:g}" if asha.get("enabled")
            else "no ASHA")
    return f"{budget['num_samples']} trials x {budget['epochs']} epochs, {rule}"


def plot_compare(summary: Mapping, path: Path) -> Path:
    """Tuned and default means (+- std) per method, side by side."""
    from .plots import _pyplot

    plt = _pyplot()
    methods = summary["methods"]
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(methods), 3.6))
    xs = range(len(methods))
    for offset, arm, colour in ((-0.18, "tuned", "tab:blue"), (0.18, "default", "tab:gray")):
        means = [m[arm]["mean"] if m[arm]["mean"] is not None else float("nan") for m in methods]
        stds = [m[arm]["std"] or 0.0 for m in methods]
        ax.bar([x + offset for x in xs], means, width=0.34, yerr=stds, capsize=3, color=colour, label=arm)
    values = [m[a]["mean"] for m in methods for a in ("tuned", "default") if m[a]["mean"] is not None]
    if values:
        ax.set_ylim(min(values) - 3, max(values) + 2)
    ax.set_xticks(list(xs), [m["label"] for m in methods])
    ax.set_ylabel(summary["metric"])
    ax.set_title(f"{summary['study']}: tuned vs default, mean +- std over seeds", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_compare_report(folder: Path, study, phases: Mapping[str, Mapping], best: Mapping,
                         smoke: bool = False) -> dict[str, Any]:
    """Writes compare_report.txt, compare.json and compare.png into ``folder``; returns the summary and paths."""
    summary = summarise(study, phases, best, smoke)
    text = render_compare(summary)
    paths = {COMPARE_REPORT: folder / COMPARE_REPORT, COMPARE_JSON: folder / COMPARE_JSON}
    paths[COMPARE_REPORT].write_text(text, encoding="utf-8")
    paths[COMPARE_JSON].write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
    paths[COMPARE_PLOT] = plot_compare(summary, folder / COMPARE_PLOT)
    return {"summary": summary, "text": text, "paths": paths}
