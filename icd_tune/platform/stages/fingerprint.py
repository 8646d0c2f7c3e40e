"""A run's fingerprint: everything that defines its trials, so that ``--resume`` never mixes two studies.

Written to the run's state file when the run starts. ``--resume`` resolves the
study again and compares: a changed definition (a loss weight, the metric, a
level's keys, a removed trial) is refused with each changed key; only adding
trials (more seeds, more levels, more samples) is told apart: the finished trials
are kept and the added ones run in an experiment of their own beside the first
(Ray Tune runs a restored experiment's own trials and adds none). Where
trials run (devices, CPUs, concurrency, the cluster, the data folder) may change
freely; a different code commit or icd-tune version is a warning.
"""

from __future__ import annotations

import hashlib
import json
import time
from importlib import metadata
from pathlib import Path

from ...method.schema import flatten, to_dict
from ..preflight import StudyRunError
from ..study.definition import Study
from ..study.trials import TrialPoint, changed_keys, definition
from ..versions import git_commit

FINGERPRINT_KEY = "fingerprint"
# How many added or changed trials a message lists by name before it counts the rest.
LISTED = 8


def study_fingerprint(study: Study, base: dict, points: list[TrialPoint] | None, max_epochs: int,
                      smoke: bool) -> dict:
    """The run's trial definitions, their digest, and (for information) the code that started it.

    ``points`` are a grid's trials, None for a search; ``base`` the run's plain trial defaults.
    """
    settings = study.settings
    searching = points is None
    defined = {
        "mode": "search" if searching else "grid",
        "metric": settings.metric,
        "metric_mode": settings.metric_mode,
        "max_epochs": max_epochs,
        # Settings of a disabled ASHA define nothing.
        "asha": to_dict(settings.asha) if settings.asha.enabled and not smoke else {"enabled": False},
        "seeds": list(settings.seeds),
        "base": definition(base),
    }
    if searching:
        search = settings.search
        defined["search"] = {"space": study.space, "seed": search.seed, "trial_seed": settings.seeds[0],
                             "num_samples": search.num_samples}
    else:
        defined["trials"] = {p.name: {"seed": p.seed, "overrides": p.overrides} for p in points}
    # As the state file will hold it, so a fresh resolution compares equal to a stored one.
    defined = json.loads(json.dumps(defined, default=str))
    digest = hashlib.sha256(json.dumps(defined, sort_keys=True).encode()).hexdigest()[:16]
    return {"definition": defined, "digest": digest, **code_version()}


def code_version() -> dict:
    try:
        version = metadata.version("icd-tune")
    except metadata.PackageNotFoundError:
        version = None
    return {"icd_tune_version": version, "git_commit": git_commit(), "at": time.strftime("%Y-%m-%dT%H:%M:%S")}


def check_resume(old: dict | None, new: dict, run_folder: Path) -> tuple[list[str], list[str]]:
    """Refuses a resume that would change trials; returns notes (warnings) and the names of added trials."""
    if old is None:
        return [f"note: {run_folder} records no fingerprint (started by an older icd-tune), so --resume cannot "
                f"check that its trials are unchanged; it records this resolution's from now on"], []
    changes, added = definition_changes(old["definition"], new["definition"])
    if changes:
        raise StudyRunError(
            f"--resume would mix two studies in {run_folder}: its trials were started with another definition.\n  "
            + "\n  ".join(changes)
            + "\nNothing was changed. Resume with the study as it was, or start a new run (without --resume).")
    notes = []
    for key, what in (("git_commit", "code commit"), ("icd_tune_version", "icd-tune version")):
        if old.get(key) and new.get(key) and old[key] != new[key]:
            notes.append(f"warning: this run was started at {what} {old[key]} and resumes at {new[key]}; its trials "
                         f"keep their configs, but the code that runs them changed")
    return notes, added


def definition_changes(old: dict, new: dict) -> tuple[list[str], list[str]]:
    """(``key: old -> new`` lines for changed or removed definitions, names of added trials)."""
    rest = ("base", "trials", "search", "seeds")
    changes = changed_keys(flatten({k: v for k, v in old.items() if k not in rest}),
                           flatten({k: v for k, v in new.items() if k not in rest}))
    changes += changed_keys(old.get("base", {}), new.get("base", {}))
    if old.get("mode") != new.get("mode"):
        return changes, []
    if new.get("mode") == "search":
        return _search_changes(old["search"], new["search"], changes)
    old_trials, new_trials = old.get("trials", {}), new.get("trials", {})
    removed = [name for name in old_trials if name not in new_trials]
    added = [name for name in new_trials if name not in old_trials]
    seeds = f" (seeds {old['seeds']} -> {new['seeds']})" if old.get("seeds") != new.get("seeds") else ""
    if removed:
        changes.append(f"trials: {listed(removed)} planned -> absent{seeds}")
    for name in old_trials:
        if name in new_trials:
            changes += [f"trial '{name}' {line}" for line in
                        changed_keys(flatten(old_trials[name]), flatten(new_trials[name]))]
    if changes and added:
        changes.append(f"trials: {listed(added)} absent -> planned")
    return changes, added


def _search_changes(old: dict, new: dict, changes: list[str]) -> tuple[list[str], list[str]]:
    keep = lambda d: {k: v for k, v in d.items() if k != "num_samples"}  # noqa: E731
    changes += [f"search.{line}" for line in changed_keys(flatten(keep(old)), flatten(keep(new)))]
    before, after = old["num_samples"], new["num_samples"]
    if after < before:
        changes.append(f"search.num_samples: {before} -> {after}")
    return changes, [f"sample {i + 1}" for i in range(before, after)] if after > before else []


def listed(names: list[str]) -> str:
    shown = ", ".join(f"'{n}'" for n in names[:LISTED])
    return shown + (f" and {len(names) - LISTED} more" if len(names) > LISTED else "")
