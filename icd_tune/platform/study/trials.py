"""What a trial is: a planned point, its resolved and validated config, the name it is shown under.

``trial_config`` is the one way a study's trial defaults, a point's overrides and
a seed become a ``TrialConfig``; the study, the Tune trainable, the single-trial
command and the tests all go through it.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Union

from ...method.config import DEFAULT_METHOD, TeacherConfig, TrialConfig, method_config_class
from ...method.schema import ConfigError, flatten, join_path

# Where a trial runs and finds its inputs, not what it computes: free to change between a
# run and its --resume (--gpus-per-trial turns device auto into cpu, --data-dir sets data.root).
PLACEMENT_KEYS = frozenset({"device", "data.root", "data.download", "teacher.cache_dir", "transfer.root",
                            "transfer.download"})

# Dotted key -> value, applied in order (a list keeps repeated keys of a command line).
Overrides = Union[Mapping[str, Any], Iterable[tuple[str, Any]]]


@dataclass
class TrialPoint:
    """One planned trial: its display name, factor levels, seed and key overrides."""

    name: str
    levels: dict[str, Any]
    seed: int
    overrides: dict[str, Any]

    def to_config(self) -> dict:
        return {"name": self.name, "levels": self.levels, "seed": self.seed, "overrides": self.overrides}


def short_name(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def set_path(data: dict, dotted: str, value: Any) -> None:
    node = data
    *parents, leaf = dotted.split(".")
    for p in parents:
        child = node.get(p)
        if not isinstance(child, dict):
            child = {}
            node[p] = child
        node = child
    node[leaf] = value


def in_space(spec: dict, value: Any) -> bool:
    """Whether ``value`` lies in a search-space parameter (``definition._check_param``'s form)."""
    if spec["type"] == "choice":
        return value in spec["values"]
    return isinstance(value, (int, float)) and not isinstance(value, bool) and spec["low"] <= value <= spec["high"]


def expand_arch(data: dict) -> dict:
    """A plain trial dict with ``{arch}`` in its teacher checkpoint replaced by its teacher.arch."""
    teacher = data.get("teacher")
    path = teacher.get("checkpoint") if isinstance(teacher, dict) else None
    if isinstance(path, str) and "{arch}" in path:
        arch = teacher.get("arch", TeacherConfig().arch)
        data["teacher"] = {**teacher, "checkpoint": path.replace("{arch}", str(arch))}
    return data


def trial_dict(base: Mapping, overrides: Overrides, seed: Any) -> dict:
    """The plain trial config, before validation: ``base`` with ``overrides`` and ``seed`` set.

    ``base``'s ``loss:`` may hold the settings of several methods (a study of CRD and ICD
    levels inherits ICD's); a trial keeps those of its own method and the ones its point sets.
    """
    data = copy.deepcopy(dict(base))
    items = list(overrides.items() if isinstance(overrides, Mapping) else overrides)
    for key, value in items:
        set_path(data, key, value)
    data["seed"] = seed
    keep_own_loss(data, [key for key, _ in items])
    return expand_arch(data)  # a checkpoint template names each trial's own teacher


def loss_key_name(dotted: str) -> str | None:
    """``loss.X`` (or ``loss.X.Y``) -> X: the ``loss:`` key a dotted override sets; None for any other key."""
    return dotted.split(".")[1] if dotted.startswith("loss.") else None


def loss_keys(method: Any) -> frozenset[str] | None:
    """The ``loss:`` keys of ``method``; None when it names no method (its validation says why)."""
    try:
        return frozenset(f.name for f in dataclasses.fields(method_config_class(str(method))))
    except ConfigError:
        return None


def keep_own_loss(data: dict, set_keys: Iterable[str] = ()) -> dict:
    """Drops from ``data['loss']`` the inherited settings of other methods (never a key in ``set_keys``)."""
    loss, set_keys = data.get("loss"), list(set_keys)
    own = loss_keys(data.get("method", DEFAULT_METHOD))
    if not isinstance(loss, dict) or own is None or "loss" in set_keys:
        return data
    given = {loss_key_name(key) for key in set_keys} - {None}
    data["loss"] = {k: v for k, v in loss.items() if k in own or k in given}
    return data


def check_own_loss(data: dict, set_keys: Iterable[str]) -> None:
    """A point may set only its own method's ``loss:`` keys: another method's is a mistake, named."""
    method = data.get("method", DEFAULT_METHOD)
    own = loss_keys(method)
    if own is None:
        return
    for key in set_keys:
        name = loss_key_name(key)
        if name and name not in own:
            from ...method.distillers import methods_with_loss_key

            owners = methods_with_loss_key(name)
            if owners:
                raise ConfigError(f"'{name}' is a setting of method {', '.join(repr(m) for m in owners)}, not of "
                                  f"this trial's method '{method}' (its keys: {', '.join(sorted(own))}); set it "
                                  f"only on the trials of {'that method' if len(owners) == 1 else 'those methods'}",
                                  join_path("loss", name))


def trial_config(base: Mapping, overrides: Overrides, seed: Any) -> TrialConfig:
    """``base`` (plain trial defaults) with a point's ``overrides`` and ``seed``, validated."""
    items = list(overrides.items() if isinstance(overrides, Mapping) else overrides)
    data = trial_dict(base, items, seed)
    check_own_loss(data, [key for key, _ in items])
    return TrialConfig.from_dict(data)


def point_of(config: dict, default_seed: int) -> TrialPoint:
    """A Tune trial config -> the trial's seed, overrides and display name."""
    if "point" in config:
        p = config["point"]
        return TrialPoint(p["name"], dict(p["levels"]), int(p["seed"]), dict(p["overrides"]))
    overrides = dict(config.get("params", {}))
    seed = int(config.get("seed", default_seed))
    name = " ".join(f"{short_name(k)}={_format_value(v)}" for k, v in overrides.items()) + f" seed={seed}"
    return TrialPoint(name, {}, seed, overrides)


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


@dataclass
class TrialDescriber:
    """Tune trial config -> (display name, flat params as logged): how trials are shown and recorded.

    The params flatten the plain resolved dict, not the validated config, so a level
    written ``0`` is logged as ``0``, as the study file has it.
    """

    base: dict
    default_seed: int

    def __call__(self, config: dict) -> tuple[str, dict]:
        point = point_of(config, self.default_seed)
        params = flatten(trial_dict(self.base, point.overrides, point.seed))
        params.update({f"level.{k}": v for k, v in point.levels.items()})
        return point.name, params


# Optional blocks whose null is the same trial as their absence (configs written before they existed).
OPTIONAL_BLOCKS = frozenset({"transfer"})


def definition(config: Mapping) -> dict[str, Any]:
    """A plain trial config as flat dotted keys, placement left out: what two runs must share to be one trial."""
    return {k: v for k, v in flatten(dict(config)).items()
            if k not in PLACEMENT_KEYS and not (k in OPTIONAL_BLOCKS and v is None)}


def changed_keys(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """``key: old -> new`` for each flat key that differs (``absent`` where one side lacks it)."""
    missing = object()
    lines = []
    for key in sorted(set(old) | set(new), key=str):
        before, after = old.get(key, missing), new.get(key, missing)
        if before != after:
            show = ["absent" if v is missing else repr(v) for v in (before, after)]
            lines.append(f"{key}: {show[0]} -> {show[1]}")
    return lines


class CheckpointMismatchError(RuntimeError):
    """A trial's checkpoint was written for another config; continuing it would mix two trials."""


def check_checkpoint_config(saved: Mapping | None, cfg: TrialConfig, trial: str) -> None:
    """Refuses a checkpoint whose stored config differs from the trial's resolved config (placement aside)."""
    if saved is None:
        raise CheckpointMismatchError(f"the checkpoint of trial '{trial}' records no config; refusing to continue it")
    changes = changed_keys(definition(saved), definition(cfg.to_dict()))
    if changes:
        raise CheckpointMismatchError(
            f"the checkpoint of trial '{trial}' was written for another config ({'; '.join(changes)}); refusing to "
            f"continue it under this one: start a new run, or resume with the config it was started with")
