#!/usr/bin/env python
"""Transfer probe: frozen-student features per batch (live) against once per image and variant (cached).

Runs ``method.transfer.linear_probe`` on a synthetic 32x32 target of ``--images``
training images, both feature paths side by side, each at two epoch counts, rounds
rotating the order so machine load drifts over both alike. Every probe costs
``fixed + epochs x per_epoch`` (fixed: the test pass, and for cached the
162-variant feature bank); the two epoch counts give both parts, from which the
script prints the break-even epoch count and the cached/live time ratio at the
published recipe's 120 epochs. Both paths read the same (index, variant) stream,
so only their cost differs.

    python bench/transfer_features.py                              # CPU: wrn_16_2, 64 images, ~3 min
    python bench/transfer_features.py --device cuda --images 5000  # a GPU, STL-10's training-set size
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student", default="wrn_16_2")
    parser.add_argument("--images", type=int, default=64, help="target training images")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--epochs", default="1,3", help="two probe epoch counts, comma-separated")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    import torch

    from icd_tune.method.config import DataConfig, TrialConfig
    from icd_tune.method.data import Normalizer
    from icd_tune.method.models import create_model, feature_dim
    from icd_tune.method.transfer import frozen_student, linear_probe
    from icd_tune.method.transfer_config import TransferConfig
    from icd_tune.method.transfer_data import load_target

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    e1, e2 = (int(e) for e in args.epochs.split(","))
    data = DataConfig(name="synthetic", num_train=args.images, num_test=64, num_classes=10)
    target = load_target("synthetic", TransferConfig(datasets=["synthetic"]), data)
    student = frozen_student(TrialConfig(student=args.student), create_model(args.student, 100).state_dict(), 100, device)
    normalizer = Normalizer((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), device, channels_last=device.type == "cuda")
    dim = feature_dim(args.student)

    def timed(mode: str, epochs: int) -> float:
        cfg = TransferConfig(datasets=["synthetic"], epochs=epochs, batch_size=args.batch, features=mode)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        linear_probe(student, target, cfg, normalizer, device, seed=0, dim=dim)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    timed("live", 1)  # warm-up: first-call imports and allocations
    runs = [(m, e) for m in ("live", "cached") for e in (e1, e2)]
    seconds: dict[tuple[str, int], list[float]] = {r: [] for r in runs}
    for i in range(args.rounds):
        for mode, epochs in runs[i % len(runs):] + runs[:i % len(runs)]:
            seconds[(mode, epochs)].append(timed(mode, epochs))
    med = {r: statistics.median(v) for r, v in seconds.items()}
    fit = {}
    for mode in ("live", "cached"):
        per_epoch = (med[(mode, e2)] - med[(mode, e1)]) / (e2 - e1)
        fit[mode] = (med[(mode, e1)] - e1 * per_epoch, per_epoch)
    n = args.images
    print(f"{args.student} on {device} ({torch.get_num_threads()} threads), {n} images, batch {args.batch}, "
          f"{args.rounds} round(s); medians:")
    for (mode, epochs), s in med.items():
        print(f"  {mode:6s} {epochs} epoch(s): {s:8.2f} s")
    for mode, (fixed, per_epoch) in fit.items():
        print(f"  {mode:6s} fixed {fixed:7.2f} s ({1e3 * fixed / n:.2f} ms/image), per epoch {per_epoch:7.3f} s "
              f"({1e3 * per_epoch / n:.3f} ms/image)")
    (fl, el), (fc, ec) = fit["live"], fit["cached"]
    at = lambda f, e, epochs: f + epochs * e  # noqa: E731
    if el > ec:
        print(f"break-even: cached pays from {(fc - fl) / (el - ec):.0f} probe epochs")
    else:
        print("break-even: never (a cached epoch is not cheaper than a live one here)")
    print(f"at 120 epochs: cached / live = {at(fc, ec, 120) / at(fl, el, 120):.2f}x "
          f"(live {at(fl, el, 120):.1f} s, cached {at(fc, ec, 120):.1f} s for {n} images)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
