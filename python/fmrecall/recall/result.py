"""SearchResult: the top K per query, with the model's exact scores."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Optional

import numpy as np

from .catalogue import present


@dataclass
class SearchResult:
    """Top-K per query. Unpacks as ``ids, scores = result``.

    ids : int64 (m, k), -1 where fewer than k items qualify; for a Recaller whose item ids are
        strings, bytes or UUIDs an object array of those ids, None where fewer than k qualify
    scores : float32 (m, k), the model's exact scores b_q + <q, p> (-inf for padding)
    certified : bool (m,), True when the top k is provably the exact top k (exact index, or a
        segmented exact search whose threshold certificate holds); False for ANN indexes
    loss : the model's loss ("logistic" gives probabilities via ``proba``)
    """

    ids: np.ndarray
    scores: np.ndarray
    certified: np.ndarray
    loss: str = "logistic"

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter((self.ids, self.scores))

    def __array__(self, dtype: Any = None, copy: Optional[bool] = None) -> np.ndarray:
        # pandas and numpy would stack ids and scores into one meaningless (2, m, k) array
        raise TypeError(
            "a SearchResult is two (m, k) arrays, ids and scores: use result.to_frame() for a long "
            "DataFrame (query, rank, item_id, score, proba), or result.ids / result.scores"
        )

    def to_frame(self) -> Any:
        """The results as a long pandas DataFrame, one row per returned item (padding left out),
        ordered by query then rank: query int64 (the request row), rank int64 (1 = best),
        item_id (int64; for str / bytes / UUID ids the dtype pandas infers: str, object), score
        float32 and, for the logistic loss, proba float32."""
        import pandas as pd

        found = self.ids >= 0 if self.ids.dtype.kind in "iu" else present(self.ids)
        query, rank = np.nonzero(found)
        cols = {
            "query": query.astype(np.int64),
            "rank": rank.astype(np.int64) + 1,
            "item_id": self.ids[found],
            "score": self.scores[found].astype(np.float32),
        }
        if self.loss == "logistic":
            cols["proba"] = self.proba[found]
        return pd.DataFrame(cols)

    @property
    def proba(self) -> np.ndarray:
        """σ(score) for the logistic loss: the model's probability that the item is the positive one
        (under negative sampling: P(positive vs a sampled negative))."""
        if self.loss != "logistic":
            raise ValueError(f"probabilities need the logistic loss, this model uses {self.loss!r}")
        with np.errstate(over="ignore"):
            return (1.0 / (1.0 + np.exp(-self.scores.astype(np.float64)))).astype(np.float32)

    @classmethod
    def empty(cls, m: int, k: int, loss: str) -> "SearchResult":
        return cls(np.full((m, k), -1, np.int64), np.full((m, k), -np.inf, np.float32), np.ones(m, bool), loss)
