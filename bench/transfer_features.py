#!/usr/bin/env python
"""Transfer probe: frozen-student features per batch (live) against once per image and variant (cached).

The probe's cost is forward passes of the frozen student; its linear layer is negligible.
Live, every epoch passes each training image once at the probe's batch size; cached,
``method.transfer.feature_bank`` passes each image once per augmentation variant (162) in
batches of 512 over (variant, image) pairs, after which an epoch is table lookups and linear
steps. Measured side by side, rotating the order every round so machine load drifts over all
alike, medians over rounds, per image:

- live: one probe step (augment, normalise, student forward, linear step) / batch size;
- bank: a ``feature_bank`` build over ``--images`` images / (images x 162);
- lookup: one cached step (gather from the bank, linear step) / batch size.

Break-even epochs = 162 x bank / (live - lookup): a probe of more epochs is cheaper cached.

    python bench/transfer_features.py                       # CPU: wrn_16_2, ~2 min
    python bench/transfer_features.py --device cuda --images 64
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
    parser.add_argument("--images", type=int, default=4, help="images in the timed bank build (x 162 passes)")
    parser.add_argument("--batch", type=int, default=64, help="the probe's batch size")
    parser.add_argument("--steps", type=int, default=4, help="probe steps timed per round, live and cached")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    from icd_tune.method.config import TrialConfig
    from icd_tune.method.data import NUM_VARIANTS, Normalizer, augment
    from icd_tune.method.models import create_model, feature_dim
    from icd_tune.method.transfer import feature_bank, features_of, frozen_student

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (max(args.batch, args.images), 3, 32, 32), generator=g, dtype=torch.uint8).to(device)
    labels = torch.randint(0, 10, (args.batch,), generator=g).to(device)
    student = frozen_student(TrialConfig(student=args.student), create_model(args.student, 100).state_dict(), 100, device)
    normalizer = Normalizer((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), device, channels_last=device.type == "cuda")
    head = nn.Linear(feature_dim(args.student), 10).to(device)
    optimizer = torch.optim.SGD(head.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    bank = feature_bank(student, images[:args.images], normalizer, augmented=True)  # also the warm-up

    def step(feats):
        loss = F.cross_entropy(head(feats), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def live():
        for _ in range(args.steps):
            variant = torch.randint(0, NUM_VARIANTS, (args.batch,), device=device)
            step(features_of(student, normalizer(augment(images[:args.batch], variant))))

    def lookup():
        for _ in range(args.steps):
            index = torch.randint(0, args.images, (args.batch,), device=device)
            variant = torch.randint(0, NUM_VARIANTS, (args.batch,), device=device)
            step(bank[variant, index].float())

    def build():
        feature_bank(student, images[:args.images], normalizer, augmented=True)

    def timed(fn) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    parts = {"live": (live, args.steps * args.batch), "bank": (build, args.images * NUM_VARIANTS),
             "lookup": (lookup, args.steps * args.batch)}
    names = list(parts)
    per_image: dict[str, list[float]] = {n: [] for n in names}
    for i in range(args.rounds):
        for name in names[i % 3:] + names[:i % 3]:
            fn, count = parts[name]
            per_image[name].append(timed(fn) / count)
    med = {n: statistics.median(v) for n, v in per_image.items()}
    print(f"{args.student} on {device} ({torch.get_num_threads()} threads), probe batch {args.batch}, bank over "
          f"{args.images} images x {NUM_VARIANTS} variants, {args.rounds} rounds; median ms per image:")
    print(f"  live step:   {1e3 * med['live']:.3f}   (spread {1e3 * min(per_image['live']):.3f}.."
          f"{1e3 * max(per_image['live']):.3f})")
    print(f"  bank build:  {1e3 * med['bank']:.3f}   per image-variant (spread {1e3 * min(per_image['bank']):.3f}.."
          f"{1e3 * max(per_image['bank']):.3f})")
    print(f"  lookup step: {1e3 * med['lookup']:.4f}")
    print(f"  bank / live forward: {med['bank'] / med['live']:.2f}x")
    gain = med["live"] - med["lookup"]
    if gain > 0:
        even = NUM_VARIANTS * med["bank"] / gain
        ratio = (NUM_VARIANTS * med["bank"] + 120 * med["lookup"]) / (120 * med["live"])
        print(f"break-even: cached pays from {even:.0f} probe epochs; at the recipe's 120: cached / live = {ratio:.2f}x")
    else:
        print("break-even: never (a cached step is not cheaper than a live one here)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
