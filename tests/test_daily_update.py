"""Daily updates with new ids: a Schema grown by partial_fit (new users, items, tags get new features
appended after the old ones) and a model that grows with it in partial_fit. The grown parameters and
the first AdaGrad step on them against the float64 numpy reference (FM, FFM, HybridFM both ways);
old features untouched by the growth; a new Recaller over the grown model retrieving new items
with exact scores; the errors; and MovieLens u1 users held out of fit who get personalised lists
after the update."""

from __future__ import annotations

import copy
import time

import numpy as np
import pytest
import reference as ref
from helpers import compact_single, one_row_dataset, random_hybrid_weights, random_weights, ref_params_and_aware

import fmrecall
from fmrecall import Categorical, Interactions, MultiCategorical, Numeric, Recaller, Schema

pd = pytest.importorskip("pandas")

KINDS = ["fm", "ffm", "hybrid-item", "hybrid-query"]
N, F, NEW = 30, 5, 6
SIDES = dict(user=[3], context=[0], item=[4, 1, 2])
NO_VECTOR = (3, 7)  # old features without single vectors (absent from fit's data)


def _from_weights(rng, kind, **hyper):
    hyper = {
        "threads": 1,
        "learning_rate": 0.1,
        "reg_linear": 0.05,
        "reg_factors": 0.1,
        "init_std": 0.2,
        "seed": 11,
        **hyper,
    }
    if kind == "fm":
        w = compact_single(rng, random_weights(rng, "fm", N, F, 4), NO_VECTOR)
        return fmrecall.FM.from_weights(w, n_fields=F, **hyper)
    if kind == "ffm":
        return fmrecall.FFM.from_weights(random_weights(rng, "ffm", N, F, 4), **hyper)
    w = compact_single(rng, random_hybrid_weights(rng, N, F, 4), NO_VECTOR)
    return fmrecall.HybridFM.from_weights(w, sides=fmrecall.Sides(**SIDES), field_aware=kind.split("-")[1], **hyper)


