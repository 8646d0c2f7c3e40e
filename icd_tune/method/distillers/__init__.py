"""Distillation methods: a study's ``method:`` -> a ``Distiller`` class (the contract is in ``base.py``).

A method in this package is one module in this folder plus its line in ``METHODS``,
which names the class by import path. A method from anywhere else is named by its
import path in the study itself (``method: mypkg.mymethod:MyDistiller``); it must be
importable on the driver and on every Ray worker. Classes are imported when first asked
for, so that reading a config never imports a method it does not use, and a method may
import the config without an import circle.
"""

from __future__ import annotations

import importlib

METHODS: dict[str, str] = {
    "icd": "icd_tune.method.distillers.icd:ICDDistiller",
    "ce": "icd_tune.method.distillers.ce:CrossEntropy",
    "dkd": "icd_tune.method.distillers.dkd:DKDDistiller",
    "crd": "icd_tune.method.distillers.crd:CRDDistiller",
    "rrd": "icd_tune.method.distillers.rrd:RRDDistiller",
}


class MethodError(ValueError):
    """A study names a method that does not exist, cannot be imported or does not fit the contract."""


def get_method(name: str) -> type:
    """The Distiller class a study's ``method:`` names: a registered name or ``module:Class``."""
    from .base import contract_problems

    if name in METHODS:
        path = METHODS[name]
    elif ":" in name:
        path = name
    else:
        from ..schema import suggest

        raise MethodError(f"unknown method '{name}'{suggest(name, METHODS)}, or a class by import path "
                          f"(module:Class)")
    module, _, attr = path.partition(":")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except ImportError as err:
        raise MethodError(f"method '{name}': cannot import module '{module}' ({err}); it must be importable "
                          f"on the driver and on every Ray worker (installed, or on PYTHONPATH)") from None
    except AttributeError:
        raise MethodError(f"method '{name}': module '{module}' has no '{attr}'") from None
    problems = contract_problems(cls)
    if problems:
        raise MethodError(f"method '{name}' does not fit the method contract (icd_tune.method.distillers.base): "
                          f"it needs {'; '.join(problems)}")
    if not cls.__dict__.get("method_name"):
        cls.method_name = name
    return cls


def import_root(method: str) -> str | None:
    """The sys.path folder a method named by import path is found under here; None for a registered method."""
    if method in METHODS or ":" not in method:
        return None
    import importlib.util
    import sys
    from pathlib import Path

    top = method.partition(":")[0].split(".")[0]
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations:  # a package: its folder's parent is on sys.path
        where = Path(next(iter(spec.submodule_search_locations))).parent
    elif spec.origin:
        where = Path(spec.origin).parent
    else:
        return None
    return next((p for p in sys.path if p and Path(p).resolve() == where.resolve()), str(where))


def method_names() -> tuple[str, ...]:
    return tuple(METHODS)


def methods_with_loss_key(key: str) -> list[str]:
    """The registered methods whose ``loss:`` section has ``key``."""
    import dataclasses

    return [name for name in METHODS if key in {f.name for f in dataclasses.fields(get_method(name).config_class)}]


def uses_teacher(method: str, loss) -> bool:
    """Whether a trial with this method and ``loss:`` section reads a teacher: KD's weight, or the method's own terms."""
    return loss.kd_weight > 0 or get_method(method).needs_teacher(loss)
