#!/usr/bin/env python
"""The platform itself on one GPU: two real studies through run_ablation.py, then what worked.

    PYTHONPATH=. python3 bench/gpu_platform.py --out DIR            # on a GPU machine, about 2.5 minutes
    PYTHONPATH=. python3 bench/gpu_platform.py --out DIR --cpu      # the same at tiny sizes on the CPU

Phase 1 (``grid``) runs a grid study as a user would (a subprocess of run_ablation.py) on
synthetic CIFAR-100-shaped data: the teacher trained as the study's Ray task on the GPU,
its output cache on, the trials packed four to a GPU (``--gpus-per-trial 0.25``), every
trial in an sqlite MLflow store. Phase 2 (``search``) runs an Optuna + ASHA search on the
same data and teacher (reused from the teacher folder) into the same store. Then each
phase's run folder, store and checkpoints are checked (``bench/gpu_platform_checks.py``)
and a table of PASS / FAIL is printed. ``--cpu`` runs the same at tiny sizes with
``--gpus-per-trial 0``; the checks that mean something only on a GPU (system/gpu_*,
four trials at once) are reported ``n/a (cpu)``.

Writes DIR/gpu_platform.json (rewritten after each phase, so a run cut off still
reports), DIR/gpu_platform.log (the studies' console output) and the two study files
DIR/gpu_platform_grid.yaml and DIR/gpu_platform_search.yaml. The studies' own files
(results, teachers, mlflow.db and its artifacts) go under --work (default DIR).
Exit status 0 only when every check passes (n/a (cpu) counts as passing).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

import gpu_platform_checks as checks  # noqa: E402

# GPU sizes, against the 195 s that bench/gpu_run.sh gives the whole script (about 3.5 minutes with start-up):
#   data: 2,400 synthetic 32x32x3 images of 100 classes, 10% held out: 2,160 to train, 240 to validate, 500 to test.
#   cache build (once, phase 1): 2,160 images x 162 variants x 0.03 ms per image-variant (H200, bench/gpu_check.py)
#     = 10.5 s; about 250 MB of float16 rows, so each trial keeps its own device copy.
#   teacher (once, phase 1): resnet32x4, 8 epochs x 33 steps x ~12 ms = ~3 s, plus its Ray task's process start
#     and CUDA set-up (~10 s); phase 2 loads the saved file.
#   a trial: resnet8x4 from the cached teacher, 33 steps x 7-13 ms (the cached and the live batch-64 step on an
#     H200) = ~0.4 s per epoch, with evaluation of 740 images, a checkpoint and a report: ~0.6 s; 6 epochs ~4 s,
#     after the trial process's start (torch import, CUDA context, data from the object store: ~10 s).
#     8 trials, 4 at a time at 0.25 GPU each (the second four reuse the first four's processes): ~25 s.
#   each phase: the command's and Ray's start-up ~10 s, the sqlite store ~3 s, report, plots and one
#     torch.export ~8 s.
#   phase 1 ~ 10 + 3 + 13 + 11 + 25 + 8 = ~70 s; phase 2 ~ 10 + 3 + 2 + 25 + 8 = ~50 s; the checks ~15 s:
#   ~135 s expected. Each phase runs under --time-budget (its budget less 15 s), so one that runs long still
#   writes its report, and is killed 20 s after its budget at the latest.
SIZES = {
    "gpu": dict(teacher="resnet32x4", student="resnet8x4", classes=100, num_train=2400, num_test=500,
                val_fraction=0.1, teacher_epochs=8, epochs=6, batch=64, feat_dim=128, max_steps=None,
                levels=[0.0, 0.25, 0.5, 1.0], seeds=[0, 1], samples=8, grace=2, gpus=0.25, cpus=2,
                concurrent=4, budgets={"grid": 100, "search": 70}),
    # 20 images, 16 to train: the cache is 16 x 162 variants of resnet8 on the CPU (about 200 to 1,000 per second).
    "cpu": dict(teacher="resnet8", student="resnet8", classes=4, num_train=20, num_test=16,
                val_fraction=0.2, teacher_epochs=1, epochs=2, batch=8, feat_dim=16, max_steps=2,
                levels=[0.0, 0.5], seeds=[0, 1], samples=4, grace=1, gpus=0, cpus=1,
                concurrent=2, budgets={"grid": 240, "search": 240}),
}
PHASES = ("grid", "search")


class CutOff(Exception):
    """SIGTERM (the outer timeout): stop, and report what finished."""


def study_files(size: dict) -> dict[str, dict]:
    """Phase name -> its study (plain data, written as YAML): the same data, teacher and trial defaults."""
    common = {
        "student": size["student"],
        "teacher": {"arch": size["teacher"], "cache": "on",
                    "optim": {"epochs": size["teacher_epochs"], "batch_size": size["batch"], "lr": 0.05}},
        "data": {"name": "synthetic", "num_train": size["num_train"], "num_test": size["num_test"],
                 "num_classes": size["classes"], "val_fraction": size["val_fraction"]},
        "loss": {"ce_weight": 1.0, "kd_weight": 0.0, "contrastive_weight": 1.0, "invariance_weight": 0.5,
                 "temperature": "learnable", "feat_dim": size["feat_dim"]},
        "optim": {"epochs": size["epochs"], "batch_size": size["batch"], "lr": 0.05},
        "max_steps_per_epoch": size["max_steps"],
        "device": "auto",
        "checkpoint_every": 1,
        "export_models": 1,
    }
    grid = {"name": "gpu_platform_grid", "description": "the platform on a GPU: an invariance-weight grid",
            **common, "mode": "grid",
            "grid": {"invariance_weight": {"key": "loss.invariance_weight", "levels": size["levels"]}},
            "baseline": size["levels"][0], "seeds": size["seeds"]}
    search = {"name": "gpu_platform_search", "description": "the platform on a GPU: Optuna + ASHA",
              **common, "mode": "search",
              "search": {"space": {"loss.invariance_weight": {"type": "uniform", "low": 0.0, "high": 2.0},
                                   "loss.contrastive_weight": {"type": "uniform", "low": 0.25, "high": 2.0}},
                         "num_samples": size["samples"], "seed": 0},
              "asha": {"enabled": True, "grace_period": size["grace"], "reduction_factor": 2},
              "metric": "val/acc1", "metric_mode": "max", "seeds": [0]}
    return {"grid": grid, "search": search}


def environment(gpu: bool) -> dict:
    import torch

    def version(name):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    env = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "cuda_available": torch.cuda.is_available(), "cpus": os.cpu_count(),
           "nvml_bindings": importlib.util.find_spec("pynvml") is not None,
           **{name: version(name) for name in ("ray", "optuna", "mlflow-skinny", "mlflow")}}
    if gpu and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(card=props.name, memory_gib=round(props.total_memory / 2**30, 1))
    return env


def phase_command(study: Path, work: Path, size: dict, budget_s: float) -> list[str]:
    return [sys.executable, str(ROOT / "run_ablation.py"), str(study), "--results-dir", str(work / "results"),
            "--tracking-uri", f"sqlite:///{work / 'mlflow.db'}", "--gpus-per-trial", f"{size['gpus']:g}",
            "--cpus-per-trial", f"{size['cpus']:g}", "--set", f"teacher.cache_dir={work / 'teachers'}",
            "--time-budget", f"{max(10, int(budget_s) - 15)}s"]


def run_phase(name: str, study: Path, work: Path, size: dict, budget_s: float, log: Path) -> dict:
    """Runs one study to its end (or 20 s past its budget); its command, exit status, wall time and run folder."""
    command = phase_command(study, work, size, budget_s)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env.update(PYTHONUNBUFFERED="1", PYTHONPATH=os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])]))
    started = time.monotonic()
    with open(log, "a") as f:
        f.write(f"\n===== phase {name}: {' '.join(command)}\n")
        f.flush()
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
        try:
            rc = proc.wait(timeout=budget_s + 20)
        except subprocess.TimeoutExpired:
            proc.terminate()  # the command ends its trials at their checkpoints and exits 143
            try:
                rc = proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = proc.wait()
        finally:
            if proc.poll() is None:  # cut off from outside: the command got the same SIGTERM
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
    folders = sorted((work / "results" / study.stem).glob("2*/" + checks.STATE_FILE))
    return {"command": command, "rc": rc, "wall_s": round(time.monotonic() - started, 2), "budget_s": budget_s,
            "run_folder": str(folders[-1].parent) if folders else None}


def phase_expectations(size: dict, gpu: bool, nvml: bool) -> dict[str, checks.Expect]:
    trials = {"grid": len(size["levels"]) * len(size["seeds"]), "search": size["samples"]}
    source = {"grid": "trained", "search": "cache"}  # phase 2 reuses the file phase 1 saved
    return {name: checks.Expect(trials=trials[name], gpu=gpu, min_concurrent=size["concurrent"], nvml=nvml,
                                teacher_source=source[name], teacher_outputs="exact cache") for name in PHASES}


def judge(phases: dict, expect: dict[str, checks.Expect], gpu: bool) -> list[checks.Check]:
    """Every check of the finished phases, then the CPU-only process's load of the student and the checkpoints."""
    found, records = [], []
    for name in PHASES:
        phase = phases.get(name)
        found.append(checks.exit_check(name, phase["rc"] if phase else None))
        if not phase or not phase["run_folder"]:
            found.append(checks.Check(f"{name}: run folder", checks.FAIL, "none written"))
            continue
        try:
            rec = checks.read_phase(name, phase["run_folder"])
        except Exception as err:  # a run cut off before its records: a failed check, not a crash
            found.append(checks.Check(f"{name}: records", checks.FAIL, f"{type(err).__name__}: {err}"[:300]))
            continue
        records.append(rec)
        found += checks.phase_checks(rec, expect[name])
        found.append(checks.wall_check(name, phase["wall_s"], phase["budget_s"], len(rec.trials), gpu))
    found += checks.probe_checks(checks.cpu_probe(records))
    return found


