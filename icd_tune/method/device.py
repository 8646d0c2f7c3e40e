"""The one place a device name (``auto``, ``cpu``, ``cuda``, ``cuda:1``) becomes a torch device."""

from __future__ import annotations

import torch


def resolve_device(name: str | torch.device | None) -> torch.device:
    """``None`` and ``auto`` mean the GPU when torch sees one, else the CPU; ``cuda`` without a GPU is an error."""
    if isinstance(name, torch.device):
        return name
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(name).startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device '{name}' requested but torch sees no CUDA device")
    return torch.device(name)
