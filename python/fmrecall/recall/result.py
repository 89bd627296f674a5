"""SearchResult: the top K per query, with the model's exact scores."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np


@dataclass
class SearchResult:
    """Top-K per query. Unpacks as ``ids, scores = result``.

    ids : int64 (m, k), -1 where fewer than k items qualify
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
