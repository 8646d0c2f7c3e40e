"""What ``bench/gpu_platform.py`` checks on a finished study run: read its store and folder, judge, tabulate.

Everything here reads what a study run left (its run folder, its MLflow store, its
Ray checkpoints); nothing starts a study. ``phase_checks`` judges one run against an
``Expect``; ``cpu_probe`` loads a student and the trials' checkpoints in a fresh
process with CUDA hidden (run as ``python bench/gpu_platform_checks.py --probe JSON``).

A check is PASS or FAIL; a check that only means something on a GPU is ``n/a (cpu)``
on a CPU run, and FAIL there too when the run shows what a CPU run must not (GPU
figures logged by a trial that trained on the CPU).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PASS, FAIL, NA_CPU = "PASS", "FAIL", "n/a (cpu)"
STATE_FILE = "study_state.json"
# What every finished study run writes, whatever its mode (report.txt lists the rest it wrote in the state file).
REPORT_FILES = ("report.txt", "trials.parquet", "history.parquet", "learning_curves.png")
GPU_MEMORY, GPU_UTILIZATION = "system/gpu_memory_mb", "system/gpu_utilization_percent"
VAL_ACC1 = "val/acc1"


@dataclass
class Check:
    name: str
    status: str  # PASS, FAIL or n/a (cpu)
    figure: str


@dataclass
class Expect:
    """What one phase's run must show."""

    trials: int  # at least this many trials
    gpu: bool  # the trials trained on CUDA: system/gpu_* required (else required absent, reported n/a (cpu))
    min_concurrent: int = 1  # trials running at once, by their MLflow runs' start and end times (GPU runs only)
    nvml: bool = False  # system/gpu_utilization_percent required too (NVML bindings are installed)
    teacher_source: str | None = None  # every run's icd_tune.teacher.source (trained, cache); None: not checked
    teacher_outputs: str | None = None  # every run's icd_tune.teacher.outputs (exact cache, live teacher)


@dataclass
class TrialRun:
    """One trial as the run folder (trials.parquet) and its MLflow child run recorded it."""

    trial_id: str
    status: str  # completed, stopped, failed (the run folder's word)
    epochs: int
    run_id: str | None = None
    run_status: str | None = None  # MLflow's: FINISHED, FAILED, KILLED, RUNNING
    start_ms: int | None = None
    end_ms: int | None = None
    tags: dict = field(default_factory=dict)
    val_steps: list[int] = field(default_factory=list)  # the epochs whose val/acc1 the run holds
    gpu_memory: list[float] = field(default_factory=list)
    gpu_utilization: list[float] = field(default_factory=list)


@dataclass
class PhaseRecord:
    name: str
    run_folder: Path
    state: dict
    trials: list[TrialRun]
    orphan_runs: int  # child runs that no trial of the run folder names


def max_overlap(intervals: Iterable[tuple[float, float]]) -> int:
    """The most intervals that share one instant; each is [start, end), so one ending as another starts is not."""
    events = []
    for start, end in intervals:
        if end > start:
            events += [(start, 1), (end, -1)]
    running = best = 0
    for _, step in sorted(events):  # at equal times -1 sorts before +1: an end frees its place first
        running += step
        best = max(best, running)
    return best


def read_phase(name: str, run_folder: str | Path) -> PhaseRecord:
    """The run folder's trials joined with their MLflow child runs (by the icd_tune.trial_id tag)."""
    import pyarrow.parquet as pq
    from mlflow.tracking import MlflowClient

    from icd_tune.platform.tracking.runs import PARENT_TAG, TRIAL_TAG

    folder = Path(run_folder)
    state = json.loads((folder / STATE_FILE).read_text())
    rows = pq.read_table(folder / "trials.parquet").to_pylist() if (folder / "trials.parquet").is_file() else []
    trials = {r["trial_id"]: TrialRun(r["trial_id"], str(r["status"]), int(r["epochs"] or 0)) for r in rows}
    client = MlflowClient(state["tracking_uri"])
    runs = client.search_runs([state["experiment_id"]], f"tags.`{PARENT_TAG}` = '{state['parent_run_id']}'",
                              max_results=10_000)
    orphans = 0
    for run in runs:
        trial = trials.get(run.data.tags.get(TRIAL_TAG))
        if trial is None:
            orphans += 1
            continue
        trial.run_id, trial.run_status = run.info.run_id, run.info.status
        trial.start_ms, trial.end_ms, trial.tags = run.info.start_time, run.info.end_time, dict(run.data.tags)
        history = {key: client.get_metric_history(run.info.run_id, key) for key in (VAL_ACC1, GPU_MEMORY, GPU_UTILIZATION)}
        trial.val_steps = sorted(m.step for m in history[VAL_ACC1])
        trial.gpu_memory = [m.value for m in history[GPU_MEMORY]]
        trial.gpu_utilization = [m.value for m in history[GPU_UTILIZATION]]
    return PhaseRecord(name, folder, state, list(trials.values()), orphans)


