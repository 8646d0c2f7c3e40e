#!/usr/bin/env python
"""Horizontal fusion prototype, measured: B fused students against one unfused Trainer.

    PYTHONPATH=. python bench/fusion.py --students 8 --steps 50          # on a GPU, the gpu_check sizes
    PYTHONPATH=. python bench/fusion.py --students 4 --steps 10 --cpu    # the CPU sizes

One line per group size B (1, 2, 4, ... up to --students): aggregate student-images per second
of the fused group, the images/s of one unfused ``Trainer`` doing the same steps in the same
process, measured just before it, and their ratio. The model is ``bench/fusion_model.py``. Fusion is adopted only where it beats the best
packing of separate trials (``bench/gpu_check.py``'s packing part) by at least 1.5x; a ratio
against one trial alone is not that comparison.

Imports only the method layer, like ``bench/gpu_check.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.fusion_model import FusedStudents  # noqa: E402
from icd_tune.method.config import TrialConfig  # noqa: E402
from icd_tune.method.data import load_data  # noqa: E402
from icd_tune.method.models import create_model  # noqa: E402
from icd_tune.method.train import Trainer  # noqa: E402

WARMUP_STEPS = 5
# The sizes of bench/gpu_check.py's SIZES (the keys fused_rate reads), kept here so that this module
# does not import the check's whole machinery.
SIZES = {
    "gpu": dict(teacher="resnet32x4", student="resnet8x4", classes=100, batch=64),
    "cpu": dict(teacher="resnet8", student="resnet8", classes=10, batch=8),
}


def trial_config(size: dict, device: str, steps: int, invariance_weight: float = 0.5) -> TrialConfig:
    """One trial of the group: ICD with batch negatives and the learnable scale, at ``size``."""
    return TrialConfig.from_dict({
        "student": size["student"], "device": device, "seed": 0, "max_steps_per_epoch": steps,
        "eval_every": 10_000, "teacher": {"arch": size["teacher"]},
        "data": {"name": "synthetic", "num_train": size["batch"] * steps, "num_test": size["batch"],
                 "num_classes": size["classes"], "val_fraction": 0.0},
        "loss": {"kd_weight": 0.0, "contrastive_weight": 1.0, "invariance_weight": invariance_weight,
                 "temperature": "learnable"},
        "optim": {"epochs": 240, "batch_size": size["batch"], "lr": 0.05},
    })


def make_teacher(size: dict) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234)  # random weights serve: the arithmetic, not the accuracy, is measured
        return create_model(size["teacher"], size["classes"])


def _peak_memory_start(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _peak_memory_mb(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda max_memory_allocated"
    # Linux reports kilobytes: the whole process's peak so far, not this measurement's alone.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process peak RSS"


def fused_rate(device: str, students: int, steps: int, size: dict, warmup: int = WARMUP_STEPS) -> dict:
    """Aggregate images/s of ``students`` fused students over ``steps`` timed steps (warm-up excluded).

    On CUDA the group trains under bf16 autocast with channels_last images, as the Trainer does.
    The timed epoch ends with its one host synchronisation, so the clock reads finished work.
    """
    levels = [0.5 * (1 + b) / students for b in range(students)]  # a factor's levels: the invariance weight
    configs = [trial_config(size, device, max(steps, warmup), w) for w in levels]
    data = load_data(configs[0].data)
    fused = FusedStudents(configs, data, make_teacher(size), device=device)
    fused.train_epoch(warmup)
    _peak_memory_start(fused.device)
    metrics = fused.train_epoch(steps)
    memory, source = _peak_memory_mb(fused.device)
    images = students * metrics["images"]
    return {"students": students, "images_per_s": images / metrics["seconds"],
            "ms_per_step": 1000.0 * metrics["seconds"] / metrics["steps"], "peak_memory_mb": memory,
            "peak_memory_source": source, "steps": metrics["steps"], "warmup_steps": warmup,
            "device": str(fused.device), "losses_finite": all(metrics["finite"])}


def unfused_rate(device: str, steps: int, size: dict, warmup: int = WARMUP_STEPS) -> dict:
    """The same figures for one unfused Trainer (the platform's trial) doing ``steps`` steps."""
    cfg = trial_config(size, device, max(steps, warmup))
    data = load_data(cfg.data)
    teacher = make_teacher(size)
    Trainer(dataclasses.replace(cfg, max_steps_per_epoch=warmup), data, teacher, device=device).train_epoch()
    trainer = Trainer(dataclasses.replace(cfg, max_steps_per_epoch=steps), data, teacher, device=device)
    _peak_memory_start(trainer.device)
    metrics = trainer.train_epoch()  # times itself: synchronised start, ends after its one host read
    memory, source = _peak_memory_mb(trainer.device)
    return {"students": 1, "images_per_s": metrics["time/images_per_second"],
            "ms_per_step": 1000.0 * metrics["time/epoch_seconds"] / steps, "peak_memory_mb": memory,
            "peak_memory_source": source, "steps": steps, "warmup_steps": warmup, "device": str(trainer.device)}


def group_sizes(students: int) -> list[int]:
    sizes, b = [], 1
    while b < students:
        sizes.append(b)
        b *= 2
    return sizes + [students]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--students", type=int, default=8, help="the largest fused group (default 8)")
    parser.add_argument("--steps", type=int, default=50, help="timed steps per measurement (default 50)")
    parser.add_argument("--warmup", type=int, default=WARMUP_STEPS, help="untimed steps before each measurement")
    parser.add_argument("--cpu", action="store_true", help="the CPU sizes (resnet8 -> resnet8, batch 8) on the CPU")
    parser.add_argument("--batch", type=int, default=None, help="override the size's batch")
    args = parser.parse_args(argv)
    if not args.cpu and not torch.cuda.is_available():
        print("no CUDA device: pass --cpu to measure on the CPU", file=sys.stderr)
        return 2
    device, size = ("cpu", dict(SIZES["cpu"])) if args.cpu else ("cuda", dict(SIZES["gpu"]))
    if args.batch is not None:
        size["batch"] = args.batch
    print(f"{size['teacher']} -> {size['student']}, batch {size['batch']}, {args.steps} steps "
          f"(+{args.warmup} warm-up), device {device}")
    started = time.perf_counter()
    unfused_rate(device, args.warmup, size, args.warmup)  # the process's own warm-up (threads, kernels, allocator)
    # Each group is measured beside its own unfused Trainer, so that a busy spell on a shared machine
    # moves both sides of the ratio.
    for b in group_sizes(args.students):
        single = unfused_rate(device, args.steps, size, args.warmup)
        row = fused_rate(device, b, args.steps, size, args.warmup)
        print(f"B={b:<3d} fused {row['images_per_s']:8.0f} images/s {row['ms_per_step']:8.1f} ms/step | unfused Trainer "
              f"{single['images_per_s']:6.0f} images/s {single['ms_per_step']:6.1f} ms/step | "
              f"{row['images_per_s'] / single['images_per_s']:5.2f}x | peak {row['peak_memory_mb']:.0f} MiB "
              f"({row['peak_memory_source']})")
    print(f"{time.perf_counter() - started:.0f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
