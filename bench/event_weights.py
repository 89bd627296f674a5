"""Fingerprints of the weights Interactions training gives, to show that a change of the events'
training loop leaves the arithmetic as it was (bit for bit on one thread).

Trains 20 configurations on tests/test_interactions.py's toy data (FM, FFM and both hybrids x
labelled, logistic with 1 and 3 negatives of 1 and 3 candidates, BPR with 2 negatives of 1 and 2
candidates; history and cold start on; 3 epochs, one thread) and prints one JSON line
{config: sha1 of the weights}. Run it with each build and compare:

    PYTHONPATH=/tmp/base python bench/event_weights.py > a.json
    PYTHONPATH=python python bench/event_weights.py > b.json && diff a.json b.json
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from typing import Dict

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

import test_interactions as ti  # noqa: E402

from fmrecall import Interactions  # noqa: E402

KINDS = ("fm", "ffm", "hybrid-item", "hybrid-query")
# (loss, negatives, candidates); negatives 0 = labelled events
RUNS = (("logistic", 0, 1), ("logistic", 1, 1), ("logistic", 3, 3), ("bpr", 2, 1), ("bpr", 2, 2))


def fingerprint(weights: Dict[str, object]) -> str:
    h = hashlib.sha1()
    for key in sorted(weights):
        x = weights[key]
        h.update(np.ascontiguousarray(x).tobytes() if isinstance(x, np.ndarray) else repr(x).encode())
    return h.hexdigest()[:16]


def main() -> None:
    out: Dict[str, str] = {}
    for kind in KINDS:
        for loss, negatives, candidates in RUNS:
            rng = np.random.default_rng(3)
            users, items, events, schema = ti._toy(rng, label=negatives == 0, history=True, n_events=600)
            common = dict(history="history", cold_start={"item_id": 0.3, "age": 0.3})
            if negatives:
                inter = Interactions(
                    users, items, events, schema, negatives=negatives, alpha=0.5, hard_negatives=candidates, **common
                )
            else:
                inter = Interactions(users, items, events, schema, label="y", **common)
            model = ti._make(kind, schema, loss=loss, epochs=3, seed=5, threads=1).fit(inter)
            out[f"{kind}-{loss}-{negatives}x{candidates}"] = fingerprint(model._core.get_weights())
    print(json.dumps(out, indent=0))


if __name__ == "__main__":
    main()
