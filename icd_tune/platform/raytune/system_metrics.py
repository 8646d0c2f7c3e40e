"""What a trial's own process and device used, sampled once per epoch inside the trial.

MLflow's system-metrics monitor samples the process that holds the run, which is
the driver; a trial runs in a Ray worker, often on another node, so it samples
itself and reports the figures with its epoch's metrics (``system/...``, see
``metrics.SYSTEM_METRICS``). CPU and memory come from the OS (``os.times`` and
``/proc/self/statm``, no extra dependency); GPU figures only where the trial
trains on a CUDA device, and the utilisation only where NVML answers. A figure
that cannot be read is left out, never reported as zero.
"""

from __future__ import annotations

import os
import time

from ..metrics import SYSTEM_CPU_PERCENT, SYSTEM_GPU_MEMORY_MB, SYSTEM_GPU_UTILIZATION, SYSTEM_RSS_MB

MB = 2**20


def process_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def resident_bytes() -> int | None:
    """This process's resident memory now, from /proc; None where there is no /proc (macOS, Windows)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class SystemSampler:
    """Each ``sample()`` returns the CPU use since the previous one (or since creation) and the memory now."""

    def __init__(self, device=None):
        self.device = device  # the torch.device the trial trains on
        self.last_cpu = process_cpu_seconds()
        self.last_wall = time.monotonic()

    def sample(self) -> dict[str, float]:
        cpu, wall = process_cpu_seconds(), time.monotonic()
        out = {}
        if wall > self.last_wall:
            out[SYSTEM_CPU_PERCENT] = 100.0 * (cpu - self.last_cpu) / (wall - self.last_wall)
        self.last_cpu, self.last_wall = cpu, wall
        rss = resident_bytes()
        if rss is not None:
            out[SYSTEM_RSS_MB] = rss / MB
        out.update(gpu_sample(self.device))
        return out


def gpu_sample(device) -> dict[str, float]:
    """GPU utilisation (the whole device's, through NVML) and this process's CUDA memory; {} off CUDA."""
    if device is None or getattr(device, "type", str(device)) != "cuda":
        return {}
    import torch

    if not torch.cuda.is_available():
        return {}
    out = {SYSTEM_GPU_MEMORY_MB: torch.cuda.memory_reserved(device) / MB}
    try:
        out[SYSTEM_GPU_UTILIZATION] = float(torch.cuda.utilization(device))
    except Exception:  # no NVML bindings (pynvml) or no permission: leave the figure out
        pass
    return out
