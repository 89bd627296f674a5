"""Where a 1-thread FFM training epoch goes: waiting for memory or computing (issue 9, item 1).

The same Criteo-shaped rows (bench/synth.py) are trained twice, interleaved in one process:

* ``full``: the real feature ids (about 213k distinct ids with vectors at 300k rows: a W table of
  hundreds of MB, read at random; the hot ids stay in the caches, the rare ones come from DRAM);
* ``folded``: every field's ids folded onto ``FOLD`` values (``id mod FOLD`` inside the field), so
  the whole W table fits in L1/L2 (FOLD=1: 39 blocks, 48 KiB at k=4). Same rows, same field pairs,
  same arithmetic per row: only the addresses change.

``full - folded`` CPU seconds per epoch is the cost of bringing the parameter blocks (and the row
maps) in from beyond L2; ``folded`` is the compute bound of the kernel. Each round trains one epoch
(``partial_fit``) of each model; CPU = user + system of the process (os.times), which other load on
a shared machine inflates far less than wall time.

    PYTHONPATH=python python bench/epoch_breakdown.py            # FFM k=4 and k=8, 300k rows
    FMRECALL_BENCH_ROWS=500000 BREAKDOWN_KS=4 BREAKDOWN_ROUNDS=5 BREAKDOWN_FOLD=10 ...

For a per-function split (forward / backward / gather) of the same epochs, run it under
``perf record -e cpu-clock`` against an unstripped build (``-DCMAKE_STRIP=/bin/true -DCMAKE_CXX_FLAGS=-g``).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from typing import Any, Dict, List

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import common  # noqa: E402
import synth  # noqa: E402


def folded(ds: Any, fold: int) -> Any:
    """The rows of ``ds`` with feature id ``field * fold + id % fold`` (a tiny vocabulary)."""
    from fmrecall import Dataset

    f = np.asarray(ds.fields, dtype=np.int64)
    j = np.asarray(ds.features, dtype=np.int64)
    feats = (f * fold + j % fold).astype(np.int32)
    return Dataset(ds.indptr, ds.fields, feats, None, ds.labels, n_features=ds.n_features, n_fields=ds.n_fields)


def epoch(model: Any, data: Any) -> Dict[str, float]:
    t0, c0 = time.perf_counter(), os.times()
    model.partial_fit(data)
    c1 = os.times()
    return {"wall": time.perf_counter() - t0, "cpu": c1.user + c1.system - c0.user - c0.system}


def main() -> None:
    rows = int(os.environ.get("FMRECALL_BENCH_ROWS", "300000"))
    ks = [int(k) for k in os.environ.get("BREAKDOWN_KS", "4,8").split(",")]
    rounds = int(os.environ.get("BREAKDOWN_ROUNDS", "3"))
    fold = int(os.environ.get("BREAKDOWN_FOLD", "1"))
    path, meta = synth.ensure(rows, verbose=False)
    train, _ = synth.split_views(synth.load(path, meta))
    data = {"full": train, "folded": folded(train, fold)}
    print(f"{train.n_rows:,} train rows, 39 one-hot fields, 1 thread, folded = {fold} id(s) per field", flush=True)
    for k in ks:
        models = {name: common.new_model("ffm", k, 1) for name in data}
        for name, m in models.items():
            m.partial_fit(data[name])  # first epoch: allocation and first touch (not timed)
        times: Dict[str, List[Dict[str, float]]] = {name: [] for name in data}
        with common.ForeignLoad() as load:
            for r in range(rounds):
                for name in list(data)[:: 1 if r % 2 == 0 else -1]:
                    times[name].append(epoch(models[name], data[name]))
        cpu = {name: statistics.median(t["cpu"] for t in ts) for name, ts in times.items()}
        for name, ts in times.items():
            print(
                f"FFM k={k} {name:6s} CPU s/epoch median {cpu[name]:.3f} (all {[round(t['cpu'], 2) for t in ts]}), "
                f"wall min {min(t['wall'] for t in ts):.3f}",
                flush=True,
            )
        share = 1.0 - cpu["folded"] / cpu["full"]
        other = "?" if load.share is None else f"{load.share:.0%}"
        print(
            f"FFM k={k} memory share of the epoch (1 - folded/full CPU) {share:.0%}; "
            f"{1e6 * cpu['full'] / train.n_rows:.2f} us/row, "
            f"{1e9 * cpu['folded'] / (train.n_rows * common.PAIRS_PER_ROW):.2f} ns per field pair when in cache; "
            f"other load {other}",
            flush=True,
        )


if __name__ == "__main__":
    main()
