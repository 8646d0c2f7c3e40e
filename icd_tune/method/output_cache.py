"""Exact teacher-output cache over every (training image, augmentation variant).

A frozen teacher sees each training image in one of ``NUM_VARIANTS`` (162)
pad-crop-flip variants, so its pooled features and logits for all of them can be
computed once (162 teacher-epochs of forward passes) and looked up by every
trial of every study that uses the same teacher on the same data. The teacher
forward is most of a distillation step, so a trial reading the cache runs
several times faster.

On disk a cache is two files in the teacher cache directory:

* ``outputs-<key[:16]>.bin``: a flat row-major array of shape (N, 162, d + C) in
  float16 or float32, each row the teacher's features (d) then its logits (C);
* ``outputs-<key[:16]>.json``: the header (full key, shape, dtype, byte size,
  sha256 of the .bin, ``complete: true``), written last, so its presence marks a
  finished build.

Trials map the .bin read-only (``numpy.memmap``), so all trials on a node share
one page-cache copy instead of each holding its own.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from .data import NUM_VARIANTS, DataBundle, Normalizer, augment
from .device import resolve_device
from .files import build_lock, fsync_dir, private_tmp, write_json_atomic
from .progress import Progress, format_bytes

CACHE_FORMAT = 1
AUGMENTATION = "pad4-crop32-flip"
_DTYPES = {"float16": np.float16, "float32": np.float32}
_HASH_CHUNK = 16 << 20


class CacheInvalidError(ValueError):
    """A teacher-output cache is missing, unfinished, for another key, truncated, or corrupt."""


# ---------------------------------------------------------------------------
# Keys and sizes


def _dtype_name(dtype) -> str:
    aliases = {"float16": "float16", "fp16": "float16", "half": "float16",
               "float32": "float32", "fp32": "float32", "float": "float32"}
    if isinstance(dtype, torch.dtype):
        name = str(dtype).removeprefix("torch.")
    else:
        name = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
    if name not in aliases:
        raise ValueError(f"teacher cache dtype must be float16 or float32, got {dtype!r}")
    return aliases[name]


def _tensor_bytes(t: torch.Tensor) -> np.ndarray:
    # Viewing as bytes covers every dtype (bfloat16 has no numpy equivalent) and 0-d tensors.
    return t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()


def _augmentation_fingerprint() -> bytes:
    # Hashes what augment() actually does on a fixed probe for all 162 variants, so a
    # change to the crop/flip code or the variant encoding invalidates old caches too.
    probe = (torch.arange(3 * 32 * 32, dtype=torch.int64) % 251).to(torch.uint8).view(1, 3, 32, 32)
    out = augment(probe.expand(NUM_VARIANTS, -1, -1, -1), torch.arange(NUM_VARIANTS))
    return hashlib.sha256(_tensor_bytes(out)).digest()


def cache_key(teacher_model: nn.Module, data_bundle: DataBundle, dtype) -> str:
    """sha256 over everything that determines the cached values: weights, data, augmentation, normalisation, dtype."""
    h = hashlib.sha256()

    def put(label: str, payload) -> None:
        # Length-prefixed fields, so no two different inputs concatenate to the same stream.
        data = payload.encode() if isinstance(payload, str) else payload
        size = data.nbytes if isinstance(data, np.ndarray) else len(data)
        h.update(f"{label}:{size}:".encode())
        h.update(data)

    put("format", str(CACHE_FORMAT))
    put("teacher_class", f"{type(teacher_model).__module__}.{type(teacher_model).__qualname__}")
    for name, tensor in teacher_model.state_dict().items():
        put("tensor", f"{name}|{str(tensor.dtype)}|{tuple(tensor.shape)}")
        put("bytes", _tensor_bytes(tensor))
    put("data_identity", json.dumps(data_bundle.identity, sort_keys=True))
    for name in ("train_x", "train_y"):
        tensor = getattr(data_bundle, name)
        put(name, f"{str(tensor.dtype)}|{tuple(tensor.shape)}")
        put("bytes", _tensor_bytes(tensor))
    put("augmentation", f"{AUGMENTATION}|{NUM_VARIANTS}")
    put("augmentation_fingerprint", _augmentation_fingerprint())
    put("normalisation", json.dumps({"mean": [float(v) for v in data_bundle.mean],
                                     "std": [float(v) for v in data_bundle.std]}))
    put("dtype", _dtype_name(dtype))
    return h.hexdigest()


def cache_size_bytes(num_train: int, feature_dim: int, num_classes: int, dtype) -> int:
    return int(num_train) * NUM_VARIANTS * (int(feature_dim) + int(num_classes)) * np.dtype(_DTYPES[_dtype_name(dtype)]).itemsize


def build_cost_teacher_epochs() -> int:
    """Teacher forward passes a build costs, in epochs over the training set."""
    return NUM_VARIANTS


# ---------------------------------------------------------------------------
# Building


def header_path(path: str | Path) -> Path:
    return Path(path).with_suffix(".json")


def build_cache(teacher_model: nn.Module, data_bundle: DataBundle, path: str | Path, dtype="float16", device=None,
                batch_size: int | None = None, progress: bool = True, key: str | None = None) -> Path:
    """Computes the teacher's outputs for every (image, variant) and writes the cache atomically.

    Samples are enumerated image-major (sample s is image s // 162, variant s % 162),
    which is the file's own order: every batch is one contiguous append, so the file
    is written sequentially and hashed as it goes instead of re-read afterwards.
    ``key`` skips recomputing :func:`cache_key` when the caller already has it.
    """
    path = Path(path)
    dtype = _dtype_name(dtype)
    np_dtype = _DTYPES[dtype]
    device = resolve_device(device)
    if batch_size is None:
        # On the CPU large batches fall out of cache: resnet32x4 measured 5.7 ms per image-variant
        # at 64 against 11.0 ms at 512 (bench/cache_build.py); GPUs want the large batch.
        batch_size = 512 if device.type == "cuda" else 64
    key = key or cache_key(teacher_model, data_bundle, dtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = header_path(path)
    # The header is the completion marker: drop it first so no crash can leave an old
    # header describing a file that is being replaced.
    header.unlink(missing_ok=True)

    n = data_bundle.num_train
    if n == 0:
        raise ValueError("cannot build a teacher cache for an empty training set")
    total = n * NUM_VARIANTS
    params = list(teacher_model.parameters()) + list(teacher_model.buffers())
    home = params[0].device if params else torch.device("cpu")
    was_training = teacher_model.training
    tmp = private_tmp(path)
    digest = hashlib.sha256()
    start = time.perf_counter()
    bar = Progress(total, f"teacher cache {path.name}", progress)
    width = feature_dim = num_classes = None
    try:
        teacher_model.to(device).eval()
        images = data_bundle.train_x.to(device)
        normalizer = Normalizer(data_bundle.mean, data_bundle.std, device)
        with open(tmp, "wb") as f, torch.no_grad(), torch.autocast(device.type, enabled=False):
            for lo in range(0, total, batch_size):
                sample = torch.arange(lo, min(lo + batch_size, total), device=device)
                x = normalizer(augment(images[sample // NUM_VARIANTS], sample % NUM_VARIANTS))
                logits, features = teacher_model(x, with_features=True)
                rows = torch.cat([features.float(), logits.float()], dim=1).cpu().numpy().astype(np_dtype, copy=False)
                if width is None:
                    feature_dim, num_classes, width = features.shape[1], logits.shape[1], rows.shape[1]
                rows = np.ascontiguousarray(rows)
                f.write(memoryview(rows).cast("B"))
                digest.update(rows)
                bar.update(int(sample[-1]) + 1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        teacher_model.to(home).train(was_training)
    bar.finish(total)
    write_json_atomic(header, _header(key, (n, NUM_VARIANTS, width), feature_dim, num_classes, dtype, digest.hexdigest(),
                                       type(teacher_model).__name__, data_bundle.identity, device,
                                       time.perf_counter() - start))
    fsync_dir(path.parent)
    return path


def _header(key: str, shape: tuple[int, int, int], feature_dim: int, num_classes: int, dtype: str, sha256: str,
            teacher_class: str, data_identity, device: torch.device, seconds: float) -> dict:
    return {
        "format": CACHE_FORMAT,
        "key": key,
        "shape": list(shape),
        "feature_dim": feature_dim,
        "num_classes": num_classes,
        "dtype": dtype,
        "layout": "row-major (image, variant, column); columns are the pooled features, then the logits",
        "augmentation": AUGMENTATION,
        "nbytes": shape[0] * shape[1] * shape[2] * np.dtype(_DTYPES[dtype]).itemsize,
        "checksum": {"algorithm": "sha256", "hexdigest": sha256},
        "teacher_class": teacher_class,
        "data_identity": data_identity,
        "build_device": str(device),
        "build_seconds": round(seconds, 3),
        "complete": True,
    }


# ---------------------------------------------------------------------------
# Opening and looking up


def _read_header(path: Path, expected_key: str | None) -> dict:
    hpath = header_path(path)
    if not hpath.is_file():
        raise CacheInvalidError(f"teacher cache {path}: no header {hpath.name} (the build never finished)")
    try:
        header = json.loads(hpath.read_text())
    except (OSError, ValueError) as err:
        raise CacheInvalidError(f"teacher cache {path}: header {hpath.name} unreadable ({err})") from None
    if not isinstance(header, dict) or header.get("complete") is not True:
        raise CacheInvalidError(f"teacher cache {path}: header {hpath.name} is not marked complete")
    if header.get("format") != CACHE_FORMAT:
        raise CacheInvalidError(f"teacher cache {path}: format {header.get('format')!r}, this code reads {CACHE_FORMAT}")
    if expected_key is not None and header.get("key") != expected_key:
        raise CacheInvalidError(
            f"teacher cache {path}: built for key {str(header.get('key'))[:16]}..., expected {expected_key[:16]}... "
            f"(teacher weights, training data, augmentation, normalisation or dtype differ)")
    try:
        n, variants, width = (int(v) for v in header["shape"])
        dtype = _dtype_name(header["dtype"])
        d, c = int(header["feature_dim"]), int(header["num_classes"])
        nbytes = int(header["nbytes"])
        checksum = header["checksum"]["hexdigest"]
    except (KeyError, TypeError, ValueError) as err:
        raise CacheInvalidError(f"teacher cache {path}: malformed header ({type(err).__name__}: {err})") from None
    expected_bytes = n * variants * width * np.dtype(_DTYPES[dtype]).itemsize
    if variants != NUM_VARIANTS or d + c != width or nbytes != expected_bytes or not isinstance(checksum, str):
        raise CacheInvalidError(f"teacher cache {path}: inconsistent header (shape {header['shape']}, dtype {dtype}, "
                                f"feature_dim {d}, num_classes {c}, nbytes {nbytes})")
    return header


def _check_size(path: Path, header: dict) -> None:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise CacheInvalidError(f"teacher cache {path}: the data file is missing") from None
    if size != header["nbytes"]:
        what = "truncated" if size < header["nbytes"] else "longer than its header says"
        raise CacheInvalidError(f"teacher cache {path}: {what} ({size} bytes, expected {header['nbytes']})")


def _check_checksum(path: Path, header: dict) -> None:
    digest = hashlib.sha256()
    buffer = bytearray(_HASH_CHUNK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while True:
            got = f.readinto(buffer)
            if not got:
                break
            digest.update(view[:got])
    if digest.hexdigest() != header["checksum"]["hexdigest"]:
        raise CacheInvalidError(f"teacher cache {path}: corrupt (sha256 of the data does not match its header)")


class TeacherOutputCache:
    """A validated cache file, mapped read-only. Pickles as (path, header) and remaps on first use."""

    def __init__(self, path: Path, header: dict):
        self.path = Path(path)
        self.header = header
        self.key: str = header["key"]
        self.num_train, self.num_variants, self.width = header["shape"]
        self.feature_dim: int = header["feature_dim"]
        self.num_classes: int = header["num_classes"]
        self.dtype: str = header["dtype"]
        self._rows = None

    @property
    def nbytes(self) -> int:
        return self.header["nbytes"]

    @property
    def rows(self) -> np.memmap:
        """The (N * 162, d + C) array; row ``index * 162 + variant``."""
        if self._rows is None:
            # Reached after unpickling in a worker: the driver checksummed the file when it
            # opened it, so only the cheap checks (header, key, size) are repeated here.
            header = _read_header(self.path, self.key)
            _check_size(self.path, header)
            self._rows = np.memmap(self.path, dtype=_DTYPES[self.dtype], mode="r",
                                   shape=(self.num_train * self.num_variants, self.width))
        return self._rows

    def lookup(self, index, variant) -> np.ndarray:
        """Rows for the (index, variant) pairs, in the cache dtype: (B, d + C)."""
        index = np.asarray(index, dtype=np.int64).reshape(-1)
        variant = np.asarray(variant, dtype=np.int64).reshape(-1)
        if index.shape != variant.shape:
            raise ValueError(f"index and variant differ in length: {index.shape[0]} vs {variant.shape[0]}")
        if index.size:
            # An out-of-range variant would silently read a neighbouring image's row.
            if variant.min() < 0 or variant.max() >= self.num_variants:
                raise IndexError(f"variant out of range [0, {self.num_variants}): {variant.min()}..{variant.max()}")
            if index.min() < 0 or index.max() >= self.num_train:
                raise IndexError(f"index out of range [0, {self.num_train}): {index.min()}..{index.max()}")
        return np.asarray(np.take(self.rows, index * self.num_variants + variant, axis=0))

    def __getstate__(self):
        return {"path": str(self.path), "header": self.header}

    def __setstate__(self, state):
        self.__init__(Path(state["path"]), state["header"])

    def __repr__(self) -> str:
        return (f"TeacherOutputCache({str(self.path)!r}, shape=({self.num_train}, {self.num_variants}, {self.width}), "
                f"dtype={self.dtype}, key={self.key[:16]})")


def open_cache(path: str | Path, expected_key: str, verify: bool = True) -> TeacherOutputCache:
    """Validates header, key, size and (with ``verify``) the sha256 of the data, then maps it read-only.

    Hashing runs at about 2 GB/s with SHA-NI, a few seconds for a CIFAR-100 cache.
    Raises :class:`CacheInvalidError` saying what is wrong.
    """
    path = Path(path)
    header = _read_header(path, expected_key)
    _check_size(path, header)
    if verify:
        _check_checksum(path, header)
    cache = TeacherOutputCache(path, header)
    cache._rows = np.memmap(path, dtype=_DTYPES[cache.dtype], mode="r",
                            shape=(cache.num_train * cache.num_variants, cache.width))
    return cache


def cache_file_path(cache_dir: str | Path, key: str) -> Path:
    return Path(cache_dir) / f"outputs-{key[:16]}.bin"


def get_or_build_cache(teacher_model: nn.Module, data_bundle: DataBundle, cache_dir: str | Path, dtype="float16",
                       device=None, log: Callable[[str], None] = print, batch_size: int | None = None,
                       progress: bool = True) -> TeacherOutputCache:
    """Opens this teacher's cache under ``cache_dir`` if it is present and valid, else (re)builds it."""
    dtype = _dtype_name(dtype)
    key = cache_key(teacher_model, data_bundle, dtype)
    path = cache_file_path(cache_dir, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    with build_lock(path):
        if path.exists() or header_path(path).exists():
            try:
                cache = open_cache(path, key)
                log(f"teacher cache: reusing {path} ({format_bytes(cache.nbytes)}, {dtype})")
                return cache
            except CacheInvalidError as err:
                log(f"teacher cache: rebuilding, {err}")
        else:
            log(f"teacher cache: building {path} ({data_bundle.num_train} images x {NUM_VARIANTS} variants, {dtype}, "
                f"{build_cost_teacher_epochs()} teacher-epochs)")
        build_cache(teacher_model, data_bundle, path, dtype=dtype, device=device, batch_size=batch_size,
                    progress=progress, key=key)
        cache = open_cache(path, key)
        log(f"teacher cache: built {path} ({format_bytes(cache.nbytes)}, {cache.header['build_seconds']:.1f} s)")
        return cache
