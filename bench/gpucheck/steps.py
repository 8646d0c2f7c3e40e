"""Eager step times (step_time), the data pipeline and evaluation rates, and compile: true (compile)."""

from __future__ import annotations

import time

import torch

from icd_tune.method.data import Normalizer, TrainStream, load_data
from icd_tune.method.output_cache import open_cache
from icd_tune.method.teacher_outputs import CachedTeacher
from icd_tune.method.train import Trainer

from .checks import correctness
from .common import make_teacher, shared_cache, sync, timed_steps, trial_config
from .plan import STEP_VARIANTS, write_partial
from .projections import trial_hours


def step_time(ctx: dict) -> dict:
    """resnet32x4 -> resnet8x4 ICD at batch 64: eager bf16 and fp16, bf16 with the cached teacher; rates."""
    size, device = ctx["size"], ctx["device"]
    steps, batch = size["steps"], size["batch"]
    cfg = trial_config(size, steps * batch, device.type, steps=steps)
    data = load_data(cfg.data)
    teacher = make_teacher(size)
    result: dict = {}
    trainers = {}
    # CPUs emulate fp16 arithmetic slowly, so the CPU mode times it over one step only.
    for name, dtype, count in (("eager_bf16", torch.bfloat16, steps), ("eager_fp16", torch.float16, size["fp16_steps"])):
        trainers[name] = Trainer(cfg, data, teacher, device=device)
        trainers[name].amp_dtype = dtype
        result[name] = timed_steps(trainers[name], count)
        write_partial(ctx, "step_time", result)
    result["cached_bf16"], result["cached_bf16_host_lookup"] = cached_step_time(ctx, size["cached_steps"])
    result["data_pipeline_images_per_s"] = pipeline_rate(data, batch, device)
    result["eval_images_per_s"] = eval_rate(trainers["eager_bf16"], data)
    result["projected_240_epochs_hours"] = trial_hours(result["eager_bf16"]["ms_per_step"],
                                                       result["eval_images_per_s"])
    result["ok"] = all(result[k]["losses_finite"] for k in STEP_VARIANTS)
    return result


def cached_step_time(ctx: dict, steps: int) -> tuple[dict, dict]:
    """(rows gathered on the device, rows looked up on the host): what the device copy saves."""
    size = ctx["size"]
    cfg = trial_config(size, size["timing_images"], ctx["device"].type)
    data = load_data(cfg.data)
    built = shared_cache(ctx, data)
    timings = []
    for share in (0.25, 0.0):  # a zero share forbids the device copy
        outputs = CachedTeacher(open_cache(built["path"], built["key"]), gpu_share=share)
        trainer = Trainer(cfg, data, None, device=ctx["device"], teacher_outputs=outputs)
        trainer.amp_dtype = torch.bfloat16
        timings.append(timed_steps(trainer, steps))
    return timings[0], timings[1]


def pipeline_rate(data, batch: int, device: torch.device) -> float:
    normalizer = Normalizer(data.mean, data.std, device, channels_last=device.type == "cuda")
    generator = torch.Generator(device=device).manual_seed(0)
    stream = TrainStream(data.train_x, data.train_y, batch, device, generator, normalizer)
    for _ in stream.epoch():  # warm-up
        pass
    sync(device)
    start, seen = time.perf_counter(), 0
    for _ in range(3):
        for x, y, _, _ in stream.epoch():
            seen += y.shape[0]
    sync(device)
    return seen / (time.perf_counter() - start)


def eval_rate(trainer: Trainer, data) -> float:
    trainer.evaluate(data.test_x, data.test_y)
    sync(trainer.device)
    start = time.perf_counter()
    for _ in range(3):
        trainer.evaluate(data.test_x, data.test_y)
    return 3 * data.test_x.shape[0] / (time.perf_counter() - start)


def compiled(ctx: dict) -> dict:
    """The correctness check and the step time with ``compile: true`` (torch.compile's default mode)."""
    if ctx["device"].type != "cuda":
        return {"skipped": "compile is measured on a GPU only", "ok": True}
    result = {"correctness": correctness(ctx, compile_=True)}
    write_partial(ctx, "compile", result)
    size = ctx["size"]
    cfg = trial_config(size, size["steps"] * size["batch"], "cuda", compile_=True, steps=size["steps"])
    data = load_data(cfg.data)
    trainer = Trainer(cfg, data, make_teacher(size), device=ctx["device"])
    result["compiled_bf16"] = timed_steps(trainer, size["steps"])
    result["ok"] = result["correctness"]["ok"] and result["compiled_bf16"]["losses_finite"]
    return result
