"""Split builder throughput: ``split.item_vectors`` / ``split.query_vectors`` of an FFM k=4 on 10 query ×
20 item fields (d=801), trained for one epoch on the recall benchmarks' data (bench/recall_bench.py).

* test_split_builder   — items/s of split.item_vectors with 1 and 2 threads, and query_vectors rows/s.
* test_split_gil       — item_vectors in a Python thread while another Python thread spins.

    PYTHONPATH=python python3 -m pytest bench/test_split_builder.py --benchmark-only -q

    FMRECALL_BENCH_SPLIT_ITEMS=100000   rows built per call
"""

from __future__ import annotations

import os
import sys
import threading
import time

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import common  # noqa: E402
import recall_data as rd  # noqa: E402
import report  # noqa: E402
from recall_bench import ROUNDS  # noqa: E402

import fmrecall  # noqa: E402

SPLIT_ITEMS = int(os.environ.get("FMRECALL_BENCH_SPLIT_ITEMS", 100_000))
SPLIT_QUERY_COLS = [24, 17, 29, 0, 1, 5, 6, 7, 8, 9]  # 10 query fields
SPLIT_ITEM_COLS = rd.ITEM_FIELDS + [21, 26, 28, 32, 34]  # 20 item fields


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
    row = {
        "what": what,
        "threads": threads,
        "rows": data.n_rows,
        "dim": split.dim,
        "fields": 20 if what == "item_vectors" else 10,
        "seconds": secs,
        "rows_per_s": data.n_rows / secs,
        "mb_per_s": p.nbytes / 2**20 / secs,
        "model_fit_seconds": fit_s,
        "other_load": load.share,
    }
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
    row = {
        "rows": items.n_rows,
        "dim": split.dim,
        "builder_alone_s": alone_s,
        "builder_with_spinner_s": work_s,
        "spinner_alone_per_s": alone_rate,
        "spinner_during_per_s": rate,
        "spinner_ratio": rate / alone_rate,
        "wall_s": wall,
        "other_load": load.share,
    }
    benchmark.extra_info.update(row)
    report.record("recall_split_gil", "item_vectors-t1", row)
    # a held GIL would stall the spinner for the whole call (ratio ~0)
