"""The two-stage pipeline a one-stage model replaces, on MovieLens-100K.

Stage one, the multi-channel merge: item-based CF, genre preference and popularity fill 60% / 20% /
20% of N candidate slots per user (``baselines.merge_channels``). Stage two: the same trained model
ranks only those candidates (``Recaller.search(..., restrict=candidates)``, an exact scan) and the
top k = 50 are kept. One stage: the model ranks every unseen item. ``run`` compares Recall@50 of
both for each model on each split; ``python -m fmrecall.experiments two-stage`` prints the table.
"""

from __future__ import annotations

import os
import time
from typing import Any, Dict, List, Sequence, Union

import numpy as np

from ..datasets import movielens100k
from ..metrics import recall_at_k
from ..progress import info
from ..recall import Recaller, SearchResult
from . import baselines as B
from .movielens import QUOTAS, Experiment, channel_lists, default_schema, make_model

NS = (100, 200, 400)  # candidates per user (400: a quarter of the catalogue)
K = 50


def candidates(channels: Sequence[np.ndarray], n: int) -> np.ndarray:
    """Stage one: int64 (n_queries, n) item ids from the channels merged with QUOTAS (-1: a slot no
    channel could fill). The channels must list at least n items each."""
    if any(c.shape[1] < n for c in channels):
        raise ValueError(f"candidates: every channel needs at least n={n} items per query")
    return B.merge_channels(channels, QUOTAS, n)


def rank(rec: Recaller, queries: Any, cands: np.ndarray, k: int = K) -> SearchResult:
    """Stage two: the model's top k among each query's candidates (exact scores b_q + <q, p>)."""
    return rec.search(queries, k, restrict=[c[c >= 0] for c in cands])


def compare(
    rec: Recaller, exp: Experiment, channels: Sequence[np.ndarray], ns: Sequence[int] = NS, k: int = K
) -> Dict[str, float]:
    """Recall@k of one stage (every unseen item ranked) and of two stages with N candidates for
    each N in `ns`, plus the candidates' own recall (Recall@N of the merge: the ceiling of stage two)."""
    one = rec.search(exp.queries, k, exclude=exp.exclude)
    out = {"one stage": recall_at_k(one.ids, exp.relevant, k)}
    for n in ns:
        c = candidates(channels, n)
        out[f"two-stage N={n}"] = recall_at_k(rank(rec, exp.queries, c, k).ids, exp.relevant, k)
        out[f"candidates N={n}"] = recall_at_k(c, exp.relevant, n)
    return out


def run(
    path: Union[str, "os.PathLike[str]"],
    splits: Sequence[str] = ("u1", "u2", "u3", "u4", "u5"),
    models: Sequence[str] = ("FM", "HybridFM", "FFM"),
    threads: int = 1,
    seed: int = 0,
    ns: Sequence[int] = NS,
    verbose: bool = True,
) -> Dict[str, Any]:
    """Train each model on each split (``movielens.MODEL_PARAMS``), index all items, and compare
    one stage with two stages. Returns {"splits", "recall": {split: {row: Recall}}, "seconds"}."""
    t0 = time.perf_counter()
    recall: Dict[str, Dict[str, float]] = {}
    for split in splits:
        ml = movielens100k(path, split)
        schema = default_schema(ml)
        exp = Experiment(ml, schema)
        train = exp.interactions()
        channels = channel_lists(ml, exp, max(ns))
        row = {f"merge alone (Recall@{K})": recall_at_k(candidates(channels, K), exp.relevant, K)}
        row.update(
            {f"merge: candidates N={n} (Recall@N)": recall_at_k(candidates(channels, n), exp.relevant, n) for n in ns}
        )
        for name in models:
            model = make_model(name, schema, threads, seed).fit(train)
            rec = Recaller(model, schema)
            rec.add_items(ml.items, "item_id")
            res = compare(rec, exp, channels, ns)
            row.update({f"{name} {key}": v for key, v in res.items() if not key.startswith("candidates")})
        recall[split] = row
        if verbose:
            info(f"{split} done ({time.perf_counter() - t0:.0f} s)", True)
    out = {"splits": list(splits), "recall": recall, "seconds": time.perf_counter() - t0}
    return out


def format_table(out: Dict[str, Any]) -> str:
    """Markdown rows: one per system, Recall@50 per split and the mean."""
    splits: List[str] = out["splits"]
    rows = list(out["recall"][splits[0]])
    lines = [
        f"| Recall@{K} | " + " | ".join(splits) + " | mean |",
        "|---|" + "---|" * (len(splits) + 1),
    ]
    for r in rows:
        vals = [out["recall"][s][r] for s in splits]
        lines.append(f"| {r} | " + " | ".join(f"{v:.4f}" for v in vals) + f" | {np.mean(vals):.4f} |")
    lines.append(f"({out['seconds']:.0f} s)")
    return "\n".join(lines)
