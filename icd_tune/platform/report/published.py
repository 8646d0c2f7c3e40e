"""Published numbers beside measured ones: the study key ``reported``, checked and printed.

``reported`` maps a level of the study's first grid factor (a teacher -> student pair) to
``{teacher: %, student: %, <level of the second factor (a method)>: %, ...}``. The teacher
and student-alone numbers are printed as published, never run. The report prints, per
pair and method, the measured mean +- std of ``report_metric`` over seeds (completed
trials), the published number and their difference (measured mean - published).
"""

from __future__ import annotations

import math
import statistics
from typing import Any, Mapping, Sequence

from ...method.schema import ConfigError, join_path

REFERENCE_KEYS = ("teacher", "student")


def check_published(study) -> None:
    """Each published entry names a level of the first factor and, besides teacher/student, of the second."""
    reported = study.settings.reported
    if not reported:
        return
    if len(study.factors) < 2:
        raise ConfigError("published numbers need a grid of two factors: pairs (first) x methods (second)", "reported")
    pairs = [str(label) for label, _ in study.factors[0].levels]
    methods = [str(label) for label, _ in study.factors[1].levels]
    for pair, entry in reported.items():
        path = join_path("reported", str(pair))
        if str(pair) not in pairs:
            raise ConfigError(f"bad value {pair!r}: not a level of grid factor '{study.factors[0].name}' ({', '.join(pairs)})", path)
        if not isinstance(entry, dict):
            raise ConfigError(f"bad value {entry!r}: expected a mapping of teacher, student and methods to numbers", path)
        for key, value in entry.items():
            if key not in REFERENCE_KEYS and str(key) not in methods:
                raise ConfigError(f"bad value {key!r}: expected teacher, student or a level of grid factor "
                                  f"'{study.factors[1].name}' ({', '.join(methods)})", join_path(path, str(key)))
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"bad value {value!r}: expected a number (top-1 %)", join_path(path, str(key)))


def _fmt(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def measured(trials: Sequence[Mapping], factors: Sequence[str], metric: str) -> dict[tuple[str, str], list[float]]:
    """(pair, method) -> the completed trials' values of ``metric``."""
    out: dict[tuple[str, str], list[float]] = {}
    for trial in trials:
        levels = trial.get("levels") or {}
        value = (trial.get("final") or {}).get(metric)
        if trial.get("status") != "completed" or not isinstance(value, (int, float)) or value != value:
            continue
        key = (str(levels.get(factors[0])), str(levels.get(factors[1])))
        out.setdefault(key, []).append(float(value))
    return out


def comparison_rows(reported: Mapping[str, Mapping[str, Any]], methods: Sequence[str],
                    values: Mapping[tuple[str, str], list[float]]) -> list[list[str]]:
    rows = []
    for pair, entry in reported.items():
        for method in methods:
            if method not in entry and (str(pair), method) not in values:
                continue
            got = values.get((str(pair), method), [])
            mean = statistics.fmean(got) if got else None
            std = statistics.stdev(got) if len(got) > 1 else None
            cell = "-" if mean is None else f"{mean:.2f} +- {_fmt(std) if std is not None else 'n/a'} (n={len(got)})"
            published = entry.get(method)
            diff = mean - published if mean is not None and published is not None else None
            rows.append([str(pair), _fmt(entry.get("teacher")), _fmt(entry.get("student")), method, cell,
                         _fmt(published), _fmt(diff, signed=True)])
    return rows


def published_lines(settings, factors: Sequence[str], methods: Sequence[str], trials: Sequence[Mapping],
                    metric: str) -> list[str]:
    """The report section (also the dry-run's table, with no trials): measured, published, difference."""
    if not settings.reported or len(factors) < 2:
        return []
    from .tables import md_table

    source = f" ({settings.reported_source})" if settings.reported_source else ""
    rows = comparison_rows(settings.reported, methods, measured(trials, factors, metric))
    headers = ["pair", "teacher (published)", "student (published)", "method", f"measured {metric}", "published",
               "difference"]
    return [f"## Published numbers{source}", "",
            f"Measured: {metric}, mean +- sample std over seeds (completed trials); difference = measured mean - "
            f"published. Teacher and student columns are published numbers, printed, not run.", "",
            md_table(headers, rows, [False, True, True, False, True, True, True]), ""]
