"""Stage 2: what the trials need before Tune starts: checks, Ray, the data, the teacher, its output cache.

Everything that can be checked up front is, before anything is written. The data
and the teacher are loaded on the driver and reach the trials through Ray's object
store.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ..cli import console
from ..metrics import EPOCH, TEST_ACC1
from ..preflight import (StudyRunError, check_experiment_storage, check_folder_writable, check_free_space,
                         check_tracking_store, estimate_disk_bytes)
from ..raytune.resources import Growth, Node, Request, check_capacity
from ..smoke import local_cpus, local_gpus
from ..raytune.trainable import OutputCacheSpec
from .cache_plan import teacher_cache_decisions
from .plan import StudyPlan

if TYPE_CHECKING:
    import torch.nn as nn

    from ...method.data import DataBundle

Log = Callable[[str], None]


@dataclass
class Prepared:
    data: DataBundle
    hosts: set[str]  # the Ray cluster's live hosts
    teacher: nn.Module | None = None  # frozen, on the CPU; None when no trial needs one
    teacher_info: dict = field(default_factory=lambda: {"source": "none"})
    # Every distinct teacher the trials use (method.teachers.teacher_identity -> model), each prepared once.
    teachers: dict = field(default_factory=dict)
    output_cache: OutputCacheSpec | None = None
    growth: Growth = field(default_factory=lambda: Growth(False, "not checked"))


def prepare(plan: StudyPlan, log: Log) -> Prepared:
    data = check_inputs(plan)
    requests = resource_requests(plan, data)
    if starts_local_ray(plan):
        # The instance about to start is this machine, known without starting it: refuse in a second.
        check_capacity(requests, False, plan.opts.autoscaling, plan.opts.pending_timeout_s, log,
                       nodes=[Node(float(local_cpus()), float(local_gpus()))])
    start_ray(plan)
    growth = check_capacity(requests, plan.opts.joins_cluster, plan.opts.autoscaling, plan.opts.pending_timeout_s, log)
    hosts = cluster_hosts()
    check_experiment_storage(plan.storage_path, hosts)
    create_run_folder(plan)
    announce(plan, log)
    prepared = Prepared(data=data, hosts=hosts, growth=growth)
    if plan.needs_teacher:
        load_teachers(plan, prepared, log)
        prepared.output_cache = prepare_output_cache(plan, prepared, log)
    return prepared


def load_teachers(plan: StudyPlan, prepared: Prepared, log: Log) -> None:
    """Each distinct teacher once; trial0's (or the first) is ``prepared.teacher``, as a single-teacher study has it."""
    from ...method.teachers import teacher_identity

    uses = plan.teacher_uses() or {teacher_identity(plan.trial0.teacher): None}
    infos = {}
    for identity, use in uses.items():
        cfg = use.cfg if use is not None else plan.trial0.teacher
        if len(uses) > 1:
            log(f"teacher {cfg.arch} ({len(use.trials)} trial(s)): {cfg.checkpoint or 'trained once'}")
        prepared.teachers[identity], infos[identity] = load_teacher(plan, prepared.data, log, cfg)
    first = teacher_identity(plan.trial0.teacher)
    prepared.teacher = prepared.teachers.get(first, next(iter(prepared.teachers.values())))
    prepared.teacher_info = infos.get(first, next(iter(infos.values()))) if len(infos) == 1 else {"teachers": infos}


def check_inputs(plan: StudyPlan) -> DataBundle:
    """The teacher checkpoint, the data, the results folder, the tracking store and free disk; returns the data."""
    from ...method.data import load_data, num_classes, train_size
    from ...method.teachers import load_teacher_checkpoint

    from ..study.teachers import check_checkpoints

    trial0 = plan.trial0
    # Every trial's checkpoint, all missing ones named at once, before the data is downloaded.
    uses = plan.teacher_uses()
    check_checkpoints(uses, num_classes(trial0.data))
    if trial0.teacher.checkpoint and not uses:
        load_teacher_checkpoint(trial0.teacher.checkpoint, trial0.teacher.arch, num_classes(trial0.data))
    data = load_data(trial0.data)  # a missing dataset fails here, before anything is written
    if trial0.transfer is not None:
        from ...method.transfer_data import prepare_targets

        prepare_targets(trial0.transfer, trial0.data)  # a missing target too; STL-10 is downloaded once, here
    check_folder_writable(plan.run_folder, "results folder")
    check_tracking_store(plan.tracking_uri)
    check_free_space(plan.run_folder, max(int(plan.settings.min_free_gb * 2**30),
                                          estimate_disk_bytes(plan.study, trial0, train_size(trial0.data))))
    return data


