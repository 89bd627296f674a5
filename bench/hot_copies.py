"""Threads' private copies of the hot parameters against Hogwild (issue 9, contention; cpp/fmrecall/hot.h).

In one process, per model (FFM k=4, FFM k=8, FM k=16 on the Criteo-shaped rows of bench/synth.py):
three models with the same seed, one on 1 thread, one on T threads with FMRECALL_HOT=off (Hogwild on
every parameter), one on T threads with FMRECALL_HOT=on (the copies, as the default uses them on
several threads). After one untimed epoch each, their
``partial_fit`` epochs run interleaved (1t, Hogwild, copies, then the reverse order), so every round
compares the three under the same machine state. Prints per round wall / 1-thread wall, the
medians, CPU seconds per epoch, the validation logloss after all epochs, and the other load.

    PYTHONPATH=python python bench/hot_copies.py                  # T = 2, 5 rounds
    FMRECALL_BENCH_THREADS=2,4,8,16 HOT_ROUNDS=5 PYTHONPATH=python python bench/hot_copies.py

FMRECALL_BENCH_ROWS sets the file (default 300,000 rows); AB_MODELS picks models (ffm4,ffm8,fm16).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from typing import Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import common  # noqa: E402
import synth  # noqa: E402

from fmrecall.metrics import logloss_from_scores  # noqa: E402


def epoch(model, train, mode: str):
    """(wall, CPU) seconds of one partial_fit epoch with FMRECALL_HOT=mode."""
    os.environ["FMRECALL_HOT"] = mode
    c0, t0 = os.times(), time.perf_counter()
    model.partial_fit(train)
    t1, c1 = time.perf_counter(), os.times()
    return t1 - t0, (c1.user + c1.system) - (c0.user + c0.system)


def main() -> None:
    rows = int(os.environ.get("FMRECALL_BENCH_ROWS", "300000"))
    rounds = int(os.environ.get("HOT_ROUNDS", "5"))
    threads = [int(t) for t in os.environ.get("FMRECALL_BENCH_THREADS", "2").split(",") if int(t) > 1]
    path, meta = synth.ensure(rows, verbose=False)
    train, valid = synth.split_views(synth.load(path, meta))
    print(f"# {rows} rows, {os.cpu_count()} CPUs, {rounds} rounds; wall / 1-thread wall per round")
    print(
        "| model | threads | 1 thread s | Hogwild / 1 t | copies / 1 t | CPU s 1 t / Hogwild / copies |"
        " valid logloss 1 t / Hogwild / copies | other load |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for cfg in os.environ.get("AB_MODELS", "ffm4,ffm8,fm16").split(","):
        kind = cfg.rstrip("0123456789")
        k = int(cfg[len(kind) :])
        for t in threads:
            sides = [("1t", 1, "auto"), ("hogwild", t, "off"), ("copies", t, "on")]
            models = {name: common.new_model(kind, k, th) for name, th, _ in sides}
            for name, _, mode in sides:
                epoch(models[name], train, mode)
            wall: Dict[str, List[float]] = {name: [] for name, _, _ in sides}
            cpu: Dict[str, List[float]] = {name: [] for name, _, _ in sides}
            with common.ForeignLoad() as load:
                for r in range(rounds):
                    for name, _, mode in sides if r % 2 == 0 else sides[::-1]:
                        w, c = epoch(models[name], train, mode)
                        wall[name].append(w)
                        cpu[name].append(c)
            os.environ.pop("FMRECALL_HOT", None)
            ratio = {n: [a / b for a, b in zip(wall[n], wall["1t"])] for n in ("hogwild", "copies")}
            ll = [logloss_from_scores(valid.labels, models[n].decision_function(valid)) for n, _, _ in sides]
            med = statistics.median
            share = "–" if load.share is None else f"{load.share:.0%}"
            print(
                f"| {cfg} | {t} | {med(wall['1t']):.3f} "
                f"| {med(ratio['hogwild']):.2f} ({', '.join(f'{x:.2f}' for x in ratio['hogwild'])}) "
                f"| {med(ratio['copies']):.2f} ({', '.join(f'{x:.2f}' for x in ratio['copies'])}) "
                f"| {' / '.join(f'{med(cpu[n]):.2f}' for n, _, _ in sides)} "
                f"| {' / '.join(f'{x:.5f}' for x in ll)} | {share} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
