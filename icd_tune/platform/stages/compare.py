"""A comparison (``mode: compare``): each method's search, then the confirm grid, as phases of one run.

Every phase is an ordinary study run (the five stages) in a folder of the comparison's own
run folder, with its trial runs under the comparison's MLflow parent run, tagged with the
phase and the method. The comparison's state file records each finished phase (its trial
records), so a resumed comparison continues the phase that was cut short and never runs a
finished one again; the confirm grid is built from the searches' recorded best trials.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ...method.schema import flatten, to_dict
from ..cli import console
from ..preflight import StudyRunError
from ..report.compare import best_overrides, write_compare_report
from ..study.compare import slug_of
from ..study.compare import CONFIRM, DEFAULT_SUFFIX, SEARCH
from ..study.definition import resolved_study
from .plan import RunOptions, run_folders, run_tracking_uri
from .prepare import claim_stamped_folder
from .run_files import STATE_FILE

COMPARE_STATE = "compare_state.json"
PHASE_TAG = "icd_tune.phase"  # search or confirm
METHOD_TAG = "icd_tune.method"  # the compared method's label (ICD, CRD, ...)
CONFIG_TAG = "icd_tune.config"  # in the confirm phase: tuned (the search's best) or default


@dataclass
class Phase:
    """What a phase's stages need from its comparison (``RunOptions.within``)."""

    name: str  # search-ICD, confirm: its folder and its report files' artifact path
    run_folder: Path
    parent_run_id: str
    experiment_name: str
    tags: dict[str, str]  # on each of its trial runs
    trial_tags: Callable[[dict], dict[str, str]] | None = None


def confirm_tags(config: dict) -> dict[str, str]:
    """A confirm trial's method label and whether it runs the tuned or the default configuration."""
    from ..study.trials import point_of

    label = str(point_of(config, 0).levels.get("method", ""))
    default = label.endswith(DEFAULT_SUFFIX)
    return {METHOD_TAG: label[:-len(DEFAULT_SUFFIX)] if default else label, CONFIG_TAG: "default" if default else "tuned"}


# Where and how fast a comparison runs, not what it compares: free to change between a run and its --resume.
PLACEMENT_SETTINGS = frozenset({"description", "results_dir", "max_concurrent", "cpus_per_trial", "gpus_per_trial",
                                "min_free_gb", "log_students", "system_metrics"})


def comparison_fingerprint(study, smoke: bool) -> str:
    """What defines a comparison's trials: its resolved study, placement left out."""
    from ..study.trials import PLACEMENT_KEYS

    resolved = {k: v for k, v in flatten(resolved_study(study)).items()
                if k not in PLACEMENT_KEYS and k not in PLACEMENT_SETTINGS}
    return hashlib.sha256(json.dumps([resolved, smoke], sort_keys=True, default=str).encode()).hexdigest()[:16]


def comparison_folder(study, opts: RunOptions, root: Path) -> tuple[Path, dict]:
    """A fresh, claimed run folder; or with --resume the comparison to continue (same definition only)."""
    fingerprint = comparison_fingerprint(study, opts.smoke)
    if not opts.resume:
        folder = claim_stamped_folder(root / (time.strftime("%Y%m%d-%H%M%S") + ("-smoke" if opts.smoke else "")))
        return folder, {"study": study.name, "fingerprint": fingerprint, "phases": {}, "smoke": opts.smoke}
    if isinstance(opts.resume, str):
        candidates = [Path(opts.resume).expanduser().resolve()]
    else:
        candidates = run_folders(root, opts.smoke, COMPARE_STATE)
    for folder in candidates:
        if not (folder / COMPARE_STATE).is_file():
            raise StudyRunError(f"--resume {opts.resume}: {folder} is not a comparison's run folder (it holds no "
                                f"{COMPARE_STATE})")
        state = json.loads((folder / COMPARE_STATE).read_text())
        if state.get("fingerprint") == fingerprint:
            return folder, state
        if isinstance(opts.resume, str):
            raise StudyRunError(f"--resume would mix two comparisons in {folder}: it was started with another "
                                f"definition (another --set, or the study file changed); start it afresh without "
                                f"--resume")
    raise StudyRunError(f"nothing to resume: no earlier run of comparison '{study.name}' with this definition "
                        f"under {root}")