def exit_check(name: str, rc: int | None) -> Check:
    return Check(f"{name}: exit status", PASS if rc == 0 else FAIL, "did not run" if rc is None else str(rc))


def wall_check(name: str, wall_s: float, budget_s: float, trials: int, gpu: bool) -> Check:
    """The phase's wall time within its budget, with trials per GPU-hour (one GPU), or per hour on the CPU."""
    rate = trials / (wall_s / 3600.0) if wall_s > 0 else float("nan")
    per = "trials per GPU-hour" if gpu else "trials per hour (cpu)"
    return Check(f"{name}: wall time", PASS if 0 < wall_s <= budget_s else FAIL,
                 f"{wall_s:.1f} s of {budget_s:.0f} s; {trials} trials, {rate:.0f} {per}")


def phase_checks(rec: PhaseRecord, expect: Expect) -> list[Check]:
    """Trials and child runs, per-epoch history, system/gpu_*, concurrency, report files, teacher, students."""
    return [trials_check(rec, expect), runs_check(rec), history_check(rec), gpu_metrics_check(rec, expect),
            concurrency_check(rec, expect), report_files_check(rec), teacher_check(rec, expect), students_check(rec)]


def trials_check(rec: PhaseRecord, expect: Expect) -> Check:
    ended = [t for t in rec.trials if t.status in ("completed", "stopped")]
    counts = {s: sum(t.status == s for t in rec.trials) for s in sorted({t.status for t in rec.trials})}
    ok = len(rec.trials) >= expect.trials and len(ended) == len(rec.trials)
    text = ", ".join(f"{n} {s}" for s, n in counts.items()) or "none"
    return Check(f"{rec.name}: trials", PASS if ok else FAIL, f"{len(rec.trials)} (at least {expect.trials}): {text}")


def runs_check(rec: PhaseRecord) -> Check:
    finished = [t for t in rec.trials if t.run_status == "FINISHED" and t.end_ms]
    ok = bool(rec.trials) and len(finished) == len(rec.trials) and rec.orphan_runs == 0
    extra = f"; {rec.orphan_runs} child runs of no trial" if rec.orphan_runs else ""
    return Check(f"{rec.name}: MLflow child runs", PASS if ok else FAIL,
                 f"{len(finished)}/{len(rec.trials)} FINISHED{extra}")


def history_check(rec: PhaseRecord) -> Check:
    """Every epoch a trial ran has its val/acc1 in the run, once: steps 1..epochs exactly."""
    whole = [t for t in rec.trials if t.epochs > 0 and t.val_steps == list(range(1, t.epochs + 1))]
    ok = bool(rec.trials) and len(whole) == len(rec.trials)
    logged = sum(len(t.val_steps) for t in rec.trials)
    return Check(f"{rec.name}: per-epoch {VAL_ACC1}", PASS if ok else FAIL,
                 f"{len(whole)}/{len(rec.trials)} runs hold every epoch; {logged} epochs logged, "
                 f"{sum(t.epochs for t in rec.trials)} run")


def gpu_metrics_check(rec: PhaseRecord, expect: Expect) -> Check:
    """One positive system/gpu_memory_mb per epoch in every run (and the utilisation where NVML answers)."""
    name = f"{rec.name}: system/gpu_*"
    with_memory = [t for t in rec.trials if len(t.gpu_memory) == t.epochs > 0 and min(t.gpu_memory) > 0]
    with_util = [t for t in rec.trials if len(t.gpu_utilization) == t.epochs > 0]
    if not expect.gpu:
        logged = sum(bool(t.gpu_memory or t.gpu_utilization) for t in rec.trials)
        return Check(name, NA_CPU if logged == 0 else FAIL,
                     f"{logged} runs logged GPU figures (a CPU trial must log none)")
    peak = max((max(t.gpu_memory) for t in with_memory), default=0.0)
    util = (f"utilisation {len(with_util)}/{len(rec.trials)} runs (max "
            f"{max((max(t.gpu_utilization) for t in with_util), default=0.0):.0f}%)" if with_util
            else "utilisation not logged" + ("" if expect.nvml else " (no NVML bindings here)"))
    ok = bool(rec.trials) and len(with_memory) == len(rec.trials) and (
        len(with_util) == len(rec.trials) if expect.nvml else True)
    return Check(name, PASS if ok else FAIL,
                 f"memory {len(with_memory)}/{len(rec.trials)} runs, every epoch (peak {peak:.0f} MiB); {util}")


