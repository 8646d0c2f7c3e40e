"""The distilled student of a finished trial, as an MLflow artifact users can load straight back.

The file is RepDistiller's checkpoint layout, ``{'model': state_dict}``, which
``create_model(arch, num_classes).load_state_dict(torch.load(f, weights_only=True)['model'])``
loads strictly. The weights are those of the epoch of best ``val/acc1`` when the trial has a
validation split (the epoch its ``test/acc1_at_best_val`` belongs to); under protocol paper those
of the epoch of best ``test/acc1`` (its ``test/best_acc1``, selected on the test set and tagged
so); else the last epoch's.
Read on the driver from the trial's latest Ray checkpoint, wherever the experiment storage
is; workers never touch the tracking store.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

ARTIFACT_DIR = "student"
WEIGHTS_TAG = "icd_tune.student_weights"


def student_state(checkpoint, checkpoint_file: str) -> tuple[dict, str] | None:
    """(state_dict, which weights) from a ``ray.tune.Checkpoint``, or None when it holds no trainer state."""
    import torch

    with checkpoint.as_directory() as folder:
        path = Path(folder) / checkpoint_file
        if not path.exists():
            return None
        state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("best_student") is not None and state.get("best_test_epoch"):  # protocol paper
        return state["best_student"], (f"best test/acc1 (selected on the test set, protocol paper), epoch "
                                       f"{state['best_test_epoch']} (checkpoint of epoch {state['epoch']})")
    if state.get("best_student") is not None:
        return state["best_student"], f"best val/acc1, epoch {state['best_val_epoch']} (checkpoint of epoch {state['epoch']})"
    return state["student"], f"last epoch of the checkpoint, epoch {state['epoch']} (no validation split)"


def log_student(client, run_id: str, checkpoint, checkpoint_file: str, arch: str) -> str | None:
    """Logs ``student/<arch>.pth`` on the run; returns the description of the weights, or None."""
    import torch

    found = student_state(checkpoint, checkpoint_file)
    if found is None:
        return None
    state, which = found
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"{arch}.pth"
        torch.save({"model": state}, path)
        client.log_artifact(run_id, str(path), artifact_path=ARTIFACT_DIR)
    client.set_tag(run_id, WEIGHTS_TAG, which)
    return which


def prune_checkpoints(checkpoint) -> list[str]:
    """Deletes an ended trial's checkpoints other than its latest (``checkpoint``); returns what it deleted.

    While a trial runs, Tune keeps its two latest checkpoints (``CheckpointConfig(num_to_keep=2)``):
    the older one is the spare a driver killed between registering a checkpoint and snapshotting the
    experiment still needs. Once the trial has ended, its student is logged and Tune's snapshot
    records it as ended, ``--resume`` never restarts it, and the latest checkpoint (the one Tune's
    experiment state names, with the best-validation weights inside) is all that stays.
    Works on any storage Tune writes to, through the checkpoint's own file system.
    """
    if checkpoint is None:
        return []
    from pyarrow.fs import FileSelector, FileType

    fs, latest = checkpoint.filesystem, checkpoint.path.rstrip("/")
    folder = latest.rsplit("/", 1)[0]
    deleted = []
    for entry in fs.get_file_info(FileSelector(folder)):
        path = entry.path.rstrip("/")
        if entry.type == FileType.Directory and entry.base_name.startswith("checkpoint_") and path != latest:
            fs.delete_dir(path)
            deleted.append(path)
    return deleted
