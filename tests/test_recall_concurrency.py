"""The Recaller's concurrency contract: readers (search) in parallel with one writer (add, remove,
save), per-call search parameters, and faiss's process-wide settings left alone by searches.
The crash-prone runs happen in a child process with a time limit (tests/stress_recall.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import faiss
import numpy as np
import pytest
from helpers import SD, World, run_stress

import fmrecall
from fmrecall.recall import faiss_config

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.parametrize("index", ["exact", "hnsw", "ivf", "auto-tiered"])
def test_readers_and_a_writer(tmp_path, index):
    """8 readers with k = 10 / 300, with and without exclude, while a writer removes and re-adds
    150 of 900 items and saves every 5th cycle: no crash, no exception, every result exact (the
    exact index: bit-identical to a serial search on one of the two catalogue states)."""
    counts = run_stress("stress_recall.py", index, 3, 8, tmp_path / "saved")
    assert counts["searches"] >= 200 and counts["mutations"] >= 10 and counts["saves"] >= 1, counts


@pytest.mark.parametrize(
    "index,kw",
    [
        ("hnsw", {}),
        ("hnsw-ip", {"candidates": 50}),
        ("ivf", {"nprobe": 3}),
        ("tiered-ivf", {"nprobe": 3, "nlist": 16}),
        ("IVF8_HNSW8,Flat", {"nprobe": 2, "ef_search": 16}),
        ("exact", {"segments": 3}),
    ],
)
def test_mixed_k_searches_in_parallel_equal_serial(rng, index, kw):
    """Search parameters travel with each call: 8 threads searching with k = 5, 50 and 300 mixed
    get exactly what one thread gets (faiss's shared index is never changed by a search)."""
    world = World(rng, "ffm", m=12, n=600)
    rec = world.recaller(index, **kw)
    ks = [5, 50, 300]
    want = {k: rec.search(world.queries, k) for k in ks}
    errors = []

    def reader(seed):
        r = np.random.default_rng(seed)
        for _ in range(25):
            k = ks[int(r.integers(3))]
            got = rec.search(world.queries, k)
            if not (np.array_equal(got.ids, want[k].ids) and np.array_equal(got.scores, want[k].scores)):
                errors.append(k)

    threads = [threading.Thread(target=reader, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, f"{len(errors)} of 200 parallel searches differ from the serial ones"


def test_searches_leave_faiss_globals_alone(rng):
    """faiss's BLAS thresholds are set once (the first Recaller, unless the application chose),
    never per search; a search's thread count is the calling thread's own OpenMP setting."""
    names = sorted(faiss_config.EXACT_BLAS)
    world = World(rng, "fm", m=30, n=200)
    custom = {
        "distance_compute_blas_threshold": 777,
        "distance_compute_blas_query_bs": 1024,
        "distance_compute_blas_database_bs": 2048,
    }
    try:
        fmrecall.configure_faiss(custom)
        rec = world.recaller("exact", threads=1)  # the application's choice stands
        assert {n: getattr(faiss.cvar, n) for n in names} == custom
        threads_before = faiss.omp_get_max_threads()
        seen = []

        def reader():
            for _ in range(20):
                rec.search(world.queries, 7)
            seen.append(faiss.omp_get_max_threads())

        ts = [threading.Thread(target=reader) for _ in range(4)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(60)
        assert {n: getattr(faiss.cvar, n) for n in names} == custom
        assert faiss.omp_get_max_threads() == threads_before
        assert seen == [threads_before] * 4  # each thread's own setting is restored too
        with pytest.raises(ValueError, match="unknown faiss BLAS setting"):
            fmrecall.configure_faiss({"distance_compute_blas_treshold": 5})
        with pytest.raises(ValueError, match="positive integer"):
            fmrecall.configure_faiss({"distance_compute_blas_threshold": 0})
    finally:
        fmrecall.configure_faiss()  # back to fmrecall's defaults
    assert {n: getattr(faiss.cvar, n) for n in names} == faiss_config.EXACT_BLAS


def test_first_recaller_applies_the_defaults_once():
    """In a fresh process the first faiss-backed Recaller applies EXACT_BLAS; an application that
    called configure_faiss first keeps its values."""
    code = """
import faiss, numpy as np, fmrecall, json
w = {"bias": 0.0, "linear": np.zeros(4, np.float32), "factors": np.ones((4, 2), np.float32)}
m = fmrecall.FM.from_weights(w, n_fields=2)
before = faiss.cvar.distance_compute_blas_threshold
fmrecall.Recaller(m, fmrecall.Sides(user=[0], item=[1]))
after = faiss.cvar.distance_compute_blas_threshold
print(json.dumps([before, after]))
"""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    before, after = json.loads(out.stdout.strip().splitlines()[-1])
    assert before != after == faiss_config.EXACT_BLAS["distance_compute_blas_threshold"]


def test_a_retrained_model_is_refused(rng):
    """The indexed item vectors belong to the model as it was: after partial_fit, search and
    add_items raise instead of mixing new query vectors with old item vectors."""
    world = World(rng, "fm", m=5, n=50)
    labelled = fmrecall.Dataset(
        world.queries.indptr,
        world.queries.fields,
        world.queries.features,
        world.queries.values,
        np.ones(world.m, np.float32),
        n_features=world.queries.n_features,
        n_fields=world.queries.n_fields,
    )
    rec = world.recaller("exact")
    rec.search(world.queries, 3)
    if getattr(world.model, "generation_", None) is None:
        pytest.skip("models carry no generation counter")
    world.model.partial_fit(labelled)
    with pytest.raises(RuntimeError, match="trained again"):
        rec.search(world.queries, 3)
    with pytest.raises(RuntimeError, match="trained again"):
        rec.add_items(world.items, world.ids)
    fresh = fmrecall.Recaller(world.model, fmrecall.Sides(**SD), threads=1).add_items(world.items, world.ids)
    assert len(fresh.search(world.queries, 3).ids) == world.m