def write_json(path: Path, report: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2, default=str))
    tmp.replace(path)


def log_tail(log: Path, lines: int = 25) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="folder for gpu_platform.json, gpu_platform.log and the study files")
    p.add_argument("--work", help="folder for the studies' results, teachers and MLflow store (default: --out)")
    p.add_argument("--cpu", action="store_true", help="tiny sizes on the CPU, --gpus-per-trial 0")
    args = p.parse_args(argv)
    import torch

    gpu = not args.cpu
    if gpu and not torch.cuda.is_available():
        print("no CUDA device: run with --cpu for the CPU mode", file=sys.stderr)
        return 2
    out = Path(args.out).resolve()
    work = Path(args.work).resolve() if args.work else out
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    size = SIZES["gpu" if gpu else "cpu"]
    report_path, log = out / "gpu_platform.json", out / "gpu_platform.log"
    log.write_text("")
    report = {"mode": "gpu" if gpu else "cpu", "environment": environment(gpu), "sizes": size, "work": str(work),
              "phases": {}, "checks": [], "ok": False, "cut_off": None}
    write_json(report_path, report)

    def on_sigterm(signum, frame):
        raise CutOff("SIGTERM")

    signal.signal(signal.SIGTERM, on_sigterm)
    return run_all(report, report_path, log, out, work, size, gpu)


