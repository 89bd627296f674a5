"""fmrecall.Interactions: users, items and events kept apart, rows assembled in C++. Training on
Interactions equals training on the materialised joined rows (FM, FFM, HybridFM; context fields,
multi-valued item fields, leave-one-out history); materialize() against rows joined with pandas;
negative sampling laws (chi-square of the alias sampler and of the negatives training really draws);
one BPR step against finite differences of log σ(s+ - s-) on the float64 reference; determinism;
errors."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import reference as ref
from helpers import aware_flags, hybrid_ref_params, random_hybrid_weights, random_weights

import fmrecall
from fmrecall import Categorical, Interactions, MultiCategorical, Numeric, Schema, _core

pd = pytest.importorskip("pandas")

KINDS = ["fm", "ffm", "hybrid-item", "hybrid-query"]


# ---------------------------------------------------------------------------- data
def _toy(rng, *, n_users=12, n_items=15, n_events=150, context=True, label=True, history=False):
    """Users, items, events where every user and every item has at least two events (so every table
    feature occurs in some training row), a context field, a multi-valued and a numeric item field."""
    users = pd.DataFrame(
        {"user_id": [f"u{i}" for i in range(n_users)], "age": rng.choice(["young", "mid", "old"], n_users)}
    )
    tag_pool = list("abcdef")
    items = pd.DataFrame(
        {
            "item_id": 100 + np.arange(n_items),
            "cat": rng.choice(["x", "y", "z"], n_items),
            "tags": [list(rng.choice(tag_pool, int(rng.integers(1, 4)), replace=False)) for _ in range(n_items)],
            "price": rng.uniform(1, 20, n_items).round(2),
        }
    )
    u = np.r_[np.repeat(np.arange(n_users), 2), rng.integers(0, n_users, n_events - 2 * n_users)]
    it = np.r_[rng.permutation(np.tile(np.arange(n_items), 2)), rng.integers(0, n_items, n_events - 2 * n_items)]
    it = it[: u.size]
    events = pd.DataFrame(
        {
            "user_id": users.user_id.to_numpy()[u],
            "item_id": items.item_id.to_numpy()[it],
            "hour": rng.integers(0, 4, u.size),
        }
    )
    if label:
        events["y"] = rng.integers(0, 2, u.size).astype(float)
    fields = [Categorical("user_id", "user"), Categorical("age", "user")]
    if history:
        hist = events.groupby("user_id").item_id.apply(lambda s: sorted(set(s)))
        users["history"] = [hist.get(x, []) for x in users.user_id]
        fields.append(MultiCategorical("history", "user"))
    if context:
        fields.append(Categorical("hour", "context"))
    fields += [
        Categorical("item_id", "item"),
        Categorical("cat", "item"),
        MultiCategorical("tags", "item"),
        Numeric("price", "item"),
    ]
    schema = Schema(fields).fit([users, items, events])
    return users, items, events, schema


def _make(kind, schema, **hyper):
    hyper = {"k": 4, "epochs": 3, "learning_rate": 0.1, "threads": 1, "seed": 3, **hyper}
    if kind == "fm":
        return fmrecall.FM(**hyper)
    if kind == "ffm":
        return fmrecall.FFM(**hyper)
    return fmrecall.HybridFM(sides=schema.sides, field_aware=kind.split("-")[1], **hyper)


def _assert_same_weights(a, b):
    wa, wb = a.weights(), b.weights()
    assert wa.keys() == wb.keys()
    for key in wa:
        if wa[key] is None:
            assert wb[key] is None
            continue
        x, y = np.asarray(wa[key]), np.asarray(wb[key])
        assert x.shape == y.shape, key
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7, err_msg=key)


def _joined_frame(users, items, events):
    return events.merge(users, on="user_id", how="left").merge(items, on="item_id", how="left")


def _row_set(ds, r):
    s, e = int(ds.indptr[r]), int(ds.indptr[r + 1])
    v = ds.values_or_ones()
    return sorted(zip(ds.fields[s:e].tolist(), ds.features[s:e].tolist(), np.round(v[s:e], 6).tolist()))


# ---------------------------------------------------------------------------- materialize
def test_materialize_is_the_joined_rows(rng):
    users, items, events, schema = _toy(rng)
    inter = Interactions(users, items, events, schema, label="y")
    ds = inter.materialize()
    assert ds.n_rows == len(events) == inter.n_events == len(inter)
    want = schema.transform(_joined_frame(users, items, events), label="y")
    for r in range(ds.n_rows):
        assert _row_set(ds, r) == _row_set(want, r), r
        # node order: user fields, then context, then item fields
        f = ds.fields[ds.indptr[r] : ds.indptr[r + 1]]
        side = np.array([0 if x in schema.sides.user else 1 if x in schema.sides.context else 2 for x in f])
        assert np.all(np.diff(side) >= 0)
    np.testing.assert_array_equal(ds.labels, events.y.to_numpy(np.float32))
    # items= replaces every event's item row
    swap = rng.integers(0, len(items), len(events))
    other = inter.materialize(items=swap)
    ev2 = events.assign(item_id=items.item_id.to_numpy()[swap])
    want2 = schema.transform(_joined_frame(users, items, ev2))
    for r in range(other.n_rows):
        assert _row_set(other, r) == _row_set(want2, r)
    assert other.labels is None


def test_positives_and_sample_weights(rng):
    users, items, events, schema = _toy(rng, label=False)
    counts = events.item_id.value_counts().reindex(items.item_id, fill_value=0).to_numpy()
    for alpha in (0.0, 0.5, 1.0):
        inter = Interactions(users, items, events, schema, negatives=1, alpha=alpha)
        want = np.ones(len(items)) if alpha == 0 else counts.astype(float) ** alpha
        np.testing.assert_allclose(inter.sample_weights(), want, rtol=1e-12)
    ptr, pos = inter.positives()
    for ui, uid in enumerate(users.user_id):
        got = items.item_id.to_numpy()[pos[ptr[ui] : ptr[ui + 1]]]
        np.testing.assert_array_equal(np.sort(got), np.sort(events.item_id[events.user_id == uid].unique()))


# ---------------------------------------------------------------------------- training equality
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("context", [True, False])
def test_training_on_interactions_equals_training_on_rows(rng, kind, context):
    users, items, events, schema = _toy(rng, context=context)
    inter = Interactions(users, items, events, schema, label="y")
    rows = inter.materialize()
    a = _make(kind, schema).fit(inter)
    b = _make(kind, schema).fit(rows)
    _assert_same_weights(a, b)
    np.testing.assert_array_equal(a.decision_function(inter), a.decision_function(rows))
    # partial_fit continues both alike
    a.partial_fit(inter)
    b.partial_fit(rows)
    _assert_same_weights(a, b)
    # the model really moved away from its initial weights
    c = _make(kind, schema, epochs=1, learning_rate=1e-9).fit(rows)
    assert not np.allclose(a.weights()["linear"], c.weights()["linear"], atol=1e-3)
    # and evaluation events with the same users / items score like their joined rows
    test = events.sample(20, random_state=1).assign(hour=1)
    t_inter = inter.with_events(test, label="y")
    np.testing.assert_array_equal(a.decision_function(t_inter), a.decision_function(t_inter.materialize()))
    want = a.decision_function(schema.transform(_joined_frame(users, items, test)))
    np.testing.assert_allclose(a.decision_function(t_inter), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["fm", "hybrid-query"])
def test_cold_start_at_rate_one_equals_training_on_rows_of_an_unseen_item(rng, kind):
    """cold_start={"item_id": 1.0} swaps every training row's item id for the field's reserved
    "unseen" feature: training equals training on the joined rows with an item id the schema has
    never seen. The swapped node must get the unseen feature's vectors, not the vector row of the
    item id that the prefetch stages looked up for the event (Run::rows). Models whose item side
    has single vectors only: rows give a reserved feature field-aware vectors only when cold-start
    training asks for them, so there the two start from different models."""
    users, items, events, schema = _toy(rng)
    inter = Interactions(users, items, events, schema, label="y", cold_start={"item_id": 1.0})
    rows = schema.transform(_joined_frame(users, items, events).assign(item_id=-1), label="y")
    a = _make(kind, schema).fit(inter)
    b = _make(kind, schema).fit(rows)
    # a also holds (untrained) vectors for the item ids its tables list, so compare what both train
    for key in ("bias", "linear"):
        np.testing.assert_allclose(a.weights()[key], b.weights()[key], rtol=1e-6, atol=1e-7, err_msg=key)
    np.testing.assert_allclose(a.decision_function(rows), b.decision_function(rows), rtol=1e-5, atol=1e-6)
    assert not np.allclose(a.decision_function(rows), _make(kind, schema, epochs=1).fit(rows).decision_function(rows))


@pytest.mark.parametrize("loss", ["logistic", "bpr"])
def test_cold_start_at_rate_one_swaps_every_sampled_row(rng, loss):
    """With sampled negatives, cold_start={"item_id": 1.0} swaps the item id of every training row,
    the positive's and each negative's (the swaps are drawn ahead with the negatives): no item id's
    linear weight moves; the field's reserved "unseen" feature's does under the logistic loss (under
    BPR the positive and the negative share it, so its gradient cancels)."""
    users, items, events, schema = _toy(rng, label=False)
    inter = Interactions(users, items, events, schema, negatives=2, cold_start={"item_id": 1.0})
    linear = _make("fm", schema, loss=loss).fit(inter).weights()["linear"]
    f = schema.index("item_id")
    unseen = int(schema.feature(f, Categorical.UNSEEN))
    ids = schema.feature(f, 2 + np.arange(len(schema.field("item_id").vocab)))  # local 0, 1: unseen, other
    assert not np.any(linear[ids]), "an item id was trained though every row's item id is swapped"
    assert (linear[unseen] != 0.0) == (loss == "logistic")


@pytest.mark.parametrize("kind", ["fm", "ffm"])
def test_users_and_items_without_events_stay_neutral(rng, kind):
    """A user and an item that are in the tables but in no event never occur in a training row:
    like every feature absent from the training rows they must keep zero weights (neutral; for FM:
    no vector at all), as training on the materialised rows does, instead of keeping random initial
    vectors that are never trained (they would add noise to every score of that user / item)."""
    users, items, events, _ = _toy(rng, context=False)
    users = pd.concat([users, pd.DataFrame({"user_id": ["lonely"], "age": ["young"]})], ignore_index=True)
    items = pd.concat(
        [items, pd.DataFrame({"item_id": [999], "cat": ["x"], "tags": [["a"]], "price": [3.0]})], ignore_index=True
    )
    schema = Schema(
        [
            Categorical("user_id", "user"),
            Categorical("age", "user"),
            Categorical("item_id", "item"),
            Categorical("cat", "item"),
            MultiCategorical("tags", "item"),
            Numeric("price", "item"),
        ]
    )
    schema.fit([users, items, events])
    inter = Interactions(users, items, events, schema, label="y")
    a = _make(kind, schema).fit(inter)
    b = _make(kind, schema).fit(inter.materialize())
    w = a.weights()
    factors = ref.dense_single(w)
    for name, value in (("user_id", "lonely"), ("item_id", 999)):
        j = int(schema.offsets[schema.index(name)]) + 2 + schema.field(name).vocab.index(value)
        assert w["linear"][j] == 0.0 and not np.any(factors[j]), (
            f"{name}={value!r} (no events) has non-zero weights after training on Interactions: "
            f"factors {factors[j].ravel()[:4]}..."
        )
        if kind == "fm":
            assert w["single_row"][j] == -1
    _assert_same_weights(a, b)


@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_implicit_item_without_events_is_trained_only_if_it_can_be_drawn(rng, alpha):
    """Implicit feedback: an item without events is drawn as a negative with alpha = 0 (so it is
    trained), never with alpha > 0 (count^alpha = 0), in which case it must stay neutral."""
    users, items, events, _ = _toy(rng, context=False, label=False)
    items = pd.concat(
        [items, pd.DataFrame({"item_id": [999], "cat": ["x"], "tags": [["a"]], "price": [3.0]})], ignore_index=True
    )
    schema = Schema([Categorical("user_id", "user"), Categorical("item_id", "item"), Categorical("cat", "item")]).fit(
        [users, items, events]
    )
    inter = Interactions(users, items, events, schema, negatives=3, alpha=alpha)
    w = _make("fm", schema).fit(inter).weights()
    j = int(schema.offsets[schema.index("item_id")]) + 2 + schema.field("item_id").vocab.index(999)
    factors = ref.dense_single(w)
    if alpha == 0:
        assert w["linear"][j] < 0 and np.any(factors[j])  # trained as a negative
    else:
        assert w["linear"][j] == 0.0 and w["single_row"][j] == -1  # no vector: neutral


# ---------------------------------------------------------------------------- history field
def test_history_is_left_one_out(rng):
    users, items, events, schema = _toy(rng, history=True)
    inter = Interactions(users, items, events, schema, label="y", history="history")
    ds = inter.materialize()
    hf = schema.index("history")
    dropped = 0
    for r, (uid, iid) in enumerate(zip(events.user_id, events.item_id)):
        if r >= 40:
            break
        s, e = int(ds.indptr[r]), int(ds.indptr[r + 1])
        hist = [schema.describe(int(j)) for f, j in zip(ds.fields[s:e], ds.features[s:e]) if f == hf]
        full = [f"history={h!r}" for h in users.history[users.user_id == uid].iloc[0]]
        want = [h for h in full if h != f"history={iid!r}"]
        assert sorted(hist) == sorted(want), (r, uid, iid, hist, want)
        dropped += len(full) - len(want)
        # the other fields are untouched: the row equals the joined row minus that one node
        row = _joined_frame(users, items, events.iloc[[r]])
        whole = schema.transform(row)
        own = [t for t in _row_set(whole, 0) if t[0] == hf and schema.describe(t[1]) == f"history={iid!r}"]
        assert _row_set(ds, r) == sorted(set(_row_set(whole, 0)) - set(own)) or len(own) > 1
    assert dropped == 40  # every event's item is in its user's history here


@pytest.mark.parametrize("kind", KINDS)
def test_training_with_history_equals_training_on_rows(rng, kind):
    users, items, events, schema = _toy(rng, history=True)
    inter = Interactions(users, items, events, schema, label="y", history="history")
    a = _make(kind, schema).fit(inter)
    b = _make(kind, schema).fit(inter.materialize())
    _assert_same_weights(a, b)
    np.testing.assert_array_equal(a.decision_function(inter), a.decision_function(inter.materialize()))


# ---------------------------------------------------------------------------- negative sampling laws
def _chi2_bound(df: int, z: float = 3.09) -> float:
    """Wilson-Hilferty approximation of the chi-square quantile (z = 3.09: upper tail 1e-3)."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def _chi2(counts, p):
    exp = counts.sum() * p
    keep = p > 0
    return float(((counts[keep] - exp[keep]) ** 2 / exp[keep]).sum()), int(keep.sum()) - 1


