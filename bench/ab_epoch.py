"""A/B of two builds of the extension: 1-thread CPU seconds per training epoch (issue 9, item 1).

Each side is a directory that holds the ``fmrecall`` package with its built ``_core*.so`` (e.g. a
copy of ``python/`` made before a change, and ``python/`` itself). The sides run in alternating
child processes (A B, then B A, ...), each child training FFM k=4, FFM k=8 and FM k=16 on the same
Criteo-shaped rows (bench/synth.py): one untimed epoch (allocation, first touch), then EPOCHS timed
``partial_fit`` epochs; CPU = user + system of the child (os.times). Per side and model: the
median over rounds of each child's fastest epoch, and the validation logloss after all epochs (the
same seed on both sides, so it shows whether the change altered the arithmetic); then the same for
scoring the train rows once trained (``decision_function``, the faster of two calls).

    cp -r python /tmp/base && <change, ninja -C build/dev> &&
    PYTHONPATH=python python bench/ab_epoch.py /tmp/base python      # AB_ROUNDS=4 AB_EPOCHS=2

AB_MODELS picks the models (default ffm4,ffm8,fm16); AB_FOLD=1 trains on epoch_breakdown.py's
folded rows (every field's ids folded onto one: the compute part of the epoch alone). A model named
``ev-<model>`` (labelled events) or ``ev<n>-<model>`` (n sampled negatives per event) trains on an
Interactions of synth_events.py's logs instead (AB_EVENTS events, default 2,000,000), e.g.
``AB_MODELS=ev-ffm4,ev1-ffm4``.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from typing import Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import common  # noqa: E402

CONFIGS = os.environ.get("AB_MODELS", "ffm4,ffm8,fm16").split(",")


def child(epochs: int) -> None:
    """Train every config; print one JSON line {config: {"cpu": [...], "logloss": x}}."""
    import numpy as np
    import synth

    from fmrecall.metrics import logloss_from_scores

    out: Dict[str, Dict[str, object]] = {}
    if any(not c.startswith("ev") for c in CONFIGS):
        rows = int(os.environ.get("FMRECALL_BENCH_ROWS", "300000"))
        path, meta = synth.ensure(rows, verbose=False)
        csr_train, csr_valid = synth.split_views(synth.load(path, meta))
        fold = int(os.environ.get("AB_FOLD", "0"))
        if fold:  # every field's ids folded onto `fold` values: the model stays in cache (compute only)
            from epoch_breakdown import folded

            csr_train, csr_valid = folded(csr_train, fold), folded(csr_valid, fold)
    if any(c.startswith("ev") for c in CONFIGS):
        import synth_events

        from fmrecall import Interactions

        users, items, ev_train, ev_valid, schema = synth_events.events(int(os.environ.get("AB_EVENTS", "2000000")))
    for cfg in CONFIGS:
        if cfg.startswith("ev"):  # ev-ffm4: labelled events; ev1-ffm4: one sampled negative per event
            head, model = cfg.split("-")
            neg = int(head[2:] or 0)
            lab = None if neg else "click"
            train = Interactions(users, items, ev_train, schema, label=lab, negatives=neg)
            valid = train.with_events(ev_valid, label="click")
        else:
            model, train, valid = cfg, csr_train, csr_valid
        kind = model.rstrip("0123456789")
        k = int(model[len(kind) :])
        m = common.new_model(kind, k, 1)
        m.partial_fit(train)
        cpu: List[float] = []
        for _ in range(epochs):
            c0 = os.times()
            m.partial_fit(train)
            c1 = os.times()
            cpu.append(c1.user + c1.system - c0.user - c0.system)
        score: List[float] = []  # scoring the train rows (decision_function), also 1 thread
        for _ in range(2):
            c0 = os.times()
            m.decision_function(train)
            c1 = os.times()
            score.append(c1.user + c1.system - c0.user - c0.system)
        out[cfg] = {
            "cpu": cpu,
            "score": score,
            "logloss": logloss_from_scores(np.asarray(valid.labels), m.decision_function(valid)),
        }
    print(json.dumps(out), flush=True)


def main() -> None:
    if sys.argv[1] == "--child":
        child(int(sys.argv[2]))
        return
    sides = {"A": sys.argv[1], "B": sys.argv[2]}
    rounds = int(os.environ.get("AB_ROUNDS", "4"))
    epochs = int(os.environ.get("AB_EPOCHS", "2"))
    best: Dict[str, Dict[str, List[float]]] = {s: {c: [] for c in CONFIGS} for s in sides}
    scoring: Dict[str, Dict[str, List[float]]] = {s: {c: [] for c in CONFIGS} for s in sides}
    loss: Dict[str, Dict[str, float]] = {s: {} for s in sides}
    t0 = time.time()
    with common.ForeignLoad() as load:
        for r in range(rounds):
            for s in list(sides)[:: 1 if r % 2 == 0 else -1]:
                env = dict(os.environ, PYTHONPATH=os.path.abspath(sides[s]))
                p = subprocess.run(
                    [sys.executable, __file__, "--child", str(epochs)], env=env, capture_output=True, text=True
                )
                if p.returncode:
                    sys.exit(p.stderr)
                res = json.loads(p.stdout.strip().splitlines()[-1])
                for c in CONFIGS:
                    best[s][c].append(min(res[c]["cpu"]))
                    scoring[s][c].append(min(res[c]["score"]))
                    loss[s][c] = res[c]["logloss"]
            print(f"round {r + 1}/{rounds} done ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
    other = "?" if load.share is None else f"{load.share:.0%}"
    print(f"A = {sides['A']}, B = {sides['B']}; {rounds} rounds x {epochs} epochs; other load {other}")
    print("| model | A CPU s/epoch | B CPU s/epoch | B / A | A valid logloss | B valid logloss |")
    print("|---|---|---|---|---|---|")
    for c in CONFIGS:
        a, b = statistics.median(best["A"][c]), statistics.median(best["B"][c])
        print(
            f"| {c} | {a:.3f} ({', '.join(f'{v:.2f}' for v in best['A'][c])}) "
            f"| {b:.3f} ({', '.join(f'{v:.2f}' for v in best['B'][c])}) | {b / a:.3f} "
            f"| {loss['A'][c]:.5f} | {loss['B'][c]:.5f} |"
        )
    print("\nScoring the train rows (decision_function, 1 thread), CPU s: median over rounds of the faster of two")
    print("| model | A | B | B / A |")
    print("|---|---|---|---|")
    for c in CONFIGS:
        a, b = statistics.median(scoring["A"][c]), statistics.median(scoring["B"][c])
        print(f"| {c} | {a:.3f} | {b:.3f} | {b / a:.3f} |")


if __name__ == "__main__":
    main()
