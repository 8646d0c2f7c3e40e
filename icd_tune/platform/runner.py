"""Runs a study on Ray Tune: the trainable, Optuna + ASHA, MLflow, progress and reports."""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..method.schema import flatten, to_dict
from .study import Study, TrialPoint, set_path, short_name

CHECKPOINT_FILE = "trainer.pt"
STATE_FILE = "study_state.json"


@dataclass
class RunOptions:
    smoke: bool = False
    resume: bool = False
    address: str | None = None
    storage: str | None = None
    tracking_uri: str | None = None
    data_dir: str | None = None
    cpus_per_trial: float | None = None
    gpus_per_trial: float | None = None
    max_concurrent: int | None = None
    verbose: bool = False
    results_dir: str | None = None
    extra_callbacks: list = field(default_factory=list)


# ---------------------------------------------------------------------------
# What a trial is


def point_of(config: dict, study_meta: dict) -> TrialPoint:
    """A Tune trial config -> the trial's seed, overrides and display name."""
    if "point" in config:
        p = config["point"]
        return TrialPoint(p["name"], dict(p["levels"]), int(p["seed"]), dict(p["overrides"]))
    overrides = dict(config.get("params", {}))
    seed = int(config.get("seed", study_meta["seeds"][0]))
    name = " ".join(f"{short_name(k)}={_fmt(v)}" for k, v in overrides.items()) + f" seed={seed}"
    return TrialPoint(name, {}, seed, overrides)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def resolved_trial_dict(base: dict, point: TrialPoint) -> dict:
    import copy

    data = copy.deepcopy(base)
    for key, value in point.overrides.items():
        set_path(data, key, value)
    data["seed"] = point.seed
    return data


# ---------------------------------------------------------------------------
# The trainable (runs in Ray workers)


def icd_trainable(config: dict, data=None, teacher=None, base=None, study_meta=None, teacher_outputs=None):
    import torch
    from ray import tune

    from ..method.config import TrialConfig
    from ..method.train import DivergenceError, Trainer

    point = point_of(config, study_meta)
    cfg = TrialConfig.from_dict(resolved_trial_dict(base, point))
    torch.set_num_threads(max(1, int(study_meta.get("cpus_per_trial", 1))))
    outputs = None
    if teacher_outputs is not None and cfg.loss.uses_teacher:
        from ..method.device import resolve_device
        from ..method.output_cache import get_or_build_cache
        from ..method.teacher_outputs import CachedTeacher

        # Opens this node's copy, or builds it (one trial per node builds; the others wait on its lock).
        cache = get_or_build_cache(teacher, data, teacher_outputs["dir"], dtype=teacher_outputs["dtype"],
                                   device=resolve_device(cfg.device), log=print, progress=False)
        outputs = CachedTeacher(cache)
    trainer = Trainer(cfg, data, teacher, teacher_outputs=outputs)
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            trainer.load(Path(folder) / CHECKPOINT_FILE)
    import ray

    node_id = ray.get_runtime_context().get_node_id()
    metric = study_meta["metric"]
    every = int(study_meta.get("checkpoint_every", 1))
    last_value = None
    try:
        for metrics in trainer.epochs():
            # Schedulers and searchers need the metric in every result, also on epochs without evaluation.
            metrics["trial/node_id"] = node_id
            if metric in metrics:
                last_value = metrics[metric]
            elif last_value is not None:
                metrics[metric] = last_value
            if trainer.epoch % every == 0 or trainer.epoch == cfg.optim.epochs:
                with tempfile.TemporaryDirectory() as folder:
                    trainer.save(Path(folder) / CHECKPOINT_FILE)
                    tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))
            else:
                tune.report(metrics)
    except DivergenceError as err:
        # Divergence is deterministic: report it as this trial's end instead of raising, which
        # would make Ray retry the same computation.
        final = {"epoch": err.epoch, "trial/diverged": 1.0, "trial/error": str(err)}
        # Tune insists on the metric in every result; NaN marks "no value" for the searcher and scheduler.
        final[metric] = last_value if last_value is not None else float("nan")
        tune.report(final)


# ---------------------------------------------------------------------------
# Optuna: trials stopped by ASHA are PRUNED (with their last value), not COMPLETE


