"""Turns finished trials into reports: text tables, Parquet files and plots.

Everything here works on plain records (see ``level_table`` for the trial
record layout), so reports can be rebuilt offline from saved results without
Ray, MLflow or torch installed. Statistics follow the ablation protocol: each
level is run over several seeds, levels are summarised by mean +- sample std
over the seeds of completed trials, and a level is compared with the baseline
by differences paired on the seed, which cancels the seed's shared effect
(data order, init), with Holm-adjusted p-values across a factor's levels.
Levels and configurations are selected on a validation metric only; the
test number reported is ``test/acc1_at_best_val``, test accuracy at the epoch
of best validation accuracy.

Trial record::

    {"trial_id": "a1b2_00003", "name": "invariance_weight=0.5 seed=1",
     "levels": {"invariance_weight": 0.5}, "params": {"loss.invariance_weight": 0.5, ...},
     "seed": 1, "status": "completed" | "stopped" | "failed" | "unfinished", "epochs": 12,
     "final": {"test/acc1": 71.2, "test/acc1_at_best_val": 71.6, "val/best_acc1": 70.5, ...},
     "error": None | "..."}

History rows: ``{"trial_id": ..., "epoch": 1, "train/loss": ..., "val/acc1": ...}``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from .importance import IMPORTANCE_FILE, compute_importance, plot_importance, render_importance
from .markdown import _baseline_for, render_report
from .parquet import write_parquet
from .plots import plot_factor, plot_learning_curves, use_log_axis
from .stats import best_configurations, check_selection_metric, level_table
# Trial status values, importable from here by code that builds trial records.
from .stats import COMPLETED, FAILED, STOPPED, UNFINISHED  # noqa: F401

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


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name)).strip("_") or "factor"


def write_report(out_dir: str | Path, study_name: str, trials: Sequence[Mapping],
                 history: Sequence[Mapping], factors: Iterable[str] | None, baseline: Any = None,
                 metric: str = "test/acc1_at_best_val", mode: str = "max",
                 selection_metric: str = "val/acc1", notice: str | None = None, protocol: str = "validation",
                 extra: Sequence[str] = (), search_keys: Iterable[str] | None = None) -> dict[str, Path]:
    """Write report.txt, trials/history Parquet, factor plots and learning curves.

    ``metric`` is the reported test number (plotted per factor);
    ``selection_metric`` (validation, direction ``mode``) picks the best level
    and configurations, and a test metric there raises ValueError before any
    file is written. Returns file name -> path (``report.txt``,
    ``trials.parquet``, ``history.parquet``, ``factor_<name>.png`` per factor,
    ``learning_curves.png``). ``baseline`` may be one level for all factors
    or a dict factor -> level. ``notice`` (e.g. why the run was cut short) heads the report.
    Factor importance (``importance.json``, ``importance.png`` where computed) covers the grid's
    factors, or a search's ``search_keys``.
    Under ``protocol`` ``paper`` nothing is selected: ``metric`` (test/best_acc1) is labelled as
    selected on test, and learning curves plot test/acc1. ``extra``: more report lines (e.g. the
    comparison with published numbers).
    """
    paper = protocol == "paper"
    if not paper:
        check_selection_metric(selection_metric)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    trials = list(trials or [])
    history = list(history or [])
    factors = list(factors or [])
    paths: dict[str, Path] = {}

    report = out_dir / "report.txt"
    keys = list(search_keys) if search_keys else factors
    importance = compute_importance(trials, keys, selection_metric, mode, from_levels=not search_keys)
    report.write_text(render_report(study_name, trials, factors, baseline=baseline, metric=metric,
                                    mode=mode, selection_metric=selection_metric, notice=notice,
                                    protocol=protocol, extra=extra)
                      + "\n\n" + render_importance(importance) + "\n", encoding="utf-8")
    paths[report.name] = report
    importance_path = out_dir / IMPORTANCE_FILE
    importance_path.write_text(json.dumps(importance, indent=2), encoding="utf-8")
    paths[importance_path.name] = importance_path
    if importance["importance"]:
        png = plot_importance(importance, out_dir / "importance.png")
        paths[png.name] = png
    trials_path, history_path = write_parquet(trials, history, out_dir)
    paths[trials_path.name] = trials_path
    paths[history_path.name] = history_path
    for factor in factors:
        png = plot_factor(trials, factor, metric, out_dir / f"factor_{_safe_name(factor)}.png",
                          baseline=_baseline_for(baseline, factor))
        paths[png.name] = png
    curves = plot_learning_curves(history, trials, out_dir / "learning_curves.png",
                                  metric="test/acc1" if paper else selection_metric)
    paths[curves.name] = curves
    return paths
