"""The teachers a study's trials use: one per distinct checkpoint or training recipe, each prepared once.

A study may give every grid point its own teacher (``teacher.arch`` as a level, the
checkpoint path a template). Checkpoint templates are expanded here: ``{teachers_dir}``
from the study key ``teachers_dir`` when the study is read, ``{arch}`` from each
trial's ``teacher.arch`` when its config is resolved (``trials.trial_dict``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from ...method.config import TeacherConfig
from ...method.schema import ConfigError
from .trials import TrialPoint, trial_config

PLACEHOLDERS = ("teachers_dir", "arch")
_FIELD = re.compile(r"\{([^{}]*)\}")


@dataclass
class TeacherUse:
    """One distinct teacher and the planned trials that use it."""

    identity: str
    cfg: TeacherConfig
    trials: list[str] = field(default_factory=list)

    @property
    def missing(self) -> bool:
        return bool(self.cfg.checkpoint) and not Path(self.cfg.checkpoint).expanduser().is_file()


def expand_teachers_dir(data: dict) -> None:
    """Fills ``{teachers_dir}`` in ``teacher.checkpoint`` from the study key; refuses unknown placeholders."""
    teacher = data.get("teacher")
    template = teacher.get("checkpoint") if isinstance(teacher, dict) else None
    if not isinstance(template, str):
        return
    unknown = [name for name in _FIELD.findall(template) if name not in PLACEHOLDERS]
    if unknown:
        raise ConfigError(f"bad value {template!r}: unknown placeholder {{{unknown[0]}}}; a checkpoint template may "
                          f"use {{teachers_dir}} (the study key teachers_dir) and {{arch}} (each trial's teacher.arch)",
                          "teacher.checkpoint")
    if "{teachers_dir}" not in template:
        return
    folder = data.get("teachers_dir")
    if not folder:
        raise ConfigError(f"bad value {template!r}: it names {{teachers_dir}} and the study sets no teachers_dir; add "
                          f"teachers_dir: PATH to the study or pass --set teachers_dir=PATH", "teacher.checkpoint")
    resolved = str(Path(str(folder)).expanduser().resolve())
    data["teacher"] = {**teacher, "checkpoint": template.replace("{teachers_dir}", resolved)}


def teacher_uses(base: dict, points: Iterable[TrialPoint]) -> dict[str, TeacherUse]:
    """Identity -> the teacher and the trials that use it, in first-use order; trials without a teacher left out."""
    from ...method.teachers import teacher_identity

    uses: dict[str, TeacherUse] = {}
    for point in points:
        cfg = trial_config(base, point.overrides, point.seed)
        if not cfg.uses_teacher:
            continue
        identity = teacher_identity(cfg.teacher)
        uses.setdefault(identity, TeacherUse(identity, cfg.teacher)).trials.append(point.name)
    return uses


def missing_text(uses: Iterable[TeacherUse]) -> str | None:
    """Every missing checkpoint, one line each with the trials that need it; None when none is missing."""
    missing = [u for u in uses if u.missing]
    if not missing:
        return None
    lines = [f"{len(missing)} teacher checkpoint(s) do not exist:"]
    lines += [f"  {u.cfg.checkpoint}  ({u.cfg.arch}; {len(u.trials)} trial(s), e.g. '{u.trials[0]}')" for u in missing]
    lines.append("put them there (RepDistiller's layout, {'model': state_dict}: its fetch_pretrained_teachers.sh "
                 "writes save/models/<arch>_vanilla/ckpt_epoch_240.pth), or point teachers_dir elsewhere "
                 "(--set teachers_dir=PATH); --dry-run plans without them and --smoke trains stand-ins")
    return "\n".join(lines)


def check_checkpoints(uses: dict[str, TeacherUse], num_classes: int) -> None:
    """Refuses a run whose teacher checkpoints are missing (listing all of them) or do not fit their architecture."""
    from ...method.teachers import TeacherCheckpointError, load_teacher_checkpoint

    text = missing_text(uses.values())
    if text:
        raise TeacherCheckpointError(text)
    for use in uses.values():
        if use.cfg.checkpoint:
            load_teacher_checkpoint(use.cfg.checkpoint, use.cfg.arch, num_classes)
