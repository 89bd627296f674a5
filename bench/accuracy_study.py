"""The normalisation / defaults study of issue 8 (README "Accuracy at default settings"): one
configuration per line, on the Criteo-shaped synthetic rows (bench/synth.py), frappe or MovieLens u1.

    PYTHONPATH=python python bench/accuracy_study.py criteo '{"normalize": "none"}' '{}' ...
    PYTHONPATH=python python bench/accuracy_study.py frappe-FFM '{}'
    PYTHONPATH=python python bench/accuracy_study.py movielens-FM '{"seed": 1}' '{"average": 0}'
    PYTHONPATH=python python bench/accuracy_study.py movielens-FM '{"split": "u3"}'

Each argument is a JSON object of estimator parameters on top of the defaults (threads=1); for
MovieLens, "split" picks the official split (u1 .. u5, default u1). Prints one
line per configuration: the metric, the best epoch, the value scale and reg_factors used, the seconds.
Data: ``FMRECALL_DATA`` (default ../shared/data); rows for criteo: ``FMRECALL_BENCH_ROWS`` (300,000).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Dict, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
DATA = os.environ.get("FMRECALL_DATA", os.path.join(HERE, "..", "..", "shared", "data"))
_FRAPPE_BOUNDS = [0, 957, 5039, 5046, 5053, 5055, 5058, 5060, 5069, 5149, 5382]  # ../shared/data/README.md
FRAPPE_FIELDS = list(zip(_FRAPPE_BOUNDS[:-1], _FRAPPE_BOUNDS[1:]))


def frappe_parts(seed: int = 0) -> Tuple[Any, Any, Any]:
    """(train, early-stopping, test): the seeded 80/20 of frappe.validation is (train, rest); rest is
    halved (seeded) into the early-stopping rows and the test rows, held out of both."""
    import fmrecall

    ds = fmrecall.Dataset.from_libsvm(os.path.join(DATA, "frappe", "frappe.validation.libfm"), FRAPPE_FIELDS)
    train, rest = ds.holdout(0.8, seed=seed)
    stop, test = rest.holdout(0.5, seed=seed + 1)
    return train, stop, test


def criteo_parts() -> Tuple[Any, Any]:
    import synth

    n = int(os.environ.get("FMRECALL_BENCH_ROWS", "300000"))
    path, meta = synth.ensure(n, verbose=False)
    return synth.split_views(synth.load(path, meta))


def run(kind: str, params: Dict[str, Any]) -> Dict[str, Any]:
    import fmrecall
    from fmrecall.metrics import auc, logloss_from_scores

    params = {"threads": 1, **params}
    t0 = time.perf_counter()
    if kind.startswith("movielens"):
        from fmrecall.datasets import movielens100k
        from fmrecall.experiments import movielens as M

        name = kind.split("-")[1]
        ml = movielens100k(os.path.join(DATA, "ml-100k"), params.pop("split", "u1"))
        schema = M.default_schema(ml)
        exp = M.Experiment(ml, schema)
        k = params.pop("k", {"FM": 64, "HybridFM": 32, "FFM": 16}[name])
        cls = {"FM": fmrecall.FM, "FFM": fmrecall.FFM, "HybridFM": fmrecall.HybridFM}[name]
        if name == "HybridFM":
            params.setdefault("sides", schema.sides)
            params.setdefault("field_aware", "query")
        model = cls(k=k, **params).fit(exp.interactions())
        _, res = exp.recommend(model, 100)
        out = {"recall@50": float(fmrecall.metrics.recall_at_k(res.ids, exp.relevant, 50))}
    else:
        name = kind.split("-")[1] if "-" in kind else "FFM"
        cls = {"FM": fmrecall.FM, "FFM": fmrecall.FFM}[name]
        if kind.startswith("frappe"):
            train, stop, test = frappe_parts()
            model = cls(k=params.pop("k", 8), **params).fit(train, valid=stop)
        else:
            train, test = criteo_parts()
            model = cls(k=params.pop("k", 4), **params).fit(train, valid=test)
        s = model.decision_function(test)
        out = {"logloss": logloss_from_scores(test.labels, s), "auc": auc(test.labels, s)}
    out.update(
        best_epoch=model.best_epoch_,
        epochs=len(model.history_),
        scale=round(model.scale_, 5),
        reg_factors=float(f"{model.reg_factors_:.3g}"),
        seconds=round(time.perf_counter() - t0, 1),
    )
    return out


if __name__ == "__main__":
    kind = sys.argv[1]
    for arg in sys.argv[2:] or ["{}"]:
        res = run(kind, json.loads(arg))
        print(
            kind, arg, json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in res.items()}), flush=True
        )
