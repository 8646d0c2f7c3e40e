"""Stage 1, the plan: which trials, with what resources, in which folder, fresh or resumed. No Ray.

Folders are resolved here, before Ray starts: trials run with their own folder as
working directory.
"""

from __future__ import annotations

import json
import os
import shlex
import time
from dataclasses import dataclass, field
from typing import Any
from pathlib import Path

from ...method.config import TrialConfig
from .fingerprint import FINGERPRINT_KEY, check_resume, code_version, listed, study_fingerprint
from ..preflight import StudyRunError, check_run_options, check_trial_request
from ..smoke import smoke_points, smoke_setup
from ..study.definition import Study
from ..study.settings import StudySettings
from ..raytune.trainable import TrialRunSettings
from ..study.trials import TrialDescriber, TrialPoint, trial_config
from ..raytune.warm_start import load_warm_start
from .run_files import OPTUNA_DB, STATE_FILE

# The state's list of trials a --resume added to a run, each batch run as an experiment of its own.
ADDITIONS_KEY = "additions"
FIRST_EXPERIMENT = "tune"


@dataclass
class Experiment:
    """One Ray Tune experiment of a run: the first holds the trials it started with, later ones what --resume added."""

    name: str  # its folder under the run's storage path
    points: list[TrialPoint] | None  # a grid's points; None for a search
    samples: int  # a search's draws (0 for a grid)

    @property
    def trials(self) -> int:
        return len(self.points) if self.points is not None else self.samples


@dataclass
class RunOptions:
    smoke: bool = False
    resume: bool | str = False  # True: the latest matching run; a path: that run folder
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
    # Stop starting trials and end the running ones (resumably) this many seconds after the start.
    time_budget_s: float | None = None
    # Give up when the cluster has not provided a trial's resources for this long; None: 30 min on a
    # cluster that can grow, no limit on one that cannot (requests no node meets are refused there).
    pending_timeout_s: float | None = None
    # Whether the cluster adds nodes on demand; None detects it from Ray's autoscaler state.
    autoscaling: bool | None = None
    # Seconds an unreachable tracking server is waited for (--tracking-wait); None: the study's tracking.outage_timeout.
    tracking_wait_s: float | None = None
    # Fill MLflow from the run folder (resume names it) and run nothing (--sync-tracking).
    sync_tracking: bool = False
    # --register NAME: the study's best student as a new version of registered model NAME (over the study key).
    register: str | None = None
    # The command line that started the run, for the --resume hint; None: a minimal one.
    command: list[str] | None = None
    started: float = field(default_factory=time.time)
    # A phase of a comparison (stages.compare.Phase): its own folder, the comparison's parent run.
    within: Any = None

    @property
    def effective_address(self) -> str | None:
        """The cluster this run joins: --address, else RAY_ADDRESS (as ``ray job submit`` sets it); None: a local instance."""
        return self.address or os.environ.get("RAY_ADDRESS") or None

    @property
    def joins_cluster(self) -> bool:
        return self.effective_address not in (None, "local")


