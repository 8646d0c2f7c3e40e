"""The report's text under protocol ``paper``: numbers selected on the test set, said so, and nothing picked.

Under protocol paper a trial has no validation split and reports ``test/best_acc1``,
its best test accuracy over epochs, as the published tables do. That number is
selected on the test set, so this part of the report selects nothing with it: no
best level, no best configuration. It shows each level's mean +- std beside the
last epoch's ``test/acc1`` and, with a baseline, the seed-paired differences.
"""

from __future__ import annotations

import textwrap
from typing import Any, Mapping, Sequence

from .stats import _completed, _failed, _final, _fmt_value, _mean_std, _paired_diff
from .stats import _apply_holm, STOPPED
from .tables import comparison_lines, factor_opening, fmt_mean_std, md_table

PROTOCOL_TEXT = {
    "validation": ("validation: a held-out share of the training images selects epochs, levels and configurations; "
                   "the test set is reported at the epoch of best validation accuracy, never selected on."),
    "paper": ("paper: every training image is trained on (no validation split) and each trial reports its best "
              "test accuracy over all epochs, as the published tables do: that number is SELECTED ON THE TEST SET "
              "and is not an unbiased estimate; nothing is selected by it here."),
}

LAST_EPOCH = "test/acc1"


def protocol_lines(protocol: str) -> list[str]:
    text = f"Protocol: {PROTOCOL_TEXT.get(protocol, protocol)}"
    return textwrap.wrap(text, 100, subsequent_indent="  ") + [""]


def paper_method_lines(metric: str, compared: bool) -> list[str]:
    lines = [f"Reported: {metric} (selected on test: the best over each trial's epochs), {LAST_EPOCH} of the last "
             f"epoch beside it. Selection: none (no best level, no best configuration).",
             "Statistics: completed trials only; stopped and failed trials are listed apart. Cells: mean +- sample "
             "std (ddof=1) over seeds."]
    if compared:
        lines.append(f"Differences: {metric} paired by seed with the baseline level, 95% t interval, Holm-adjusted "
                     f"p over the factor's levels; both sides are selected on test alike.")
    return [w for line in lines for w in textwrap.wrap(line, 100, subsequent_indent="  ")] + [""]


def _cell(values: Sequence[float], done: int) -> str:
    mean, std = _mean_std(values)
    return fmt_mean_std(mean, std, len(values), done)


def paper_factor_lines(trials: Sequence[Mapping], factor: str, baseline: Any, metric: str) -> list[str]:
    lines, groups, missing, base_key, note = factor_opening(trials, factor, baseline)
    if groups is None:
        return lines
    if note:
        baseline = None
    rows, body = [], []
    for level, members in groups.items():
        done = [t for t in members if _completed(t)]
        values = [v for v in (_final(t, metric) for t in done) if v is not None]
        last = [v for v in (_final(t, LAST_EPOCH) for t in done) if v is not None]
        body.append([_fmt_value(level), str(len(members)), str(len(done)),
                     str(sum(t.get("status") == STOPPED for t in members)), str(sum(_failed(t) for t in members)),
                     _cell(values, len(done)), _cell(last, len(done))])
        row = {"level": level}
        if baseline is not None:
            row["is_baseline"] = level == base_key
            if not row["is_baseline"]:
                row.update(_paired_diff(members, groups[base_key], metric))
        rows.append(row)
    headers = ["level", "n", "completed", "stopped", "failed", f"{metric} (selected on test)",
               f"{LAST_EPOCH} (last epoch)"]
    lines += [md_table(headers, body, [False] + [True] * 6), ""]
    if note:
        lines += [note, ""]
    if missing:
        lines += [f"{len(missing)} trial(s) without a level for '{factor}' are not in this table.", ""]
    if baseline is not None:
        _apply_holm(rows)
        lines += comparison_lines(rows, factor, baseline, metric)
    return lines
