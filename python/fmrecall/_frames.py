"""Table helpers shared by the field kinds (fmrecall.fields), Schema and Interactions: frames in,
JSON-able values out, stable hashes."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

Frame = Any  # a pandas DataFrame, a pyarrow Table, a dict or a list of dict rows
Series = Any  # a pandas Series (pandas ships no type information the package relies on)


def _pd() -> Any:
    import pandas as pd

    return pd


def _frame(data: Frame) -> Any:
    """A pandas DataFrame from a DataFrame, a pyarrow Table / RecordBatch, a dict of columns, one
    row as a dict of scalars, or a list of dict rows."""
    pd = _pd()
    if isinstance(data, pd.DataFrame):
        return data
    if isinstance(data, dict):
        if data and not any(pd.api.types.is_list_like(v) for v in data.values()):
            return pd.DataFrame([data])  # one row
        return pd.DataFrame(data)
    if isinstance(data, (list, tuple)):
        return pd.DataFrame(list(data))
    if type(data).__module__.startswith("pyarrow") and hasattr(data, "to_pandas"):
        return data.to_pandas()  # pyarrow stays optional: only its own objects get here
    raise TypeError(
        f"expected a pandas DataFrame, a pyarrow Table, a dict or a list of dict rows, got {type(data).__name__}"
    )


def _jsonable(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def _is_missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _hash(values: Any) -> np.ndarray:
    """Stable 64-bit hashes of the values (same across processes and platforms)."""
    from pandas.util import hash_array

    arr = np.asarray(values)
    if arr.dtype.kind in "iub":
        arr = arr.astype(np.int64)
    else:
        arr = arr.astype(str).astype(object)
    return hash_array(arr, categorize=False)