@dataclass
class StudyPlan:
    study: Study
    opts: RunOptions
    base: dict  # plain trial defaults for this run: --data-dir, the device and smoke caps applied
    cpus: float
    gpus: float
    max_epochs: int
    points: list[TrialPoint] | None  # None: a search samples its trials
    trial0: TrialConfig  # the first trial's config: data, teacher and cache settings come from it
    needs_teacher: bool
    results_root: Path
    run_folder: Path
    # The run's study_state.json: read back on --resume, written as the run goes.
    state: dict
    storage_path: str
    tracking_uri: str
    # For the log, not stopping the run: what a smoke run stood in, a resume at another code commit.
    notes: list[str] = field(default_factory=list)
    warm_start: Any = None  # warm_start.WarmStart: an earlier search's trials to seed this one (fresh runs only)

    @property
    def settings(self) -> StudySettings:
        return self.study.settings

    @property
    def run_trials(self) -> int:
        """This run's trials: the grid's points (one per method under --smoke) or the search's samples."""
        return len(self.points) if self.points else self.settings.search.num_samples

    @property
    def register_name(self) -> str | None:
        """The registered model the study's best student joins: --register, else the study key; never under --smoke."""
        return None if self.opts.smoke else (self.opts.register or self.settings.register)

    @property
    def searching(self) -> bool:
        return self.settings.mode == "search" and not self.opts.smoke

    @property
    def optuna_storage_url(self) -> str:
        """The search's Optuna study lives beside its report: ``optuna.db`` in the run folder."""
        return f"sqlite:///{self.run_folder / OPTUNA_DB}"

    @property
    def experiment_name(self) -> str:
        if self.opts.within is not None:
            return self.opts.within.experiment_name
        return self.study.name + ("-smoke" if self.opts.smoke else "")

    @property
    def parent_run_name(self) -> str:
        return self.study.name + (" (smoke)" if self.opts.smoke else "")

    @property
    def teacher_dir(self) -> str:
        return self.trial0.teacher.cache_dir or str(self.results_root / "teachers")

    @property
    def experiment_path(self) -> str:
        return self.path_of(FIRST_EXPERIMENT)

    def path_of(self, experiment: str) -> str:
        if "://" in self.storage_path:
            return self.storage_path.rstrip("/") + "/" + experiment
        return str(Path(self.storage_path) / experiment)

    def experiments(self) -> list[Experiment]:
        """The run's experiments in the order they were planned: the first, then each --resume's additions."""
        additions = self.state.get(ADDITIONS_KEY, [])
        if self.points is None:
            extra = [Experiment(a["name"], None, len(a["trials"])) for a in additions]
            return [Experiment(FIRST_EXPERIMENT, None, self.run_trials - sum(e.samples for e in extra)), *extra]
        later = [set(a["trials"]) for a in additions]
        added = set().union(*later)
        first = Experiment(FIRST_EXPERIMENT, [p for p in self.points if p.name not in added], 0)
        return [first, *(Experiment(a["name"], [p for p in self.points if p.name in names], 0)
                         for a, names in zip(additions, later))]

    def teacher_uses(self) -> dict:
        """Identity -> ``teacher_set.TeacherUse`` of every distinct teacher the planned trials use (a search: trial0's)."""
        from ..study.teachers import teacher_uses

        return teacher_uses(self.base, self.points or [self.study.first_point()])

    def run_settings(self) -> TrialRunSettings:
        return TrialRunSettings(metric=self.settings.metric, seeds=list(self.settings.seeds), cpus_per_trial=self.cpus,
                                checkpoint_every=self.settings.checkpoint_every, gpus_per_trial=self.gpus,
                                system_metrics=self.settings.system_metrics, import_paths=self.import_paths())

    def import_paths(self) -> list[str]:
        """Where the driver imports the methods the trials name by import path from."""
        from ...method.distillers import import_root

        methods = {trial_config(self.base, p.overrides, p.seed).method for p in self.points or [self.study.first_point()]}
        return sorted({root for m in methods if (root := import_root(m))})

    def describer(self) -> TrialDescriber:
        return TrialDescriber(self.base, self.settings.seeds[0])

    def save_state(self) -> None:
        (self.run_folder / STATE_FILE).write_text(json.dumps(self.state, indent=2))

    def sync_command(self) -> str:
        """The command that fills MLflow from this run's folder: the one that started it, --resume dropped."""
        args, skip = [], False
        for arg in list(self.opts.command or [self.study.source]):
            if skip and not arg.startswith("-") and (Path(arg) / STATE_FILE).exists():
                skip = False
                continue
            skip = arg in ("--resume", "--sync-tracking")
            if not (skip or arg.startswith(("--resume=", "--sync-tracking="))):
                args.append(arg)
        args += ["--sync-tracking", str(self.run_folder)]
        return " ".join(["python run_ablation.py", *(shlex.quote(a) for a in args)])

    def resume_command(self) -> str:
        args = list(self.opts.command) if self.opts.command else [self.study.source]
        if "--resume" not in args:
            args.append("--resume")
        if not self.opts.command and self.opts.results_dir:
            args += ["--results-dir", self.opts.results_dir]
        return " ".join(["python run_ablation.py", *(shlex.quote(a) for a in args)])