def start_ray(plan: StudyPlan) -> None:
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import logging

    import ray

    if ray.is_initialized():
        return
    # Without --address (or RAY_ADDRESS, as set by `ray job submit`) start a private local
    # instance rather than attaching to whatever cluster happens to run on this machine.
    opts = plan.opts
    address = opts.effective_address or "local"
    # The local instance has what the smoke caps and the refusals count, cgroup quotas included.
    local = {} if opts.joins_cluster else {"num_cpus": local_cpus(), "num_gpus": local_gpus()}
    try:
        # Worker output and INFO lines reach the driver: on the terminal with -v, else in the run's log (console).
        ray.init(address=address, include_dashboard=False, log_to_driver=True, logging_level=logging.INFO,
                 configure_logging=True, **local)
    except Exception as err:  # ConnectionError, auth and version mismatches all land here
        raise StudyRunError(f"cannot join the Ray cluster at {address}: {type(err).__name__}: {err}") from None


def starts_local_ray(plan: StudyPlan) -> bool:
    import sys

    ray = sys.modules.get("ray")  # only an imported Ray can already be running
    return not plan.opts.joins_cluster and not (ray is not None and ray.is_initialized())


def resource_requests(plan: StudyPlan, data: DataBundle) -> list[Request]:
    """What must fit on one node: a trial, and the teacher's training task when one will run."""
    requests = [Request("a trial", plan.cpus, plan.gpus)]
    if plan.needs_teacher and trains_teacher_remotely(plan) and not plan.trial0.teacher.checkpoint:
        from ...method.teachers import teacher_cache_path

        teacher = plan.trial0.teacher
        if not teacher_cache_path(teacher, data, plan.teacher_dir, plan.trial0.data.augment).is_file():
            requests.append(Request("the teacher's training task", plan.cpus, 1.0 if plan.gpus else 0.0))
    return requests


def trains_teacher_remotely(plan: StudyPlan) -> bool:
    # On a cluster the driver may sit on a CPU-only head: train where a trial would run.
    return bool(plan.gpus) or plan.opts.joins_cluster


def cluster_hosts() -> set[str]:
    import ray

    return {n["NodeManagerAddress"] for n in ray.nodes() if n.get("Alive")}


def create_run_folder(plan: StudyPlan) -> None:
    try:
        if plan.opts.resume or plan.opts.within is not None:  # a comparison's phase: inside its claimed folder
            plan.run_folder.mkdir(parents=True, exist_ok=True)  # writability was checked above
        else:
            claim_fresh_folder(plan)
    except OSError as err:
        raise StudyRunError(f"results folder {plan.run_folder} cannot be created: {err.strerror or err}") from None
    console.attach_log(plan.run_folder)
    study = plan.study
    plan.state.update({"study": study.name, "source": study.source, "storage": plan.storage_path,
                       "tracking_uri": plan.tracking_uri, "smoke": plan.opts.smoke, "status": "running"})


def claim_fresh_folder(plan: StudyPlan) -> None:
    """A fresh run's own folder: its time stamp, or the stamp and a number when another invocation of the
    study started in the same second (a job array, a shell loop): created exclusively, never shared."""
    planned = plan.run_folder
    folder = claim_stamped_folder(planned)
    if folder != planned:
        plan.run_folder = folder
        if plan.storage_path == str(planned / "ray"):
            plan.storage_path = str(folder / "ray")
        elif plan.storage_path.endswith("/" + planned.name):
            plan.storage_path = plan.storage_path[:-len(planned.name)] + folder.name


def claim_stamped_folder(planned: Path) -> Path:
    """``planned`` (a time stamp, maybe ending -smoke) created exclusively, or the first free ``<stamp>-NN``."""
    planned.parent.mkdir(parents=True, exist_ok=True)
    stamp, smoke = (planned.name[:-len("-smoke")], "-smoke") if planned.name.endswith("-smoke") else (planned.name, "")
    for n in range(1, 1000):
        folder = planned if n == 1 else planned.with_name(f"{stamp}-{n:02d}{smoke}")
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue
    raise StudyRunError(f"results folder {planned.parent} already holds 999 runs started at {stamp}")


def announce(plan: StudyPlan, log: Log) -> None:
    from ..tracking.runs import ui_command

    study = plan.study
    for note in plan.notes:
        log(note)
    log(f"study '{study.name}': {plan.run_trials} trials, "
        f"up to {plan.max_epochs} epochs each; results in {plan.run_folder}")
    if console.log_path():
        log(f"Ray, MLflow and Optuna output: {console.log_path()} (-v shows it here)")
    log(f"MLflow tracking URI: {plan.tracking_uri}")
    log(f"open the UI:  {ui_command(plan.tracking_uri)}")


def driver_has_trial_device(plan: StudyPlan) -> bool:
    """Whether this process can compute on the device the trials get: the CPU, or a GPU when they get a share."""
    if not plan.gpus:
        return True
    import torch

    return torch.cuda.is_available()


def driver_device(plan: StudyPlan) -> str:
    """Where the driver trains the teacher and builds its cache: the trials' device when they get a GPU share."""
    return plan.trial0.device if plan.gpus else "cpu"


