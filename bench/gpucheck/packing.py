"""packing: 1, 4 and 16 trials sharing the device as processes (how Ray places trials with fractional GPUs).

Each worker process runs the graph step (``step: graph`` where the option exists; the trainer
falls back to eager on the CPU) for the same wall window, started together. Reported per count:
aggregate images/s, each process's images/s and peak memory (the CUDA allocator's peak in the
worker; the resident set on the CPU), and the slowest process's images/s against the one alone.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from icd_tune.method.data import load_data
from icd_tune.method.train import Trainer

from .common import has_step_option, make_teacher, peak_memory_mib, step_mode, trial_config
from .plan import ENTRY, EPOCHS, SIZES, write_partial


def packing(ctx: dict) -> dict:
    counts = sorted({1, *ctx.get("pack_counts", ctx["size"]["pack_procs"])})
    step = "graph" if has_step_option() else None
    result: dict = {"step": step or "eager (no step option)", "counts": counts, "window_seconds": ctx["size"]["pack_seconds"],
                    "runs": {}}
    for count in counts:
        try:
            workers = run_workers(ctx, count, step)
        except RuntimeError as err:  # a count that cannot run (memory) must not hide the others
            result["runs"][str(count)] = {"error": str(err)}
            write_partial(ctx, "packing", result)
            continue
        rates = [w["images_per_s"] for w in workers]
        result["runs"][str(count)] = {"processes": count, "images_per_s": rates, "aggregate_images_per_s": sum(rates),
                                      "peak_memory_mib": [w["peak_memory_mib"] for w in workers],
                                      "memory": workers[0]["memory"], "step_modes": sorted({w["step_mode"] for w in workers}),
                                      "step_notes": sorted({w["step_note"] for w in workers if w["step_note"]})}
        summarise(result)
        write_partial(ctx, "packing", result)
    result["ok"] = bool(result["runs"]) and all("error" not in r and min(r["images_per_s"]) > 0
                                                for r in result["runs"].values())
    return result


def summarise(result: dict) -> None:
    """The single process's rate, each count's gain and slowest process against it, and the best count."""
    runs = {int(k): r for k, r in result["runs"].items() if "error" not in r}
    if 1 not in runs:
        return
    single = runs[1]["aggregate_images_per_s"]
    result["single_images_per_s"] = single
    for run in runs.values():
        run["aggregate_vs_alone"] = run["aggregate_images_per_s"] / single if single > 0 else None
        run["slowest_vs_alone"] = min(run["images_per_s"]) / single if single > 0 else None
    best = max(runs, key=lambda n: runs[n]["aggregate_images_per_s"])
    result["best"] = {"processes": best, "aggregate_images_per_s": runs[best]["aggregate_images_per_s"],
                      "aggregate_vs_alone": runs[best]["aggregate_vs_alone"]}


def run_workers(ctx: dict, count: int, step: str | None) -> list[dict]:
    """``count`` worker processes; each trains once it sees the go file, for the same wall window."""
    folder = Path(ctx["tmp"]) / f"pack-{count}"
    folder.mkdir(parents=True)
    command = [sys.executable, str(ENTRY), "--worker", str(folder), "--size", ctx["size_name"],
               "--seconds", str(ctx["size"]["pack_seconds"]), "--step", step or "-"]
    procs = [subprocess.Popen(command + ["--rank", str(r)], stdout=subprocess.DEVNULL) for r in range(count)]
    try:
        while len(list(folder.glob("ready-*"))) < count:
            if any(p.poll() not in (None, 0) for p in procs):
                raise RuntimeError(f"a packing worker of {count} exited before it was ready")
            time.sleep(0.1)
        (folder / "go").touch()
        for p in procs:
            p.wait()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    missing = [r for r in range(count) if not (folder / f"rate-{r}.json").exists()]
    if missing:
        raise RuntimeError(f"packing workers {missing} of {count} wrote no rate")
    return [json.loads((folder / f"rate-{r}.json").read_text()) for r in range(count)]


def worker(folder: Path, size_name: str, seconds: float, rank: int, step: str | None) -> None:
    size = SIZES[size_name]
    device = torch.device("cuda" if size_name == "gpu" else "cpu")
    # One intra-op thread each (a trial under Ray gets its cpus_per_trial): 16 workers then do not
    # oversubscribe the host's cores, which issue the kernels.
    torch.set_num_threads(1)
    chunk = 20 if device.type == "cuda" else 2
    # A 240-epoch budget keeps the learning rate (a new capture when it changes) fixed in the window.
    cfg = trial_config(size, 40 * size["batch"], device.type, steps=chunk, step=step, epochs=EPOCHS)
    data = load_data(cfg.data)
    trainer = Trainer(cfg, data, make_teacher(size), device=device)
    trainer.train_epoch()  # warm-up: cuDNN autotuning, allocator, the graph's capture
    (folder / f"ready-{rank}").touch()
    while not (folder / "go").exists():
        time.sleep(0.02)
    start, seen = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        seen += chunk * size["batch"]
        trainer.train_epoch()  # ends with a host read, so the clock sees finished work
    rate = seen / (time.perf_counter() - start)
    peak, kind = peak_memory_mib(device)
    ran, note = step_mode(trainer)
    (folder / f"rate-{rank}.json").write_text(json.dumps({"images_per_s": rate, "peak_memory_mib": peak,
                                                          "memory": kind, "step_mode": ran, "step_note": note}))


def worker_main(argv) -> int:
    """``gpu_check.py --worker FOLDER --size gpu|cpu --seconds S --rank R --step graph|-``: one packing worker."""
    parser = argparse.ArgumentParser()
    for name, kind in (("--worker", str), ("--size", str), ("--seconds", float), ("--rank", int), ("--step", str)):
        parser.add_argument(name, type=kind, required=True)
    args = parser.parse_args(argv)
    worker(Path(args.worker), args.size, args.seconds, args.rank, None if args.step == "-" else args.step)
    return 0
