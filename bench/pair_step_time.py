#!/usr/bin/env python
"""Per-step time of teacher -> student pairs of the published table, against resnet32x4 -> resnet8x4, on one device.

Checks the GPU-hours estimate of ``icd_tune.platform.report.gpu_estimate``, which scales the
measured resnet32x4 -> resnet8x4 trial by each pair's FLOPs per image. Each pair is
built through the real code (``TrialConfig`` -> ``Trainer``: ICD, batch 64, 100
classes, live teacher, bf16 on CUDA) on synthetic 32x32 data, warmed up for one
epoch of ``--steps`` steps, then timed over a second (device synchronised around
the epoch). Prints ms per step, the ratio to the reference pair measured in the
same process, and the ratio the FLOPs predict.

    python bench/pair_step_time.py [--steps 100] [--device cuda]
"""

from __future__ import annotations

import argparse
import time

import torch

from icd_tune.method.config import TrialConfig
from icd_tune.method.data import load_data
from icd_tune.method.flops import step_flops
from icd_tune.method.models import create_model
from icd_tune.method.train import Trainer

PAIRS = [("resnet32x4", "resnet8x4"), ("resnet56", "resnet20"), ("wrn_40_2", "wrn_16_2"), ("vgg13", "vgg8"),
         ("ResNet50", "MobileNetV2"), ("resnet32x4", "ShuffleV2")]


def step_ms(teacher: str, student: str, steps: int, device: str) -> float:
    cfg = TrialConfig.from_dict({
        "protocol": "paper", "student": student, "teacher": {"arch": teacher}, "device": device,
        "data": {"name": "synthetic", "num_train": 64 * steps + 1, "num_test": 64, "num_classes": 100},
        "optim": {"epochs": 2}, "max_steps_per_epoch": steps})
    data = load_data(cfg.data)
    model = create_model(teacher, 100).eval()
    trainer = Trainer(cfg, data, model)
    trainer.train_epoch()
    sync = torch.cuda.synchronize if trainer.cuda else (lambda: None)
    sync()
    start = time.perf_counter()
    trainer.train_epoch()
    sync()
    return 1000 * (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    print(f"device {torch.cuda.get_device_name() if args.device == 'cuda' else 'cpu'}, {args.steps} steps, batch 64")
    ref = None
    for teacher, student in PAIRS:
        ms = step_ms(teacher, student, args.steps, args.device)
        flops = step_flops(student, teacher)
        if ref is None:
            ref = (ms, flops)
        print(f"{teacher:>10s} -> {student:<12s} {ms:8.2f} ms/step  measured {ms / ref[0]:5.2f}x  "
              f"FLOPs predict {flops / ref[1]:5.2f}x")


if __name__ == "__main__":
    main()
