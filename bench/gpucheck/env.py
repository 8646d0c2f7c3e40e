"""environment: card, driver, torch and CUDA versions (imports torch alone)."""

from __future__ import annotations

import platform
import subprocess

import torch


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
