"""Latent vectors only for the features seen in training (FM and the single side of HybridFM, as
FFM already did): the row maps fit allocates, scores with unseen features against the numpy
reference and bit for bit against the dense layout with zero vectors, a hashed field with 2^20
buckets costing what its used buckets cost, partial_fit giving vectors to features that had none,
and the dense layout of earlier versions (weights and files) still loading."""

from __future__ import annotations

import io
import json
import pickle

import numpy as np
import pytest
import reference as ref
from helpers import aware_flags, one_row_dataset, random_dataset, ref_params_and_aware

import fmrecall
import fmrecall.persist
from fmrecall import FM, Categorical, Hashed, HybridFM, Interactions, Schema, Sides

pd = pytest.importorskip("pandas")

N, F, N_MODEL = 40, 5, 64  # training data: features < N; the model has N_MODEL (24 never seen)
SIDES = dict(user=[3], context=[0], item=[4, 1, 2])
KINDS = ["fm", "hybrid-item", "hybrid-query"]


def _make(kind, **hyper):
    # values as given (no value scale): the layout tests compare with files written before the scale existed
    hyper = dict(k=4, epochs=2, threads=1, seed=5, n_features=N_MODEL, normalize="none", **hyper)
    if kind == "fm":
        return FM(**hyper)
    return HybridFM(sides=Sides(**SIDES), field_aware=kind.split("-")[1], **hyper)


def _train(rng, kind):
    """A model fit on rows that leave some features out (every 4th below N, and all from N on)."""
    ds = random_dataset(rng, n_rows=150, n_features=N, n_fields=F)
    keep = ds.features % 4 != 1
    counts = np.add.reduceat(keep, ds.indptr[:-1])
    indptr = np.r_[0, np.cumsum(counts)].astype(np.int64)
    ds = fmrecall.Dataset(
        indptr, ds.fields[keep], ds.features[keep], ds.values[keep], ds.labels, n_features=N, n_fields=F
    ).subset(np.flatnonzero(counts > 0))
    return _make(kind).fit(ds), ds


def _single_features(kind, ds):
    """The features that occur in single fields of ds (numpy, from the data alone)."""
    if kind == "fm":
        return np.unique(ds.features)
    aware = aware_flags(SIDES, kind.split("-")[1], F)
    return np.unique(ds.features[~aware[ds.fields]])


@pytest.mark.parametrize("kind", KINDS)
def test_fit_gives_vectors_to_seen_features_only(rng, kind):
    model, ds = _train(rng, kind)
    w = model.weights()
    seen = _single_features(kind, ds)
    assert seen.size < N  # some features of the range were left out
    rows = w["single_row"]
    assert rows.dtype == np.int32 and rows.shape == (N_MODEL,) and w["linear"].shape == (N_MODEL,)
    assert w["factors"].shape == (seen.size, 4) and model._core.single_rows == seen.size
    np.testing.assert_array_equal(rows[seen], np.arange(seen.size))  # in feature order
    assert np.all(np.delete(rows, seen) == -1)
    assert not np.delete(w["linear"], np.unique(ds.features)).any()  # unseen: linear 0 too
    assert np.all(np.any(w["factors"] != 0, axis=1))  # every stored vector was drawn (and trained)


@pytest.mark.parametrize("kind", KINDS)
def test_unseen_features_score_like_zero_vectors(rng, kind):
    """Rows over all N_MODEL features (seen and unseen): the scores equal the float64 reference with
    zero vectors for the unseen features, and bit for bit those of the same model in the dense layout
    (a zero vector for every unseen feature, what earlier versions stored)."""
    model, _ = _train(rng, kind)
    w = model.weights()
    rows = random_dataset(rng, n_rows=60, n_features=N_MODEL, n_fields=F, labels=False)
    got = model.decision_function(rows)
    params, aware = ref_params_and_aware(kind, w, F, SIDES)
    for r in range(rows.n_rows):
        f, j, x = ref.dataset_row(rows, r, N_MODEL, F)
        want = ref.score(params, aware, f, j, x)
        scale = ref.score_terms_abs(params, aware, f, j, x)
        assert abs(float(got[r]) - want) <= 1e-5 * abs(want) + 1e-6 * scale, (r, float(got[r]), want)
    dense = {key: value for key, value in w.items() if key != "single_row"}
    dense["factors"] = ref.dense_single(w)
    hyper = dict(threads=1, n_fields=F) if kind == "fm" else dict(threads=1, sides=Sides(**SIDES))
    if kind != "fm":
        hyper["field_aware"] = kind.split("-")[1]
    twin = type(model).from_weights(dense, **hyper)
    assert twin.weights()["factors"].shape == (N_MODEL, 4)
    np.testing.assert_array_equal(twin.decision_function(rows), got)


