"""Reading study files: YAML, ``extends:`` chains and ``--set KEY=VALUE`` overrides.

``extends:`` merges a parent file under the child; ``--set`` overrides any key
afterwards, and must name a key the schema knows (with a suggestion otherwise).
"""

from __future__ import annotations

import copy
import dataclasses
import typing
from pathlib import Path
from typing import Any, Iterable

import yaml

from ...method.config import LossConfig, TrialConfig
from ...method.schema import ConfigError, join_path, suggest
from .settings import STUDY_KEYS, TRIAL_KEYS, StudySettings


def read_yaml(path: Path) -> dict:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"file not found: {path}") from None
    except OSError as err:
        raise ConfigError(f"cannot read {path}: {err.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(f"malformed YAML{where}: {problem}", source=str(path)) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping at the top level, got {type(data).__name__}", source=str(path))
    return data


def deep_merge(parent: dict, child: dict) -> dict:
    out = copy.deepcopy(parent)
    for key, value in child.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_with_extends(path: Path, chain: tuple[Path, ...] = ()) -> dict:
    path = path.resolve()
    if path in chain:
        cycle = " -> ".join(str(p) for p in (*chain, path))
        raise ConfigError(f"'extends' forms a cycle: {cycle}", "extends", source=str(chain[-1]))
    data = read_yaml(path)
    parent_ref = data.pop("extends", None)
    if parent_ref is None:
        return data
    if not isinstance(parent_ref, str):
        raise ConfigError(f"bad value {parent_ref!r}: expected a file path", "extends", source=str(path))
    parent_path = (path.parent / parent_ref)
    if not parent_path.is_file():
        raise ConfigError(f"bad value {parent_ref!r}: no such file {parent_path.resolve()}", "extends", source=str(path))
    return deep_merge(load_with_extends(parent_path, (*chain, path)), data)


def extends_chain(path: Path) -> list[Path]:
    """The study file and the files it extends, child first (as ``load_with_extends`` has checked them)."""
    chain = [Path(path).resolve()]
    while True:
        parent_ref = read_yaml(chain[-1]).get("extends")
        if not isinstance(parent_ref, str) or len(chain) > 64:
            return chain
        parent = (chain[-1].parent / parent_ref).resolve()
        if parent in chain or not parent.is_file():
            return chain
        chain.append(parent)


def parse_override(item: str) -> tuple[str, Any]:
    key, sep, value = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"bad override {item!r}: expected KEY=VALUE, e.g. loss.invariance_weight=0.5", source="--set")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value
    return key, parsed


def loss_classes(methods: Iterable[str] = ()) -> list[type]:
    """The ``loss:`` dataclasses of every registered method and of ``methods`` (import paths a study names)."""
    from ...method.distillers import MethodError, get_method, method_names

    classes = []
    for name in dict.fromkeys([*method_names(), *methods]):
        try:
            cls = get_method(name).config_class
        except MethodError:
            continue  # the trial's own validation names what is wrong with its method
        if cls not in classes:
            classes.append(cls)
    return classes


def check_override_key(key: str, methods: Iterable[str] = ()) -> None:
    """A --set must name a key that exists in the schema (with a suggestion otherwise).

    A ``loss.`` key may be any method's: each trial's own method checks it again.
    """
    parts = key.split(".")
    top = parts[0]
    allowed = TRIAL_KEYS + STUDY_KEYS
    if top not in allowed:
        raise ConfigError(f"--set names no key: unknown key '{top}'{suggest(top, allowed)}", key, source="--set")
    cls: Any = TrialConfig if top in TRIAL_KEYS else StudySettings
    path = ""
    for i, part in enumerate(parts):
        if cls in (dict, Any) or cls is None:
            return
        if not dataclasses.is_dataclass(cls):
            raise ConfigError(f"--set names no key: '{path}' has no sub-keys", key, source="--set")
        owners = loss_classes(methods) if cls is LossConfig else [cls]
        names = list(dict.fromkeys(f.name for c in owners for f in dataclasses.fields(c)))
        if part not in names:
            raise ConfigError(f"--set names no key: unknown key '{part}'{suggest(part, names)}", join_path(path, part), source="--set")
        cls = next(c for c in owners if part in {f.name for f in dataclasses.fields(c)})
        hint = typing.get_type_hints(cls)[part]
        if typing.get_origin(hint) is dict or hint is dict:
            return
        args = [a for a in typing.get_args(hint) if dataclasses.is_dataclass(a)]
        cls = hint if dataclasses.is_dataclass(hint) else (args[0] if args else None)
        path = join_path(path, part)
        if cls is None and i < len(parts) - 1:
            raise ConfigError(f"--set names no key: '{path}' has no sub-keys", key, source="--set")

