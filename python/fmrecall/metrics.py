"""Evaluation helpers (numpy only)."""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np


def _binary(y: np.ndarray) -> np.ndarray:
    y = np.asarray(y).ravel()
    return (y > 0).astype(np.float64)  # 0/1 and -1/1 labels alike


def auc(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Area under the ROC curve (Mann–Whitney U, ties get half credit). y_true: 0/1 or -1/1."""
    y = _binary(y_true)
    s = np.asarray(y_score, dtype=np.float64).ravel()
    if y.size != s.size:
        raise ValueError(f"y_true has {y.size} entries, y_score has {s.size}")
    n_pos = y.sum()
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    s_sorted = s[order]
    # average rank of each tie group
    starts = np.flatnonzero(np.r_[True, s_sorted[1:] != s_sorted[:-1]])
    ends = np.r_[starts[1:], s.size]
    avg = (starts + ends + 1) / 2.0  # 1-based average rank per group
    ranks = np.empty(s.size)
    ranks[order] = np.repeat(avg, ends - starts)
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def logloss(y_true: np.ndarray, p: np.ndarray, eps: float = 1e-12) -> float:
    """Mean binary cross-entropy of probabilities ``p``. y_true: 0/1 or -1/1."""
    y = _binary(y_true)
    p = np.clip(np.asarray(p, dtype=np.float64).ravel(), eps, 1.0 - eps)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log1p(-p)))


def logloss_from_scores(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Mean logistic loss of raw scores, computed stably: log(1 + e^t) - y t."""
    y = _binary(y_true)
    t = np.asarray(scores, dtype=np.float64).ravel()
    return float(np.mean(np.logaddexp(0.0, t) - y * t))


def mse(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    d = np.asarray(y_pred, dtype=np.float64).ravel() - np.asarray(y_true, dtype=np.float64).ravel()
    return float(np.mean(d * d))


def recall_at_k(recommended: np.ndarray, relevant: Sequence[Iterable[Any]], k: int) -> float:
    """Mean over queries of |top-k ∩ relevant| / |relevant| (queries without relevant items skipped).
    recommended: int (m, >=k) item ids, best first; relevant: sequence of m id collections."""
    hits, n = 0.0, 0
    for rec, rel in zip(recommended, relevant):
        rel = set(np.asarray(list(rel)).tolist())
        if not rel:
            continue
        hits += len(rel.intersection(np.asarray(rec[:k]).tolist())) / len(rel)
        n += 1
    return hits / n if n else float("nan")


def precision_at_k(recommended: np.ndarray, relevant: Sequence[Iterable[Any]], k: int) -> float:
    """Mean over queries (with relevant items) of |top-k ∩ relevant| / k."""
    hits, n = 0.0, 0
    for rec, rel in zip(recommended, relevant):
        rel = set(np.asarray(list(rel)).tolist())
        if not rel:
            continue
        hits += len(rel.intersection(np.asarray(rec[:k]).tolist())) / k
        n += 1
    return hits / n if n else float("nan")