# ---------------------------------------------------------------------------- the core's growth
@pytest.mark.parametrize("kind", KINDS)
def test_grown_parameters_and_first_step_match_reference(rng, kind):
    """partial_fit on a row with features N.. (beyond the model) first appends NEW features (linear 0,
    no vectors), then gives vectors to the row's features that have none: single vectors, as a fresh
    model with the same seed would draw them, to those in single fields (old features without one
    included: NO_VECTOR), field-aware rows to those in field-aware fields; then one AdaGrad step
    from accumulators 1, equal to the reference step from those grown weights. Old parameters
    that the row does not touch stay bit-identical."""
    model = _from_weights(rng, kind)
    old = model.weights()
    fields = np.array([0, 1, 2, 3, 4, 1, 0])
    feats = np.array([N + 1, 3, N + 4, 7, N + 2, N + 1, 12])  # N+1 twice (two fields), N, N+3, N+5 unused
    ds = one_row_dataset(fields, feats, [1.0, 0.8, 1.2, -0.7, 1.0, 0.9, 1.1], 1.0, n_features=N + NEW, n_fields=F)

    # the growth alone, on a copy: what partial_fit does before training
    grown = copy.deepcopy(model)
    grown._core.grow_features(NEW)
    assert grown.n_features_ == N + NEW
    olds = one_row_dataset([0, 1, 3, 4], [2, 3, 7, 9], None, None, n_features=N, n_fields=F)
    np.testing.assert_array_equal(grown.decision_function(olds), model.decision_function(olds))
    aware = grown._aware_flags(F).astype(bool)
    need = np.unique(feats[aware[fields]]).astype(np.int32)
    need_single = np.unique(feats[~aware[fields]]).astype(np.int32)
    grown._core.grow_rows(need_single, need, grown.init_std, grown.seed)
    w0 = grown.weights()
    np.testing.assert_array_equal(w0["linear"][:N], old["linear"])
    assert not w0["linear"][N:].any()
    if kind != "ffm":  # single vectors: exactly the ones a fresh model of N + NEW features would draw
        before = np.r_[old["single_row"], np.full(NEW, -1)]
        m_old = old["factors"].shape[0]
        gets = need_single[before[need_single] < 0]
        assert set(NO_VECTOR) & set(gets.tolist())  # an old feature absent from fit's data gets one too
        rows = w0["single_row"]
        np.testing.assert_array_equal(rows[before >= 0], before[before >= 0])
        np.testing.assert_array_equal(rows[gets], np.arange(m_old, m_old + gets.size))  # appended, sorted
        assert (np.delete(rows, np.r_[np.flatnonzero(before >= 0), gets]) == -1).all()
        np.testing.assert_array_equal(w0["factors"][:m_old], old["factors"])
        fresh = fmrecall._core.Model(
            N + NEW, F, 4, np.zeros(F, np.uint8), None, 0, grown.init_std, grown.seed, False
        ).get_weights()["v"]
        np.testing.assert_array_equal(w0["factors"][m_old:], fresh[gets])
    if kind == "ffm":
        np.testing.assert_array_equal(w0["factors"][:N], old["factors"])
    elif kind.startswith("hybrid"):
        rows = w0["aware_row"]
        np.testing.assert_array_equal(rows[:N], old["aware_row"])
        np.testing.assert_array_equal(w0["field_factors"][: old["field_factors"].shape[0]], old["field_factors"])
        new_aware = need[need >= N]
        assert sorted(rows[new_aware]) == list(
            range(old["field_factors"].shape[0], old["field_factors"].shape[0] + new_aware.size)
        )
        assert (rows[N:][~np.isin(np.arange(N, N + NEW), new_aware)] == -1).all()

    # one step from the grown weights (every accumulator 1: from_weights starts AdaGrad afresh)
    p0, ref_aware = ref_params_and_aware(kind, w0, F, SIDES)
    f, j, x = ref.dataset_row(ds, 0, N + NEW, F)
    p1, _, loss1 = ref.adagrad_step(
        p0, ref.fresh_state(p0), ref_aware, f, j, x, 1.0, loss="logistic", lr=0.1, reg_linear=0.05, reg_factors=0.1
    )
    touched = ref.touched_mask(p0, ref_aware, f, j, x)
    gen = model.generation_
    model.partial_fit(ds)
    assert model.generation_ == gen + 1 and model.n_features_ == N + NEW
    got, _ = ref_params_and_aware(kind, model.weights(), F, SIDES)
    assert got["bias"] == pytest.approx(p1["bias"], rel=1e-5, abs=1e-6)
    assert model.history_[-1]["train_loss"] == pytest.approx(loss1, rel=1e-5, abs=1e-6)
    for key in ("linear", "v", "W"):
        if p0[key] is None:
            continue
        np.testing.assert_allclose(got[key], p1[key], rtol=1e-5, atol=1e-6, err_msg=key)
        np.testing.assert_array_equal(
            got[key][~touched[key]], np.asarray(p0[key], np.float32)[~touched[key]], err_msg=key
        )
    # the new features were trained (the new parameters moved)
    assert got["linear"][N + 1] != 0.0


@pytest.mark.parametrize("kind", ["fm", "ffm"])
def test_grow_features_checks_before_changing(rng, kind):
    model = _from_weights(rng, kind)
    before = model.weights()
    with pytest.raises(ValueError, match="n_new"):
        model._core.grow_features(-1)
    with pytest.raises(ValueError, match="int32"):
        model._core.grow_features(2**31)
    with pytest.raises(ValueError, match="out of range"):
        model._core.grow_rows(np.array([0, N], np.int32), np.array([1], np.int32), 0.1, 0)
    model._core.grow_features(0)
    after = model.weights()
    assert model.n_features_ == N
    for key in before:
        np.testing.assert_array_equal(after[key], before[key])