def test_chi2_bound_matches_tables():
    # sanity of the approximation against textbook 0.999 quantiles
    for df, q in ((9, 27.877), (19, 43.820), (49, 85.351)):
        assert _chi2_bound(df) == pytest.approx(q, rel=0.01)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_sample_items_follows_the_law(alpha):
    counts = np.array([0, 1, 1, 2, 3, 5, 8, 13, 21, 34, 55, 0, 4, 7, 9, 100, 1, 2, 6, 10], dtype=np.float64)
    w = np.ones_like(counts) if alpha == 0 else counts**alpha
    p = w / w.sum()
    n = 200_000
    draws = _core.sample_items(w, n, 12345)
    assert draws.dtype == np.int32 and draws.shape == (n,)
    c = np.bincount(draws, minlength=w.size)
    assert c.size == w.size
    assert np.all(c[p == 0] == 0)  # zero weight: never drawn
    stat, df = _chi2(c, p)
    assert stat < _chi2_bound(df), (stat, _chi2_bound(df), c, np.round(n * p))
    # seeded: the same seed repeats, another seed does not
    np.testing.assert_array_equal(_core.sample_items(w, 1000, 12345), draws[:1000])
    assert not np.array_equal(_core.sample_items(w, 1000, 54321), draws[:1000])


