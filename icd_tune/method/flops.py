"""Forward FLOPs of a zoo model on one 32x32 image, counted by PyTorch on the meta device (no weights, no compute).

Used to scale a measured trial time to other teacher -> student pairs: a distillation step
costs about one teacher forward plus one student forward and backward (about 3 forwards).
"""

from __future__ import annotations

import functools


@functools.lru_cache(maxsize=None)
def forward_flops(arch: str, num_classes: int = 100) -> int:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from .models import create_model

    with torch.device("meta"):
        model = create_model(arch, num_classes).eval()
        image = torch.zeros(1, 3, 32, 32)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(image)
    return int(counter.get_total_flops())


def step_flops(student: str, teacher: str | None, num_classes: int = 100) -> int:
    """FLOPs of one training image: the teacher's forward (when there is one) plus the student's forward and backward."""
    return 3 * forward_flops(student, num_classes) + (forward_flops(teacher, num_classes) if teacher else 0)