def test_partial_fit_refuses_new_fields(rng):
    model = _from_weights(rng, "fm")
    ds = one_row_dataset([0, F], [1, 2], None, 1.0, n_features=N, n_fields=F + 1)
    with pytest.raises(ValueError, match="new fields are not supported"):
        model.partial_fit(ds)
    assert model.n_fields_ == F


# ---------------------------------------------------------------------------- schema + model + Recaller
def _tables(rng, n_users, n_items, n_events, *, u0=0, i0=0, tags="abcde"):
    users = pd.DataFrame(
        {"user_id": [f"u{i}" for i in range(u0, u0 + n_users)], "age": rng.choice(["young", "mid", "old"], n_users)}
    )
    items = pd.DataFrame(
        {
            "item_id": 100 + np.arange(i0, i0 + n_items),
            "tags": [list(rng.choice(list(tags), 2, replace=False)) for _ in range(n_items)],
            "price": rng.uniform(1, 20, n_items).round(2),
        }
    )
    events = pd.DataFrame(
        {
            "user_id": rng.choice(users.user_id.to_numpy(), n_events),
            "item_id": rng.choice(items.item_id.to_numpy(), n_events),
            "hour": rng.integers(0, 4, n_events),
        }
    )
    return users, items, events


def _schema():
    return Schema(
        [
            Categorical("user_id", "user"),
            Categorical("age", "user"),
            Categorical("hour", "context"),
            Categorical("item_id", "item"),
            MultiCategorical("tags", "item"),
            Numeric("price", "item", buckets=4),
        ]
    )


def _model(kind, schema):
    hyper = dict(k=4, epochs=3, learning_rate=0.1, threads=1, seed=5)
    if kind == "fm":
        return fmrecall.FM(**hyper)
    if kind == "ffm":
        return fmrecall.FFM(**hyper)
    return fmrecall.HybridFM(sides=schema.sides, field_aware=kind.split("-")[1], **hyper)


@pytest.mark.parametrize("kind", KINDS)
def test_new_recaller_over_the_grown_model_retrieves_new_items_exactly(rng, kind):
    """fit on day 1; day 2 brings new users, items and a new tag: grow a copy of the model's schema
    (Interactions(grow=True)), partial_fit; the old Recaller refuses to search, a new one indexes every
    item, and its scores for new users, old users, new and old items are the grown model's own scores
    of the joined rows. Old users' and items' rows encode as before."""
    users, items, events = _tables(rng, 20, 15, 200)
    schema = _schema().fit([users, items, events])
    model = _model(kind, schema).fit(Interactions(users, items, events, schema, negatives=2, alpha=0.5))
    old_rec = Recaller(model, model.schema_).add_items(items, "item_id")
    old_rows = model.schema_.transform(events.merge(users).merge(items))

    nu, ni, ne = _tables(rng, 5, 4, 60, u0=20, i0=15, tags="cdefg")  # "g": a new tag
    users2, items2 = pd.concat([users, nu], ignore_index=True), pd.concat([items, ni], ignore_index=True)
    events2 = pd.concat([events, ne.assign(user_id=rng.choice(users2.user_id.to_numpy(), 60))], ignore_index=True)
    new = copy.deepcopy(model)
    data = Interactions(users2, items2, events2, new.schema_, negatives=2, alpha=0.5, grow=True)
    assert new.schema_.grown and new.schema_.extends(model.schema_)
    assert new.schema_.n_features > model.schema_.n_features == model.n_features_
    new.partial_fit(data)
    assert new.n_features_ == new.schema_.n_features
    got_rows = new.schema_.transform(events.merge(users).merge(items))
    for a in ("indptr", "fields", "features"):
        np.testing.assert_array_equal(getattr(got_rows, a), getattr(old_rows, a))
    # the served (old) model is untouched; the old Recaller still serves it
    assert not model.schema_.grown
    old_rec.search(users.assign(hour=1).iloc[:3], 5)

    rec = Recaller(new, new.schema_).add_items(items2, "item_id")
    queries = users2.iloc[[0, 3, 20, 22, 24]].assign(hour=[0, 1, 2, 3, 1])
    res = rec.search(queries, 10, restrict=items2.item_id.to_numpy()[[1, 5, 15, 16, 17, 18]])
    assert np.isin(res.ids, ni.item_id).any()
    for q in range(len(queries)):
        ids = res.ids[q][res.ids[q] >= 0]
        joined = pd.concat(
            [queries.iloc[[q] * ids.size].reset_index(drop=True), items2.set_index("item_id").loc[ids].reset_index()],
            axis=1,
        )
        want = new.decision_function(new.schema_.transform(joined))
        np.testing.assert_allclose(res.scores[q][: ids.size], want, rtol=1e-5, atol=1e-5)
    # new users differ from each other (their ids have trained vectors now)
    uid = new.schema_.transform(nu, fields=["user_id"]).features
    assert np.unique(uid).size == len(nu) and (uid >= model.n_features_).all()