def test_sample_items_detects_a_wrong_law():
    """The chi-square check has power: draws from the uniform law fail against count^1."""
    counts = np.arange(1, 21, dtype=np.float64)
    draws = _core.sample_items(np.ones(20), 50_000, 7)
    stat, df = _chi2(np.bincount(draws, minlength=20), counts / counts.sum())
    assert stat > 10 * _chi2_bound(df)


def test_sample_items_rejects_bad_weights():
    for bad in (np.zeros(3), np.array([1.0, -1.0]), np.array([1.0, np.nan]), np.zeros(0)):
        with pytest.raises(ValueError):
            _core.sample_items(bad, 10, 0)


_COUNTS = np.array([1, 1, 2, 3, 4, 6, 8, 0])  # events per item; item 7 has none


def _drawn_negatives(alpha, hard, n):
    """The negatives training really uses: user u0's one event with item 0 (plus events of other
    users that set the item counts), negatives=1, trained from the same fixed weights with n seeds
    through the core's per-event training call; the item whose linear weight moved (besides the
    positive) is the draw. Returns (counts per item, u0's score of every item before training)."""
    n_items = _COUNTS.size
    ev_u, ev_i = ["u0"], [0]
    for j, c in enumerate(_COUNTS):
        for t in range(c - (1 if j == 0 else 0)):
            ev_u.append(f"v{t}")
            ev_i.append(j)
    events = pd.DataFrame({"user_id": ev_u, "item_id": ev_i})
    users = pd.DataFrame({"user_id": sorted(set(ev_u))})
    items = pd.DataFrame({"item_id": np.arange(n_items)})
    schema = Schema([Categorical("user_id", "user"), Categorical("item_id", "item")]).fit([users, items, events])
    inter = Interactions(users, items, events, schema, negatives=1, alpha=alpha, hard_negatives=hard)
    assert events.user_id[0] == "u0" and events.item_id[0] == 0
    item_feat = schema.offsets[1] + np.array([2 + schema.field("item_id").vocab.index(j) for j in range(n_items)])
    rng = np.random.default_rng(0)
    w = random_weights(rng, "fm", schema.n_features, schema.n_fields, 2, scale=0.05)
    w["linear"][item_feat] = rng.permutation(np.linspace(-1.0, 1.0, n_items)).astype(np.float32)  # well apart
    model = fmrecall.FM.from_weights(w, n_fields=schema.n_fields, threads=1, reg_linear=0.0, reg_factors=0.0)
    one = inter.with_events(pd.DataFrame({"user_id": ["u0"] * n_items, "item_id": np.arange(n_items)}))
    scores = model.decision_function(one.materialize())
    core = model._core
    fd = inter.core()
    got = np.zeros(n_items, np.int64)
    for seed in range(n):
        core.set_weights(w["bias"], w["linear"], w["factors"], None)
        core.train_factored(fd, np.array([0], np.int64), 0, 1, hard, seed, 1e-3, 0.0, 0.0, 1)
        moved = np.flatnonzero(core.get_weights()["linear"][item_feat] != w["linear"][item_feat])
        moved = moved[moved != 0]
        assert moved.size == 1, moved
        got[moved[0]] += 1
    return got, scores


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_training_draws_negatives_by_the_law(alpha):
    """Items are drawn ∝ count^alpha (uniform for alpha = 0) among the items that are not the
    user's positives (exclude_positives)."""
    n = 1500
    got, _ = _drawn_negatives(alpha, 1, n)
    law = np.ones(_COUNTS.size) if alpha == 0 else _COUNTS.astype(float) ** alpha
    law[0] = 0.0  # u0's positive is redrawn
    stat, df = _chi2(got, law / law.sum())
    assert got[0] == 0 and (alpha == 0 or got[7] == 0), got
    assert stat < _chi2_bound(df), (stat, got, np.round(n * law / law.sum()))


