"""The write half of MilvusIndex: one upsert request at a time, logged so a failed add is undone."""

from __future__ import annotations

from typing import Any

import numpy as np

from .milvus_search import fetch
from .milvus_support import ID_FIELD, MAX_TOPK, VECTOR_FIELD, RollbackError, _AddLog


def upsert(index: Any, part: np.ndarray, vecs: np.ndarray, log: _AddLog) -> int:
    """Write one request's rows, first saving the vectors those ids have now (for a roll-back)."""
    if log.fresh:
        old_ids, old_vecs = np.zeros(0, np.int64), np.zeros((0, index.dim), np.float32)
    else:
        old_ids, old_vecs = fetch(index, part)
    if old_ids.size:
        log.old_ids.append(old_ids)
        log.old_vecs.append(old_vecs)
    rows = [{ID_FIELD: i, VECTOR_FIELD: v} for i, v in zip(part.tolist(), vecs)]
    log.attempted += part.size  # a failed request may or may not have been applied
    index.client.upsert(index.collection, rows)
    return part.size


def roll_back(index: Any, written: np.ndarray, log: _AddLog, cause: BaseException) -> None:
    """Undo a failed add: delete the ids it wrote that were new, write the replaced vectors back."""
    old_ids = np.concatenate(log.old_ids) if log.old_ids else np.zeros(0, np.int64)
    old_vecs = np.concatenate(log.old_vecs) if log.old_vecs else np.zeros((0, index.dim), np.float32)
    new = np.setdiff1d(written, old_ids)
    try:
        for lo in range(0, new.size, MAX_TOPK):
            index.client.delete(index.collection, ids=new[lo : lo + MAX_TOPK].tolist())
        step = index._rows_per_request()
        for lo in range(0, old_ids.size, step):
            index.client.upsert(
                index.collection,
                [
                    {ID_FIELD: i, VECTOR_FIELD: v}
                    for i, v in zip(old_ids[lo : lo + step].tolist(), old_vecs[lo : lo + step])
                ],
            )
    except Exception as e:  # pragma: no cover - Milvus failing twice in a row
        raise RollbackError(
            f"adding items to Milvus collection {index.collection!r} failed ({cause!r}) and so "
            f"did undoing it ({e!r}): up to {written.size} of its ids may hold new vectors or "
            f"be missing"
        ) from cause
