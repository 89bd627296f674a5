"""MovieLens-100K u1 end to end (real data from $FMRECALL_DATA): one FM trained on implicit feedback
with the fmrecall.movielens settings (fewer epochs, for time), all 1,682 items indexed, every test
user recommended 100 unseen items. Recall@50 must beat a popularity baseline computed here; the
retrieved scores must be the model's own scores of the joined rows (re-ranking by the full model
changes nothing, checked with code independent of fmrecall.movielens); a small cold-start run."""

from __future__ import annotations

import time

import numpy as np
import pytest

import fmrecall
from fmrecall.datasets import movielens100k
from fmrecall.experiments import movielens as M

pd = pytest.importorskip("pandas")
# issue 8's target: FM(k=64, threads=1, seed=s) with defaults, Recall@50 on u1 for s = 0, 1, 2
# (measured 0.5039, 0.5016, 0.5022 with the averaged weights; 0.4923, 0.4959, 0.4952 without them:
# README "Accuracy at default settings")
RECALL50_FLOOR = 0.50


@pytest.fixture(scope="module")
def ml(data_dir):
    return movielens100k(data_dir / "ml-100k", "u1")


@pytest.fixture(scope="module")
def trained(ml):
    t0 = time.perf_counter()
    schema = M.default_schema(ml)
    exp = M.Experiment(ml, schema)
    inter = exp.interactions()
    model = M.make_model("FM", schema, threads=1, seed=0).fit(inter)
    rec = fmrecall.Recaller(model, schema)
    rec.add_items(ml.items, "item_id")
    res = rec.search(exp.queries, 100, exclude=exp.exclude)
    print(f"\nMovieLens u1 FM: fit + index + search {time.perf_counter() - t0:.1f} s")
    return schema, exp, model, rec, res


def _recall(lists, relevant, k):
    """Own recall@k: mean over users of |top k ∩ relevant| / |relevant|."""
    out = [len(set(lst[:k].tolist()) & rel) / len(rel) for lst, rel in zip(lists, relevant) if rel]
    return float(np.mean(out))


def test_data_and_queries(ml, trained):
    schema, exp, *_ = trained
    assert len(ml.users) == 943 and len(ml.items) == 1682
    assert len(ml.train) == 80000 and len(ml.test) == 20000
    test_users = np.sort(ml.test.user_id.unique())
    np.testing.assert_array_equal(exp.queries.user_id.to_numpy(), test_users)
    # the query context is the user's first test event
    first = ml.test.sort_values(["user_id", "timestamp"]).groupby("user_id").head(1).set_index("user_id")
    np.testing.assert_array_equal(exp.queries.hour.to_numpy(), first.loc[test_users, "hour"].to_numpy())
    for u, ex in zip(exp.queries.user_id[:50], exp.exclude[:50]):
        assert set(ex.tolist()) == set(ml.train.item_id[ml.train.user_id == u])


def test_recall_beats_popularity(ml, trained):
    schema, exp, model, rec, res = trained
    ids = res.ids
    assert ids.shape == (len(exp.queries), 100)
    # every list: 100 distinct items, none of the user's train items
    for row, ex in zip(ids, exp.exclude):
        assert np.all(row > 0) and len(set(row.tolist())) == 100
        assert not np.isin(row, ex).any()
    # popularity baseline, computed here: most-trained items the user has not seen
    pop = ml.train.item_id.value_counts()
    order = pop.index.to_numpy()  # most popular first (items without train events never come)
    pop_lists = []
    for ex in exp.exclude:
        seen = set(ex.tolist())
        pop_lists.append(np.array([i for i in order[:300] if i not in seen][:100]))
    rel = exp.relevant
    fm50, pop50 = _recall(ids, rel, 50), _recall(pop_lists, rel, 50)
    fm10, pop10 = _recall(ids, rel, 10), _recall(pop_lists, rel, 10)
    print(
        f"\nRecall@50: FM (one model) {fm50:.4f}  popularity {pop50:.4f};  "
        f"Recall@10: FM {fm10:.4f}  popularity {pop10:.4f}"
    )
    # the library's metric agrees with this one
    assert fmrecall.metrics.recall_at_k(ids, rel, 50) == pytest.approx(fm50, rel=1e-12)
    assert fm50 > pop50 + 0.05  # measured ~0.49 vs ~0.27
    assert fm10 > pop10


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_defaults_recall_at_50(ml, trained, seed):
    """FM(k=64, threads=1, seed) with nothing else set (the trained fixture is seed 0)."""
    schema, exp, model, _, res = trained
    if seed:
        model = fmrecall.FM(k=64, threads=1, seed=seed).fit(exp.interactions())
        res = exp.recommend(model, 100)[1]
    assert model.get_params() == {**fmrecall.FM().get_params(), "k": 64, "threads": 1, "seed": seed}
    r50 = _recall(res.ids, exp.relevant, 50)
    print(f"\nMovieLens u1 FM defaults seed {seed}: Recall@50 {r50:.4f}")
    assert r50 >= RECALL50_FLOOR


def _joined(ml, queries, ids, items=None):
    """One frame row per (query row, item id): the query's user + context columns and the item's columns."""
    q = queries.loc[queries.index.repeat(ids.shape[1])].reset_index(drop=True)
    items = (ml.items if items is None else items).set_index("item_id").loc[ids.ravel()].reset_index()
    return pd.concat([q.drop(columns=[c for c in q.columns if c in items.columns]), items], axis=1)


