"""How much each varied key matters to the selection metric: Optuna's fANOVA and PED-ANOVA evaluators.

Works from plain trial records (``report/__init__.py`` documents them), for a grid
and a search alike: an in-memory Optuna study is built from the trials that ran
their whole budget, with one distribution per varied key spanning the values seen
(numbers as a float range, anything else as categories). Trials stopped early
(ASHA) or failed are left out: their values come from fewer epochs. Optuna is
imported only when importance is computed.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Mapping, Sequence

from .stats import COMPLETED

MIN_TRIALS = 4
IMPORTANCE_FILE = "importance.json"


def key_values(trial: Mapping, keys: Sequence[str], from_levels: bool) -> dict[str, Any] | None:
    source = trial.get("levels" if from_levels else "params") or {}
    values = {k: source.get(k) for k in keys}
    return None if any(v is None for v in values.values()) else values


def _numeric(values: Sequence[Any]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def usable_trials(trials: Sequence[Mapping], keys: Sequence[str], metric: str,
                  from_levels: bool) -> list[tuple[dict, float]]:
    rows = []
    for t in trials:
        value = (t.get("final") or {}).get(metric)
        values = key_values(t, keys, from_levels)
        if t.get("status") == COMPLETED and values is not None and isinstance(value, (int, float)) \
                and math.isfinite(value):
            rows.append((values, float(value)))
    return rows


def distributions(rows: list[tuple[dict, float]], keys: Sequence[str]) -> dict[str, Any]:
    """One Optuna distribution per key that takes two or more values in ``rows``."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    out = {}
    for key in keys:
        seen = [values[key] for values, _ in rows]
        distinct = sorted(set(seen), key=str)
        if len(distinct) < 2:
            continue
        if _numeric(distinct):
            out[key] = FloatDistribution(float(min(distinct)), float(max(distinct)))
        else:
            out[key] = CategoricalDistribution([v if isinstance(v, (int, float, str, bool)) else str(v)
                                                for v in distinct])
    return out


def compute_importance(trials: Sequence[Mapping], keys: Sequence[str], metric: str, mode: str,
                       from_levels: bool) -> dict:
    """{"metric", "mode", "trials" (how many it rests on), "left_out", "keys", "importance": {evaluator: {key: share}},
    "reason": why none was computed, or None}."""
    rows = usable_trials(trials, keys, metric, from_levels)
    out = {"metric": metric, "mode": mode, "trials": len(rows), "left_out": len(trials) - len(rows),
           "keys": [], "importance": {}, "reason": None}
    if len(keys) < 2:
        out["reason"] = (f"the study varies {'one key' if keys else 'no key'}"
                         f"{' (' + keys[0] + ')' if keys else ''}; importance compares two or more")
        return out
    if len(rows) < MIN_TRIALS:
        out["reason"] = f"{len(rows)} trials ran their whole budget; importance needs at least {MIN_TRIALS}"
        return out
    try:
        dists = distributions(rows, keys)
    except ImportError:
        out["reason"] = "Optuna is not installed"
        return out
    if len(dists) < 2:
        out["reason"] = f"only {len(dists)} key took two or more values among the trials that ran their whole budget"
        return out
    if len({value for _, value in rows}) < 2:
        out["reason"] = f"every one of the {len(rows)} trials scored the same {metric}; there is no variance to share out"
        return out
    out["keys"] = list(dists)
    out["importance"], failures = evaluate(rows, dists, mode)
    if not out["importance"]:
        out["keys"], out["reason"] = [], "; ".join(failures)
    return out


def evaluate(rows: list[tuple[dict, float]], dists: dict, mode: str) -> tuple[dict[str, dict[str, float]], list[str]]:
    """{evaluator: {key: share}} for the evaluators that could rate these trials, and why the others could not."""
    import optuna
    from optuna.importance import FanovaImportanceEvaluator, PedAnovaImportanceEvaluator, get_param_importances

    study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
    study.add_trials([optuna.trial.create_trial(params={k: values[k] for k in dists}, distributions=dists,
                                                value=value) for values, value in rows])
    evaluators = {"fANOVA": FanovaImportanceEvaluator(seed=0), "PED-ANOVA": PedAnovaImportanceEvaluator()}
    out, failures = {}, []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # too few trials for a quantile: shown as zeros
        for name, evaluator in evaluators.items():
            try:
                shares = get_param_importances(study, evaluator=evaluator, normalize=True)
            except (RuntimeError, ValueError) as err:  # e.g. fANOVA: no variance left in any tree
                failures.append(f"{name}: {err}")
                continue
            out[name] = {k: float(shares.get(k, 0.0)) for k in dists}
    return out, failures


def render_importance(result: Mapping) -> str:
    """The report's section: a table of each key's share per evaluator, and what it rests on."""
    from .tables import md_table

    lines = [f"## Factor importance on {result['metric']} ({result['mode']})", ""]
    if result.get("reason"):
        lines.append(f"Not computed: {result['reason']}.")
        return "\n".join(lines)
    lines.append(f"rests on {result['trials']} trials that ran their whole budget"
                 + (f" ({result['left_out']} stopped early, failed or unfinished left out)" if result["left_out"] else "")
                 + "; Optuna's fANOVA (random-forest variance decomposition) and PED-ANOVA (top 10% against all),"
                 + " each normalised to sum to 1.")
    if result["trials"] < 20:
        lines.append("Few trials: read the order, not the numbers.")
    first = next(iter(result["importance"].values()))
    body = [[key, *(f"{shares[key]:.3f}" for shares in result["importance"].values())]
            for key in sorted(result["keys"], key=lambda k: -first[k])]
    lines += ["", md_table(["key", *result["importance"]], body, [False] + [True] * len(result["importance"]))]
    return "\n".join(lines)


def importance_metrics(result: Mapping, prefix: str) -> dict[str, float]:
    """``<prefix><evaluator>/<key>`` -> share, for the parent run."""
    return {f"{prefix}{name.lower().replace('-', '')}/{key}": share
            for name, shares in result.get("importance", {}).items() for key, share in shares.items()}


def plot_importance(result: Mapping, path):
    """Horizontal bars: each key's share, one bar per evaluator."""
    from .plots import _pyplot, _save

    plt = _pyplot()
    keys = sorted(result["keys"], key=lambda k: next(iter(result["importance"].values()))[k])
    names = list(result["importance"])
    height = 0.8 / max(len(names), 1)
    fig, ax = plt.subplots(figsize=(6.5, 1.2 + 0.5 * len(keys) * max(len(names), 1) / 2))
    for i, name in enumerate(names):
        ax.barh([j + i * height for j in range(len(keys))], [result["importance"][name][k] for k in keys],
                height=height, label=name)
    ax.set_yticks([j + height * (len(names) - 1) / 2 for j in range(len(keys))], keys)
    ax.set_xlabel(f"share of importance on {result['metric']}")
    ax.set_title(f"factor importance ({result['trials']} trials)")
    ax.legend(loc="lower right")
    path = _save(fig, path)
    plt.close(fig)
    return path
