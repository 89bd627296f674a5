"""The MovieLens-100K end-to-end: one unified recall model against classic recall channels.

``run(path)`` trains FM / HybridFM / FFM on the split's train events (implicit feedback, sampled
negatives), indexes all 1,682 items, recommends for every test user (excluding the user's train
items) and reports Recall@10/50/100 and Precision@10 next to popularity, item-based CF and a
multi-channel merge with fixed quotas; then a cold-start run (10% of items never seen in training,
indexed from their features only) and the single-stage vs two-stage check. Used by
``fmrecall demo --movielens PATH`` and ``examples/movielens.py``.
"""

from __future__ import annotations

import os
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple, Type, Union

import numpy as np

from ..datasets import GENRES, MovieLens, movielens100k
from ..interactions import Interactions
from ..metrics import precision_at_k, recall_at_k
from ..models import FFM, FM, HybridFM, _FactorizationModel
from ..progress import info
from ..recall import Recaller, SearchResult
from ..schema import Schema
from . import baselines as B

# FM: the estimator defaults (issue 8). HybridFM / FFM: chosen by a sweep on the u1 split before the
# defaults had a value scale or averaged weights (hence normalize="none", average=0; see README); the
# same settings on every split.
_SWEPT: Dict[str, Any] = dict(
    normalize="none", learning_rate=0.1, reg_factors=2e-2, reg_linear=1e-2, epochs=16, average=0.0
)
MODEL_PARAMS: Dict[str, Dict[str, Any]] = {
    "FM": dict(k=64),
    "HybridFM": dict(k=32, field_aware="query", **_SWEPT),
    "FFM": dict(k=16, **_SWEPT),
}
SAMPLING: Dict[str, Any] = dict(negatives=8, alpha=0.5)
COLD_START = {"item_id": 0.3, "popularity": 0.3}  # cold-start run: train the reserved "unseen" values
KS = (10, 50, 100)


def default_schema(ml: MovieLens, history: bool = False) -> Schema:
    """ml.schema() without the user-history field unless asked (it did not help here, at 8x the cost)."""
    fields = [f for f in ml.schema().fields if history or f.name != "history"]
    return Schema(fields)


def _metrics(ids: np.ndarray, relevant: Sequence[set]) -> Dict[str, float]:
    out = {f"recall@{k}": recall_at_k(ids, relevant, k) for k in KS}
    out["precision@10"] = precision_at_k(ids, relevant, 10)
    return out


def make_model(name: str, schema: Schema, threads: int = 0, seed: int = 0, **override: Any) -> _FactorizationModel:
    params = {**MODEL_PARAMS[name], **override}
    cls: Type[_FactorizationModel] = {"FM": FM, "HybridFM": HybridFM, "FFM": FFM}[name]
    if cls is HybridFM:
        params["sides"] = schema.sides
    return cls(threads=threads, seed=seed, **params)


class Experiment:
    """One split: frames, schema, queries (each test user at the time of their first test event)."""

    def __init__(
        self,
        ml: MovieLens,
        schema: Schema,
        train_events: Any = None,
        items: Any = None,
        cold_start: Optional[Dict[str, float]] = None,
    ) -> None:
        self.ml = ml
        self.cold_start = cold_start or {}
        self.schema = schema
        self.train_events = ml.train if train_events is None else train_events
        self.items = ml.items if items is None else items
        self.queries = ml.request_context(ml.test)
        seen = self.train_events.groupby("user_id").item_id.apply(np.array)
        self.exclude = [seen.get(u, np.zeros(0, np.int64)) for u in self.queries.user_id]
        rel = ml.test.groupby("user_id").item_id.apply(set)
        self.relevant = [rel[u] for u in self.queries.user_id]

    def interactions(self) -> Interactions:
        if not self.schema.fitted:
            self.schema.fit([self.ml.users, self.items, self.train_events])
        return Interactions(
            self.ml.users, self.items, self.train_events, self.schema, **SAMPLING, cold_start=self.cold_start
        )

    def recommend(
        self, model: _FactorizationModel, k: int = 100, index: str = "exact"
    ) -> Tuple[Recaller, SearchResult]:
        rec = Recaller(model, self.schema, index)
        rec.add_items(self.ml.items, "item_id")
        return rec, rec.search(self.queries, k, exclude=self.exclude)


CHANNELS = ("item-CF", "genre", "popularity")  # the multi-channel merge's order
QUOTAS = (0.6, 0.2, 0.2)  # its shares of the merged list