def concurrency_check(rec: PhaseRecord, expect: Expect) -> Check:
    spans = [(t.start_ms, t.end_ms) for t in rec.trials if t.start_ms is not None and t.end_ms is not None]
    most = max_overlap(spans)
    figure = f"at most {most} trials at once (need {expect.min_concurrent}), from {len(spans)} runs' start and end"
    if not expect.gpu:
        return Check(f"{rec.name}: concurrent trials", NA_CPU, figure)
    return Check(f"{rec.name}: concurrent trials", PASS if most >= expect.min_concurrent else FAIL, figure)


def report_files_check(rec: PhaseRecord) -> Check:
    listed = (rec.state.get("tracking") or {}).get("files") or []
    wanted = sorted(set(REPORT_FILES) | set(listed))
    missing = [f for f in wanted if not (rec.run_folder / f).is_file() or (rec.run_folder / f).stat().st_size == 0]
    return Check(f"{rec.name}: report files", PASS if not missing else FAIL,
                 f"{len(wanted) - len(missing)}/{len(wanted)} present" + (f"; missing {', '.join(missing)}" if missing
                                                                         else ""))


def teacher_check(rec: PhaseRecord, expect: Expect) -> Check:
    from icd_tune.platform.tracking.lineage import TEACHER_OUTPUTS_TAG, TEACHER_SOURCE_TAG

    seen = sorted({(t.tags.get(TEACHER_SOURCE_TAG), t.tags.get(TEACHER_OUTPUTS_TAG)) for t in rec.trials},
                  key=str)
    want = (expect.teacher_source, expect.teacher_outputs)
    ok = bool(seen) and all((w is None or s[i] == w) for s in seen for i, w in enumerate(want))
    return Check(f"{rec.name}: teacher", PASS if ok else FAIL,
                 "; ".join(f"source {s}, outputs {o}" for s, o in seen) + f" (want {want[0] or 'any'}, "
                 f"{want[1] or 'any'})")


def students_check(rec: PhaseRecord) -> Check:
    """Every ended trial's student read on the driver from its checkpoint and logged; the best exported as a Model."""
    from icd_tune.platform.tracking.models import MODEL_TAG
    from icd_tune.platform.tracking.students import WEIGHTS_TAG

    logged = [t for t in rec.trials if t.tags.get(WEIGHTS_TAG)]
    models = [t for t in rec.trials if t.tags.get(MODEL_TAG)]
    ok = bool(rec.trials) and len(logged) == len(rec.trials) and len(models) >= 1
    return Check(f"{rec.name}: students", PASS if ok else FAIL,
                 f"{len(logged)}/{len(rec.trials)} student weights logged; {len(models)} MLflow Model(s)")


def checkpoint_files(rec: PhaseRecord) -> list[Path]:
    """Each trial's latest Ray checkpoint (``trainer.pt``) under the run's local experiment storage."""
    storage = Path(str(rec.state.get("storage") or rec.run_folder / "ray"))
    return sorted(storage.glob("**/checkpoint_*/trainer.pt"))


def exported_model(records: Iterable[PhaseRecord]) -> tuple[str, str, str] | None:
    """(tracking URI, run id, models:/ URI) of the first exported student among the records."""
    from icd_tune.platform.tracking.models import MODEL_TAG

    for rec in records:
        for t in rec.trials:
            if t.tags.get(MODEL_TAG):
                return rec.state["tracking_uri"], t.run_id, t.tags[MODEL_TAG]
    return None


def cpu_probe(records: list[PhaseRecord], timeout_s: float = 120.0) -> dict:
    """Loads the exported student and every checkpoint in a fresh process that sees no GPU; what it found."""
    found = exported_model(records)
    args = {"model": list(found) if found else None,
            "checkpoints": [str(p) for rec in records for p in checkpoint_files(rec)]}
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    env.pop("MLFLOW_TRACKING_URI", None)
    try:
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--probe", json.dumps(args)], env=env,
                              capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"error": f"the probe ran past {timeout_s:.0f} s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": f"exit {proc.returncode}: {(proc.stderr or proc.stdout)[-1500:]}"}
    return json.loads(lines[-1])