def run_comparison(study, opts: RunOptions, run_phase: Callable, log: Callable[[str], None]) -> dict:
    """Runs (or continues) the comparison; returns what ``run_study`` returns, over every phase's trials."""
    from ..tracking.runs import END_TAG, STUDY_RUN_TAG, StudyTracker, common_tags

    comparison = study.compare
    if opts.register:
        raise StudyRunError(f"--register {opts.register}: a comparison ranks methods, and its best student is no "
                            f"method's winner; register from a study of the method you choose")
    if opts.sync_tracking:
        raise StudyRunError("--sync-tracking fills one study's MLflow records from its run folder; a comparison's "
                            "phases cannot be filled that way yet (their reports and records in the run folder are "
                            "complete)")
    root = Path(opts.results_dir or study.settings.results_dir).expanduser().resolve()
    folder, state = comparison_folder(study, opts, root / study.name)
    state["run_folder"] = str(folder)
    console.attach_log(folder)
    save = lambda: (folder / COMPARE_STATE).write_text(json.dumps(state, indent=2, default=str))  # noqa: E731
    tracking_uri = run_tracking_uri(opts, state, folder)
    experiment = study.name + ("-smoke" if opts.smoke else "")
    tracker = StudyTracker(tracking_uri, experiment, str(folder))
    params = {f"study.{k}": v for k, v in flatten(to_dict(study.settings)).items() if not k.startswith("compare.")}
    params["study.compare"] = json.dumps(study.settings.compare, sort_keys=True, default=str)
    parent_id = tracker.start_parent(study.name + (" (smoke)" if opts.smoke else ""), params,
                                     {**common_tags(), PHASE_TAG: "comparison", STUDY_RUN_TAG: str(folder)},
                                     state.get("parent_run_id"))
    state.update(parent_run_id=parent_id, experiment_id=tracker.experiment_id, tracking_uri=tracking_uri,
                 status="running")
    save()
    log(f"comparison {study.name}: {', '.join(comparison.labels)} (reference {comparison.reference}); "
        f"results in {folder}")
    command = list(opts.command) if opts.command else [study.source]

    def phase(name: str, phase_study, tags: dict, trial_tags=None) -> dict:
        done = state["phases"].get(name)
        if done and done.get("status") == "finished":
            log(f"{name}: finished earlier ({len(done['trials'])} trials), not run again")
            return done
        sub = folder / name
        within = Phase(name, sub, parent_id, experiment, tags, trial_tags)
        resume = str(sub) if (sub / STATE_FILE).is_file() else False
        result = run_phase(phase_study, dataclasses.replace(opts, resume=resume, within=within,
                                                            tracking_uri=tracking_uri, command=command))
        record = {"status": "cut short" if result.get("stop_kind") else "finished", "trials": result["trials"],
                  "run_folder": str(sub), "stop_kind": result.get("stop_kind"),
                  "stop_reason": result.get("stop_reason"), "resume_command": result.get("resume_command"),
                  "tracking_incomplete": bool(result.get("tracking_incomplete"))}
        state["phases"][name] = record
        save()
        return record

    phases: dict[str, dict] = {}
    if not opts.smoke:  # a smoke run checks the confirm phase's path once per method, at each default
        for arm in comparison.arms:
            name = f"{SEARCH}-{arm.slug}"
            phases[name] = phase(name, arm.search, {PHASE_TAG: SEARCH, METHOD_TAG: arm.label})
            if phases[name]["status"] != "finished":
                return _cut_short(state, phases, tracker, parent_id, END_TAG)
    try:
        best = ({arm.label: {} for arm in comparison.arms} if opts.smoke else
                {arm.label: best_overrides(phases[f"{SEARCH}-{arm.slug}"]["trials"], arm.search)
                 for arm in comparison.arms})
    except ValueError as err:  # a search none of whose trials reported its metric (all failed): nothing to confirm
        log(f"error: {err}; the comparison stops before its confirm phase (the searches' reports say why)")
        tracker.client.set_tag(parent_id, END_TAG, "failed: a search has no trial to confirm")
        tracker.end(parent_id, "FAILED")
        return _result(state, phases, "")
    state["best"] = best
    confirm = comparison.smoke_study() if opts.smoke else comparison.confirm_study(best)
    phases[CONFIRM] = phase(CONFIRM, confirm, {PHASE_TAG: CONFIRM}, confirm_tags)
    if phases[CONFIRM]["status"] != "finished":
        return _cut_short(state, phases, tracker, parent_id, END_TAG)
    written = write_compare_report(folder, study, phases, best, smoke=opts.smoke)
    record_comparison(tracker, parent_id, written, study, tracking_uri, log)
    log(f"results: {folder}")
    tracker.client.set_tag(parent_id, END_TAG, f"{sum(len(p['trials']) for p in phases.values())} trials")
    tracker.end(parent_id, "FINISHED")
    state["status"] = "finished"
    save()
    return _result(state, phases, written["text"])


