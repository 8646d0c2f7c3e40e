"""The two correctness parts: first-step terms against the CPU, and the teacher cache read back."""

from __future__ import annotations

import math

import torch

from icd_tune.method.data import load_data
from icd_tune.method.output_cache import open_cache
from icd_tune.method.teacher_outputs import CachedTeacher
from icd_tune.method.train import Trainer

from .common import compare, first_step_terms, make_teacher, shared_cache, trial_config


def correctness(ctx: dict, compile_: bool = False) -> dict:
    """First-step terms under bf16 autocast (channels_last on a GPU) against fp32 on the CPU; a short trial."""
    size, device = ctx["size"], ctx["device"]
    cfg = trial_config(size, 4 * size["batch"], "cpu", steps=2)
    data = load_data(cfg.data)
    reference = first_step_terms(Trainer(cfg, data, make_teacher(size), device="cpu"), data, size["batch"])
    trainer = Trainer(trial_config(size, 4 * size["batch"], device.type, compile_, steps=2), data,
                      make_teacher(size), device=device)
    trainer.amp_dtype = torch.bfloat16
    result = compare(first_step_terms(trainer, data, size["batch"]), reference)
    losses = [trainer.run_epoch() for _ in range(2)]
    finite = {k: v for m in losses for k, v in m.items() if k.startswith("train/loss")}
    result["trial_losses_finite"] = all(math.isfinite(v) for v in finite.values())
    result["trial_last_loss"] = losses[-1]["train/loss"]
    result["ok"] = result["agree"] and result["trial_losses_finite"]
    return result


def cache(ctx: dict) -> dict:
    """The cache built on the device (ms per image-variant) and read back: cached and live give the same terms.

    The build is the run's shared one over the timing set: when ``step_graph`` ran first it
    built it, and its build time is the figure.
    """
    size, device = ctx["size"], ctx["device"]
    cfg = trial_config(size, size["timing_images"], device.type)
    data = load_data(cfg.data)
    built_before = len(ctx.get("caches", {}))
    built = shared_cache(ctx, data)
    outputs = CachedTeacher(open_cache(built["path"], built["key"]))
    batch = min(size["batch"], data.num_train)
    live = Trainer(cfg, data, make_teacher(size), device=device)
    cached = Trainer(cfg, data, None, device=device, teacher_outputs=outputs)
    live.amp_dtype = cached.amp_dtype = torch.bfloat16
    result = compare(first_step_terms(cached, data, batch), first_step_terms(live, data, batch))
    variants = built["image_variants"]
    result.update(build_seconds=built["build_seconds"], image_variants=variants,
                  ms_per_image_variant=1000 * built["build_seconds"] / variants,
                  built_by_this_part=len(ctx["caches"]) > built_before,
                  device_resident=outputs.device_rows(device) is not None, ok=result["agree"])
    return result