def probe_checks(probe: dict) -> list[Check]:
    """The student (MLflow Model and .pth) and the checkpoints as the CPU-only process found them."""
    if "error" in probe:
        return [Check("student on the CPU", FAIL, probe["error"]), Check("checkpoints on the CPU", FAIL, "not read")]
    student = probe.get("student") or {}
    ok = (probe.get("cuda_visible") is False and student.get("finite") and student.get("max_abs_diff", 1.0) < 1e-3)
    figure = ("no exported model found" if not student else
              f"{student['model_uri']}: logits {student['shape']}, .pth {student['arch']} agrees to "
              f"{student['max_abs_diff']:.2e}; CUDA visible: {probe.get('cuda_visible')}")
    ckpt = probe.get("checkpoints") or {}
    ckpt_ok = ckpt.get("read", 0) > 0 and ckpt.get("read") == ckpt.get("files") and ckpt.get("cuda_tensors") == 0
    return [Check("student on the CPU", PASS if ok else FAIL, figure),
            Check("checkpoints on the CPU", PASS if ckpt_ok else FAIL,
                  f"{ckpt.get('read', 0)}/{ckpt.get('files', 0)} trainer.pt read without map_location, "
                  f"{ckpt.get('tensors', 0)} tensors, {ckpt.get('cuda_tensors', 0)} on CUDA; students load strictly: "
                  f"{ckpt.get('students_loaded', 0)}" + (f"; {ckpt['error']}" if ckpt.get("error") else ""))]


def table(checks: list[Check]) -> str:
    width = max([len(c.name) for c in checks] + [5])
    lines = [f"{'check':<{width}}  {'status':<9}  figure", f"{'-' * width}  {'-' * 9}  {'-' * 6}"]
    lines += [f"{c.name:<{width}}  {c.status:<9}  {c.figure}" for c in checks]
    return "\n".join(lines)


def all_passed(checks: list[Check]) -> bool:
    """True when no check failed (n/a (cpu) counts as not failed) and there is at least one."""
    return bool(checks) and all(c.status != FAIL for c in checks)


def as_json(checks: list[Check]) -> list[dict]:
    return [asdict(c) for c in checks]


# ----------------------------------------------------------------------------- the CPU-only process

def _probe_student(tracking_uri: str, run_id: str, model_uri: str) -> dict:
    import mlflow
    import mlflow.pytorch
    import torch
    from mlflow.tracking import MlflowClient

    from icd_tune.method.servable import servable_student

    mlflow.set_tracking_uri(tracking_uri)
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = mlflow.pytorch.load_model(model_uri)(images)
    meta = mlflow.models.get_model_info(model_uri).metadata["icd_tune"]
    client = MlflowClient(tracking_uri)
    (artifact,) = [a for a in client.list_artifacts(run_id, "student") if a.path.endswith(".pth")]
    arch = Path(artifact.path).stem
    state = torch.load(client.download_artifacts(run_id, artifact.path), weights_only=True)["model"]  # no map_location
    norm = meta["normalisation"]
    with torch.no_grad():
        again = servable_student(arch, logits.shape[1], state, norm["mean"], norm["std"])(images)
    return {"model_uri": model_uri, "arch": arch, "shape": list(logits.shape),
            "finite": bool(torch.isfinite(logits).all()), "max_abs_diff": float((logits - again).abs().max())}


def _probe_checkpoints(paths: list[str]) -> dict:
    import torch

    from icd_tune.method.models import create_model

    out = {"files": len(paths), "read": 0, "tensors": 0, "cuda_tensors": 0, "students_loaded": 0}
    try:
        for path in paths:
            state = torch.load(path, weights_only=True)  # a CUDA tensor in it fails here: no GPU is visible
            tensors = list(_tensors(state))
            out["read"] += 1
            out["tensors"] += len(tensors)
            out["cuda_tensors"] += sum(t.device.type != "cpu" for t in tensors)
            cfg, student = state["config"], state["student"]
            classes = _classes(state.get("best_student") or student)
            create_model(cfg["student"], classes).load_state_dict(student)
            out["students_loaded"] += 1
    except Exception as err:  # reported as the check's figure
        out["error"] = f"{type(err).__name__}: {err}"[:500]
    return out


def _tensors(obj):
    import torch

    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


def _classes(state_dict: dict) -> int:
    """The class count of a zoo model's state dict: the rows of its last 2-D weight (the classifier)."""
    return int([v for k, v in state_dict.items() if k.endswith("weight") and v.dim() == 2][-1].shape[0])


def probe_main(args: dict) -> dict:
    import torch

    out = {"cuda_visible": torch.cuda.is_available()}
    if args.get("model"):
        try:
            out["student"] = _probe_student(*args["model"])
        except Exception as err:
            out["student"] = {"model_uri": args["model"][2], "arch": "?", "shape": [], "finite": False,
                              "max_abs_diff": math.inf, "error": f"{type(err).__name__}: {err}"[:500]}
    out["checkpoints"] = _probe_checkpoints(args.get("checkpoints") or [])
    return out


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--probe":
        print(json.dumps(probe_main(json.loads(sys.argv[2]))))
    else:
        sys.exit("usage: gpu_platform_checks.py --probe JSON (run by bench/gpu_platform.py)")
