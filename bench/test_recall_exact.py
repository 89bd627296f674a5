"""Exact search on learned vectors: ``Recaller(index="exact")`` (faiss IndexFlatIP) and faiss's BLAS
settings. Models, catalogue and queries: bench/recall_bench.py (the session's ``R``).

* test_exact_batch     — Recaller(index="exact").search of 1,000 queries, k=100, with faiss's
                         default BLAS settings, with recall.EXACT_BLAS and with TUNED_BLAS.
* test_exact_latency   — single-query p50 / p99 latency of the exact Recaller (default vs tuned).
* test_blas_sweep      — faiss IndexFlatIP on the same vectors: BLAS block sizes at 1,000 queries,
                         and the sequential-vs-BLAS crossover by batch size (for the threshold).

    PYTHONPATH=python python3 -m pytest bench/test_recall_exact.py --benchmark-only -q

Environment: see bench/recall_bench.py.
"""

from __future__ import annotations

import os
import sys
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import common  # noqa: E402
import faiss  # noqa: E402
import recall_data as rd  # noqa: E402
import report  # noqa: E402
from recall_bench import (  # noqa: E402
    BLAS_SETTINGS,
    FAISS_DEFAULT_BLAS,
    LAT_BUDGET_S,
    LAT_MAX,
    SIZES,
    TUNED_BLAS,  # noqa: E402
    K,
    blas,
    grid,
    latency,
    numpy_rates,
    pad_dim,
    pad_to,
    recall_at,
    stats_ms,
    timed_rounds,
)

import fmrecall.recall.faiss_config as fconfig  # noqa: E402


# ------------------------------------------------------------------------------------- exact
@pytest.mark.parametrize("setting", list(BLAS_SETTINGS))
@pytest.mark.parametrize("name,n", grid())
def test_exact_batch(benchmark, R, monkeypatch, name, n, setting):
    rec, build_s = R.recaller(name, n, "exact")
    settings = BLAS_SETTINGS[setting]
    used = dict(FAISS_DEFAULT_BLAS)
    used.update(fconfig.EXACT_BLAS if settings is None else settings)
    fconfig.configure_faiss(used)  # explicitly, once, before the searches (fmrecall's rule)
    qds = R.qds[name]
    with common.ForeignLoad() as load:
        t0 = time.perf_counter()
        rec.search(qds, K)  # warm-up, and the round count
        rounds = timed_rounds(time.perf_counter() - t0)
        res = benchmark.pedantic(rec.search, args=(qds, K), rounds=rounds, iterations=1)
        secs = benchmark.stats.stats.min
        # the faiss index alone, same settings and vectors (what the Recaller adds: query vectors,
        # masking, the final top-k cut)
        seg = rec.index.parts()[0]
        qp = seg.queries(R.q[name])
        with blas(used):
            raw_secs = common.best_of(lambda: seg.index.search(qp, K), max(1, rounds - 1))
    ref = numpy_rates(R, name, n)
    nq = qds.n_rows
    qps = nq / secs
    row = {
        "model": rd.LABELS[name],
        "n_items": n,
        "dim": rec.dim,
        "index_dim": seg.dim,
        "setting": setting,
        "blas": used,
        "queries": nq,
        "k": K,
        "seconds_min": secs,
        "seconds_mean": benchmark.stats.stats.mean,
        "qps": qps,
        "faiss_only_qps": nq / raw_secs,
        "build_seconds": build_s,
        "numpy_qps_padded": ref["numpy_qps_padded"],
        "numpy_qps_raw": ref["numpy_qps_raw"],
        "ratio_vs_numpy_padded": qps / ref["numpy_qps_padded"],
        "ratio_vs_numpy_raw": qps / ref["numpy_qps_raw"],
        "faiss_only_ratio_vs_numpy_padded": (nq / raw_secs) / ref["numpy_qps_padded"],
        "recall_vs_truth": recall_at(res.ids, R.truth(name, n)),
        "other_load": load.share,
    }
    benchmark.extra_info.update(row)
    report.record("recall_exact", f"{name}-{n}-{setting}", row)
    assert row["recall_vs_truth"] > 0.999  # exact is exact (ties aside)


@pytest.mark.parametrize("setting", ["faiss-default", "tuned"])
@pytest.mark.parametrize("name,n", grid())
def test_exact_latency(benchmark, R, monkeypatch, name, n, setting):
    rec, _ = R.recaller(name, n, "exact")
    fconfig.configure_faiss({**FAISS_DEFAULT_BLAS, **BLAS_SETTINGS[setting]})
    qs = R.q1[name]
    state = {"i": 0}

    def setup():
        state["i"] = (state["i"] + 1) % len(qs)
        return (qs[state["i"]], K), {}

    est = common.best_of(lambda: rec.search(qs[0], K), 2)
    rounds = int(min(LAT_MAX, max(20, LAT_BUDGET_S / max(est, 1e-5))))
    with common.ForeignLoad() as load:
        benchmark.pedantic(rec.search, setup=setup, rounds=rounds, iterations=1, warmup_rounds=1)
        lat = stats_ms(benchmark)
        seg = rec.index.parts()[0]
        qp = [seg.queries(R.q[name][i : i + 1]) for i in range(min(len(qs), rounds))]
        with blas({**FAISS_DEFAULT_BLAS, **BLAS_SETTINGS[setting]}):
            raw = latency(lambda x: seg.index.search(x, K), qp, max_n=rounds)
    row = {
        "model": rd.LABELS[name],
        "n_items": n,
        "dim": rec.dim,
        "setting": setting,
        "k": K,
        **lat,
        "faiss_only": raw,
        "other_load": load.share,
    }
    benchmark.extra_info.update(row)
    report.record("recall_exact_latency", f"{name}-{n}-{setting}", row)