def load_teacher(plan: StudyPlan, data: DataBundle, log: Log, teacher_cfg=None) -> tuple[nn.Module, dict]:
    import dataclasses

    from ...method.device import resolve_device
    from ...method.teachers import get_teacher, teacher_test_acc1

    trial0 = plan.trial0
    if teacher_cfg is not None:
        trial0 = dataclasses.replace(trial0, teacher=teacher_cfg)
    train_fn = None
    if trains_teacher_remotely(plan):
        train_fn = remote_teacher_training(trial0, data, plan.cpus, 1 if plan.gpus else 0)
    teacher, info = get_teacher(
        trial0.teacher, data, trial0.data, device=driver_device(plan), cache_dir=plan.teacher_dir,
        log=lambda m: log(m), train_fn=train_fn,
        callback=lambda m: log(f"  teacher epoch {m[EPOCH]}: {TEST_ACC1} {m.get(TEST_ACC1, float('nan')):.2f}"))
    # Recorded by its training when it was trained or cached here; a given checkpoint is measured once.
    info["test_acc1"] = teacher_test_acc1(teacher, data, info, device=resolve_device(driver_device(plan)))
    return teacher.cpu().eval(), info


def teacher_task_device(gpus: float) -> str:
    """Where the teacher's Ray task trains: ``auto`` on the GPU it holds, else the CPU.

    Never ``auto`` without a GPU: Ray hides no GPU from a task that asks for none (it leaves
    CUDA_VISIBLE_DEVICES alone), so ``auto`` there would train on a GPU nothing reserved. With one,
    Ray makes the reserved GPU the only one visible, and ``auto`` takes it, as a trial's ``auto`` does
    (a GPU declared to Ray that torch cannot use trains on the CPU, like the trials beside it).
    """
    return "auto" if gpus else "cpu"


def remote_teacher_training(trial0, data: DataBundle, cpus: float, gpus: int) -> Callable[[], nn.Module]:
    import ray

    device = teacher_task_device(gpus)

    def train() -> object:
        from ...method.models import create_model

        @ray.remote(num_cpus=cpus, num_gpus=gpus)
        def train_on_worker(teacher_cfg, bundle, data_cfg):
            import torch

            from ...method.teachers import train_teacher

            torch.set_num_threads(max(1, int(cpus)))
            model = train_teacher(teacher_cfg, bundle, data_cfg, device=device)
            return {k: v.detach().cpu() for k, v in model.state_dict().items()}, model.final_metrics

        state, final = ray.get(train_on_worker.remote(trial0.teacher, data, trial0.data))
        model = create_model(trial0.teacher.arch, data.num_classes)
        model.load_state_dict(state)
        model.final_metrics = final
        return model.eval()

    return train


def prepare_output_cache(plan: StudyPlan, prepared: Prepared, log: Log) -> OutputCacheSpec | None:
    """Decides on each teacher's output cache and, on a single host whose driver has the trials' device, builds it here."""
    data = prepared.data
    # A cluster joined through RAY_ADDRESS counts as one: an autoscaling cluster may show only its head yet.
    on_cluster = len(prepared.hosts) > 1 or plan.opts.joins_cluster
    lacks_device = not driver_has_trial_device(plan)
    several = len(prepared.teachers) > 1
    decisions = teacher_cache_decisions(
        plan.study, plan.base, plan.points, plan.max_epochs, data.num_train, data.num_classes,
        feature_dims={k: getattr(t, "feature_dim") for k, t in prepared.teachers.items()},
        smoke=plan.opts.smoke, on_cluster=on_cluster)
    cached: dict[str, str] = {}
    for identity, teacher in prepared.teachers.items():
        decision = decisions[identity]
        reason, dtype = decision.reason, decision.trial.teacher.cache_dtype
        if decision.enabled and lacks_device and not on_cluster:
            reason += ("; this driver sees no GPU while each trial gets one, so each node builds its own copy once, "
                       "on its own device, before its first trial")
        log(f"teacher-output cache{f' of {identity}' if several else ''}: {reason}")
        if not decision.enabled:
            continue
        cached[identity] = dtype
        if not on_cluster and not lacks_device:
            from ...method.device import resolve_device
            from ...method.output_cache import get_or_build_cache

            # Built here once, so that trials open it instead of queueing on the build lock.
            with console.shown():  # the build's progress line
                cache = get_or_build_cache(teacher, data, plan.teacher_dir, dtype=dtype,
                                           device=resolve_device(driver_device(plan)), log=log)
            info = prepared.teacher_info["teachers"][identity] if several else prepared.teacher_info
            info["output_cache"] = str(cache.path)
    if not cached:
        return None
    return OutputCacheSpec(folder=str(Path(plan.teacher_dir).resolve()), dtype=next(iter(cached.values())),
                           teachers=cached if several else None)