def record_comparison(tracker, parent_id: str, written: dict, study, tracking_uri: str,
                      log: Callable[[str], None]) -> None:
    """The report on the parent run, each method's tuned and default means as its metrics, the compare link."""
    from mlflow.entities import Metric

    from ..tracking.links import COMPARE_URL_TAG, child_runs, compare_runs_url, top_runs, ui_base
    from ..tracking.runs import ui_command, ui_runs_url

    client = tracker.client
    for path in written["paths"].values():
        client.log_artifact(parent_id, str(path))
    now = int(time.time() * 1000)
    metrics = []
    for m in written["summary"]["methods"]:
        for arm in ("tuned", "default"):
            if m[arm]["mean"] is not None:
                metrics.append(Metric(f"compare/{slug_of(m['label'])}/{arm}_mean", m[arm]["mean"], now, 0))
    for row in written["summary"]["reference_against"]:
        if row.get("diff_mean") is not None:
            metrics.append(Metric(f"compare/{slug_of(study.compare.reference)}_minus_{slug_of(row['method'])}",
                                  row["diff_mean"], now, 0))
    if metrics:
        client.log_batch(parent_id, metrics=metrics)
    log(written["text"])
    log(f"MLflow tracking URI: {tracking_uri}")
    log(f"open the UI:  {ui_command(tracking_uri)}")
    log(f"runs table:  {ui_runs_url(tracking_uri, tracker.experiment_id)}")
    confirm = [r for r in child_runs(client, tracker.experiment_id, parent_id) if r.data.tags.get(PHASE_TAG) == CONFIRM]
    if confirm:
        chosen = top_runs(confirm, study.settings.metric, study.settings.metric_mode)
        url = compare_runs_url(ui_base(tracking_uri), [tracker.experiment_id], [r.info.run_id for r in chosen])
        client.set_tag(parent_id, COMPARE_URL_TAG, url)
        log(f"compare the confirm runs ({len(chosen)} of {len(confirm)}):  {url}")


def _result(state: dict, phases: dict, report: str, stop: dict | None = None) -> dict:
    trials = [t for p in phases.values() for t in p["trials"]]
    stop = stop or {}
    incomplete = any(p.get("tracking_incomplete") for p in phases.values())
    return {"run_folder": state.get("run_folder"), "trials": trials, "history": [], "report": report,
            "tracking_uri": state["tracking_uri"], "experiment_id": state["experiment_id"],
            "parent_run_id": state["parent_run_id"], "wall_seconds": None, "stop_kind": stop.get("stop_kind"),
            "stop_reason": stop.get("stop_reason"), "resume_command": stop.get("resume_command"),
            "tracking_incomplete": incomplete,
            "sync_command": "nothing yet for a comparison (its phases' reports and records in the run folder are "
                            "complete; MLflow keeps what reached it)" if incomplete else None}


def _cut_short(state: dict, phases: dict, tracker, parent_id: str, end_tag: str) -> dict:
    """A phase was cut short: the comparison's parent run stays KILLED until --resume finishes it."""
    stopped = next(p for p in phases.values() if p["status"] != "finished")
    tracker.client.set_tag(parent_id, end_tag, "interrupted")
    tracker.end(parent_id, "KILLED")
    return _result(state, phases, "", stopped)
