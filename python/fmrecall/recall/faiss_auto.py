"""index="auto": which faiss index a catalogue gets, from its dimension, size and norm spread.

The rule (measured on learned FM / FFM vectors, bench/results.md "index=auto"):

1. n·d ≤ EXACT_MAX_FLOATS (128 MiB of float32 vectors: 516k items at d = 65, 111k at d = 301):
   "exact". Exact batched search answers ~2,000 (d = 65, 516k items) to ~3,000 (d = 301, 100k)
   queries/s on 2 cores there; HNSW at 100k items, d = 301 was only 1.4× faster, and it is exact.
   segments > 1 (long vectors split for the certificate) are always exact.
2. d ≤ TIERED_MAX_DIM and the item norms spread (99th percentile / median ≥ SPREAD_MIN):
   "tiered-ivf" (faiss_tiers.py), one list per 256 items, probing 2·√(lists) of them by the
   radius-aware order. On short FM vectors the model's top items sit among the highest norms
   (77% of the top 100 in the top 1% by norm at 1M items, d = 65), where graph and plain inverted
   lists lose them; a tier per norm range with its own bound finds them.
3. otherwise (long vectors, or norms that do not spread): "hnsw" (L2-augmented, ef_search 128,
   400 candidates): 0.975 recall@100 at 2,300 q/s with 1M items at d = 301. (tiered-ivf found the
   FFM top items at 100k too, 0.994 with 40 of 389 lists, but is unmeasured at 1M, d = 301.)

The choice is made when the index is built (the first add) and made again when the catalogue has
grown REBUILD_GROWTH times since, or crosses the exact bound: the index is then rebuilt aside
while searches go on against the previous one.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np

EXACT_MAX_FLOATS = 1 << 25
TIERED_MAX_DIM = 128
SPREAD_MIN = 1.05
REBUILD_GROWTH = 4


def norm_spread(vecs: np.ndarray) -> float:
    """99th percentile / median of the row norms of float32 (n, d) vectors (1.0 if undefined)."""
    if vecs.shape[0] == 0:
        return 1.0
    norms = np.sqrt(np.einsum("ij,ij->i", vecs, vecs, dtype=np.float64))
    p50, p99 = np.percentile(norms, [50, 99])
    return float(p99 / p50) if p50 > 0 else 1.0


def choose(n: int, dim: int, spread: float, segments: int = 1) -> Tuple[str, str]:
    """(kind, reason): the index kind `auto` builds for n items of dimension dim whose norms spread
    by `spread` (p99 / median), split into `segments` parts."""
    if segments > 1:
        return "exact", "segments > 1: exact segment indexes give the certificate"
    if n * dim <= EXACT_MAX_FLOATS:
        return "exact", f"n·d = {n * dim:,} ≤ {EXACT_MAX_FLOATS:,}: exact search is fast enough"
    if dim <= TIERED_MAX_DIM and spread >= SPREAD_MIN:
        return "tiered-ivf", f"d = {dim} ≤ {TIERED_MAX_DIM} and norm spread {spread:.2f} ≥ {SPREAD_MIN}"
    why = f"d = {dim} > {TIERED_MAX_DIM}" if dim > TIERED_MAX_DIM else f"norm spread {spread:.2f} < {SPREAD_MIN}"
    return "hnsw", why


def stale(kind: str, built_n: int, n: int, dim: int, segments: int = 1) -> bool:
    """Whether an auto index of `kind`, built at built_n items, should be chosen again at n items
    (without looking at the vectors: only the exact bound and growth can change the kind)."""
    if segments > 1:
        return False
    small = n * dim <= EXACT_MAX_FLOATS
    if (kind == "exact") != small:
        return True
    return kind != "exact" and n >= REBUILD_GROWTH * max(built_n, 1)
