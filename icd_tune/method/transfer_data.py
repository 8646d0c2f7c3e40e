"""Target sets of the transfer probe, as uint8 32x32 tensors like ``data.py``'s datasets.

- ``stl10``: torchvision's STL-10 (``<root>/stl10_binary``), 5,000 labelled training and 8,000
  test images of 10 classes, 96x96 resized to 32x32; downloaded when ``transfer.download`` allows.
- ``tiny_imagenet``: Tiny-ImageNet-200 in its standard folder layout (``<root>/tiny-imagenet-200``
  with ``wnids.txt``, ``train/<wnid>/images/*.JPEG``, ``val/images`` and
  ``val/val_annotations.txt``), 100,000 training images and the 10,000 labelled validation images
  as the test split, 64x64 resized to 32x32. Never downloaded. The decoded 32x32 tensors are kept
  in ``<root>/tiny-imagenet-200-32x32.pt`` so later trials skip decoding 110,000 JPEG files.
- ``synthetic``: the trial's synthetic data settings drawn with ``synthetic_seed + 1``: new
  class prototypes, a task the student never saw. ``digits``: scikit-learn's digits.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .config import DataConfig
from .files import private_tmp
from .data import SIZE, DataUnavailableError, _load_digits, _load_synthetic
from .transfer_config import TransferConfig

STL10_FOLDER = "stl10_binary"
TINY_FOLDER = "tiny-imagenet-200"
TINY_CACHE = "tiny-imagenet-200-32x32.pt"


@dataclass
class TargetSet:
    """A target's splits: images uint8 (N, 3, 32, 32), labels int64."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int


def target_root(transfer: TransferConfig, data: DataConfig) -> Path:
    return Path(transfer.root or data.root or "data").expanduser().resolve()


