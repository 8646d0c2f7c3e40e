"""``search.warm_start``: seed a new search with an earlier search's finished Optuna trials.

The earlier run is named by its run folder (its ``optuna.db``), the database file,
or an Optuna storage URL. Its COMPLETE trials are added with their values and
parameters, its PRUNED ones (stopped by ASHA, or diverged) as PRUNED with their
intermediate values, so TPE starts from what the earlier search learnt instead of
paying for it again. Failed and unfinished trials are left out. The two searches
must sample the same keys with the same kind of distribution and optimise in the
same direction; otherwise the study is refused (exit status 2) naming the keys.
A trial whose values fall outside a narrowed range is left out and counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..preflight import StudyRunError
from ..stages.run_files import OPTUNA_DB
from ..study.definition import Study
from .space import PARAM_PREFIX, optuna_distributions

WARM_START_ATTR = "warm_start_from"  # on the new study: where its seeded trials came from


@dataclass
class WarmStart:
    source: str  # storage URL
    study_name: str
    trials: list = field(default_factory=list)  # optuna FrozenTrials, ready for Study.add_trials
    outside: int = 0  # finished trials left out: a value outside this study's (narrowed) space
    skipped: int = 0  # failed or unfinished trials left out

    def describe(self) -> str:
        extra = f"; {self.outside} outside this space left out" if self.outside else ""
        return (f"warm start: {len(self.trials)} finished trials of '{self.study_name}' from {self.source}"
                f" ({self.skipped} failed or unfinished left out{extra})")


def storage_url(ref: str, study_dir: Path | None = None) -> str:
    """An Optuna storage URL for a run folder, a database file or a URL."""
    if "://" in ref:
        return ref
    path = Path(ref).expanduser()
    candidates = [path] if path.is_absolute() or study_dir is None else [path, study_dir / path]
    for p in candidates:
        db = p / OPTUNA_DB if p.is_dir() else p
        if db.is_file():
            return f"sqlite:///{db.resolve()}"
    raise StudyRunError(f"search.warm_start: no Optuna storage at {ref!r} (expected a run folder holding "
                        f"{OPTUNA_DB}, the file itself, or a storage URL)")


def source_study(url: str, name: str):
    import optuna

    try:
        names = [s.study_name for s in optuna.get_all_study_summaries(url, include_best_trial=False)]
    except Exception as err:  # a file that is no Optuna database
        raise StudyRunError(f"search.warm_start: cannot read the Optuna storage {url}: {err}") from None
    chosen = name if name in names else (names[0] if len(names) == 1 else None)
    if chosen is None:
        raise StudyRunError(f"search.warm_start: {url} holds {len(names)} studies ({', '.join(names) or 'none'}) "
                            f"and none is named '{name}'")
    return optuna.load_study(study_name=chosen, storage=url)


def incompatible_keys(old: dict, new: dict) -> list[str]:
    """``key (why)`` for each search-space key the two searches do not share in kind."""
    out = []
    for name in sorted(set(old) | set(new)):
        key = name[len(PARAM_PREFIX):] if name.startswith(PARAM_PREFIX) else name
        if name not in old:
            out.append(f"{key} (not sampled by the earlier search)")
        elif name not in new:
            out.append(f"{key} (sampled by the earlier search, not by this one)")
        elif type(old[name]) is not type(new[name]) or getattr(old[name], "log", None) != getattr(new[name], "log", None):
            out.append(f"{key} (earlier {old[name]!r}, now {new[name]!r})")
    return out


def load_warm_start(study: Study) -> WarmStart | None:
    """The earlier search's finished trials, checked against this study; None when no warm start is asked for."""
    ref = study.settings.search.warm_start
    if not ref:
        return None
    import optuna
    from optuna.trial import TrialState

    url = storage_url(str(ref), Path(study.source).parent if study.source else None)
    earlier = source_study(url, study.name)
    finished = [t for t in earlier.get_trials(deepcopy=False) if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    new = optuna_distributions(study)
    old: dict = {}
    for t in finished:
        old.update(t.distributions)
    problems = incompatible_keys(old, new) if finished else []
    direction = "maximize" if study.settings.metric_mode == "max" else "minimize"
    if earlier.direction.name.lower() != direction:
        problems.append(f"metric_mode (earlier {earlier.direction.name.lower()}, now {direction})")
    names = earlier.metric_names
    if names and names[0] != study.settings.metric:
        problems.append(f"metric (earlier {names[0]}, now {study.settings.metric})")
    if problems:
        raise StudyRunError(f"search.warm_start: the search in {url} is incompatible with this one: "
                            + "; ".join(problems))
    warm = WarmStart(url, earlier.study_name, skipped=len(earlier.trials) - len(finished))
    for t in finished:
        try:  # create_trial checks each value against this study's distribution
            warm.trials.append(optuna.trial.create_trial(
                state=t.state, value=t.value, params=dict(t.params), distributions={k: new[k] for k in t.params},
                intermediate_values=dict(t.intermediate_values),
                user_attrs={**t.user_attrs, WARM_START_ATTR: f"{url} trial {t.number}"}))
        except ValueError:
            warm.outside += 1
    return warm
