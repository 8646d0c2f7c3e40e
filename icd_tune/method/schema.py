"""Turns plain data (parsed YAML) into typed, validated dataclasses.

Every error names the key path, the bad value and what is allowed, so a user
can fix a study file without reading code. The file name is added by the
caller that knows it (see ``ConfigError.in_file``).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin


class ConfigError(ValueError):
    """A configuration value is missing, misspelt, mistyped or out of range."""

    def __init__(self, message: str, key_path: str = "", source: str | None = None):
        self.message = message
        self.key_path = key_path
        self.source = source
        super().__init__(self._render())

    def _render(self) -> str:
        where = []
        if self.source:
            where.append(str(self.source))
        if self.key_path:
            where.append(f"key '{self.key_path}'")
        prefix = ", ".join(where)
        return f"{prefix}: {self.message}" if prefix else self.message

    def in_file(self, source: str) -> "ConfigError":
        if self.source is None:
            self.source = source
            self.args = (self._render(),)
        return self


def join_path(prefix: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{prefix}[{key}]"
    return f"{prefix}.{key}" if prefix else str(key)


def suggest(name: str, allowed: typing.Iterable[str]) -> str:
    allowed = list(allowed)
    close = difflib.get_close_matches(str(name), allowed, n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return f"{hint} allowed: {', '.join(allowed)}"


def check_keys(data: dict, allowed: typing.Iterable[str], path: str) -> None:
    allowed = list(allowed)
    for key in data:
        if key not in allowed:
            raise ConfigError(f"unknown key '{key}'{suggest(key, allowed)}", join_path(path, key))


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " or ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp) if a is not type(None))
    if origin in (tuple, list):
        return f"a list of {_type_name(get_args(tp)[0])}"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


def coerce(value: Any, tp: Any, path: str) -> Any:
    """Checks ``value`` against the annotation ``tp`` and converts it (ints to floats etc.)."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        # Compare types too: YAML's `true` must not match a literal 1.
        if any(type(a) is type(value) and a == value for a in get_args(tp)):
            return value
        # YAML 1.1 reads a bare on/off as a boolean; take it back where the setting means on/off.
        if isinstance(value, bool) and {"on", "off"} <= set(get_args(tp)):
            return "on" if value else "off"
        raise ConfigError(f"bad value {value!r}{suggest(value, [str(a) for a in get_args(tp)])}", path)
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        blocks = [o for o in options if dataclasses.is_dataclass(o)]
        if isinstance(value, dict) and len(blocks) == 1:
            return coerce(value, blocks[0], path)  # a mapping is meant as the block: its own errors say more
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return coerce(value, option, path)
            except ConfigError as err:
                errors.append(err)
        raise ConfigError(f"bad value {value!r}: expected {_type_name(tp)}", path)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"bad value {value!r}: expected {_type_name(tp)}", path)
        item_type = get_args(tp)[0]
        items = [coerce(v, item_type, join_path(path, i)) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"bad value {value!r}: expected a mapping", path)
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"bad value {value!r}: expected a mapping", path)
        return from_dict(tp, value, path)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            # YAML 1.1 reads "5e-4" as a string; accept what is plainly a number.
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        raise TypeError(f"unsupported annotation {tp!r} at {path}")
    raise ConfigError(f"bad value {value!r}: expected {_type_name(tp)}", path)


def from_dict(cls: type, data: dict, path: str = "", field_types: typing.Mapping[str, type] | None = None) -> Any:
    """Builds dataclass ``cls`` from ``data``; missing keys take the field defaults.

    ``field_types`` reads the named fields as these dataclasses instead of their annotations
    (a trial's ``loss`` section is its method's config class).
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"bad value {data!r}: expected a mapping", path)
    hints = {**typing.get_type_hints(cls), **(field_types or {})}
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    check_keys(data, fields, path)
    kwargs = {}
    for name, field in fields.items():
        key_path = join_path(path, name)
        if name in data:
            kwargs[name] = coerce(data[name], hints[name], key_path)
        elif field_types and name in field_types:
            kwargs[name] = coerce({}, field_types[name], key_path)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError("required key is missing", key_path)
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate(path)
    return obj


def to_dict(obj: Any) -> Any:
    """Plain-data form of a config (lists, not tuples), safe for YAML and MLflow."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    """``{'loss': {'w': 1}}`` -> ``{'loss.w': 1}``; lists stay values."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        path = join_path(prefix, key)
        if isinstance(value, dict) and value:
            out.update(flatten(value, path))
        else:
            out[path] = value
    return out


def require(condition: bool, message: str, path: str) -> None:
    if not condition:
        raise ConfigError(message, path)
