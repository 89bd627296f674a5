"""Accuracy at default settings against libffm, same rows, same run (issue 8).

libffm (BSD-3, built from ../shared/anchors/libffm into bench/.cache by bench/libffm_build.py) runs
with its defaults, ``ffm-train -k 4 --auto-stop -p valid``, on the first 90% / last 10% of the
Criteo-shaped synthetic file (bench/synth.py); fmrecall ``FFM(k=4, threads=1)`` with nothing else
set is fit on the same rows with the same rows for early stopping. Both report validation logloss
and AUC (computed here from each one's predictions), the best epoch and the seconds; the target is
fmrecall's logloss <= libffm's.

    FMRECALL_BENCH_ROWS=300000 PYTHONPATH=python python3 -m pytest bench/test_libffm_accuracy.py -q -s
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import libffm_build  # noqa: E402
import report  # noqa: E402
import synth  # noqa: E402


def _split_files(path: str, meta: dict) -> tuple:
    """The libffm text split into train (first 90%) and valid (last 10%) files next to it."""
    n_train = synth.train_rows(meta["rows"])
    tr, va = path[: -len(".ffm")] + ".tr.ffm", path[: -len(".ffm")] + ".va.ffm"
    if not (os.path.exists(tr) and os.path.exists(va)):
        with open(path) as src, open(tr + ".tmp", "w") as a, open(va + ".tmp", "w") as b:
            for i, line in enumerate(src):
                (a if i < n_train else b).write(line)
        os.replace(tr + ".tmp", tr)
        os.replace(va + ".tmp", va)
    return tr, va


def _metrics(labels: np.ndarray, scores: np.ndarray) -> dict:
    from fmrecall.metrics import auc, logloss_from_scores

    return {"logloss": logloss_from_scores(labels, scores), "auc": auc(labels, scores)}


def run_libffm(tr: str, va: str, labels: np.ndarray) -> dict:
    exe = libffm_build.ffm_train()
    if exe is None:
        pytest.skip("libffm sources or g++ missing")
    model = va + ".model"
    t0 = time.perf_counter()
    out = subprocess.run(  # in the cache folder: libffm writes its .bin files into the working directory
        [exe, "-k", "4", "--auto-stop", "-p", va, tr, model],
        check=True,
        capture_output=True,
        text=True,
        cwd=os.path.dirname(tr),
    ).stdout
    seconds = time.perf_counter() - t0
    stop = re.search(r"Use model at (\d+)th iteration", out)
    iters = re.findall(r"^\s+(\d+)\s+[\d.]+\s+[\d.]+", out, flags=re.M)
    best = int(stop.group(1)) if stop else int(iters[-1])
    pred = va + ".pred"
    predict = os.path.join(os.path.dirname(exe), "ffm-predict")
    subprocess.run([predict, va, model, pred], check=True, capture_output=True, cwd=os.path.dirname(tr))
    p = np.clip(np.loadtxt(pred, dtype=np.float64), 1e-15, 1 - 1e-15)
    return dict(_metrics(labels, np.log(p) - np.log1p(-p)), best_epoch=best, epochs=len(iters), seconds=seconds)


def run_fmrecall(train, valid) -> dict:
    import fmrecall

    t0 = time.perf_counter()
    model = fmrecall.FFM(k=4, threads=1).fit(train, valid=valid)
    seconds = time.perf_counter() - t0
    res = _metrics(valid.labels, model.decision_function(valid))
    return dict(res, best_epoch=model.best_epoch_, epochs=len(model.history_), seconds=seconds, scale=model.scale_)


def test_ffm_defaults_vs_libffm(synth_file, synth_data):
    path, meta = synth_file
    train, valid, _ = synth_data
    tr, va = _split_files(path, meta)
    ours = run_fmrecall(train, valid)
    theirs = run_libffm(tr, va, valid.labels)
    for name, row in (("libffm -k 4 --auto-stop", theirs), ("fmrecall FFM(k=4) defaults", ours)):
        report.record("accuracy_vs_libffm", name, dict(row, rows=meta["rows"]))
        print(f"\n{name}: " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
    assert ours["logloss"] <= theirs["logloss"], (ours, theirs)
