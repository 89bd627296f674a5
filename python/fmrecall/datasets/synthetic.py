"""A seeded synthetic click log with user, context and item fields and planted preferences."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List

import numpy as np

from ..dataset import Dataset
from ..joins import join_rows
from ..sides import Sides


@dataclass
class SyntheticLog:
    """A generated interaction log with a planted preference model.

    impressions : Dataset of joined rows (user + context + item fields), label 1 = clicked
    users : Dataset of user rows (user fields), one per user id
    items : Dataset of item rows (item fields), one per item id
    sides : field sides; field_names : name per field index
    truth : callable(user_ids, context_rows) -> planted scores (n_queries, n_items)
    """

    impressions: Dataset
    users: Dataset
    items: Dataset
    sides: Sides
    field_names: List[str]
    planted: Dict[str, np.ndarray]

    def queries(self, user_ids: np.ndarray, hours: np.ndarray, devices: np.ndarray) -> Dataset:
        """Query rows (user fields + context fields) for the given users and contexts."""
        u = self.planted
        m = len(user_ids)
        fields = np.tile(np.array([0, 1, 2, 3, 4], np.int32), m)
        feats = (
            np.stack(
                [
                    u["user_feat"][user_ids, 0],
                    u["user_feat"][user_ids, 1],
                    u["user_feat"][user_ids, 2],
                    u["hour_base"] + hours,
                    u["device_base"] + devices,
                ],
                axis=1,
            )
            .ravel()
            .astype(np.int32)
        )
        return Dataset(
            np.arange(m + 1, dtype=np.int64) * 5,
            fields,
            feats,
            None,
            None,
            n_features=self.items.n_features,
            n_fields=self.items.n_fields,
        )

    def true_scores(self, user_ids: np.ndarray, hours: np.ndarray, devices: np.ndarray) -> np.ndarray:
        """Planted (noise-free) click logits, float64 (m, n_items)."""
        u = self.planted
        taste = u["taste"][user_ids]  # (m, n_cat)
        s = taste @ u["item_cat_onehot"].T  # category preference
        s = s + u["tag_taste"][user_ids] @ u["item_tags"].T  # tag preference
        s = s + u["hour_cat"][hours] @ u["item_cat_onehot"].T  # context: hour × category
        s = s + u["device_cat"][devices] @ u["item_cat_onehot"].T  # context: device × category
        return s + u["item_pop"][None, :] + u["bias"]


def synthetic(n_users: int = 2000, n_items: int = 1000, impressions_per_user: int = 40, seed: int = 0) -> SyntheticLog:
    """A seeded click log with user, context and item fields and planted preferences.

    Fields: 0 user_id, 1 age_bucket, 2 region (user); 3 hour_bucket, 4 device (context);
    5 item_id, 6 category, 7 tags (multi-valued, weights 1/sqrt(#tags)), 8 popularity bucket (item).
    Users like some categories and tags (shared by region and age, plus personal taste); the hour
    and device shift category preferences; popular items get clicked more. Impressions are random
    items in random contexts, clicked with probability σ(planted score).
    """
    rng = np.random.default_rng(seed)
    n_cat, n_tag, n_age, n_region, n_hour, n_dev, n_pop = 20, 60, 6, 12, 6, 3, 5
    sizes = [n_users, n_age, n_region, n_hour, n_dev, n_items, n_cat, n_tag, n_pop]
    base = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    names = ["user_id", "age_bucket", "region", "hour_bucket", "device", "item_id", "category", "tags", "popularity"]

    age = rng.integers(0, n_age, n_users)
    region = rng.integers(0, n_region, n_users)
    taste = (
        1.2 * rng.normal(size=(n_region, n_cat))[region]
        + 0.8 * rng.normal(size=(n_age, n_cat))[age]
        + 0.8 * rng.normal(size=(n_users, n_cat))
    )
    tag_taste = 0.8 * rng.normal(size=(n_users, n_tag))
    cat = rng.integers(0, n_cat, n_items)
    n_tags = rng.integers(1, 4, n_items)
    item_tags = np.zeros((n_items, n_tag))
    for i in range(n_items):
        tags = rng.choice(n_tag, n_tags[i], replace=False)
        item_tags[i, tags] = 1.0 / np.sqrt(n_tags[i])
    pop_raw = rng.normal(size=n_items) * 0.8
    pop_bucket = np.clip(((pop_raw - pop_raw.min()) / (np.ptp(pop_raw) + 1e-9) * n_pop).astype(int), 0, n_pop - 1)
    planted = {
        "taste": taste,
        "tag_taste": tag_taste,
        "item_cat_onehot": np.eye(n_cat)[cat],
        "item_tags": item_tags,
        "hour_cat": 0.8 * rng.normal(size=(n_hour, n_cat)),
        "device_cat": 0.8 * rng.normal(size=(n_dev, n_cat)),
        "item_pop": pop_raw,
        "bias": np.float64(-3.0),
        "user_feat": np.stack([base[0] + np.arange(n_users), base[1] + age, base[2] + region], axis=1),
        "hour_base": np.int64(base[3]),
        "device_base": np.int64(base[4]),
    }

    # item rows: item_id, category, tags..., popularity
    i_fields: List[int] = []
    i_feats: List[int] = []
    i_vals: List[float] = []
    i_ptr = [0]
    for i in range(n_items):
        tags = np.flatnonzero(item_tags[i])
        i_fields += [5, 6] + [7] * tags.size + [8]
        i_feats += [base[5] + i, base[6] + cat[i]] + list(base[7] + tags) + [base[8] + pop_bucket[i]]
        i_vals += [1.0, 1.0] + [float(item_tags[i, t]) for t in tags] + [1.0]
        i_ptr.append(len(i_fields))
    n_features, n_fields = int(base[-1]), len(sizes)
    items = Dataset(
        i_ptr, i_fields, i_feats, np.asarray(i_vals, np.float32), None, n_features=n_features, n_fields=n_fields
    )
    user_rows = np.arange(n_users + 1, dtype=np.int64) * 3
    users = Dataset(
        user_rows,
        np.tile(np.array([0, 1, 2], np.int32), n_users),
        planted["user_feat"].ravel().astype(np.int32),
        None,
        None,
        n_features=n_features,
        n_fields=n_fields,
    )

    # impressions: random (user, context, item), label ~ Bernoulli(σ(planted score))
    m = n_users * impressions_per_user
    u_ids = np.repeat(np.arange(n_users), impressions_per_user)
    hours = rng.integers(0, n_hour, m)
    devs = rng.integers(0, n_dev, m)
    it = rng.integers(0, n_items, m)
    log = SyntheticLog(items, users, items, Sides(user=[0, 1, 2], context=[3, 4], item=[5, 6, 7, 8]), names, planted)
    logits = np.empty(m)
    for s in range(0, m, 8192):  # planted score of each impression, in chunks
        sl = slice(s, s + 8192)
        t = log.true_scores(u_ids[sl], hours[sl], devs[sl])
        logits[sl] = t[np.arange(t.shape[0]), it[sl]]
    labels = (rng.random(m) < 1.0 / (1.0 + np.exp(-logits))).astype(np.float32)
    q = log.queries(u_ids, hours, devs)
    log.impressions = join_rows([(q, np.arange(m)), (items, it)], labels, n_features=n_features, n_fields=n_fields)
    return log
