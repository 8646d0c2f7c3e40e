"""Teachers: trained once with cross-entropy and cached, or loaded from a checkpoint.

A trained teacher is cached under a key made of everything that determines it
(architecture, dataset and split, recipe, seed), so every later study that asks
for the same teacher reuses the file instead of training again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from .config import LossConfig, TeacherConfig, TrialConfig
from .data import DataBundle
from .files import private_tmp
from .models import create_model
from .schema import to_dict

TEACHER_FORMAT = 1


class TeacherCheckpointError(ValueError):
    """A teacher checkpoint is missing, unreadable, or for another architecture or class count."""


def teacher_trial_config(cfg: TeacherConfig, data_cfg, device: str = "auto") -> TrialConfig:
    """The cross-entropy trial that trains this teacher."""
    return TrialConfig(
        student=cfg.arch,
        data=data_cfg,
        method="ce",  # cross-entropy alone
        loss=LossConfig(ce_weight=1.0, kd_weight=0.0),
        optim=cfg.optim,
        seed=cfg.seed,
        device=device,
        max_steps_per_epoch=cfg.max_steps_per_epoch,
    )


def teacher_key(cfg: TeacherConfig, data: DataBundle, augment: bool = True) -> str:
    recipe = {"format": TEACHER_FORMAT, "arch": cfg.arch, "data": data.identity,
              "augment": augment, "optim": to_dict(cfg.optim), "seed": cfg.seed}
    if cfg.max_steps_per_epoch is not None:  # only when set, so that existing teachers keep their keys
        recipe["max_steps_per_epoch"] = cfg.max_steps_per_epoch
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    return f"{cfg.arch}-{data.name}-{digest}"


def teacher_identity(cfg: TeacherConfig) -> str:
    """One string per distinct teacher a study uses: its checkpoint file, or the recipe that trains it.

    Trials whose teachers share it share one loaded (or trained) teacher and its output cache.
    """
    if cfg.checkpoint:
        return f"{cfg.arch}@{Path(cfg.checkpoint).expanduser().resolve()}"
    recipe = {"optim": to_dict(cfg.optim), "seed": cfg.seed, "max_steps_per_epoch": cfg.max_steps_per_epoch}
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    return f"{cfg.arch}@trained-{digest}"


def teacher_cache_path(cfg: TeacherConfig, data: DataBundle, cache_dir: str | Path | None = None, augment: bool = True) -> Path:
    root = Path(cache_dir or cfg.cache_dir or Path("results") / "teachers")
    return root / f"{teacher_key(cfg, data, augment)}.pt"


def load_teacher_checkpoint(path: str | Path, arch: str, num_classes: int) -> nn.Module:
    """Loads ours (``{'model', 'arch', ...}``) or RepDistiller's (``{'model': state_dict}``) format."""
    path = Path(path)
    if not path.is_file():
        raise TeacherCheckpointError(f"teacher checkpoint {path} does not exist")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise TeacherCheckpointError(f"teacher checkpoint {path} could not be read ({type(err).__name__}: {err}); "
                                     f"is it a torch.save file?") from None
    if isinstance(blob, dict) and "model" in blob and isinstance(blob["model"], dict):
        state = blob["model"]
        saved_arch = blob.get("arch")
        if saved_arch is not None and saved_arch != arch:
            raise TeacherCheckpointError(f"teacher checkpoint {path} holds a '{saved_arch}', but the study asks for '{arch}'")
    elif isinstance(blob, dict) and blob and all(isinstance(v, torch.Tensor) for v in blob.values()):
        state = blob
    else:
        raise TeacherCheckpointError(f"teacher checkpoint {path} is neither {{'model': state_dict}} nor a state dict")
    model = create_model(arch, num_classes)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        expected = model.state_dict()
        missing = [k for k in expected if k not in state]
        unexpected = [k for k in state if k not in expected]
        mismatched = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
                      if k in state and state[k].shape != v.shape]
        detail = "; ".join(part for part in (
            f"missing keys {missing[:3]}{'...' if len(missing) > 3 else ''}" if missing else "",
            f"unexpected keys {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}" if unexpected else "",
            f"shape mismatches {mismatched[:3]}" if mismatched else "") if part)
        raise TeacherCheckpointError(
            f"teacher checkpoint {path} does not fit '{arch}' with {num_classes} classes: {detail or err}") from None
    model.eval()
    return model


