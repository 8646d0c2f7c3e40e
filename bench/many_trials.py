"""Many tiny trials through the real path (Ray Tune + Optuna TPE + MLflow): per-trial overhead and driver memory.

Each trial trains one step of a tiny model on a few synthetic images and evaluates
once, so nearly all of its wall time is what the platform adds: Tune's loop and
experiment snapshots, the Optuna searcher, the MLflow child run (params, metrics,
the student artifact), the progress line. For each size the study runs as a user's
would (``run_study``, a fresh run folder, sqlite MLflow and Optuna stores). The
wall time per trial (Tune's wall time over the count) is the figure checked: it
bounds the overhead from above, since it still holds the trial's own step and
evaluation. One trial's compute in process (live teacher) is printed beside it for
scale only: trials under Tune read the teacher-output cache. A Tune callback
records the driver's resident memory and the clock at every finished trial, so
the per-trial figures are also given for the first and last quarter of the run:
flat means they do not grow with the count.

    python bench/many_trials.py                        # 100, 300 and 1000 trials
    python bench/many_trials.py --sizes 300 --snapshots both   # the snapshot policies side by side

Targets: <= 0.5 s of overhead and <= 1 MiB of driver memory per trial, flat in the count.
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
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

STUDY = """
name: many_{n}
student: resnet8
teacher: {{arch: resnet8, optim: {{epochs: 1, batch_size: 32}}}}
data: {{name: synthetic, num_train: 120, num_test: 20, num_classes: 4, val_fraction: 0.2}}
loss: {{feat_dim: 16, kd_weight: 1.0}}
optim: {{epochs: 1, batch_size: 32, lr: 0.05}}
max_steps_per_epoch: 1
device: cpu
cpus_per_trial: 1
log_students: {students}
mode: search
search:
  space:
    loss.invariance_weight: {{type: uniform, low: 0.0, high: 2.0}}
    optim.lr: {{type: loguniform, low: 0.001, high: 0.2}}
  num_samples: {n}
  seed: 0
seeds: [0]
"""


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def make_probe():
    from ray import tune

    class Probe(tune.Callback):
        """(seconds since the first trial started, driver RSS in MiB) at every finished trial."""

        def __init__(self):
            self.start = None
            self.marks: list[tuple[float, float]] = []

        def on_trial_start(self, iteration, trials, trial, **info):
            if self.start is None:
                self.start = time.perf_counter()

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.marks.append((time.perf_counter() - (self.start or time.perf_counter()), rss_mib()))

    return Probe()


def trial_compute_seconds(study) -> float:
    """One trial's work in process, no platform: the floor that the overhead is counted above."""
    from icd_tune.method.data import load_data
    from icd_tune.method.teachers import get_teacher
    from icd_tune.method.train import Trainer

    point = study.first_point()
    cfg = study.trial_config(point.overrides, point.seed)
    data = load_data(cfg.data)
    teacher, _ = get_teacher(cfg.teacher, data, cfg.data, device="cpu", cache_dir=tempfile.mkdtemp(), log=lambda *_: None)
    Trainer(cfg, data, teacher).fit()  # warm-up
    started = time.perf_counter()
    for _ in range(3):
        Trainer(cfg, data, teacher).fit()
    return (time.perf_counter() - started) / 3


