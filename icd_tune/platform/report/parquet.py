"""Trial and history records as Parquet files."""

from __future__ import annotations

import json
import numbers
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from .stats import _hashable


def _column(values: list) -> pa.Array:
    """An Arrow column that never fails on mixed values.

    A temperature level can be "learnable" in one trial and 0.1 in another;
    such a column, and any other Arrow cannot type, is stored as strings.
    """
    present = [v for v in values if v is not None]
    has_str = any(isinstance(v, str) for v in present)
    has_num = any(isinstance(v, numbers.Number) for v in present)
    if not (has_str and has_num):
        try:
            return pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
            pass

    def as_text(v):
        if v is None or isinstance(v, str):
            return v
        if isinstance(v, (list, tuple, dict)):
            return json.dumps(v, default=str)
        return str(v)

    return pa.array([as_text(v) for v in values], type=pa.string())


def _table(records: list[dict], columns: list[str], types: Mapping[str, pa.DataType]) -> pa.Table:
    arrays = {}
    for name in columns:
        arr = _column([r.get(name) for r in records])
        # Empty or all-null fixed columns keep a real type so files concatenate.
        if pa.types.is_null(arr.type) and name in types:
            arr = arr.cast(types[name])
        arrays[name] = arr
    return pa.table(arrays) if arrays else pa.table({})


def _ordered_keys(dicts: Iterable[Mapping | None]) -> list[str]:
    seen: dict[str, None] = {}
    for d in dicts:
        for key in d or {}:
            seen.setdefault(key, None)
    return list(seen)


_TRIAL_FIXED = {"trial_id": pa.string(), "name": pa.string(), "seed": pa.int64(),
                "status": pa.string(), "epochs": pa.int64(), "error": pa.string()}


def write_parquet(trials: Sequence[Mapping], history: Sequence[Mapping],
                  out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``trials.parquet`` (one row per trial) and ``history.parquet``.

    Trial columns: trial_id, name, seed, status, epochs, error, then
    ``level.<factor>``, ``param.<dotted>`` and ``final.<metric>`` in first-seen
    order. History has one row per (trial_id, epoch); repeated reports for the
    same epoch are merged, later values winning.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    trials = list(trials)

    groups = [("level.", "levels"), ("param.", "params"), ("final.", "final")]
    columns = list(_TRIAL_FIXED)
    for prefix, field in groups:
        columns += [prefix + k for k in _ordered_keys(t.get(field) for t in trials)]
    records = []
    for trial in trials:
        rec = {k: trial.get(k) for k in _TRIAL_FIXED}
        for prefix, field in groups:
            rec.update({prefix + k: v for k, v in (trial.get(field) or {}).items()})
        records.append(rec)
    trials_path = out_dir / "trials.parquet"
    pq.write_table(_table(records, columns, _TRIAL_FIXED), trials_path)

    merged: dict[Any, dict] = {}
    for i, row in enumerate(history or []):
        epoch = row.get("epoch")
        key = (_hashable(row.get("trial_id")), epoch) if epoch is not None else ("__row__", i)
        merged.setdefault(key, {}).update(row)
    rows = list(merged.values())
    hist_columns = ["trial_id", "epoch"] + [k for k in _ordered_keys(rows) if k not in ("trial_id", "epoch")]
    history_path = out_dir / "history.parquet"
    pq.write_table(_table(rows, hist_columns, {"trial_id": pa.string(), "epoch": pa.int64()}),
                   history_path)
    return trials_path, history_path