def channel_lists(ml: MovieLens, exp: Experiment, k: int) -> List[np.ndarray]:
    """The classic recall channels' top k for each query of `exp`, in CHANNELS order: item-based CF
    (cosine), genre preference, popularity; each int64 (n_queries, k) item ids, best first, never
    an item of the user's train events."""
    n_users, n_items = int(ml.users.user_id.max()), int(ml.items.item_id.max())
    ev = exp.train_events
    R = B.interaction_matrix(ev.user_id.to_numpy() - 1, ev.item_id.to_numpy() - 1, n_users, n_items)
    users = exp.queries.user_id.to_numpy() - 1
    G = np.zeros((n_items, len(GENRES)), np.float32)
    for i, gs in zip(ml.items.item_id.to_numpy() - 1, ml.items.genres):
        G[i, [GENRES.index(g) for g in gs]] = 1.0
    return [B.item_cf(R, k)[users] + 1, B.genre_preference(R, G, k)[users] + 1, B.popularity(R, k)[users] + 1]


def baseline_results(ml: MovieLens, exp: Experiment) -> Dict[str, Dict[str, float]]:
    """Popularity, item-based CF (cosine) and the 60/20/20 multi-channel merge (item-CF, genre
    preference, popularity), on the same users, exclusions and K."""
    cf, gen, pop = channel_lists(ml, exp, max(KS))
    out = {"popularity": _metrics(pop, exp.relevant), "item-CF (cosine)": _metrics(cf, exp.relevant)}
    # a multi-channel system fills each list length with its quotas, so merge per K
    mc = {}
    for kk in KS:
        merged = B.merge_channels([cf, gen, pop], QUOTAS, kk)
        mc[f"recall@{kk}"] = recall_at_k(merged, exp.relevant, kk)
        if kk == 10:
            mc["precision@10"] = precision_at_k(merged, exp.relevant, 10)
    out["multi-channel 60/20/20"] = mc
    return out


