"""baseline: the ICD step in a loop shaped like the published CIFAR distillation scripts.

Written to compare against, not to use: fp32, a ``torchvision.datasets``-like dataset over PIL
images (32x32 RGB, random uint8 made here, nothing downloaded), ``RandomCrop(32, padding=4)``,
``RandomHorizontalFlip``, ``ToTensor``, ``Normalize``, a ``DataLoader`` with worker processes and
pinned memory, ``cudnn.benchmark``, the live teacher in eval mode, the ICD terms from
``icd_tune.method.losses``, SGD, and the loss read with ``.item()`` every step for the running
average those scripts print. Same batch size and step count as ``step_graph``.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from icd_tune.method.data import CIFAR100_MEAN, CIFAR100_STD
from icd_tune.method.distillers.icd import ICDLossConfig
from icd_tune.method.losses import ICDHead, ce_loss
from icd_tune.method.models import create_model, feature_dim

from .common import make_teacher, sync

try:
    import torchvision.transforms as transforms
    from PIL import Image
except ImportError:  # the GPU machine may lack torchvision; the part then says so
    transforms = Image = None


class RandomCIFAR(Dataset):
    """Shaped like ``torchvision.datasets.CIFAR100``: ``data`` (N, 32, 32, 3) uint8, ``targets``, PIL per item."""

    def __init__(self, count: int, classes: int, transform, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.data = rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)
        self.targets = rng.integers(0, classes, count).tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int):
        image = Image.fromarray(self.data[index])
        return self.transform(image), self.targets[index], index


def baseline(ctx: dict) -> dict:
    if transforms is None:
        return {"skipped": "no torchvision", "ok": True}
    size, device = ctx["size"], ctx["device"]
    steps, warm, batch = size["graph_steps"], size["baseline_warmup"], size["batch"]
    transform = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                                    transforms.ToTensor(), transforms.Normalize(CIFAR100_MEAN, CIFAR100_STD)])
    dataset = RandomCIFAR((steps + warm) * batch, size["classes"], transform)
    cuda = device.type == "cuda"
    # Pinned memory needs an accelerator; on the CPU there is nothing to pin for.
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=size["loader_workers"],
                        pin_memory=cuda, drop_last=True)
    benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        seconds, losses = train_loop(loader, size, device, warm)
    finally:
        torch.backends.cudnn.benchmark = benchmark
    return {"precision": "fp32", "loader_workers": size["loader_workers"], "pin_memory": cuda, "batch": batch,
            "steps": steps, "warmup_steps": warm, "ms_per_step": 1000 * seconds / steps,
            "images_per_s": steps * batch / seconds, "last_loss": losses[-1],
            "losses_finite": all(math.isfinite(v) for v in losses), "ok": all(math.isfinite(v) for v in losses)}


def train_loop(loader, size: dict, device: torch.device, warm: int) -> tuple[float, list[float]]:
    """Seconds of the steps after the first ``warm`` (worker start-up, cuDNN's search), and every step's loss."""
    loss_cfg = ICDLossConfig(kd_weight=0.0, contrastive_weight=1.0, invariance_weight=0.5, temperature="learnable")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        student = create_model(size["student"], size["classes"]).to(device)
        head = ICDHead(feature_dim(size["student"]), feature_dim(size["teacher"]), loss_cfg).to(device)
    teacher = make_teacher(size).to(device).eval()
    params = list(student.parameters()) + list(head.parameters())
    optimizer = torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-4)
    student.train()
    head.train()
    losses, start = [], time.perf_counter()
    for step, (x, y, _index) in enumerate(loader):
        if step == warm:
            sync(device)
            start = time.perf_counter()
        x, y = x.float().to(device, non_blocking=True), y.to(device, non_blocking=True)
        logits, features = student(x, with_features=True)
        with torch.no_grad():
            _, t_features = teacher(x, with_features=True)
        contrastive, invariance = head(features, t_features)
        loss = (loss_cfg.ce_weight * ce_loss(logits, y) + loss_cfg.contrastive_weight * contrastive
                + loss_cfg.invariance_weight * invariance)
        losses.append(loss.item())  # the scripts' running average: a host read every step
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    sync(device)
    return time.perf_counter() - start, losses
