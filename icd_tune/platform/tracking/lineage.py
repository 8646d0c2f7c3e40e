"""What each child run was trained from: the data set as an MLflow dataset input, the teacher as tags.

Computed once on the driver, before any trial starts, from what the prepare stage
loaded (the data splits, the teacher and where it came from); the driver logs it
when it creates a trial's run. Two runs that differ only in their data content or
in their teacher's file then differ in the comparison view.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..study.trials import point_of, trial_config

if TYPE_CHECKING:
    from ...method.data import DataBundle

DATASET_CONTEXT = "training"
TEACHER_ARCH_TAG = "icd_tune.teacher.arch"
TEACHER_SOURCE_TAG = "icd_tune.teacher.source"  # checkpoint, cache (trained earlier) or trained
TEACHER_CHECKPOINT_TAG = "icd_tune.teacher.checkpoint"
TEACHER_SHA256_TAG = "icd_tune.teacher.checkpoint_sha256"
TEACHER_ACC1_TAG = "icd_tune.teacher.test_acc1"
TEACHER_OUTPUTS_TAG = "icd_tune.teacher.outputs"
EXACT_CACHE, LIVE_TEACHER, NO_TEACHER = "exact cache", "live teacher", "not used"


def data_sha256(data: DataBundle) -> str:
    """sha256 over every split's images and labels, in split order: the data's content, not its recipe."""
    digest = hashlib.sha256()
    for name in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y"):
        tensor = getattr(data, name).contiguous()
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def dataset_properties(data: DataBundle, data_cfg) -> dict[str, Any]:
    """The dataset input's profile: split sizes, how validation was split off, the full content hash."""
    return {"num_train": int(data.train_x.shape[0]), "num_val": int(data.val_x.shape[0]),
            "num_test": int(data.test_x.shape[0]), "num_classes": int(data.num_classes),
            "val_fraction": data_cfg.val_fraction, "split_seed": data_cfg.split_seed, "sha256": data_sha256(data)}


def dataset_input(data: DataBundle, data_cfg):
    """An MLflow ``DatasetInput``: name, digest of the content, the properties above as its profile."""
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    from ...method.schema import to_dict

    profile = dataset_properties(data, data_cfg)
    recipe = {k: v for k, v in to_dict(data_cfg).items() if k != "root"}  # the root is this machine's
    meta = MetaDataset(CodeDatasetSource({"loader": "icd_tune.method.data.load_data", "config": json.dumps(recipe)}),
                       name=data.name, digest=profile["sha256"][:16])
    entity = Dataset(**{**meta.to_dict(), "profile": json.dumps(profile)})
    return DatasetInput(entity, tags=[InputTag(MLFLOW_DATASET_CONTEXT, DATASET_CONTEXT)])


def teacher_tags(teacher_cfg, info: dict) -> dict[str, str]:
    """Architecture, where the weights came from, the file and its sha256, the teacher's test accuracy."""
    tags = {TEACHER_ARCH_TAG: teacher_cfg.arch, TEACHER_SOURCE_TAG: str(info.get("source", "none"))}
    path = info.get("path")
    if path:
        tags[TEACHER_CHECKPOINT_TAG] = str(path)
        if Path(path).is_file():  # on a cluster a checkpoint path may name a file only the workers see
            tags[TEACHER_SHA256_TAG] = file_sha256(path)
    if info.get("test_acc1") is not None:
        tags[TEACHER_ACC1_TAG] = f"{float(info['test_acc1']):.4f}"
    return tags


@dataclass
class TrialLineage:
    """Per trial config: the tags and dataset inputs its run gets (built once; called per trial)."""

    base: dict  # plain trial defaults, as the describer has them
    default_seed: int
    datasets: list = field(default_factory=list)
    # Teacher identity -> (its tags, whether trials read its outputs from the exact cache); empty when
    # no trial uses a teacher. With one teacher, every trial that uses one gets it.
    teachers: dict[str, tuple[dict[str, str], bool]] = field(default_factory=dict)

    def tags(self, config: dict) -> dict[str, str]:
        from ...method.teachers import teacher_identity

        point = point_of(config, self.default_seed)
        cfg = trial_config(self.base, point.overrides, point.seed)
        only = next(iter(self.teachers.values())) if len(self.teachers) == 1 else None
        teacher, exact = self.teachers.get(teacher_identity(cfg.teacher), only) or ({}, False)
        if not cfg.uses_teacher or not teacher:
            return {TEACHER_OUTPUTS_TAG: NO_TEACHER}
        return {**teacher, TEACHER_OUTPUTS_TAG: EXACT_CACHE if exact else LIVE_TEACHER}

    def log(self, client, run_id: str, config: dict) -> None:
        from mlflow.entities import RunTag

        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in self.tags(config).items()])
        if self.datasets:
            client.log_inputs(run_id, datasets=self.datasets)


def trial_lineage(plan, prepared) -> TrialLineage:
    """From the plan and what the prepare stage loaded (``stages.plan.StudyPlan``, ``stages.prepare.Prepared``)."""
    from ...method.teachers import teacher_identity

    trial0 = plan.trial0
    lineage = TrialLineage(plan.base, plan.settings.seeds[0], datasets=[dataset_input(prepared.data, trial0.data)])
    several = prepared.teacher_info.get("teachers")
    if several:
        cached = set((prepared.output_cache.teachers or []) if prepared.output_cache is not None else [])
        uses = plan.teacher_uses()
        lineage.teachers = {identity: (teacher_tags(uses[identity].cfg, info), identity in cached)
                            for identity, info in several.items() if identity in uses}
    elif prepared.teacher is not None:
        lineage.teachers = {teacher_identity(trial0.teacher): (teacher_tags(trial0.teacher, prepared.teacher_info),
                                                               prepared.output_cache is not None)}
    return lineage