def resize_u8(images: torch.Tensor, size: int = SIZE, chunk: int = 1024) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> uint8 (N, 3, size, size), antialiased bilinear, in chunks to bound memory."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images.contiguous()
    out = torch.empty(images.shape[0], images.shape[1], size, size, dtype=torch.uint8)
    for start in range(0, images.shape[0], chunk):
        part = images[start:start + chunk].float()
        part = F.interpolate(part, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[start:start + chunk] = part.round().clamp(0, 255).to(torch.uint8)
    return out


def missing_target(name: str, transfer: TransferConfig, data: DataConfig) -> str | None:
    """Why target ``name`` cannot be had on this machine; None when it is here or will be downloaded."""
    root = target_root(transfer, data)
    if name == "stl10":
        folder = root / STL10_FOLDER
        if (folder / "train_X.bin").is_file() and (folder / "test_X.bin").is_file() or transfer.download:
            return None
        return (f"STL-10 is not in {folder} and transfer.download is off: set transfer.download: true, or put the "
                f"extracted '{STL10_FOLDER}' folder in {root} (transfer.root, else data.root / --data-dir)")
    if name == "tiny_imagenet":
        folder = root / TINY_FOLDER
        if (root / TINY_CACHE).is_file() or ((folder / "wnids.txt").is_file()
                                            and (folder / "val" / "val_annotations.txt").is_file()):
            return None
        return (f"Tiny-ImageNet-200 is not in {folder} (looked for wnids.txt, train/<wnid>/images/*.JPEG and "
                f"val/val_annotations.txt); extract tiny-imagenet-200.zip into {root} (transfer.root, else "
                f"data.root / --data-dir)")
    return None


def prepare_targets(transfer: TransferConfig, data: DataConfig) -> None:
    """Refuses (``DataUnavailableError``) a target this machine lacks; downloads STL-10 where allowed and absent."""
    for name in transfer.datasets:
        why = missing_target(name, transfer, data)
        if why is not None:
            raise DataUnavailableError(why)
    if "stl10" in transfer.datasets and transfer.download:
        _load_stl10(target_root(transfer, data), True)


def load_target(name: str, transfer: TransferConfig, data: DataConfig) -> TargetSet:
    why = missing_target(name, transfer, data)
    if why is not None:
        raise DataUnavailableError(why)
    if name == "synthetic":
        cfg = dataclasses.replace(data, name="synthetic", synthetic_seed=data.synthetic_seed + 1)
        (train_x, train_y), (test_x, test_y), classes, _, _ = _load_synthetic(cfg)
    elif name == "digits":
        (train_x, train_y), (test_x, test_y), classes, _, _ = _load_digits(data)
    elif name == "stl10":
        (train_x, train_y), (test_x, test_y), classes = _load_stl10(target_root(transfer, data), transfer.download)
    elif name == "tiny_imagenet":
        (train_x, train_y), (test_x, test_y), classes = _load_tiny_imagenet(target_root(transfer, data))
    else:
        raise ValueError(f"unknown transfer dataset {name!r}")
    return TargetSet(name, train_x, train_y, test_x, test_y, classes)


def _load_stl10(root: Path, download: bool):
    import torchvision

    parts = []
    for split in ("train", "test"):
        try:
            with _folder_lock(root, ".stl10.lock"):  # trials on one node must not download into one folder at once
                ds = torchvision.datasets.STL10(str(root), split=split, download=download)
        except Exception as err:  # a missing folder and a failed download both land here
            raise DataUnavailableError(
                f"STL-10 could not be loaded from {root / STL10_FOLDER} ({type(err).__name__}: {err}). Fix: download "
                f"stl10_binary.tar.gz on a machine with internet and extract it into {root}, or point transfer.root "
                f"at a folder that has '{STL10_FOLDER}'.") from None
        images = resize_u8(torch.from_numpy(ds.data))
        parts.append((images, torch.from_numpy(ds.labels).to(torch.int64)))
    return parts[0], parts[1], 10


@contextlib.contextmanager
def _folder_lock(root: Path, name: str):
    import fcntl

    try:
        root.mkdir(parents=True, exist_ok=True)
        handle = open(root / name, "a")
    except OSError:  # a read-only data folder: nothing will be downloaded into it either
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _load_tiny_imagenet(root: Path):
    cache = root / TINY_CACHE
    if cache.is_file():
        saved = torch.load(cache, map_location="cpu", weights_only=True)
        return (saved["train_x"], saved["train_y"]), (saved["test_x"], saved["test_y"]), int(saved["num_classes"])
    folder = root / TINY_FOLDER
    wnids = [w.strip() for w in (folder / "wnids.txt").read_text().split() if w.strip()]
    label = {w: i for i, w in enumerate(wnids)}
    train_files = [(f, label[w]) for w in wnids for f in sorted((folder / "train" / w / "images").glob("*.JPEG"))]
    test_files = []
    for line in (folder / "val" / "val_annotations.txt").read_text().splitlines():
        fields = line.split("\t")
        if len(fields) >= 2 and fields[1] in label:
            test_files.append((folder / "val" / "images" / fields[0], label[fields[1]]))
    if not train_files or not test_files:
        raise DataUnavailableError(f"Tiny-ImageNet-200 in {folder} has {len(train_files)} training and "
                                   f"{len(test_files)} validation images; expected the standard layout")
    train, test = _decode(train_files), _decode(test_files)
    try:
        tmp = private_tmp(cache)
        torch.save({"train_x": train[0], "train_y": train[1], "test_x": test[0], "test_y": test[1],
                    "num_classes": len(wnids)}, tmp)
        tmp.replace(cache)  # trials finishing together may both write it; each write is whole
    except OSError:
        pass  # a read-only data folder: decode again next time
    return train, test, len(wnids)


def _decode(files: list[tuple[Path, int]], chunk: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    import numpy as np
    from PIL import Image

    out = torch.empty(len(files), 3, SIZE, SIZE, dtype=torch.uint8)
    for start in range(0, len(files), chunk):
        batch = []
        for path, _ in files[start:start + chunk]:
            with Image.open(path) as img:
                batch.append(torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1))
        shapes = {tuple(b.shape) for b in batch}
        if len(shapes) == 1:
            out[start:start + len(batch)] = resize_u8(torch.stack(batch))
        else:
            for i, b in enumerate(batch):
                out[start + i] = resize_u8(b[None])[0]
    return out, torch.tensor([y for _, y in files], dtype=torch.int64)
