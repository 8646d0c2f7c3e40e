"""Study files: YAML in, a validated study and its trial plan out, before anything runs.

A study file holds the trial defaults (the keys of ``TrialConfig``: student,
teacher, data, loss, optim, ...) beside the study's own keys (name, seeds,
mode, grid, search, asha, ...). ``extends:`` merges a parent file under it;
``--set key=value`` overrides any key afterwards.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from ..method.config import TrialConfig
from ..method.data import train_size
from ..method.losses import check_negative_count
from ..method.schema import ConfigError, check_keys, coerce, from_dict, join_path, require, suggest, to_dict

TRIAL_KEYS = tuple(f.name for f in dataclasses.fields(TrialConfig) if f.name != "seed")
PARAM_TYPES = ("uniform", "loguniform", "int", "choice")


@dataclass
class Factor:
    name: str
    key: Optional[str]
    # Each level: (label, {dotted key: value}).
    levels: list[tuple[Any, dict[str, Any]]]


@dataclass
class AshaConfig:
    enabled: bool = False
    grace_period: int = 10
    reduction_factor: float = 3.0
    # None means the trial's epoch budget.
    max_epochs: Optional[int] = None

    def validate(self, path: str) -> None:
        require(self.grace_period >= 1, f"bad value {self.grace_period!r}: expected at least 1 epoch", join_path(path, "grace_period"))
        require(self.reduction_factor > 1, f"bad value {self.reduction_factor!r}: expected a reduction factor > 1", join_path(path, "reduction_factor"))
        if self.max_epochs is not None:
            require(self.max_epochs >= 1, f"bad value {self.max_epochs!r}: expected at least 1", join_path(path, "max_epochs"))


@dataclass
class SearchConfig:
    spaces: list[str] = field(default_factory=list)
    space: dict = field(default_factory=dict)
    num_samples: int = 20
    seed: int = 0

    def validate(self, path: str) -> None:
        require(self.num_samples >= 1, f"bad value {self.num_samples!r}: expected at least 1 sample", join_path(path, "num_samples"))


@dataclass
class SmokeConfig:
    epochs: int = 1
    max_steps: int = 5
    teacher_epochs: int = 1

    def validate(self, path: str) -> None:
        for name in ("epochs", "max_steps", "teacher_epochs"):
            value = getattr(self, name)
            require(value >= 1, f"bad value {value!r}: expected at least 1", join_path(path, name))


@dataclass
class StudySettings:
    name: str = ""
    description: str = ""
    mode: Literal["grid", "search"] = "grid"
    seeds: list[int] = field(default_factory=lambda: [0])
    grid: dict = field(default_factory=dict)
    baseline: Any = None
    search: SearchConfig = field(default_factory=SearchConfig)
    asha: AshaConfig = field(default_factory=AshaConfig)
    metric: str = "val/acc1"
    metric_mode: Literal["max", "min"] = "max"
    report_metric: str = "test/acc1_at_best_val"
    max_retries: int = 2
    checkpoint_every: int = 1
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_concurrent: Optional[int] = None
    results_dir: str = "results"
    # Refuse to start with less free disk than this (or than the study's own estimate).
    min_free_gb: float = 1.0
    smoke: SmokeConfig = field(default_factory=SmokeConfig)

    def validate(self, path: str) -> None:
        require(bool(self.name), "required key is missing: every study needs a name", join_path(path, "name"))
        require(len(self.seeds) >= 1, "bad value []: expected at least one seed", join_path(path, "seeds"))
        require(len(set(self.seeds)) == len(self.seeds), f"bad value {self.seeds!r}: seeds repeat", join_path(path, "seeds"))
        require(self.max_retries >= 0, f"bad value {self.max_retries!r}: expected >= 0", join_path(path, "max_retries"))
        require(self.checkpoint_every >= 1, f"bad value {self.checkpoint_every!r}: expected >= 1", join_path(path, "checkpoint_every"))
        require(self.cpus_per_trial > 0, f"bad value {self.cpus_per_trial!r}: expected > 0", join_path(path, "cpus_per_trial"))
        require(self.gpus_per_trial >= 0, f"bad value {self.gpus_per_trial!r}: expected >= 0", join_path(path, "gpus_per_trial"))
        if self.max_concurrent is not None:
            require(self.max_concurrent >= 1, f"bad value {self.max_concurrent!r}: expected >= 1", join_path(path, "max_concurrent"))


STUDY_KEYS = tuple(f.name for f in dataclasses.fields(StudySettings))


@dataclass
class TrialPoint:
    """One planned trial: its display name, factor levels, seed and key overrides."""

    name: str
    levels: dict[str, Any]
    seed: int
    overrides: dict[str, Any]

    def to_config(self) -> dict:
        return {"name": self.name, "levels": self.levels, "seed": self.seed, "overrides": self.overrides}


@dataclass
class Study:
    settings: StudySettings
    base: dict  # plain trial defaults (validated), without seed
    factors: list[Factor]
    space: dict[str, dict]  # dotted key -> parameter spec (search)
    source: str
    raw: dict  # the merged study data, for printing and logging

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def epochs(self) -> int:
        return int(self.base["optim"]["epochs"]) if "epochs" in self.base.get("optim", {}) else TrialConfig().optim.epochs

    def trial_config(self, seed: int, overrides: dict[str, Any]) -> TrialConfig:
        data = copy.deepcopy(self.base)
        for key, value in overrides.items():
            set_path(data, key, value)
        data["seed"] = seed
        return TrialConfig.from_dict(data)

    def grid_points(self) -> list[TrialPoint]:
        points = []
        for seed in self.settings.seeds:
            for combo in itertools.product(*[f.levels for f in self.factors]) if self.factors else [()]:
                overrides: dict[str, Any] = {}
                levels = {}
                for factor, (label, sets) in zip(self.factors, combo):
                    overrides.update(sets)
                    levels[factor.name] = label
                name = " ".join([f"{k}={v}" for k, v in levels.items()] + [f"seed={seed}"])
                points.append(TrialPoint(name, levels, seed, overrides))
        # Seed-major order: the first trials to run cover every level once.
        return points

    def first_point(self) -> TrialPoint:
        if self.settings.mode == "grid":
            return self.grid_points()[0]
        overrides = {key: _space_default(spec) for key, spec in self.space.items()}
        name = " ".join(f"{short_name(k)}={v}" for k, v in overrides.items()) + f" seed={self.settings.seeds[0]}"
        return TrialPoint(name, {}, self.settings.seeds[0], overrides)

    def planned_trials(self) -> int:
        if self.settings.mode == "grid":
            return len(self.grid_points())
        return self.settings.search.num_samples

    def max_epochs(self) -> int:
        if self.settings.asha.enabled and self.settings.asha.max_epochs:
            return min(self.settings.asha.max_epochs, self.epochs)
        return self.epochs


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


def _space_default(spec: dict) -> Any:
    kind = spec["type"]
    if kind == "choice":
        return spec["values"][0]
    if kind == "loguniform" or (kind == "int" and spec.get("log")):
        value = math.sqrt(spec["low"] * spec["high"])
    else:
        value = (spec["low"] + spec["high"]) / 2
    return int(round(value)) if kind == "int" else value


# ---------------------------------------------------------------------------
# Loading


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


def _check_override_key(key: str) -> None:
    """A --set must name a key that exists in the schema (with a suggestion otherwise)."""
    parts = key.split(".")
    top = parts[0]
    allowed = TRIAL_KEYS + STUDY_KEYS
    if top not in allowed:
        raise ConfigError(f"--set names no key: unknown key '{top}'{suggest(top, allowed)}", key, source="--set")
    cls: Any = TrialConfig if top in TRIAL_KEYS else StudySettings
    path = ""
    import typing

    for i, part in enumerate(parts):
        if cls in (dict, Any) or cls is None:
            return
        if not dataclasses.is_dataclass(cls):
            raise ConfigError(f"--set names no key: '{path}' has no sub-keys", key, source="--set")
        names = [f.name for f in dataclasses.fields(cls)]
        if part not in names:
            raise ConfigError(f"--set names no key: unknown key '{part}'{suggest(part, names)}", join_path(path, part), source="--set")
        hint = typing.get_type_hints(cls)[part]
        if typing.get_origin(hint) is dict or hint is dict:
            return
        args = [a for a in typing.get_args(hint) if dataclasses.is_dataclass(a)]
        cls = hint if dataclasses.is_dataclass(hint) else (args[0] if args else None)
        path = join_path(path, part)
        if cls is None and i < len(parts) - 1:
            raise ConfigError(f"--set names no key: '{path}' has no sub-keys", key, source="--set")


def load_study(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Study:
    path = Path(path)
    source = str(path)
    data = load_with_extends(path)
    for item in overrides:
        key, value = parse_override(item)
        _check_override_key(key)
        set_path(data, key, value)
    try:
        return build_study(data, path)
    except ConfigError as err:
        raise err.in_file(source)


def build_study(data: dict, path: Path) -> Study:
    check_keys(data, TRIAL_KEYS + STUDY_KEYS, "")
    if "seed" in data:
        raise ConfigError("unknown key 'seed'; did you mean 'seeds'? a study lists its seeds", "seed")
    seeds = data.get("seeds", [0])
    if not isinstance(seeds, list):
        raise ConfigError(f"bad value {seeds!r}: expected a list of integers", "seeds")
    for i, s in enumerate(seeds):
        if isinstance(s, bool) or not isinstance(s, int):
            raise ConfigError(f"bad value {s!r}: seeds must be integers", f"seeds[{i}]")
    settings = from_dict(StudySettings, {k: v for k, v in data.items() if k in STUDY_KEYS})
    base = {k: copy.deepcopy(v) for k, v in data.items() if k in TRIAL_KEYS}
    # Validate the defaults alone first: errors then point at the study file's own keys.
    defaults = TrialConfig.from_dict({**base, "seed": settings.seeds[0]})
    base_plain = to_dict(defaults)
    base_plain.pop("seed")
    factors = _parse_factors(settings.grid, settings) if settings.mode == "grid" else []
    if settings.mode == "grid" and not factors and settings.grid:
        raise ConfigError("the grid is empty: give at least one factor with levels", "grid")
    space = _parse_space(settings, path) if settings.mode == "search" else {}
    study = Study(settings, base_plain, factors, space, str(path), data)
    _validate_points(study)
    return study


def _parse_factors(grid: dict, settings: StudySettings) -> list[Factor]:
    factors = []
    for name, spec in grid.items():
        fpath = join_path("grid", name)
        if isinstance(spec, list):
            spec = {"key": name, "levels": spec}
        if not isinstance(spec, dict):
            raise ConfigError(f"bad value {spec!r}: expected a list of levels or a mapping with 'key' and 'levels'", fpath)
        check_keys(spec, ("key", "levels"), fpath)
        key = spec.get("key")
        levels_raw = spec.get("levels")
        if not isinstance(levels_raw, list) or not levels_raw:
            raise ConfigError(f"bad value {levels_raw!r}: the grid is empty; expected a non-empty list of levels", join_path(fpath, "levels"))
        levels = []
        for i, level in enumerate(levels_raw):
            lpath = join_path(join_path(fpath, "levels"), i)
            if isinstance(level, dict):
                check_keys(level, ("label", "set"), lpath)
                sets = level.get("set")
                if not isinstance(sets, dict) or not sets:
                    raise ConfigError(f"bad value {sets!r}: expected a mapping of dotted keys to values", join_path(lpath, "set"))
                for dotted in sets:
                    try:
                        _check_override_key(str(dotted))
                    except ConfigError as err:
                        raise ConfigError(err.message.replace("--set names no key: ", ""), join_path(join_path(lpath, "set"), dotted)) from None
                label = level.get("label", " ".join(f"{short_name(k)}={v}" for k, v in sets.items()))
                levels.append((label, dict(sets)))
            else:
                if not key:
                    raise ConfigError("a scalar level needs the factor's 'key' (the dotted config key it sets)", join_path(fpath, "key"))
                levels.append((level, {key: level}))
        if key:
            try:
                _check_override_key(key)
            except ConfigError as err:
                raise ConfigError(err.message.replace("--set names no key: ", ""), join_path(fpath, "key")) from None
        labels = [lab for lab, _ in levels]
        if len({repr(lab) for lab in labels}) != len(labels):
            raise ConfigError(f"bad value {labels!r}: levels repeat", join_path(fpath, "levels"))
        factors.append(Factor(str(name), key, levels))
    if settings.baseline is not None:
        if not factors:
            raise ConfigError("a baseline needs a grid factor", "baseline")
        labels = [lab for lab, _ in factors[0].levels]
        if settings.baseline not in labels:
            raise ConfigError(f"bad value {settings.baseline!r}: the baseline must be one of the first factor's levels {labels}", "baseline")
    return factors


def _parse_space(settings: StudySettings, study_path: Path) -> dict[str, dict]:
    space: dict[str, dict] = {}
    for i, ref in enumerate(settings.search.spaces):
        p = (study_path.parent / ref)
        if not p.is_file():
            raise ConfigError(f"bad value {ref!r}: no such file {p.resolve()}", f"search.spaces[{i}]")
        try:
            content = read_yaml(p)
        except ConfigError as err:
            raise err.in_file(str(p))
        for key, spec in content.items():
            try:
                space[key] = _check_param(key, spec, "")
            except ConfigError as err:
                raise err.in_file(str(p))
    for key, spec in settings.search.space.items():
        space[key] = _check_param(key, spec, "search.space")
    if not space:
        raise ConfigError("a search needs parameters: list files under search.spaces or write search.space", "search")
    return space


def _check_param(key: str, spec: Any, prefix: str) -> dict:
    path = join_path(prefix, key)
    try:
        _check_override_key(key)
    except ConfigError as err:
        raise ConfigError(err.message.replace("--set names no key: ", ""), path) from None
    if not isinstance(spec, dict):
        raise ConfigError(f"bad value {spec!r}: expected a mapping with 'type' ({', '.join(PARAM_TYPES)})", path)
    kind = spec.get("type")
    if kind not in PARAM_TYPES:
        raise ConfigError(f"bad value {kind!r}{suggest(str(kind), PARAM_TYPES)}", join_path(path, "type"))
    if kind == "choice":
        check_keys(spec, ("type", "values"), path)
        values = spec.get("values")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"bad value {values!r}: expected a non-empty list", join_path(path, "values"))
        return {"type": kind, "values": list(values)}
    check_keys(spec, ("type", "low", "high", "log"), path)
    for bound in ("low", "high"):
        if bound not in spec:
            raise ConfigError("required key is missing", join_path(path, bound))
    tp = int if kind == "int" else float
    low = coerce(spec["low"], tp, join_path(path, "low"))
    high = coerce(spec["high"], tp, join_path(path, "high"))
    require(low < high, f"bad value {high!r}: expected high > low ({low})", join_path(path, "high"))
    log = bool(spec.get("log", kind == "loguniform"))
    if log:
        require(low > 0, f"bad value {low!r}: a log scale needs low > 0", join_path(path, "low"))
    return {"type": kind, "low": low, "high": high, "log": log}


def _space_extremes(space: dict[str, dict]) -> list[dict[str, Any]]:
    """Corner points of the search space: every bound and every choice is checked once."""
    points = []
    for key, spec in space.items():
        values = spec["values"] if spec["type"] == "choice" else [spec["low"], spec["high"]]
        for v in values:
            points.append({k: (v if k == key else _space_default(s)) for k, s in space.items()})
    return points


def _validate_points(study: Study) -> None:
    settings = study.settings
    if settings.mode == "grid":
        candidates = [(p.name, p.overrides, p.seed) for p in study.grid_points()]
    else:
        candidates = [("search space", o, settings.seeds[0]) for o in _space_extremes(study.space)]
    for name, overrides, seed in candidates:
        try:
            cfg = study.trial_config(seed, overrides)
        except ConfigError as err:
            raise ConfigError(f"{err.message} (in trial '{name}')", err.key_path) from None
        if cfg.loss.negatives.source == "memory" and cfg.loss.uses_icd:
            n = train_size(cfg.data)
            try:
                check_negative_count(cfg.loss.negatives.count, n, cfg.optim.batch_size)
            except ValueError as err:
                raise ConfigError(f"{err} (in trial '{name}')", "loss.negatives.count") from None


def study_summary(study: Study) -> dict:
    return {"study": to_dict(study.settings), "trial_defaults": study.base,
            "factors": {f.name: [lab for lab, _ in f.levels] for f in study.factors}, "space": study.space}
