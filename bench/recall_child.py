"""One Recaller built in a fresh process: peak RSS (VmHWM), build time; optionally saved for reuse.

    python bench/recall_child.py --model-file M.npz --spec ffm4 --items I.npy --queries Q.npy \
        --index hnsw [--save DIR] [--pad 1] [--threads 0]

Prints one JSON line: RSS after imports / after loading the model and the item rows (the
baseline), VmHWM after building the index and after one batched search of the query rows, build
and search seconds, and the bytes of the exact item vectors and of the faiss index. Used by
bench/test_recall_ann.py (memory table; the 1M-item HNSW indexes are built here once and loaded by
the search benchmarks).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-file", default="")
    ap.add_argument("--spec", required=True)
    ap.add_argument("--items", default="")
    ap.add_argument("--queries", required=True)
    ap.add_argument("--index", default="exact")
    ap.add_argument("--pad", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--save", default="")
    ap.add_argument("--chunk", type=int, default=0, help="add_items in chunks of this many rows")
    ap.add_argument("--load", default="", help="measure a saved Recaller instead of building one")
    ap.add_argument("--latency", type=int, default=200, help="single-query samples (with --load)")
    a = ap.parse_args()
    if a.load:
        return latency(a)

    import numpy as np
    import recall_data as rd

    import fmrecall

    out = {"rss_imports_mb": common.status_mb("VmRSS")}
    model = fmrecall.load(a.model_file)
    model.threads = a.threads
    spec = rd.ModelSpec(a.spec)
    I = np.load(a.items)
    Q = np.load(a.queries)
    items = spec.items(I)
    queries = spec.queries(Q)
    out["rss_baseline_mb"] = common.status_mb("VmRSS")
    out["hwm_baseline_mb"] = common.status_mb("VmHWM")
    rec = fmrecall.Recaller(model, spec.sides, index=a.index, pad=bool(a.pad), threads=a.threads)
    t0 = time.perf_counter()
    if a.chunk:  # one add_items call per slice (add_items also slices internally: ADD_CHUNK)
        for s in range(0, items.n_rows, a.chunk):
            rows = np.arange(s, min(s + a.chunk, items.n_rows))
            rec.add_items(items.subset(rows), rows.astype(np.int64))
    else:
        rec.add_items(items, np.arange(items.n_rows, dtype=np.int64))
    out["build_seconds"] = time.perf_counter() - t0
    out["rss_built_mb"] = common.status_mb("VmRSS")
    out["hwm_built_mb"] = common.status_mb("VmHWM")
    t0 = time.perf_counter()
    res = rec.search(queries, a.k)
    out["search_seconds"] = time.perf_counter() - t0
    out["queries"] = int(queries.n_rows)
    out["hwm_mb"] = common.status_mb("VmHWM")
    out["rss_end_mb"] = common.status_mb("VmRSS")
    seg = rec.index.parts()[0]
    out["n_items"] = int(items.n_rows)
    out["dim"] = int(rec.dim)
    out["index_dim"] = int(seg.dim)
    out["vectors_mb"] = 0.0 if rec.exact else len(rec) * rec.dim * 4 / 2**20  # exact: faiss's copy only
    out["index_vectors_mb"] = seg.index.ntotal * seg.dim * 4 / 2**20
    out["ids_ok"] = bool((res.ids >= 0).all())
    if a.save:
        t0 = time.perf_counter()
        rec.save(a.save)
        out["save_seconds"] = time.perf_counter() - t0
        out["saved_bytes"] = sum(os.path.getsize(os.path.join(a.save, f)) for f in os.listdir(a.save))
    print(json.dumps(out), flush=True)


def latency(a) -> None:
    """Single-query latency and batched q/s of a saved Recaller (the process's OMP settings apply)."""
    import numpy as np
    import recall_data as rd

    import fmrecall

    spec = rd.ModelSpec(a.spec)
    rec = fmrecall.Recaller.load(a.load)
    Q = np.load(a.queries)
    queries = spec.queries(Q)
    singles = [spec.queries(Q[i : i + 1]) for i in range(min(a.latency, Q.shape[0]))]
    for x in singles[:5]:
        rec.search(x, a.k)
    ts = np.empty(a.latency)
    for i in range(a.latency):
        x = singles[i % len(singles)]
        t0 = time.perf_counter()
        rec.search(x, a.k)
        ts[i] = time.perf_counter() - t0
    ts *= 1e3
    rec.search(queries, a.k)
    best = common.best_of(lambda: rec.search(queries, a.k), 3)
    print(
        json.dumps(
            {
                "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
                "n": int(a.latency),
                "p50_ms": float(np.median(ts)),
                "p99_ms": float(np.percentile(ts, 99)),
                "mean_ms": float(ts.mean()),
                "min_ms": float(ts.min()),
                "batch_qps": queries.n_rows / best,
                "queries": int(queries.n_rows),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
