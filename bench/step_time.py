#!/usr/bin/env python
"""CPU time and peak memory of one training step: CE, KD, ICD (batch negatives), ICD (memory negatives), ICD (cached teacher).

Teacher resnet32x4 -> student resnet8x4, batch 64, 100 classes, on synthetic
data sized like CIFAR-100's training split (50,000 images less a 10% validation
share = 45,000). Every configuration is built through the real code
(``TrialConfig`` -> ``Trainer``) and one step is what ``Trainer.train_epoch``
does: ``Trainer.step_terms``, the weighted sum of the terms, ``zero_grad``,
``backward``, ``optimizer.step``. Fetching the batch is not timed
(``bench/data_pipeline.py`` measures that).

Targets: ICD-batch <= 1.05x KD; ICD-memory (K=16384) <= 1.10x KD and at most
100 MiB more peak memory than KD; ICD with a cached teacher <= 0.45x ICD with
the live teacher (ICD-batch). For scale: a CRD-style memory bank that
gathers 16384 negatives *per anchor* (two 64 x 16385 x 128 tensors per step)
measured 2.1x KD and +1.1 GiB on this machine; ICD draws one set of K
negatives shared by the whole batch, i.e. two K x 128 gathers.

Time
  All four trainers live in this process and are stepped round-robin, one step
  each in turn (the starting configuration rotates every cycle), so drift in
  machine load hits every configuration alike. They share one process on
  purpose: with a process each, ICD-memory once came out 6% faster than KD,
  most likely because glibc's malloc adapts its mmap threshold to what each
  process frees and so gave the processes different page-fault costs. Per-step wall clock (CPU execution is
  synchronous). Reported: the median over all timed steps; ``x KD``, the median
  over cycles of (this configuration's step / KD's step in the same cycle),
  which is what the targets check; and for reference the ratio per round
  (median of a configuration's steps / median of KD's in that round).

Memory, each configuration in a fresh subprocess (``--memory-steps`` steps):
  * RSS: Linux VmHWM, the high-water mark ``getrusage().ru_maxrss`` reports. It is
    reset through /proc/self/clear_refs after building the trainer, so loading
    data and building models cannot hide the steps' peak.
    ``step`` = peak - RSS after building the trainer (activations, gradients,
    optimizer state, per-step gathers); ``+state`` = peak - RSS after loading
    the data, which adds the models, heads and memory banks. RSS includes what
    the allocator keeps mapped after frees, so it varies by tens of MiB between
    runs and configurations.
  * live tensors: peak bytes of live tensors during one profiled step
    (``torch.profiler`` memory timeline, a private API; skipped if it fails),
    exact and independent of the allocator. It counts every tensor the step
    touches, memory banks included.

Teacher-output cache ("ICD-cached", left out with ``--cache-images 0``)
  The ICD-batch loss with ``Trainer(..., teacher_outputs=CachedTeacher(cache))``:
  the teacher's logits and features are read from a memory-mapped
  ``teacher_cache`` file instead of computed. A cache over all 45,000 images x
  162 variants would take many hours to build on a CPU, so this trainer trains on
  its own synthetic set of ``--cache-images`` images (64: one batch, 10,368
  teacher forwards, 1 to 4 minutes here depending on load), and the cache is
  built over exactly those with the library's ``get_or_build_cache`` (the real
  build, file format, checksum and memmap). Batch, models, heads and loss are
  those of ICD-batch; every index a step draws is < N. Only memory-bank
  negatives (not used here) make a step's cost depend on N, and a lookup is 64
  row gathers whatever N is; what a small N does change is that the whole file
  (N x 162 x 356 float16 = 7 MiB at N=64) stays in the CPU's caches and the
  page cache, whereas in a 4.8 GiB CIFAR cache a step's 64 rows lie on up to 64
  pages (the lookup's own time is printed). The build's wall time gives the cost
  per image-variant and the break-even point in trials for CIFAR-100 (45,000
  images, batch 64, 240 epochs); the build runs at a different moment from the
  interleaved steps, so machine load can skew it (load averages are printed).

    python bench/step_time.py             # full run, 4-7 minutes on 2 shared cores
    python bench/step_time.py --quick     # tiny models, ~50 s: checks the script, measures nothing
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CONFIGS = {
    "CE": {"kd_weight": 0.0, "contrastive_weight": 0.0, "invariance_weight": 0.0},
    "KD": {"kd_weight": 1.0, "contrastive_weight": 0.0, "invariance_weight": 0.0},
    "ICD-batch": {"kd_weight": 0.0, "contrastive_weight": 1.0, "invariance_weight": 0.5,
                  "negatives": {"source": "batch"}},
    "ICD-memory": {"kd_weight": 0.0, "contrastive_weight": 1.0, "invariance_weight": 0.5,
                   "negatives": {"source": "memory"}},  # count comes from --negatives
}
LIVE, CACHED = "ICD-batch", "ICD-cached"
CONFIGS[CACHED] = CONFIGS[LIVE]  # the same loss; only where the teacher's outputs come from differs
CACHE_TARGET = 0.45  # x the live-teacher step
CACHE_DTYPE = "float16"  # the library's default (TeacherConfig.cache_dtype)

TIME_TARGETS = {"ICD-batch": 1.05, "ICD-memory": 1.10}
MEMORY_TARGET_MIB = {"ICD-memory": 100.0}

MIB = 1024 * 1024


# ---------------------------------------------------------------------------
# One configuration's trainer and step


class Config:
    def __init__(self, name: str, args, data, teacher_outputs=None):
        from icd_tune.method.config import TrialConfig
        from icd_tune.method.models import create_model
        from icd_tune.method.train import Trainer

        loss = dict(CONFIGS[name])
        if "negatives" in loss:
            loss["negatives"] = dict(loss["negatives"], count=args.negatives)
        cfg = TrialConfig.from_dict({
            "student": args.student,
            "teacher": {"arch": args.teacher},
            "data": {"name": "synthetic", "num_classes": data.num_classes},
            "loss": loss,
            "optim": {"batch_size": args.batch_size},
            "device": "cpu",
        })
        teacher = None
        if cfg.uses_teacher and teacher_outputs is None:
            teacher = create_model(args.teacher, data.num_classes)
        self.name = name
        self.trainer = Trainer(cfg, data, teacher, device="cpu", teacher_outputs=teacher_outputs)
        self.weights = [(n, w) for n, w in self.trainer.weights.items() if w != 0]
        self.trainer.train_mode()
        self._batches = iter(())

    def next_batch(self):
        try:
            return next(self._batches)
        except StopIteration:
            self._batches = self.trainer.stream.epoch()
            return next(self._batches)

    def step(self, batch) -> None:
        x, y, index, variant = batch
        optimizer = self.trainer.optimizer
        _, terms = self.trainer.step_terms(x, y, index, variant, epoch=1)
        loss = sum(w * terms[n] for n, w in self.weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def timed_step(self) -> float:
        batch = self.next_batch()
        start = time.perf_counter()
        self.step(batch)
        return time.perf_counter() - start


def load_bundle(path: str):
    import torch

    from icd_tune.method.data import DataBundle

    return DataBundle(**torch.load(path, weights_only=True))


# ---------------------------------------------------------------------------
# Memory, in a fresh process per configuration


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak() -> bool:
    """Sets the RSS high-water mark back to the current RSS; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def live_tensor_peak(config: Config) -> tuple[float | None, str | None]:
    """(peak live tensor bytes over one step, from the profiler's memory timeline; why not, if not)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    try:
        from torch.profiler._memory_profiler import MemoryProfileTimeline

        batch = config.next_batch()
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
                     with_stack=True) as prof:
            config.step(batch)
        _, sizes = MemoryProfileTimeline(prof._memory_profile())._coalesce_timeline(torch.device("cpu"))
        return float(max(sum(row) for row in sizes)), None
    except Exception as err:  # a private API: report its absence, do not fail the benchmark
        return None, f"{type(err).__name__}: {err}"


def memory_worker(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    data = load_bundle(args.data_file)
    rss_data = _status_kib("VmRSS") * 1024
    teacher_outputs = None
    if args.memory_worker == CACHED:
        from icd_tune.method.output_cache import open_cache
        from icd_tune.method.teacher_outputs import CachedTeacher

        teacher_outputs = CachedTeacher(open_cache(args.cache_file, args.cache_key))
    config = Config(args.memory_worker, args, data, teacher_outputs)
    rss_built = _status_kib("VmRSS") * 1024
    peak_reset = reset_peak()
    for _ in range(args.memory_steps):
        config.step(config.next_batch())
    peak = _status_kib("VmHWM") * 1024
    # Profiled last: the profiler's own buffers must not count in the RSS peak.
    live, live_error = live_tensor_peak(config) if args.profile_memory else (None, "--no-profile-memory")
    print(json.dumps({"rss_data": rss_data, "rss_built": rss_built, "peak": peak, "peak_reset": peak_reset,
                      "live_peak": live, "live_error": live_error}))


def measure_memory(name: str, args, data_file: str, cache=None) -> dict:
    argv = [sys.executable, str(Path(__file__).resolve()), "--memory-worker", name, "--data-file", data_file,
            "--student", args.student, "--teacher", args.teacher, "--batch-size", str(args.batch_size),
            "--negatives", str(args.negatives), "--threads", str(args.threads),
            "--memory-steps", str(args.memory_steps)]
    if not args.profile_memory:
        argv.append("--no-profile-memory")
    if cache is not None:
        argv += ["--cache-file", str(cache.path), "--cache-key", cache.key]
    # The profiler warns on stderr about blocks allocated before it started; shown only on failure.
    done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        raise RuntimeError(f"memory run for {name} failed with exit code {done.returncode}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if result["live_error"] and args.profile_memory:
        print(f"memory {name}: live-tensor profile unavailable ({result['live_error']})")
    return result


# ---------------------------------------------------------------------------
# Driver


def _load() -> str:
    # Other jobs share these cores; the load average tells a reader how busy the machine was.
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per configuration per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per configuration before round 1")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--negatives", type=int, default=16384, help="K for ICD with memory negatives")
    parser.add_argument("--student", default="resnet8x4")
    parser.add_argument("--teacher", default="resnet32x4")
    parser.add_argument("--num-images", type=int, default=50000, help="before the 10%% validation split")
    parser.add_argument("--num-classes", type=int, default=100)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--memory-steps", type=int, default=4, help="steps per configuration in the memory runs")
    parser.add_argument("--no-profile-memory", dest="profile_memory", action="store_false",
                        help="skip the live-tensor profile")
    parser.add_argument("--cache-images", type=int, default=64,
                        help="images the cached-teacher trainer trains on and the cache is built over "
                             "(at least one batch); 0 leaves that configuration out")
    parser.add_argument("--cache-batch", type=int, default=64,
                        help="batch size of the cache build (the library's default on the CPU: 64; 512 on CUDA)")
    parser.add_argument("--quick", action="store_true", help="tiny models and sizes: a sanity run in seconds")
    parser.add_argument("--memory-worker", choices=list(CONFIGS), help=argparse.SUPPRESS)
    parser.add_argument("--data-file", help=argparse.SUPPRESS)
    parser.add_argument("--cache-file", help=argparse.SUPPRESS)
    parser.add_argument("--cache-key", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.memory_worker:
        memory_worker(args)
        return 0

    if args.quick:
        args.student, args.teacher = "resnet8", "resnet14"
        args.num_images, args.num_classes, args.batch_size = 1200, 10, 16
        args.negatives = min(args.negatives, 256)
        args.steps, args.rounds, args.warmup, args.memory_steps = min(args.steps, 3), min(args.rounds, 2), 1, 2
        if args.cache_images:
            args.cache_images = min(args.cache_images, 2 * args.batch_size)
    if 0 < args.cache_images < args.batch_size:
        parser.error(f"--cache-images {args.cache_images} is less than one batch of {args.batch_size}")

    import torch

    from icd_tune.method.config import DataConfig
    from icd_tune.method.data import load_data

    torch.set_num_threads(args.threads)
    print(f"step_time: {args.teacher} -> {args.student}, batch {args.batch_size}, {args.num_classes} classes, "
          f"K={args.negatives} memory negatives, {args.threads} threads, torch {torch.__version__}, "
          f"{os.cpu_count()} CPU cores; load average {_load()}")
    print(f"time: {args.warmup} warm-up + {args.rounds} rounds x {args.steps} timed steps per configuration, "
          f"interleaved step by step; memory: {args.memory_steps} steps per configuration in a fresh process")
    start = time.perf_counter()
    data = load_data(DataConfig(name="synthetic", num_train=args.num_images, num_test=args.batch_size,
                                num_classes=args.num_classes, val_fraction=0.1))
    print(f"data: {data.num_train} synthetic training images ({time.perf_counter() - start:.1f}s)", flush=True)
    names = [n for n in CONFIGS if n != CACHED or args.cache_images]

    # Holds the cache file, which the cached trainer maps until the end.
    with tempfile.TemporaryDirectory(prefix="icd_step_time_") as folder:
        cache_data = cache = build = None
        if CACHED in names:
            cache_data, cache, build = build_teacher_cache(args, folder)
        # Written once so the memory runs neither regenerate the data nor peak on
        # the float noise that generating it needs.
        data_file = os.path.join(folder, "data.pt")
        torch.save(dataclasses.asdict(data), data_file)
        if cache_data is not None:
            cache_data_file = os.path.join(folder, "cache_data.pt")
            torch.save(dataclasses.asdict(cache_data), cache_data_file)
        memory = {}
        for name in names:
            if name == CACHED:
                memory[name] = measure_memory(name, args, cache_data_file, cache)
            else:
                memory[name] = measure_memory(name, args, data_file)
            print(f"memory {name}: peak RSS {memory[name]['peak'] / MIB:.0f} MiB", flush=True)

        configs = {}
        for n in names:
            if n == CACHED:
                from icd_tune.method.teacher_outputs import CachedTeacher

                configs[n] = Config(n, args, cache_data, CachedTeacher(cache))
            else:
                configs[n] = Config(n, args, data)
        for config in configs.values():
            for _ in range(args.warmup):
                config.step(config.next_batch())
        times = {n: [] for n in names}  # times[name][round] = step seconds
        for r in range(args.rounds):
            for n in names:
                times[n].append([])
            for i in range(args.steps):
                shift = (r * args.steps + i) % len(names)
                for n in names[shift:] + names[:shift]:
                    times[n][r].append(configs[n].timed_step())
            line = ", ".join(f"{n} {1000 * statistics.median(times[n][r]):.0f}" for n in names)
            print(f"round {r + 1}/{args.rounds}: median ms {line}", flush=True)
        lookup = time_lookup(configs[CACHED]) if CACHED in configs else None
        print(f"load average after: {_load()}")
        report(names, times, memory)
        if CACHED in names:
            report_cache(args, times, cache, build, lookup, data.num_train)
    return 0


def build_teacher_cache(args, folder: str):
    """(the cached trainer's data, the cache over it, build figures), built by the library's own path."""
    from icd_tune.method.config import DataConfig
    from icd_tune.method.data import NUM_VARIANTS, load_data
    from icd_tune.method.models import create_model
    from icd_tune.method.output_cache import get_or_build_cache

    # No validation split, so the trainer's training set is exactly the images cached.
    data = load_data(DataConfig(name="synthetic", num_train=args.cache_images, num_test=args.batch_size,
                                num_classes=args.num_classes, val_fraction=0.0))
    teacher = create_model(args.teacher, data.num_classes)
    forwards = data.num_train * NUM_VARIANTS
    load_before = _load()
    print(f"cache build: {args.teacher} over {data.num_train} images x {NUM_VARIANTS} variants = {forwards:,} "
          f"forwards, batch {args.cache_batch}, {CACHE_DTYPE} (load average {load_before})", flush=True)
    # A fresh folder, so this always builds; the build reports progress on stderr.
    cache = get_or_build_cache(teacher, data, folder, dtype=CACHE_DTYPE, device="cpu", batch_size=args.cache_batch,
                               log=lambda m: print(m, flush=True))
    seconds = float(cache.header["build_seconds"])  # build_cache's own clock: forwards, writing, hashing
    build = {"seconds": seconds, "forwards": forwards, "per_forward": seconds / forwards,
             "load_before": load_before, "load_after": _load()}
    print(f"cache build: {seconds:.1f} s, {1000 * build['per_forward']:.2f} ms per image-variant "
          f"(load average after {build['load_after']})", flush=True)
    return data, cache, build


def time_lookup(config: Config, calls: int = 200) -> float:
    """Median seconds of one ``CachedTeacher.forward`` (the lookup that replaces the teacher forward)."""
    teacher = config.trainer.teacher
    samples = []
    for _ in range(calls):
        x, _, index, variant = config.next_batch()
        start = time.perf_counter()
        teacher(x, index, variant)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def report(names, times, memory) -> None:
    kd_round = [statistics.median(t) for t in times["KD"]]
    rows = {}
    for n in names:
        all_ms = [1000 * s for t in times[n] for s in t]
        ratios = [statistics.median(t) / k for t, k in zip(times[n], kd_round)]
        # Steps of one cycle ran within a couple of seconds of each other, so their
        # ratio cancels load bursts longer than that; the median drops shorter ones.
        paired = [a / b for t, k in zip(times[n], times["KD"]) for a, b in zip(t, k)]
        m = memory[n]
        rows[n] = {
            "median": statistics.median(all_ms), "p10": _quantile(all_ms, 0.1), "p90": _quantile(all_ms, 0.9),
            "ratio": statistics.median(paired), "rmin": min(ratios), "rmax": max(ratios),
            "round_ratio": statistics.median(ratios),
            "step": (m["peak"] - m["rss_built"]) / MIB, "state": (m["peak"] - m["rss_data"]) / MIB,
            "peak": m["peak"] / MIB, "live": None if m["live_peak"] is None else m["live_peak"] / MIB,
        }
    kd = rows["KD"]
    print()
    print("time")
    print(f"{'config':<11} {'median ms':>9} {'p10-p90 ms':>13} {'x KD':>6} {'per-round x KD: median':>23} {'range':>13}")
    for n, r in rows.items():
        print(f"{n:<11} {r['median']:>9.1f} {r['p10']:>6.0f}-{r['p90']:<6.0f} {r['ratio']:>6.3f} "
              f"{r['round_ratio']:>23.3f} {r['rmin']:>6.3f}-{r['rmax']:<6.3f}")
    print()
    print("peak memory, MiB (RSS: fresh process per config; live tensors: profiled step)")
    print(f"{'config':<11} {'RSS peak':>9} {'RSS step':>9} {'vs KD':>7} {'RSS +state':>11} {'vs KD':>7} "
          f"{'live tensors':>13} {'vs KD':>7}")
    for n, r in rows.items():
        live = "n/a" if r["live"] is None else f"{r['live']:.1f}"
        live_vs = "n/a" if r["live"] is None or kd["live"] is None else f"{r['live'] - kd['live']:+.1f}"
        print(f"{n:<11} {r['peak']:>9.1f} {r['step']:>9.1f} {r['step'] - kd['step']:>+7.1f} {r['state']:>11.1f} "
              f"{r['state'] - kd['state']:>+7.1f} {live:>13} {live_vs:>7}")
    if not all(m["peak_reset"] for m in memory.values()):
        print("note: /proc/self/clear_refs was not writable; RSS peaks include data loading and model building")
    print()
    for name, limit in TIME_TARGETS.items():
        ratio = rows[name]["ratio"]
        print(f"target {name} time <= {limit:.2f}x KD: {ratio:.3f}x  {'PASS' if ratio <= limit else 'FAIL'}")
    for name, limit in MEMORY_TARGET_MIB.items():
        r = rows[name]
        checks = [("RSS step", r["step"] - kd["step"]), ("RSS +state", r["state"] - kd["state"])]
        if r["live"] is not None and kd["live"] is not None:
            checks.append(("live tensors", r["live"] - kd["live"]))
        for label, extra in checks:
            print(f"target {name} peak memory <= KD + {limit:.0f} MiB, {label}: {extra:+.1f} MiB  "
                  f"{'PASS' if extra <= limit else 'FAIL'}")


def report_cache(args, times, cache, build, lookup, live_images: int) -> None:
    from icd_tune.method.config import DataConfig, OptimConfig
    from icd_tune.method.data import NUM_VARIANTS, train_size

    live = [s for t in times[LIVE] for s in t]
    cached = [s for t in times[CACHED] for s in t]
    # Same-cycle pairs, as for x KD: load bursts longer than a cycle cancel.
    ratio = statistics.median([c / v for v, c in zip(live, cached)])
    saved = statistics.median([v - c for v, c in zip(live, cached)])
    rounds = [statistics.median(c) / statistics.median(v) for v, c in zip(times[LIVE], times[CACHED])]
    cached_ms = 1000 * statistics.median(cached)
    print()
    print(f"teacher-output cache: ICD with batch negatives, live teacher ({LIVE}) against cached teacher ({CACHED})")
    print(f"  cached trainer: {cache.num_train} synthetic images, so every step draws indices < {cache.num_train}; "
          f"cache {cache.num_train} x {cache.num_variants} x {cache.width} {cache.dtype} = {cache.nbytes / MIB:.1f} MiB")
    print("  without memory-bank negatives (none here) a step's cost does not depend on the number of images: same "
          f"batch, models, heads and loss as the live trainer on {live_images:,}")
    print(f"  median step: live {1000 * statistics.median(live):.1f} ms, cached {cached_ms:.1f} ms; "
          f"saved per step (median of same-cycle differences) {1000 * saved:.1f} ms")
    print(f"  lookup (CachedTeacher.forward, {args.batch_size} rows): {1000 * lookup:.2f} ms median, "
          f"{100 * 1000 * lookup / cached_ms:.1f}% of the cached step")
    print(f"  cached / live: {ratio:.3f} (median over cycles); per round {statistics.median(rounds):.3f}, "
          f"range {min(rounds):.3f}-{max(rounds):.3f}")
    print(f"target ICD cached teacher <= {CACHE_TARGET:.2f}x live teacher: {ratio:.3f}x  "
          f"{'PASS' if ratio <= CACHE_TARGET else 'FAIL'}")

    n = train_size(DataConfig(name="cifar100"))
    steps = n // args.batch_size
    epochs = OptimConfig().epochs
    per = build["per_forward"]
    teacher_epoch = per * n  # seconds of one pass over the training set at the build's rate
    build_full = teacher_epoch * NUM_VARIANTS
    saved_epoch = saved * steps
    saved_trial = saved_epoch * epochs
    print()
    print(f"cache build: {build['forwards']:,} image-variants ({cache.num_train} images x {NUM_VARIANTS}), "
          f"{args.teacher}, batch {args.cache_batch}, {cache.dtype}, {args.threads} threads: {build['seconds']:.1f} s "
          f"= {1000 * per:.2f} ms per image-variant (load average {build['load_before']} before, "
          f"{build['load_after']} after)")
    if saved <= 0:
        print("break-even: none, the cached step was not faster than the live one")
        return
    # Both are one teacher forward per image, at different batch sizes and moments:
    # a ratio far from 1 is the build's batch size or a change in machine load.
    print(f"  the saving per image in the interleaved steps (a batch-{args.batch_size} teacher forward, plus the "
          f"lookup's difference): {1000 * saved / args.batch_size:.2f} ms; build / saving per image "
          f"{per * args.batch_size / saved:.2f}")
    print(f"break-even on CIFAR-100 ({n:,} training images, batch {args.batch_size} -> {steps} steps/epoch, "
          f"{epochs}-epoch trials), from the figures above:")
    print(f"  build: {NUM_VARIANTS} teacher-epochs x {n:,} images x {1000 * per:.2f} ms = {_hours(build_full)} "
          f"(one teacher-epoch: {teacher_epoch / 60:.1f} min)")
    print(f"  saved: {steps} steps x {1000 * saved:.1f} ms = {saved_epoch / 60:.1f} min per trial-epoch "
          f"({saved_epoch / teacher_epoch:.2f} teacher-epochs); {_hours(saved_trial)} per trial "
          f"({saved_trial / teacher_epoch:.0f} teacher-epochs)")
    trials = build_full / saved_trial
    print(f"  break-even after {trials:.2f} trials = {trials * epochs:.0f} trial-epochs "
          f"({NUM_VARIANTS} teacher-epochs / {saved_trial / teacher_epoch:.0f} teacher-epochs saved per trial); "
          f"every trial after that saves {_hours(saved_trial)}")


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def _quantile(values, q):
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


if __name__ == "__main__":
    raise SystemExit(main())
