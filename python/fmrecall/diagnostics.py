"""Diagnostics of encoding requests with a Schema: warnings instead of silence.

- ``DtypeMismatchWarning``: a column holds another kind of value (string, number, bool) than the
  field was fit on, e.g. ``user_id`` as ``str`` where training used ``int``: no value can match the
  vocabulary (every one maps to the neutral unseen feature) and hashed values land in other buckets.
- ``UnseenValueWarning``: more than half of a categorical field's values were not seen in training
  (they map to its reserved, neutral "unseen" feature).

Both are UserWarning subclasses, raised at most once each per ``Schema.transform`` call (naming
every field concerned), pointing at the first caller outside fmrecall; silence them with
``warnings.filterwarnings("ignore", category=fmrecall.UnseenValueWarning)``.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Any, Dict, List, Optional, Tuple

from ._frames import Series, _jsonable, _pd

UNSEEN_WARN_RATE = 0.5  # warn when more than this share of a field's values is unseen


class UnseenValueWarning(UserWarning):
    """More than half of a categorical field's values in one transform were unseen in training."""


class DtypeMismatchWarning(UserWarning):
    """A column's kind of value (string / number / bool) differs from the one the field was fit on."""


_INFERRED = {
    "string": "string",
    "unicode": "string",
    "bytes": "bytes",
    "integer": "number",
    "floating": "number",
    "mixed-integer-float": "number",
    "decimal": "number",
    "boolean": "bool",
}


def value_kind(values: Series) -> Optional[str]:
    """The kind of value of a column: "string", "number", "bool", "bytes" or "mixed" (pandas'
    inference, in C); None if it is empty."""
    pd = _pd()
    if isinstance(values.dtype, pd.CategoricalDtype):
        values = pd.Series(values.cat.categories)
    if len(values) == 0:
        return None
    return _INFERRED.get(pd.api.types.infer_dtype(values, skipna=True), "mixed")


def outside_frame_level() -> int:
    """The stacklevel of the first frame outside the fmrecall package (so a warning points at user
    code however deep the call came from)."""
    here = os.path.dirname(os.path.abspath(__file__))
    frame: Any = sys._getframe(1)
    level = 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(here + os.sep):
        frame = frame.f_back
        level += 1
    return level


def warn_transform(mismatches: List[Tuple[str, str, str, str]], unseen: Dict[str, Tuple[float, Any]]) -> None:
    """The (at most two) warnings of one transform: `mismatches` (field, column, request kind,
    training kind) and `unseen` {field: (rate, first unseen value)} above UNSEEN_WARN_RATE."""
    if mismatches:
        parts = "; ".join(
            f"column {c!r} holds {got} values, field {f!r} was fit on {want} values" for f, c, got, want in mismatches
        )
        warnings.warn(
            f"Schema.transform: {parts}: such values never match what training saw (categorical values map to "
            f"the neutral unseen feature, hashed ones to other buckets). Convert the column to the training type",
            DtypeMismatchWarning,
            stacklevel=outside_frame_level(),
        )
    if unseen:
        parts = "; ".join(f"{rate:.0%} of {f!r} (e.g. {_jsonable(v)!r})" for f, (rate, v) in unseen.items())
        warnings.warn(
            f"Schema.transform: unseen in training: {parts}. These values get the field's neutral unseen "
            f"feature, so the rows are scored as if the value were unknown (grow the schema with "
            f"Schema.partial_fit / Interactions(..., grow=True) to learn them)",
            UnseenValueWarning,
            stacklevel=outside_frame_level(),
        )