def test_unseen_node_changes_the_score_by_its_linear_term_only(rng):
    """Written out without reference code: adding a node of a feature without a vector adds w_j x_j."""
    model, ds = _train(rng, "fm")
    w = model.weights()
    j0 = int(np.flatnonzero(w["single_row"] < 0)[0])
    w["linear"][j0] = 0.7
    model = FM.from_weights(w, n_fields=F, threads=1)
    base = one_row_dataset([0, 2], [5, 12], [1.0, 0.5], None, n_features=N_MODEL, n_fields=F)
    more = one_row_dataset([0, 2, 3], [5, 12, j0], [1.0, 0.5, 1.5], None, n_features=N_MODEL, n_fields=F)
    delta = float(model.decision_function(more)[0]) - float(model.decision_function(base)[0])
    assert delta == pytest.approx(0.7 * 1.5, rel=1e-6)


def test_hashed_field_costs_its_used_buckets(rng, tmp_path):
    """The README's Hashed("item_id", buckets=1 << 20): 2^20 features, vectors only for the used
    buckets; the model file holds n-sized linear weights and row map, not n vectors. A Recaller over
    it saves, loads and searches as before; pickling keeps the layout."""
    n_users, n_items = 40, 25
    users = pd.DataFrame({"user_id": np.arange(n_users)})
    items = pd.DataFrame({"item_id": np.arange(n_items) * 7919})
    events = pd.DataFrame({"user_id": rng.integers(0, n_users, 300), "item_id": rng.integers(0, n_items, 300) * 7919})
    schema = Schema([Categorical("user_id", "user"), Hashed("item_id", "item", buckets=1 << 20)])
    schema.fit([users, items, events])
    data = Interactions(users, items, events, schema, negatives=2, alpha=0.5)
    model = FM(k=8, epochs=1, threads=1, seed=0).fit(data)
    w = model.weights()
    assert model.n_features_ > 1 << 20
    used = np.unique(data.feature_nodes().features)
    assert w["factors"].shape == (used.size, 8) and used.size <= n_users + n_items + 4
    np.testing.assert_array_equal(np.flatnonzero(w["single_row"] >= 0), used)
    model.save(tmp_path / "m.npz")
    size = (tmp_path / "m.npz").stat().st_size
    assert size < 8.5 * 2**20  # linear (4 MiB) + single_row (4 MiB); dense vectors alone were 32 MiB
    again = pickle.loads(pickle.dumps(model))
    assert again.weights()["factors"].shape == w["factors"].shape
    rec = fmrecall.Recaller(model, schema).add_items(items, "item_id")
    rec.save(tmp_path / "rec")
    loaded = fmrecall.Recaller.load(tmp_path / "rec")
    queries = pd.DataFrame({"user_id": np.arange(10)})
    a, b = rec.search(queries, 5), loaded.search(queries, 5)
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.scores, b.scores)


@pytest.mark.parametrize("kind", KINDS)
def test_partial_fit_gives_vectors_to_features_fit_never_saw(rng, kind):
    """A feature of the model's range that fit's data lacked gets its vector when partial_fit's data
    holds it (in a single field): the row after the existing ones, drawn as a fit that had seen it
    would have drawn it, then trained. Existing rows do not move."""
    model, ds = _train(rng, kind)
    before = model.weights()
    seen = _single_features(kind, ds)
    single_field = 3 if kind != "hybrid-query" else 1  # a single field in either orientation
    new = one_row_dataset([single_field, 0], [1, 50], None, 1.0, n_features=N_MODEL, n_fields=F)
    assert 1 not in seen.tolist() and before["single_row"][1] == -1
    # the growth alone, on a copy: what partial_fit does before its epoch
    grown = pickle.loads(pickle.dumps(model))
    fmrecall.training.grow(grown, grown._core, new)
    m_old = before["factors"].shape[0]
    g = grown.weights()
    assert g["single_row"][1] == m_old
    fresh = fmrecall._core.Model(N_MODEL, F, 4, np.zeros(F, np.uint8), None, 0, model.init_std, model.seed, False)
    np.testing.assert_array_equal(g["factors"][m_old], fresh.get_weights()["v"][1])
    np.testing.assert_array_equal(g["factors"][:m_old], before["factors"])
    np.testing.assert_array_equal(g["single_row"][seen], before["single_row"][seen])
    # and partial_fit: the same rows, then one epoch moves the new vector
    model.partial_fit(new)
    w = model.weights()
    np.testing.assert_array_equal(w["single_row"], g["single_row"])
    assert not np.array_equal(w["factors"][m_old], g["factors"][m_old])


