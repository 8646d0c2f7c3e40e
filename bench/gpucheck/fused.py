"""fusion: B same-shaped students trained as one computation, against the best packing.

Calls ``fused_rate(device, students, steps, size) -> dict`` (images/s of B fused students under
``images_per_s``) of the prototype ``bench/fusion.py`` where it exists, at B = 8 first, then 4 and
16 while the part's time allows, and compares each with the best packing's aggregate images/s.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

from .plan import write_partial

PROTOTYPE = Path(__file__).resolve().parents[1] / "fusion.py"


def load_prototype(path: Path = PROTOTYPE):
    """The prototype's ``fused_rate``, or None when the file or the function is missing."""
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location("gpu_check_fusion_prototype", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rate = getattr(module, "fused_rate", None)
    return rate if callable(rate) else None


def fusion(ctx: dict) -> dict:
    fused_rate = load_prototype(ctx.get("fusion_path", PROTOTYPE))
    if fused_rate is None:
        return {"skipped": "no fusion prototype", "ok": True}
    size = ctx["size"]
    best = (ctx["report"]["parts"].get("packing") or {}).get("best") or {}
    result: dict = {"best_packing_images_per_s": best.get("aggregate_images_per_s"),
                    "best_packing_processes": best.get("processes"), "runs": {}}
    first_seconds = None
    for students in size["fusion_students"]:
        # After the first count, start another only when it can finish: a count costs about its
        # share of the first one's time (students / first students).
        if first_seconds is not None:
            needed = first_seconds * students / size["fusion_students"][0]
            if needed > ctx["part_left"]():
                result["runs"][str(students)] = {"skipped": f"needs about {needed:.0f} s, the part has less left"}
                continue
        start = time.perf_counter()
        run = dict(fused_rate(ctx["device"].type, students, size["fusion_steps"], size))
        seconds = time.perf_counter() - start
        first_seconds = seconds if first_seconds is None else first_seconds
        rate = run.get("images_per_s")
        run.update(seconds=seconds, vs_best_packing=rate / best["aggregate_images_per_s"]
                   if isinstance(rate, (int, float)) and best.get("aggregate_images_per_s") else None)
        result["runs"][str(students)] = run
        write_partial(ctx, "fusion", result)
    rates = [r.get("images_per_s") for r in result["runs"].values() if "skipped" not in r]
    result["ok"] = bool(rates) and all(isinstance(r, (int, float)) and r > 0 for r in rates)
    return result
