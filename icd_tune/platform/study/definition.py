"""Study files: YAML in, a validated study and its trial plan out, before anything runs.

A study file holds the trial defaults (the keys of ``TrialConfig``: student,
teacher, data, loss, optim, ...) beside the study's own keys (name, seeds,
mode, grid, search, asha, ...; see ``study_settings``). ``extends:`` merges a
parent file under it; ``--set key=value`` overrides any key afterwards
(``study_yaml``).
"""

from __future__ import annotations

import copy
import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ...method.config import TrialConfig
from ...method.data import train_size
from ...method.distillers import get_method
from ...method.schema import ConfigError, check_keys, coerce, from_dict, join_path, require, suggest, to_dict
from .compare import build_comparison, compare_methods
from .checks import check_modes, check_protocol, check_trials, protocol_defaults
from .settings import STUDY_KEYS, TRIAL_KEYS, StudySettings
from .files import check_override_key, load_with_extends, parse_override, read_yaml
from ..report.published import check_published
from .teachers import expand_teachers_dir
from .method_keys import check_set_loss_keys, other_methods_loss
from .trials import TrialPoint, in_space, keep_own_loss, set_path, short_name, trial_config

PARAM_TYPES = ("uniform", "loguniform", "int", "choice")

@dataclass
class Factor:
    name: str
    key: Optional[str]
    # Each level: (label, {dotted key: value}).
    levels: list[tuple[Any, dict[str, Any]]]


@dataclass
class Study:
    settings: StudySettings
    base: dict  # plain trial defaults (validated), without seed
    factors: list[Factor]
    space: dict[str, dict]  # dotted key -> parameter spec (search)
    source: str
    raw: dict  # the merged study data, for printing and logging
    overrides: list[str] = field(default_factory=list)  # the --set KEY=VALUE items, as given
    trial_methods: list[str] = field(default_factory=list)  # the methods its trials use, in plan order
    compare: Any = None  # compare.Comparison under mode compare: its phases are studies of their own

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def epochs(self) -> int:
        return int(self.base["optim"]["epochs"]) if "epochs" in self.base.get("optim", {}) else TrialConfig().optim.epochs

    def trial_config(self, overrides: dict[str, Any], seed: int) -> TrialConfig:
        """The study's trial defaults with a point's ``overrides`` and ``seed``, as ``trials.trial_config``."""
        return trial_config(self.base, overrides, seed)

    def grid_points(self) -> list[TrialPoint]:
        if self.compare is not None:
            return []
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
        overrides = {key: space_default(spec) for key, spec in self.space.items()}
        name = " ".join(f"{short_name(k)}={v}" for k, v in overrides.items()) + f" seed={self.settings.seeds[0]}"
        return TrialPoint(name, {}, self.settings.seeds[0], overrides)

    def planned_trials(self) -> int:
        if self.compare is not None:
            return sum(a.search.planned_trials() for a in self.compare.arms) + 2 * len(self.compare.arms) * len(self.settings.seeds)
        if self.settings.mode == "grid":
            return len(self.grid_points())
        return self.settings.search.num_samples

    def max_epochs(self) -> int:
        if self.settings.asha.enabled and self.settings.asha.max_epochs:
            return min(self.settings.asha.max_epochs, self.epochs)
        return self.epochs


def space_default(spec: dict) -> Any:
    kind = spec["type"]
    if kind == "choice":
        return spec["values"][0]
    if kind == "loguniform" or (kind == "int" and spec.get("log")):
        value = math.sqrt(spec["low"] * spec["high"])
    else:
        value = (spec["low"] + spec["high"]) / 2
    return int(round(value)) if kind == "int" else value