def make_searcher(study: Study, storage_url: str, max_epochs: int):
    import optuna
    from ray.tune.search.optuna import OptunaSearch
    from ray.tune.search.optuna.optuna_search import OptunaTrialState

    class StudyOptunaSearch(OptunaSearch):
        def _setup_study(self, mode):
            super()._setup_study(mode)
            from importlib import metadata

            # Recorded with the study: TPE's defaults change between Optuna releases.
            self._ot_study.set_user_attr("optuna_version", optuna.__version__)
            self._ot_study.set_user_attr("icd_tune_version", metadata.version("icd-tune"))

        def restore(self, checkpoint_path):
            super().restore(checkpoint_path)
            # A driver killed between Optuna's ask() and Ray's next snapshot leaves an Optuna trial
            # that no Ray trial will ever report to; close it so TPE and the dashboard do not wait on it.
            known = {t._trial_id for t in self._ot_trials.values()}
            for frozen in self._ot_study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
                if frozen._trial_id not in known:
                    self._ot_study._storage.set_trial_user_attr(frozen._trial_id, "failure",
                                                                "orphaned: its driver was interrupted before Ray recorded it")
                    self._ot_study.tell(frozen.number, state=OptunaTrialState.FAIL)

        def _already_finished(self, trial_id) -> bool:
            # After a killed driver resumes, Ray's snapshot can predate Optuna's record: a trial
            # Optuna already closed may report again. Optuna refuses updates to it; skip them.
            ot_trial = self._ot_trials[trial_id]
            return self._ot_study._storage.get_trial(ot_trial._trial_id).state.is_finished()

        def on_trial_result(self, trial_id, result):
            if trial_id in self._ot_trials and self._already_finished(trial_id):
                self._completed_trials.add(trial_id)
                return
            if self.metric in result and trial_id not in self._completed_trials:
                value = result[self.metric]
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self._ot_trials[trial_id].report(float(value), int(result.get("epoch", result.get("training_iteration", 0))))

        def on_trial_complete(self, trial_id, result=None, error=False):
            if trial_id in self._completed_trials or trial_id not in self._ot_trials:
                return
            if self._already_finished(trial_id):
                self._completed_trials.add(trial_id)
                return
            ot_trial = self._ot_trials[trial_id]
            value = (result or {}).get(self.metric)
            diverged = bool((result or {}).get("trial/diverged"))
            if error or diverged or value is None or not math.isfinite(value):
                if diverged:
                    ot_trial.set_user_attr("failure", str(result.get("trial/error")))
                self._ot_study.tell(ot_trial, state=OptunaTrialState.FAIL)
            elif int(result.get("epoch", max_epochs)) < max_epochs:
                # Ray skips the searcher for the result that stops a trial; report it here, since
                # Optuna takes the last intermediate value as a pruned trial's value.
                epoch = int(result.get("epoch", result.get("training_iteration", 0)))
                if epoch not in self._ot_study._storage.get_trial(ot_trial._trial_id).intermediate_values:
                    ot_trial.report(float(value), epoch)
                self._ot_study.tell(ot_trial, state=OptunaTrialState.PRUNED)
            else:
                self._ot_study.tell(ot_trial, float(value), state=OptunaTrialState.COMPLETE)
            self._completed_trials.add(trial_id)

    storage = optuna.storages.RDBStorage(storage_url)
    sampler = optuna.samplers.TPESampler(seed=study.settings.search.seed)
    searcher = StudyOptunaSearch(metric=study.settings.metric, mode=study.settings.metric_mode, sampler=sampler,
                                 storage=storage, study_name=study.name)
    return searcher


def search_domains(study: Study) -> dict:
    from ray import tune

    out = {}
    for key, spec in study.space.items():
        kind = spec["type"]
        if kind == "choice":
            out[key] = tune.choice(spec["values"])
        elif kind == "int":
            out[key] = tune.lograndint(spec["low"], spec["high"] + 1) if spec["log"] else tune.randint(spec["low"], spec["high"] + 1)
        elif spec["log"]:
            out[key] = tune.loguniform(spec["low"], spec["high"])
        else:
            out[key] = tune.uniform(spec["low"], spec["high"])
    return out


# ---------------------------------------------------------------------------
# Progress