def resolve_plan(study: Study, opts: RunOptions) -> StudyPlan:
    settings = study.settings
    check_run_options(opts.max_concurrent, opts.time_budget_s, opts.pending_timeout_s)
    check_client_resume(opts)
    base = dict(study.base)
    if opts.data_dir:
        base["data"] = {**base["data"], "root": str(Path(opts.data_dir).expanduser().resolve())}
    cpus = settings.cpus_per_trial if opts.cpus_per_trial is None else opts.cpus_per_trial
    gpus = settings.gpus_per_trial if opts.gpus_per_trial is None else opts.gpus_per_trial
    max_epochs = study.max_epochs()
    points = study.grid_points() if settings.mode == "grid" else None
    notes: list[str] = []
    if opts.smoke:
        smoke = smoke_setup(base, settings, smoke_points(study), cpus, gpus, local=not opts.joins_cluster)
        base, points, cpus, gpus, notes = smoke.base, smoke.points, smoke.cpus, smoke.gpus, smoke.notes
        max_epochs = settings.smoke.epochs
    check_trial_request(cpus, gpus, base.get("device", "auto"), request_source(opts))
    if gpus == 0 and base.get("device") == "auto":
        base["device"] = "cpu"  # a trial without a GPU share must not grab one

    results_root = Path(opts.results_dir or settings.results_dir).expanduser().resolve()
    fingerprint = study_fingerprint(study, base, points, max_epochs, opts.smoke)
    run_folder, state, others = run_folder_and_state(study, opts, results_root / study.name, fingerprint)
    # One experiment folder per invocation, also under shared storage, so studies never collide.
    storage_path = state.get("storage") or (
        f"{opts.storage.rstrip('/')}/{study.name}/{run_folder.name}" if opts.storage else str(run_folder / "ray"))
    tracking_uri = run_tracking_uri(opts, state, run_folder)

    first = points[0] if points else study.first_point()
    trial0 = trial_config(base, first.overrides, first.seed)
    # Data and teacher are loaded on the driver; they reach the trials through Ray's object store.
    needs_teacher = any(
        trial_config(base, p.overrides, p.seed).uses_teacher for p in (points or [study.first_point()])
    ) or settings.mode == "search"
    plan = StudyPlan(study=study, opts=opts, base=base, cpus=cpus, gpus=gpus, max_epochs=max_epochs, points=points,
                     trial0=trial0, needs_teacher=needs_teacher, results_root=results_root, run_folder=run_folder,
                     state=state, storage_path=storage_path, tracking_uri=tracking_uri, notes=notes)
    record_fingerprint(plan, fingerprint)
    if others:
        plan.notes.append(f"note: other interrupted runs of '{study.name}' (another --set, or an older definition): "
                          f"{', '.join(str(f) for f in others)}; --resume PATH continues one of them")
    if plan.searching and not opts.resume:  # a resumed search already holds them in its Optuna study
        plan.warm_start = load_warm_start(study)
        if plan.warm_start:
            plan.notes.append(plan.warm_start.describe())
    return plan


def run_tracking_uri(opts: RunOptions, state: dict, run_folder: Path) -> str:
    """--tracking-uri, else the resumed run's, else $MLFLOW_TRACKING_URI, else sqlite beside the study's runs."""
    return (opts.tracking_uri or state.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI")
            or f"sqlite:///{run_folder.parent / 'mlflow.db'}")


def record_fingerprint(plan: StudyPlan, fingerprint: dict) -> None:
    """A fresh run records what defines its trials; a resumed one must match it (or nothing goes on)."""
    if not plan.opts.resume:
        plan.state[FINGERPRINT_KEY] = fingerprint
        return
    notes, added = check_resume(plan.state.get(FINGERPRINT_KEY), fingerprint, plan.run_folder)
    plan.notes += notes
    plan.state.setdefault(FINGERPRINT_KEY, fingerprint)
    if plan.opts.sync_tracking:
        if added:
            raise StudyRunError(f"--sync-tracking records the run as it ran; this study adds {len(added)} trial(s) "
                                f"({listed(added)}): sync with the study as given then, and add them with --resume")
        return
    plan.state.setdefault("resumed", []).append(code_version())
    if added:
        record_additions(plan, fingerprint, added)


