"""The report's transfer section: each trial's linear-probe accuracy per target set.

Trials with a ``transfer:`` block report ``transfer/<dataset>/acc1`` in their last
result (``final``); the section shows them per factor level (mean +- std over the
completed trials' seeds) or, without factors, per trial. Nothing is selected on them.
"""

from __future__ import annotations

import textwrap
from typing import Iterable, Mapping, Sequence

from ..metrics import TRANSFER_PREFIX
from .stats import COMPLETED, _fmt_num, _fmt_value, _group_by_level, _mean_std, _number

EXPLAIN = ("A new linear classifier on the frozen student's pooled features (the best-validation weights; the last "
           "epoch's without a validation split), trained on each target's training images at 32x32 and scored on "
           "its test split. Completed trials only; reported, never selected on.")


def transfer_names(trials: Iterable[Mapping]) -> list[str]:
    seen: dict[str, None] = {}
    for trial in trials:
        for key in trial.get("final") or {}:
            if key.startswith(TRANSFER_PREFIX):
                seen.setdefault(key, None)
    return list(seen)


def _cell(values: Sequence[float]) -> str:
    mean, std = _mean_std(values)
    if mean is None:
        return "n/a"
    return _fmt_num(mean) + (f" +- {_fmt_num(std)}" if std is not None else "") + f" (n={len(values)})"


def _values(trials: Iterable[Mapping], name: str) -> list[float]:
    return [v for v in (_number((t.get("final") or {}).get(name)) for t in trials) if v is not None]


def transfer_section(trials: Sequence[Mapping], factors: Sequence[str], table) -> list[str]:
    """Lines of the section, [] when no trial reported a transfer accuracy; ``table`` renders a markdown table."""
    names = transfer_names(trials)
    if not names:
        return []
    done = [t for t in trials if t.get("status") == COMPLETED]
    lines = ["## Transfer linear probe", "", *textwrap.wrap(EXPLAIN, 100), ""]
    for factor in factors:
        groups, _ = _group_by_level(done, factor)
        body = [[_fmt_value(level), str(len(group)), *(_cell(_values(group, n)) for n in names)]
                for level, group in groups.items()]
        lines += [f"By {factor}:", "", table(["level", "completed", *names], body, [False] + [True] * (len(names) + 1)),
                  ""]
    if not factors:
        body = [[str(t.get("trial_id")), str(t.get("name") or ""), _fmt_value(t.get("seed")),
                 *(_fmt_num(_number((t.get("final") or {}).get(n))) for n in names)] for t in done]
        lines += [table(["trial", "name", "seed", *names], body, [False, False, True] + [True] * len(names)), ""]
    return lines