def test_two_stage_rerank_changes_nothing(ml, trained):
    """Re-rank the retrieved top 100 with decision_function on the joined rows (the "ranking
    stage"): the scores are the retrieval's, so there is no inversion beyond float tolerance and the
    re-ranked top 10 is the retrieved top 10."""
    schema, exp, model, rec, res = trained
    nq = 60
    q = exp.queries.iloc[:nq]
    ids = res.ids[:nq]
    full = model.decision_function(schema.transform(_joined(ml, q, ids))).reshape(ids.shape).astype(np.float64)
    got = res.scores[:nq].astype(np.float64)
    scale = np.maximum(1.0, np.abs(full).max(axis=1, keepdims=True))
    np.testing.assert_allclose(got, full, rtol=1e-5, atol=1e-5)
    tol = 2e-5 * scale[:, :, None]
    inversions = (got[:, :, None] - got[:, None, :] > tol) & (full[:, :, None] - full[:, None, :] < -tol)
    assert int(inversions.sum()) == 0
    for i in range(nq):
        rer = ids[i][np.argsort(-full[i], kind="stable")][:10]
        # same top 10 up to exact ties at the cut
        tenth = np.sort(full[i])[::-1][9]
        assert set(rer[full[i][np.argsort(-full[i], kind="stable")][:10] > tenth + 1e-5 * scale[i, 0]]) <= set(
            ids[i, :10].tolist()
        )
    # and the library's own check says the same
    ts = M.two_stage_check(model, rec, exp, res, n_queries=20)
    assert ts["inversions"] == 0 and ts["max_abs_score_diff"] < 1e-4


def test_retrieval_equals_ranking_every_item(ml, trained):
    """For a few users, score every one of the 1,682 items with the full model on the joined rows
    (the two-stage system without a recall stage): its top 100 of the unseen items is the
    retrieved top 100 (score sets, ties aside)."""
    schema, exp, model, rec, res = trained
    all_ids = ml.items.item_id.to_numpy()[None, :]
    for i in (0, 7, 100, 400):
        q = exp.queries.iloc[[i]]
        s = model.decision_function(schema.transform(_joined(ml, q, all_ids))).astype(np.float64)
        s[np.isin(all_ids[0], exp.exclude[i])] = -np.inf
        best = np.sort(s)[::-1][:100]
        np.testing.assert_allclose(res.scores[i].astype(np.float64), best, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(s[res.ids[i] - 1], res.scores[i], rtol=1e-5, atol=1e-5)


def test_saved_model_and_recaller_serve_the_same_lists(ml, trained, tmp_path):
    """The model file carries its schema: a Recaller built from the loaded model alone (frames in,
    ids out) and a saved / loaded Recaller give the same lists and scores."""
    schema, exp, model, rec, res = trained
    model.save(tmp_path / "fm.npz")
    loaded = fmrecall.load(tmp_path / "fm.npz")
    assert loaded.schema_ == schema
    r2 = fmrecall.Recaller(loaded)
    r2.add_items(ml.items, "item_id")
    q = exp.queries.iloc[:100]
    want = rec.search(q, 100, exclude=exp.exclude[:100])  # same batch: same float rounding
    np.testing.assert_allclose(want.scores, res.scores[:100], rtol=1e-5, atol=1e-5)  # batch of 943
    a = r2.search(q, 100, exclude=exp.exclude[:100])
    np.testing.assert_array_equal(a.ids, want.ids)
    np.testing.assert_array_equal(a.scores, want.scores)
    rec.save(tmp_path / "rec")
    b = fmrecall.Recaller.load(tmp_path / "rec").search(q, 100, exclude=exp.exclude[:100])
    np.testing.assert_array_equal(b.ids, want.ids)
    np.testing.assert_array_equal(b.scores, want.scores)


def test_cold_start_smoke(ml):
    """10% of the items never seen in training (unknown to the schema and the model), indexed from
    their features; the model trained with cold_start dropout of item_id / popularity. Cold items
    are retrievable, scored exactly, and a cold item's vector does not depend on its (unknown) id."""
    rng = np.random.default_rng(0)
    all_items = ml.items.item_id.to_numpy()
    cold = np.sort(rng.choice(all_items, 168, replace=False))
    train = ml.train[~ml.train.item_id.isin(cold)]
    items = ml.items.copy()
    items.loc[items.item_id.isin(cold), "popularity"] = "none"
    warm = items[~items.item_id.isin(cold)]
    schema = M.default_schema(ml)
    schema.fit([ml.users, warm, train])
    exp = M.Experiment(ml, schema, train, warm, cold_start=M.COLD_START)
    model = M.make_model("FM", schema, threads=1, seed=0, k=16, epochs=3).fit(exp.interactions())  # deterministic
    rec = fmrecall.Recaller(model, schema)
    rec.add_items(items, "item_id")
    assert len(rec) == 1682
    # a cold item's id is unseen: its vector equals that of the same item under any other unknown id
    c0 = items[items.item_id == cold[0]]
    np.testing.assert_array_equal(
        rec.item_vectors([cold[0]]),
        model.split(schema.sides).item_vectors(schema.transform(c0.assign(item_id=10**6), side="item")),
    )
    q = exp.queries.iloc[:40]
    res = rec.search(q, 100, exclude=exp.exclude[:40])
    assert np.isin(res.ids, cold).sum() >= 1, np.isin(res.ids, cold).sum()  # cold items do get recommended
    full = model.decision_function(schema.transform(_joined(ml, q, res.ids, items))).reshape(res.ids.shape)
    np.testing.assert_allclose(res.scores, full, rtol=1e-5, atol=1e-5)
    within = rec.search(q, 10, exclude=exp.exclude[:40], restrict=cold)
    assert np.isin(within.ids, cold).all()
    # the cold items' scores are personalised: different users rank them differently
    assert len({tuple(r[:5]) for r in within.ids.tolist()}) > 5
