"""How far memory-side work can take a 1-thread epoch: libffm and fmrecall on the same rows, with
the real ids and with every field's ids folded onto one (issue 9, item 1: the ≤ 0.5× target).

Four epochs per round, interleaved in one script: libffm and fmrecall, each on ``full`` rows (the
Criteo-shaped train split, bench/synth.py) and on ``folded`` rows (epoch_breakdown.folded: the same
rows, pairs and arithmetic, with a parameter table that stays in L1/L2). ``folded`` is each
system's compute floor: what an epoch would cost if no parameter ever had to come from beyond L2.
If fmrecall's folded epoch is above half of libffm's full epoch, no prefetching, layout or byte
saving can meet the ≤ 0.5× target: only less arithmetic per pair can.

Seconds per epoch: libffm's own ``tr_time`` steps of epochs 2-4 of one 4-epoch process (median;
its CPU-time difference between processes swings with the system time of zeroing its model pages);
fmrecall's CPU (user + system) of the faster of two ``partial_fit`` epochs after an untimed one. On
one thread and an idle machine both are the time of one core.

    PYTHONPATH=python python bench/floor.py              # FFM k=4 and k=8, 300k rows, 3 rounds
    FLOOR_KS=4 FLOOR_ROUNDS=5 FMRECALL_BENCH_ROWS=500000 PYTHONPATH=python python bench/floor.py
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from typing import Any, Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import common  # noqa: E402
import libffm_peer  # noqa: E402
import synth  # noqa: E402
from epoch_breakdown import folded  # noqa: E402


def fmrecall_epoch(model: Any, data: Any) -> float:
    """CPU seconds of the faster of two epochs."""
    best = float("inf")
    for _ in range(2):
        c0 = os.times()
        model.partial_fit(data)
        c1 = os.times()
        best = min(best, c1.user + c1.system - c0.user - c0.system)
    return best


def main() -> None:
    rows = int(os.environ.get("FMRECALL_BENCH_ROWS", "300000"))
    ks = [int(k) for k in os.environ.get("FLOOR_KS", "4,8").split(",")]
    rounds = int(os.environ.get("FLOOR_ROUNDS", "3"))
    exe = libffm_peer.build()
    path, meta = synth.ensure(rows, verbose=False)
    train, _ = synth.split_views(synth.load(path, meta))
    full_txt, _ = libffm_peer.split_files(path, meta)
    fold = folded(train, 1)
    fold_txt = os.path.join(synth.CACHE, f"criteo_synth_{rows}.train.folded.ffm")
    if not os.path.exists(fold_txt):
        fold.to_libffm(fold_txt + ".tmp")
        os.replace(fold_txt + ".tmp", fold_txt)
    data = {"full": (train, full_txt), "folded": (fold, fold_txt)}
    lr, l2 = common.HYPER["learning_rate"], common.HYPER["reg_factors"]
    print(f"{train.n_rows:,} train rows, 39 one-hot fields, 1 thread, {rounds} rounds", flush=True)
    for k in ks:
        models = {name: common.new_model("ffm", k, 1) for name in data}
        for name, m in models.items():
            m.partial_fit(data[name][0])  # allocation and first touch (not timed)
        cpu: Dict[str, List[float]] = {}
        with common.ForeignLoad() as load:
            for r in range(rounds):
                for name in list(data)[:: 1 if r % 2 == 0 else -1]:
                    steps = libffm_peer.run(exe, k, 1, 4, data[name][1], None, lr, l2)["epoch_seconds"][1:]
                    cpu.setdefault(f"libffm {name}", []).append(statistics.median(steps))
                    cpu.setdefault(f"fmrecall {name}", []).append(fmrecall_epoch(models[name], data[name][0]))
        med = {key: statistics.median(v) for key, v in cpu.items()}
        for key, v in cpu.items():
            print(f"FFM k={k} {key:16s} s/epoch median {med[key]:.3f}  all {[round(x, 2) for x in v]}", flush=True)
        lib_full, lib_fold = med["libffm full"], med["libffm folded"]
        full, fold = med["fmrecall full"], med["fmrecall folded"]
        print(
            f"FFM k={k}: fmrecall/libffm full {full / lib_full:.2f}, folded {fold / lib_fold:.2f}; "
            f"fmrecall folded / libffm full {fold / lib_full:.2f} (target for the whole epoch 0.50); "
            f"other load {load.share:.0%}, {time.strftime('%H:%M UTC', time.gmtime())}",
            flush=True,
        )


if __name__ == "__main__":
    main()
