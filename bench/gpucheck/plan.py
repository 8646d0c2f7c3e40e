"""The run's plan, without torch: parts and their order, sizes, deadlines, the command line, the JSON.

Kept free of torch so that a bad command line is refused at once and the projections and the
table can be computed (and tested) anywhere.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
from pathlib import Path

# The default order puts the figures that matter most first, so a run cut off still has them:
# terms, the graph step (its speed, then its exactness), packing and the baseline (what the projections read), then the rest.
ORDER = ("environment", "correctness", "step_graph", "graph_exact", "packing", "baseline", "projections", "fusion",
         "step_time", "cache", "compile")
# |device - cpu| <= ATOL + RTOL * |cpu| per loss term. bf16 keeps 8 significant bits (0.4%
# per rounding); through a ResNet forward the logits drift by about 1%, which moves a
# cross-entropy near ln(100) = 4.6 by a few hundredths.
ATOL, RTOL = 0.05, 0.02
# One CIFAR-100 trial of the published recipe: 240 epochs of 703 batch-64 steps over the 45,000
# training images, 15,000 images (validation and test) evaluated per epoch.
CIFAR_TRAIN, CIFAR_EVAL, EPOCHS, BATCH = 45_000, 15_000, 240, 64
STUDY_TRIALS = 18  # the invariance-weight study: 6 levels x 3 seeds
STEP_VARIANTS = ("eager_bf16", "eager_fp16", "cached_bf16", "cached_bf16_host_lookup")  # step_time's

SIZES = {
    # models, classes, batch; timed steps (step_time's bf16, fp16 and cached; step_graph's variants and
    # their one-step epochs checked against the CPU); images in the timing set (also the cache part's),
    # images evaluated; packing window and process counts; baseline loader workers and warm-up steps;
    # fused students and their steps
    "gpu": dict(teacher="resnet32x4", student="resnet8x4", classes=100, batch=BATCH, steps=100, fp16_steps=50,
                cached_steps=40, graph_steps=100, check_steps=5, timing_images=1024, eval_images=5120,
                pack_seconds=6.0, pack_procs=(1, 4, 16), loader_workers=4, baseline_warmup=10,
                fusion_students=(8, 4, 16), fusion_steps=30, exact_steps=20, exact_negatives=1024),
    "cpu": dict(teacher="resnet8", student="resnet8", classes=10, batch=8, steps=4, fp16_steps=1, cached_steps=2,
                graph_steps=2, check_steps=2, timing_images=8, eval_images=64,
                pack_seconds=2.0, pack_procs=(1, 2), loader_workers=2, baseline_warmup=1,
                fusion_students=(2,), fusion_steps=2, exact_steps=4, exact_negatives=16),
}
# Seconds per part on a GPU. The run as a whole starts no part after RUN_BUDGET seconds and cuts
# the running one there, so a default run ends within 4 minutes even though the parts' own
# deadlines add up to more; the CPU mode allows 4x both, its runs share a busy machine.
DEADLINES = {"environment": 10, "correctness": 20, "step_graph": 75, "graph_exact": 25, "packing": 70, "baseline": 25,
             "projections": 5, "fusion": 40, "step_time": 30, "cache": 15, "compile": 55}
RUN_BUDGET = 225.0
ENTRY = Path(__file__).resolve().parents[1] / "gpu_check.py"


class UsageError(Exception):
    pass


class PartTimeout(Exception):
    pass


def chosen_parts(text: str | None) -> list[str]:
    """The parts ``--parts a,b,c`` names, in the default order; every part when not given."""
    if text is None:
        return list(ORDER)
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in ORDER]
    if unknown or not names:
        raise UsageError(f"unknown part{'s' if len(unknown) > 1 else ''} {', '.join(unknown) or '(none named)'}; "
                         f"known parts: {', '.join(ORDER)}")
    return [n for n in ORDER if n in names]


def pack_counts(text: str | None) -> tuple[int, ...] | None:
    """``--pack 1,4,8,16``: the process counts packing runs (1 is always run, as the reference)."""
    if text is None:
        return None
    try:
        counts = sorted({1, *(int(n) for n in text.split(",") if n.strip())})
    except ValueError:
        raise UsageError(f"--pack takes process counts such as 1,4,8,16, not {text!r}") from None
    if counts[0] < 1:
        raise UsageError(f"--pack counts must be at least 1, not {text!r}")
    return tuple(counts)


def parse_args(argv) -> tuple[argparse.Namespace, list[str], tuple[int, ...] | None]:
    """(arguments, parts in order, packing counts or None); UsageError for an unknown part or a bad count."""
    parser = argparse.ArgumentParser(description="The GPU path in one short run (bench/gpu_check.py).")
    parser.add_argument("--cpu", action="store_true", help="tiny sizes on the CPU (keeps the script working)")
    parser.add_argument("--out", help="JSON file (default: $OUT/gpu_check.json, else results/gpu_check.json)")
    parser.add_argument("--parts", help=f"comma-separated parts to run, in the default order ({','.join(ORDER)})")
    parser.add_argument("--pack", help="process counts for packing, e.g. 1,4,8,16 (default 1,4,16; --cpu: 1,2)")
    parser.add_argument("--budget", type=float, default=RUN_BUDGET,
                        help=f"seconds after which no part starts and the running one is cut (default {RUN_BUDGET:.0f}; "
                             f"--cpu allows 4x)")
    args = parser.parse_args(argv)
    if not args.budget > 0:
        raise UsageError(f"--budget takes a number of seconds above 0, not {args.budget!r}")
    return args, chosen_parts(args.parts), pack_counts(args.pack)


@contextlib.contextmanager
def deadline(seconds: float):
    def expire(signum, frame):
        raise PartTimeout(f"over its {seconds:.0f} s deadline")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def write_partial(ctx: dict, part: str, value: dict) -> None:
    ctx["report"]["parts"][part] = value
    tmp = ctx["out"].with_name(ctx["out"].name + ".tmp")
    tmp.write_text(json.dumps(ctx["report"], indent=1, default=str))
    tmp.replace(ctx["out"])


def fmt(value, digits: int = 2) -> str:
    return "-" if value is None or not isinstance(value, (int, float)) else f"{value:,.{digits}f}"