@pytest.mark.parametrize("hard", [2, 3])
def test_hard_negatives_are_the_best_scored_of_the_draws(hard):
    """hard_negatives=h: h candidates drawn by the law, training uses the one the model scores
    highest, so P(pick j) = F(j)^h - F(j-)^h with F the law's cumulative over items in increasing
    order of their score."""
    n = 1500
    got, scores = _drawn_negatives(0.5, hard, n)
    law = _COUNTS.astype(float) ** 0.5
    law[0] = 0.0
    law /= law.sum()
    order = np.argsort(scores)
    assert np.all(np.diff(scores[order]) > 0.05)  # no near-ties
    F = np.cumsum(law[order])
    want = np.empty_like(law)
    want[order] = F**hard - np.r_[0.0, F[:-1]] ** hard
    stat, df = _chi2(got, want)
    assert stat < _chi2_bound(df), (stat, got, np.round(n * want))
    # and it differs from plain draws (the test can tell them apart)
    plain, _ = _chi2(got, law)
    assert plain > _chi2_bound(df), plain


@pytest.mark.parametrize("kind", ["fm", "ffm"])
@pytest.mark.parametrize("loss,hard", [("logistic", 1), ("logistic", 3), ("bpr", 2)])
def test_draws_made_ahead_equal_draws_made_on_the_spot(rng, kind, loss, hard):
    """In a long epoch the prefetch stages draw each event's cold-start swaps and negatives ten
    events early (EventDraws), so that the negatives' rows are prefetched too; an epoch of one
    event draws them on the spot. Training the same events in the same order, as one epoch or as
    one-event epochs, gives the same weights bit for bit (one thread: the same updates in the same
    order, so the same draws)."""
    users, items, events, schema = _toy(rng, label=False, history=True, n_events=120)
    inter = Interactions(
        users,
        items,
        events,
        schema,
        negatives=3,
        alpha=0.5,
        hard_negatives=hard,
        history="history",
        cold_start={"item_id": 0.3, "age": 0.3},
    )
    a, b = (_make(kind, schema, loss=loss, epochs=1, seed=5).fit(inter) for _ in range(2))
    fd = inter.core()
    order = rng.permutation(len(events)).astype(np.int64)
    code = _core.Loss.__members__[loss]
    args = (code, 3, hard, 17, 0.05, 1e-4, 1e-4, 1)
    a._core.train_factored(fd, order, *args)
    for e in order:
        b._core.train_factored(fd, np.array([e], np.int64), *args)
    wa, wb = a._core.get_weights(), b._core.get_weights()
    moved = _make(kind, schema, loss=loss, epochs=1, seed=5).fit(inter)._core.get_weights()
    assert not np.array_equal(wa["linear"], moved["linear"])  # the epoch trained something
    for key, x in wa.items():
        if isinstance(x, np.ndarray):
            np.testing.assert_array_equal(x, wb[key], err_msg=key)
        else:
            assert x == wb[key], key