def test_old_recaller_refuses_the_grown_model_and_save_load_keeps_the_growth(rng, tmp_path):
    users, items, events = _tables(rng, 15, 10, 120)
    schema = _schema().fit([users, items, events])
    model = _model("fm", schema).fit(Interactions(users, items, events, schema, negatives=2))
    rec = Recaller(model, model.schema_).add_items(items, "item_id")
    nu, ni, ne = _tables(rng, 3, 2, 30, u0=15, i0=10)
    data = Interactions(
        pd.concat([users, nu]), pd.concat([items, ni]), pd.concat([events, ne]), model.schema_, negatives=2, grow=True
    )
    model.partial_fit(data)  # grows in place: the schema_ object is the one grown
    with pytest.raises(RuntimeError):
        rec.search(users.assign(hour=0).iloc[:2], 3)
    model.save(tmp_path / "m.npz")
    back = fmrecall.load(tmp_path / "m.npz")
    assert back.schema_ == model.schema_ and back.schema_.grown
    np.testing.assert_array_equal(back.decision_function(data), model.decision_function(data))
    rec2 = Recaller(back, back.schema_).add_items(pd.concat([items, ni]), "item_id")
    assert rec2.search(nu.assign(hour=0), 3).ids.shape == (3, 3)


def test_partial_fit_refuses_a_schema_that_is_not_a_growth(rng):
    users, items, events = _tables(rng, 15, 10, 120)
    schema = _schema().fit([users, items, events])
    model = _model("fm", schema).fit(Interactions(users, items, events, schema, negatives=2))
    other = _schema().fit([users.iloc[::-1], items, events.iloc[:40]])  # another vocabulary order
    assert not other.extends(model.schema_)
    gen = model.generation_
    with pytest.raises(ValueError, match="growth"):
        model.partial_fit(Interactions(users, items, events, other, negatives=2))
    assert model.generation_ == gen and model.n_features_ == schema.n_features


