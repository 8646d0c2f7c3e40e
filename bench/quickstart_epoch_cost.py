"""CPU seconds of one teacher epoch and one trial epoch of the quickstart, as shipped and under overrides.

Process CPU time on one thread, the two settings interleaved and repeated, so that a machine
loaded by other work inflates both alike. With each setting's epoch and trial counts it prints
the work on a run's critical path (trials run two at a time on 2 cores) and, per repeat, the ratio.

    PYTHONPATH=. python bench/quickstart_epoch_cost.py --other "data.augment=true;teacher.optim.lr=0.05;optim.epochs=8;seeds=[0,1]"
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def epoch_costs(overrides: list[str]) -> tuple[float, float, object]:
    """CPU seconds of one full epoch (training and evaluation) of the teacher's training and of one trial."""
    from icd_tune.method.data import load_data
    from icd_tune.method.models import create_model
    from icd_tune.method.teachers import teacher_trial_config
    from icd_tune.method.train import Trainer
    from icd_tune.platform.study.definition import load_study

    study = load_study(ROOT / "ablations" / "quickstart.yaml", overrides)
    p = study.grid_points()[1]  # a level with the invariance term on
    cfg = study.trial_config(p.overrides, p.seed)
    cfg.device = "cpu"
    data = load_data(cfg.data)
    teacher_cfg = teacher_trial_config(cfg.teacher, cfg.data, "cpu")
    teacher_cfg.optim.epochs = 1
    start = time.process_time()
    Trainer(teacher_cfg, data).fit()
    teacher_s = (time.process_time() - start)
    teacher = create_model(cfg.teacher.arch, data.num_classes).eval()
    cfg.optim.epochs = 1
    start = time.process_time()
    Trainer(cfg, data, teacher).fit()
    trial_s = (time.process_time() - start)
    return teacher_s, trial_s, study


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--other", default="", help="';'-separated KEY=VALUE overrides to compare with the shipped study")
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    import torch

    torch.set_num_threads(1)
    settings = {"shipped": [], "other": [x for x in args.other.split(";") if x]}
    runs: dict[str, list[tuple[float, float]]] = {k: [] for k in settings}
    studies = {}
    for _ in range(args.repeats):
        for name, overrides in settings.items():
            teacher_s, trial_s, studies[name] = epoch_costs(overrides)
            runs[name].append((teacher_s, trial_s))
            print(f"{name}: teacher epoch {teacher_s:.1f} CPU s, trial epoch {trial_s:.1f} CPU s", flush=True)
    # Each repeat's two settings ran back to back: compare them pairwise, not across repeats.
    ratios = []
    for i in range(args.repeats):
        work = {}
        for name, study in studies.items():
            teacher_s, trial_s = runs[name][i]
            trials, epochs = len(study.grid_points()), study.epochs
            t_epochs = study.trial_config({}, 0).teacher.optim.epochs
            waves = math.ceil(trials / 2)  # two 1-CPU trials at a time on 2 cores
            work[name] = t_epochs * teacher_s / 2 + waves * epochs * trial_s  # the teacher trains on both cores
            print(f"repeat {i + 1}, {name}: teacher {t_epochs} epochs, {trials} trials x {epochs} epochs in {waves} "
                  f"waves: ~{work[name]:.0f} CPU s on the critical path")
        ratios.append(work["shipped"] / work["other"])
    print("shipped / other, per repeat: " + ", ".join(f"{r:.2f}" for r in ratios)
          + f"; mean {sum(ratios) / len(ratios):.2f}")

if __name__ == "__main__":
    main()
