"""Training speed against libffm, same data, same run (the issue-9 table: fmrecall / libffm per epoch).

For every model (FFM k=4, FFM k=8, FM k=16; libffm has no FM) and thread count, interleaved:
before each timed round of fmrecall epochs (``partial_fit``, pytest-benchmark), two ``ffm-train``
processes (1 and ``LIBFFM_EPOCHS`` epochs) train the same rows with the same k, threads, learning
rate and L2 (bench/libffm_peer.py builds it from the libffm source). Each system's first epoch is
left out (fmrecall: sizing and allocating the model; libffm: converting the text, first touch of
its model and data), then the fastest epoch of each side is compared, in wall seconds and in CPU
seconds (all threads: what a shared machine's other load does not inflate). Afterwards the
validation logloss of the fmrecall model is compared with the 1-thread run's (same epochs, seed).

    PYTHONPATH=python python3 -m pytest bench/test_libffm.py --benchmark-only -q
    FMRECALL_BENCH_THREADS=1,2,4,8,16 ... (bench/scaling.sh: the whole table on a many-core machine)

The table goes into bench/results.md under "## Speed vs libffm" (that section only).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Dict

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import common  # noqa: E402
import libffm_peer  # noqa: E402
import report  # noqa: E402
import synth  # noqa: E402

from fmrecall.metrics import logloss_from_scores  # noqa: E402

THREADS = [int(t) for t in os.environ.get("FMRECALL_BENCH_THREADS", "1,2").split(",")]
ROUNDS = int(os.environ.get("FMRECALL_BENCH_ROUNDS", 2))  # interleaved rounds per config
LIBFFM_EPOCHS = int(os.environ.get("FMRECALL_BENCH_LIBFFM_EPOCHS", 3))  # per ffm-train process (1st left out)
VALID_PEER = os.environ.get("FMRECALL_BENCH_LIBFFM_VALID", "1") != "0"  # libffm's valid logloss (one more run)
FM_EPOCHS = int(os.environ.get("FMRECALL_BENCH_FM_EPOCHS", 2))  # fmrecall epochs per timed round
HEADING = "## Speed vs libffm (same data, same run)"
COMMAND = "PYTHONPATH=python python3 -m pytest bench/test_libffm.py --benchmark-only -q"
CONFIGS = [(kind, k, t) for kind, k in common.MODELS for t in THREADS]
ROWS: Dict[str, Dict[str, Any]] = {}


@pytest.fixture(scope="module")
def rows():
    """(train, valid, meta, libffm train file, libffm valid file). Not conftest's synth fixtures:
    they record into the results JSON, which re-renders (and, for another data size, empties) the
    rest of results.md; this file writes its own section only."""
    path, meta = synth.ensure()
    train, valid = synth.split_views(synth.load(path, meta))
    tr, va = libffm_peer.split_files(path, meta)
    yield train, valid, meta, tr, va
    _write_results(meta)


@pytest.fixture(scope="module")
def libffm():
    try:
        return libffm_peer.build()
    except RuntimeError as e:
        pytest.skip(str(e))


@pytest.mark.parametrize("kind,k,threads", CONFIGS, ids=[common.config_id(*c) for c in CONFIGS])
def test_vs_libffm(benchmark, rows, libffm, kind, k, threads):
    train, valid, meta, tr, va = rows
    exe = libffm
    h = common.HYPER
    lr, l2 = h["learning_rate"], h["reg_factors"]
    peer = []  # libffm epoch times, one pair of processes before each fmrecall round (interleaved)

    def libffm_round():
        if kind == "ffm":
            peer.append(libffm_peer.epoch_times(exe, k, threads, LIBFFM_EPOCHS, tr, lr, l2))

    model = common.new_model(kind, k, threads)
    model.partial_fit(train)  # first epoch: sizes and allocates the model (not timed)
    wall, cpu = [], []

    def fm_round():
        for _ in range(FM_EPOCHS):
            t0, c0 = time.perf_counter(), time.process_time()
            model.partial_fit(train)
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)

    with common.ForeignLoad() as load:
        benchmark.pedantic(fm_round, setup=libffm_round, rounds=ROUNDS, iterations=1)
    valid_loss = logloss_from_scores(valid.labels, model.decision_function(valid))
    lib_valid = None
    if kind == "ffm" and VALID_PEER:
        lib_valid = libffm_peer.run(exe, k, threads, 1 + len(wall), tr, va, lr, l2)
    lib_wall = [s for p in peer for s in p["wall"]]
    lib_cpu = [p["cpu_per_epoch"] for p in peer if p["cpu_per_epoch"] is not None]
    row = {
        "model": common.model_label(kind, k),
        "threads": threads,
        "train_rows": train.n_rows,
        "fmrecall_epoch_s": min(wall),
        "fmrecall_epochs_s": wall,
        "fmrecall_cpu_s": min(cpu),
        "fmrecall_epochs_done": 1 + len(wall),
        "fmrecall_valid_logloss": valid_loss,
        "libffm_epoch_s": min(lib_wall) if lib_wall else None,
        "libffm_epochs_s": lib_wall,
        "libffm_cpu_s": min(lib_cpu) if lib_cpu else None,
        "libffm_valid_logloss": lib_valid["va_logloss"][-1] if lib_valid else None,
        "libffm_command": peer[-1]["command"] if peer else None,
        "ratio": min(wall) / min(lib_wall) if lib_wall else None,
        "cpu_ratio": min(cpu) / min(lib_cpu) if lib_cpu else None,
        "other_load": load.share,
    }
    benchmark.extra_info.update({key: v for key, v in row.items() if not isinstance(v, list)})
    ROWS[common.config_id(kind, k, threads)] = row
    assert np.isfinite(valid_loss)


def _s(x: Any, digits: int = 2) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _x(x: Any) -> str:
    return "–" if x is None else f"{x:.2f}×"


def _ratio(x: Any) -> str:
    return "–" if x is None else f"{x:.2f}" + (" ✅" if x <= 0.5 else " ❌")


def _pct(x: Any) -> str:
    return "–" if x is None else f"{100 * x:.0f}%"


def _write_results(meta: Dict) -> None:
    if not ROWS:
        return
    lines = [
        HEADING,
        "",
        "Seconds per training epoch on the Criteo-shaped rows (bench/synth.py, "
        f"{meta['train_rows']:,} train rows, 39 one-hot fields), both systems in the same pytest run, "
        "interleaved: before each round of fmrecall epochs (`partial_fit`) two `ffm-train` processes (libffm "
        f"built from its source with its Makefile's flags) train 1 and {LIBFFM_EPOCHS} epochs. The first epoch "
        "of each side is left out (model allocation; libffm's text-to-binary conversion and first touch). "
        "wall = fastest remaining epoch: libffm's own `tr_time` steps (printed to 0.1 s, no validation), "
        "fmrecall's `partial_fit` call (Python included, no validation). CPU = user + system seconds of all "
        "threads per epoch (libffm: the difference of the two processes over the extra epochs); on a shared "
        "machine it is inflated far less than wall time by other load. Same k, threads, learning rate "
        f"{common.HYPER['learning_rate']}, L2 {common.HYPER['reg_factors']}, no instance normalisation "
        "(`--no-norm`). *speed-up* = 1-thread wall ÷ this wall (same system; target 16 threads ≥ 8×). "
        "valid logloss: after the epochs each side ran (fmrecall also has bias and linear weights, libffm "
        "has not, and starts its vectors at U(0, 1/√k)); Δ 1 t = this fmrecall logloss − the 1-thread "
        "one (target |Δ| ≤ 0.002).",
        "",
        "| model | threads | libffm wall s | fmrecall wall s | fmrecall / libffm (wall) | libffm CPU s | "
        "fmrecall CPU s | fmrecall / libffm (CPU) | speed-up libffm | speed-up fmrecall | "
        "fmrecall valid logloss (epochs) | Δ 1 t | libffm valid logloss | other load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    one = {r["model"]: r for r in ROWS.values() if r["threads"] == 1}
    for key in sorted(ROWS, key=lambda c: (c.split("-t")[0], int(c.split("-t")[1]))):
        r = ROWS[key]
        base = one.get(r["model"])
        up_lib = up_fm = delta = None
        if base is not None:
            up_fm = base["fmrecall_epoch_s"] / r["fmrecall_epoch_s"]
            if base["libffm_epoch_s"] and r["libffm_epoch_s"]:
                up_lib = base["libffm_epoch_s"] / r["libffm_epoch_s"]
            delta = r["fmrecall_valid_logloss"] - base["fmrecall_valid_logloss"]
        lines.append(
            f"| {r['model']} | {r['threads']} | {_s(r['libffm_epoch_s'])} | {_s(r['fmrecall_epoch_s'])} | "
            f"{_ratio(r['ratio'])} | {_s(r['libffm_cpu_s'])} | {_s(r['fmrecall_cpu_s'])} | {_ratio(r['cpu_ratio'])} | "
            f"{_x(up_lib)} | {_x(up_fm)} | {r['fmrecall_valid_logloss']:.4f} ({r['fmrecall_epochs_done']}) | "
            f"{'–' if delta is None else f'{delta:+.4f}'} | "
            f"{_s(r['libffm_valid_logloss'], 4)} | "
            f"{_pct(r['other_load'])} |"
        )
    env = report.environment()
    threads = "" if THREADS == [1, 2] else f"FMRECALL_BENCH_THREADS={','.join(map(str, THREADS))} "
    lines += [
        "",
        f"Machine: {env['cpu']}, {env['cores']} cores, kernels `{env['arch']}`, commit `{env['commit']}`, "
        f"{time.strftime('%Y-%m-%d')}; *other load* = CPU share of other processes meanwhile. "
        f"Reproduce: `{threads}{COMMAND}` (or `bash bench/scaling.sh` for 1–16 threads).",
        "",
    ]
    report.replace_section(HEADING, "\n".join(lines))
