"""MovieLens-100K as pandas frames (users, items, train / test events) for fmrecall.Interactions."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Union

import numpy as np

from ..schema import Schema

GENRES = [
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
]


@dataclass
class MovieLens:
    """MovieLens-100K frames: users, items, train / test events (pandas DataFrames).

    users : user_id, age (bucket), gender, occupation, zip (first two characters), history (the
            user's train items, oldest first: the collaborative channel as a feature)
    items : item_id, title, genres (list), year (release decade), popularity (bucket of train events)
    train, test : user_id, item_id, rating, timestamp, hour, weekday (UTC)
    """

    users: Any
    items: Any
    train: Any
    test: Any

    def schema(self) -> Schema:
        """The default schema: every recall channel as a field (collaborative: the ids; content:
        genres, decade; popularity; demographics; request time as context)."""
        from ..schema import Categorical, MultiCategorical

        return Schema(
            [
                Categorical("user_id", "user"),
                MultiCategorical("history", "user"),
                Categorical("age", "user"),
                Categorical("gender", "user"),
                Categorical("occupation", "user"),
                Categorical("zip", "user"),
                Categorical("hour", "context"),
                Categorical("weekday", "context"),
                Categorical("item_id", "item"),
                MultiCategorical("genres", "item"),
                Categorical("year", "item"),
                Categorical("popularity", "item"),
            ]
        )

    def request_context(self, events: Any) -> Any:
        """One query row per user of `events`: the user's first event time as the request context."""
        first = events.sort_values(["user_id", "timestamp"]).groupby("user_id", sort=True).head(1)
        return first[["user_id", "hour", "weekday"]].merge(self.users, on="user_id", how="left")


def movielens100k(path: Union[str, "os.PathLike[str]"], split: str = "u1") -> MovieLens:
    """Load MovieLens-100K from `path` (the ml-100k folder) with an official split ("u1".."u5", "ua",
    "ub"). Popularity buckets come from the split's train events only (no test leakage)."""
    import pandas as pd

    path = os.fspath(path)
    for name in ("u.user", "u.item", f"{split}.base", f"{split}.test"):
        if not os.path.exists(os.path.join(path, name)):
            raise FileNotFoundError(2, f"MovieLens-100K file missing (split {split!r})", os.path.join(path, name))
    users = pd.read_csv(
        os.path.join(path, "u.user"),
        sep="|",
        header=None,
        names=["user_id", "age_years", "gender", "occupation", "zip_code"],
    )
    users["age"] = pd.cut(
        users["age_years"],
        [0, 18, 25, 35, 45, 50, 56, 200],
        right=False,
        labels=["<18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+"],
    ).astype(str)
    users["zip"] = users["zip_code"].astype(str).str[:2]
    users = users[["user_id", "age", "gender", "occupation", "zip"]]
    cols = ["item_id", "title", "release", "video_release", "url"] + GENRES
    items = pd.read_csv(os.path.join(path, "u.item"), sep="|", header=None, names=cols, encoding="latin-1")
    flags = items[GENRES].to_numpy().astype(bool)
    items["genres"] = [[g for g, on in zip(GENRES, row) if on] for row in flags]
    year = pd.to_datetime(items["release"], format="%d-%b-%Y", errors="coerce").dt.year
    items["year"] = np.where(year.isna(), "unknown", (year // 10 * 10).fillna(0).astype(int).astype(str))

    def events(name: str) -> Any:
        ev = pd.read_csv(
            os.path.join(path, name), sep="\t", header=None, names=["user_id", "item_id", "rating", "timestamp"]
        )
        t = pd.to_datetime(ev["timestamp"], unit="s", utc=True)
        ev["hour"] = t.dt.hour.astype(int)
        ev["weekday"] = t.dt.day_of_week.astype(int)
        return ev

    train, test = events(f"{split}.base"), events(f"{split}.test")
    counts = train["item_id"].value_counts().reindex(items["item_id"], fill_value=0).to_numpy()
    edges = np.quantile(counts[counts > 0], [0.2, 0.4, 0.6, 0.8]) if (counts > 0).any() else []
    items["popularity"] = np.where(counts == 0, "none", np.searchsorted(edges, counts, side="right").astype(str))
    items = items[["item_id", "title", "genres", "year", "popularity"]]
    hist = train.sort_values("timestamp").groupby("user_id").item_id.apply(list)
    users["history"] = [hist.get(u, []) for u in users["user_id"]]
    return MovieLens(users, items, train, test)