def two_stage_check(
    model: _FactorizationModel, rec: Recaller, exp: Experiment, result: SearchResult, n_queries: int = 50
) -> Dict[str, float]:
    """Re-rank the retrieved candidates with the full model on the joined (query + item) rows: the
    order and the scores must be those of the retrieval (exactness of the split)."""
    import pandas as pd

    q = exp.queries.iloc[:n_queries]
    ids = result.ids[:n_queries]
    rows = q.loc[q.index.repeat(ids.shape[1])].reset_index(drop=True)
    items = exp.ml.items.set_index("item_id").loc[ids.ravel()].reset_index()
    joined = pd.concat([rows, items], axis=1)
    full = model.decision_function(exp.schema.transform(joined)).reshape(ids.shape).astype(np.float64)
    got = result.scores[:n_queries].astype(np.float64)
    # a pair of candidates is an inversion when the full model orders it against the retrieval
    # scores by more than float32 rounding (exact ties and near-ties aside)
    tol = 1e-5 * np.maximum(1.0, np.abs(got).max())
    d_ret = got[:, :, None] - got[:, None, :]
    d_full = full[:, :, None] - full[:, None, :]
    inversions = int(np.sum((d_ret > tol) & (d_full < -tol)))
    return {
        "max_abs_score_diff": float(np.max(np.abs(full - got))),
        "inversions": inversions,
        "pairs": int(ids.shape[0] * ids.shape[1] * (ids.shape[1] - 1) // 2),
    }


def cold_start(
    ml: MovieLens, model_name: str = "FM", fraction: float = 0.1, seed: int = 0, threads: int = 0, k: int = 100
) -> Dict[str, float]:
    """Hold `fraction` of the items out of training entirely (their events dropped; popularity unknown),
    index every item from its features, and measure how often the held-out items a test user
    interacted with are recalled in that user's top k over all items."""
    rng = np.random.default_rng(seed)
    all_items = ml.items.item_id.to_numpy()
    cold = np.sort(rng.choice(all_items, int(round(fraction * all_items.size)), replace=False))
    train_events = ml.train[~ml.train.item_id.isin(cold)]
    items = ml.items.copy()
    items.loc[items.item_id.isin(cold), "popularity"] = "none"  # no events: popularity unknown
    warm = items[~items.item_id.isin(cold)]
    schema = default_schema(ml)
    schema.fit([ml.users, warm, train_events])  # held-out items are unknown to the schema and model
    exp = Experiment(ml, schema, train_events, warm, cold_start=COLD_START)
    model = make_model(model_name, schema, threads, seed).fit(exp.interactions())
    rec = Recaller(model, schema)
    rec.add_items(items, "item_id")  # every item, the held-out ones from their features only
    res = rec.search(exp.queries, k, exclude=exp.exclude)
    cold_set = set(cold.tolist())
    relevant = [r & cold_set for r in exp.relevant]
    users = sum(1 for r in relevant if r)
    out: Dict[str, float] = {"cold_items": int(cold.size), "test_users_with_cold_items": users}
    for kk in (50, 100):
        out[f"cold_recall@{kk}"] = recall_at_k(res.ids, relevant, kk)
        # chance: a random list of kk items out of all unseen ones
        out[f"random_recall@{kk}"] = kk / (all_items.size - np.mean([e.size for e in exp.exclude]))
    in_top = np.isin(res.ids[:, :k], cold)
    out[f"share_of_cold_items_in_top{k}"] = float(in_top.mean())
    # ranking among the new items only (restrict): is the content-only score personalised?
    within = rec.search(exp.queries, 10, exclude=exp.exclude, restrict=cold)
    out["cold_recall@10_among_cold"] = recall_at_k(within.ids, relevant, 10)
    out["random_recall@10_among_cold"] = 10 / cold.size
    return out


def run(
    path: Union[str, "os.PathLike[str]"],
    split: str = "u1",
    models: Sequence[str] = ("FM", "HybridFM", "FFM"),
    threads: int = 0,
    seed: int = 0,
    cold: bool = True,
    verbose: bool = False,
) -> Dict[str, Any]:
    """The full comparison on one split: all numbers (``format_table`` renders them). `verbose`:
    stages, epochs and progress bars on stderr (see fmrecall.progress)."""
    t0 = time.perf_counter()
    ml = movielens100k(path, split)
    schema = default_schema(ml)
    exp = Experiment(ml, schema)
    train = exp.interactions()
    info(f"MovieLens-100K {split}: {len(train):,} train events, {len(exp.queries)} test users", verbose)
    from . import two_stage

    channels = channel_lists(ml, exp, max(two_stage.NS))
    out: Dict[str, Any] = {"split": split, "rows": {}, "fit_seconds": {}, "pipeline": {}}
    for name, res in baseline_results(ml, exp).items():
        out["rows"][name] = res
    for name in models:
        t = time.perf_counter()
        info(f"training {name} {MODEL_PARAMS[name]}", verbose)
        model = make_model(name, schema, threads, seed, verbose=verbose).fit(train)
        out["fit_seconds"][name] = time.perf_counter() - t
        rec, result = exp.recommend(model)
        out["rows"][f"{name} (one model)"] = {**_metrics(result.ids, exp.relevant), "dim": rec.dim}
        if name == models[0]:
            out["two_stage"] = two_stage_check(model, rec, exp, result)
        out["pipeline"][name] = two_stage.compare(rec, exp, channels)
    if cold:
        info(f"cold-start run ({models[0]}, {COLD_START})", verbose)
        out["cold_start"] = cold_start(ml, models[0], threads=threads, seed=seed)
    out["seconds"] = time.perf_counter() - t0
    return out


def format_table(out: Dict[str, Any]) -> str:
    lines = [
        f"MovieLens-100K {out['split']}: {len(out['rows'])} recall systems, test users excluded from their train items",
        "| system | Recall@10 | Recall@50 | Recall@100 | Precision@10 |",
        "|---|---|---|---|---|",
    ]
    for name, r in out["rows"].items():
        dim = f" (dim {r['dim']})" if "dim" in r else ""
        lines.append(
            f"| {name}{dim} | {r['recall@10']:.4f} | {r['recall@50']:.4f} | {r['recall@100']:.4f} | "
            f"{r['precision@10']:.4f} |"
        )
    if "two_stage" in out:
        ts = out["two_stage"]
        lines.append(
            f"two-stage check: re-ranking the retrieved candidates with the full model on the joined "
            f"rows: {ts['inversions']} inversions in {ts['pairs']:,} pairs, max |score diff| "
            f"{ts['max_abs_score_diff']:.1e}"
        )
    if out.get("pipeline"):
        cols = [key for key in next(iter(out["pipeline"].values())) if not key.startswith("candidates")]
        lines += [
            "one stage vs two stages (60/20/20 merge → N candidates → the same model → top 50), Recall@50:",
            "| model | " + " | ".join(cols) + " |",
            "|---|" + "---|" * len(cols),
        ]
        for name, r in out["pipeline"].items():
            lines.append(f"| {name} | " + " | ".join(f"{r[c]:.4f}" for c in cols) + " |")
    if "cold_start" in out:
        c = out["cold_start"]
        lines.append(
            f"cold start: {c['cold_items']} items never trained on, {c['test_users_with_cold_items']} test "
            f"users with such items; recall of those items among all items @50 {c['cold_recall@50']:.4f} "
            f"(random {c['random_recall@50']:.4f}), @100 {c['cold_recall@100']:.4f} "
            f"(random {c['random_recall@100']:.4f}); among the new items only @10 "
            f"{c['cold_recall@10_among_cold']:.4f} (random {c['random_recall@10_among_cold']:.4f})"
        )
    lines.append(f"({out['seconds']:.0f} s)")
    return "\n".join(lines)
