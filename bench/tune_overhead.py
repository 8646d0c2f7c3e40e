"""Platform overhead: a small study through Ray Tune + MLflow vs the same trials run in-process.

Both sides train the same trials (same configs, same cached teacher, same thread
count), one trial at a time. Ray's start-up and the teacher's training happen
before either clock starts; what is left is what the platform adds per trial
and per epoch: worker start, object-store transfers, checkpoints, reports,
the MLflow callback and the search/scheduler loop.

    python bench/tune_overhead.py                 # 4 trials x 8 epochs on digits
    python bench/tune_overhead.py --epochs 4 --trials 2
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import textwrap
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

STUDY = """
name: overhead
student: resnet8
teacher: {{arch: resnet14, optim: {{epochs: 2, batch_size: 64}}}}
data: {{name: digits, val_fraction: 0.1}}
loss: {{feat_dim: 64}}
optim: {{epochs: {epochs}, batch_size: 64, lr: 0.05}}
device: cpu
cpus_per_trial: {threads}
max_concurrent: 1
checkpoint_every: {every}
mode: grid
grid:
  invariance_weight: {{key: loss.invariance_weight, levels: {levels}}}
seeds: [0]
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--checkpoint-every", type=int, default=1, help="epochs between checkpoints (study setting)")
    args = parser.parse_args()

    import ray
    import torch

    from icd_tune.method.data import load_data
    from icd_tune.platform.runner import RunOptions, run_study
    from icd_tune.platform.study.definition import load_study
    from icd_tune.method.teachers import get_teacher
    from icd_tune.method.train import Trainer

    work = Path(tempfile.mkdtemp(prefix="icd_overhead_"))
    levels = [round(0.5 * i, 2) for i in range(args.trials)]
    path = work / "overhead.yaml"
    path.write_text(textwrap.dedent(STUDY.format(epochs=args.epochs, threads=args.threads, levels=levels, every=args.checkpoint_every)))
    study = load_study(path)
    results = work / "results"

    # Untimed set-up for both sides: the teacher (trained once, cached) and Ray itself.
    point0 = study.grid_points()[0]
    cfg0 = study.trial_config(point0.overrides, point0.seed)
    data = load_data(cfg0.data)
    teacher, _ = get_teacher(cfg0.teacher, data, cfg0.data, device="cpu", cache_dir=results / "teachers",
                             log=lambda *_: None)
    ray.init(num_cpus=args.threads, include_dashboard=False, log_to_driver=False)

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    for point in study.grid_points():
        Trainer(study.trial_config(point.overrides, point.seed), data, teacher).fit()
    in_process = time.perf_counter() - start

    out = run_study(study, RunOptions(results_dir=str(results)), log=lambda *_: None)
    platform = out["wall_seconds"]
    ray.shutdown()

    trial_epochs = args.trials * args.epochs
    print(f"{args.trials} trials x {args.epochs} epochs (digits, resnet14 -> resnet8, batch 64, "
          f"{args.threads} threads, one trial at a time)")
    print(f"{'in-process, one after another':34s} {in_process:8.1f} s  ({in_process / trial_epochs:.2f} s/epoch)")
    print(f"{'platform (Ray Tune + MLflow)':34s} {platform:8.1f} s  ({platform / trial_epochs:.2f} s/epoch)")
    ratio = platform / in_process
    print(f"overhead ratio {ratio:.2f}x (target <= 1.20x): {'met' if ratio <= 1.2 else 'missed'}")
    print(f"absolute overhead {(platform - in_process) / args.trials:.1f} s per trial")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
