"""``mode: compare``: several methods, each tuned with the same budget, then retrained on the same seeds.

A comparison has two phases. **search**: each listed method is tuned by its own Optuna +
ASHA search on validation, over its own hyperparameters (``search_spaces/<method>.yaml``
unless the study names other spaces), with the same number of trials, the same epochs and the
same ASHA settings as every other method. **confirm**: one grid that retrains each method's
best configuration and its default (the study's settings for it, the published ones in the
shipped studies) over every seed of the study, so that methods are paired by seed.

Each phase is an ordinary study built from the comparison's own file (``build`` is
``definition.build_study``, passed in to keep this module out of an import circle), so every
check a search or a grid gets applies to it too: a search key the method does not read is
refused like any unknown key, naming it and its file.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ...method.schema import ConfigError, check_keys, flatten, join_path, require, to_dict
from .trials import in_space, loss_keys, set_path

COMPARE_KEYS = ("methods", "reference", "allow_unequal_budgets")
METHOD_KEYS = ("method", "set", "spaces", "space", "num_samples", "asha")
# The default search space of each method: search_spaces/<method>.yaml beside the package.
SHIPPED_SPACES = Path(__file__).resolve().parents[3] / "search_spaces"
DEFAULT_SUFFIX = " (default)"
SEARCH, CONFIRM = "search", "confirm"


@dataclass
class Arm:
    """One method of a comparison: its label, its settings (the default), its search phase."""

    label: str
    method: str
    sets: dict[str, Any]  # dotted key -> value: the method and its default settings
    search: Any  # definition.Study, mode search
    slug: str  # the label as it may appear in a folder or experiment name

    @property
    def default_label(self) -> str:
        return self.label + DEFAULT_SUFFIX

    def budget(self) -> dict[str, Any]:
        settings = self.search.settings
        asha = settings.asha
        return {"num_samples": settings.search.num_samples, "epochs": self.search.epochs,
                "asha": {"enabled": asha.enabled, "grace_period": asha.grace_period,
                         "reduction_factor": asha.reduction_factor} if asha.enabled else {"enabled": False}}

    def default_config(self) -> dict[str, Any]:
        """The searched keys' values in the method's default configuration (its settings, else its own defaults)."""
        flat = flatten(to_dict(self.search.trial_config({}, self.search.settings.seeds[0])))
        return {key: flat.get(key) for key in self.search.space}

    def is_default(self, overrides: dict[str, Any]) -> bool:
        """Whether ``overrides`` (a search's best) leave every searched key at the method's default."""
        return all(overrides.get(k, v) == v for k, v in self.default_config().items())

    def describe_budget(self) -> str:
        b = self.budget()
        asha = b["asha"]
        rule = (f"ASHA grace {asha['grace_period']}, factor {asha['reduction_factor']:g}" if asha["enabled"]
                else "no ASHA")
        return f"{b['num_samples']} trials x {b['epochs']} epochs, {rule}"


@dataclass
class Comparison:
    name: str
    reference: str
    arms: list[Arm]
    allow_unequal: bool
    seeds: list[int]
    data: dict  # the merged study data, to build the confirm phase from
    path: Path
    build: Callable[[dict, Path], Any] = field(repr=False)

    @property
    def labels(self) -> list[str]:
        return [arm.label for arm in self.arms]

    def arm(self, label: str) -> Arm:
        return next(a for a in self.arms if a.label == label)

    def unequal_budgets(self) -> bool:
        return len({json.dumps(a.budget(), sort_keys=True) for a in self.arms}) > 1

    def search_trial_epochs(self) -> int:
        return sum(a.search.planned_trials() * a.search.max_epochs() for a in self.arms)

    def confirm_study(self, best: dict[str, dict[str, Any]]):
        """The confirm grid: per method its ``best`` overrides and its default, over every seed.

        A search whose best is the default (it tries the default first) confirms one arm: the same
        configuration twice would train the same trials twice.
        """
        levels = []
        for arm in self.arms:
            levels.append({"label": arm.label, "set": {**arm.sets, **best[arm.label]}})
            if not arm.is_default(best[arm.label]):
                levels.append({"label": arm.default_label, "set": dict(arm.sets)})
        data = {k: copy.deepcopy(v) for k, v in self.data.items() if k not in ("compare", "search", "asha")}
        data.update(name=f"{self.name}-confirm", mode="grid", grid={"method": {"levels": levels}},
                    baseline=self.reference, seeds=list(self.seeds))
        try:
            return self.build(data, self.path)
        except ConfigError as err:
            raise ConfigError(f"{err.message} (in the comparison's confirm phase)", err.key_path) from None

    def smoke_study(self):
        """What --smoke runs: the confirm grid at every method's default (its first point per method)."""
        return self.confirm_study({arm.label: {} for arm in self.arms})

    def default_best(self) -> dict[str, dict[str, Any]]:
        """Each method's search-space centre: a stand-in for the best configuration before any search ran."""
        return {arm.label: dict(arm.search.first_point().overrides) for arm in self.arms}


def compare_methods(data: dict) -> list[str]:
    """The methods a comparison's file names (their loss keys are allowed in its shared loss section)."""
    spec = data.get("compare")
    methods = spec.get("methods") if isinstance(spec, dict) else None
    if not isinstance(methods, dict):
        return []
    found = []
    for label, entry in methods.items():
        entry = entry if isinstance(entry, dict) else {}
        sets = entry.get("set") if isinstance(entry.get("set"), dict) else {}
        found.append(sets.get("method", entry.get("method", str(label).lower())))
    return [m for m in found if isinstance(m, str)]


def slug_of(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", label)


def build_comparison(data: dict, path: Path, build: Callable[[dict, Path], Any]) -> Comparison:
    spec = data.get("compare")
    require(isinstance(spec, dict) and bool(spec), "mode: compare needs a compare section: compare: {reference: ICD, "
            "methods: {ICD: {method: icd}, CRD: {method: crd}}}", "compare")
    check_keys(spec, COMPARE_KEYS, "compare")
    methods = spec.get("methods")
    require(isinstance(methods, dict) and len(methods) >= 2,
            f"bad value {methods!r}: a comparison needs at least two methods, a mapping of labels to their "
            f"settings", "compare.methods")
    reference = spec.get("reference")
    require(reference in methods, f"bad value {reference!r}: the reference method must be one of the compared "
            f"methods {list(methods)}", "compare.reference")
    allow = spec.get("allow_unequal_budgets", False)
    require(isinstance(allow, bool), f"bad value {allow!r}: expected true or false", "compare.allow_unequal_budgets")
    require(data.get("register") is None, "a comparison ranks methods, and its best student is no method's "
            "winner; register from a study of the method you choose", "register")
    require(data.get("protocol", "validation") != "paper",
            "bad value 'paper': a comparison tunes every method on validation, and protocol paper has no "
            "validation split; use protocol: validation", "protocol")
    arms = [_arm(data, str(label), entry, path, build) for label, entry in methods.items()]
    slugs = [a.slug for a in arms]
    require(len(set(slugs)) == len(slugs), f"bad value {list(methods)!r}: labels must differ in their letters, "
            f"digits, '-' and '_' (they name the phases' folders: {slugs})", "compare.methods")
    comparison = Comparison(str(data["name"]), str(reference), arms, allow, list(data.get("seeds", [0])), data, path,
                            build)
    if not allow:
        check_equal_budgets(comparison, methods)
    comparison.confirm_study(comparison.default_best())  # its levels are valid before any search runs
    return comparison


def _arm(data: dict, label: str, entry: Any, path: Path, build) -> Arm:
    mpath = join_path("compare.methods", label)
    entry = {} if entry is None else entry
    if not isinstance(entry, dict):
        raise ConfigError(f"bad value {entry!r}: expected a mapping (method, set, spaces, space, num_samples, "
                          f"asha)", mpath)
    check_keys(entry, METHOD_KEYS, mpath)
    sets = entry.get("set", {})
    require(isinstance(sets, dict), f"bad value {sets!r}: expected a mapping of dotted keys to values",
            join_path(mpath, "set"))
    method = str(sets.get("method", entry.get("method", label.lower())))
    sets = {"method": method, **{k: v for k, v in sets.items() if k != "method"}}
    phase = search_phase_data(data, label, method, sets, entry, mpath)
    try:
        search = build(phase, path)
    except ConfigError as err:
        raise ConfigError(f"{err.message} (in the search of {mpath})", err.key_path) from None
    arm = Arm(label, method, sets, search, slug_of(label))
    default = arm.default_config()
    if not search.settings.search.points_to_evaluate and all(in_space(search.space[k], v) for k, v in default.items()):
        # Every method's search tries its default first: tuning then never starts below where the method stands.
        search.settings.search.points_to_evaluate = [default]
    return arm


def search_phase_data(data: dict, label: str, method: str, sets: dict, entry: dict, mpath: str) -> dict:
    """The comparison's file as the search study of one method: its settings, its space, the shared budget."""
    phase = {k: copy.deepcopy(v) for k, v in data.items() if k != "compare"}
    phase.update(name=f"{data['name']}-search-{slug_of(label)}", mode="search", seeds=list(data.get("seeds", [0]))[:1])
    own = loss_keys(method)
    if isinstance(phase.get("loss"), dict) and own is not None:  # the other methods' settings stay theirs
        phase["loss"] = {k: v for k, v in phase["loss"].items() if k in own}
    search = dict(phase.get("search") or {})
    spaces = entry.get("spaces")
    require(spaces is None or isinstance(spaces, list), f"bad value {spaces!r}: expected a list of files",
            join_path(mpath, "spaces"))
    if spaces is None:  # the method's shipped space; `space` adds or replaces keys
        shipped = SHIPPED_SPACES / f"{method}.yaml"
        require(shipped.is_file(), f"method {method!r} has no search space under {SHIPPED_SPACES}: give its "
                f"spaces (files) or space (a mapping)", join_path(mpath, "spaces"))
        spaces = [str(shipped)]
    search["spaces"] = list(search.get("spaces", [])) + list(spaces)
    search["space"] = {**(search.get("space") or {}), **(entry.get("space") or {})}
    if "num_samples" in entry:
        search["num_samples"] = entry["num_samples"]
    phase["search"] = search
    if "asha" in entry:
        require(isinstance(entry["asha"], dict), f"bad value {entry['asha']!r}: expected a mapping",
                join_path(mpath, "asha"))
        phase["asha"] = {**(phase.get("asha") or {}), **entry["asha"]}
    for key, value in sets.items():
        set_path(phase, key, value)
    return phase


def check_equal_budgets(comparison: Comparison, methods: dict) -> None:
    """Every method gets the trials, epochs and ASHA settings of the reference."""
    ref = comparison.arm(comparison.reference)
    for arm in comparison.arms:
        budget, wanted = arm.budget(), ref.budget()
        if budget == wanted:
            continue
        field_ = next(k for k in ("num_samples", "epochs", "asha") if budget[k] != wanted[k])
        # The key is named where it was changed: in this method's entry, else in the reference's.
        changed = arm if _sets_budget(methods[arm.label], field_) or not _sets_budget(methods[ref.label], field_) else ref
        key = join_path(join_path("compare.methods", changed.label), "set.optim.epochs" if field_ == "epochs" else field_)
        raise ConfigError(f"unequal tuning budgets: {arm.label} gets {arm.describe_budget()}, {ref.label} gets "
                          f"{ref.describe_budget()}; every method gets the same trials, epochs and ASHA settings, "
                          f"or the comparison says nothing about the methods (set compare.allow_unequal_budgets: "
                          f"true to run it anyway; its report then says so first)", key)


def _sets_budget(entry: Any, field_: str) -> bool:
    entry = entry if isinstance(entry, dict) else {}
    if field_ == "epochs":
        sets = entry.get("set") if isinstance(entry.get("set"), dict) else {}
        return "optim.epochs" in sets
    return field_ in entry