def run_all(report: dict, report_path: Path, log: Path, out: Path, work: Path, size: dict, gpu: bool) -> int:
    started = time.monotonic()
    try:
        for name, study in study_files(size).items():
            path = out / f"{study['name']}.yaml"
            path.write_text(yaml.safe_dump(study, sort_keys=False))
            print(f"phase {name}: {path.name}, budget {size['budgets'][name]} s ...", flush=True)
            phase = run_phase(name, path, work, size, size["budgets"][name], log)
            report["phases"][name] = phase
            write_json(report_path, report)
            print(f"phase {name}: exit {phase['rc']} in {phase['wall_s']:.1f} s; {phase['run_folder']}", flush=True)
            if phase["rc"] != 0:
                print(log_tail(log), flush=True)
        found = judge(report["phases"], phase_expectations(size, gpu, report["environment"]["nvml_bindings"]), gpu)
    except CutOff as err:
        report["cut_off"] = f"{err} after {time.monotonic() - started:.0f} s"
        write_json(report_path, report)
        print(f"cut off ({err}); {report_path} holds the phases that finished", flush=True)
        return 124
    report["checks"], report["ok"] = checks.as_json(found), checks.all_passed(found)
    report["wall_s"] = round(time.monotonic() - started, 2)
    write_json(report_path, report)
    print(checks.table(found))
    print(f"{'all checks pass' if report['ok'] else 'some checks FAIL'}; {report['wall_s']:.0f} s; {report_path}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