def quarter_rates(marks: list[tuple[float, float]]) -> tuple[float, float, float, float]:
    """(s per trial, MiB per trial) over the first quarter of finished trials, then over the last quarter."""
    q = max(len(marks) // 4, 1)
    first, last = marks[:q + 1], marks[-q - 1:]

    def rate(part, i):
        return (part[-1][i] - part[0][i]) / max(len(part) - 1, 1)

    return rate(first, 0), rate(first, 1), rate(last, 0), rate(last, 1)


def run_size(n: int, work: Path, args) -> dict:
    from icd_tune.platform.runner import RunOptions, run_study
    from icd_tune.platform.study.definition import load_study

    path = work / f"many_{n}.yaml"
    path.write_text(textwrap.dedent(STUDY.format(n=n, students="true" if args.students else "false")))
    study = load_study(path)
    compute = trial_compute_seconds(study)
    from icd_tune.platform.raytune.ray_internals import snapshots_taken

    probe = make_probe()
    snapshots = snapshots_taken()
    before = rss_mib()
    started = time.perf_counter()
    out = run_study(study, RunOptions(results_dir=str(work / "results"), max_concurrent=args.concurrent,
                                      extra_callbacks=[probe]), log=lambda *_: None)
    total = time.perf_counter() - started
    after = rss_mib()
    ended = sum(t["status"] in ("completed", "stopped") for t in out["trials"])
    tune_s = out["wall_seconds"]
    per_trial = tune_s / n
    s1, m1, s4, m4 = quarter_rates(probe.marks)
    marks = probe.marks
    slope = (marks[-1][1] - marks[0][1]) / max(len(marks) - 1, 1)  # growth per finished trial, set-up excluded
    return {"n": n, "ended": ended, "tune_s": tune_s, "total_s": total, "compute_s": compute,
            "per_trial_s": per_trial, "overhead_s": per_trial - compute / args.concurrent,
            "mib_per_trial": slope, "run_mib": after - before, "rss_before": before, "rss_after": after,
            "first_q_s": s1, "first_q_mib": m1, "last_q_s": s4, "last_q_mib": m4,
            "snapshots_per_trial": (snapshots_taken() - snapshots) / n}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[100, 300, 1000])
    p.add_argument("--concurrent", type=int, default=2, help="trials at once (and Ray's CPUs)")
    p.add_argument("--students", action="store_true", help="log each trial's student weights to MLflow (off: a huge "
                                                           "search's setting)")
    p.add_argument("--snapshots", choices=["on-join", "every-step", "both"], default="on-join",
                   help="Tune's experiment snapshots: when a trial joins (the platform's setting), at every loop step "
                        "(the former one), or both, side by side")
    args = p.parse_args()

    import ray

    work = Path(tempfile.mkdtemp(prefix="icd_many_"))
    ray.init(address="local", num_cpus=args.concurrent, include_dashboard=False, log_to_driver=False)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; {args.concurrent} trials at once; "
          f"student artifacts {'on' if args.students else 'off'}")
    print(f"{'snapshots':>10s} {'trials':>6s} {'ended':>6s} {'tune s':>8s} {'s/trial':>8s} {'overhead':>9s} {'MiB/trial':>10s} {'run MiB':>8s} "
          f"{'s/trial q1':>11s} {'s/trial q4':>11s} {'MiB/trial q1':>13s} {'MiB/trial q4':>13s} {'snapshots/trial':>16s}")
    rows = []
    policies = ["every-step", "on-join"] if args.snapshots == "both" else [args.snapshots]
    for n, policy in ((n, p) for n in args.sizes for p in policies):
        # every-step: Tune's period 0, a snapshot at every loop step (the former setting), for comparison.
        os.environ["TUNE_GLOBAL_CHECKPOINT_S"] = "0" if policy == "every-step" else "auto"
        r = run_size(n, work, args)
        r["policy"] = policy
        rows.append(r)
        print(f"{policy:>10s} {r['n']:6d} {r['ended']:6d} {r['tune_s']:8.1f} {r['per_trial_s']:8.3f} {r['overhead_s']:9.3f} "
              f"{r['mib_per_trial']:10.3f} {r['run_mib']:8.1f} {r['first_q_s']:11.3f} {r['last_q_s']:11.3f} {r['first_q_mib']:13.3f} "
              f"{r['last_q_mib']:13.3f} {r['snapshots_per_trial']:16.2f}", flush=True)
    ray.shutdown()
    computes = ", ".join(f"{r['compute_s']:.3f}" for r in rows)
    print(f"one trial's compute in process: {computes} s (per size); "
          "the overhead column (s/trial - compute / concurrency) is indicative only; MiB/trial: driver RSS growth per finished trial, first to last "
          "(run MiB: the whole run's growth, set-up included)")
    worst = max(r["per_trial_s"] for r in rows), max(r["mib_per_trial"] for r in rows)
    print(f"targets: <= 0.5 s overhead per trial (bounded by s/trial): {'met' if worst[0] <= 0.5 else 'missed'} "
          f"(worst {worst[0]:.3f}); "
          f"<= 1 MiB driver memory per trial: {'met' if worst[1] <= 1 else 'missed'} (worst {worst[1]:.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
