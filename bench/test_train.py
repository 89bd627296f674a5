"""Training throughput, memory and accuracy on the Criteo-shaped data (bench/synth.py).

* test_epoch            — one epoch (`partial_fit`) of FFM k=4, FFM k=8, FM k=16 with 1 and 2 threads
                          on the 900k train rows, rows/s ratio against the numpy reference SGD
                          (bench/numpy_sgd.py; timed as a benchmark by bench/test_peers.py).
* test_fit_subprocess   — a separate process per config: load the libffm file, fit a few epochs with
                          validation; peak RSS, s/epoch, validation logloss vs the planted floor.

    PYTHONPATH=python python3 -m pytest bench/test_train.py --benchmark-only
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import common  # noqa: E402
import report  # noqa: E402
from numpy_sgd import numpy_rate  # noqa: E402

import fmrecall  # noqa: E402

CONFIGS = [(kind, k, t) for kind, k in common.MODELS for t in common.THREADS]
IDS = [common.config_id(*c) for c in CONFIGS]


@pytest.mark.parametrize("kind,k,threads", CONFIGS, ids=IDS)
def test_epoch(benchmark, synth_data, kind, k, threads):
    train, valid, meta = synth_data
    model = common.new_model(kind, k, threads)
    # The first epoch also sizes, allocates and initialises the model (FFM vectors exist only for
    # the features of the first partial_fit's data, so it must see the whole train set): timed
    # on its own, outside the benchmark rounds.
    t0 = time.perf_counter()
    model.partial_fit(train)
    first = time.perf_counter() - t0
    cpu = []  # process CPU seconds of each round (all threads): shows imbalance / stolen time

    def epoch():
        c0 = time.process_time()
        model.partial_fit(train)
        cpu.append(time.process_time() - c0)

    with common.ForeignLoad() as load:
        benchmark.pedantic(epoch, rounds=common.EPOCH_ROUNDS, iterations=1)
    st = benchmark.stats.stats
    walls = [h["seconds"] for h in model.history_[1:]]  # partial_fit's own timing of each round
    rate = train.n_rows / st.min
    ref_rate = numpy_rate(kind, k, train)
    row = {
        "model": common.model_label(kind, k),
        "threads": threads,
        "train_rows": train.n_rows,
        "rounds": common.EPOCH_ROUNDS,
        "seconds_min": st.min,
        "seconds_mean": st.mean,
        "rows_per_s": rate,
        "ns_per_pair": common.ns_per_pair(st.min, threads, train.n_rows),
        "numpy_rows_per_s": ref_rate,
        "ratio_vs_numpy": rate / ref_rate,
        "train_loss_last_epoch": model.history_[-1]["train_loss"],
        "first_epoch_seconds": first,
        "cpu_seconds": cpu,
        "wall_seconds": walls,
        "other_load": load.share,
        "cpu_seconds_of_fastest": cpu[int(np.argmin(walls))] if len(walls) == len(cpu) else None,
    }
    benchmark.extra_info.update(row)
    report.record("train_epoch", common.config_id(kind, k, threads), row)
    assert np.isfinite(row["train_loss_last_epoch"])


def _child_env():
    env = dict(os.environ)
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(fmrecall.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(
        [pkg_parent, HERE] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    )
    return env


def run_child(kind, k, threads, epochs, path):
    cmd = [
        sys.executable,
        os.path.join(HERE, "train_child.py"),
        "--kind",
        kind,
        "--k",
        str(k),
        "--threads",
        str(threads),
        "--epochs",
        str(epochs),
        "--data",
        path,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_child_env())
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("kind,k,threads", CONFIGS, ids=IDS)
def test_fit_subprocess(benchmark, synth_file, kind, k, threads):
    path, meta = synth_file
    out = {}
    with common.ForeignLoad() as load:
        benchmark.pedantic(
            lambda: out.update(run_child(kind, k, threads, common.FIT_EPOCHS, path)), rounds=1, iterations=1
        )
    row = {
        "model": common.model_label(kind, k),
        "threads": threads,
        "epochs": common.FIT_EPOCHS,
        "train_rows": out["train_rows"],
        "load_seconds": out["load_seconds"],
        "train_seconds_per_epoch": out["train_seconds_per_epoch"],
        "ns_per_pair": common.ns_per_pair(out["train_seconds_per_epoch"], threads, out["train_rows"]),
        "eval_seconds": out["eval_seconds"],
        "rss_after_load_mb": out["rss_after_load_mb"],
        "peak_rss_after_load_mb": out["peak_rss_after_load_mb"],
        "peak_rss_mb": out["peak_rss_mb"],
        "rss_end_mb": out["rss_end_mb"],
        "ru_maxrss_mb": out["ru_maxrss_mb"],
        "best_valid_logloss": out["best_valid_logloss"],
        "best_epoch": out["best_epoch"],
        "best_valid_auc": out["best_valid_auc"],
        "final_valid_logloss": out["final_valid_logloss"],
        "floor_logloss": meta["floor_logloss_valid"],
        "base_rate_logloss": meta["base_rate_logloss_valid"],
        "history": out["history"],
        "other_load": load.share,
    }
    benchmark.extra_info.update({k_: v for k_, v in row.items() if k_ != "history"})
    report.record("train_fit", common.config_id(kind, k, threads), row)
    assert np.isfinite(row["best_valid_logloss"])