class ProgressCallback:
    """A concise live display in place of Ray's tables; one line at most every few seconds."""

    def __init__(self, planned_trials: int, max_epochs: int, metric: str, mode: str, stream=None, interval: float = 5.0):
        from ray import tune

        outer = self

        class _Callback(tune.Callback):
            def on_trial_result(self, iteration, trials, trial, result, **info):
                outer._result(trial, result)

            def on_trial_complete(self, iteration, trials, trial, **info):
                outer._done(trial, failed=False)

            def on_trial_error(self, iteration, trials, trial, **info):
                outer._done(trial, failed=True)

            def on_step_end(self, iteration, trials, **info):
                outer._tick(trials)

        self.callback = _Callback()
        self.planned = planned_trials
        self.max_epochs = max_epochs
        self.metric, self.mode = metric, mode
        self.stream = stream  # None: whatever sys.stdout is when printing (Tune pickles callbacks)
        self.interval = interval
        self.start = time.time()
        self.last_print = 0.0
        self.epochs: dict[str, int] = {}
        self.best: tuple[float, str] | None = None
        self.names: dict[str, str] = {}
        self.counts = {"completed": 0, "stopped early": 0, "failed": 0}
        self.describe = None

    def _name(self, trial) -> str:
        if trial.trial_id not in self.names and self.describe is not None:
            self.names[trial.trial_id] = self.describe(trial.config)[0]
        return self.names.get(trial.trial_id, trial.trial_id)

    def _result(self, trial, result):
        epoch = int(result.get("epoch", 0) or 0)
        self.epochs[trial.trial_id] = max(epoch, self.epochs.get(trial.trial_id, 0))
        value = result.get(self.metric)
        if isinstance(value, (int, float)) and math.isfinite(value) and not result.get("trial/diverged"):
            better = self.best is None or (value > self.best[0] if self.mode == "max" else value < self.best[0])
            if better:
                self.best = (float(value), self._name(trial))

    def _done(self, trial, failed: bool):
        result = trial.last_result or {}
        epoch = int(result.get("epoch", 0) or 0)
        if failed or result.get("trial/diverged"):
            kind = "failed"
            detail = result.get("trial/error") or "error"
        elif epoch < self.max_epochs:
            kind, detail = "stopped early", f"at epoch {epoch}"
        else:
            kind, detail = "completed", f"{self.metric}={result.get(self.metric, float('nan')):.2f}"
        self.counts[kind] += 1
        self._print(f"  {kind}: {self._name(trial)} ({detail})")

    def _tick(self, trials):
        now = time.time()
        if now - self.last_print < self.interval:
            return
        running = sum(1 for t in trials if t.status == "RUNNING")
        elapsed = now - self.start
        done_epochs = sum(self.epochs.values())
        finished = sum(self.counts.values())
        # Remaining work: unfinished trials' remaining epochs (stopped trials need none).
        remaining = max(0, (self.planned - finished) * self.max_epochs
                        - sum(e for t, e in self.epochs.items() if not any(tr.trial_id == t and tr.status in ("TERMINATED", "ERROR") for tr in trials)))
        eta = (elapsed / done_epochs * remaining) if done_epochs else float("nan")
        best = f"best {self.metric} {self.best[0]:.2f} ({self.best[1]})" if self.best else "best -"
        self._print(f"[{_clock(elapsed)}] {running} running | {self.counts['completed']} done | "
                    f"{self.counts['stopped early']} stopped early | {self.counts['failed']} failed | "
                    f"{finished}/{self.planned} trials | {best} | left ~{_clock(eta)}")

    def _print(self, line: str):
        self.last_print = time.time()
        print(line, file=self.stream or sys.stdout, flush=True)


