"""Checks made before a study writes or starts anything, so failures come early and clearly.

Each check raises ``StudyRunError`` naming what is wrong and where; the CLI
turns it into exit status 2 with nothing written.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path
from urllib.parse import urlparse

SHARED_FILESYSTEMS = {"nfs", "nfs4", "cifs", "smb3", "lustre", "gpfs", "beegfs", "glusterfs", "cephfs", "ceph",
                      "fuse.sshfs", "fuse.s3fs", "fuse.gcsfuse", "fuse.juicefs", "efs", "9p", "virtiofs", "fuse.mountpoint-s3"}


class StudyRunError(RuntimeError):
    """A study cannot start as configured; the message says what and where."""


def _first_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists():
        if path.parent == path:
            break
        path = path.parent
    return path


def check_folder_writable(folder: Path, what: str) -> None:
    """``folder`` exists and is writable, or can be created: checked without creating it."""
    anchor = _first_existing(folder)
    if not anchor.is_dir():
        raise StudyRunError(f"{what} {folder} cannot be created: {anchor} is a file, not a folder")
    if not os.access(anchor, os.W_OK | os.X_OK):
        raise StudyRunError(f"{what} {folder} is not writable ({anchor} denies writing)")
    if anchor == folder.absolute() and folder.exists():
        try:
            probe = folder / ".icd_tune_write_probe"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as err:
            raise StudyRunError(f"{what} {folder} is not writable: {err.strerror or err}") from None


def check_free_space(folder: Path, needed_bytes: int, what: str = "results folder") -> None:
    anchor = _first_existing(folder)
    free = shutil.disk_usage(anchor).free
    if free < needed_bytes:
        raise StudyRunError(
            f"not enough disk space for the {what} {folder}: this study needs about {needed_bytes / 2**30:.2f} GiB "
            f"(checkpoints{', teacher-output cache' if what == 'results folder' else ''} and reports), "
            f"{free / 2**30:.2f} GiB free on {anchor}; free space, or point --results-dir / --storage elsewhere")


def check_tracking_store(uri: str) -> None:
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite":
        db = Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None
        if db is None:
            raise StudyRunError(f"MLflow tracking URI {uri} is not sqlite:///path/to/file.db")
        if db.exists() and not os.access(db, os.W_OK):
            raise StudyRunError(f"MLflow tracking store {db} is not writable")
        check_folder_writable(db.parent, "MLflow tracking store folder")
    elif parsed.scheme in ("http", "https"):
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=10) as response:
                if response.status != 200:
                    raise StudyRunError(f"MLflow tracking server {uri} answered /health with {response.status}")
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise StudyRunError(f"MLflow tracking server {uri} is not reachable: {reason}; start it "
                                f"(mlflow server --host 127.0.0.1 ...) or pass another --tracking-uri") from None
    elif parsed.scheme in ("", "file"):
        folder = Path(parsed.path if parsed.scheme == "file" else uri)
        check_folder_writable(folder, "MLflow tracking folder")


def is_remote_uri(storage: str) -> bool:
    return "://" in storage and not storage.startswith("file://")


def filesystem_type(path: Path) -> str | None:
    """The mount type under ``path`` from /proc/mounts (Linux); None when unknown."""
    try:
        mounts = [line.split() for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return None
    target = str(_first_existing(path).resolve())
    best = ("", None)
    for fields in mounts:
        if len(fields) >= 3 and (target == fields[1] or target.startswith(fields[1].rstrip("/") + "/")):
            if len(fields[1]) > len(best[0]):
                best = (fields[1], fields[2])
    return best[1]


def check_experiment_storage(storage: str, hosts: set[str]) -> None:
    """Every node must reach the experiment storage: a multi-host cluster needs a URI or a shared FS."""
    if is_remote_uri(storage):
        try:
            import pyarrow.fs

            pyarrow.fs.FileSystem.from_uri(storage)
        except Exception as err:
            raise StudyRunError(f"experiment storage {storage} cannot be opened: {err}") from None
        return
    path = Path(storage[len("file://"):] if storage.startswith("file://") else storage)
    check_folder_writable(path, "experiment storage")
    if len(hosts) > 1:
        fs = filesystem_type(path)
        if fs not in SHARED_FILESYSTEMS:
            raise StudyRunError(
                f"experiment storage {path} is local to this machine ({fs or 'unknown'} file system), but the Ray "
                f"cluster spans {len(hosts)} hosts ({', '.join(sorted(hosts))}): trials on other nodes could not save "
                f"or restore checkpoints. Pass --storage s3://BUCKET/PATH, gs://BUCKET/PATH, or a shared file system path")


def estimate_disk_bytes(study, trial0, num_train: int, cache_bytes: int = 0) -> int:
    """Rough upper bound on what the study writes: checkpoints kept per trial, reports, the cache."""
    from ..method.distillers import get_method
    from ..method.models import create_model

    student = create_model(trial0.student, 100 if trial0.data.name == "cifar100" else 10)
    params = sum(p.numel() for p in student.parameters())
    per_checkpoint = params * 4 * 2 + 4 * 2**20  # weights + momentum + heads and state
    per_checkpoint += get_method(trial0.method).state_bytes(trial0.loss, num_train)
    trials = study.planned_trials()
    kept = 3  # two kept plus one being written
    return trials * kept * per_checkpoint + cache_bytes + 64 * 2**20


def check_trial_request(cpus: float, gpus: float, device: str, source: str = "") -> None:
    """Per-trial resources that can never make sense, whatever the cluster: refused before Ray starts."""
    where = f" ({source})" if source else ""
    if cpus <= 0:
        raise StudyRunError(f"cpus_per_trial {cpus:g}{where}: expected more than 0")
    if gpus < 0:
        raise StudyRunError(f"gpus_per_trial {gpus:g}{where}: expected 0 or more")
    if gpus > 1:
        raise StudyRunError(f"gpus_per_trial {gpus:g}{where}: a trial trains on one device, so it can use at most "
                            f"1 GPU; use 1, or a fraction such as 0.5 to pack trials on one GPU")
    if device == "cuda" and gpus == 0:
        raise StudyRunError(f"device: cuda with gpus_per_trial 0{where}: Ray would give the trials no GPU, so "
                            f"none could see one; set gpus_per_trial (e.g. 1, or 0.5 to pack two per GPU), "
                            f"or device: auto / cpu")


def check_run_options(max_concurrent: int | None, time_budget_s: float | None,
                      pending_timeout_s: float | None) -> None:
    if max_concurrent is not None and max_concurrent < 1:
        raise StudyRunError(f"--max-concurrent {max_concurrent}: expected at least 1; omit the flag for no limit")
    if time_budget_s is not None and time_budget_s <= 0:
        raise StudyRunError(f"--time-budget {time_budget_s:g} s: expected a positive duration such as 90m or 2h")
    if pending_timeout_s is not None and pending_timeout_s <= 0:
        raise StudyRunError(f"--pending-timeout {pending_timeout_s / 60:g}: expected a positive number of minutes")


def parse_duration(text: str) -> float:
    """'90m', '2h', '1.5h', '45s', '1d' -> seconds; a bare number is refused, its unit would be a guess."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    value = str(text).strip().lower()
    unit = value[-1:] if value[-1:] in units else None
    try:
        number = float(value[:-1] if unit else "x")
    except ValueError:
        raise ValueError(f"'{text}' is not a duration: give a number and a unit, e.g. 90m, 2h, 1.5h, 45s") from None
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f"'{text}': expected a positive duration, e.g. 90m, 2h, 1.5h")
    return number * units[unit]
