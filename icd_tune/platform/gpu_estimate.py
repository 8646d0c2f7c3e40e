"""A study's GPU-hours, estimated from one measured pair scaled by each trial's FLOPs per training image.

The measured pair is resnet32x4 -> resnet8x4 ICD on one NVIDIA H200 (docs/benchmarks.md,
``bench/gpu_check.py``): 0.62 to 0.91 h per 240-epoch CIFAR-100 trial on 45,000 training
images with the live teacher, over three runs. Other trials scale by their teacher forward
plus student forward and backward FLOPs (counted from the zoo models), by training images
and by epochs. Small students keep a GPU busy for less than their FLOPs say (their steps are
bound by launch latency and the input pipeline), so for them the figure is a lower bound.
"""

from __future__ import annotations

from dataclasses import dataclass

REFERENCE_TEACHER, REFERENCE_STUDENT = "resnet32x4", "resnet8x4"
REFERENCE_HOURS = (0.62, 0.91)
REFERENCE_IMAGES, REFERENCE_EPOCHS = 45_000, 240
BASIS = (f"measured: {REFERENCE_TEACHER} -> {REFERENCE_STUDENT} ICD, {REFERENCE_HOURS[0]} to {REFERENCE_HOURS[1]} h per "
         f"{REFERENCE_EPOCHS}-epoch trial on {REFERENCE_IMAGES:,} CIFAR-100 images with the live teacher, one NVIDIA "
         f"H200 (docs/benchmarks.md, bench/gpu_check.py, three runs); every other trial scaled by its FLOPs per training "
         f"image (teacher forward + 3x student forward, counted from the zoo models on the meta device), its training "
         f"images and its epochs. A lower bound for small students, whose steps are bound by latency, not FLOPs.")


@dataclass
class PairCost:
    teacher: str | None
    student: str
    trials: int
    flops: int  # per training image
    hours: tuple[float, float]  # per trial


def trial_hours(cfg) -> tuple[int, tuple[float, float]]:
    """(FLOPs per training image, (low, high) hours of one trial with this config)."""
    from ..method.data import num_classes, train_size
    from ..method.flops import step_flops

    classes = num_classes(cfg.data)
    flops = step_flops(cfg.student, cfg.teacher.arch if cfg.loss.uses_teacher else None, classes)
    reference = step_flops(REFERENCE_STUDENT, REFERENCE_TEACHER, 100)
    scale = flops / reference * train_size(cfg.data) / REFERENCE_IMAGES * cfg.optim.epochs / REFERENCE_EPOCHS
    return flops, (REFERENCE_HOURS[0] * scale, REFERENCE_HOURS[1] * scale)


def pair_costs(study) -> list[PairCost]:
    """One row per (teacher, student) of the planned trials, in plan order."""
    rows: dict[tuple, PairCost] = {}
    for point in study.grid_points():
        cfg = study.trial_config(point.seed, point.overrides)
        key = (cfg.teacher.arch if cfg.loss.uses_teacher else None, cfg.student)
        if key not in rows:
            flops, hours = trial_hours(cfg)
            rows[key] = PairCost(key[0], key[1], 0, flops, hours)
        rows[key].trials += 1
    return list(rows.values())


def estimate_lines(study) -> list[str]:
    costs = pair_costs(study)
    low = sum(c.trials * c.hours[0] for c in costs)
    high = sum(c.trials * c.hours[1] for c in costs)
    trials = sum(c.trials for c in costs)
    lines = [f"# GPU-hours estimate: {low:.0f} to {high:.0f} GPU-hours for {trials} trials, one trial per H200-class GPU",
             f"#   basis: {BASIS}"]
    for c in costs:
        pair = f"{c.teacher} -> {c.student}" if c.teacher else f"{c.student} alone"
        lines.append(f"#   {pair:28s} {c.flops / 1e9:6.2f} GFLOPs/image  {c.hours[0]:.2f} to {c.hours[1]:.2f} h/trial"
                     f"  x {c.trials} trial(s)")
    return lines
