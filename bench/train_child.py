"""One training run in its own process (so peak RSS is this run's alone), printed as JSON.

    python bench/train_child.py --kind ffm --k 4 --threads 2 --epochs 3 --data bench/.cache/criteo_synth_1000000.ffm

Loads the libffm file (Dataset.from_libffm), takes the first 90% of rows as train and the last
10% as valid (zero-copy views), fits for --epochs epochs with valid and patience=None (no early
stopping, no weight snapshot), and prints one JSON object on the last stdout line.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import common  # noqa: E402


def _peak_mb() -> float:
    """Peak resident set size of this process in MiB.

    VmHWM (the high-water mark of this process's own address space), not
    getrusage(RUSAGE_SELF).ru_maxrss: Linux carries ru_maxrss across exec, and the forked copy of
    the parent's address space counts as resident, so a child spawned by a big pytest process
    reports the *parent's* peak there (measured: a 2 GB parent -> ru_maxrss 1.9 GB in a bare
    child). ru_maxrss is printed as well for reference.
    """
    return common.status_mb("VmHWM")


def _ru_maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _current_mb() -> float:
    return common.status_mb("VmRSS")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kind", choices=["ffm", "fm"], required=True)
    ap.add_argument("--k", type=int, required=True)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--epochs", type=int, required=True)
    ap.add_argument("--data", required=True)
    args = ap.parse_args()

    import numpy as np  # noqa: F401  (imported before the first RSS reading, like fmrecall)
    import synth

    for attempt in range(4):  # the extension may be being rebuilt in place right now
        try:
            from fmrecall import metrics

            break
        except ImportError as e:
            if attempt == 3 or "too short" not in str(e) and "invalid ELF" not in str(e):
                raise
            time.sleep(15)

    out = {"rss_start_mb": _peak_mb()}
    with open(os.path.splitext(args.data)[0] + ".json") as f:
        meta = json.load(f)
    t0 = time.perf_counter()
    ds = synth.load(args.data, meta)
    out["load_seconds"] = time.perf_counter() - t0
    out["peak_rss_after_load_mb"] = _peak_mb()
    out["rss_after_load_mb"] = _current_mb()
    train, valid = synth.split_views(ds)
    out["train_rows"], out["valid_rows"] = train.n_rows, valid.n_rows

    model = common.new_model(args.kind, args.k, args.threads, epochs=args.epochs, patience=None)
    t0 = time.perf_counter()
    model.fit(train, valid=valid)
    out["fit_seconds"] = time.perf_counter() - t0
    out["peak_rss_mb"] = _peak_mb()
    out["ru_maxrss_mb"] = _ru_maxrss_mb()
    out["rss_end_mb"] = _current_mb()

    # the per-epoch validation inside fit(): score + logloss + AUC, timed once more on its own
    t0 = time.perf_counter()
    s = model.decision_function(valid)
    metrics.logloss_from_scores(valid.labels, s)
    metrics.auc(valid.labels, s)
    out["eval_seconds"] = time.perf_counter() - t0

    hist = model.history_
    out["history"] = hist
    train_s = sorted(max(h["seconds"] - out["eval_seconds"], 0.0) for h in hist)
    out["train_seconds_per_epoch"] = train_s[len(train_s) // 2]  # median
    best = min(hist, key=lambda h: h["valid_loss"])
    out["best_epoch"] = best["epoch"]
    out["best_valid_logloss"] = best["valid_loss"]
    out["best_valid_auc"] = best["valid_auc"]
    out["final_valid_logloss"] = hist[-1]["valid_loss"]
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
