"""Pieces both protocols' reports are built from: pipe tables, mean +- std cells, seed-paired comparisons.

``markdown.py`` (protocol validation), ``paper.py`` (protocol paper), ``published.py`` and
``importance.py`` all import from here, and this module imports none of them.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from .stats import _NA, MIN_PAIRS, _find_level, _fmt_num, _fmt_value, _group_by_level


def md_cell(text: str) -> str:
    # A literal pipe would split a markdown table cell.
    return str(text).replace("|", "\\|").replace("\n", " ")


def md_table(headers: Sequence[str], rows: Sequence[Sequence[str]],
              right: Sequence[bool]) -> str:
    """A pipe table padded to fixed widths, so it reads in a terminal as is."""
    cells = [[md_cell(h) for h in headers]] + [[md_cell(c) for c in r] for r in rows]
    widths = [max(3, *(len(r[i]) for r in cells)) for i in range(len(headers))]

    def line(row):
        parts = [c.rjust(w) if r else c.ljust(w) for c, w, r in zip(row, widths, right)]
        return "| " + " | ".join(parts) + " |"

    sep = "|" + "|".join(("-" * (w + 1) + ":") if r else ("-" * (w + 2))
                         for w, r in zip(widths, right)) + "|"
    return "\n".join([line(cells[0]), sep] + [line(r) for r in cells[1:]])


def fmt_mean_std(mean, std, n, expected) -> str:
    if mean is None:
        return _NA
    text = _fmt_num(mean) + (f" +- {_fmt_num(std)}" if std is not None else " +- n/a")
    # Flag means over fewer trials than ran OK (some did not report the metric).
    return text + (f" (n={n})" if n != expected else "")


def fmt_diff(row: Mapping) -> str:
    if row.get("is_baseline"):
        return "(baseline)"
    n = row.get("diff_n", 0)
    if n == 0:
        return "n/a (no paired seeds)"
    mean = _fmt_num(row["diff_mean"], signed=True)
    if not row.get("informative"):
        return f"{mean} (n={n}) n < {MIN_PAIRS}: interval not informative"
    return (f"{mean} [{_fmt_num(row['diff_ci_low'], signed=True)}, "
            f"{_fmt_num(row['diff_ci_high'], signed=True)}] (n={n})")


def fmt_p(p: float | None) -> str:
    if p is None:
        return _NA
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def p_cells(row: Mapping) -> list[str]:
    if row.get("is_baseline") or not row.get("informative"):
        return ["-", "-"]
    if row.get("p_value") is None:
        return ["n/a (no spread)", "-"]
    return [fmt_p(row["p_value"]), fmt_p(row.get("p_holm"))]


def comparison_lines(rows: Sequence[Mapping], factor: str, baseline: Any,
                      metric: str) -> list[str]:
    headers = ["level", f"diff vs {_fmt_value(baseline)} [95% CI]", "d_z", "p", "p (Holm)"]
    body = [[_fmt_value(r["level"]), fmt_diff(r),
             "-" if r.get("is_baseline") else _fmt_num(r.get("diff_dz"), signed=True),
             *p_cells(r)] for r in rows]
    title = (f"{metric} against {factor}={_fmt_value(baseline)}, paired by seed "
             "(completed trials):")
    return [title, "", md_table(headers, body, [False, False, True, True, True]), ""]


def factor_opening(trials, factor, baseline) -> tuple[list[str], dict | None, list, Any, str | None]:
    """A factor section's opening, shared by both protocols' reports.

    Returns its heading lines (the whole section when no trial has a level: then the groups are
    None), the trials by level, those without a level, the baseline's level (None when there is no
    baseline or it is not a level) and, in that last case, the note saying so.
    """
    lines = [f"## Factor: {factor}", ""]
    groups, missing = _group_by_level(trials, factor)
    if not groups:
        return lines + [f"No trial has a level for '{factor}'.", ""], None, missing, None, None
    if baseline is None:
        return lines, groups, missing, None, None
    try:
        return lines, groups, missing, _find_level(groups, baseline), None
    except ValueError:
        return lines, groups, missing, None, (f"Baseline {_fmt_value(baseline)!s} is not a level of '{factor}'; "
                                              "no differences shown.")
