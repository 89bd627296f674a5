"""Pretrained vectors as features, on MovieLens-100K: FM / FFM with user and item id fields vs with
collaborative vectors computed beforehand from the training interactions only (``Vector`` fields).

An id field costs FFM one vector per other field for every id; a ``Vector`` field of length d costs
it d features whatever the number of users or items. ``svd_vectors`` is the embedding used here: a
truncated SVD of the binary user × item matrix of the split's train events. ``run`` trains each
model with the three schemas below and prints Recall@10/50/100 (``python -m fmrecall.experiments
vectors``).

- "ids": the default schema (user_id … | hour, weekday | item_id, genres, year, popularity)
- "vectors": user_id and item_id replaced by the user's and the item's SVD vector
- "ids + vectors": both
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Dict, List, Sequence, Tuple, Union

import numpy as np

from ..datasets import MovieLens, movielens100k
from ..fields import Field, Vector
from ..metrics import recall_at_k
from ..progress import info
from ..recall import Recaller
from ..schema import Schema
from . import baselines as B
from .movielens import KS, Experiment, default_schema, make_model

SCHEMAS = ("ids", "vectors", "ids + vectors")


def svd_vectors(
    users: np.ndarray, items: np.ndarray, n_users: int, n_items: int, dim: int
) -> Tuple[np.ndarray, np.ndarray]:
    """Collaborative vectors from interactions: the rank-`dim` truncated SVD R ≈ U S Vᵀ of the binary
    (n_users, n_items) matrix R of the (user row, item row) pairs (int arrays, 0-based), split
    symmetrically, U S^½ and V S^½, so <user u, item i> ∝ the rank-`dim` approximation of R[u, i];
    then each side is multiplied by one constant that makes its mean squared coordinate 1 (the value
    scale of a one-hot feature, which the model's learning rate and per-row L2 suit: at the raw
    scale, coordinates ~0.1, the L2 applied at every row outweighs the data and Recall@50 drops
    from 0.476 to 0.255, FM, dim 16, u1). Returns float64 (n_users, dim), (n_items, dim); a user or
    item without interactions gets the zero vector. Dense numpy SVD: fine for MovieLens-100K's
    943 × 1,682 (under a second); use a sparse / randomized SVD for large catalogues."""
    if not 1 <= dim <= min(n_users, n_items):
        raise ValueError(f"svd_vectors: dim must be in [1, {min(n_users, n_items)}], got {dim!r}")
    R = B.interaction_matrix(users, items, n_users, n_items).astype(np.float64)
    U, s, Vt = np.linalg.svd(R, full_matrices=False)
    root = np.sqrt(s[:dim])
    u, v = U[:, :dim] * root, Vt[:dim].T * root
    u[R.sum(axis=1) == 0] = 0.0  # exactly: the SVD leaves rounding noise there
    v[R.sum(axis=0) == 0] = 0.0
    return u / np.sqrt(np.mean(u * u)), v / np.sqrt(np.mean(v * v))


def with_vectors(ml: MovieLens, dim: int) -> MovieLens:
    """`ml` with a "user_cf" column on users and an "item_cf" column on items: their SVD vectors
    from ml.train (the test events are never seen)."""
    n_users, n_items = int(ml.users.user_id.max()), int(ml.items.item_id.max())
    u, v = svd_vectors(ml.train.user_id.to_numpy() - 1, ml.train.item_id.to_numpy() - 1, n_users, n_items, dim)
    users = ml.users.assign(user_cf=list(u[ml.users.user_id.to_numpy() - 1]))
    items = ml.items.assign(item_cf=list(v[ml.items.item_id.to_numpy() - 1]))
    return dataclasses.replace(ml, users=users, items=items)


def schema_for(ml: MovieLens, which: str, dim: int) -> Schema:
    """One of SCHEMAS: the default fields with the ids, the vectors in their place, or both."""
    if which not in SCHEMAS:
        raise ValueError(f"schema must be one of {SCHEMAS}, got {which!r}")
    vec = {"user_id": Vector("user_cf", "user", dim), "item_id": Vector("item_cf", "item", dim)}
    fields: List[Field] = []
    for f in default_schema(ml).fields:
        if f.name in vec and which != "vectors":
            fields.append(f)
        if f.name in vec and which != "ids":
            fields.append(vec[f.name])
        elif f.name not in vec:
            fields.append(f)
    return Schema(fields)


def run(
    path: Union[str, "os.PathLike[str]"],
    splits: Sequence[str] = ("u1",),
    models: Sequence[str] = ("FM", "FFM"),
    dim: int = 16,
    threads: int = 1,
    seed: int = 0,
    verbose: bool = True,
) -> Dict[str, Any]:
    """Train each model with each schema on each split (``movielens.MODEL_PARAMS``); returns
    {"rows": {(split, model, schema): metrics}, "seconds"} and prints a markdown table."""
    t0 = time.perf_counter()
    rows: Dict[Tuple[str, str, str], Dict[str, float]] = {}
    for split in splits:
        ml = with_vectors(movielens100k(path, split), dim)
        for name in models:
            for which in SCHEMAS:
                schema = schema_for(ml, which, dim)
                exp = Experiment(ml, schema)
                t = time.perf_counter()
                model = make_model(name, schema, threads, seed).fit(exp.interactions())
                fit_s = time.perf_counter() - t
                rec = Recaller(model, schema)
                rec.add_items(ml.items, "item_id")
                res = rec.search(exp.queries, max(KS), exclude=exp.exclude)
                r: Dict[str, float] = {f"recall@{k}": recall_at_k(res.ids, exp.relevant, k) for k in KS}
                rows[(split, name, which)] = {**r, "dim": rec.dim, "fit_seconds": fit_s}
                if verbose:
                    info(f"{split} {name} {which}: {r} ({time.perf_counter() - t0:.0f} s)", True)
    out = {"dim": dim, "rows": rows, "seconds": time.perf_counter() - t0}
    return out


def format_table(out: Dict[str, Any]) -> str:
    lines = [
        f"| split | model | user / item fields (SVD dim {out['dim']}) | Recall@10 | Recall@50 | Recall@100 | "
        "split dim | fit s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (split, name, which), r in out["rows"].items():
        lines.append(
            f"| {split} | {name} | {which} | {r['recall@10']:.4f} | {r['recall@50']:.4f} | {r['recall@100']:.4f} | "
            f"{r['dim']} | {r['fit_seconds']:.0f} |"
        )
    lines.append(f"({out['seconds']:.0f} s)")
    return "\n".join(lines)