def save_teacher(model: nn.Module, path: str | Path, arch: str, num_classes: int, meta: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = private_tmp(path)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"model": state, "arch": arch, "num_classes": num_classes, "meta": meta}, tmp)
    tmp.replace(path)
    return path


def train_teacher(cfg: TeacherConfig, data: DataBundle, data_cfg, device: str = "auto",
                  callback: Callable[[dict], None] | None = None) -> nn.Module:
    from .train import Trainer

    trial = teacher_trial_config(cfg, data_cfg, device)
    trainer = Trainer(trial, data)
    final = trainer.fit(callback)
    model = trainer.student.cpu().eval()
    model.final_metrics = final
    return model


def get_teacher(cfg: TeacherConfig, data: DataBundle, data_cfg, device: str = "auto",
                cache_dir: str | Path | None = None, callback: Callable[[dict], None] | None = None,
                log: Callable[[str], None] = print,
                train_fn: Callable[[], nn.Module] | None = None) -> tuple[nn.Module, dict]:
    """``train_fn`` replaces the in-process training (e.g. a Ray task on a GPU node)."""
    """The study's teacher and a description of where it came from."""
    if cfg.checkpoint:
        model = load_teacher_checkpoint(cfg.checkpoint, cfg.arch, data.num_classes)
        return model, {"source": "checkpoint", "path": str(Path(cfg.checkpoint).resolve())}
    path = teacher_cache_path(cfg, data, cache_dir, data_cfg.augment)
    if path.is_file():
        try:
            model = load_teacher_checkpoint(path, cfg.arch, data.num_classes)
            log(f"teacher: reusing {cfg.arch} from {path}")
            return model, {"source": "cache", "path": str(path.resolve())}
        except TeacherCheckpointError as err:
            log(f"teacher: cached file unusable ({err}); training again")
    log(f"teacher: training {cfg.arch} on {data.name} for {cfg.optim.epochs} epochs (cached at {path})")
    if train_fn is not None:
        model = train_fn()
    else:
        model = train_teacher(cfg, data, dataclasses.replace(data_cfg), device, callback)
    meta = {"final_metrics": model.final_metrics, "recipe": to_dict(cfg)}
    save_teacher(model, path, cfg.arch, data.num_classes, meta)
    return model, {"source": "trained", "path": str(path.resolve()), "test_acc1": model.final_metrics.get("test/acc1")}


def recorded_test_acc1(path: str | Path) -> float | None:
    """The test accuracy a teacher file written by ``save_teacher`` recorded at the end of its training."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return None
    meta = blob.get("meta") if isinstance(blob, dict) else None
    final = (meta or {}).get("final_metrics") or {}
    value = final.get("test/acc1")
    return float(value) if value is not None else None


@torch.no_grad()
def measure_test_acc1(model: nn.Module, data: DataBundle, device="cpu", batch_size: int = 512) -> float:
    """The model's top-1 accuracy (%) on the test split."""
    from .data import Normalizer, eval_batches

    device = torch.device(device)
    model = model.to(device).eval()
    normalizer = Normalizer(data.mean, data.std, device, channels_last=False)
    hits = 0
    for x, y in eval_batches(data.test_x, data.test_y, batch_size, device, normalizer):
        hits += int((model(x).argmax(dim=1) == y).sum())
    model.cpu()
    return 100.0 * hits / max(1, int(data.test_y.shape[0]))


def teacher_test_acc1(model: nn.Module, data: DataBundle, info: dict, device="cpu") -> float:
    """The teacher's test accuracy: as its training recorded it, else measured now on the test split."""
    if info.get("test_acc1") is not None:
        return float(info["test_acc1"])
    recorded = recorded_test_acc1(info["path"]) if info.get("source") == "cache" else None
    return recorded if recorded is not None else measure_test_acc1(model, data, device)
