"""Row-wise AdaGrad study (issue 9, item 1): CPU seconds per 1-thread FFM epoch, interleaved.

Runs only against the prototype commit that adds the study switches to the core (read by
Model::allocate): FMRECALL_ROWWISE=1 gives every stored vector one AdaGrad accumulator
(G += mean_d g_d^2; w -= eta g / sqrt(G)) stored right after its kp weights (vs = kp + 1 floats);
FMRECALL_RW_VS=n stores it in n floats instead (n = 2 kp: the per-coordinate layout's bytes with
the row-wise arithmetic, which separates the effect of the bytes from the effect of the arithmetic).

Variants per k: percoord (the product), rowwise_vs{kp+1}, rowwise_vs{2kp}. Each round trains one
epoch (partial_fit) of every variant, the order reversed every other round; CPU = user + system of
the process (os.times). The valid logloss is after all the epochs (bench HYPER: lr 0.02, no value
scaling). Accuracy at the library defaults: FMRECALL_ROWWISE=1 python bench/accuracy_study.py ...

    FMRECALL_BENCH_ROWS=500000 PYTHONPATH=python python bench/rowwise_study.py   # 450k train rows
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


def new_variant(train: Any, k: int, rowwise: bool, vs: int) -> Any:
    os.environ["FMRECALL_ROWWISE"] = "1" if rowwise else "0"
    os.environ["FMRECALL_RW_VS"] = str(vs)
    try:
        model = common.new_model("ffm", k, 1)
        model.partial_fit(train)  # first epoch: allocation and first touch (not timed)
    finally:
        del os.environ["FMRECALL_ROWWISE"], os.environ["FMRECALL_RW_VS"]
    return model


def main() -> None:
    rows = int(os.environ.get("FMRECALL_BENCH_ROWS", "500000"))
    ks = [int(k) for k in os.environ.get("ROWWISE_KS", "4,8").split(",")]
    rounds = int(os.environ.get("ROWWISE_ROUNDS", "4"))
    path, meta = synth.ensure(rows, verbose=False)
    train, valid = synth.split_views(synth.load(path, meta))
    print(f"{train.n_rows:,} train rows, {valid.n_rows:,} valid rows, 1 thread", flush=True)
    for k in ks:
        kp = (k + 3) // 4 * 4
        models = {
            "percoord": new_variant(train, k, False, 0),
            f"rowwise_vs{kp + 1}": new_variant(train, k, True, kp + 1),
            f"rowwise_vs{2 * kp}": new_variant(train, k, True, 2 * kp),
        }
        cpu: Dict[str, List[float]] = {name: [] for name in models}
        wall: Dict[str, List[float]] = {name: [] for name in models}
        names = list(models)
        with common.ForeignLoad() as load:
            for r in range(rounds):
                for name in names if r % 2 == 0 else names[::-1]:
                    t0, c0 = time.perf_counter(), os.times()
                    models[name].partial_fit(train)
                    c1 = os.times()
                    cpu[name].append(c1.user + c1.system - c0.user - c0.system)
                    wall[name].append(time.perf_counter() - t0)
        y = np.asarray(valid.labels, dtype=np.float64)
        for name, m in models.items():
            s = np.asarray(m.decision_function(valid), dtype=np.float64)
            loss = float(np.mean(y * np.logaddexp(0, -s) + (1 - y) * np.logaddexp(0, s)))
            ratio = statistics.median(b / a for a, b in zip(cpu["percoord"], cpu[name]))
            print(
                f"FFM k={k} {name:14s} CPU s/epoch median {statistics.median(cpu[name]):.3f} "
                f"min {min(cpu[name]):.3f} | wall median {statistics.median(wall[name]):.3f} | "
                f"CPU / percoord (median of rounds) {ratio:.3f} | valid logloss after {1 + rounds} epochs "
                f"{loss:.4f} | CPU {[round(c, 2) for c in cpu[name]]}",
                flush=True,
            )
        print(f"FFM k={k} other load {'?' if load.share is None else f'{load.share:.0%}'}", flush=True)


if __name__ == "__main__":
    main()
