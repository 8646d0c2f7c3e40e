"""Search against the grid: trial-epochs until Optuna TPE + ASHA (or random + ASHA) is as good as the full grid.

1. Noise: one configuration trained over several trial seeds; the "as good as the grid"
   threshold is 0.5 points or the seed-to-seed std of its best validation accuracy,
   whichever is larger.
2. Grid: every configuration of the four ICD factors (contrastive weight, invariance weight,
   temperature, negative count) trained for the full epoch budget, one trial seed, in process,
   with validation and test accuracy recorded at every epoch.
3. Searches: Optuna TPE and random sampling over the grid's own levels (categorical), each with
   Optuna's asynchronous successive halving pruner (ASHA), several search seeds. A search's trial
   of a configuration replays that configuration's recorded epochs (same trial seed, so the same
   numbers a fresh run would give) until the pruner stops it; the trial-epochs counted are the
   ones a live search would have trained.

Reported per method: trial-epochs until the best validation accuracy so far is within the
threshold of the grid's best, the test accuracy (at best validation) of the configuration it
would pick, and the total trial-epochs. Target: TPE + ASHA within the threshold at <= 25% of
the grid's trial-epochs.

    python bench/search_efficiency.py                     # 3x3x3x2 grid, 6 epochs, 5 search seeds
    python bench/search_efficiency.py --size small --search-seeds 3   # 2x2x2x2 grid
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LEVELS = {
    "full": {"loss.contrastive_weight": [0.5, 2.0, 8.0], "loss.invariance_weight": [0.0, 2.0, 8.0],
             "loss.temperature": [0.05, 0.2, 0.5], "loss.negatives.count": [64, 1024]},
    "medium": {"loss.contrastive_weight": [0.5, 2.0, 8.0], "loss.invariance_weight": [0.0, 2.0, 8.0],
               "loss.temperature": [0.05, 0.5], "loss.negatives.count": [64, 1024]},
    "small": {"loss.contrastive_weight": [0.5, 8.0], "loss.invariance_weight": [0.0, 8.0],
              "loss.temperature": [0.05, 0.5], "loss.negatives.count": [64, 1024]},
}

STUDY = """
name: search_efficiency
student: resnet8
teacher: {{arch: {teacher}, optim: {{epochs: {teacher_epochs}, batch_size: 64, lr: 0.1}}}}
data: {{name: synthetic, num_train: {num_train}, num_test: {num_test}, num_classes: {classes}, val_fraction: {val_fraction}, augment: {augment}, synthetic_noise: {noise}}}
loss: {{feat_dim: 32, kd_weight: 0.0, negatives: {{source: memory, count: 128}}}}
optim: {{epochs: {epochs}, batch_size: 64, lr: 0.1}}
max_steps_per_epoch: {steps}
device: cpu
mode: grid
grid:
{grid}
seeds: [0]
"""


def build_study(work: Path, levels: dict, args):
    from icd_tune.platform.study.definition import load_study

    grid = "\n".join(f"  {key.split('.')[-1]}: {{key: {key}, levels: {values}}}" for key, values in levels.items())
    num_train = args.train + args.val
    path = work / "search_efficiency.yaml"
    path.write_text(textwrap.dedent(STUDY.format(num_train=num_train, num_test=args.test, classes=args.classes, val_fraction=args.val / num_train,
                                                 epochs=args.epochs, steps=args.steps, grid=grid,
                                                 teacher=args.teacher, teacher_epochs=args.teacher_epochs,
                                                 augment=str(args.augment).lower(), noise=args.noise)))
    return load_study(path)


def train_curve(study, seed: int, overrides: dict, data, teacher) -> list[tuple[float, float]]:
    """(val/acc1, test/acc1) after every epoch of one trial."""
    from icd_tune.method.train import Trainer

    trainer = Trainer(study.trial_config(overrides, seed), data, teacher)
    return [(m["val/acc1"], m["test/acc1"]) for m in trainer.epochs()]


def best_of(curve: list[tuple[float, float]]) -> tuple[float, float, int]:
    """Best validation accuracy, the test accuracy at its (earliest) epoch, and that epoch."""
    epoch = max(range(len(curve)), key=lambda i: (curve[i][0], -i))
    return curve[epoch][0], curve[epoch][1], epoch + 1


def run_search(method: str, seed: int, keys: list, levels: dict, curves: dict, args, target: float) -> dict:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = (optuna.samplers.TPESampler(seed=seed) if method == "tpe" else optuna.samplers.RandomSampler(seed=seed))
    pruner = optuna.pruners.SuccessiveHalvingPruner(min_resource=args.grace, reduction_factor=args.reduction)
    study = optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner)
    spent, reached, best = 0, None, (float("-inf"), None, None)
    for _ in range(args.samples):
        trial = study.ask()
        combo = tuple(trial.suggest_categorical(k, levels[k]) for k in keys)
        curve = curves[combo]
        for epoch, (val, test) in enumerate(curve, start=1):
            spent += 1
            if val > best[0]:
                best = (val, test, combo)
            if reached is None and best[0] >= target:
                reached = spent
            trial.report(val, epoch)
            if epoch < len(curve) and trial.should_prune():
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                break
        else:
            study.tell(trial, max(v for v, _ in curve))
    return {"method": method, "seed": seed, "reached": reached, "total": spent, "best_val": best[0],
            "test_at_pick": best[1], "pick": best[2]}


def measure_noise(study, data, teacher, args) -> tuple[float, list[float]]:
    point = study.grid_points()[0]
    bests = [best_of(train_curve(study, seed, point.overrides, data, teacher))[0] for seed in range(args.noise_seeds)]
    return statistics.stdev(bests), bests


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=sorted(LEVELS), default="full", help="grid levels: full 3x3x3x2, medium 3x3x2x2, small 2x2x2x2")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--steps", type=int, default=24, help="training steps per epoch (sets the trial-epoch time)")
    p.add_argument("--train", type=int, default=2000)
    p.add_argument("--test", type=int, default=1000)
    p.add_argument("--classes", type=int, default=50)
    p.add_argument("--noise", type=float, default=120.0, help="pixel noise around the class prototypes (harder when higher)")
    p.add_argument("--teacher", default="resnet8")
    p.add_argument("--teacher-epochs", type=int, default=3)
    p.add_argument("--augment", action="store_true", help="pad-crop-flip the training images (off: the synthetic "
                                                          "classes are per-pixel prototypes, which a shift destroys)")
    p.add_argument("--val", type=int, default=2000, help="validation images (at least 2,000)")
    p.add_argument("--search-seeds", type=int, default=5)
    p.add_argument("--samples", type=int, default=0, help="trials per search (default: the grid's size)")
    p.add_argument("--noise-seeds", type=int, default=4)
    p.add_argument("--grace", type=int, default=1)
    p.add_argument("--reduction", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args()

    import torch

    from icd_tune.method.data import load_data
    from icd_tune.method.teachers import get_teacher

    torch.set_num_threads(args.threads)
    levels = LEVELS[args.size]
    keys = list(levels)
    work = Path(tempfile.mkdtemp(prefix="icd_search_eff_"))
    study = build_study(work, levels, args)
    cfg0 = study.trial_config(study.grid_points()[0].overrides, 0)
    data = load_data(cfg0.data)
    teacher, _ = get_teacher(cfg0.teacher, data, cfg0.data, device="cpu", cache_dir=work / "teachers", log=lambda *_: None)
    print(f"synthetic data: {data.num_train} train, {data.val_x.shape[0]} validation, {data.test_x.shape[0]} test "
          f"images, {data.num_classes} classes; {args.epochs} epochs x {args.steps} steps; load average {os.getloadavg()[0]:.1f}")

    started = time.perf_counter()
    noise, bests = measure_noise(study, data, teacher, args)
    noise_s = time.perf_counter() - started
    threshold = max(0.5, noise)
    print(f"noise: best val/acc1 of one configuration over {args.noise_seeds} trial seeds {bests}: std {noise:.2f} "
          f"points; threshold {threshold:.2f} ({'the noise' if noise > 0.5 else '0.5 points'})")

    started = time.perf_counter()
    curves, names = {}, {}
    for point in study.grid_points():
        combo = tuple(point.overrides[k] for k in keys)
        curves[combo] = train_curve(study, 0, point.overrides, data, teacher)
    grid_s = time.perf_counter() - started
    grid_epochs = sum(len(c) for c in curves.values())
    epoch_s = (grid_s + noise_s) / (grid_epochs + args.noise_seeds * args.epochs)
    best_combo = max(curves, key=lambda c: best_of(curves[c])[0])
    grid_best, grid_test, _ = best_of(curves[best_combo])
    target = grid_best - threshold
    print(f"grid: {len(curves)} configurations x {args.epochs} epochs = {grid_epochs} trial-epochs in {grid_s:.0f} s "
          f"({epoch_s:.2f} s per trial-epoch); best val/acc1 {grid_best:.2f} at {dict(zip(keys, best_combo))}, "
          f"test at best val {grid_test:.2f}")
    spread = sorted(best_of(c)[0] for c in curves.values())
    within = sum(v >= target for v in spread)
    print(f"grid best-val spread: min {spread[0]:.2f}, median {spread[len(spread) // 2]:.2f}, max {spread[-1]:.2f}; "
          f"{within} of {len(spread)} configurations are within the threshold of the best (how easy the target is)")

    args.samples = args.samples or len(curves)
    rows = [run_search(m, s, keys, levels, curves, args, target) for m in ("tpe", "random") for s in range(args.search_seeds)]
    print_table(rows, grid_epochs, grid_test, threshold, args)
    if args.json:
        Path(args.json).write_text(json.dumps({"threshold": threshold, "noise": noise, "grid_best": grid_best,
                                               "grid_epochs": grid_epochs, "within": within, "rows": rows,
                                               "curves": {json.dumps(dict(zip(keys, c))): curves[c] for c in curves}},
                                              default=str, indent=2))
    return 0


def print_table(rows: list, grid_epochs: int, grid_test: float, threshold: float, args) -> None:
    print(f"\nsearches: {args.samples} trials each, ASHA grace {args.grace}, reduction factor {args.reduction}")
    print(f"{'method':14s} {'reached (trial-epochs)':>24s} {'% of grid':>10s} {'test at pick':>13s} {'total':>7s}")
    print(f"{'grid':14s} {grid_epochs:>24d} {100.0:>9.0f}% {grid_test:>13.2f} {grid_epochs:>7d}")
    for method in ("tpe", "random"):
        mine = [r for r in rows if r["method"] == method]
        for r in mine:
            reached = "never" if r["reached"] is None else str(r["reached"])
            pct = "" if r["reached"] is None else f"{100 * r['reached'] / grid_epochs:.0f}%"
            print(f"{method + '+asha s' + str(r['seed']):14s} {reached:>24s} {pct:>10s} {r['test_at_pick']:>13.2f} "
                  f"{r['total']:>7d}")
        hit = [r["reached"] for r in mine if r["reached"] is not None]
        median = statistics.median(hit) if len(hit) == len(mine) else None
        summary = ("median " + f"{median:.0f} = {100 * median / grid_epochs:.0f}% of the grid" if median is not None
                   else f"{len(hit)} of {len(mine)} seeds reached it")
        print(f"  {method}+asha: {summary}; mean test at pick "
              f"{statistics.mean(r['test_at_pick'] for r in mine):.2f} (grid {grid_test:.2f})")
    tpe = [r["reached"] for r in rows if r["method"] == "tpe"]
    met = all(r is not None and r <= 0.25 * grid_epochs for r in tpe)
    print(f"target: TPE + ASHA within {threshold:.2f} points at <= 25% of the grid's trial-epochs for every search seed: "
          f"{'met' if met else 'missed'}")


if __name__ == "__main__":
    raise SystemExit(main())