def _clock(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


# ---------------------------------------------------------------------------
# Records for reports


def trial_records(result_grid, describe, max_epochs: int) -> tuple[list[dict], list[dict]]:
    trials, history = [], []
    for result in result_grid:
        config = result.config or {}
        name, params = describe(config)
        point = point_of(config, {"seeds": [0]})
        metrics = result.metrics or {}
        trial_id = metrics.get("trial_id") or (result.path and Path(result.path).name) or name
        epoch = int(metrics.get("epoch", 0) or 0)
        error = None
        if result.error is not None:
            status, error = "failed", str(result.error).strip().splitlines()[-1] if str(result.error).strip() else "error"
        elif metrics.get("trial/diverged"):
            status, error = "failed", str(metrics.get("trial/error"))
        elif epoch < max_epochs:
            status = "stopped"
        else:
            status = "completed"
        finals = {k: v for k, v in metrics.items() if k.startswith(("train/", "val/", "test/", "time/"))
                  and isinstance(v, (int, float)) and not isinstance(v, bool)}
        trials.append({"trial_id": trial_id, "name": name, "levels": point.levels, "params": params,
                       "seed": point.seed, "status": status, "epochs": epoch, "final": finals, "error": error})
        df = result.metrics_dataframe
        if df is not None and len(df):
            keep = [c for c in df.columns if c == "epoch" or c.startswith(("train/", "val/", "test/", "time/"))]
            for row in df[keep].to_dict("records"):
                if "epoch" in row and row["epoch"] == row["epoch"]:
                    row = {k: v for k, v in row.items() if v == v}
                    row["trial_id"] = trial_id
                    row["epoch"] = int(row["epoch"])
                    history.append(row)
    return trials, history


# ---------------------------------------------------------------------------
# The study run


from .preflight import StudyRunError  # noqa: E402  (re-exported: the CLI catches it from here)


def planned_trial_epochs(study: Study) -> int:
    return study.planned_trials() * study.max_epochs()


def cache_decision(study: Study, trial0, num_train: int, feature_dim: int, num_classes: int,
                   smoke: bool = False, on_cluster: bool = False) -> tuple[bool, str]:
    """Whether this study reads the teacher's outputs from the exact cache, and why."""
    from ..method.output_cache import build_cost_teacher_epochs, cache_size_bytes
    from ..method.teacher_outputs import decide_cache

    setting = trial0.teacher.cache
    size = cache_size_bytes(num_train, feature_dim, num_classes, trial0.teacher.cache_dtype)
    enabled, reason = decide_cache(setting, trial0.data.augment, size, trial0.teacher.cache_memory_budget_gb)
    if enabled and setting == "auto":
        cost = build_cost_teacher_epochs()
        planned = planned_trial_epochs(study)
        if smoke:
            return False, "off for a smoke run (teacher.cache: on forces it)"
        if planned < cost:
            # Building costs 162 teacher-epochs; a study that runs fewer trial-epochs pays more than it saves
            return False, (f"off: this study runs {planned} trial-epochs, fewer than the {cost} teacher-epochs "
                           f"building it costs (set teacher.cache: on to build it anyway)")
    if enabled and on_cluster:
        reason += "; on a cluster each node builds its own copy once, on its own device, before its first trial"
    return enabled, reason


def _latest_run_folder(study_root: Path, smoke: bool = False) -> Path | None:
    # A smoke check run after a study must not be what `--resume` picks up, nor the reverse.
    candidates = sorted(p for p in study_root.glob("*/" + STATE_FILE) if p.parent.name.endswith("-smoke") == smoke)
    return candidates[-1].parent if candidates else None


def _remote_teacher_training(trial0, data, cpus: float, gpus: int):
    import ray

    def train() -> object:
        from ..method.models import create_model

        @ray.remote(num_cpus=cpus, num_gpus=gpus)
        def train_on_worker(teacher_cfg, bundle, data_cfg):
            import torch

            from ..method.teachers import train_teacher

            torch.set_num_threads(max(1, int(cpus)))
            model = train_teacher(teacher_cfg, bundle, data_cfg, device="auto")
            return {k: v.detach().cpu() for k, v in model.state_dict().items()}, model.final_metrics

        state, final = ray.get(train_on_worker.remote(trial0.teacher, data, trial0.data))
        model = create_model(trial0.teacher.arch, data.num_classes)
        model.load_state_dict(state)
        model.final_metrics = final
        return model.eval()

    return train


def _cluster_hosts() -> set[str]:
    import ray

    return {n["NodeManagerAddress"] for n in ray.nodes() if n.get("Alive")}



def run_study(study: Study, opts: RunOptions, log=print) -> dict:
    import ray
    from ray import tune

    from ..method.data import load_data
    from .report import write_report
    from ..method.teachers import get_teacher
    from .tracking import MLflowTrialCallback, StudyTracker, common_tags, ui_command, ui_runs_url

    settings = study.settings
    base = dict(study.base)
    if opts.data_dir:
        base["data"] = {**base["data"], "root": str(Path(opts.data_dir).expanduser().resolve())}
    cpus = opts.cpus_per_trial or settings.cpus_per_trial
    gpus = settings.gpus_per_trial if opts.gpus_per_trial is None else opts.gpus_per_trial
    if gpus == 0 and base.get("device") == "auto":
        base["device"] = "cpu"  # a trial without a GPU share must not grab one
    max_epochs = study.max_epochs()
    points: list[TrialPoint] | None = study.grid_points() if settings.mode == "grid" else None
    if opts.smoke:
        first = study.first_point()
        points = [first]
        base["optim"] = {**base["optim"], "epochs": settings.smoke.epochs}
        base["max_steps_per_epoch"] = settings.smoke.max_steps
        base["teacher"] = {**base["teacher"], "optim": {**base["teacher"]["optim"], "epochs": settings.smoke.teacher_epochs}}
        max_epochs = settings.smoke.epochs

    # Folders, resolved before Ray starts: trials run with their own folder as working directory.
    results_root = Path(opts.results_dir or settings.results_dir).expanduser().resolve()
    study_root = results_root / study.name
    if opts.resume:
        run_folder = _latest_run_folder(study_root, smoke=opts.smoke)
        if run_folder is None:
            raise StudyRunError(f"nothing to resume: no earlier run of '{study.name}' under {study_root}")
        state = json.loads((run_folder / STATE_FILE).read_text())
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S") + ("-smoke" if opts.smoke else "")
        run_folder = study_root / stamp
        state = {}
    # One experiment folder per invocation, also under shared storage, so studies never collide.
    storage_path = state.get("storage") or (
        f"{opts.storage.rstrip('/')}/{study.name}/{run_folder.name}" if opts.storage else str(run_folder / "ray"))
    tracking_uri = (opts.tracking_uri or state.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI")
                    or f"sqlite:///{run_folder.parent / 'mlflow.db'}")

    # Everything that can be checked up front is, before anything is written.
    from ..method.config import TrialConfig
    from ..method.data import train_size
    from .preflight import (check_experiment_storage, check_folder_writable, check_free_space,
                            check_tracking_store, estimate_disk_bytes)

    trial0 = TrialConfig.from_dict(resolved_trial_dict(base, points[0] if points else study.first_point()))
    if trial0.teacher.checkpoint:
        from ..method.data import num_classes as dataset_classes
        from ..method.teachers import load_teacher_checkpoint

        load_teacher_checkpoint(trial0.teacher.checkpoint, trial0.teacher.arch, dataset_classes(trial0.data))
    data = load_data(trial0.data)  # a missing dataset fails here, before anything is written
    check_folder_writable(run_folder, "results folder")
    check_tracking_store(tracking_uri)
    check_free_space(run_folder, max(int(settings.min_free_gb * 2**30),
                                     estimate_disk_bytes(study, trial0, train_size(trial0.data))))
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import logging

    if not ray.is_initialized():
        # Without --address (or RAY_ADDRESS, as set by `ray job submit`) start a private local
        # instance rather than attaching to whatever cluster happens to run on this machine.
        address = opts.address or os.environ.get("RAY_ADDRESS") or "local"
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=opts.verbose,
                     logging_level=logging.INFO if opts.verbose else logging.WARNING, configure_logging=True)
        except Exception as err:  # ConnectionError, auth and version mismatches all land here
            raise StudyRunError(f"cannot join the Ray cluster at {address}: {type(err).__name__}: {err}") from None
    hosts = _cluster_hosts()
    check_experiment_storage(storage_path, hosts)
    try:
        run_folder.mkdir(parents=True, exist_ok=True)  # writability was checked above
    except OSError as err:
        raise StudyRunError(f"results folder {run_folder} cannot be created: {err.strerror or err}") from None
    state.update({"study": study.name, "source": study.source, "storage": storage_path, "tracking_uri": tracking_uri,
                  "smoke": opts.smoke, "status": "running"})
    log(f"study '{study.name}': {len(points) if points else settings.search.num_samples} trials, "
        f"up to {max_epochs} epochs each; results in {run_folder}")
    log(f"MLflow tracking URI: {tracking_uri}")
    log(f"open the UI:  {ui_command(tracking_uri)}")

    # Data and teacher on the driver; they reach the trials through Ray's object store.
    needs_teacher = any(
        TrialConfig.from_dict(resolved_trial_dict(base, p)).loss.uses_teacher for p in (points or [study.first_point()])
    ) or settings.mode == "search"
    teacher, teacher_info = None, {"source": "none"}
    if needs_teacher:
        teacher_dir = trial0.teacher.cache_dir or str(results_root / "teachers")
        train_fn = None
        if gpus or opts.address:
            # On a cluster the driver may sit on a CPU-only head: train where a trial would run.
            train_fn = _remote_teacher_training(trial0, data, cpus, 1 if gpus else 0)
        teacher, teacher_info = get_teacher(trial0.teacher, data, trial0.data, device=trial0.device if gpus else "cpu",
                                            cache_dir=teacher_dir, log=lambda m: log(m), train_fn=train_fn,
                                            callback=lambda m: log(f"  teacher epoch {m['epoch']}: test/acc1 {m.get('test/acc1', float('nan')):.2f}"))
        teacher = teacher.cpu().eval()
    teacher_outputs = None
    if teacher is not None:
        on_cluster = len(hosts) > 1 or bool(opts.address)
        enabled, reason = cache_decision(study, trial0, data.num_train, getattr(teacher, "feature_dim"),
                                         data.num_classes, smoke=opts.smoke, on_cluster=on_cluster)
        log(f"teacher-output cache: {reason}")
        if enabled:
            teacher_outputs = {"dir": str(Path(teacher_dir).resolve()), "dtype": trial0.teacher.cache_dtype}
            if not on_cluster:
                # Built here once, so that trials open it instead of queueing on the build lock.
                from ..method.output_cache import get_or_build_cache

                cache = get_or_build_cache(teacher, data, teacher_dir, dtype=trial0.teacher.cache_dtype,
                                           device="cuda" if gpus and trial0.device != "cpu" else "cpu", log=log)
                teacher_info["output_cache"] = str(cache.path)

    tracker = StudyTracker(tracking_uri, study.name + ("-smoke" if opts.smoke else ""), str(run_folder))
    tags = common_tags()
    parent_params = {f"study.{k}": v for k, v in flatten(to_dict(settings)).items()}
    parent_params.update({f"defaults.{k}": v for k, v in flatten(base).items()})
    parent_id = tracker.start_parent(study.name + (" (smoke)" if opts.smoke else ""), parent_params,
                                     {**tags, "icd_tune.teacher": json.dumps(teacher_info)}, state.get("parent_run_id"))
    state["parent_run_id"] = parent_id
    state["experiment_id"] = tracker.experiment_id
    (run_folder / STATE_FILE).write_text(json.dumps(state, indent=2))

    study_meta = {"metric": settings.metric, "seeds": list(settings.seeds), "cpus_per_trial": cpus,
                  "checkpoint_every": settings.checkpoint_every}

    def describe(config: dict) -> tuple[str, dict]:
        point = point_of(config, study_meta)
        params = flatten(resolved_trial_dict(base, point))
        params.update({f"level.{k}": v for k, v in point.levels.items()})
        return point.name, params

    mlflow_cb = MLflowTrialCallback(tracker, describe, max_epochs, tags)
    progress = ProgressCallback(len(points) if points else settings.search.num_samples, max_epochs,
                                settings.metric, settings.metric_mode)
    progress.describe = describe

    # num_to_keep forces experiment snapshots; on small, fast trials Ray warns about it at every epoch.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Snapshot the experiment state at every step of Tune's loop, so a trial is on disk before it
    # starts: a driver killed in between would otherwise leave a started trial that --resume does
    # not know (and re-samples), with a stray run in MLflow and Optuna.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "0")
    trainable = tune.with_resources(
        tune.with_parameters(icd_trainable, data=data, teacher=teacher, base=base, study_meta=study_meta,
                             teacher_outputs=teacher_outputs),
        {"cpu": cpus, "gpu": gpus})

    scheduler = None
    if settings.asha.enabled and not opts.smoke:
        from ray.tune.schedulers import ASHAScheduler

        scheduler = ASHAScheduler(time_attr="epoch", metric=settings.metric, mode=settings.metric_mode,
                                  max_t=max_epochs, grace_period=min(settings.asha.grace_period, max_epochs),
                                  reduction_factor=settings.asha.reduction_factor)
    searcher = None
    if settings.mode == "search" and not opts.smoke:
        param_space = {"seed": settings.seeds[0], "params": search_domains(study)}
        searcher = make_searcher(study, f"sqlite:///{run_folder / 'optuna.db'}", max_epochs)
        num_samples = settings.search.num_samples
    else:
        param_space = {"point": tune.grid_search([p.to_config() for p in points])}
        num_samples = 1

    from ray.tune import CheckpointConfig, FailureConfig, RunConfig, TuneConfig

    callbacks = [mlflow_cb, progress.callback, *opts.extra_callbacks]
    run_config = RunConfig(
        name="tune", storage_path=storage_path, verbose=1 if opts.verbose else 0, callbacks=callbacks,
        failure_config=FailureConfig(max_failures=settings.max_retries),
        checkpoint_config=CheckpointConfig(num_to_keep=2),
        stop={"epoch": max_epochs} if max_epochs < trial0.optim.epochs else None)
    tune_config = TuneConfig(
        search_alg=searcher, scheduler=scheduler, num_samples=num_samples,
        max_concurrent_trials=opts.max_concurrent or settings.max_concurrent,
        trial_dirname_creator=lambda t: t.trial_id, reuse_actors=True)
    experiment_path = str(Path(storage_path) / "tune") if "://" not in storage_path else storage_path.rstrip("/") + "/tune"
    started = time.time()
    try:
        if opts.resume and tune.Tuner.can_restore(experiment_path):
            log(f"resuming {experiment_path}")
            tuner = tune.Tuner.restore(experiment_path, trainable, resume_unfinished=True, resume_errored=True,
                                       param_space=param_space)
            tuner._local_tuner._run_config.callbacks = callbacks
        else:
            tuner = tune.Tuner(trainable, param_space=param_space, tune_config=tune_config, run_config=run_config)
        result_grid = tuner.fit()
    except KeyboardInterrupt:
        mlflow_cb.mark_interrupted()
        tracker.client.set_tag(parent_id, "icd_tune.end", "interrupted")
        tracker.end(parent_id, "KILLED")
        state["status"] = "interrupted"
        (run_folder / STATE_FILE).write_text(json.dumps(state, indent=2))
        log(f"interrupted; continue with: run_ablation.py {study.source} --resume")
        raise
    wall = time.time() - started

    trials, history = trial_records(result_grid, describe, max_epochs)
    factors = [f.name for f in study.factors] if not opts.smoke else []
    paths = write_report(run_folder, study.name, trials, history, factors, baseline=settings.baseline,
                         metric=settings.report_metric, mode=settings.metric_mode,
                         selection_metric=settings.metric)
    report_text = paths["report.txt"].read_text()
    (run_folder / "study_resolved.json").write_text(json.dumps(study_meta | {"defaults": base}, indent=2, default=str))
    for path in [*paths.values(), run_folder / "study_resolved.json"]:
        tracker.client.log_artifact(parent_id, str(path))
    _log_best(tracker, parent_id, trials, settings.metric, settings.metric_mode)
    tracker.client.log_metric(parent_id, "study/wall_seconds", wall)
    failed = sum(t["status"] == "failed" for t in trials)
    tracker.client.set_tag(parent_id, "icd_tune.end", f"{len(trials)} trials, {failed} failed")
    tracker.end(parent_id, "FINISHED")
    state["status"] = "finished"
    (run_folder / STATE_FILE).write_text(json.dumps(state, indent=2))
    log(report_text)
    log(f"results: {run_folder}")
    log(f"MLflow tracking URI: {tracking_uri}")
    log(f"open the UI:  {ui_command(tracking_uri)}")
    log(f"compare the trials:  {ui_runs_url(tracking_uri, tracker.experiment_id)}")
    return {"run_folder": run_folder, "trials": trials, "history": history, "tracking_uri": tracking_uri,
            "experiment_id": tracker.experiment_id, "parent_run_id": parent_id, "wall_seconds": wall,
            "report": report_text}


def _log_best(tracker, parent_id: str, trials: list[dict], metric: str, mode: str) -> None:
    ok = [t for t in trials if t["status"] != "failed" and metric in t["final"]]
    if not ok:
        return
    best = (max if mode == "max" else min)(ok, key=lambda t: t["final"][metric])
    for key, value in best["final"].items():
        if isinstance(value, (int, float)) and math.isfinite(value):
            tracker.client.log_metric(parent_id, f"best/{key}", float(value))
    tracker.client.set_tag(parent_id, "icd_tune.best_trial", best["name"])


__all__ = ["RunOptions", "run_study", "icd_trainable", "StudyRunError"]
