"""Distillation methods: a YAML name -> a Distiller class.

A method is one module in this folder plus its line in ``METHODS`` below, which names
the class by import path. Classes are imported when first asked for, so that reading a
config (which checks the name) never imports a method, and a method may import the
config without an import circle. A Distiller's training step returns the student's
logits and a dict of named, unweighted loss terms; ``weights`` says how the training
loop sums them. Term names become metric names (``train/loss_<name>``).
"""

from __future__ import annotations

import importlib

METHODS: dict[str, str] = {
    "icd": "icd_tune.method.distillers.icd:ICDDistiller",
}


def get_method(name: str) -> type:
    if name not in METHODS:
        from ..schema import suggest

        raise ValueError(f"unknown method '{name}'{suggest(name, METHODS)}")
    module, _, attr = METHODS[name].partition(":")
    cls = getattr(importlib.import_module(module), attr)
    cls.method_name = name
    return cls


def method_names() -> tuple[str, ...]:
    return tuple(METHODS)
