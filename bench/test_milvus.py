"""Milvus Lite HNSW (fmrecall.MilvusIndex) vs faiss HNSW on the raw inner product
(Recaller(index="hnsw-ip")) on learned vectors: the FM k=64 (d=65) and FFM k=4 (d=301) models and
item catalogues of bench/recall_data.py (the ones bench/test_recall_ann.py uses).

Both sides use the same HNSW graph parameters (M=32, efConstruction=80) and the same search rule
(candidates = max(4k, 100) = 400 for k = 100, walked with ef = max(ef_search=128, candidates)), and
both re-score their candidates exactly, so the scores agree; what differs is recall@100 (against
exact search on the same vectors), batched queries/s, p50 single-query latency and build time.
Milvus Lite's build = upserts + flush + its HNSW build (in Milvus Lite's background thread).

    PYTHONPATH=python python3 -m pytest bench/test_milvus.py --benchmark-only -q -p no:cacheprovider

Environment:
    FMRECALL_BENCH_MILVUS_SIZES=100000        catalogue sizes (1000000 too, if you have the time:
                                              Milvus Lite upserts and indexes in Python threads)
    FMRECALL_BENCH_MILVUS_QUERIES=200         queries of the batched search (and of recall@100)
    FMRECALL_BENCH_MILVUS_LATENCY=50          single-query samples for p50
    FMRECALL_BENCH_ROWS                       synthetic data size (bench/synth.py; default 1M rows)

The table is written into bench/results.md under "## Milvus Lite vs faiss" (that section only; it
is replaced when the benchmark runs again). Nothing here renders bench/report.py's tables, so this run does
not regenerate the rest of results.md. Speed is reported, never asserted.
"""

from __future__ import annotations

import gc
import os
import shutil
import sys
import tempfile
import time
from typing import Dict, List

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import common  # noqa: E402
import faiss  # noqa: E402
import recall_data as rd  # noqa: E402
import report  # noqa: E402
import synth  # noqa: E402

import fmrecall  # noqa: E402

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

SIZES = [int(x) for x in os.environ.get("FMRECALL_BENCH_MILVUS_SIZES", "100000").split(",") if x]
N_QUERIES = int(os.environ.get("FMRECALL_BENCH_MILVUS_QUERIES", 200))
N_LATENCY = int(os.environ.get("FMRECALL_BENCH_MILVUS_LATENCY", 50))
K = 100
HNSW_M, EF_CONSTRUCTION, EF_SEARCH = 32, 80, 128
HEADING = "## Milvus Lite vs faiss"
COMMAND = "PYTHONPATH=python python3 -m pytest bench/test_milvus.py --benchmark-only -q -p no:cacheprovider"
ROWS: Dict[str, Dict] = {}


def recall_at(ids: np.ndarray, truth: np.ndarray, k: int = K) -> float:
    """Mean over queries of |returned top-k ∩ exact top-k| / k (as bench/recall_bench.py)."""
    hits = sum(int(np.isin(a[a >= 0], t).sum()) for a, t in zip(ids[:, :k], truth[:, :k]))
    return hits / (truth.shape[0] * k)


def p50_ms(fn, items: List) -> float:
    fn(items[0])  # warm-up
    ts = []
    for i in range(N_LATENCY):
        t0 = time.perf_counter()
        fn(items[i % len(items)])
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts) * 1e3)


class World:
    """One model's learned item vectors, queries and exact top-100, for the largest size."""

    def __init__(self, data: rd.Data, name: str, n_max: int):
        self.name = name
        self.model = rd.train_model(data, name)[0]
        self.spec = rd.ModelSpec(name)
        self.I, _ = rd.catalogue(data, n_max)
        rows = rd.query_rows(data, self.spec, n=N_QUERIES)
        self.queries = self.spec.queries(rows)
        self.singles = [self.spec.queries(rows[i : i + 1]) for i in range(min(N_LATENCY, rows.shape[0]))]
        split = self.model.split(self.spec.sides)
        self.P = split.item_vectors(self.spec.items(self.I))
        self.q = split.query_vectors(self.queries)[0]
        self._truth: Dict[int, np.ndarray] = {}

    def items(self, n: int):
        return self.spec.items(self.I[:n])

    def truth(self, n: int) -> np.ndarray:
        if n not in self._truth:
            index = faiss.IndexFlatIP(self.P.shape[1])
            index.add(np.ascontiguousarray(self.P[:n]))
            self._truth[n] = index.search(self.q, K)[1]
        return self._truth[n]


@pytest.fixture(scope="module")
def worlds():
    path, meta = synth.ensure()
    data = rd.Data(path, meta)
    out = {name: World(data, name, max(SIZES)) for name in rd.MODELS}
    yield out
    _write_results()


