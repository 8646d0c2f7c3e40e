"""A study's GPU-hours, from a measured trial time and measured (or estimated) step-time ratios per pair.

The reference is resnet32x4 -> resnet8x4 ICD on NVIDIA H200s (docs/benchmarks.md): 0.62 to
0.96 h per 240-epoch CIFAR-100 trial on 45,000 training images with the live teacher. Six
pairs' step times were measured against it side by side (``bench/pair_step_time.py``); the
others are estimated (``step_ratio``). Every trial is then scaled by training images and epochs.
"""

from __future__ import annotations

from dataclasses import dataclass

REFERENCE_TEACHER, REFERENCE_STUDENT = "resnet32x4", "resnet8x4"
# 0.62 h: the fastest of the three bench/gpu_check.py runs (13.1 ms/step); 0.96 h: 20.2 ms/step measured by
# bench/pair_step_time.py on another H200 (703 steps x 240 epochs, plus evaluation).
REFERENCE_HOURS = (0.62, 0.96)
REFERENCE_IMAGES, REFERENCE_EPOCHS = 45_000, 240
# Step time relative to the reference pair, measured side by side on one NVIDIA H200 (bench/pair_step_time.py:
# ICD, batch 64, bf16, live teacher, 100 steps). FLOPs do not predict them: small and mobile students are
# bound by kernel launches (resnet56 -> resnet20 is 1.22x, its FLOPs say 0.15x; ShuffleV2 2.42x, FLOPs 0.75x).
MEASURED_RATIO = {("resnet32x4", "resnet8x4"): 1.00, ("resnet56", "resnet20"): 1.22, ("wrn_40_2", "wrn_16_2"): 1.01,
                  ("vgg13", "vgg8"): 0.72, ("ResNet50", "MobileNetV2"): 2.07, ("resnet32x4", "ShuffleV2"): 2.42}
# A student measured with another teacher stands in for one not measured (ShuffleV1 for ShuffleV2).
LIKE = {"ShuffleV1": "ShuffleV2"}
BASIS = (f"measured: {REFERENCE_TEACHER} -> {REFERENCE_STUDENT} ICD, {REFERENCE_HOURS[0]} to {REFERENCE_HOURS[1]} h per "
         f"{REFERENCE_EPOCHS}-epoch trial on {REFERENCE_IMAGES:,} CIFAR-100 images with the live teacher on NVIDIA H200s "
         f"(docs/benchmarks.md); six pairs' step times measured against it side by side on one H200 "
         f"(bench/pair_step_time.py); any other pair takes the largest of its FLOPs ratio (teacher forward + 3x student "
         f"forward per image, counted from the zoo models), the ratio measured for its student with another teacher, and "
         f"the smallest ratio measured ({min(MEASURED_RATIO.values())}x): small students are bound by latency, not FLOPs. "
         f"Scaled by training images and epochs. Every method is costed at ICD's step time (CRD, RRD and DKD add "
         f"small heads or logit terms to the same forward passes); the teacher-output cache, where on, makes trials "
         f"faster than this.")


def step_ratio(teacher: str | None, student: str, num_classes: int = 100) -> tuple[float, str]:
    """A trial's step time relative to the reference pair, and how it was obtained."""
    from ...method.flops import step_flops

    if (teacher, student) in MEASURED_RATIO:
        return MEASURED_RATIO[(teacher, student)], "measured"
    flops = step_flops(student, teacher, num_classes) / step_flops(REFERENCE_STUDENT, REFERENCE_TEACHER, 100)
    same = [r for (_, s), r in MEASURED_RATIO.items() if s == LIKE.get(student, student)]
    return max([flops, min(MEASURED_RATIO.values()), *same]), "estimated"


@dataclass
class PairCost:
    teacher: str | None
    student: str
    trials: int
    flops: int  # per training image
    hours: tuple[float, float]  # per trial
    how: str  # measured or estimated step time


def trial_hours(cfg) -> tuple[int, tuple[float, float], str]:
    """(FLOPs per training image, (low, high) hours of one trial with this config, how its step time was obtained)."""
    from ...method.data import num_classes, train_size
    from ...method.flops import step_flops

    classes = num_classes(cfg.data)
    teacher = cfg.teacher.arch if cfg.uses_teacher else None
    ratio, how = step_ratio(teacher, cfg.student, classes)
    scale = ratio * train_size(cfg.data) / REFERENCE_IMAGES * cfg.optim.epochs / REFERENCE_EPOCHS
    return step_flops(cfg.student, teacher, classes), (REFERENCE_HOURS[0] * scale, REFERENCE_HOURS[1] * scale), how


def pair_costs(study) -> list[PairCost]:
    """One row per (teacher, student) of the planned trials, in plan order."""
    rows: dict[tuple, PairCost] = {}
    for point in study.grid_points():
        cfg = study.trial_config(point.overrides, point.seed)
        key = (cfg.teacher.arch if cfg.uses_teacher else None, cfg.student)
        if key not in rows:
            flops, hours, how = trial_hours(cfg)
            rows[key] = PairCost(key[0], key[1], 0, flops, hours, how)
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
                     f"  x {c.trials} trial(s)  ({c.how})")
    return lines