# ---------------------------------------------------------------------------- the dense layout of earlier versions
def _old_file(model, path):
    """A model file as fmrecall 0.1 wrote it: the same meta, dense "v" (n, k) with zero rows for the
    unseen features, no "single_row" member, and no checksums."""
    w = model.weights()
    meta = {
        "format": fmrecall.persist.MODEL_FORMAT,
        "version": 1,
        "class": type(model).__name__,
        "params": {k: v for k, v in fmrecall.persist._json_params(model).items() if k != "average"},  # 0.1 had none
        "fmrecall": "0.1.0",
        "n_features": int(w["linear"].size),
        "n_fields": F,
        "schema": None,
    }
    arrays = {"bias": np.asarray([w["bias"]], np.float32), "linear": w["linear"], "v": ref.dense_single(w)}
    if "field_factors" in w:
        arrays.update(W=w["field_factors"], aware_row=w["aware_row"])
    meta_bytes = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    np.savez(path, meta=meta_bytes, **arrays)
    return arrays


@pytest.mark.parametrize("kind", KINDS)
def test_dense_layout_files_still_load(rng, tmp_path, kind):
    model, ds = _train(rng, kind)
    arrays = _old_file(model, tmp_path / "old.npz")
    old = fmrecall.load(tmp_path / "old.npz")
    assert type(old) is type(model)
    assert old.average == 0.0  # its weights were not averaged (0.1 had no such parameter)
    rows = random_dataset(rng, n_rows=40, n_features=N_MODEL, n_fields=F, labels=False)
    got = old.decision_function(rows)
    np.testing.assert_array_equal(got, model.decision_function(rows))
    # against the reference on the file's own arrays
    aware = ref.fm_aware(F) if kind == "fm" else aware_flags(SIDES, kind.split("-")[1], F)
    W = None
    if kind != "fm":
        W = np.zeros((N_MODEL, F, 4))
        has = arrays["aware_row"] >= 0
        W[has] = arrays["W"][arrays["aware_row"][has]]
    params = ref.make_params(arrays["bias"][0], arrays["linear"], v=arrays["v"], W=W)
    for r in range(5):
        f, j, x = ref.dataset_row(rows, r, N_MODEL, F)
        assert float(got[r]) == pytest.approx(ref.score(params, aware, f, j, x), rel=1e-5, abs=1e-5)
    w = old.weights()  # dense: a row per feature, the identity map
    np.testing.assert_array_equal(w["factors"], arrays["v"])
    np.testing.assert_array_equal(w["single_row"], np.arange(N_MODEL))
    # it keeps working: partial_fit, save (still dense), load
    old.partial_fit(ds)
    buf = io.BytesIO()
    old.save(buf)
    buf.seek(0)
    again = fmrecall.load(buf)
    np.testing.assert_array_equal(again.decision_function(rows), old.decision_function(rows))


def test_from_weights_takes_both_layouts_and_checks_the_row_map(rng):
    model, _ = _train(rng, "fm")
    w = model.weights()
    rows = random_dataset(rng, n_rows=20, n_features=N_MODEL, n_fields=F, labels=False)
    dense = {"bias": w["bias"], "linear": w["linear"], "factors": ref.dense_single(w)}
    for given in (w, dense):
        np.testing.assert_array_equal(
            FM.from_weights(given, n_fields=F).decision_function(rows), model.decision_function(rows)
        )
    bad_cases = [
        ({**w, "single_row": w["single_row"][:-1]}, "single_row must have shape"),
        ({**w, "single_row": w["single_row"].astype(np.float32)}, "single_row must hold integers"),
        ({**w, "single_row": np.where(w["single_row"] == 0, w["factors"].shape[0], w["single_row"])}, "-1 or <"),
        ({**w, "single_row": np.where(w["single_row"] == 0, 1, w["single_row"])}, "two features the same row"),
        ({k: v for k, v in w.items() if k != "single_row"}, "factors has"),  # compact factors, no map
    ]
    for bad, match in bad_cases:
        with pytest.raises(ValueError, match=match):
            FM.from_weights(bad, n_fields=F)


def test_files_with_row_maps_are_format_version_2(rng, tmp_path):
    """A file with "single_row" is format version 2, which a reader of version 1 (fmrecall 0.1)
    refuses by name ("upgrade fmrecall"); files without one stay version 1 (FFM, dense models)."""
    model, _ = _train(rng, "fm")
    model.save(tmp_path / "fm.npz")
    _old_file(model, tmp_path / "old.npz")
    fmrecall.load(tmp_path / "old.npz").save(tmp_path / "dense.npz")
    fmrecall.FFM(k=2, epochs=1, threads=1).fit(random_dataset(rng, 20, N, F)).save(tmp_path / "ffm.npz")
    for name, version in (("fm", 2), ("dense", 1), ("ffm", 1)):
        meta, _ = fmrecall.persist.load_arrays(tmp_path / f"{name}.npz", fmrecall.persist.MODEL_FORMAT, 2)
        assert meta["version"] == version, name
    with pytest.raises(ValueError, match="fm.npz: format version 2 is newer .* upgrade fmrecall"):
        fmrecall.persist.load_arrays(tmp_path / "fm.npz", fmrecall.persist.MODEL_FORMAT, 1)