@pytest.fixture(scope="module")
def lite_dir():
    d = tempfile.mkdtemp(prefix="fmrecall-milvus-bench-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _grid():
    return [
        pytest.param(name, n, engine, id=f"{name}-{n // 1000}k-{engine}")
        for name in rd.MODELS
        for n in SIZES
        for engine in ("faiss", "milvus")
    ]


@pytest.mark.parametrize("name,n,engine", _grid())
def test_milvus_vs_faiss(benchmark, worlds, lite_dir, name, n, engine):
    w = worlds[name]
    items, ids = w.items(n), np.arange(n, dtype=np.int64)
    extra = {}
    with common.ForeignLoad() as load:
        if engine == "faiss":
            rec = fmrecall.Recaller(
                w.model,
                w.spec.sides,
                index="hnsw-ip",
                hnsw_m=HNSW_M,
                ef_construction=EF_CONSTRUCTION,
                ef_search=EF_SEARCH,
            )
            t0 = time.perf_counter()
            rec.add_items(items, ids)
            build = time.perf_counter() - t0
        else:
            index = fmrecall.MilvusIndex(
                os.path.join(lite_dir, f"{name}_{n}.db"),
                f"{name}_{n}",
                "HNSW",
                params={"M": HNSW_M, "efConstruction": EF_CONSTRUCTION, "ef": EF_SEARCH},
            )
            rec = fmrecall.Recaller(w.model, w.spec.sides, index=index)
            t0 = time.perf_counter()
            rec.add_items(items, ids)
            extra["upsert_s"] = time.perf_counter() - t0
            index.flush(wait=True)  # seal and let Milvus Lite build its HNSW index
            build = time.perf_counter() - t0
        res = benchmark.pedantic(rec.search, args=(w.queries, K), rounds=2, iterations=1, warmup_rounds=1)
        qps = w.queries.n_rows / benchmark.stats.stats.min
        search = rec.search
        p50 = p50_ms(lambda qd: search(qd, K), w.singles)
    # every score is exact: b + <q, p> of the returned id
    b = w.model.split(w.spec.sides).query_vectors(w.queries)[1]
    got = res.ids[:, :5]
    want = b[:, None] + np.einsum("qd,qkd->qk", w.q, w.P[got])
    np.testing.assert_allclose(res.scores[:, :5], want, rtol=1e-4, atol=1e-4)
    row = {
        "model": rd.LABELS[name],
        "n": n,
        "engine": engine,
        "dim": rec.dim,
        "build_s": build,
        "recall": recall_at(res.ids, w.truth(n)),
        "qps": qps,
        "p50_ms": p50,
        "other_load": load.share,
        **extra,
    }
    benchmark.extra_info.update(row)
    ROWS[f"{name}-{n}-{engine}"] = row
    if engine == "milvus":
        rec.index.client.drop_collection(rec.index.collection)
        rec.index.close()
    del rec
    gc.collect()


def _write_results() -> None:
    if not ROWS:
        return
    lines = [
        HEADING,
        "",
        f'`fmrecall.MilvusIndex(uri=<file>.db, index_type="HNSW", params={{"M": {HNSW_M}, '
        f'"efConstruction": {EF_CONSTRUCTION}, "ef": {EF_SEARCH}}})` (Milvus Lite '
        f"{_version('milvus_lite')}, pymilvus {_version('pymilvus')}, embedded in the process) vs "
        f'`Recaller(index="hnsw-ip", hnsw_m={HNSW_M}, ef_construction={EF_CONSTRUCTION}, '
        f"ef_search={EF_SEARCH})`; k = {K}, candidates max(4k, 100) = 400 re-scored exactly on both sides "
        f"(HNSW walks max(ef, 400)). Recall@{K} against exact search on the same learned vectors; q/s = "
        f"{N_QUERIES} queries in one `search` call (best of 2); p50 = one query per call, "
        f"{N_LATENCY} calls. Milvus build = upserts + flush + Milvus Lite's background HNSW build. "
        "Milvus Lite 3 is a Python server running in threads of the benchmark process (gRPC over "
        "127.0.0.1, its HNSW is faiss's IndexHNSWFlat per 100k-row segment): its time per query is "
        "mostly that server's Python code and the candidate vectors' transfer, not the graph walk; a "
        "Milvus cluster would be measured over the network instead. Beyond 100k items Milvus Lite "
        "searches every 100k-row segment for the 400 candidates and merges them (10 graph walks at 1M "
        "items): more candidates, hence its higher recall there, and per-request work that grows with "
        "the catalogue (its single-query latency).",
        "",
        "| model | items | engine | build s (upsert s) | recall@100 | q/s (batched) | p50 ms (1 query) | other load |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key in sorted(ROWS, key=lambda k: (ROWS[k]["dim"], ROWS[k]["n"], ROWS[k]["engine"])):
        r = ROWS[key]
        up = f" ({r['upsert_s']:.1f})" if "upsert_s" in r else ""
        load = "" if r["other_load"] is None else f"{100 * r['other_load']:.0f}%"
        engine = "Milvus Lite HNSW" if r["engine"] == "milvus" else "faiss hnsw-ip"
        lines.append(
            f"| {r['model']} | {r['n']:,} | {engine} | {r['build_s']:.1f}{up} | {r['recall']:.4f} | "
            f"{r['qps']:,.0f} | {r['p50_ms']:.1f} | {load} |"
        )
    env = "" if SIZES == [100000] else f"FMRECALL_BENCH_MILVUS_SIZES={','.join(map(str, SIZES))} "
    lines += [
        "",
        f"Reproduce: `{env}{COMMAND}` ({time.strftime('%Y-%m-%d')}, 2 cores; *other load* = CPU share "
        "of other processes meanwhile).",
        "",
    ]
    report.replace_section(HEADING, "\n".join(lines))


def _version(module: str) -> str:
    try:
        return __import__(module).__version__
    except Exception:  # pragma: no cover
        return "?"
