"""Stage 5: Ray's results as trial records, the report files, the parent run's summary.

Records follow the layout ``icd_tune.platform.report`` documents; the report
(text, Parquet, plots) is written by ``report.write_report``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..metrics import DIVERGED, EPOCH, ERROR, IMPORTANCE_PREFIX, epochs_done, is_trainer_metric
from ..report.published import published_lines
from ..report import write_report
from ..tracking.study_record import log_search_storage
from ..report.importance import IMPORTANCE_FILE, importance_metrics
from ..tracking.links import COMPARE_URL_TAG, compare_link, optuna_dashboard_command
from ..tracking.runs import ui_command, ui_runs_url
from ..study.trials import TrialDescriber, point_of
from .plan import StudyPlan
from .run_files import RESOLVED_STUDY_FILE, TRACKING_KEY
from .track import ParentRun, close_with_summary
from .tune import TuneOutcome

IMPORTANCE_TAG = "icd_tune.importance"  # what the parent run's importance/ metrics rest on, or why there are none


@dataclass
class StudyResult:
    run_folder: Path
    trials: list[dict]
    history: list[dict]
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    wall_seconds: float
    report: str
    stop_kind: str | None = None  # why the run ended early (see TuneOutcome); None: every trial ended
    stop_reason: str | None = None
    resume_command: str | None = None
    tracking_incomplete: bool = False  # the tracking server went away for longer than the wait's bound
    sync_command: str | None = None  # the command that fills MLflow from the run folder then

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def record_and_report(plan: StudyPlan, parent: ParentRun, outcome: TuneOutcome,
                      log: Callable[[str], None]) -> StudyResult:
    study, settings = plan.study, plan.settings
    trials, history = trial_records(outcome.result_grid, plan.describer(), plan.max_epochs, outcome.unfinished)
    factors = [f.name for f in study.factors] if not plan.opts.smoke else []
    cut_short = outcome.stop_kind is not None
    notice = (f"CUT SHORT ({outcome.stop_kind}): {outcome.stop_reason}. Unfinished trials are listed apart; "
              f"continue with: {plan.resume_command()}") if cut_short else None
    # Published numbers beside the measured ones (a smoke run's one trial too: it checks that path).
    methods = [str(label) for label, _ in study.factors[1].levels] if len(study.factors) > 1 else []
    paths = write_report(plan.run_folder, study.name, trials, history, factors, baseline=settings.baseline,
                         metric=settings.report_metric, mode=settings.metric_mode, selection_metric=settings.metric,
                         notice=notice, protocol=plan.trial0.protocol,
                         extra=published_lines(settings, [f.name for f in study.factors], methods, trials,
                                               settings.report_metric),
                         search_keys=list(study.space) if plan.searching else None)
    report_text = paths["report.txt"].read_text()
    resolved = plan.run_folder / RESOLVED_STUDY_FILE
    resolved.write_text(json.dumps(dataclasses.asdict(plan.run_settings()) | {"defaults": plan.base}, indent=2,
                                   default=str))
    paths = {**paths, RESOLVED_STUDY_FILE: resolved}
    plan.state[TRACKING_KEY] = {"complete": True, "wall_seconds": outcome.wall_seconds, "stop_kind": outcome.stop_kind,
                                "stop_reason": outcome.stop_reason, "files": [p.name for p in paths.values()]}
    if not cut_short:  # a cut-short run's parent stays KILLED until --resume finishes it
        plan.state["status"] = "finished"
    link = parent.tracker.link
    within = plan.opts.within
    if within is not None:  # a comparison's phase: its report files on the comparison's run; the comparison reports
        for path in paths.values():
            link.send(lambda path=path: parent.tracker.client.log_artifact(parent.run_id, str(path),
                                                                          artifact_path=within.name))
    else:
        track_records(plan, parent, trials, paths, outcome.wall_seconds, cut_short, log, link.send)
    link.settle()
    plan.state[TRACKING_KEY]["complete"] = not link.incomplete
    plan.save_state()
    if within is not None:
        log(f"{within.name}: {len(trials)} trials in {outcome.wall_seconds:.0f} s; its report: "
            f"{plan.run_folder / 'report.txt'}")
    else:
        print_links(plan, parent, report_text, log)
    if link.incomplete:
        log(f"MLflow's records of this run are incomplete (the tracking server went away); with the server up, "
            f"fill them from the run folder: {plan.sync_command()}")
    return StudyResult(run_folder=plan.run_folder, trials=trials, history=history, tracking_uri=plan.tracking_uri,
                       experiment_id=parent.experiment_id, parent_run_id=parent.run_id,
                       wall_seconds=outcome.wall_seconds, report=report_text, stop_kind=outcome.stop_kind,
                       stop_reason=outcome.stop_reason, resume_command=plan.resume_command() if cut_short else None,
                       tracking_incomplete=link.incomplete, sync_command=plan.sync_command() if link.incomplete else None)


def print_links(plan: StudyPlan, parent: ParentRun, report_text: str, log: Callable[[str], None]) -> None:
    log(report_text)
    log(f"results: {plan.run_folder}")
    log(f"MLflow tracking URI: {plan.tracking_uri}")
    log(f"open the UI:  {ui_command(plan.tracking_uri)}")
    log(f"runs table:  {ui_runs_url(plan.tracking_uri, parent.experiment_id)}")


def track_records(plan: StudyPlan, parent: ParentRun, trials: list[dict], paths: dict[str, Path], wall_seconds: float,
                  cut_short: bool, log: Callable[[str], None], send: Callable = lambda call: call()) -> None:
    """What the parent run gets when the trials are done (``send``: through the run's ``TrackingLink``): a search's
    storage, the importance metrics, the summary (unless cut short), the compare link. --sync-tracking too."""
    if plan.searching:  # as it stands now; a resumed search logs it again when it ends
        send(lambda: log_search_storage(parent.tracker.client, parent.run_id, plan.run_folder))
    send(lambda: log_importance(parent, paths))
    if not cut_short:  # a cut-short run's parent stays KILLED until --resume finishes it
        send(lambda: close_with_summary(parent, paths.values(), trials, plan.settings.metric,
                                        plan.settings.metric_mode, wall_seconds,
                                        selects=plan.trial0.protocol != "paper"))
    send(lambda: log_links(plan, parent, log))


def log_importance(parent: ParentRun, paths: dict[str, Path]) -> None:
    """Each varied key's importance share as a parent-run metric (``importance/<evaluator>/<key>``)."""
    from mlflow.entities import Metric

    result = json.loads(paths[IMPORTANCE_FILE].read_text())
    now = int(time.time() * 1000)
    metrics = [Metric(k, v, now, 0) for k, v in importance_metrics(result, IMPORTANCE_PREFIX).items()]
    if metrics:
        parent.tracker.client.log_batch(parent.run_id, metrics=metrics)
    parent.tracker.client.set_tag(parent.run_id, IMPORTANCE_TAG,
                                  f"{result['trials']} trials" if metrics else f"none: {result['reason']}")


def log_links(plan: StudyPlan, parent: ParentRun, log: Callable[[str], None]) -> None:
    """The compare view of this invocation's trial runs (also a tag on the parent run); for a search, the dashboard."""
    client = parent.tracker.client
    url, what = compare_link(client, plan.tracking_uri, parent.experiment_id, parent.run_id, plan.settings.metric,
                             plan.settings.metric_mode)
    if url:
        client.set_tag(parent.run_id, COMPARE_URL_TAG, url)
        log(f"compare the trials ({what}):  {url}")
    if plan.searching:
        log(f"Optuna dashboard:  {optuna_dashboard_command(plan.optuna_storage_url)}")


def trial_records(result_grid, describe: TrialDescriber, max_epochs: int,
                  unfinished: set[str] = frozenset()) -> tuple[list[dict], list[dict]]:
    """One record per trial (status, final metrics, error) and one history row per reported epoch."""
    trials, history = [], []
    for result in result_grid:
        record = trial_record(result, describe, max_epochs)
        if record["trial_id"] in unfinished and record["status"] != "failed":
            record["status"] = "unfinished"
        trials.append(record)
        history += history_rows(result, record["trial_id"])
    return trials, history


def trial_record(result, describe: TrialDescriber, max_epochs: int) -> dict:
    config = result.config or {}
    name, params = describe(config)
    point = point_of(config, 0)  # the seed default never applies: grid points and search spaces name it
    metrics = result.metrics or {}
    trial_id = metrics.get("trial_id") or (result.path and Path(result.path).name) or name
    epoch = epochs_done(metrics)
    error = None
    if result.error is not None:
        status, error = "failed", str(result.error).strip().splitlines()[-1] if str(result.error).strip() else "error"
    elif metrics.get(DIVERGED):
        status, error = "failed", str(metrics.get(ERROR))
    elif epoch < max_epochs:
        status = "stopped"
    else:
        status = "completed"
    finals = {k: v for k, v in metrics.items() if is_trainer_metric(k)
              and isinstance(v, (int, float)) and not isinstance(v, bool)}
    return {"trial_id": trial_id, "name": name, "levels": point.levels, "params": params,
            "seed": point.seed, "status": status, "epochs": epoch, "final": finals, "error": error}


def history_rows(result, trial_id: str) -> list[dict]:
    df = result.metrics_dataframe
    if df is None or not len(df):
        return []
    rows: dict[int, dict] = {}
    keep = [c for c in df.columns if c == EPOCH or is_trainer_metric(c)]
    for row in df[keep].to_dict("records"):
        if EPOCH in row and row[EPOCH] == row[EPOCH]:
            row = {k: v for k, v in row.items() if v == v}
            row["trial_id"] = trial_id
            row[EPOCH] = int(row[EPOCH])
            # A trial restored from an earlier checkpoint than its last report trains that epoch again:
            # the epoch keeps one row, the later one.
            rows[row[EPOCH]] = row
    return sorted(rows.values(), key=lambda r: r[EPOCH])
