"""Candidate settings for the quickstart, played through in one process without Ray: what its report would say.

For each candidate (a set of ``--set`` overrides of ablations/quickstart.yaml) the teacher is trained,
then every grid point of the study (levels x seeds) is trained against it, as the study's trials
would be. Printed per candidate: the teacher's test accuracy and training time, each level's
test/acc1_at_best_val (mean +- sample std over seeds), its paired difference with the baseline level
and a 95% t interval, and the time the trials took one after the other. Times are on this machine
and device; compare candidates with each other, within one run.

    PYTHONPATH=. python bench/quickstart_settings.py --device cuda \\
        --candidate "" --candidate "teacher.optim.epochs=20;teacher.optim.lr=0.1;seeds=[0,1,2]"

An empty candidate is the study as shipped.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# 97.5% quantiles of Student's t for 1..9 degrees of freedom (a two-sided 95% interval).
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def play(overrides: list[str], device: str) -> dict:
    import torch

    from icd_tune.method.data import load_data
    from icd_tune.method.teachers import train_teacher
    from icd_tune.method.train import Trainer
    from icd_tune.platform.study.definition import load_study

    study = load_study(ROOT / "ablations" / "quickstart.yaml", overrides)
    points = study.grid_points()
    cfg0 = study.trial_config(points[0].overrides, points[0].seed)
    data = load_data(cfg0.data)
    started = time.perf_counter()
    teacher = train_teacher(cfg0.teacher, data, cfg0.data, device=device)
    teacher_s = time.perf_counter() - started
    teacher_acc = teacher.final_metrics["test/acc1"]
    acc: dict = {}
    started = time.perf_counter()
    for p in points:
        cfg = study.trial_config(p.overrides, p.seed)
        cfg.device = device
        final = Trainer(cfg, data, teacher.to(device)).fit()
        acc.setdefault(next(iter(p.levels.values())), {})[p.seed] = final["test/acc1_at_best_val"]
    trials_s = time.perf_counter() - started
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return {"overrides": overrides, "teacher_test_acc1": teacher_acc, "teacher_s": round(teacher_s, 1),
            "trials_s": round(trials_s, 1), "trial_epochs": len(points) * study.epochs,
            "levels": summarise(acc, study.settings.baseline)}


def summarise(acc: dict, baseline) -> dict:
    out = {}
    for level, by_seed in acc.items():
        values = list(by_seed.values())
        row = {"mean": round(statistics.mean(values), 2),
               "sd": round(statistics.stdev(values), 2) if len(values) > 1 else None}
        if level != baseline:
            diffs = [by_seed[s] - acc[baseline][s] for s in by_seed if s in acc[baseline]]
            mean = statistics.mean(diffs)
            half = (T975[len(diffs) - 1] * statistics.stdev(diffs) / math.sqrt(len(diffs))
                    if 1 < len(diffs) <= 10 else float("nan"))
            row["diff"] = f"{mean:+.2f} [{mean - half:+.2f}, {mean + half:+.2f}] (n={len(diffs)})"
        out[str(level)] = row
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--candidate", action="append", default=[],
                   help="';'-separated KEY=VALUE overrides of the quickstart (repeatable; empty: as shipped)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads on the CPU (0: torch's default)")
    args = p.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    for candidate in args.candidate or [""]:
        overrides = [item for item in candidate.split(";") if item]
        print(json.dumps(play(overrides, args.device)), flush=True)


if __name__ == "__main__":
    main()
