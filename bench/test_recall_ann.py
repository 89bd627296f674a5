"""ANN search on learned vectors, and what the index choice costs: HNSW (L2-augmented and raw inner
product), IVF, padding, the OpenMP wait policy and the memory of a 1M-item Recaller. Models,
catalogue, queries and exact truth: bench/recall_bench.py (the session's ``R``).

* test_hnsw            — Recaller(index="hnsw") (L2-augmented vectors, M=32): build time, then
                         batched q/s, p50/p99 latency and recall@100 over (candidates, ef_search).
* test_hnsw_raw_ip     — faiss "HNSW32,Flat" on the raw inner product (no augmentation).
* test_ivf             — Recaller(index="ivf"), nlist = 4·sqrt(N), over nprobe.
* test_padding         — pad=True vs pad=False (d 65→80, 301→304), exact and HNSW.
* test_wait_policy     — single-query latency in a fresh process, OMP_WAIT_POLICY default vs PASSIVE.
* test_memory          — peak RSS of a 1M-item d=301 Recaller (exact, hnsw) in a subprocess.

    PYTHONPATH=python python3 -m pytest bench/test_recall_ann.py --benchmark-only -q

Environment: see bench/recall_bench.py.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import time
from typing import Dict, Tuple

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import common  # noqa: E402
import recall_data as rd  # noqa: E402
import report  # noqa: E402
from recall_bench import (  # noqa: E402
    CHILD_MIN_N,
    CHILD_RESULTS,
    HNSW_SWEEP,
    IVF_MPPC,
    IVF_NPROBE,
    LAT_MAX,  # noqa: E402
    MODEL_NAMES,
    NUMPY_RATES,
    RAW_IP_ALL,
    ROUNDS,
    SIZES,
    TUNED_BLAS,
    K,
    ann_sweep,
    child_env,
    grid,
    hnsw_params,
    hnsw_recaller,
    latency,
    numpy_rates,
    recall_at,
    run_child,
    sizes_id,
    timed_rounds,
)

import fmrecall.recall.faiss_config as fconfig  # noqa: E402
import fmrecall.recall.faiss_segment as fsegment  # noqa: E402


# ------------------------------------------------------------------------------------- ANN
@pytest.mark.parametrize("name,n", grid())
def test_hnsw(benchmark, R, name, n):
    R.drop(lambda k: k[2] == "exact" and k[1] == n and k[1] >= CHILD_MIN_N)  # free the big flat copy
    rec, build_s, child = hnsw_recaller(R, name, n)
    seg = rec.index.parts()[0]
    with common.ForeignLoad() as load:
        benchmark.pedantic(rec.search, args=(R.qds[name], K), rounds=ROUNDS, iterations=1, warmup_rounds=1)
        default_qps = R.qds[name].n_rows / benchmark.stats.stats.min
        sweep = ann_sweep(R, rec, name, n, HNSW_SWEEP, hnsw_params)
    row = {
        "model": rd.LABELS[name],
        "n_items": n,
        "dim": rec.dim,
        "index_dim": seg.dim,
        "hnsw_m": 32,
        "ef_construction": rec.index.params["ef_construction"],
        "build_seconds": build_s,
        "built_in_subprocess": child is not None,
        "default_qps": default_qps,
        "sweep": sweep,
        "numpy_qps_raw": numpy_rates(R, name, n)["numpy_qps_raw"] if (name, n) in NUMPY_RATES else None,
        "other_load": load.share,
    }
    benchmark.extra_info.update({k: v for k, v in row.items() if k != "sweep"})
    report.record("recall_hnsw", f"{name}-{n}", row)


def _raw_ip_grid():
    return grid() if RAW_IP_ALL else grid(SIZES[:1])


@pytest.mark.parametrize("name,n", _raw_ip_grid())
def test_hnsw_raw_ip(benchmark, R, name, n):
    # Recaller(index="HNSW32,Flat"): faiss's inner-product HNSW, with the Recaller's efConstruction
    # (80) and search rule max(ef_search, candidates), like "hnsw"
    R.drop(lambda k: k[1] >= CHILD_MIN_N)
    rec, build_s = R.recaller(name, n, "HNSW32,Flat", keep=False)
    with common.ForeignLoad() as load:
        benchmark.pedantic(rec.search, args=(R.qds[name], K), rounds=ROUNDS, iterations=1, warmup_rounds=1)
        sweep = ann_sweep(R, rec, name, n, HNSW_SWEEP, hnsw_params)
    row = {
        "model": rd.LABELS[name],
        "n_items": n,
        "dim": rec.dim,
        "index_dim": rec.index.parts()[0].dim,
        "build_seconds": build_s,
        "ef_construction": 80,
        "default_qps": R.qds[name].n_rows / benchmark.stats.stats.min,
        "sweep": sweep,
        "other_load": load.share,
    }
    benchmark.extra_info.update({k: v for k, v in row.items() if k != "sweep"})
    report.record("recall_hnsw_raw_ip", f"{name}-{n}", row)


@pytest.mark.parametrize("name,n", grid())
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

    with common.ForeignLoad() as load:
        benchmark.pedantic(
            rec.search, args=(R.qds[name], K), kwargs={"nprobe": 32}, rounds=ROUNDS, iterations=1, warmup_rounds=1
        )
        sweep = ann_sweep(R, rec, name, n, IVF_NPROBE, lambda npb: {"nprobe": npb})
    row = {
        "model": rd.LABELS[name],
        "n_items": n,
        "dim": rec.dim,
        "index_dim": rec.index.parts()[0].dim,
        "nlist": int(ivf.nlist),
        "train_points_per_centroid": mppc or 256,
        "build_seconds": build_s,
        "default_qps": R.qds[name].n_rows / benchmark.stats.stats.min,
        "sweep": sweep,
        "other_load": load.share,
    }
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
                    out.append(
                        pytest.param(
                            name, index, n, pad, id=f"{name}-{index}-{sizes_id(n)}-{'pad' if pad else 'nopad'}"
                        )
                    )
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
    with common.ForeignLoad() as load:
        t0 = time.perf_counter()
        rec.search(R.qds[name], K)
        rounds = timed_rounds(time.perf_counter() - t0)
        res = benchmark.pedantic(rec.search, args=(R.qds[name], K), rounds=rounds, iterations=1)
        lat = latency(lambda x: rec.search(x, K), R.q1[name])
    if not pad and n >= CHILD_MIN_N:
        R.drop(lambda k: k[1] == n)
    row = {
        "model": rd.LABELS[name],
        "n_items": n,
        "index": index,
        "pad": pad,
        "dim": rec.dim,
        "index_dim": rec.index.parts()[0].dim,
        "qps": R.qds[name].n_rows / benchmark.stats.stats.min,
        "build_seconds": build_s,
        "recall": recall_at(res.ids, R.truth(name, n)),
        **lat,
        "other_load": load.share,
    }
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
        work = os.path.join(rd.CACHE, f"recall_child_{os.getpid()}")
        os.makedirs(work, exist_ok=True)
        _saved_dirs[key] = os.path.join(work, f"saved_{name}_{index}_{n}")
        rec.save(_saved_dirs[key])
    queries = os.path.join(rd.CACHE, f"recall_child_{os.getpid()}", f"queries_{name}.npy")
    if not os.path.exists(queries):
        np.save(queries, R.qrows[name])
    env = child_env()
    env.pop("OMP_WAIT_POLICY", None)
    env.pop("GOMP_SPINCOUNT", None)
    if policy != "default":
        env["OMP_WAIT_POLICY"] = policy
    cmd = [
        sys.executable,
        os.path.join(HERE, "recall_child.py"),
        "--spec",
        name,
        "--queries",
        queries,
        "--load",
        _saved_dirs[key],
        "--latency",
        str(min(LAT_MAX, 150)),
    ]
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
    row = {
        "model": rd.LABELS[name],
        "n_items": n,
        "index": index,
        "policy": policy,
        "background": background,
        "dim": R.P[name].shape[1],
        **out,
        "other_load": load.share,
    }
    benchmark.extra_info.update(row)
    report.record("recall_wait_policy", f"{name}-{index}-{policy}-{background}", row)


# ------------------------------------------------------------------------------------- memory
@pytest.mark.parametrize("index", ["exact", "hnsw"])
def test_memory(benchmark, R, index):
    name, n = "ffm4", max(SIZES)
    R.drop(lambda k: k[1] >= CHILD_MIN_N)
    out = {}

    def run():
        # the 1M HNSW index of test_hnsw was built in such a child already: reuse its report
        out.update(CHILD_RESULTS.get((name, n, index)) or run_child(R, name, n, index, save=False))

    benchmark.pedantic(run, rounds=1, iterations=1)
    row = {
        "model": rd.LABELS[name],
        "index": index,
        "add_chunk": fsegment.ADD_CHUNK,
        **{k: v for k, v in out.items() if k != "saved_dir"},
    }
    row["recaller_peak_mb"] = row["hwm_mb"] - row["rss_baseline_mb"]
    benchmark.extra_info.update(row)
    report.record("recall_memory", f"{name}-{n}-{index}", row)