# ---------------------------------------------------------------------------- BPR gradient
def _bpr_world(rng, kind):
    """One user, one event (item A, hour 2), two items: with exclude_positives the negative is B.
    A and B share the tag "t" (its gradients from the two rows partly cancel)."""
    users = pd.DataFrame({"user_id": ["u"], "age": ["mid"]})
    items = pd.DataFrame({"item_id": ["A", "B"], "tags": [["t", "a1", "a2"], ["t", "b1"]], "price": [2.0, 7.0]})
    events = pd.DataFrame({"user_id": ["u"], "item_id": ["A"], "hour": [2]})
    schema = Schema(
        [
            Categorical("user_id", "user"),
            Categorical("age", "user"),
            Categorical("hour", "context"),
            Categorical("item_id", "item"),
            MultiCategorical("tags", "item"),
            Numeric("price", "item"),
        ]
    )
    schema.fit([users, items, events, pd.DataFrame({"price": [1.0, 3.0, 9.0]})])
    inter = Interactions(users, items, events, schema, negatives=1)
    nf, F = schema.n_features, schema.n_fields
    hyper = dict(loss="bpr", learning_rate=1e-2, reg_linear=0.0, reg_factors=0.0, threads=1)
    if kind in ("fm", "ffm"):
        w = random_weights(rng, kind, nf, F, 3, scale=0.4)
        model = (
            fmrecall.FM.from_weights(w, n_fields=F, **hyper) if kind == "fm" else fmrecall.FFM.from_weights(w, **hyper)
        )
        params = ref.make_params(
            w["bias"], w["linear"], **({"v": w["factors"]} if kind == "fm" else {"W": w["factors"]})
        )
        aware = ref.fm_aware(F) if kind == "fm" else ref.ffm_aware(F)
    else:
        w = random_hybrid_weights(rng, nf, F, 3, scale=0.4)
        model = fmrecall.HybridFM.from_weights(w, sides=schema.sides, field_aware=kind.split("-")[1], **hyper)
        params = hybrid_ref_params(w)
        aware = aware_flags(schema.sides.to_dict(), kind.split("-")[1], F)
    joined = _joined_frame(users, items, events)
    pos = schema.transform(joined)
    neg = schema.transform(joined.assign(item_id="B", tags=[["t", "b1"]], price=7.0))
    rows = [ref.dataset_row(d, 0, nf, F) for d in (pos, neg)]
    return model, inter, params, aware, rows, w