# ---------------------------------------------------------------------------- MovieLens u1
def test_movielens_held_out_users_get_personalised_lists(data_dir):
    """Users 400-499 are held out of fit (60 of them have u1.test events: users >= 900, as tried in
    issue 9, have none in u1.test). Before the update they are the reserved unseen user_id (plus
    their demographics and request context); after growing a copy's schema with every user and
    partial_fit on all u1.base events (two epochs), every one has its own user_id feature and
    Recall@50 on u1.test is about twice the unseen-user baseline (measured 0.257 -> 0.570)."""
    from fmrecall.datasets import movielens100k
    from fmrecall.experiments import movielens as M
    from fmrecall.metrics import recall_at_k

    t0 = time.perf_counter()
    ml = movielens100k(data_dir / "ml-100k", "u1")
    held = ml.users.user_id.between(400, 499)
    old_users, old_train = ml.users[~held], ml.train[~ml.train.user_id.between(400, 499)]
    schema = M.default_schema(ml).fit([old_users, ml.items, old_train])
    hyper = dict(k=32, normalize="none", learning_rate=0.1, reg_factors=2e-2, reg_linear=1e-2, threads=1, seed=0)
    model = fmrecall.FM(epochs=5, **hyper).fit(
        Interactions(old_users, ml.items, old_train, schema, negatives=4, alpha=0.5)
    )
    test = ml.test[ml.test.user_id.between(400, 499)]
    queries = ml.request_context(test)
    seen = ml.train.groupby("user_id").item_id.apply(np.array)
    exclude = [seen.get(u, np.zeros(0, np.int64)) for u in queries.user_id]
    rel = test.groupby("user_id").item_id.apply(set)
    relevant = [rel[u] for u in queries.user_id]
    assert len(queries) == 60

    def lists(m):
        rec = Recaller(m, m.schema_).add_items(ml.items, "item_id")
        res = rec.search(queries, 50, exclude=exclude)
        return res, len({tuple(r[:10]) for r in res.ids.tolist()}), recall_at_k(res.ids, relevant, 50)

    uid = model.schema_.transform(queries, fields=["user_id"]).features
    assert np.unique(uid).size == 1  # all the reserved unseen value
    _, distinct0, recall0 = lists(model)

    new = copy.deepcopy(model)
    data = Interactions(ml.users, ml.items, ml.train, new.schema_, negatives=4, alpha=0.5, grow=True)
    old_rows = model.schema_.transform(old_train.merge(old_users).merge(ml.items))
    new.partial_fit(data)
    new.partial_fit(data)
    uid = new.schema_.transform(queries, fields=["user_id"]).features
    assert np.unique(uid).size == len(queries) and (uid >= model.n_features_).all()
    np.testing.assert_array_equal(
        new.schema_.transform(old_train.merge(old_users).merge(ml.items)).features, old_rows.features
    )
    res, distinct1, recall1 = lists(new)
    seconds = time.perf_counter() - t0
    print(
        f"\nheld-out users {len(queries)}: distinct top-10 lists {distinct0} -> {distinct1}, "
        f"Recall@50 {recall0:.4f} -> {recall1:.4f} ({seconds:.1f} s)"
    )
    assert distinct1 == len(queries)
    assert recall1 > recall0 + 0.15 and recall1 > 0.45
    # the lists changed for (nearly) every held-out user: the new user vectors are used
    before, _, _ = lists(model)
    assert np.mean([set(a[:10]) != set(b[:10]) for a, b in zip(before.ids.tolist(), res.ids.tolist())]) > 0.9


@pytest.mark.parametrize("kind", ["fm", "ffm", "hybrid-item"])
def test_growth_while_other_threads_predict(rng, kind):
    """grow_features / grow_rows reallocate the tables under the core's exclusive lock: threads
    predicting old rows meanwhile always get the old scores, bit for bit, and the model ends with
    every feature appended."""
    import threading

    model = _from_weights(rng, kind)
    ds = one_row_dataset([0, 1, 2, 3, 4], [1, 5, 9, 13, 17], None, None, n_features=N, n_fields=F)
    want = model.decision_function(ds)
    stop, bad, calls = threading.Event(), [], [0]

    def reader():
        while not stop.is_set():
            got = model.decision_function(ds)
            calls[0] += 1
            if not np.array_equal(got, want):
                bad.append(got)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for step in range(200):
            model._core.grow_features(7)
            fresh = np.arange(N + 7 * step, N + 7 * step + 7, dtype=np.int32)
            model._core.grow_rows(fresh, fresh, 0.1, step)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not bad and calls[0] > 0
    assert model.n_features_ == N + 1400
    np.testing.assert_array_equal(model.decision_function(ds), want)