def load_study(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Study:
    path = Path(path)
    source = str(path)
    data = load_with_extends(path)
    parsed = [parse_override(item) for item in overrides]
    methods = study_methods(data) + [str(v) for k, v in parsed if k == "method"]
    for key, value in parsed:
        check_override_key(key, methods)
        set_path(data, key, value)
    try:
        study = build_study(data, path)
    except ConfigError as err:
        raise err.in_file(source)
    check_set_loss_keys(study, parsed)
    study.overrides = list(overrides)
    return study


def build_study(data: dict, path: Path) -> Study:
    check_keys(data, TRIAL_KEYS + STUDY_KEYS, "")
    expand_teachers_dir(data)
    if "seed" in data:
        raise ConfigError("unknown key 'seed'; did you mean 'seeds'? a study lists its seeds", "seed")
    seeds = data.get("seeds", [0])
    if not isinstance(seeds, list):
        raise ConfigError(f"bad value {seeds!r}: expected a list of integers", "seeds")
    for i, s in enumerate(seeds):
        if isinstance(s, bool) or not isinstance(s, int):
            raise ConfigError(f"bad value {s!r}: seeds must be integers", f"seeds[{i}]")
    settings = from_dict(StudySettings, {k: v for k, v in protocol_defaults(data).items() if k in STUDY_KEYS})
    check_modes(settings, data)
    base = {k: copy.deepcopy(v) for k, v in data.items() if k in TRIAL_KEYS}
    methods = study_methods(data)
    others = other_methods_loss(base, methods)
    # Validate the defaults alone first: errors then point at the study file's own keys.
    defaults = TrialConfig.from_dict(keep_own_loss({**base, "seed": settings.seeds[0]}))
    check_protocol(settings, defaults.protocol)
    base_plain = to_dict(defaults)
    base_plain.pop("seed")
    if others:  # kept for the trials of the methods they belong to; every other trial ignores them
        base_plain["loss"] = {**others, **base_plain["loss"]}
    if settings.mode == "compare":
        study = Study(settings, base_plain, [], {}, str(path), data)
        study.compare = build_comparison(data, path, build_study)
        study.trial_methods = list(dict.fromkeys(arm.method for arm in study.compare.arms))
        return study
    factors = _parse_factors(settings.grid, settings, methods) if settings.mode == "grid" else []
    space = _parse_space(settings, path, methods) if settings.mode == "search" else {}
    study = Study(settings, base_plain, factors, space, str(path), data)
    trials = _validate_points(study)
    study.trial_methods = list(dict.fromkeys(cfg.method for _, cfg in trials))
    check_trials(settings, trials)
    check_published(study)
    return study


def study_methods(data: dict) -> list[str]:
    """The methods a study file names, at its top and in its grid's levels (their loss keys are allowed)."""
    found = [data.get("method"), *compare_methods(data)]
    grid = data.get("grid")
    for spec in grid.values() if isinstance(grid, dict) else ():
        if not isinstance(spec, dict):
            continue
        for level in spec.get("levels") or []:
            if isinstance(level, dict):  # {label, set: {method: ..., ...}}
                found.append((level.get("set") or {}).get("method") if isinstance(level.get("set"), dict) else None)
            elif spec.get("key") == "method":  # a factor over the method itself
                found.append(level)
    return [m for m in found if isinstance(m, str)]


def _parse_factors(grid: dict, settings: StudySettings, methods: list[str]) -> list[Factor]:
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
                        check_override_key(str(dotted), methods)
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
                check_override_key(key, methods)
            except ConfigError as err:
                raise ConfigError(err.message.replace("--set names no key: ", ""), join_path(fpath, "key")) from None
        labels = [lab for lab, _ in levels]
        if len({repr(lab) for lab in labels}) != len(labels):
            raise ConfigError(f"bad value {labels!r}: levels repeat", join_path(fpath, "levels"))
        factors.append(Factor(str(name), key, levels))
    if settings.baseline is not None:
        _check_baseline(settings.baseline, factors)
    return factors


def _check_baseline(baseline: Any, factors: list[Factor]) -> None:
    """A level of the first factor, or ``{factor: level}`` for the factors compared with one of their levels."""
    if not factors:
        raise ConfigError("a baseline needs a grid factor", "baseline")
    if not isinstance(baseline, dict):
        labels = [lab for lab, _ in factors[0].levels]
        if baseline not in labels:
            raise ConfigError(f"bad value {baseline!r}: the baseline must be one of the first factor's levels {labels}, "
                              f"or a mapping of factor names to levels", "baseline")
        return
    by_name = {f.name: f for f in factors}
    for name, level in baseline.items():
        if name not in by_name:
            raise ConfigError(f"unknown key '{name}'{suggest(str(name), list(by_name))}: not a grid factor",
                              join_path("baseline", str(name)))
        labels = [lab for lab, _ in by_name[name].levels]
        if level not in labels:
            raise ConfigError(f"bad value {level!r}: not a level of grid factor '{name}' {labels}",
                              join_path("baseline", str(name)))


def _parse_space(settings: StudySettings, study_path: Path, methods: list[str]) -> dict[str, dict]:
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
                space[key] = _check_param(key, spec, "", methods)
            except ConfigError as err:
                raise err.in_file(str(p))
    for key, spec in settings.search.space.items():
        space[key] = _check_param(key, spec, "search.space", methods)
    if not space:
        raise ConfigError("a search needs parameters: list files under search.spaces or write search.space", "search")
    for i, point in enumerate(settings.search.points_to_evaluate):
        require(isinstance(point, dict) and set(point) == set(space) and all(in_space(space[k], v) for k, v in point.items()),
                f"bad value {point!r}: expected a value inside the space for each of its keys {list(space)}",
                f"search.points_to_evaluate[{i}]")
    return space


def _check_param(key: str, spec: Any, prefix: str, methods: list[str]) -> dict:
    path = join_path(prefix, key)
    try:
        check_override_key(key, methods)
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


# Up to this many corners of a search space are checked together; beyond it, one key at a time.
MAX_CORNERS = 256


def _space_extremes(space: dict[str, dict]) -> list[dict[str, Any]]:
    """Corner points of the search space: every bound and every choice, in every combination when few.

    All combinations catch what only keys together do (every loss weight at 0 drops the
    ICD terms); a large space is checked one key at a time, the others at their middle.
    """
    ends = {key: spec["values"] if spec["type"] == "choice" else [spec["low"], spec["high"]]
            for key, spec in space.items()}
    if math.prod(len(v) for v in ends.values()) <= MAX_CORNERS:
        return [dict(zip(ends, combo)) for combo in itertools.product(*ends.values())]
    points = []
    for key, values in ends.items():
        for v in values:
            points.append({k: (v if k == key else space_default(s)) for k, s in space.items()})
    return points


def _validate_points(study: Study) -> list[tuple[str, TrialConfig]]:
    """Every planned trial (a grid) or corner of the space (a search) resolved and validated."""
    settings = study.settings
    if settings.mode == "grid":
        candidates = [(p.name, p.overrides, p.seed) for p in study.grid_points()]
    else:
        candidates = [(_corner_name(o, settings.seeds[0]), o, settings.seeds[0]) for o in _space_extremes(study.space)]
    trials = []
    for name, overrides, seed in candidates:
        try:
            cfg = study.trial_config(overrides, seed)
        except ConfigError as err:
            raise ConfigError(f"{err.message} (in trial '{name}')", err.key_path) from None
        _check_data_sizes(cfg, name)
        trials.append((name, cfg))
    _check_asha(study)
    return trials


def _corner_name(overrides: dict[str, Any], seed: int) -> str:
    return "search space at " + " ".join(f"{short_name(k)}={v}" for k, v in overrides.items()) + f" seed={seed}"


def _check_data_sizes(cfg: TrialConfig, name: str) -> None:
    """Batches and negative counts the training split cannot supply, known before any data is loaded."""
    n = train_size(cfg.data)
    split = (f"the training split has {n} images ({cfg.data.name}, after holding out val_fraction "
             f"{cfg.data.val_fraction:g} for validation)")
    if cfg.optim.batch_size > n:
        raise ConfigError(f"bad value {cfg.optim.batch_size!r}: {split}, fewer than one batch; use a batch of at most "
                          f"{n} (in trial '{name}')", "optim.batch_size")
    teacher_batch = cfg.teacher.optim.batch_size
    if cfg.uses_teacher and not cfg.teacher.checkpoint and teacher_batch > n:
        raise ConfigError(f"bad value {teacher_batch!r}: the teacher is trained on this data and {split}, fewer than "
                          f"one batch; use a batch of at most {n} (in trial '{name}')", "teacher.optim.batch_size")
    too_many = get_method(cfg.method).check_sizes(cfg.loss, n, cfg.optim.batch_size)
    if too_many:
        message, key = too_many
        raise ConfigError(f"{message} (in trial '{name}')", key)


def _check_asha(study: Study) -> None:
    asha = study.settings.asha
    budget = study.max_epochs()
    if asha.enabled and asha.grace_period >= budget:
        # ASHA's first decision comes after grace_period epochs: at or past the budget it never stops a trial.
        allowed = {1: "nothing can be (a 1-epoch budget)", 2: "use 1"}.get(budget, f"use 1 to {budget - 1}")
        raise ConfigError(f"bad value {asha.grace_period!r}: ASHA's grace period must be below the epoch budget "
                          f"({budget} epochs, from optim.epochs or asha.max_epochs), or no trial is ever stopped early; "
                          f"{allowed}, or set asha.enabled: false", "asha.grace_period")


def resolved_study(study: Study) -> dict:
    """The study after ``extends`` and ``--set``, every default filled in: what runs."""
    from ...method.schema import to_dict

    settings = to_dict(study.settings)
    return {"name": settings.pop("name"), **study.base, **settings}