def record_additions(plan: StudyPlan, fingerprint: dict, added: list[str]) -> None:
    """Plans the added trials as one more experiment; the run's definition becomes the larger study's."""
    additions = plan.state.setdefault(ADDITIONS_KEY, [])
    name = f"{FIRST_EXPERIMENT}-added-{len(additions) + 1}"
    additions.append({"name": name, "trials": added, "at": fingerprint.get("at")})
    plan.state[FINGERPRINT_KEY] = fingerprint
    kept = plan.run_trials - len(added)
    plan.notes.append(
        f"note: --resume adds {len(added)} trial(s) ({listed(added)}) to the {kept} this run planned before; "
        f"those are kept as they are (finished ones are not run again) and the added ones run as experiment "
        f"'{name}'" + (", where ASHA compares them among themselves only" if plan.settings.asha.enabled
                       and not plan.opts.smoke else ""))


def request_source(opts: RunOptions) -> str:
    flags = [f for f, v in (("--cpus-per-trial", opts.cpus_per_trial), ("--gpus-per-trial", opts.gpus_per_trial))
             if v is not None]
    return " and ".join(flags) + " given" if flags else ""


def check_client_resume(opts: RunOptions) -> None:
    address = opts.effective_address or ""
    if opts.resume and address.startswith("ray://"):
        # Through Ray Client, Tune runs on the cluster's head: the interrupted experiment is there, beyond
        # this machine's reach, and restoring it from here would start the study over instead.
        raise StudyRunError(
            f"--resume cannot work through a Ray Client address ({address}): the interrupted run's experiment "
            f"state is on the cluster, not on this machine. Resume from a driver on the cluster, e.g. "
            f"ray job submit --address http://HEAD:8265 -- python run_ablation.py STUDY.yaml --address auto --resume")


def run_folder_and_state(study: Study, opts: RunOptions, study_root: Path,
                         fingerprint: dict) -> tuple[Path, dict, list[Path]]:
    """A fresh, time-stamped run folder; or with --resume the run to continue, its saved state, and the
    study's other interrupted runs. --resume takes the latest run whose trials this study as given defines
    (a parallel invocation with another --set is not it); --resume PATH takes that run folder."""
    if not opts.resume:
        if opts.within is not None:
            return opts.within.run_folder, {}, []
        stamp = time.strftime("%Y%m%d-%H%M%S") + ("-smoke" if opts.smoke else "")
        return study_root / stamp, {}, []
    if isinstance(opts.resume, str):
        folder = Path(opts.resume).expanduser().resolve()
        if not (folder / STATE_FILE).is_file():
            raise StudyRunError(f"--resume {opts.resume}: {folder} is not a run folder (it holds no {STATE_FILE})")
        state = json.loads((folder / STATE_FILE).read_text())
        if state.get("study") not in (None, study.name):
            raise StudyRunError(f"--resume {opts.resume}: that run is of study '{state.get('study')}', not "
                                f"'{study.name}'")
        return folder, state, []
    candidates = run_folders(study_root, smoke=opts.smoke)
    if not candidates:
        raise StudyRunError(f"nothing to resume: no earlier run of '{study.name}' under {study_root}")
    states = {folder: json.loads((folder / STATE_FILE).read_text()) for folder in candidates}
    chosen = next((f for f in candidates if _resumes(states[f], fingerprint, f)), candidates[0])
    others = [f for f in candidates if f != chosen and states[f].get("status") not in ("completed", None)]
    return chosen, states[chosen], others


def _resumes(state: dict, fingerprint: dict, folder: Path) -> bool:
    try:
        check_resume(state.get(FINGERPRINT_KEY), fingerprint, folder)
        return True
    except StudyRunError:
        return False


def run_folders(study_root: Path, smoke: bool = False, state_file: str = STATE_FILE) -> list[Path]:
    """The study's run folders with a saved state, newest first (smoke runs and real runs apart)."""
    found = [p.parent for p in study_root.glob("*/" + state_file) if p.parent.name.endswith("-smoke") == smoke]
    return sorted(found, key=lambda folder: folder.name, reverse=True)


def planned_trial_epochs(study: Study) -> int:
    return study.planned_trials() * study.max_epochs()