def _model_params(kind, model):
    w = model.weights()
    if kind == "fm":
        return ref.make_params(w["bias"], w["linear"], v=w["factors"])
    if kind == "ffm":
        return ref.make_params(w["bias"], w["linear"], W=w["factors"])
    return hybrid_ref_params(w)


@pytest.mark.parametrize("kind", KINDS)
def test_bpr_step_matches_finite_differences(rng, kind):
    """One BPR step (partial_fit) with fresh AdaGrad accumulators (G = 1) and no L2 moves every
    parameter by Δ = -lr g / sqrt(1 + g²), g = d/dθ log(1 + exp(-(s+ - s-))) summed over both rows
    (one exact step per pair). Recover g from Δ; compare with central differences of the float64
    reference."""
    model, inter, p0, aware, (rp, rn), w = _bpr_world(rng, kind)
    lr = 1e-2

    def objective(p):
        d = ref.score(p, aware, *rp) - ref.score(p, aware, *rn)
        return float(np.logaddexp(0.0, -d))

    h = 1e-6
    fd = {}
    for name in ("bias", "linear", "v", "W"):
        if p0[name] is None:
            continue
        if name == "bias":
            q = copy.deepcopy(p0)
            q["bias"] += h
            up = objective(q)
            q["bias"] -= 2 * h
            fd["bias"] = (up - objective(q)) / (2 * h)
            continue
        arr = p0[name]
        g = np.zeros_like(arr)
        # only entries of features in the two rows can have a gradient
        feats = np.unique(np.r_[rp[1], rn[1]])
        for j in feats:
            for idx in np.ndindex(arr.shape[1:]):
                q = copy.deepcopy(p0)
                q[name][(j,) + idx] += h
                up = objective(q)
                q[name][(j,) + idx] -= 2 * h
                g[(j,) + idx] = (up - objective(q)) / (2 * h)
        fd[name] = g
    model.partial_fit(inter)
    p1 = _model_params(kind, model)

    assert ref.adagrad_gradient(p1["bias"] - p0["bias"], lr) == pytest.approx(
        0.0, abs=1e-6
    )  # the bias cancels in s+ - s-
    assert fd["bias"] == pytest.approx(0.0, abs=1e-8)
    for name in ("linear", "v", "W"):
        if name not in fd:
            continue
        np.testing.assert_allclose(
            ref.adagrad_gradient(p1[name] - p0[name], lr), fd[name], rtol=1e-3, atol=2e-4, err_msg=name
        )
    # the pair really exercised interaction gradients, including the shared tag's partial cancellation
    big = sum(np.count_nonzero(np.abs(fd[n]) > 1e-3) for n in ("v", "W") if n in fd)
    assert big >= 10
    # reported loss of the step is the BPR loss at the initial weights
    assert model.history_[-1]["train_loss"] == pytest.approx(objective(p0), rel=1e-5)


def test_bpr_learns_to_rank(rng):
    """Users only interact with items of their favourite category: BPR training raises the pairwise
    AUC (positive vs sampled negative) from ~0.5 to near its ceiling."""
    users, items, _, schema = _toy(rng, label=False, context=False, n_users=30, n_items=40)
    fav = rng.choice(["x", "y", "z"], len(users))
    ev = [(u, i) for u, f in zip(users.user_id, fav) for i in items.item_id[items.cat == f]]
    events = pd.DataFrame(ev, columns=["user_id", "item_id"]).sample(frac=0.7, random_state=0)
    schema = Schema([Categorical("user_id", "user"), Categorical("item_id", "item"), Categorical("cat", "item")]).fit(
        [users, items, events]
    )
    inter = Interactions(users, items, events, schema, negatives=2)
    m = _make("fm", schema, loss="bpr", epochs=12, learning_rate=0.1, patience=None).fit(inter, valid=inter)
    aucs = [h["valid_auc"] for h in m.history_]
    # the evaluation negatives are not filtered, a third of them are from the favourite category:
    # ~0.83 is the ceiling here; an untrained model is at ~0.5
    untrained = _make("fm", schema, loss="bpr", epochs=1, learning_rate=1e-9).fit(inter, valid=inter)
    assert untrained.history_[-1]["valid_auc"] < 0.65
    assert aucs[-1] > 0.78, aucs


