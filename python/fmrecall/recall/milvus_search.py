"""The search half of MilvusIndex: one filtered ANN request per group of queries, candidates
re-scored exactly and cut to the top k."""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

from .._limits import check_int
from .milvus_support import ID_FIELD, MAX_TOPK, VECTOR_FIELD, _hit_arrays, _id_list


def call_params(params: Optional[Mapping[str, Any]]) -> Dict[str, int]:
    """This call's overrides (candidates, ef_search -> HNSW "ef", nprobe), validated."""
    out: Dict[str, int] = {}
    for name, value in (params or {}).items():
        if name not in ("candidates", "ef_search", "nprobe"):
            raise ValueError(f"unknown search parameter {name!r}; MilvusIndex takes candidates, ef_search, nprobe")
        if value is not None:
            out[name] = int(check_int(value, name, 1))  # type: ignore[arg-type]
    return out


def ann_search(
    index: Any,
    q: np.ndarray,
    rows: np.ndarray,
    k: int,
    n_cand: int,
    ex: Optional[np.ndarray],
    rs: Optional[np.ndarray],
    ids: np.ndarray,
    ips: np.ndarray,
    call: Dict[str, int],
) -> None:
    """Milvus's candidates for the queries `rows` under one filter, re-scored exactly."""
    conds = []
    drop: Optional[np.ndarray] = None
    limit = n_cand
    if rs is not None:
        if rs.size > index.max_filter_ids:
            raise ValueError(
                f"restrict holds {rs.size} ids; one Milvus filter expression lists at most "
                f"{index.max_filter_ids} (MilvusIndex max_filter_ids)"
            )
        conds.append(f"{ID_FIELD} in {_id_list(rs)}")
    if ex is not None:
        if ex.size <= index.max_filter_ids:
            conds.append(f"{ID_FIELD} not in {_id_list(ex)}")
        elif n_cand + ex.size <= MAX_TOPK:  # over-fetch, drop the excluded ids here
            drop, limit = ex, n_cand + ex.size
        else:
            raise ValueError(
                f"exclude holds {ex.size} ids: more than one Milvus filter expression lists "
                f"({index.max_filter_ids}, MilvusIndex max_filter_ids) and too many to over-fetch "
                f"within Milvus's topk limit ({MAX_TOPK})"
            )
    search_params: Dict[str, Any] = {"metric_type": index.metric}
    p: Dict[str, int] = {}
    if index.index_type == "HNSW":
        p["ef"] = max(call.get("ef_search", index.params.get("ef", 0)), limit)  # Milvus requires ef >= topk
    elif index.index_type == "IVF_FLAT" and ("nprobe" in call or "nprobe" in index.params):
        p["nprobe"] = call.get("nprobe", index.params.get("nprobe", 0))
    if p:
        search_params["params"] = p
    res = index.client.search(
        index.collection,
        data=q[rows],
        filter=" and ".join(conds),
        limit=limit,
        output_fields=[VECTOR_FIELD],
        search_params=search_params,
        anns_field=VECTOR_FIELD,
        consistency_level="Strong",
    )
    for j, i in enumerate(rows):
        found, vecs = _hit_arrays(res[j], index.dim)
        if drop is not None and found.size:
            keep = ~np.isin(found, drop)
            found, vecs = found[keep], vecs[keep]
        cut(found, vecs @ q[i], k, ids, ips, i)


def cut(found: np.ndarray, ip: np.ndarray, k: int, ids: np.ndarray, ips: np.ndarray, i: int) -> None:
    """The top k of (found, ip) into row i, best first (ties: smaller id first)."""
    if found.size == 0:
        return
    order = np.lexsort((found, -ip.astype(np.float32)))[:k]
    ids[i, : order.size] = found[order]
    ips[i, : order.size] = ip[order]


def fetch(index: Any, ids: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(found ids, their float32 vectors) of the given distinct ids, by primary key."""
    out_ids: List[np.ndarray] = []
    out_vecs: List[np.ndarray] = []
    for lo in range(0, ids.size, MAX_TOPK):
        part = ids[lo : lo + MAX_TOPK]
        rows = index.client.query(
            index.collection,
            filter=f"{ID_FIELD} in {_id_list(part)}",
            output_fields=[ID_FIELD, VECTOR_FIELD],
            consistency_level="Strong",
        )
        if len(rows):
            out_ids.append(np.fromiter((r[ID_FIELD] for r in rows), np.int64, len(rows)))
            out_vecs.append(np.asarray([r[VECTOR_FIELD] for r in rows], np.float32).reshape(len(rows), index.dim))
    if not out_ids:
        return np.zeros(0, np.int64), np.zeros((0, index.dim), np.float32)
    return np.concatenate(out_ids), np.concatenate(out_vecs)
