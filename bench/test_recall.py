"""Retrieval benchmarks on learned vectors (issue "one-stage retrieval").

Two models trained on the Criteo-shaped synthetic clicks (bench/recall_data.py): FM k=64 (d=65)
and FFM k=4 on 5 query × 15 item fields (d=301). Item catalogues of 100k and 1M items are built
from the data's item rows (perturbed copies beyond the distinct rows), 1,000 distinct query rows
from the validation rows. Every ANN recall@100 is measured against exact search on the same
learned vectors. Speed is reported, never asserted.

* test_numpy_sgemm     — numpy ``Q @ P.T`` (1,000 queries) at the raw and the padded dimension:
                         the sgemm rate the exact index is compared with.
* test_exact_batch     — Recaller(index="exact").search of 1,000 queries, k=100, with faiss's
                         default BLAS settings, with recall.EXACT_BLAS and with TUNED_BLAS.
* test_exact_latency   — single-query p50 / p99 latency of the exact Recaller (default vs tuned).
* test_blas_sweep      — faiss IndexFlatIP on the same vectors: BLAS block sizes at 1,000 queries,
                         and the sequential-vs-BLAS crossover by batch size (for the threshold).
* test_hnsw            — Recaller(index="hnsw") (L2-augmented vectors, M=32): build time, then
                         batched q/s, p50/p99 latency and recall@100 over (candidates, ef_search).
* test_hnsw_raw_ip     — faiss "HNSW32,Flat" on the raw inner product (no augmentation).
* test_ivf             — Recaller(index="ivf"), nlist = 4·sqrt(N), over nprobe.
* test_padding         — pad=True vs pad=False (d 65→80, 301→304), exact and HNSW.
* test_split_builder   — items/s of split.item_vectors (FFM 10 query × 20 item fields, k=4, d=801)
                         with 1 and 2 threads, and query_vectors rows/s.
* test_split_gil       — item_vectors in a Python thread while another Python thread spins.
* test_memory          — peak RSS of a 1M-item d=301 Recaller (exact, hnsw) in a subprocess.
* test_lightfm         — LightFM WARP vs fmrecall FM on MovieLens-100K u1 (when lightfm imports).

    PYTHONPATH=python python3 -m pytest bench/test_recall.py --benchmark-only -q

Environment (defaults = the full run, ~25 min on 2 cores):
    FMRECALL_BENCH_RECALL_SIZES=100000,1000000   catalogue sizes (the 1st is also used for sweeps)
    FMRECALL_BENCH_RECALL_QUERIES=1000            batch size / queries for recall
    FMRECALL_BENCH_RECALL_ROUNDS=3                timed rounds of batched searches
    FMRECALL_BENCH_RECALL_LATENCY=200             max single-query samples per config
    FMRECALL_BENCH_RECALL_LATENCY_S=6             time budget per latency measurement (s)
    FMRECALL_BENCH_RECALL_TRAIN_ROWS / _EPOCHS    model training (see recall_data.py)
    FMRECALL_BENCH_RECALL_IVF_MPPC=32             IVF k-means points per centroid at N >= 1M
                                                  (0 = faiss default 256; slow: minutes at d=301)
    FMRECALL_BENCH_RECALL_RAW_IP_ALL=0            1 = raw-IP HNSW also at the larger sizes (+4 min
                                                  per 1M-item build)
A quick run: FMRECALL_BENCH_ROWS=100000 FMRECALL_BENCH_RECALL_SIZES=20000,50000.
"""
from __future__ import annotations

import gc
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from typing import Dict, List, Optional, Tuple

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import common  # noqa: E402
import recall_data as rd  # noqa: E402
import report  # noqa: E402

import faiss  # noqa: E402

import fmrecall  # noqa: E402
import fmrecall.recall.faiss_config as fconfig  # noqa: E402
import fmrecall.recall.faiss_segment as fsegment  # noqa: E402

SIZES = [int(x) for x in os.environ.get("FMRECALL_BENCH_RECALL_SIZES", "100000,1000000").split(",") if x]
ROUNDS = int(os.environ.get("FMRECALL_BENCH_RECALL_ROUNDS", 3))
LAT_MAX = int(os.environ.get("FMRECALL_BENCH_RECALL_LATENCY", 200))
LAT_BUDGET_S = float(os.environ.get("FMRECALL_BENCH_RECALL_LATENCY_S", 6))
IVF_MPPC = int(os.environ.get("FMRECALL_BENCH_RECALL_IVF_MPPC", 32))
RAW_IP_ALL = os.environ.get("FMRECALL_BENCH_RECALL_RAW_IP_ALL", "0") == "1"
K = 100
CHILD_MIN_N = 1_000_000  # HNSW indexes this large are built in a subprocess (peak RSS) and loaded
MODEL_NAMES = list(rd.MODELS)

BLAS_KEYS = ("distance_compute_blas_threshold", "distance_compute_blas_query_bs", "distance_compute_blas_database_bs")
FAISS_DEFAULT_BLAS = {k: int(getattr(faiss.cvar, k)) for k in BLAS_KEYS}  # read at import: untouched
# Recommended recall.EXACT_BLAS (from test_blas_sweep on this machine; see results.md): the shipped
# block sizes are within noise of the best cell; BLAS pays off from nq·d ≈ 1,000 (4 queries at d=304).
TUNED_BLAS = {"distance_compute_blas_threshold": 1024,
              "distance_compute_blas_query_bs": 4096,
              "distance_compute_blas_database_bs": 16384}