# ---------------------------------------------------------------------------- determinism
@pytest.mark.parametrize("kind", ["fm", "hybrid-item"])
def test_implicit_training_is_deterministic_with_one_thread(rng, kind):
    users, items, events, schema = _toy(rng, label=False, history=True)

    def make():
        return Interactions(
            users,
            items,
            events,
            schema,
            negatives=2,
            alpha=0.5,
            hard_negatives=2,
            history="history",
            cold_start={"item_id": 0.2},
        )

    a = _make(kind, schema, seed=5).fit(make())
    b = _make(kind, schema, seed=5).fit(make())
    for key, x in a.weights().items():
        if x is not None:
            np.testing.assert_array_equal(np.asarray(x), np.asarray(b.weights()[key]), err_msg=key)
    c = _make(kind, schema, seed=6).fit(make())
    assert not np.array_equal(a.weights()["linear"], c.weights()["linear"])
    for loss in ("bpr", "logistic"):
        x = _make(kind, schema, seed=1, loss=loss).fit(make())
        y = _make(kind, schema, seed=1, loss=loss).fit(make())
        np.testing.assert_array_equal(x.weights()["linear"], y.weights()["linear"])


# ---------------------------------------------------------------------------- errors
def test_interactions_errors(rng):
    users, items, events, schema = _toy(rng)
    dup_users = pd.concat([users, users.iloc[[3]]], ignore_index=True)
    with pytest.raises(ValueError, match="duplicate key 'u3'"):
        Interactions(dup_users, items, events, schema, label="y")
    dup_items = pd.concat([items, items.iloc[[2]]], ignore_index=True)
    with pytest.raises(ValueError, match=r"duplicate key .*102"):
        Interactions(users, dup_items, events, schema, label="y")
    bad = events.copy()
    bad.loc[5, "user_id"] = "ghost"
    with pytest.raises(ValueError, match="'ghost' is not in the user"):
        Interactions(users, items, bad, schema, label="y")
    bad = events.copy()
    bad.loc[7, "item_id"] = 4242
    with pytest.raises(ValueError, match=r"4242\)? is not in the item"):
        Interactions(users, items, bad, schema, label="y")
    with pytest.raises(ValueError, match="key column 'uid'"):
        Interactions(users, items, events, schema, user_key="uid", label="y")
    with pytest.raises(ValueError, match="label column 'clicked'"):
        Interactions(users, items, events, schema, label="clicked")
    nan = events.assign(y=events.y.where(events.index != 4, np.nan))
    with pytest.raises(ValueError, match="not finite"):
        Interactions(users, items, nan, schema, label="y")
    for kw in (
        {"negatives": -1},
        {"alpha": -0.5},
        {"hard_negatives": 0},
        {"history": "item_id"},
        {"history": "price"},
        {"history": "nope"},
        {"cold_start": {"price": 0.1}},
        {"cold_start": {"item_id": 1.5}},
    ):
        with pytest.raises((ValueError, KeyError)):
            Interactions(users, items, events, schema, label="y", **kw)
    implicit = Interactions(users, items, events.drop(columns="y"), schema)
    with pytest.raises(ValueError, match="bpr"):
        _make("fm", schema, loss="bpr").fit(implicit)
    with pytest.raises(ValueError, match="bpr"):
        _make("fm", schema, loss="bpr").fit(Interactions(users, items, events, schema, label="y"))
    with pytest.raises(ValueError, match="squared|logistic"):
        _make("fm", schema, loss="squared").fit(Interactions(users, items, events, schema, negatives=2))
    with pytest.raises(ValueError, match="labels nor negatives"):
        _make("fm", schema).fit(implicit)
    with pytest.raises(ValueError, match="bpr"):
        _make("fm", schema, loss="bpr").fit(Interactions(users, items, events, schema, label="y").materialize())
    with pytest.raises(TypeError):
        implicit.with_events(events, label="y", history="x")


