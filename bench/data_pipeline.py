#!/usr/bin/env python
"""Images per second: our batched pipeline (TrainStream) against a per-image torchvision DataLoader.

Both read the same CIFAR-sized synthetic uint8 data (50,000 x 3 x 32 x 32) and
produce normalised float batches of 64 with pad-4 random crop and horizontal
flip:

  ours      ``TrainStream.epoch()``: one permutation and one variant per image
            drawn up front, then per batch an index, ``augment`` (crop + flip
            by variant index) and the fused normalisation, all on the tensors.
  baseline  a Dataset returning PIL images through
            Compose([RandomCrop(32, padding=4), RandomHorizontalFlip(),
            ToTensor(), Normalize(mean, std)]), batched by
            ``DataLoader(batch_size=64, num_workers=2, shuffle=True)``.

Each round times ``--batches`` batches of each pipeline after ``--warmup``
batches of the same iterator (so the DataLoader's worker start-up and our
per-epoch draws before the first batch are outside the timed part for both;
ours still pays its per-epoch draws because the timed batches start a fresh
epoch). The two alternate within and across rounds, so drift in machine load
hits both; the reported rate is the median over rounds and the ratio the
median of the per-round ratios.

Targets: ours >= 5x the baseline; ours per batch < 5% of a training step
(KD resnet32x4 -> resnet8x4, batch 64: 690 ms measured here, or
``--measure-step N`` to time N steps now).

    python bench/data_pipeline.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

from icd_tune.method.data import CIFAR100_MEAN, CIFAR100_STD, Normalizer, TrainStream  # noqa: E402

SPEEDUP_TARGET = 5.0
STEP_SHARE_TARGET = 0.05


class PilDataset(Dataset):
    """The usual CIFAR dataset: one HWC uint8 image -> PIL -> transforms, per item."""

    def __init__(self, images_hwc: np.ndarray, labels: np.ndarray, transform):
        self.images = images_hwc
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def time_batches(iterator, warmup: int, batches: int, batch_size: int) -> float:
    """Images per second over ``batches`` batches taken after ``warmup`` from the same iterator."""
    for _ in range(warmup):
        next(iterator)
    start = time.perf_counter()
    seen = 0
    for _ in range(batches):
        x, *_ = next(iterator)
        seen += x.shape[0]
    elapsed = time.perf_counter() - start
    if seen != batches * batch_size:
        raise RuntimeError(f"expected full batches of {batch_size}, got {seen} images in {batches} batches")
    return seen / elapsed


def measure_kd_step(images, labels, steps: int, batch_size: int) -> float:
    """Median ms of a KD step (resnet32x4 -> resnet8x4) through the real Trainer on these images."""
    from icd_tune.method.config import TrialConfig
    from icd_tune.method.data import DataBundle
    from icd_tune.method.models import create_model
    from icd_tune.method.train import Trainer

    n = images.shape[0]
    data = DataBundle("synthetic", images, labels, images[:0], labels[:0], images[:batch_size], labels[:batch_size],
                      100, CIFAR100_MEAN, CIFAR100_STD, {"name": "synthetic-bench", "num_train": n})
    cfg = TrialConfig.from_dict({"student": "resnet8x4", "teacher": {"arch": "resnet32x4"},
                                 "data": {"name": "synthetic", "num_classes": 100},
                                 "loss": {"kd_weight": 1.0, "contrastive_weight": 0.0, "invariance_weight": 0.0},
                                 "optim": {"batch_size": batch_size}, "device": "cpu"})
    trainer = Trainer(cfg, data, create_model("resnet32x4", 100), device="cpu")
    trainer.train_mode()
    weights = [(k, w) for k, w in trainer.weights.items() if w != 0]
    times = []
    for i, (x, y, index, variant) in enumerate(trainer.stream.epoch(steps + 2)):
        start = time.perf_counter()
        _, terms = trainer.step_terms(x, y, index, variant, epoch=1)
        loss = sum(w * terms[k] for k, w in weights)
        trainer.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        trainer.optimizer.step()
        if i >= 2:  # the first steps pay for allocations and lazy initialisation
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def _load() -> str:
    # Other jobs share these cores; the load average tells a reader how busy the machine was.
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-images", type=int, default=50000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=300, help="timed batches per pipeline per round")
    parser.add_argument("--warmup", type=int, default=10, help="untimed batches before each timed run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers for the baseline")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads for ours")
    parser.add_argument("--step-ms", type=float, default=690.0,
                        help="training-step time the per-batch cost is compared with")
    parser.add_argument("--measure-step", type=int, default=0, metavar="N",
                        help="time N KD steps now instead of using --step-ms")
    args = parser.parse_args(argv)
    if args.warmup + args.batches > args.num_images // args.batch_size:
        parser.error("--warmup + --batches must fit in one epoch")

    import torchvision
    from torchvision import transforms

    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.num_images, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 100, (args.num_images,), generator=g)

    stream = TrainStream(images, labels, args.batch_size, torch.device("cpu"), torch.Generator().manual_seed(1),
                         Normalizer(CIFAR100_MEAN, CIFAR100_STD, "cpu"))
    transform = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                                    transforms.ToTensor(), transforms.Normalize(CIFAR100_MEAN, CIFAR100_STD)])
    dataset = PilDataset(images.permute(0, 2, 3, 1).contiguous().numpy(), labels.numpy(), transform)
    loader = DataLoader(dataset, batch_size=args.batch_size, num_workers=args.workers, shuffle=True)

    print(f"data_pipeline: {args.num_images} x 3 x 32 x 32 uint8, batch {args.batch_size}, "
          f"{args.warmup} warm-up + {args.batches} timed batches x {args.rounds} rounds; torch {torch.__version__}, "
          f"torchvision {torchvision.__version__}, {os.cpu_count()} CPU cores, ours on {args.threads} threads, "
          f"baseline with {args.workers} DataLoader workers; load average {_load()}")
    ours, base = [], []
    for r in range(args.rounds):
        def run_ours():
            ours.append(time_batches(stream.epoch(), args.warmup, args.batches, args.batch_size))

        def run_base():
            base.append(time_batches(iter(loader), args.warmup, args.batches, args.batch_size))

        for run in ((run_ours, run_base) if r % 2 == 0 else (run_base, run_ours)):
            run()
        print(f"round {r + 1}/{args.rounds}: ours {ours[-1]:,.0f} img/s, baseline {base[-1]:,.0f} img/s, "
              f"ratio {ours[-1] / base[-1]:.1f}x", flush=True)

    print(f"load average after: {_load()}")
    if args.measure_step:
        step_ms = measure_kd_step(images, labels, args.measure_step, args.batch_size)
        step_source = f"measured now over {args.measure_step} KD steps"
    else:
        step_ms = args.step_ms
        step_source = "--step-ms"
    ours_rate, base_rate = statistics.median(ours), statistics.median(base)
    ratio = statistics.median(o / b for o, b in zip(ours, base))
    batch_ms = 1000 * args.batch_size / ours_rate
    share = batch_ms / step_ms

    print()
    print(f"{'pipeline':<44} {'img/s (median)':>14} {'range':>19} {'ms/batch':>9}")
    for name, rates in (("ours: TrainStream.epoch()", ours),
                        (f"baseline: PIL + torchvision, {args.workers} workers", base)):
        med = statistics.median(rates)
        print(f"{name:<44} {med:>14,.0f} {min(rates):>9,.0f}-{max(rates):<9,.0f} {1000 * args.batch_size / med:>9.3f}")
    print()
    print(f"speed-up (median of per-round ratios): {ratio:.1f}x  "
          f"[target >= {SPEEDUP_TARGET:.0f}x: {'PASS' if ratio >= SPEEDUP_TARGET else 'FAIL'}]")
    print(f"ours per batch: {batch_ms:.3f} ms = {100 * share:.3f}% of a {step_ms:.0f} ms training step ({step_source})  "
          f"[target < {100 * STEP_SHARE_TARGET:.0f}%: {'PASS' if share < STEP_SHARE_TARGET else 'FAIL'}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
