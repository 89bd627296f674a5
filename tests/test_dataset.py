"""fmrecall.Dataset: construction, zero copy, validation, subset / split, libffm round trip."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import random_dataset, random_rows

import fmrecall

Dataset = fmrecall.Dataset


def _small():
    # row 0: 3 nodes, row 1: 0 nodes, row 2: 2 nodes
    indptr = np.array([0, 3, 3, 5], dtype=np.int64)
    fields = np.array([2, 0, 2, 1, 0], dtype=np.int32)
    features = np.array([7, 1, 8, 4, 0], dtype=np.int32)
    values = np.array([0.5, 1.0, -2.0, 3.0, 0.25], dtype=np.float32)
    labels = np.array([1.0, 0.0, 1.0], dtype=np.float32)
    return indptr, fields, features, values, labels


def _rows(ds):
    """Rows as tuples (label, ((field, feature, value), ...)) for content comparisons."""
    vals = ds.values_or_ones()
    out = []
    for r in range(ds.n_rows):
        s, e = ds.indptr[r], ds.indptr[r + 1]
        lab = None if ds.labels is None else float(ds.labels[r])
        out.append((lab, tuple(zip(ds.fields[s:e].tolist(), ds.features[s:e].tolist(), vals[s:e].tolist()))))
    return out


# ---------------------------------------------------------------------------- construction
@pytest.mark.parametrize("ctor", ["init", "from_arrays"])
def test_zero_copy_when_dtypes_match(ctor):
    indptr, fields, features, values, labels = _small()
    make = Dataset if ctor == "init" else Dataset.from_arrays
    ds = make(indptr, fields, features, values, labels)
    for got, given in (
        (ds.indptr, indptr),
        (ds.fields, fields),
        (ds.features, features),
        (ds.values, values),
        (ds.labels, labels),
    ):
        assert np.shares_memory(got, given)


def test_attributes_and_inferred_sizes():
    indptr, fields, features, values, labels = _small()
    ds = Dataset.from_arrays(indptr, fields, features, values, labels)
    assert ds.n_rows == 3 and len(ds) == 3
    assert ds.nnz == 5
    assert ds.n_features == 9  # max feature index 8, plus one
    assert ds.n_fields == 3
    assert ds.indptr.dtype == np.int64 and ds.fields.dtype == np.int32 and ds.features.dtype == np.int32
    assert ds.values.dtype == np.float32 and ds.labels.dtype == np.float32
    big = Dataset.from_arrays(indptr, fields, features, values, labels, n_features=100, n_fields=7)
    assert (big.n_features, big.n_fields) == (100, 7)


def test_other_dtypes_are_converted():
    indptr, fields, features, values, labels = _small()
    ds = Dataset(
        indptr.tolist(), fields.astype(np.int64), features.tolist(), values.astype(np.float64), labels.tolist()
    )
    assert ds.indptr.dtype == np.int64 and ds.fields.dtype == np.int32 and ds.features.dtype == np.int32
    assert ds.values.dtype == np.float32 and ds.labels.dtype == np.float32
    np.testing.assert_array_equal(ds.features, features)
    np.testing.assert_array_equal(ds.values, values)


def test_values_none_means_ones():
    indptr, fields, features, _, labels = _small()
    ds = Dataset(indptr, fields, features, None, labels)
    assert ds.values is None
    ones = ds.values_or_ones()
    assert ones.dtype == np.float32 and ones.shape == (5,)
    np.testing.assert_array_equal(ones, 1.0)
    with_values = Dataset(indptr, fields, features, np.full(5, 0.5, np.float32), labels)
    np.testing.assert_array_equal(with_values.values_or_ones(), 0.5)


def test_labels_optional():
    indptr, fields, features, values, _ = _small()
    ds = Dataset(indptr, fields, features, values)
    assert ds.labels is None
    assert ds.n_rows == 3


def test_empty_dataset():
    ds = Dataset(np.zeros(1, np.int64), np.zeros(0, np.int32), np.zeros(0, np.int32))
    assert ds.n_rows == 0 and ds.nnz == 0
    assert ds.n_features == 0 and ds.n_fields == 0


# ---------------------------------------------------------------------------- validation
def _bad(**change):
    indptr, fields, features, values, labels = _small()
    args = dict(indptr=indptr, fields=fields, features=features, values=values, labels=labels)
    kw = {k: change.pop(k) for k in list(change) if k in ("n_features", "n_fields")}
    args.update(change)
    return args, kw


@pytest.mark.parametrize(
    "change, pattern",
    [
        (dict(features=np.array([7, 1, -3, 4, 0], np.int32)), r"features\[2\]"),
        (dict(fields=np.array([2, -1, 2, 1, 0], np.int32)), r"fields\[1\]"),
        (dict(features=np.array([7, 1, 8, 2**31, 0], np.int64)), r"features\[3\]"),
        (dict(values=np.array([0.5, 1.0, -2.0, np.nan, 0.25], np.float32)), r"values\[3\]"),
        (dict(values=np.array([0.5, np.inf, -2.0, 1.0, 0.25], np.float32)), r"values\[1\]"),
        (dict(labels=np.array([1.0, np.nan, 0.0], np.float32)), r"labels\[1\]"),
        (dict(indptr=np.array([0, 4, 3, 5], np.int64)), r"indptr.*\b1\b"),
        (dict(indptr=np.array([0, 3, 3, 4], np.int64)), r"indptr"),
        (dict(indptr=np.array([1, 3, 3, 5], np.int64)), r"indptr"),
        (dict(fields=np.array([2, 0, 2, 1], np.int32)), r"fields"),
        (dict(values=np.array([0.5, 1.0, -2.0, 3.0], np.float32)), r"values"),
        (dict(labels=np.array([1.0, 0.0], np.float32)), r"labels"),
        (dict(n_features=8), r"n_features.*\b8\b"),
        (dict(n_fields=2), r"n_fields.*\b2\b"),
    ],
    ids=[
        "neg-feature",
        "neg-field",
        "feature-2^31",
        "nan-value",
        "inf-value",
        "nan-label",
        "indptr-decreasing",
        "indptr-end",
        "indptr-start",
        "fields-length",
        "values-length",
        "labels-length",
        "n_features-small",
        "n_fields-small",
    ],
)
def test_invalid_arrays_raise_naming_array_and_index(change, pattern):
    args, kw = _bad(**change)
    with pytest.raises(ValueError, match=pattern):
        Dataset(args["indptr"], args["fields"], args["features"], args["values"], args["labels"], **kw)
    with pytest.raises(ValueError, match=pattern):
        Dataset.from_arrays(args["indptr"], args["fields"], args["features"], args["values"], args["labels"], **kw)


def test_non_integer_indices_rejected():
    indptr, fields, features, values, labels = _small()
    with pytest.raises(ValueError, match="features"):
        Dataset(indptr, fields, features + 0.5, values, labels)


# ---------------------------------------------------------------------------- subset / split
def test_subset_indices_order_repeats_negative():
    ds = Dataset(*_small())
    sub = ds.subset([2, 0, 2, -2])
    rows = _rows(ds)
    assert _rows(sub) == [rows[2], rows[0], rows[2], rows[1]]
    assert (sub.n_features, sub.n_fields) == (ds.n_features, ds.n_fields)
    assert sub.indptr[0] == 0 and sub.indptr[-1] == sub.nnz


def test_subset_mask_and_empty():
    ds = Dataset(*_small())
    sub = ds.subset(np.array([True, False, True]))
    assert _rows(sub) == [_rows(ds)[0], _rows(ds)[2]]
    empty = ds.subset(np.array([], dtype=np.int64))
    assert empty.n_rows == 0 and empty.nnz == 0
    with pytest.raises(ValueError):
        ds.subset(np.array([True, False]))
    with pytest.raises(IndexError):
        ds.subset([3])


def test_subset_keeps_values_none_and_labels_none():
    indptr, fields, features, _, _ = _small()
    ds = Dataset(indptr, fields, features)
    sub = ds.subset([2, 0])
    assert sub.values is None and sub.labels is None
    np.testing.assert_array_equal(sub.features, [4, 0, 7, 1, 8])


def test_subset_random_matches_rowwise(rng):
    ds = random_dataset(rng, n_rows=60)
    pick = rng.integers(0, ds.n_rows, size=40)
    rows = _rows(ds)
    assert _rows(ds.subset(pick)) == [rows[i] for i in pick]


def test_split_partitions_rows(rng):
    ds = random_dataset(rng, n_rows=101)
    # tag each row by its label so rows can be identified after the split
    ds.labels[:] = np.arange(ds.n_rows, dtype=np.float32)
    a, b = ds.split(0.8, seed=3)
    assert a.n_rows == 81 and b.n_rows == 20
    ids_a, ids_b = a.labels.astype(int), b.labels.astype(int)
    assert set(ids_a).isdisjoint(ids_b)
    assert sorted(np.concatenate([ids_a, ids_b]).tolist()) == list(range(101))
    rows = _rows(ds)
    assert _rows(a) == [rows[i] for i in ids_a]
    assert _rows(b) == [rows[i] for i in ids_b]
    # seeded: same seed same split, another seed another split
    a2, _ = ds.split(0.8, seed=3)
    np.testing.assert_array_equal(a2.labels, a.labels)
    a3, _ = ds.split(0.8, seed=4)
    assert not np.array_equal(np.sort(a3.labels), np.sort(a.labels))


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_split_rejects_bad_fraction(fraction):
    with pytest.raises(ValueError):
        Dataset(*_small()).split(fraction, seed=0)


# ---------------------------------------------------------------------------- libffm round trip
def test_to_libffm_round_trip_is_exact(rng, tmp_path):
    indptr, fields, features, values = random_rows(rng, 40, 30, 4)
    # awkward floats: tiny, huge, negative, many digits, subnormal
    values[:5] = np.array([1e-30, 3.0e38, -7.123456789, 1.0 / 3.0, 1e-40], dtype=np.float32)
    labels = rng.normal(size=40).astype(np.float32)
    labels[0], labels[1] = -1.0, 0.1
    ds = Dataset(indptr, fields, features, values, labels)
    path = tmp_path / "rt.ffm"
    ds.to_libffm(path)
    back = Dataset.from_libffm(path)
    for name in ("indptr", "fields", "features", "values", "labels"):
        np.testing.assert_array_equal(getattr(back, name), getattr(ds, name), err_msg=name)
        assert getattr(back, name).dtype == getattr(ds, name).dtype
    assert (back.n_features, back.n_fields) == (ds.n_features, ds.n_fields)


def test_to_libffm_round_trip_one_hot_and_empty_rows(tmp_path):
    indptr, fields, features, _, labels = _small()
    ds = Dataset(indptr, fields, features, None, labels)
    path = tmp_path / "onehot.ffm"
    ds.to_libffm(str(path))
    back = Dataset.from_libffm(str(path))
    assert back.values is None
    assert back.n_rows == 3  # the middle row has no nodes but is still a row
    np.testing.assert_array_equal(back.indptr, indptr)
    np.testing.assert_array_equal(back.features, features)
    np.testing.assert_array_equal(back.fields, fields)
    np.testing.assert_array_equal(back.labels, labels)


# ---------------------------------------------------------------------------- no silent truncation / wrap
@pytest.mark.parametrize(
    "change, pattern",
    [
        (dict(indptr=np.array([0, 2.7, 3, 5])), r"indptr\[1\] = 2\.7 is not an integer"),
        (dict(indptr=np.array([0, 3, np.nan, 5])), r"indptr\[2\] = nan is not an integer"),
        (dict(indptr=np.array([0, 3, 3, 2**64 - 1], np.uint64)), r"indptr\[3\] = \d+ is out of range"),
        (dict(indptr=np.array(["0", "3", "3", "5"])), r"indptr must be integers"),
        (dict(fields=np.array([2, 0, 2, 2**32, 0], np.int64)), r"fields\[3\] = 4294967296 is out of range"),
        (dict(features=np.array([7, 1, 2**32, 4, 0], np.int64)), r"features\[2\] = 4294967296 is out of range"),
        (dict(features=np.array([7, 1, 2**32, 4, 0], np.uint64)), r"features\[2\] = 4294967296 is out of range"),
        (dict(features=np.array([7, 1, 8.5, 4, 0])), r"features\[2\] = 8\.5 is not an integer"),
        (dict(fields=np.array([2, 0, 2, 1, 0], np.float32) + 0.25), r"fields\[0\] = 2\.25 is not an integer"),
        (dict(n_features=9.5), r"n_features must be an integer"),
        (dict(n_features=2**32), r"n_features=4294967296 is out of range"),
        (dict(n_fields=True), r"n_fields must be an integer"),
    ],
    ids=[
        "indptr-float",
        "indptr-nan",
        "indptr-uint64-wrap",
        "indptr-str",
        "fields-2^32",
        "features-2^32",
        "features-uint64",
        "features-float",
        "fields-float",
        "n_features-float",
        "n_features-2^32",
        "n_fields-bool",
    ],
)
def test_non_integers_and_wrapping_values_are_rejected(change, pattern):
    args, kw = _bad(**change)
    with pytest.raises(ValueError, match=pattern):
        Dataset.from_arrays(args["indptr"], args["fields"], args["features"], args["values"], args["labels"], **kw)


def test_integral_floats_still_accepted():
    indptr, fields, features, values, labels = _small()
    ds = Dataset.from_arrays(
        indptr.astype(float), fields.astype(float), features.astype(float), values, labels, n_features=np.int64(9)
    )
    np.testing.assert_array_equal(ds.indptr, indptr)
    np.testing.assert_array_equal(ds.features, features)
    assert ds.n_features == 9


@pytest.mark.parametrize(
    "fields, pattern",
    [
        ([(0, 1.5), (1.5, 3)], r"fields: range bounds must be integers"),
        ([(0, 3), (3, float("nan"))], r"fields: range bounds must be integers"),
        ([(0, 3), (3, 2**32)], r"fields: range ends must be <= 2\^31"),
        (np.array([0, 0, 1.5]), r"fields: a feature -> field array must be integers"),
        (np.array([0, 2**32, 1], np.int64), r"fields: field_of_feature entries must be in \[-1, 2\^31\)"),
        (np.array([0, -2, 1]), r"fields: field_of_feature entries must be in \[-1, 2\^31\)"),
    ],
    ids=["float-ranges", "nan-range", "range-2^32", "float-map", "map-2^32", "map-neg"],
)
def test_libsvm_fields_reject_non_integers_and_wrap(tmp_path, fields, pattern):
    path = tmp_path / "d.txt"
    path.write_text("1 0:1 2:1\n")
    with pytest.raises(ValueError, match=pattern):
        Dataset.from_libsvm(path, fields)
    assert Dataset.from_libsvm(path, [(0.0, 2.0), (2.0, 3.0)]).n_fields == 2  # integral floats are fine


# ---------------------------------------------------------------------------- several paths
def test_several_paths_concatenate(tmp_path):
    a, b = tmp_path / "a.ffm", tmp_path / "b.ffm"
    a.write_text("1 0:1:1 1:5:1\n0 0:2:1\n")
    b.write_text("0\n1 1:3:0.5 2:7:1\n")
    ds = Dataset.from_libffm([a, b, a])
    np.testing.assert_array_equal(ds.indptr, [0, 2, 3, 3, 5, 7, 8])
    np.testing.assert_array_equal(ds.features, [1, 5, 2, 3, 7, 1, 5, 2])
    np.testing.assert_array_equal(ds.values, np.array([1, 1, 1, 0.5, 1, 1, 1, 1], np.float32))
    np.testing.assert_array_equal(ds.labels, [1, 0, 0, 1, 1, 0])
    one_hot = Dataset.from_libffm([a, a])
    assert one_hot.values is None and one_hot.n_rows == 4
    with pytest.raises(ValueError, match="no paths"):
        Dataset.from_libffm([])
    bad = tmp_path / "bad.ffm"
    bad.write_text("1 0:1:1\n1 0:x:1\n")
    with pytest.raises(ValueError, match=f"{bad}:2:"):
        Dataset.from_libffm([a, bad])


# ---------------------------------------------------------------------------- Ctrl-C during fit
def test_keyboard_interrupt_during_fit_keeps_the_previous_model(monkeypatch):
    """fit trains in Python-level chunks of _CHUNK_ROWS rows: a SIGINT between chunks raises
    KeyboardInterrupt out of fit, and the model keeps (and predicts with) its previous weights."""
    import signal

    import fmrecall.training as models  # _CHUNK_ROWS: the training loop's chunk size

    ds = random_dataset(np.random.default_rng(3), 400, n_features=50, n_fields=4)
    model = fmrecall.FM(4, epochs=2, threads=1, seed=1).fit(ds)
    before, gen = model.decision_function(ds), model.generation_
    monkeypatch.setattr(models, "_CHUNK_ROWS", 64)
    real = model._train_part
    calls = []

    def part(*args):
        calls.append(1)
        if len(calls) == 3:
            signal.raise_signal(signal.SIGINT)  # the default handler raises KeyboardInterrupt here
        return real(*args)

    monkeypatch.setattr(model, "_train_part", part)
    # Python's own handler: a shell that starts the tests in the background has SIGINT ignored, and
    # Python then leaves it ignored (the signal would be lost, not turned into KeyboardInterrupt)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            model.set_params(seed=2, epochs=3).fit(ds)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert len(calls) == 3
    np.testing.assert_array_equal(model.decision_function(ds), before)
    assert model.generation_ == gen
    monkeypatch.undo()
    model.fit(ds)  # still usable: a later fit works
    assert model.generation_ == gen + 1