# ---------------------------------------------------------------------------- grow=True (daily updates)
@pytest.mark.parametrize("kind", ["fm", "hybrid-item"])
def test_grow_adds_new_users_items_and_history_values(rng, kind):
    """Interactions(..., grow=True) grows the schema it is given (Schema.partial_fit) before encoding:
    a new user and a new item get features after the old ones, the history field lists the new
    item under its new feature (and leaves it out of its own event's row), cold_start keeps the
    reserved unseen value of the original range. Training on it equals training on its rows."""
    users, items, events, schema = _toy(rng, history=True, label=False)
    model = _make(kind, schema).fit(Interactions(users, items, events, schema, negatives=2, history="history"))
    n0 = schema.n_features
    new_item = pd.DataFrame({"item_id": [500], "cat": ["w"], "tags": [["a", "g"]], "price": [7.0]})
    new_user = pd.DataFrame({"user_id": ["new"], "age": ["mid"], "history": [[500, 101]]})
    new_events = pd.DataFrame({"user_id": ["new", "new", "u1"], "item_id": [500, 101, 500], "hour": [1, 2, 1]})
    users2 = pd.concat([users, new_user], ignore_index=True)
    users2.loc[users2.user_id == "u1", "history"] = pd.Series(
        [sorted(users.history[1]) + [500]], index=users2.index[users2.user_id == "u1"]
    )
    items2 = pd.concat([items, new_item], ignore_index=True)
    events2 = pd.concat([events, new_events], ignore_index=True)
    unseen = Interactions(users2, items2, events2, copy.deepcopy(schema), negatives=2, history="history")
    assert unseen.schema.n_features == n0  # without grow: new values are the reserved unseen feature
    s = copy.deepcopy(schema)
    inter = Interactions(
        users2, items2, events2, s, negatives=2, history="history", grow=True, cold_start={"item_id": 0.2}
    )
    assert inter.schema is s
    assert [s.describe(j) for j in range(n0, s.n_features)] == [
        "user_id='new'",
        "history=500",
        "item_id=500",
        "cat='w'",
        "tags='g'",
    ]
    hist = s.index("history")
    j500 = int(s.feature(hist, 2 + s.field("history").vocab.index(500)))
    assert j500 >= n0 and s.describe(j500) == "history=500"
    assert inter.hist_feat[inter.item_ids.get_loc(500)] == j500
    assert inter._cold == [(s.index("item_id"), int(s.offsets[s.index("item_id")]), 0.2)]
    ds = inter.materialize()
    for r in range(len(events), len(events2)):
        lo, hi = int(ds.indptr[r]), int(ds.indptr[r + 1])
        hist_nodes = [s.describe(int(j)) for f, j in zip(ds.fields[lo:hi], ds.features[lo:hi]) if f == hist]
        own = events2.item_id[r]
        assert f"history={own!r}" not in hist_nodes
        full = users2.history[users2.user_id == events2.user_id[r]].iloc[0]
        assert sorted(hist_nodes) == sorted(f"history={h!r}" for h in full if h != own)
    # partial_fit on the factored data equals partial_fit on the materialised rows (same growth, one step)
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    inter_l = Interactions(users2, items2, events2.assign(y=1.0), copy.deepcopy(s), label="y", history="history")
    b.schema_ = None  # a Dataset carries no schema; compare the weights only
    a.partial_fit(inter_l)
    b.partial_fit(inter_l.materialize())
    assert a.n_features_ == b.n_features_ == s.n_features
    _assert_same_weights(a, b)


def test_grow_must_be_a_bool(rng):
    users, items, events, schema = _toy(rng)
    with pytest.raises(ValueError, match="grow must be True or False"):
        Interactions(users, items, events, schema, label="y", grow="yes")


# ---------------------------------------------------------------------------- the default value scale
@pytest.mark.parametrize("kind", KINDS)
def test_default_value_scale_keeps_the_split_exact(rng, kind):
    """normalize="mean" (the default) on rows with a context field, a multi-valued and a real-valued
    item field: the scale is the reference's 1/sqrt(mean ||x||^2) of the joined training rows, and
    b_q + <q, p> equals decision_function on the joined rows (1e-5 relative) and the reference score."""
    from helpers import dataset_rows, keep_fields, ref_params_and_aware, rows_dataset

    users, items, events, schema = _toy(rng)
    inter = Interactions(users, items, events, schema, label="y")
    model = _make(kind, schema, learning_rate=0.5, k=5).set_params(normalize="mean").fit(inter)
    joined = inter.materialize()
    rows = dataset_rows(joined)
    scale = ref.value_scale(rows)
    assert scale < 0.6 and model.scale_ == pytest.approx(scale, rel=1e-6)
    n, F = model.n_features_, model.n_fields_
    side_of = [schema.field(f.name).side for f in schema.fields]
    query = [f for f in range(F) if side_of[f] != "item"]
    item = [f for f in range(F) if side_of[f] == "item"]
    split = model.split(schema.sides) if not kind.startswith("hybrid") else model.split()
    q, b = split.query_vectors(rows_dataset([keep_fields(r, query) for r in rows], n_features=n, n_fields=F))
    p = split.item_vectors(rows_dataset([keep_fields(r, item) for r in rows], n_features=n, n_fields=F))
    got = b.astype(np.float64) + np.einsum("ij,ij->i", q.astype(np.float64), p.astype(np.float64))
    want = model.decision_function(joined).astype(np.float64)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * max(1.0, float(np.abs(want).max())))
    sd = {s: [f for f in range(F) if side_of[f] == s] for s in ("user", "context", "item")}
    params, aware = ref_params_and_aware(kind, model.weights(), F, sd)
    for r in range(0, len(rows), 15):
        f, j, x = ref.row_nodes(*rows[r], n, F, scale=scale)
        assert got[r] == pytest.approx(ref.score(params, aware, f, j, x), rel=1e-5, abs=1e-5)
