"""Teacher outputs: what a distiller asks of its frozen teacher, behind one small interface.

``forward(x, index, variant) -> (logits, pooled features)``, always in eval mode,
never trained. Two implementations:

* :class:`LiveTeacher` runs the teacher network on the augmented batch;
* :class:`CachedTeacher` reads the exact same outputs from the teacher-output cache
  (``output_cache``), computed once for every (training image, augmentation variant).

:func:`decide_cache` is the rule for when a study uses the cache.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from .output_cache import TeacherOutputCache
from .progress import format_bytes


class LiveTeacher(nn.Module):
    """The frozen teacher computed on the fly; stays in eval mode whatever ``train()`` says."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.model.eval()

    @property
    def feature_dim(self) -> int | None:
        return getattr(self.model, "feature_dim", None)

    def train(self, mode: bool = True):
        super().train(mode)
        self.model.eval()
        return self

    @torch.no_grad()
    def forward(self, x: torch.Tensor, index: torch.Tensor, variant: torch.Tensor):
        return self.model(x, with_features=True)


class CachedTeacher(nn.Module):
    """Drop-in for ``LiveTeacher``: ``forward(x, index, variant) -> (logits, features)`` read from the cache.

    ``x`` is ignored except for its device, where the float32 outputs are returned.
    It holds no parameters or buffers, so ``.to()`` moves nothing, and it pickles as
    the cache's path and header (for Ray workers), remapping the file on first use.

    On a GPU whose memory holds the cache within ``gpu_share`` of its total, the rows
    are copied to the device once and each step's lookup is a device gather: a host
    lookup would make every step wait for the indices to reach the CPU.
    """

    def __init__(self, cache: TeacherOutputCache, gpu_share: float = 0.25):
        super().__init__()
        self.cache = cache
        self.training = False
        self.gpu_share = gpu_share
        self._device_rows: torch.Tensor | None = None

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_device_rows"] = None  # a device copy never travels; it is rebuilt where it is used
        return state

    def device_rows(self, device: torch.device) -> torch.Tensor | None:
        """The cache on ``device`` when it is a GPU with room for it, else None (host lookups)."""
        if device.type != "cuda":
            return None
        if self._device_rows is None or self._device_rows.device != device:
            if self.cache.nbytes > self.gpu_share * torch.cuda.get_device_properties(device).total_memory:
                return None
            rows = self.cache.rows
            table = torch.empty(rows.shape, dtype=getattr(torch, self.cache.dtype), device=device)
            step = max(1, (256 << 20) // max(1, rows.shape[1] * rows.itemsize))
            for lo in range(0, rows.shape[0], step):
                table[lo:lo + step].copy_(torch.from_numpy(np.array(rows[lo:lo + step])))
            self._device_rows = table
        return self._device_rows

    @property
    def feature_dim(self) -> int:
        return self.cache.feature_dim

    @property
    def num_classes(self) -> int:
        return self.cache.num_classes

    def train(self, mode: bool = True):
        return super().train(False)

    def forward(self, x: torch.Tensor | None, index: torch.Tensor, variant: torch.Tensor):
        device = x.device if isinstance(x, torch.Tensor) else index.device
        table = self.device_rows(device)
        if table is not None:
            out = table[index.to(device) * self.cache.num_variants + variant.to(device)].float()
        else:
            rows = self.cache.lookup(index.detach().cpu().numpy(), variant.detach().cpu().numpy())
            out = torch.from_numpy(rows).to(device=device, dtype=torch.float32)
        d = self.cache.feature_dim
        return out[:, d:].contiguous(), out[:, :d].contiguous()

    def extra_repr(self) -> str:
        return repr(self.cache)


def decide_cache(setting: str, augment: bool, size_bytes: int, budget_gb: float) -> tuple[bool, str]:
    """Whether a study uses the cache, and a one-line reason for its log. ``budget_gb`` is in GiB."""
    if setting == "off":
        return False, "cache off (teacher.cache: off)"
    if setting == "on":
        note = "" if augment else "; augmentation is off, so only the centre variant of the 162 is ever read"
        return True, f"cache on (teacher.cache: on), {format_bytes(size_bytes)}{note}"
    if setting != "auto":
        raise ValueError(f"teacher.cache must be off, on or auto, got {setting!r}")
    if not augment:
        return False, ("cache off: augmentation is off, so each image is seen in one variant and a 162-variant cache "
                       "would cost 162 teacher-epochs to save one per trial epoch (set teacher.cache: on to force it)")
    budget_bytes = budget_gb * 2**30
    if size_bytes > budget_bytes:
        return False, (f"cache off: {format_bytes(size_bytes)} exceeds the {budget_gb:.1f} GiB budget "
                       f"(teacher.cache_memory_budget_gb)")
    return True, f"cache on: {format_bytes(size_bytes)} fits the {budget_gb:.1f} GiB budget (teacher.cache_memory_budget_gb)"