BLAS_SETTINGS = {"faiss-default": {}, "EXACT_BLAS": None, "tuned": TUNED_BLAS}  # None = as shipped

# (candidates, ef_search); None = the Recaller's default candidates (max(4k, 100) = 400 for k = 100)
# (the walk is max(ef_search, candidates): the default (None, 128) searches 400 deep for k = 100)
HNSW_SWEEP = [(None, 128), (100, 100), (100, 200), (100, 400), (100, 800), (400, 800)]
IVF_NPROBE = [8, 16, 32, 64, 128, 256]


# ------------------------------------------------------------------------------------- helpers
def _sizes_id(n: int) -> str:
    return f"{n // 1000}k" if n < 1_000_000 else f"{n / 1e6:g}M"


def _pad_to(a: np.ndarray, d: int) -> np.ndarray:
    if a.shape[1] == d:
        return np.ascontiguousarray(a, dtype=np.float32)
    out = np.zeros((a.shape[0], d), dtype=np.float32)
    out[:, :a.shape[1]] = a
    return out


def _pad_dim(d: int) -> int:
    return fsegment.pad_width(d, True)


class blas:
    """Set faiss's BLAS globals for a block (restored after)."""

    def __init__(self, settings: Optional[Dict[str, int]]):
        self.settings = settings or {}

    def __enter__(self):
        self.old = {k: getattr(faiss.cvar, k) for k in BLAS_KEYS}
        for k, v in self.settings.items():
            setattr(faiss.cvar, k, int(v))
        return self

    def __exit__(self, *exc):
        for k, v in self.old.items():
            setattr(faiss.cvar, k, v)
        return False


def _rounds(seconds_one: float) -> int:
    """Timed rounds: ROUNDS, but one round (no warm-up) when a single call takes over 4 s."""
    return 1 if seconds_one > 4.0 else ROUNDS


def _latency(fn, items: List, budget_s: float = LAT_BUDGET_S, max_n: int = LAT_MAX, min_n: int = 20):
    """Single-call latencies (ms) of fn(item) cycling over items: p50, p99, mean, n."""
    fn(items[0])
    t0 = time.perf_counter()
    fn(items[1 % len(items)])
    est = max(time.perf_counter() - t0, 1e-5)
    n = int(min(max_n, max(min_n, budget_s / est)))
    ts = np.empty(n)
    for i in range(n):
        x = items[i % len(items)]
        t0 = time.perf_counter()
        fn(x)
        ts[i] = time.perf_counter() - t0
    ts *= 1e3
    return {"p50_ms": float(np.median(ts)), "p99_ms": float(np.percentile(ts, 99)), "mean_ms": float(ts.mean()),
            "min_ms": float(ts.min()), "n": n}


def recall_at(ids: np.ndarray, truth: np.ndarray, k: int = K) -> float:
    """Mean over queries of |returned top-k ∩ exact top-k| / k."""
    hits = 0
    for a, t in zip(ids[:, :k], truth[:, :k]):
        hits += int(np.isin(a[a >= 0], t).sum())
    return float(hits) / (truth.shape[0] * k)


def _stats_ms(benchmark) -> Dict[str, float]:
    data = np.asarray(benchmark.stats.stats.data) * 1e3
    return {"p50_ms": float(np.median(data)), "p99_ms": float(np.percentile(data, 99)), "mean_ms": float(data.mean()),
            "min_ms": float(data.min()), "n": int(data.size)}


# ------------------------------------------------------------------------------------- state
class State:
    """Everything shared by the benchmarks: models, catalogue, vectors, queries, exact truth."""

    def __init__(self, path: str, meta: Dict):
        t0 = time.perf_counter()
        self.data = rd.Data(path, meta)
        self.models: Dict[str, Tuple] = {}
        self.specs = {n: rd.ModelSpec(n) for n in MODEL_NAMES}
        for name in MODEL_NAMES:
            self.models[name] = rd.train_model(self.data, name)
        self.n_max = max(SIZES)
        self.I, self.cat_info = rd.catalogue(self.data, self.n_max)
        self.P: Dict[str, np.ndarray] = {}
        self.qds, self.q, self.b, self.q1 = {}, {}, {}, {}
        self.qrows = {}
        for name in MODEL_NAMES:
            model, spec = self.models[name][0], self.specs[name]
            split = model.split(spec.sides)
            self.P[name] = split.item_vectors(spec.items(self.I))
            rows = rd.query_rows(self.data, spec)
            self.qrows[name] = rows
            self.qds[name] = spec.queries(rows)
            self.q[name], self.b[name] = split.query_vectors(self.qds[name])
            self.q1[name] = [spec.queries(rows[i:i + 1]) for i in range(min(LAT_MAX, rows.shape[0]))]
        self._truth: Dict[Tuple[str, int], np.ndarray] = {}
        self._recallers: Dict[Tuple, Tuple] = {}
        self.setup_seconds = time.perf_counter() - t0

    def model(self, name):
        return self.models[name][0]

    def items(self, name: str, n: int):
        return self.specs[name].items(self.I[:n])

    def truth(self, name: str, n: int) -> np.ndarray:
        """Exact top-K ids of the 1,000 queries over the first n items (faiss flat IP on the raw
        float32 vectors, no padding; the per-query constant b does not change the order)."""
        key = (name, n)
        if key not in self._truth:
            P = self.P[name][:n]
            index = faiss.IndexFlatIP(P.shape[1])
            index.add(np.ascontiguousarray(P))
            with blas(TUNED_BLAS):
                _, ids = index.search(self.q[name], K)
            self._truth[key] = ids
        return self._truth[key]

    def recaller(self, name: str, n: int, index: str = "exact", keep: bool = True, **kw):
        """(Recaller with the first n items, build seconds), cached per configuration."""
        key = (name, n, index, tuple(sorted(kw.items())))
        if key in self._recallers:
            return self._recallers[key]
        rec = fmrecall.Recaller(self.model(name), self.specs[name].sides, index=index, **kw)
        t0 = time.perf_counter()
        rec.add_items(self.items(name, n), np.arange(n, dtype=np.int64))
        out = (rec, time.perf_counter() - t0)
        if keep:
            self._recallers[key] = out
        return out

    def drop(self, pred) -> None:
        for key in [k for k in self._recallers if pred(k)]:
            del self._recallers[key]
        gc.collect()


