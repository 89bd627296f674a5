"""Classic recall channels, for comparison with one unified model (numpy; small catalogues).

Each function returns int64 item ids (n_users, k), best first, never an item the user already has.
Users and items are row indices 0..n-1 of a binary interaction matrix.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def interaction_matrix(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int) -> np.ndarray:
    """Binary float32 (n_users, n_items) matrix of (user, item) pairs."""
    R = np.zeros((n_users, n_items), dtype=np.float32)
    R[users, items] = 1.0
    return R


def _top_unseen(scores: np.ndarray, seen: np.ndarray, k: int) -> np.ndarray:
    s = np.where(seen > 0, -np.inf, scores.astype(np.float64))
    top = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return top.astype(np.int64)


def popularity(R: np.ndarray, k: int) -> np.ndarray:
    """The most interacted-with items the user has not seen."""
    pop = R.sum(axis=0)
    return _top_unseen(np.broadcast_to(pop, R.shape), R, k)


def item_cf(R: np.ndarray, k: int) -> np.ndarray:
    """Item-based collaborative filtering: score(u, j) = Σ_{i ∈ seen(u)} cos(i, j)."""
    norms = np.sqrt(R.sum(axis=0))
    norms[norms == 0] = 1.0
    Rn = R / norms
    sim = Rn.T @ Rn
    np.fill_diagonal(sim, 0.0)
    return _top_unseen(R @ sim, R, k)


def genre_preference(R: np.ndarray, item_genres: np.ndarray, k: int) -> np.ndarray:
    """Content channel: the user's genre profile (share of seen items per genre) · the item's genres,
    ties broken by popularity."""
    profile = R @ item_genres
    profile /= np.maximum(profile.sum(axis=1, keepdims=True), 1.0)
    G = item_genres / np.maximum(item_genres.sum(axis=1, keepdims=True), 1.0)
    pop = R.sum(axis=0)
    return _top_unseen(profile @ G.T + 1e-6 * pop / max(pop.max(), 1.0), R, k)


def merge_channels(channels: Sequence[np.ndarray], quotas: Sequence[float], k: int) -> np.ndarray:
    """Multi-channel recall: channel c fills round(quota_c · k) slots with its best items not taken yet,
    in channel order; slots left over (duplicates) are filled from the channels in order."""
    m = channels[0].shape[0]
    out = np.full((m, k), -1, dtype=np.int64)
    want = np.round(np.asarray(quotas, dtype=np.float64) / np.sum(quotas) * k).astype(int)
    want[0] += k - want.sum()
    for u in range(m):
        taken: list = []
        seen = set()
        for c, q in zip(channels, want):
            got = 0
            for item in c[u]:
                if got >= q:
                    break
                if item not in seen:
                    seen.add(item)
                    taken.append(item)
                    got += 1
        for c in channels:
            for item in c[u]:
                if len(taken) >= k:
                    break
                if item not in seen:
                    seen.add(item)
                    taken.append(item)
        out[u, : len(taken)] = taken[:k]
    return out
