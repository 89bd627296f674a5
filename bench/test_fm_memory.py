"""Memory of an FM with a hashed id field: the README tour's schema on MovieLens-100K u1.

`Hashed("item_id", "item", buckets=1 << 20)` gives the model 2^20 item features of which 1,682
occur. Each variant runs in a fresh child process (peak RSS = VmHWM of that process, which exec
resets, unlike ru_maxrss): Schema.fit, Interactions (negatives=8, alpha=0.5), FM(k=64,
learning_rate=0.1, reg_factors=2e-2, epochs=EPOCHS).fit, Recaller(model, schema).add_items(all
items), Recaller.save; reported: peak RSS, the saved Recaller's size on disk, the model's latent
vectors (rows of weights()["factors"]) and features. `Categorical("item_id")` is the peer.

Linear weights stay dense (n floats + n AdaGrad floats: 8 MiB at 2^20 features), as does the
feature → vector row map (4 MiB): what is per feature is a few bytes, what is per vector (2·kp
floats with AdaGrad state) is only for the features seen in training.

    PYTHONPATH=python python bench/test_fm_memory.py            # both variants, a table
    PYTHONPATH=python python -m pytest bench/test_fm_memory.py --benchmark-only -q -s -p no:cacheprovider

Not part of the test suite; numbers go to bench/results.md by hand ("FM memory").
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from typing import Any, Dict

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
EPOCHS = int(os.environ.get("FMRECALL_BENCH_FM_EPOCHS", 2))  # memory does not depend on epochs
VARIANTS = ("hashed", "categorical")


def _du(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def child(variant: str) -> Dict[str, Any]:
    """Runs in a fresh process: the tour on MovieLens u1 with `variant` item ids; JSON numbers."""
    sys.path.insert(0, os.path.join(ROOT, "python"))
    sys.path.insert(0, HERE)
    import common
    import numpy as np

    import fmrecall
    from fmrecall import FM, Categorical, Hashed, Interactions, MultiCategorical, Recaller, Schema
    from fmrecall.datasets import movielens100k

    data = os.environ.get("FMRECALL_DATA", os.path.join(ROOT, "..", "shared", "data"))
    ml = movielens100k(os.path.join(data, "ml-100k"), "u1")
    item_id = Hashed("item_id", "item", buckets=1 << 20) if variant == "hashed" else Categorical("item_id", "item")
    schema = Schema(
        [
            Categorical("user_id", "user"),
            Categorical("age", "user"),  # the tour's Numeric: MovieLens ages are ranges
            Categorical("hour", "context"),
            item_id,
            MultiCategorical("genres", "item"),
        ]
    )
    schema.fit([ml.users, ml.items, ml.train])
    inter = Interactions(ml.users, ml.items, ml.train, schema, negatives=8, alpha=0.5)
    model = FM(k=64, learning_rate=0.1, reg_factors=2e-2, epochs=EPOCHS, seed=0).fit(inter)
    rec = Recaller(model, schema).add_items(ml.items, "item_id")
    with tempfile.TemporaryDirectory() as tmp:
        rec.save(os.path.join(tmp, "recaller"))
        saved = _du(os.path.join(tmp, "recaller"))
        again = Recaller.load(os.path.join(tmp, "recaller"))
        q = ml.request_context(ml.test).head(50)
        same = bool(np.array_equal(again.search(q, 10).ids, rec.search(q, 10).ids))
    w = model.weights()
    return {
        "variant": variant,
        "n_features": int(model.n_features_),
        "vectors": int(w["factors"].shape[0]),
        "peak_rss_mb": common.proc_status("VmHWM"),
        "saved_mb": saved / 2**20,
        "reload_same": same,
        "fmrecall": fmrecall.__version__,
    }


def run(variant: str) -> Dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "python"))
    out = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--child", variant],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def table() -> str:
    rows = [run(v) for v in VARIANTS]
    lines = ["| item_id | features | vectors | peak RSS (MiB) | saved Recaller (MiB) |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        cells = [r["variant"], f"{r['n_features']:,}", f"{r['vectors']:,}", f"{r['peak_rss_mb']:,.0f}"]
        lines.append("| " + " | ".join(cells + [f"{r['saved_mb']:,.1f}"]) + " |")
    return "\n".join(lines)


def test_fm_memory_follows_seen_features(benchmark: Any) -> None:
    """The hashed variant's peak RSS and saved size stay within the dense per-feature arrays
    (linear + AdaGrad + row map: 12 B per feature) plus slack of the categorical peer."""
    hashed, categorical = benchmark.pedantic(lambda: (run("hashed"), run("categorical")), rounds=1, iterations=1)
    benchmark.extra_info.update(hashed=hashed, categorical=categorical)
    print("\n" + json.dumps([hashed, categorical], indent=1))
    assert hashed["reload_same"] and categorical["reload_same"]
    assert abs(hashed["vectors"] - categorical["vectors"]) <= 2  # Categorical keeps reserved values
    per_feature_mb = 12 * (hashed["n_features"] - categorical["n_features"]) / 2**20
    assert hashed["peak_rss_mb"] < categorical["peak_rss_mb"] + 3 * per_feature_mb + 100
    assert hashed["saved_mb"] < categorical["saved_mb"] + per_feature_mb + 1


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2])))
    else:
        print(table())