@pytest.mark.parametrize("name,n", grid())
def test_blas_sweep(benchmark, R, name, n):
    """faiss IndexFlatIP on the padded vectors: BLAS block sizes at 1,000 queries (rounds interleaved
    over the grid, so intermittent load hits every cell alike; best round kept); reservoir vs heap
    top-k; sequential path vs BLAS by batch size (for the threshold)."""
    d = R.P[name].shape[1]
    dp = pad_dim(d)
    P = pad_to(R.P[name][:n], dp)
    qp = pad_to(R.q[name], dp)
    index = faiss.IndexFlatIP(dp)
    index.add(P)
    del P
    nq = qp.shape[0]
    small = n == SIZES[0]
    reps = 3 if small else 1
    grid = [(qb, db) for qb in ([256, 1024, 4096] if small else [4096]) for db in [1024, 4096, 16384, 65536]]
    best = {g: float("inf") for g in grid}
    best_default = float("inf")
    heap = {"reservoir": float("inf"), "heap": float("inf")}
    with common.ForeignLoad() as load:
        with blas(TUNED_BLAS):
            index.search(qp, K)  # warm
        for _ in range(reps):
            for qbs, dbbs in grid:
                s = {
                    "distance_compute_blas_threshold": 0,
                    "distance_compute_blas_query_bs": qbs,
                    "distance_compute_blas_database_bs": dbbs,
                }
                with blas(s):
                    best[(qbs, dbbs)] = min(best[(qbs, dbbs)], common.best_of(lambda: index.search(qp, K), 1))
            with blas(FAISS_DEFAULT_BLAS):
                best_default = min(best_default, common.best_of(lambda: index.search(qp, K), 1))
            # k=100 uses faiss's reservoir top-k (k >= distance_compute_min_k_reservoir = 100); heap otherwise
            old = faiss.cvar.distance_compute_min_k_reservoir
            try:
                for kind, mk in (("reservoir", old), ("heap", K + 1)):
                    faiss.cvar.distance_compute_min_k_reservoir = mk
                    with blas(TUNED_BLAS):
                        heap[kind] = min(heap[kind], common.best_of(lambda: index.search(qp, K), 1))
            finally:
                faiss.cvar.distance_compute_min_k_reservoir = old
        blocks = [{"query_bs": qb, "database_bs": db, "qps": nq / best[(qb, db)]} for qb, db in grid]
        # crossover: sequential path (threshold = inf) vs BLAS (threshold = 0), tuned block sizes
        cross = []
        for m in (1, 2, 4, 8, 16, 32, 64, 128, 256) if small else (1, 4, 16):
            x = qp[:m]
            row = {"nq": m}
            times = {"seq": float("inf"), "blas": float("inf")}
            for path, thr in (("seq", 1 << 30), ("blas", 0)):
                with blas(dict(TUNED_BLAS, distance_compute_blas_threshold=thr)):
                    index.search(x, K)
            t1 = time.perf_counter()
            index.search(x, K)
            one = time.perf_counter() - t1
            reps_m = int(min(30, max(3, 0.3 / max(one, 1e-6))))
            for _ in range(reps_m):  # interleaved
                for path, thr in (("seq", 1 << 30), ("blas", 0)):
                    with blas(dict(TUNED_BLAS, distance_compute_blas_threshold=thr)):
                        times[path] = min(times[path], common.best_of(lambda: index.search(x, K), 1))
            row.update(
                seq_qps=m / times["seq"],
                blas_qps=m / times["blas"],
                blas_over_seq=times["seq"] / times["blas"],
                reps=reps_m,
            )
            cross.append(row)
        with blas(TUNED_BLAS):
            benchmark.pedantic(index.search, args=(qp, K), rounds=reps, iterations=1)
    top = max(blocks, key=lambda r: r["qps"])
    row = {
        "model": rd.LABELS[name],
        "n_items": n,
        "dim": d,
        "index_dim": dp,
        "queries": nq,
        "rounds": reps,
        "blocks": blocks,
        "best": top,
        "faiss_default_qps": nq / best_default,
        "tuned_qps": nq / benchmark.stats.stats.min,
        "reservoir_qps": nq / heap["reservoir"],
        "heap_qps": nq / heap["heap"],
        "crossover": cross,
        "numpy_qps_padded": numpy_rates(R, name, n)["numpy_qps_padded"],
        "other_load": load.share,
    }
    benchmark.extra_info.update({k: v for k, v in row.items() if k not in ("blocks", "crossover")})
    report.record("recall_blas_sweep", f"{name}-{n}", row)
