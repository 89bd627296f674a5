"""The exact query/item split of a trained model (DESIGN.md §2–4)."""

from __future__ import annotations

from typing import Any, List, Tuple

import numpy as np

from .dataset import Dataset
from .sides import Sides


class Split:
    """score(query row ⊕ item row) = b_q + <q, p>, exactly (to float32 rounding).

    - ``query_vectors(ds) -> (q float32 (m, dim), b float32 (m,))``: b = w0 + query linear terms +
      query-internal pairs (user×user, user×context, context×context); the last coordinate of q is 1.
    - ``item_vectors(ds) -> p float32 (n, dim)``: the last coordinate is the item's linear terms plus
      its internal pairs, so <q, p> carries the item's own score too.
    - dim: FM k+1; FFM |F_query|·|F_item|·k+1 (blocks (a, b), query field a major, item blocks in
      the transposed order B_{b,a}); HybridFM |F_query|·k+1 (item side field-aware) or |F_item|·k+1.

    Query rows must hold only user/context fields, item rows only item fields (ValueError naming
    the field otherwise). Built in C++ over all threads, without the GIL.
    """

    def __init__(self, model: Any, sides: Sides) -> None:
        core = model._require_core()
        if not isinstance(sides, Sides):
            raise ValueError("split needs a fmrecall.Sides(user=..., context=..., item=...)")
        self.model = model
        self.sides = sides
        self._item_mask = sides.item_mask(core.n_fields)
        self._layout = core.split_layout(self._item_mask)  # raises for normalize=True models

    @property
    def dim(self) -> int:
        return int(self._layout.dim)

    def blocks(self) -> List[Tuple[int, str, int, int]]:
        """(offset, kind, query field, item field) of every k-float block, in vector order:
        'ss' FM block, 'sa' single query field × field-aware items, 'bs' field-aware query ×
        single item field, 'ab' field pair (a, b) of two field-aware fields; the last
        coordinate (dim - 1) is the bias slot."""
        return list(self._layout.blocks())

    def _check_side(self, ds: Dataset, want_item: bool) -> None:
        n_fields = self._item_mask.size
        f = ds.fields[ds.fields < n_fields]
        wrong = f[self._item_mask[f] != (1 if want_item else 0)]
        if wrong.size:
            bad = int(wrong[0])
            side = self.sides.side_of(bad)
            what = "item" if want_item else "query (user / context)"
            raise ValueError(f"{what} rows contain field {bad}, which is a {side} field")

    def query_vectors(self, ds: Dataset) -> Tuple[np.ndarray, np.ndarray]:
        """(q float32 (m, dim), b float32 (m,)) for the query rows of `ds` (user + context fields)."""
        self._check_side(ds, want_item=False)
        core = self.model._require_core()
        q, b = core.query_vectors(self._layout, *ds.core_args(), int(self.model.threads))
        return q, b

    def item_vectors(self, ds: Dataset) -> np.ndarray:
        """p float32 (n, dim) for the item rows of `ds` (item fields only)."""
        self._check_side(ds, want_item=True)
        core = self.model._require_core()
        return core.item_vectors(self._layout, *ds.core_args(), int(self.model.threads))

    def __repr__(self) -> str:
        return f"Split({type(self.model).__name__}, dim={self.dim}, {self.sides})"
