"""Seeded interaction logs for the Interactions trainer (user, context and item rows joined per
event in C++): many users and items, so an event's user and item rows and their parameter blocks
sit at random places in memory, as in a production log.

``events(n_events)``: 500,000 users (user_id, age of 10, region of 50, device of 5), 100,000 items
(item_id, cat of 200, brand of 5,000), an hour-of-day context field; users uniform, items from a
power law (P(rank r) ∝ r^-1.3, ranks spread by a random permutation); click ~ Bernoulli(σ(t)) with
a planted signal t = (age mod 3) − (cat mod 3) + 0.3 sin(hour). Returns (users, items, train
events, valid events, schema); the last 10% of events are the validation events. Plain numpy and
pandas (never fmrecall) make the data; the schema is fitted on it.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np

SEED = 20261130
N_USERS, N_ITEMS = 500_000, 100_000


def events(n_events: int = 2_000_000, seed: int = SEED) -> Tuple[object, object, object, object, object]:
    import pandas as pd

    from fmrecall import Categorical, Schema

    rng = np.random.default_rng(seed)
    users = pd.DataFrame(
        {
            "user_id": np.arange(N_USERS),
            "age": rng.integers(0, 10, N_USERS),
            "region": rng.integers(0, 50, N_USERS),
            "device": rng.integers(0, 5, N_USERS),
        }
    )
    items = pd.DataFrame(
        {"item_id": np.arange(N_ITEMS), "cat": rng.integers(0, 200, N_ITEMS), "brand": rng.integers(0, 5000, N_ITEMS)}
    )
    eu = rng.integers(0, N_USERS, n_events)
    ei = rng.permutation(N_ITEMS)[np.minimum(rng.zipf(1.3, n_events) - 1, N_ITEMS - 1)]
    hour = rng.integers(0, 24, n_events)
    t = (users.age.to_numpy()[eu] % 3) - (items.cat.to_numpy()[ei] % 3) + 0.3 * np.sin(hour)
    click = (rng.random(n_events) < 1 / (1 + np.exp(-t))).astype(np.float32)
    ev = pd.DataFrame({"user_id": eu, "item_id": ei, "hour": hour, "click": click})
    cut = n_events - n_events // 10
    fields = [
        Categorical("user_id", "user"),
        Categorical("age", "user"),
        Categorical("region", "user"),
        Categorical("device", "user"),
        Categorical("item_id", "item"),
        Categorical("cat", "item"),
        Categorical("brand", "item"),
        Categorical("hour", "context"),
    ]
    train, valid = ev.iloc[:cut], ev.iloc[cut:]
    schema = Schema(fields).fit([users, items, train])
    return users, items, train, valid, schema
