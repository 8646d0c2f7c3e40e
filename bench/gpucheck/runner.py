"""The run: the chosen parts in order, each under its deadline and the run's budget, then the table.

A part's module is imported when the run reaches it, so ``--parts environment`` loads torch alone.
"""

from __future__ import annotations

import importlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from .plan import DEADLINES, ORDER, SIZES, PartTimeout, UsageError, deadline, parse_args, write_partial
from .report import table

# part -> (module of this package, function)
PARTS = {"environment": ("env", "environment"), "correctness": ("checks", "correctness"),
         "step_graph": ("graph", "step_graph"), "graph_exact": ("graph_exact", "graph_exact"), "packing": ("packing", "packing"),
         "baseline": ("baseline", "baseline"), "projections": ("projections", "projections"),
         "fusion": ("fused", "fusion"), "step_time": ("steps", "step_time"), "cache": ("checks", "cache"),
         "compile": ("steps", "compiled")}
assert tuple(PARTS) == ORDER


def part_function(name: str):
    module, function = PARTS[name]
    return getattr(importlib.import_module(f".{module}", __package__), function)


def run_part(ctx: dict, name: str) -> dict:
    start = time.perf_counter()
    limit = min(DEADLINES[name] * ctx["deadline_scale"], ctx["budget_end"] - start)
    ctx["part_left"] = lambda: start + limit - time.perf_counter()
    if limit < 1:
        result = {"status": "timeout", "error": f"not started: the run's {ctx['budget']:.0f} s budget is spent"}
    else:
        try:
            with deadline(limit):
                result = part_function(name)(ctx)
            result["status"] = "ok" if result.get("ok") else "FAILED"
        except PartTimeout as err:
            result = dict(ctx["report"]["parts"].get(name, {}), status="timeout", error=str(err))
        except Exception as err:  # one broken part must not hide the others' results
            result = dict(ctx["report"]["parts"].get(name, {}), status="error", error=f"{type(err).__name__}: {err}")
    result["seconds"] = round(time.perf_counter() - start, 2)
    write_partial(ctx, name, result)
    print(f"{name:<12} {result['status']:<8} {result['seconds']:7.1f} s", flush=True)
    return result


def main(argv=None, started: float | None = None) -> int:
    try:
        args, names, counts = parse_args(argv)
    except UsageError as err:
        print(f"gpu_check: {err}", file=sys.stderr)
        return 2
    return run(args, names, counts, time.perf_counter() if started is None else started)


def run(args, names: list[str], counts: tuple[int, ...] | None, started: float) -> int:
    """The parts ``names`` (in order) as ``args`` asks; the run's budget counts from ``started``."""
    if not args.cpu and not torch.cuda.is_available():
        print("no CUDA device visible to torch; run with --cpu for the CPU mode", file=sys.stderr)
        return 2
    size_name = "cpu" if args.cpu else "gpu"
    default = Path(os.environ["OUT"]) if os.environ.get("OUT") else Path("results")
    out = Path(args.out) if args.out else default / "gpu_check.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    scale = 4.0 if args.cpu else 1.0
    ctx = {"size": SIZES[size_name], "size_name": size_name, "device": torch.device("cpu" if args.cpu else "cuda"),
           "out": out, "deadline_scale": scale, "budget": args.budget * scale, "budget_end": started + args.budget * scale,
           "tmp": tempfile.mkdtemp(prefix="gpu-check-"),
           "report": {"mode": size_name, "chosen": names, "budget_seconds": args.budget * scale, "parts": {}}}
    if counts is not None:
        ctx["pack_counts"] = counts
    if args.cpu:
        torch.set_num_threads(min(2, os.cpu_count() or 1))
    try:
        for name in names:
            run_part(ctx, name)
    finally:
        shutil.rmtree(ctx["tmp"], ignore_errors=True)
    print()
    print(table(ctx["report"], ORDER))
    print(f"\nJSON: {out}")
    failed = [n for n, p in ctx["report"]["parts"].items() if p["status"] in ("FAILED", "error")]
    for name in failed:
        print(f"{name}: {ctx['report']['parts'][name].get('error', 'a check failed, see the JSON')}", file=sys.stderr)
    return 1 if failed else 0
