"""Shared state and helpers of the retrieval benchmarks on learned vectors (issue "one-stage retrieval"):
bench/test_recall_exact.py, test_recall_ann.py, test_split_builder.py and test_peers.py.

Two models trained on the Criteo-shaped synthetic clicks (bench/recall_data.py): FM k=64 (d=65)
and FFM k=4 on 5 query × 15 item fields (d=301). Item catalogues of 100k and 1M items are built
from the data's item rows (perturbed copies beyond the distinct rows), 1,000 distinct query rows
from the validation rows. Every ANN recall@100 is measured against exact search on the same
learned vectors. Speed is reported, never asserted. ``State`` holds all of it; bench/conftest.py
builds it once per session (the ``R`` fixture).

    PYTHONPATH=python python3 -m pytest bench/test_recall_exact.py bench/test_recall_ann.py --benchmark-only -q

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
import time
from typing import Dict, List, Optional, Tuple

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import common  # noqa: E402
import faiss  # noqa: E402
import recall_data as rd  # noqa: E402
import report  # noqa: E402

import fmrecall  # noqa: E402
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
TUNED_BLAS = {
    "distance_compute_blas_threshold": 1024,
    "distance_compute_blas_query_bs": 4096,
    "distance_compute_blas_database_bs": 16384,
}
BLAS_SETTINGS = {"faiss-default": {}, "EXACT_BLAS": None, "tuned": TUNED_BLAS}  # None = as shipped

# (candidates, ef_search); None = the Recaller's default candidates (max(4k, 100) = 400 for k = 100)
# (the walk is max(ef_search, candidates): the default (None, 128) searches 400 deep for k = 100)
HNSW_SWEEP = [(None, 128), (100, 100), (100, 200), (100, 400), (100, 800), (400, 800)]
IVF_NPROBE = [8, 16, 32, 64, 128, 256]


# ------------------------------------------------------------------------------------- helpers
def sizes_id(n: int) -> str:
    return f"{n // 1000}k" if n < 1_000_000 else f"{n / 1e6:g}M"


def pad_to(a: np.ndarray, d: int) -> np.ndarray:
    if a.shape[1] == d:
        return np.ascontiguousarray(a, dtype=np.float32)
    out = np.zeros((a.shape[0], d), dtype=np.float32)
    out[:, : a.shape[1]] = a
    return out


def pad_dim(d: int) -> int:
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


def timed_rounds(seconds_one: float) -> int:
    """Timed rounds: ROUNDS, but one round (no warm-up) when a single call takes over 4 s."""
    return 1 if seconds_one > 4.0 else ROUNDS


def latency(fn, items: List, budget_s: float = LAT_BUDGET_S, max_n: int = LAT_MAX, min_n: int = 20):
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
    return {
        "p50_ms": float(np.median(ts)),
        "p99_ms": float(np.percentile(ts, 99)),
        "mean_ms": float(ts.mean()),
        "min_ms": float(ts.min()),
        "n": n,
    }


def recall_at(ids: np.ndarray, truth: np.ndarray, k: int = K) -> float:
    """Mean over queries of |returned top-k ∩ exact top-k| / k."""
    hits = 0
    for a, t in zip(ids[:, :k], truth[:, :k]):
        hits += int(np.isin(a[a >= 0], t).sum())
    return float(hits) / (truth.shape[0] * k)


def stats_ms(benchmark) -> Dict[str, float]:
    data = np.asarray(benchmark.stats.stats.data) * 1e3
    return {
        "p50_ms": float(np.median(data)),
        "p99_ms": float(np.percentile(data, 99)),
        "mean_ms": float(data.mean()),
        "min_ms": float(data.min()),
        "n": int(data.size),
    }


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
            self.q1[name] = [spec.queries(rows[i : i + 1]) for i in range(min(LAT_MAX, rows.shape[0]))]
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

    def cached(self, key: Tuple) -> Optional[Tuple]:
        """The cached (Recaller, build seconds) of a configuration key, or None."""
        return self._recallers.get(key)

    def remember(self, key: Tuple, value: Tuple) -> None:
        """Cache (Recaller, build seconds) under a configuration key (see recaller())."""
        self._recallers[key] = value

    def drop(self, pred) -> None:
        for key in [k for k in self._recallers if pred(k)]:
            del self._recallers[key]
        gc.collect()


def new_state(synth_file) -> State:
    """The State of the session (bench/conftest.py's R fixture), its models recorded in the report."""
    path, meta = synth_file
    st = State(path, meta)
    for name in MODEL_NAMES:
        info = dict(st.models[name][1])
        info.update(
            dim=int(st.P[name].shape[1]),
            catalogue=st.cat_info,
            n_items_max=st.n_max,
            queries=int(st.q[name].shape[0]),
            p_norm_median=float(np.median(np.linalg.norm(st.P[name], axis=1))),
            q_norm_median=float(np.median(np.linalg.norm(st.q[name], axis=1))),
            sides={
                "user": list(st.specs[name].sides.user),
                "context": list(st.specs[name].sides.context),
                "item": list(st.specs[name].sides.item),
            },
            data_columns={"query": st.specs[name].query_cols, "item": st.specs[name].item_cols},
        )
        report.record("recall_models", name, info)
    return st


def close_state(st: State) -> None:
    """Drop the cached Recallers and the subprocess files, then every array of the State (it may
    still be referenced by pytest's fixture cache). A second call does nothing."""
    if not vars(st):
        return
    st.drop(lambda k: True)
    shutil.rmtree(os.path.join(rd.CACHE, f"recall_child_{os.getpid()}"), ignore_errors=True)
    vars(st).clear()
    gc.collect()


def grid(sizes=None):
    sizes = SIZES if sizes is None else sizes
    return [pytest.param(m, n, id=f"{m}-{sizes_id(n)}") for m in MODEL_NAMES for n in sizes]


NUMPY_RATES: Dict[Tuple[str, int], Dict[str, float]] = {}


def _numpy_rate(q: np.ndarray, P: np.ndarray, reps: int) -> float:
    """queries/s of Q @ P.T (float32 sgemm, numpy's BLAS), chunked so the output stays <= 512 MB."""
    n = P.shape[0]
    chunk = int(max(1, min(q.shape[0], (512 << 20) // (4 * n))))
    buf = np.empty((chunk, n), dtype=np.float32)

    def run():
        for s in range(0, q.shape[0], chunk):
            c = min(chunk, q.shape[0] - s)
            np.matmul(q[s : s + c], P.T, out=buf[:c])

    run()
    return q.shape[0] / common.best_of(run, reps)


def numpy_rates(R: State, name: str, n: int) -> Dict[str, float]:
    key = (name, n)
    if key not in NUMPY_RATES:
        P, q = R.P[name][:n], R.q[name]
        d = P.shape[1]
        dp = pad_dim(d)
        raw = _numpy_rate(q, P, ROUNDS)
        padded = _numpy_rate(pad_to(q, dp), pad_to(P, dp), ROUNDS) if dp != d else raw
        NUMPY_RATES[key] = {"numpy_qps_raw": raw, "numpy_qps_padded": padded, "dim": d, "dim_padded": dp}
    return NUMPY_RATES[key]


def numpy_threads() -> Optional[int]:
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


# ------------------------------------------------------------------------------------- subprocess builds, ANN sweeps
def child_env():
    env = dict(os.environ)
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(fmrecall.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(
        [pkg_parent, HERE] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    )
    return env


CHILD_RESULTS: Dict[Tuple[str, int, str], Dict] = {}


def run_child(R: State, name: str, n: int, index: str, save: bool, chunk: int = 0) -> Dict:
    """Build a Recaller in a fresh process (bench/recall_child.py); returns its JSON report and,
    with save, the directory it was saved to."""
    key = (name, n, index + (f"-chunk{chunk}" if chunk else ""))
    if key in CHILD_RESULTS and (not save or os.path.isdir(CHILD_RESULTS[key].get("saved_dir", ""))):
        return CHILD_RESULTS[key]
    work = os.path.join(rd.CACHE, f"recall_child_{os.getpid()}")
    os.makedirs(work, exist_ok=True)
    model_file = rd.model_path(name, R.models[name][1]["train_rows"], R.models[name][1]["epochs"])[0]
    items = os.path.join(work, f"items_{n}.npy")
    if not os.path.exists(items):
        np.save(items, R.I[:n])
    queries = os.path.join(work, f"queries_{name}.npy")
    if not os.path.exists(queries):
        np.save(queries, R.qrows[name])
    cmd = [
        sys.executable,
        os.path.join(HERE, "recall_child.py"),
        "--model-file",
        model_file,
        "--spec",
        name,
        "--items",
        items,
        "--queries",
        queries,
        "--index",
        index,
    ]
    if chunk:
        cmd += ["--chunk", str(chunk)]
    saved = os.path.join(work, f"rec_{name}_{n}_{index}") if save else ""
    if saved:
        cmd += ["--save", saved]
    with common.ForeignLoad() as load:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=child_env())
    if proc.returncode != 0:
        raise RuntimeError(f"recall_child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["other_load"] = load.share
    if saved:
        out["saved_dir"] = saved
    CHILD_RESULTS[key] = out
    return out


def hnsw_recaller(R: State, name: str, n: int):
    """(Recaller index="hnsw", build seconds, child report or None). At n >= CHILD_MIN_N the index is
    built once in a subprocess (whose peak RSS test_memory reports) and loaded here."""
    key = (name, n, "hnsw", ())
    hit = R.cached(key)
    if hit is not None:
        return hit + (CHILD_RESULTS.get((name, n, "hnsw")),)
    if n < CHILD_MIN_N:
        rec, secs = R.recaller(name, n, "hnsw")
        return rec, secs, None
    out = run_child(R, name, n, "hnsw", save=True)
    t0 = time.perf_counter()
    rec = fmrecall.Recaller.load(out["saved_dir"])
    out["load_seconds"] = time.perf_counter() - t0
    shutil.rmtree(out["saved_dir"], ignore_errors=True)  # GBs: do not keep on disk
    R.remember(key, (rec, out["build_seconds"]))
    return rec, out["build_seconds"], out


def ann_sweep(R: State, rec, name: str, n: int, points, params_of) -> List[Dict]:
    """For each sweep point: batched q/s (best of 2), recall@K vs exact, single-query latency;
    params_of(point) gives that point's per-call search parameters (Recaller.search keywords)."""
    truth = R.truth(name, n)
    qds, qs = R.qds[name], R.q1[name]
    rows = []
    for pt in points:
        kw = params_of(pt)
        res = rec.search(qds, K, **kw)  # warm + result
        secs = common.best_of(lambda: rec.search(qds, K, **kw), max(1, ROUNDS - 1))
        lat = latency(lambda x: rec.search(x, K, **kw), qs, budget_s=LAT_BUDGET_S / 2)
        rows.append({"point": pt, "qps": qds.n_rows / secs, "recall": recall_at(res.ids, truth), **lat})
    return rows


def hnsw_params(pt) -> Dict:
    """Per-call search parameters of an HNSW sweep point (candidates, ef_search); None = default."""
    cand, ef = pt
    return {"ef_search": ef, **({"candidates": cand} if cand is not None else {})}
