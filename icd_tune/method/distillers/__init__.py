"""Distillation methods: a YAML name -> a Distiller class.

A method is one module with a class decorated by ``@register_method("name")``
plus its import line below. A Distiller's training step returns the student's
logits and a dict of named, unweighted loss terms; ``weights`` says how the
training loop sums them. Term names become metric names (``train/loss_<name>``).
"""

from __future__ import annotations

from typing import Callable

_METHODS: dict[str, type] = {}


def register_method(name: str) -> Callable[[type], type]:
    def decorate(cls: type) -> type:
        if name in _METHODS:
            raise ValueError(f"method '{name}' registered twice")
        _METHODS[name] = cls
        cls.method_name = name
        return cls

    return decorate


def get_method(name: str) -> type:
    if name not in _METHODS:
        from ..schema import suggest

        raise ValueError(f"unknown method '{name}'{suggest(name, _METHODS)}")
    return _METHODS[name]


def method_names() -> tuple[str, ...]:
    return tuple(_METHODS)


from . import icd  # noqa: E402,F401  (registers "icd")
