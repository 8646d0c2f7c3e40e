#!/usr/bin/env python
"""Teacher-output cache build cost per image-variant against the build's batch size.

Runs ``output_cache.build_cache`` (the library's build: augment, normalise,
teacher forward, float16 rows written and hashed) over a few synthetic images,
all 162 variants each, once per batch size in turn and rotating the order every
round, so machine load drifts over all batch sizes alike. Reported: the median
over rounds of build seconds / (images x 162), and its ratio to batch 512,
which is ``get_or_build_cache``'s default and so what a study's build uses.

``bench/step_time.py`` uses the batch-512 figure for its break-even point; this
script shows how much of that cost is the batch size on a CPU.

    python bench/cache_build.py                        # resnet32x4, 4 images, 6 batch sizes x 3 rounds: ~1.5 min
    python bench/cache_build.py --batches 64,512 --rounds 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_BATCH = 512


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="resnet32x4")
    parser.add_argument("--images", type=int, default=4, help="synthetic images; each is built in all 162 variants")
    parser.add_argument("--batches", default="16,32,64,128,256,512", help="comma-separated build batch sizes")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--num-classes", type=int, default=100)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]

    import torch

    from icd_tune.method.config import DataConfig
    from icd_tune.method.data import NUM_VARIANTS, load_data
    from icd_tune.method.models import create_model
    from icd_tune.method.output_cache import build_cache, cache_key

    torch.set_num_threads(args.threads)
    data = load_data(DataConfig(name="synthetic", num_train=args.images, num_test=1, num_classes=args.num_classes,
                                val_fraction=0.0))
    teacher = create_model(args.teacher, data.num_classes)
    key = cache_key(teacher, data, "float16")
    forwards = data.num_train * NUM_VARIANTS
    print(f"cache_build: {args.teacher}, {data.num_train} images x {NUM_VARIANTS} variants = {forwards:,} forwards "
          f"per build, float16, {args.threads} threads, torch {torch.__version__}; "
          f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    per = {b: [] for b in batches}
    with tempfile.TemporaryDirectory(prefix="icd_cache_build_") as folder:
        for r in range(args.rounds):
            shift = r % len(batches)
            for b in batches[shift:] + batches[:shift]:
                start = time.perf_counter()
                build_cache(teacher, data, os.path.join(folder, f"outputs-{b}.bin"), dtype="float16", device="cpu",
                            batch_size=b, progress=False, key=key)
                per[b].append((time.perf_counter() - start) / forwards)
            print(f"round {r + 1}/{args.rounds}: ms per image-variant "
                  + ", ".join(f"batch {b} {1000 * per[b][-1]:.2f}" for b in batches), flush=True)
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print()
    base = statistics.median(per[DEFAULT_BATCH]) if DEFAULT_BATCH in per else None
    print(f"{'batch':>6} {'ms per image-variant':>21} {'range':>13} {'x batch 512':>12}")
    for b in batches:
        m = statistics.median(per[b])
        rel = f"{m / base:.2f}" if base else "-"
        print(f"{b:>6} {1000 * m:>21.2f} {1000 * min(per[b]):>6.2f}-{1000 * max(per[b]):<6.2f} {rel:>12}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
