"""What the parts that train share: trial configs, the terms check, timing, the teacher cache, memory."""

from __future__ import annotations

import dataclasses
import math
import resource
import time
from pathlib import Path

import torch

from icd_tune.method.config import TrialConfig
from icd_tune.method.data import NUM_VARIANTS, augment
from icd_tune.method.models import create_model
from icd_tune.method.output_cache import build_cache, cache_key
from icd_tune.method.train import Trainer

from .plan import ATOL, RTOL


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def has_step_option() -> bool:
    """Whether this icd-tune's trials take ``step: eager | graph``."""
    return "step" in {f.name for f in dataclasses.fields(TrialConfig)}


def trial_config(size: dict, num_train: int, device: str, compile_: bool = False, steps: int | None = None,
                 step: str | None = None, augment_images: bool = True, epochs: int = 2) -> TrialConfig:
    """ICD (w_con 1, w_inv 0.5, learnable temperature) on synthetic data; ``step`` only where the option exists."""
    config = {
        "student": size["student"], "device": device, "compile": compile_, "seed": 0,
        "max_steps_per_epoch": steps,
        "teacher": {"arch": size["teacher"]},
        "data": {"name": "synthetic", "num_train": num_train, "num_test": size["eval_images"],
                 "num_classes": size["classes"], "val_fraction": 0.0, "augment": augment_images},
        "loss": {"kd_weight": 0.0, "contrastive_weight": 1.0, "invariance_weight": 0.5, "temperature": "learnable"},
        "optim": {"epochs": epochs, "batch_size": size["batch"], "lr": 0.05},
    }
    if step is not None:
        config["step"] = step
    return TrialConfig.from_dict(config)


def make_teacher(size: dict) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234)  # random weights serve: the checks compare paths, not accuracy
        return create_model(size["teacher"], size["classes"])


def step_mode(trainer: Trainer) -> tuple[str, str | None]:
    """(the step the trainer runs, why it is not the one asked for); eager where the option does not exist."""
    return getattr(trainer, "step_mode", "eager"), getattr(trainer, "step_note", None)


def first_step_terms(trainer: Trainer, data, batch: int) -> dict[str, float]:
    """The loss terms of one training forward on a fixed batch (images 0..B-1, fixed variants)."""
    device = trainer.device
    index = torch.arange(batch, device=device)
    variant = (index * 37) % NUM_VARIANTS
    x = trainer.normalizer(augment(data.train_x[:batch].to(device), variant))
    y = data.train_y[:batch].to(device)
    trainer.train_mode()
    with torch.no_grad(), trainer._autocast():
        _, terms = trainer.step_terms(x, y, index, variant, epoch=1)
    return {name: float(value.float()) for name, value in terms.items()}


def epoch_terms(metrics: dict[str, float], names) -> dict[str, float]:
    """A one-step epoch's loss terms, read from what ``Trainer.train_epoch`` returned."""
    return {name: metrics[f"train/loss_{name}"] for name in names}


def compare(candidate: dict[str, float], reference: dict[str, float]) -> dict:
    worst = {n: abs(candidate[n] - reference[n]) - (ATOL + RTOL * abs(reference[n])) for n in reference}
    return {"device": candidate, "reference": reference, "agree": all(v <= 0 for v in worst.values()),
            "max_abs_diff": max(abs(candidate[n] - reference[n]) for n in reference),
            "tolerance": f"|d| <= {ATOL} + {RTOL}*|ref|"}


def timed_steps(trainer: Trainer, steps: int) -> dict:
    """A short warm-up epoch, then ``steps`` timed steps through ``Trainer.train_epoch``.

    The steps run in as many epochs as the training set needs; each epoch synchronises the
    device before and after, so the epochs' own clock is the figure.
    """
    per_epoch = max(1, trainer.data.num_train // trainer.cfg.optim.batch_size)
    trainer.cfg.max_steps_per_epoch = max(1, min(per_epoch, steps // 5))
    warm_start = time.perf_counter()
    trainer.train_epoch()
    warm = time.perf_counter() - warm_start
    done, seconds, finite = 0, 0.0, True
    while done < steps:
        count = min(per_epoch, steps - done)
        trainer.cfg.max_steps_per_epoch = count
        metrics = trainer.train_epoch()
        seconds += metrics["time/epoch_seconds"]
        done += count
        finite = finite and all(math.isfinite(v) for k, v in metrics.items() if k.startswith("train/loss"))
    return {"ms_per_step": 1000 * seconds / done, "images_per_s": done * trainer.cfg.optim.batch_size / seconds,
            "steps": done, "warmup_seconds": warm, "losses_finite": finite}


def shared_cache(ctx: dict, data) -> dict:
    """The teacher-output cache of ``data`` (float16), built on the device once per run and shared by the parts."""
    teacher = make_teacher(ctx["size"])
    key = cache_key(teacher, data, "float16")
    caches = ctx.setdefault("caches", {})
    if key not in caches:
        folder = Path(ctx["tmp"]) / f"cache-{len(caches)}"
        device = ctx["device"]
        sync(device)
        start = time.perf_counter()
        path = build_cache(teacher, data, folder / "outputs.bin", dtype="float16", device=device, progress=False, key=key)
        sync(device)
        caches[key] = {"path": path, "key": key, "build_seconds": time.perf_counter() - start,
                       "image_variants": data.num_train * NUM_VARIANTS}
    return caches[key]


def peak_memory_mib(device: torch.device) -> tuple[float, str]:
    """This process's peak memory: the CUDA allocator's on a GPU, the resident set on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "torch.cuda.max_memory_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "peak RSS"
