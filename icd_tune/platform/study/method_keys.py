"""One study, several methods: whose ``loss:`` keys a trial keeps, ignores or refuses.

A study's ``loss:`` section is shared by every trial, and each method reads its own keys
from it. A study whose levels run CRD and ICD inherits ICD's settings through ``extends:``:
the CRD trials ignore them (``--dry-run`` lists them), while a key a level, a search space
or ``--set`` gives to trials whose method lacks it is refused, naming the key (exit 2).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ...method.config import DEFAULT_METHOD
from ...method.distillers import methods_with_loss_key
from ...method.schema import ConfigError, join_path, suggest
from .files import loss_classes
from .trials import loss_key_name, loss_keys


def other_methods_loss(base: dict, methods: list[str]) -> dict[str, Any]:
    """The trial defaults' ``loss:`` keys the default method lacks, each refused unless some method has it."""
    loss = base.get("loss")
    own = loss_keys(base.get("method", DEFAULT_METHOD))
    if not isinstance(loss, dict) or own is None:
        return {}
    others = {k: v for k, v in loss.items() if k not in own}
    known = {f.name for cls in loss_classes(methods) for f in dataclasses.fields(cls)}
    for key in others:
        if key not in known:
            raise ConfigError(f"unknown key '{key}'{suggest(str(key), sorted(known))}", join_path("loss", str(key)))
    return others


def ignored_loss_keys(study) -> dict[str, list[str]]:
    """Method -> the trial defaults' ``loss:`` keys its trials ignore (other methods' settings, inherited)."""
    loss = study.raw.get("loss")
    out = {}
    for method in study.trial_methods:
        own = loss_keys(method)
        ignored = [f"loss.{k}" for k in loss if k not in own] if isinstance(loss, dict) and own is not None else []
        if ignored:
            out[method] = ignored
    return out


def check_set_loss_keys(study, parsed: list[tuple[str, Any]]) -> None:
    """A ``--set loss.KEY`` must reach a trial: some trial's method has KEY."""
    owned = {k for m in study.trial_methods for k in (loss_keys(m) or ())}
    for key, _ in parsed:
        name = loss_key_name(key)
        if name and name not in owned:
            raise ConfigError(f"no trial of this study reads it (its methods: "
                              f"{', '.join(study.trial_methods)}); it is a setting of method "
                              f"{', '.join(repr(m) for m in methods_with_loss_key(name)) or 'none'}", key,
                              source="--set")
