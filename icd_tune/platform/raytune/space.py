"""A study's search space in the two forms the search needs: Ray Tune's domains and Optuna's distributions.

Ray's OptunaSearch turns Tune domains into Optuna distributions itself;
``optuna_distributions`` gives the same answer without importing Ray, so that
planning (a warm start checks an earlier search against this space) stays free
of it. A test holds the two equal.
"""

from __future__ import annotations

from ..study.definition import Study

PARAM_PREFIX = "params/"  # how Ray's OptunaSearch names a study's search-space keys in Optuna


def search_domains(study: Study) -> dict:
    """The space as Ray Tune domains (int bounds inclusive in the study file, exclusive in Tune)."""
    from ray import tune

    out = {}
    for key, spec in study.space.items():
        kind = spec["type"]
        if kind == "choice":
            out[key] = tune.choice(spec["values"])
        elif kind == "int":
            out[key] = tune.lograndint(spec["low"], spec["high"] + 1) if spec["log"] else tune.randint(spec["low"], spec["high"] + 1)
        elif spec["log"]:
            out[key] = tune.loguniform(spec["low"], spec["high"])
        else:
            out[key] = tune.uniform(spec["low"], spec["high"])
    return out


def optuna_distributions(study: Study) -> dict:
    """The space as the Optuna distributions OptunaSearch makes of ``search_domains``, keyed as it keys them."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out = {}
    for key, spec in study.space.items():
        kind = spec["type"]
        if kind == "choice":
            dist = CategoricalDistribution(spec["values"])
        elif kind == "int":
            dist = IntDistribution(spec["low"], spec["high"], log=spec["log"])
        else:
            dist = FloatDistribution(spec["low"], spec["high"], log=spec["log"])
        out[PARAM_PREFIX + key] = dist
    return out
