"""A trained student as users call it: uint8 images in, logits out, the training normalisation folded in.

The module takes what a user holds, images as ``uint8`` tensors ``(N, 3, 32, 32)``, RGB,
0 to 255, the layout ``method.data`` keeps every split in, and applies the same
``(x / 255 - mean) / std`` multiply-add as the trainer's ``Normalizer`` before the
student, so it scores exactly as ``Trainer.evaluate`` does (in fp32 on the CPU). It
holds only tensors (the student's weights and two normalisation buffers), so
``torch.export`` turns it into a program that loads without this package.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .models import create_model

INPUT_SHAPE = (3, 32, 32)


class ServableStudent(nn.Module):
    """``forward(images_u8) -> logits``: the normalisation of ``data.Normalizer``, then the student."""

    def __init__(self, student: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.student = student
        std_t = torch.tensor(tuple(std), dtype=torch.float32)
        mean_t = torch.tensor(tuple(mean), dtype=torch.float32)
        # The same buffers, computed the same way, as Normalizer's: bit-identical inputs to the student.
        self.register_buffer("scale", (1.0 / (255.0 * std_t)).view(1, -1, 1, 1))
        self.register_buffer("shift", (-mean_t / std_t).view(1, -1, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.student(torch.addcmul(self.shift, images.float(), self.scale))


def servable_student(arch: str, num_classes: int, state_dict: dict, mean: Sequence[float],
                     std: Sequence[float]) -> ServableStudent:
    """The zoo model ``arch`` with ``state_dict`` loaded strictly, wrapped for uint8 input, in eval mode on the CPU."""
    student = create_model(arch, num_classes)
    student.load_state_dict(state_dict)
    return ServableStudent(student, mean, std).eval()