@pytest.fixture(scope="module")
def R(synth_file):
    path, meta = synth_file
    st = State(path, meta)
    for name in MODEL_NAMES:
        info = dict(st.models[name][1])
        info.update(dim=int(st.P[name].shape[1]), catalogue=st.cat_info, n_items_max=st.n_max,
                    queries=int(st.q[name].shape[0]),
                    p_norm_median=float(np.median(np.linalg.norm(st.P[name], axis=1))),
                    q_norm_median=float(np.median(np.linalg.norm(st.q[name], axis=1))),
                    sides={"user": list(st.specs[name].sides.user), "context": list(st.specs[name].sides.context),
                           "item": list(st.specs[name].sides.item)},
                    data_columns={"query": st.specs[name].query_cols, "item": st.specs[name].item_cols})
        report.record("recall_models", name, info)
    yield st
    st.drop(lambda k: True)
    shutil.rmtree(os.path.join(rd.CACHE, f"recall_child_{os.getpid()}"), ignore_errors=True)


def _grid(sizes=None):
    sizes = SIZES if sizes is None else sizes
    return [pytest.param(m, n, id=f"{m}-{_sizes_id(n)}") for m in MODEL_NAMES for n in sizes]


_numpy_rates: Dict[Tuple[str, int], Dict[str, float]] = {}


