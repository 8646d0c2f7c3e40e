"""Links printed at the end of a run: the MLflow compare view of its trial runs, the Optuna dashboard.

The runs table of an experiment shows a study's parent run with every trial
collapsed under it; MLflow's compare view (``#/compare-runs``) shows the trial
runs side by side, with a parallel-coordinates plot of their parameters.
"""

from __future__ import annotations

import json
import math
from urllib.parse import quote

from .runs import PARENT_TAG

COMPARE_LIMIT = 50  # the compare view stays readable (and the URL short) up to about this many runs
COMPARE_URL_TAG = "icd_tune.compare_url"
DEFAULT_UI = "http://127.0.0.1:5000"


def ui_base(tracking_uri: str) -> str:
    """Where the MLflow UI is served: the tracking server itself, or `mlflow ui`'s default address."""
    return (tracking_uri if tracking_uri.startswith("http") else DEFAULT_UI).rstrip("/")


def compare_runs_url(base: str, experiment_ids: list[str], run_ids: list[str]) -> str:
    """MLflow's compare view of ``run_ids``: URL-encoded JSON lists of run ids and experiment ids."""
    runs = quote(json.dumps(list(run_ids), separators=(",", ":")), safe="")
    experiments = quote(json.dumps([str(e) for e in experiment_ids], separators=(",", ":")), safe="")
    return f"{base.rstrip('/')}/#/compare-runs?runs={runs}&experiments={experiments}"


def child_runs(client, experiment_id: str, parent_run_id: str) -> list:
    """Every child run of the parent run (paged: a study may have thousands)."""
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}'",
                                  max_results=1000, page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            return runs


def top_runs(runs: list, metric: str, mode: str, limit: int = COMPARE_LIMIT) -> list:
    """The ``limit`` best runs by ``metric`` (``mode`` max or min); runs without a finite value last."""
    def key(run):
        value = run.data.metrics.get(metric)
        if value is None or not math.isfinite(value):
            return (1, 0.0, run.info.run_name or "")
        return (0, -value if mode == "max" else value, run.info.run_name or "")

    return sorted(runs, key=key)[:limit]


def compare_link(client, tracking_uri: str, experiment_id: str, parent_run_id: str, metric: str,
                 mode: str, limit: int = COMPARE_LIMIT) -> tuple[str | None, str]:
    """(compare-view URL or None when there is no trial run, a line saying what it opens)."""
    runs = child_runs(client, experiment_id, parent_run_id)
    if not runs:
        return None, "no trial runs to compare"
    chosen = top_runs(runs, metric, mode, limit)
    url = compare_runs_url(ui_base(tracking_uri), [experiment_id], [r.info.run_id for r in chosen])
    if len(chosen) < len(runs):
        return url, f"the top {len(chosen)} of {len(runs)} trial runs by {metric} ({mode})"
    return url, f"all {len(runs)} trial runs"


def optuna_dashboard_command(storage_url: str) -> str:
    return f"optuna-dashboard --host 127.0.0.1 --port 8080 {storage_url}"
