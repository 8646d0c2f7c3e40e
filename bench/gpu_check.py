#!/usr/bin/env python
"""The GPU path in one short run: correctness, teacher-output cache, step time, packing, compile.

    PYTHONPATH=. python3 bench/gpu_check.py            # on a GPU, at most 4 minutes
    PYTHONPATH=. python3 bench/gpu_check.py --cpu      # same code on the CPU, tiny sizes, < 90 s

Imports only the method layer (PyTorch), so it runs where Ray, Optuna and MLflow
are not installed. Each part runs under its own deadline and the JSON file is
rewritten after every part, so a run cut off from outside still reports what it
finished. ``compile`` runs last because it is the slowest and the most likely to
hit a deadline. Exit status 1 when a correctness check fails, else 0.

Parts
  environment   card, driver, torch and CUDA versions
  correctness   first-step loss terms on the device (bf16 autocast, channels_last)
                against the CPU in fp32, on one fixed batch; then a short trial, every
                loss finite. On the CPU the candidate runs under CPU bf16 autocast, so
                the comparison is never fp32 against itself.
  cache         the exact teacher-output cache built on the device (ms per
                image-variant) and read back: cached and live teacher give the same terms
  step_time     resnet32x4 -> resnet8x4 ICD at batch 64: eager bf16, eager fp16 and
                bf16 with the cached teacher; the data pipeline's images/s; evaluation
                images/s; the projected wall time of one 240-epoch CIFAR-100 trial
                (703 steps per epoch over 45,000 images, 15,000 images evaluated per epoch)
  packing       1 trial against 4 trials sharing the device as 4 processes (how Ray
                places trials with gpus_per_trial: 0.25): aggregate images/s ratio
  compile       the correctness check and the step time with compile: true
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from icd_tune.method.config import DataConfig, TrialConfig  # noqa: E402
from icd_tune.method.data import NUM_VARIANTS, TrainStream, augment, load_data  # noqa: E402
from icd_tune.method.models import create_model  # noqa: E402
from icd_tune.method.output_cache import build_cache, cache_key, open_cache  # noqa: E402
from icd_tune.method.teacher_outputs import CachedTeacher  # noqa: E402
from icd_tune.method.train import Trainer  # noqa: E402

# |device - cpu| <= ATOL + RTOL * |cpu| per loss term. bf16 keeps 8 significant bits (0.4%
# per rounding); through a ResNet forward the logits drift by about 1%, which moves a
# cross-entropy near ln(100) = 4.6 by a few hundredths.
ATOL, RTOL = 0.05, 0.02
CIFAR_TRAIN, CIFAR_EVAL, EPOCHS, BATCH = 45_000, 15_000, 240, 64

SIZES = {
    # models, classes, batch; timed steps (bf16, fp16, cached); images evaluated, cached for the cache
    # part; packing window and processes
    "gpu": dict(teacher="resnet32x4", student="resnet8x4", classes=100, batch=BATCH, steps=100, fp16_steps=100,
                cached_steps=40, eval_images=5120, cache_images=1024, pack_seconds=12.0, pack_procs=4),
    "cpu": dict(teacher="resnet8", student="resnet8", classes=10, batch=8, steps=4, fp16_steps=1, cached_steps=2,
                eval_images=64, cache_images=8, pack_seconds=3.0, pack_procs=2),
}
STEP_VARIANTS = ("eager_bf16", "eager_fp16", "cached_bf16", "cached_bf16_host_lookup")
# Seconds per part on a GPU (240 in all); the CPU mode allows 4x, its runs share a busy machine.
DEADLINES = {"environment": 10, "correctness": 30, "cache": 30, "step_time": 45, "packing": 60, "compile": 65}


class PartTimeout(Exception):
    pass


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


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def trial_config(size: dict, num_train: int, device: str, compile_: bool = False, steps: int | None = None) -> TrialConfig:
    return TrialConfig.from_dict({
        "student": size["student"], "device": device, "compile": compile_, "seed": 0,
        "max_steps_per_epoch": steps,
        "teacher": {"arch": size["teacher"]},
        "data": {"name": "synthetic", "num_train": num_train, "num_test": size["eval_images"],
                 "num_classes": size["classes"], "val_fraction": 0.0},
        "loss": {"kd_weight": 0.0, "contrastive_weight": 1.0, "invariance_weight": 0.5, "temperature": "learnable"},
        "optim": {"epochs": 2, "batch_size": size["batch"], "lr": 0.05},
    })


def make_teacher(size: dict) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234)  # random weights serve: the checks compare paths, not accuracy
        return create_model(size["teacher"], size["classes"])


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


def compare(candidate: dict[str, float], reference: dict[str, float]) -> dict:
    worst = {n: abs(candidate[n] - reference[n]) - (ATOL + RTOL * abs(reference[n])) for n in reference}
    return {"device": candidate, "reference": reference, "agree": all(v <= 0 for v in worst.values()),
            "max_abs_diff": max(abs(candidate[n] - reference[n]) for n in reference),
            "tolerance": f"|d| <= {ATOL} + {RTOL}*|ref|"}


def correctness(ctx: dict, compile_: bool = False) -> dict:
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
    size, device = ctx["size"], ctx["device"]
    cfg = trial_config(size, size["cache_images"], device.type)
    data = load_data(cfg.data)
    teacher = make_teacher(size)
    folder = Path(tempfile.mkdtemp(prefix="gpu-check-cache-"))
    key = cache_key(teacher, data, "float16")
    sync(device)
    start = time.perf_counter()
    path = build_cache(teacher, data, folder / "outputs.bin", dtype="float16", device=device, progress=False, key=key)
    sync(device)
    seconds = time.perf_counter() - start
    outputs = CachedTeacher(open_cache(path, key))
    batch = min(size["batch"], data.num_train)
    live = Trainer(cfg, data, teacher, device=device)
    cached = Trainer(cfg, data, None, device=device, teacher_outputs=outputs)
    live.amp_dtype = cached.amp_dtype = torch.bfloat16
    result = compare(first_step_terms(cached, data, batch), first_step_terms(live, data, batch))
    variants = data.num_train * NUM_VARIANTS
    result.update(build_seconds=seconds, image_variants=variants, ms_per_image_variant=1000 * seconds / variants,
                  device_resident=outputs.device_rows(device) is not None, ok=result["agree"])
    return result


def step_time(ctx: dict) -> dict:
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
        result[name] = timed_epochs(trainers[name], count)
        write_partial(ctx, "step_time", result)
    # The cache build costs 162 teacher forwards per image, so the cached trainers get a smaller set.
    cached_cfg = trial_config(size, size["cached_steps"] * batch, device.type, steps=size["cached_steps"])
    result["cached_bf16"], result["cached_bf16_host_lookup"] = cached_step_time(
        ctx, cached_cfg, load_data(cached_cfg.data), teacher, size["cached_steps"])
    result["data_pipeline_images_per_s"] = pipeline_rate(data, batch, device)
    result["eval_images_per_s"] = eval_rate(trainers["eager_bf16"], data)
    result["projected_240_epochs_hours"] = projected_hours(result["eager_bf16"]["ms_per_step"],
                                                           result["eval_images_per_s"])
    result["ok"] = all(result[k]["losses_finite"] for k in STEP_VARIANTS)
    return result


def timed_epochs(trainer: Trainer, steps: int) -> dict:
    """A short warm-up epoch, then one timed epoch of ``steps`` steps through ``Trainer.train_epoch``."""
    trainer.cfg.max_steps_per_epoch = max(1, steps // 5)
    warm_start = time.perf_counter()
    trainer.train_epoch()
    warm = time.perf_counter() - warm_start
    trainer.cfg.max_steps_per_epoch = steps
    metrics = trainer.train_epoch()  # synchronises the device before and after
    losses = [v for k, v in metrics.items() if k.startswith("train/loss")]
    return {"ms_per_step": 1000 * metrics["time/epoch_seconds"] / steps,
            "images_per_s": metrics["time/images_per_second"], "warmup_seconds": warm,
            "losses_finite": all(math.isfinite(v) for v in losses)}


def cached_step_time(ctx, cfg, data, teacher, steps: int) -> tuple[dict, dict]:
    """(rows gathered on the device, rows looked up on the host): what the device copy saves."""
    folder = Path(tempfile.mkdtemp(prefix="gpu-check-steps-"))
    key = cache_key(teacher, data, "float16")
    path = build_cache(teacher, data, folder / "outputs.bin", device=ctx["device"], progress=False, key=key)
    timings = []
    for share in (0.25, 0.0):  # a zero share forbids the device copy
        outputs = CachedTeacher(open_cache(path, key), gpu_share=share)
        trainer = Trainer(cfg, data, None, device=ctx["device"], teacher_outputs=outputs)
        trainer.amp_dtype = torch.bfloat16
        timings.append(timed_epochs(trainer, steps))
    return timings[0], timings[1]


def pipeline_rate(data, batch: int, device: torch.device) -> float:
    from icd_tune.method.data import Normalizer

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


def projected_hours(ms_per_step: float, eval_images_per_s: float) -> float:
    steps_per_epoch = CIFAR_TRAIN // BATCH  # 703
    seconds = EPOCHS * (steps_per_epoch * ms_per_step / 1000 + CIFAR_EVAL / eval_images_per_s)
    return seconds / 3600


def packing(ctx: dict) -> dict:
    size = ctx["size"]
    single = run_workers(ctx, 1)
    packed = run_workers(ctx, size["pack_procs"])
    ratio = sum(packed) / single[0] if single[0] > 0 else float("nan")
    return {"single_images_per_s": single[0], "processes": size["pack_procs"], "packed_images_per_s": packed,
            "aggregate_ratio": ratio, "target": ">= 3x with 4 processes on a GPU", "ok": all(r > 0 for r in packed)}


def run_workers(ctx: dict, count: int) -> list[float]:
    """``count`` worker processes; each trains once it sees the go file, for the same wall window."""
    folder = Path(tempfile.mkdtemp(prefix="gpu-check-pack-"))
    go = folder / "go"
    command = [sys.executable, __file__, "--worker", str(folder), "--size", ctx["size_name"],
               "--seconds", str(ctx["size"]["pack_seconds"])]
    procs = [subprocess.Popen(command + ["--rank", str(r)], stdout=subprocess.DEVNULL) for r in range(count)]
    try:
        while len(list(folder.glob("ready-*"))) < count:
            if any(p.poll() not in (None, 0) for p in procs):
                raise RuntimeError("a packing worker exited before it was ready")
            time.sleep(0.1)
        go.touch()
        for p in procs:
            p.wait()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return [json.loads((folder / f"rate-{r}.json").read_text())["images_per_s"] for r in range(count)]


def worker(folder: Path, size_name: str, seconds: float, rank: int) -> None:
    size = SIZES[size_name]
    device = torch.device("cuda" if size_name == "gpu" else "cpu")
    if device.type == "cpu":
        torch.set_num_threads(1)
    chunk = 20 if device.type == "cuda" else 2
    cfg = trial_config(size, 40 * size["batch"], device.type, steps=chunk)
    data = load_data(cfg.data)
    trainer = Trainer(cfg, data, make_teacher(size), device=device)
    trainer.train_epoch()  # warm-up: cuDNN autotuning, allocator
    (folder / f"ready-{rank}").touch()
    while not (folder / "go").exists():
        time.sleep(0.02)
    start, seen = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        seen += chunk * size["batch"]
        trainer.train_epoch()  # ends with a host read, so the clock sees finished work
    (folder / f"rate-{rank}.json").write_text(json.dumps({"images_per_s": seen / (time.perf_counter() - start)}))


def compiled(ctx: dict) -> dict:
    if ctx["device"].type != "cuda":
        return {"skipped": "compile is measured on a GPU only", "ok": True}
    result = {"correctness": correctness(ctx, compile_=True)}
    write_partial(ctx, "compile", result)
    size = ctx["size"]
    cfg = trial_config(size, size["steps"] * size["batch"], "cuda", compile_=True, steps=size["steps"])
    data = load_data(cfg.data)
    trainer = Trainer(cfg, data, make_teacher(size), device=ctx["device"])
    result["compiled_bf16"] = timed_epochs(trainer, size["steps"])
    result["ok"] = result["correctness"]["ok"] and result["compiled_bf16"]["losses_finite"]
    return result


def environment(ctx: dict) -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(), "device": str(ctx["device"]), "ok": True}
    if ctx["device"].type == "cuda":
        props = torch.cuda.get_device_properties(ctx["device"])
        info.update(card=props.name, memory_gib=round(props.total_memory / 2**30, 1),
                    capability=f"{props.major}.{props.minor}", driver=nvidia_driver())
    else:
        info.update(card=platform.processor() or platform.machine(), threads=torch.get_num_threads())
    return info


def nvidia_driver() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None


PARTS = [("environment", environment), ("correctness", correctness), ("cache", cache), ("step_time", step_time),
         ("packing", packing), ("compile", compiled)]


def write_partial(ctx: dict, part: str, value: dict) -> None:
    ctx["report"]["parts"][part] = value
    tmp = ctx["out"].with_name(ctx["out"].name + ".tmp")
    tmp.write_text(json.dumps(ctx["report"], indent=1, default=str))
    tmp.replace(ctx["out"])


def run_part(ctx: dict, name: str, fn) -> dict:
    start = time.perf_counter()
    try:
        with deadline(DEADLINES[name] * ctx["deadline_scale"]):
            result = fn(ctx)
        result["status"] = "ok" if result.get("ok") else "FAILED"
    except PartTimeout as err:
        result = dict(ctx["report"]["parts"].get(name, {}), status="timeout", error=str(err))
    except Exception as err:  # one broken part must not hide the others' results
        result = dict(ctx["report"]["parts"].get(name, {}), status="error", error=f"{type(err).__name__}: {err}")
    result["seconds"] = round(time.perf_counter() - start, 2)
    write_partial(ctx, name, result)
    print(f"{name:<12} {result['status']:<8} {result['seconds']:7.1f} s", flush=True)
    return result


def table(report: dict) -> str:
    p = report["parts"]
    rows = [("part", "status", "s", "figures")]

    def add(name, text):
        part = p.get(name, {})
        rows.append((name, part.get("status", "-"), f"{part.get('seconds', 0):.1f}", text if part else ""))

    env = p.get("environment", {})
    add("environment", f"{env.get('card')} | driver {env.get('driver')} | torch {env.get('torch')} "
                       f"| CUDA {env.get('cuda')}")
    for name in ("correctness", "cache"):
        c = p.get(name, {})
        add(name, f"terms agree: {c.get('agree')} (max |d| {fmt(c.get('max_abs_diff'), 4)}, {c.get('tolerance')})"
            + (f"; trial losses finite: {c.get('trial_losses_finite')}" if name == "correctness" else
               f"; build {fmt(c.get('ms_per_image_variant'), 4)} ms per image-variant, "
               f"on device: {c.get('device_resident')}"))
    s = p.get("step_time", {})
    add("step_time", " | ".join(f"{k} {fmt(s.get(k, {}).get('ms_per_step'))} ms/step"
                                for k in STEP_VARIANTS)
        + f" | data {fmt(s.get('data_pipeline_images_per_s'), 0)} img/s | eval {fmt(s.get('eval_images_per_s'), 0)}"
        f" img/s | 240-epoch CIFAR-100 trial {fmt(s.get('projected_240_epochs_hours'))} h")
    k = p.get("packing", {})
    add("packing", f"1 process {fmt(k.get('single_images_per_s'), 0)} img/s; {k.get('processes')} processes "
                   f"{fmt(sum(k.get('packed_images_per_s') or [0]), 0)} img/s = {fmt(k.get('aggregate_ratio'))}x")
    c = p.get("compile", {})
    add("compile", c.get("skipped") or (f"terms agree: {c.get('correctness', {}).get('agree')} | "
                                        f"{fmt(c.get('compiled_bf16', {}).get('ms_per_step'))} ms/step, "
                                        f"compile+warm-up {fmt(c.get('compiled_bf16', {}).get('warmup_seconds'), 1)} s"))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(" | ".join([*(r[i].ljust(widths[i]) for i in range(3)), r[3]]) for r in rows)


def fmt(value, digits: int = 2) -> str:
    return "-" if value is None or not isinstance(value, (int, float)) else f"{value:,.{digits}f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="tiny sizes on the CPU (keeps the script working)")
    parser.add_argument("--out", help="JSON file (default: $OUT/gpu_check.json, else results/gpu_check.json)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--size", help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--rank", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(Path(args.worker), args.size, args.seconds, args.rank)
        return 0
    if not args.cpu and not torch.cuda.is_available():
        print("no CUDA device visible to torch; run with --cpu for the CPU mode", file=sys.stderr)
        return 2
    size_name = "cpu" if args.cpu else "gpu"
    default = Path(os.environ["OUT"]) if os.environ.get("OUT") else Path("results")
    out = Path(args.out) if args.out else default / "gpu_check.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    ctx = {"size": SIZES[size_name], "size_name": size_name, "device": torch.device("cpu" if args.cpu else "cuda"),
           "out": out, "deadline_scale": 4.0 if args.cpu else 1.0, "report": {"mode": size_name, "parts": {}}}
    if args.cpu:
        torch.set_num_threads(min(2, os.cpu_count() or 1))
    for name, fn in PARTS:
        run_part(ctx, name, fn)
    print()
    print(table(ctx["report"]))
    print(f"\nJSON: {out}")
    failed = [n for n, p in ctx["report"]["parts"].items() if p["status"] in ("FAILED", "error")]
    for name in failed:
        print(f"{name}: {ctx['report']['parts'][name].get('error', 'a check failed, see the JSON')}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
