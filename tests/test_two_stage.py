"""The two-stage pipeline of fmrecall.experiments.two_stage on a slice of MovieLens-100K u1 (real
data from $FMRECALL_DATA): the channels return each user's best unseen items by their own scores
(recomputed here in numpy), the merge fills 60% / 20% / 20% of the N slots from item-CF, genre and
popularity in that order, no candidate is a train item, and stage two returns the model's best k
among the candidates only, with the model's own scores of the joined rows."""

from __future__ import annotations

import numpy as np
import pytest

import fmrecall
from fmrecall.datasets import GENRES, movielens100k
from fmrecall.experiments import movielens as M
from fmrecall.experiments import two_stage as T

pd = pytest.importorskip("pandas")
USERS = 30  # test users in the slice


@pytest.fixture(scope="module")
def world(data_dir):
    ml = movielens100k(data_dir / "ml-100k", "u1")
    schema = M.default_schema(ml)
    exp = M.Experiment(ml, schema)
    model = M.make_model("FM", schema, threads=1, seed=0, k=8, epochs=2).fit(exp.interactions())
    rec = fmrecall.Recaller(model, schema)
    rec.add_items(ml.items, "item_id")
    channels = M.channel_lists(ml, exp, 200)
    return ml, schema, exp, model, rec, channels


def _seen(ml, exp):
    """Each query's train items, from the raw events (independent of Experiment.exclude)."""
    by_user = ml.train.groupby("user_id").item_id.apply(set)
    return [by_user[u] for u in exp.queries.user_id]


def _channel_scores(ml):
    """(user, item) score matrices of the three channels, written plainly (0-based rows)."""
    R = np.zeros((943, 1682))
    R[ml.train.user_id - 1, ml.train.item_id - 1] = 1.0
    n = np.sqrt(R.sum(axis=0))
    cos = (R.T @ R) / np.maximum(np.outer(n, n), 1e-12)
    np.fill_diagonal(cos, 0.0)
    G = np.zeros((1682, len(GENRES)))
    for i, gs in zip(ml.items.item_id - 1, ml.items.genres):
        for g in gs:
            G[i, GENRES.index(g)] = 1.0
    prof = R @ G / np.maximum((R @ G).sum(axis=1, keepdims=True), 1.0)
    pop = R.sum(axis=0)
    genre = prof @ (G / np.maximum(G.sum(axis=1, keepdims=True), 1.0)).T + 1e-6 * pop / pop.max()
    return [R @ cos, genre, np.broadcast_to(pop, R.shape)]


def test_channels_are_each_users_best_unseen_items(world):
    ml, schema, exp, model, rec, channels = world
    seen = _seen(ml, exp)
    for lists, S in zip(channels, _channel_scores(ml)):
        assert lists.shape == (len(exp.queries), 200)
        for a in range(USERS):
            u = int(exp.queries.user_id.iloc[a]) - 1
            ids = lists[a]
            assert len(set(ids.tolist())) == 200 and not set(ids.tolist()) & seen[a]
            got = S[u, ids - 1]
            tol = 1e-6 * max(1.0, abs(got[0]))  # the channels compute in float32
            assert np.all(np.diff(got) <= tol)  # best first
            rest = np.setdiff1d(np.arange(1, 1683), np.r_[ids, list(seen[a])])
            assert S[u, rest - 1].max() <= got[-1] + tol


@pytest.mark.parametrize("n", [100, 150, 200])
def test_merge_quotas_and_no_train_items(world, n):
    ml, schema, exp, model, rec, channels = world
    seen = _seen(ml, exp)
    cands = T.candidates(channels, n)
    assert cands.shape == (len(exp.queries), n)
    quotas = [round(0.6 * n), round(0.2 * n)]
    quotas.append(n - sum(quotas))
    for a in range(USERS):
        c = cands[a].tolist()
        assert len(set(c)) == n and min(c) >= 1 and not set(c) & seen[a]
        # reference merge: channel by channel, each takes its quota of items not taken yet
        want, at = [], 0
        for lists, q in zip(channels, quotas):
            new = [i for i in lists[a].tolist() if i not in want][:q]
            assert c[at : at + q] == new  # the channel's own slots, in its order
            want += new
            at += q
        assert c == want
    with pytest.raises(ValueError, match="at least n=400"):
        T.candidates(channels, 400)


def test_stage_two_is_the_models_best_among_the_candidates(world):
    ml, schema, exp, model, rec, channels = world
    cands = T.candidates(channels, 100)
    q = exp.queries.iloc[:USERS].reset_index(drop=True)
    res = T.rank(rec, q, cands[:USERS], k=50)
    assert res.ids.shape == (USERS, 50)
    items = ml.items.set_index("item_id")
    for a in range(0, USERS, 3):
        assert set(res.ids[a].tolist()) <= set(cands[a].tolist())  # restricted to the candidates
        # the full model on the joined rows of all 100 candidates: its top 50 are the returned ones
        joined = pd.concat([q.iloc[[a] * 100].reset_index(drop=True), items.loc[cands[a]].reset_index()], axis=1)
        s = model.decision_function(schema.transform(joined)).astype(np.float64)
        np.testing.assert_allclose(res.scores[a], np.sort(s)[::-1][:50], rtol=1e-5, atol=1e-5)
        pos = {int(i): j for j, i in enumerate(cands[a])}
        np.testing.assert_allclose(res.scores[a], s[[pos[int(i)] for i in res.ids[a]]], rtol=1e-5, atol=1e-5)


def test_compare_reports_recall_of_both_pipelines(world):
    ml, schema, exp, model, rec, channels = world
    sub = M.Experiment.__new__(M.Experiment)
    sub.__dict__.update(exp.__dict__)
    sub.queries = exp.queries.iloc[:USERS].reset_index(drop=True)
    sub.exclude, sub.relevant = exp.exclude[:USERS], exp.relevant[:USERS]
    sl = [c[:USERS] for c in channels]
    out = T.compare(rec, sub, sl, ns=(100, 200), k=50)

    def recall(lists, k):
        return np.mean([len(set(lst[:k].tolist()) & r) / len(r) for lst, r in zip(lists, sub.relevant)])

    one = rec.search(sub.queries, 50, exclude=sub.exclude).ids
    assert out["one stage"] == pytest.approx(recall(one, 50), abs=1e-12)
    for n in (100, 200):
        c = T.candidates(sl, n)
        assert out[f"candidates N={n}"] == pytest.approx(recall(c, n), abs=1e-12)
        two = T.rank(rec, sub.queries, c, 50).ids
        assert out[f"two-stage N={n}"] == pytest.approx(recall(two, 50), abs=1e-12)
        assert out[f"two-stage N={n}"] <= out[f"candidates N={n}"] + 1e-12
