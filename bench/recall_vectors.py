"""The learned-vector catalogue as cached float32 arrays (bench/.cache): item vectors p, query
vectors q and the exact top-100 of every query, for the index studies of bench/recall_auto.py.

    python bench/recall_vectors.py            # build the cache (models and catalogue of recall_data)

Same models, catalogue (up to 1M items) and queries as bench/recall_bench.py; the arrays are
computed once with `model.split(sides)` and reused, so a study run does not re-parse the 414 MB
data file or rebuild 1M item vectors.
"""

from __future__ import annotations

import os
import sys
from typing import Dict, Tuple

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import recall_data as rd  # noqa: E402
import synth  # noqa: E402

N_MAX = 1_000_000
K = 100


def _path(name: str, what: str) -> str:
    return os.path.join(rd.CACHE, f"vectors_{name}_{N_MAX}_q{rd.N_QUERIES}_v{rd.VERSION}_{what}.npy")


def build() -> None:
    """Compute and cache p (N_MAX, d), q (queries, d), b (queries,) for every model."""
    if all(os.path.exists(_path(n, "truth")) for n in rd.MODELS):
        return
    path, meta = synth.ensure()
    data = rd.Data(path, meta)
    I, _ = rd.catalogue(data, N_MAX)
    for name in rd.MODELS:
        model, _ = rd.train_model(data, name)
        spec = rd.ModelSpec(name)
        split = model.split(spec.sides)
        P = split.item_vectors(spec.items(I))
        q, b = split.query_vectors(spec.queries(rd.query_rows(data, spec)))
        np.save(_path(name, "p"), P)
        np.save(_path(name, "q"), q)
        np.save(_path(name, "b"), b)
        for n in (100_000, N_MAX):
            np.save(_path(name, f"truth{n}"), exact_top(P[:n], q))
        np.save(_path(name, "truth"), np.zeros(0))


def exact_top(P: np.ndarray, q: np.ndarray) -> np.ndarray:
    """int64 (m, K) ids of the exact top K by inner product (faiss IndexFlatIP)."""
    import faiss

    index = faiss.IndexFlatIP(P.shape[1])
    index.add(np.ascontiguousarray(P))
    return index.search(np.ascontiguousarray(q), K)[1]


def load(name: str, n: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(p (n, d) mmap-backed, q (m, d), exact top-K ids (m, K)) of model `name` at n items."""
    if not os.path.exists(_path(name, f"truth{N_MAX}")):
        build()
    P = np.load(_path(name, "p"), mmap_mode="r")[:n]
    truth_file = _path(name, f"truth{n}")
    q = np.load(_path(name, "q"))
    if not os.path.exists(truth_file):
        np.save(truth_file, exact_top(np.asarray(P), q))
    return P, q, np.load(truth_file)


def models() -> Dict[str, str]:
    return dict(rd.LABELS)


if __name__ == "__main__":
    build()
    for name in rd.MODELS:
        P, q, t = load(name, N_MAX)
        nrm = np.linalg.norm(P, axis=1)
        print(name, P.shape, q.shape, "norm p5/50/95/max", np.percentile(nrm, [5, 50, 95, 100]).round(3))