def _numpy_rate(q: np.ndarray, P: np.ndarray, reps: int) -> float:
    """queries/s of Q @ P.T (float32 sgemm, numpy's BLAS), chunked so the output stays <= 512 MB."""
    n = P.shape[0]
    chunk = int(max(1, min(q.shape[0], (512 << 20) // (4 * n))))
    buf = np.empty((chunk, n), dtype=np.float32)

    def run():
        for s in range(0, q.shape[0], chunk):
            c = min(chunk, q.shape[0] - s)
            np.matmul(q[s:s + c], P.T, out=buf[:c])

    run()
    return q.shape[0] / common.best_of(run, reps)


def numpy_rates(R: State, name: str, n: int) -> Dict[str, float]:
    key = (name, n)
    if key not in _numpy_rates:
        P, q = R.P[name][:n], R.q[name]
        d = P.shape[1]
        dp = _pad_dim(d)
        raw = _numpy_rate(q, P, ROUNDS)
        padded = _numpy_rate(_pad_to(q, dp), _pad_to(P, dp), ROUNDS) if dp != d else raw
        _numpy_rates[key] = {"numpy_qps_raw": raw, "numpy_qps_padded": padded, "dim": d, "dim_padded": dp}
    return _numpy_rates[key]


def _numpy_threads() -> Optional[int]:
    try:
        from threadpoolctl import threadpool_info
        for i in threadpool_info():
            if i.get("internal_api") == "openblas" and "numpy" in i.get("filepath", ""):
                return int(i["num_threads"])
    except Exception:  # threadpoolctl absent: OpenBLAS uses its environment variable or every core
        pass
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return os.cpu_count()


# ------------------------------------------------------------------------------------- exact
@pytest.mark.parametrize("name,n", _grid())
def test_numpy_sgemm(benchmark, R, name, n):
    P, q = R.P[name][:n], R.q[name]
    d = P.shape[1]
    dp = _pad_dim(d)
    Pp, qp = _pad_to(P, dp), _pad_to(q, dp)
    n_q = q.shape[0]
    chunk = int(max(1, min(n_q, (512 << 20) // (4 * n))))
    buf = np.empty((chunk, n), dtype=np.float32)

    def run(qq, PP):
        for s in range(0, n_q, chunk):
            c = min(chunk, n_q - s)
            np.matmul(qq[s:s + c], PP.T, out=buf[:c])

    t0 = time.perf_counter()
    run(qp, Pp)
    rounds = min(ROUNDS, 2) if time.perf_counter() - t0 > 2.0 else ROUNDS
    with common.ForeignLoad() as load:
        benchmark.pedantic(run, args=(qp, Pp), rounds=rounds, iterations=1)
        padded = n_q / benchmark.stats.stats.min
        raw = n_q / common.best_of(lambda: run(q, P), rounds) if dp != d else padded
    _numpy_rates[(name, n)] = {"numpy_qps_raw": raw, "numpy_qps_padded": padded, "dim": d, "dim_padded": dp}
    row = {"model": rd.LABELS[name], "n_items": n, "dim": d, "dim_padded": dp, "queries": n_q,
           "numpy_qps_padded": padded, "numpy_qps_raw": raw,
           "gflops_padded": 2.0 * n_q * n * dp / (n_q / padded) / 1e9, "gflops_raw": 2.0 * n_q * n * d / (n_q / raw) / 1e9,
           "numpy_threads": _numpy_threads(), "chunk_queries": chunk, "other_load": load.share}
    benchmark.extra_info.update(row)
    report.record("recall_numpy", f"{name}-{n}", row)


@pytest.mark.parametrize("setting", list(BLAS_SETTINGS))
@pytest.mark.parametrize("name,n", _grid())
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
        rounds = _rounds(time.perf_counter() - t0)
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
    row = {"model": rd.LABELS[name], "n_items": n, "dim": rec.dim, "index_dim": seg.dim, "setting": setting,
           "blas": used, "queries": nq, "k": K, "seconds_min": secs, "seconds_mean": benchmark.stats.stats.mean,
           "qps": qps, "faiss_only_qps": nq / raw_secs, "build_seconds": build_s,
           "numpy_qps_padded": ref["numpy_qps_padded"], "numpy_qps_raw": ref["numpy_qps_raw"],
           "ratio_vs_numpy_padded": qps / ref["numpy_qps_padded"], "ratio_vs_numpy_raw": qps / ref["numpy_qps_raw"],
           "faiss_only_ratio_vs_numpy_padded": (nq / raw_secs) / ref["numpy_qps_padded"],
           "recall_vs_truth": recall_at(res.ids, R.truth(name, n)), "other_load": load.share}
    benchmark.extra_info.update(row)
    report.record("recall_exact", f"{name}-{n}-{setting}", row)
    assert row["recall_vs_truth"] > 0.999  # exact is exact (ties aside)


@pytest.mark.parametrize("setting", ["faiss-default", "tuned"])
@pytest.mark.parametrize("name,n", _grid())
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
        lat = _stats_ms(benchmark)
        seg = rec.index.parts()[0]
        qp = [seg.queries(R.q[name][i:i + 1]) for i in range(min(len(qs), rounds))]
        with blas({**FAISS_DEFAULT_BLAS, **BLAS_SETTINGS[setting]}):
            raw = _latency(lambda x: seg.index.search(x, K), qp, max_n=rounds)
    row = {"model": rd.LABELS[name], "n_items": n, "dim": rec.dim, "setting": setting, "k": K,
           **lat, "faiss_only": raw, "other_load": load.share}
    benchmark.extra_info.update(row)
    report.record("recall_exact_latency", f"{name}-{n}-{setting}", row)


@pytest.mark.parametrize("name,n", _grid())
def test_blas_sweep(benchmark, R, name, n):
    """faiss IndexFlatIP on the padded vectors: BLAS block sizes at 1,000 queries (rounds interleaved
    over the grid, so intermittent load hits every cell alike; best round kept); reservoir vs heap
    top-k; sequential path vs BLAS by batch size (for the threshold)."""
    d = R.P[name].shape[1]
    dp = _pad_dim(d)
    P = _pad_to(R.P[name][:n], dp)
    qp = _pad_to(R.q[name], dp)
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
                s = {"distance_compute_blas_threshold": 0, "distance_compute_blas_query_bs": qbs,
                     "distance_compute_blas_database_bs": dbbs}
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
        for m in ((1, 2, 4, 8, 16, 32, 64, 128, 256) if small else (1, 4, 16)):
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
            row.update(seq_qps=m / times["seq"], blas_qps=m / times["blas"],
                       blas_over_seq=times["seq"] / times["blas"], reps=reps_m)
            cross.append(row)
        with blas(TUNED_BLAS):
            benchmark.pedantic(index.search, args=(qp, K), rounds=reps, iterations=1)
    top = max(blocks, key=lambda r: r["qps"])
    row = {"model": rd.LABELS[name], "n_items": n, "dim": d, "index_dim": dp, "queries": nq, "rounds": reps,
           "blocks": blocks, "best": top, "faiss_default_qps": nq / best_default,
           "tuned_qps": nq / benchmark.stats.stats.min, "reservoir_qps": nq / heap["reservoir"],
           "heap_qps": nq / heap["heap"], "crossover": cross,
           "numpy_qps_padded": numpy_rates(R, name, n)["numpy_qps_padded"], "other_load": load.share}
    benchmark.extra_info.update({k: v for k, v in row.items() if k not in ("blocks", "crossover")})
    report.record("recall_blas_sweep", f"{name}-{n}", row)


# ------------------------------------------------------------------------------------- ANN
def _child_env():
    env = dict(os.environ)
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(fmrecall.__file__)))
    env["PYTHONPATH"] = os.pathsep.join([pkg_parent, HERE] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


_child_results: Dict[Tuple[str, int, str], Dict] = {}


def run_child(R: State, name: str, n: int, index: str, save: bool, chunk: int = 0) -> Dict:
    """Build a Recaller in a fresh process (bench/recall_child.py); returns its JSON report and,
    with save, the directory it was saved to."""
    key = (name, n, index + (f"-chunk{chunk}" if chunk else ""))
    if key in _child_results and (not save or os.path.isdir(_child_results[key].get("saved_dir", ""))):
        return _child_results[key]
    work = os.path.join(rd.CACHE, f"recall_child_{os.getpid()}")
    os.makedirs(work, exist_ok=True)
    model_file = rd._model_path(name, R.models[name][1]["train_rows"], R.models[name][1]["epochs"])[0]
    items = os.path.join(work, f"items_{n}.npy")
    if not os.path.exists(items):
        np.save(items, R.I[:n])
    queries = os.path.join(work, f"queries_{name}.npy")
    if not os.path.exists(queries):
        np.save(queries, R.qrows[name])
    cmd = [sys.executable, os.path.join(HERE, "recall_child.py"), "--model-file", model_file, "--spec", name,
           "--items", items, "--queries", queries, "--index", index]
    if chunk:
        cmd += ["--chunk", str(chunk)]
    saved = os.path.join(work, f"rec_{name}_{n}_{index}") if save else ""
    if saved:
        cmd += ["--save", saved]
    with common.ForeignLoad() as load:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=_child_env())
    if proc.returncode != 0:
        raise RuntimeError(f"recall_child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["other_load"] = load.share
    if saved:
        out["saved_dir"] = saved
    _child_results[key] = out
    return out


def hnsw_recaller(R: State, name: str, n: int):
    """(Recaller index="hnsw", build seconds, child report or None). At n >= CHILD_MIN_N the index is
    built once in a subprocess (whose peak RSS test_memory reports) and loaded here."""
    key = (name, n, "hnsw", ())
    if key in R._recallers:
        return R._recallers[key] + (_child_results.get((name, n, "hnsw")),)
    if n < CHILD_MIN_N:
        rec, secs = R.recaller(name, n, "hnsw")
        return rec, secs, None
    out = run_child(R, name, n, "hnsw", save=True)
    t0 = time.perf_counter()
    rec = fmrecall.Recaller.load(out["saved_dir"])
    out["load_seconds"] = time.perf_counter() - t0
    shutil.rmtree(out["saved_dir"], ignore_errors=True)  # GBs: do not keep on disk
    R._recallers[key] = (rec, out["build_seconds"])
    return rec, out["build_seconds"], out


def _ann_sweep(R: State, rec, name: str, n: int, points, set_params) -> List[Dict]:
    """For each sweep point: batched q/s (best of 2), recall@K vs exact, single-query latency."""
    truth = R.truth(name, n)
    qds, qs = R.qds[name], R.q1[name]
    rows = []
    for pt in points:
        set_params(rec, pt)
        res = rec.search(qds, K)  # warm + result
        secs = common.best_of(lambda: rec.search(qds, K), max(1, ROUNDS - 1))
        lat = _latency(lambda x: rec.search(x, K), qs, budget_s=LAT_BUDGET_S / 2)
        rows.append({"point": pt, "qps": qds.n_rows / secs, "recall": recall_at(res.ids, truth), **lat})
    return rows


def _set_hnsw(rec, pt):
    cand, ef = pt
    rec.candidates = cand
    rec.params["ef_search"] = ef


@pytest.mark.parametrize("name,n", _grid())
def test_hnsw(benchmark, R, name, n):
    R.drop(lambda k: k[2] == "exact" and k[1] == n and k[1] >= CHILD_MIN_N)  # free the big flat copy
    rec, build_s, child = hnsw_recaller(R, name, n)
    seg = rec.index.parts()[0]
    with common.ForeignLoad() as load:
        _set_hnsw(rec, (None, 128))  # the Recaller defaults: candidates max(4k, 100), ef_search 128
        benchmark.pedantic(rec.search, args=(R.qds[name], K), rounds=ROUNDS, iterations=1, warmup_rounds=1)
        default_qps = R.qds[name].n_rows / benchmark.stats.stats.min
        sweep = _ann_sweep(R, rec, name, n, HNSW_SWEEP, _set_hnsw)
    _set_hnsw(rec, (None, 128))
    row = {"model": rd.LABELS[name], "n_items": n, "dim": rec.dim, "index_dim": seg.dim, "hnsw_m": 32,
           "ef_construction": rec.params["ef_construction"], "build_seconds": build_s,
           "built_in_subprocess": child is not None, "default_qps": default_qps, "sweep": sweep,
           "numpy_qps_raw": numpy_rates(R, name, n)["numpy_qps_raw"] if (name, n) in _numpy_rates else None,
           "other_load": load.share}
    benchmark.extra_info.update({k: v for k, v in row.items() if k != "sweep"})
    report.record("recall_hnsw", f"{name}-{n}", row)


def _raw_ip_grid():
    return _grid() if RAW_IP_ALL else _grid(SIZES[:1])


@pytest.mark.parametrize("name,n", _raw_ip_grid())
def test_hnsw_raw_ip(benchmark, R, name, n):
    # Recaller(index="HNSW32,Flat"): faiss's inner-product HNSW, with the Recaller's efConstruction
    # (80) and search rule max(ef_search, candidates), like "hnsw"
    R.drop(lambda k: k[1] >= CHILD_MIN_N)
    rec, build_s = R.recaller(name, n, "HNSW32,Flat", keep=False)
    with common.ForeignLoad() as load:
        _set_hnsw(rec, (None, 128))
        benchmark.pedantic(rec.search, args=(R.qds[name], K), rounds=ROUNDS, iterations=1, warmup_rounds=1)
        sweep = _ann_sweep(R, rec, name, n, HNSW_SWEEP, _set_hnsw)
    row = {"model": rd.LABELS[name], "n_items": n, "dim": rec.dim, "index_dim": rec.index.parts()[0].dim,
           "build_seconds": build_s, "ef_construction": 80, "default_qps": R.qds[name].n_rows / benchmark.stats.stats.min,
           "sweep": sweep, "other_load": load.share}
    benchmark.extra_info.update({k: v for k, v in row.items() if k != "sweep"})
    report.record("recall_hnsw_raw_ip", f"{name}-{n}", row)


@pytest.mark.parametrize("name,n", _grid())
def test_ivf(benchmark, R, monkeypatch, name, n):
    R.drop(lambda k: k[2] == "hnsw" and k[1] >= CHILD_MIN_N)
    mppc = None
    if n >= CHILD_MIN_N and IVF_MPPC > 0:
        # faiss trains the k-means on up to 256 points per centroid (all 1M rows for nlist 4,000,
        # 10 iterations: minutes at d=301 on 2 cores); subsample to IVF_MPPC per centroid.
        mppc = IVF_MPPC
        orig = fsegment.Segment.new_index

        def new_index(self, n_hint):
            index = orig(self, n_hint)
            ivf = fsegment.ivf_of(index)
            if ivf is not None:
                ivf.cp.max_points_per_centroid = mppc
            return index

        monkeypatch.setattr(fsegment.Segment, "new_index", new_index)
    rec, build_s = R.recaller(name, n, "ivf", keep=False)
    ivf = fsegment.ivf_of(rec.index.parts()[0].index)

    def set_nprobe(r, npb):
        r.params["nprobe"] = npb

    with common.ForeignLoad() as load:
        set_nprobe(rec, 32)
        benchmark.pedantic(rec.search, args=(R.qds[name], K), rounds=ROUNDS, iterations=1, warmup_rounds=1)
        sweep = _ann_sweep(R, rec, name, n, IVF_NPROBE, set_nprobe)
    row = {"model": rd.LABELS[name], "n_items": n, "dim": rec.dim, "index_dim": rec.index.parts()[0].dim,
           "nlist": int(ivf.nlist), "train_points_per_centroid": mppc or 256, "build_seconds": build_s,
           "default_qps": R.qds[name].n_rows / benchmark.stats.stats.min, "sweep": sweep, "other_load": load.share}
    benchmark.extra_info.update({k: v for k, v in row.items() if k != "sweep"})
    report.record("recall_ivf", f"{name}-{n}" + (f"-mppc{mppc}" if mppc else ""), row)
    del rec
    gc.collect()


def _padding_grid():
    out = []
    for name in MODEL_NAMES:
        for index, sizes in (("exact", SIZES), ("hnsw", SIZES[:1])):
            for n in sizes:
                for pad in (True, False):
                    out.append(pytest.param(name, index, n, pad,
                                            id=f"{name}-{index}-{_sizes_id(n)}-{'pad' if pad else 'nopad'}"))
    return out


@pytest.mark.parametrize("name,index,n,pad", _padding_grid())
def test_padding(benchmark, R, monkeypatch, name, index, n, pad):
    R.drop(lambda k: k[1] >= CHILD_MIN_N and k[1] != n)
    R.drop(lambda k: k[1] >= CHILD_MIN_N and k[2] != "exact")
    fconfig.configure_faiss(TUNED_BLAS)
    if index == "hnsw" and pad:
        rec, build_s, _ = hnsw_recaller(R, name, n)
    else:
        rec, build_s = R.recaller(name, n, index, pad=pad) if not pad else R.recaller(name, n, index)
    if index == "hnsw":
        _set_hnsw(rec, (None, 128))
    with common.ForeignLoad() as load:
        t0 = time.perf_counter()
        rec.search(R.qds[name], K)
        rounds = _rounds(time.perf_counter() - t0)
        res = benchmark.pedantic(rec.search, args=(R.qds[name], K), rounds=rounds, iterations=1)
        lat = _latency(lambda x: rec.search(x, K), R.q1[name])
    if not pad and n >= CHILD_MIN_N:
        R.drop(lambda k: k[1] == n)
    row = {"model": rd.LABELS[name], "n_items": n, "index": index, "pad": pad, "dim": rec.dim,
           "index_dim": rec.index.parts()[0].dim, "qps": R.qds[name].n_rows / benchmark.stats.stats.min,
           "build_seconds": build_s, "recall": recall_at(res.ids, R.truth(name, n)), **lat, "other_load": load.share}
    benchmark.extra_info.update(row)
    report.record("recall_padding", f"{name}-{index}-{n}-{'pad' if pad else 'nopad'}", row)


_saved_dirs: Dict[Tuple[str, str], str] = {}


@pytest.mark.parametrize("background", ["idle", "busy"])
@pytest.mark.parametrize("policy", ["default", "PASSIVE"])
@pytest.mark.parametrize("index", ["exact", "hnsw"])
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_wait_policy(benchmark, R, name, index, policy, background):
    """Single-query latency of the saved SIZES[0]-item Recaller in a fresh process, with libgomp's
    default wait policy and with OMP_WAIT_POLICY=PASSIVE (fmrecall's and faiss's OpenMP runtimes
    are separate libgomp copies: idle threads of one spin while the other works); background
    "busy" runs one CPU-bound process next to it (a shared 2-core machine)."""
    n = SIZES[0]
    key = (name, index)
    if key not in _saved_dirs or not os.path.isdir(_saved_dirs[key]):
        rec = R.recaller(name, n, "exact")[0] if index == "exact" else hnsw_recaller(R, name, n)[0]
        _set_hnsw(rec, (None, 128))
        work = os.path.join(rd.CACHE, f"recall_child_{os.getpid()}")
        os.makedirs(work, exist_ok=True)
        _saved_dirs[key] = os.path.join(work, f"saved_{name}_{index}_{n}")
        rec.save(_saved_dirs[key])
    queries = os.path.join(rd.CACHE, f"recall_child_{os.getpid()}", f"queries_{name}.npy")
    if not os.path.exists(queries):
        np.save(queries, R.qrows[name])
    env = _child_env()
    env.pop("OMP_WAIT_POLICY", None)
    env.pop("GOMP_SPINCOUNT", None)
    if policy != "default":
        env["OMP_WAIT_POLICY"] = policy
    cmd = [sys.executable, os.path.join(HERE, "recall_child.py"), "--spec", name, "--queries", queries,
           "--load", _saved_dirs[key], "--latency", str(min(LAT_MAX, 150))]
    out = {}

    def run():
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"recall_child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        out.update(json.loads(proc.stdout.strip().splitlines()[-1]))

    spinner = None
    if background == "busy":
        spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        with common.ForeignLoad() as load:
            benchmark.pedantic(run, rounds=1, iterations=1)
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()
    row = {"model": rd.LABELS[name], "n_items": n, "index": index, "policy": policy, "background": background,
           "dim": R.P[name].shape[1], **out, "other_load": load.share}
    benchmark.extra_info.update(row)
    report.record("recall_wait_policy", f"{name}-{index}-{policy}-{background}", row)


# ------------------------------------------------------------------------------------- split builder
SPLIT_ITEMS = int(os.environ.get("FMRECALL_BENCH_SPLIT_ITEMS", 100_000))
SPLIT_QUERY_COLS = [24, 17, 29, 0, 1, 5, 6, 7, 8, 9]                       # 10 query fields
SPLIT_ITEM_COLS = rd.ITEM_FIELDS + [21, 26, 28, 32, 34]                    # 20 item fields


@pytest.fixture(scope="module")
def split_setup(R):
    """FFM k=4 on 30 fields (10 query, 20 item; renumbered 0..29), one epoch on 200k rows."""
    cols = SPLIT_QUERY_COLS + SPLIT_ITEM_COLS
    nq, ni = len(SPLIT_QUERY_COLS), len(SPLIT_ITEM_COLS)
    X = R.data.X
    n_train = min(200_000, R.data.cut)
    train = rd.onehot(X[:n_train][:, cols], list(range(nq + ni)), R.data.y[:n_train])
    model = fmrecall.FFM(k=4, epochs=1, threads=0, patience=None, **common.HYPER)
    t0 = time.perf_counter()
    model.fit(train)
    fit_s = time.perf_counter() - t0
    sides = fmrecall.Sides(user=range(nq - 1), context=[nq - 1], item=range(nq, nq + ni))
    split = model.split(sides)
    rows = np.random.default_rng(3).integers(0, R.data.n_rows, SPLIT_ITEMS)
    items = rd.onehot(X[rows][:, SPLIT_ITEM_COLS], list(range(nq, nq + ni)), n_fields=nq + ni)
    queries = rd.onehot(X[rows][:, SPLIT_QUERY_COLS], list(range(nq)), n_fields=nq + ni)
    return model, split, items, queries, fit_s


@pytest.mark.parametrize("what", ["item_vectors", "query_vectors"])
@pytest.mark.parametrize("threads", [1, 2])
def test_split_builder(benchmark, split_setup, threads, what):
    model, split, items, queries, fit_s = split_setup
    model.threads = threads
    fn, data = (split.item_vectors, items) if what == "item_vectors" else (split.query_vectors, queries)
    try:
        with common.ForeignLoad() as load:
            out = benchmark.pedantic(fn, args=(data,), rounds=max(ROUNDS, 3), iterations=1, warmup_rounds=1)
    finally:
        model.threads = 0
    secs = benchmark.stats.stats.min
    p = out if what == "item_vectors" else out[0]
    row = {"what": what, "threads": threads, "rows": data.n_rows, "dim": split.dim, "fields": 20 if what == "item_vectors" else 10,
           "seconds": secs, "rows_per_s": data.n_rows / secs, "mb_per_s": p.nbytes / 2**20 / secs,
           "model_fit_seconds": fit_s, "other_load": load.share}
    benchmark.extra_info.update(row)
    report.record("recall_split", f"{what}-t{threads}", row)


def test_split_gil(benchmark, split_setup):
    """item_vectors (1 thread) in a Python thread while another Python thread spins: the spinner's
    iterations/s during the call vs alone show whether the GIL is held."""
    model, split, items, queries, _ = split_setup
    model.threads = 1

    def spin(stop, counter):
        c = 0
        while not stop.is_set():
            c += 1
        counter.append(c)

    def spin_alone(seconds):
        stop, counter = threading.Event(), []
        t = threading.Thread(target=spin, args=(stop, counter))
        t0 = time.perf_counter()
        t.start()
        time.sleep(seconds)
        stop.set()
        t.join()
        return counter[0] / (time.perf_counter() - t0)

    def together():
        stop, counter = threading.Event(), []
        spinner = threading.Thread(target=spin, args=(stop, counter))
        done = {}

        def work():
            t0 = time.perf_counter()
            split.item_vectors(items)
            done["s"] = time.perf_counter() - t0

        worker = threading.Thread(target=work)
        t0 = time.perf_counter()
        spinner.start()
        worker.start()
        worker.join()
        stop.set()
        spinner.join()
        wall = time.perf_counter() - t0
        return counter[0] / wall, done["s"], wall

    try:
        with common.ForeignLoad() as load:
            t0 = time.perf_counter()
            split.item_vectors(items)
            alone_s = time.perf_counter() - t0
            alone_rate = spin_alone(max(alone_s, 0.5))
            benchmark.pedantic(together, rounds=1, iterations=1)
            rate, work_s, wall = together()
    finally:
        model.threads = 0
    row = {"rows": items.n_rows, "dim": split.dim, "builder_alone_s": alone_s, "builder_with_spinner_s": work_s,
           "spinner_alone_per_s": alone_rate, "spinner_during_per_s": rate, "spinner_ratio": rate / alone_rate,
           "wall_s": wall, "other_load": load.share}
    benchmark.extra_info.update(row)
    report.record("recall_split_gil", "item_vectors-t1", row)
    # a held GIL would stall the spinner for the whole call (ratio ~0)


# ------------------------------------------------------------------------------------- memory
@pytest.mark.parametrize("index", ["exact", "hnsw"])
def test_memory(benchmark, R, index):
    name, n = "ffm4", max(SIZES)
    R.drop(lambda k: k[1] >= CHILD_MIN_N)
    out = {}

    def run():
        # the 1M HNSW index of test_hnsw was built in such a child already: reuse its report
        out.update(_child_results.get((name, n, index)) or run_child(R, name, n, index, save=False))

    benchmark.pedantic(run, rounds=1, iterations=1)
    row = {"model": rd.LABELS[name], "index": index, "add_chunk": fsegment.ADD_CHUNK,
           **{k: v for k, v in out.items() if k != "saved_dir"}}
    row["recaller_peak_mb"] = row["hwm_mb"] - row["rss_baseline_mb"]
    benchmark.extra_info.update(row)
    report.record("recall_memory", f"{name}-{n}-{index}", row)


# ------------------------------------------------------------------------------------- LightFM
ML_PATH = os.path.join(os.environ.get("FMRECALL_DATA", "/work/shared/data"), "ml-100k")


def test_lightfm(benchmark):
    lightfm = pytest.importorskip("lightfm")
    if not os.path.exists(os.path.join(ML_PATH, "u1.base")):
        pytest.skip(f"MovieLens-100K not found at {ML_PATH}")
    import scipy.sparse as sp

    from fmrecall.datasets import movielens100k
    from fmrecall.metrics import recall_at_k
    import fmrecall.movielens as fml

    t0 = time.perf_counter()
    ours = fml.run(ML_PATH, models=("FM",), cold=False, verbose=False)
    ours_s = time.perf_counter() - t0
    ml = movielens100k(ML_PATH, "u1")
    exp = fml.Experiment(ml, fml.default_schema(ml))  # same users, exclusions, relevant sets
    n_users, n_items = int(ml.users.user_id.max()), int(ml.items.item_id.max())
    tr = ml.train
    X = sp.coo_matrix((np.ones(len(tr), np.float32), (tr.user_id.to_numpy() - 1, tr.item_id.to_numpy() - 1)),
                      shape=(n_users, n_items)).tocsr()
    X.data[:] = 1.0
    users = exp.queries.user_id.to_numpy() - 1
    rows = {}

    def fit_eval(label, model, epochs, **fit_kw):
        t = time.perf_counter()
        model.fit(X, epochs=epochs, num_threads=2, **fit_kw)
        fit_s = time.perf_counter() - t
        uf, itf = fit_kw.get("user_features"), fit_kw.get("item_features")
        scores = np.stack([model.predict(int(u), np.arange(n_items), user_features=uf, item_features=itf,
                                         num_threads=2) for u in users])
        scores[X[users].nonzero()] = -np.inf  # exclude the user's train items
        top = np.argsort(-scores, axis=1)[:, :100] + 1
        rows[label] = {f"recall@{k}": recall_at_k(top, exp.relevant, k) for k in (10, 50, 100)}
        rows[label]["fit_seconds"] = fit_s

    def run_all():
        fit_eval("LightFM WARP (ids only)", lightfm.LightFM(no_components=64, loss="warp", learning_rate=0.05,
                                                            random_state=0), 30)
        # with side features: user demographics, item genres / decade (+ identity features)
        from sklearn.preprocessing import OneHotEncoder
        u = ml.users.sort_values("user_id")
        uf = sp.hstack([sp.identity(n_users, format="csr"),
                        OneHotEncoder().fit_transform(u[["age", "gender", "occupation", "zip"]].astype(str))]).tocsr()
        it = ml.items.sort_values("item_id")
        g = sp.csr_matrix(np.array([[1.0 if gg in gs else 0.0 for gg in fml.GENRES] for gs in it.genres], np.float32))
        itf = sp.hstack([sp.identity(n_items, format="csr"), g,
                         OneHotEncoder().fit_transform(it[["year"]].astype(str))]).tocsr()
        fit_eval("LightFM WARP (ids + side features)", lightfm.LightFM(no_components=64, loss="warp",
                                                                      learning_rate=0.05, random_state=0), 30,
                 user_features=uf, item_features=itf)

    benchmark.pedantic(run_all, rounds=1, iterations=1)
    ours_rows = {k: {m: v[m] for m in ("recall@10", "recall@50", "recall@100")} for k, v in ours["rows"].items()}
    row = {"split": "u1", "test_users": int(len(users)), "lightfm": rows, "fmrecall": ours_rows,
           "fmrecall_fit_seconds": ours["fit_seconds"], "fmrecall_run_seconds": ours_s,
           "lightfm_version": getattr(lightfm, "__version__", "?")}
    benchmark.extra_info.update({"lightfm": rows})
    report.record("recall_lightfm", "u1", row)
