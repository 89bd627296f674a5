"""Row::gather's one-hot pass (cpp/src/row.cc: one run, no values array, no instance normalisation,
at most 64 fields) builds the same row as its general pass. The same rows, given once without a
values array (the one-hot pass) and once with an explicit array of ones (always the general pass),
must give bit-identical weights after training and bit-identical scores, for every model kind, at
the default value scale (normalize="mean", scale != 1). The rows mix one node per field (the one-hot
pass throughout), a field met twice (the one-hot pass hands over to the general one midway), one
feature in two fields (shared parameters), features without vectors and ids outside the model.
Either pass against the numpy reference: tests/test_kernels.py (unit-value cases)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import random_rows

import fmrecall

N_SEEN, N_MODEL, N_WIDE, F = 40, 60, 70, 6  # trained on ids < 40; the model has 60; scored up to 70
KINDS = ["fm", "ffm", "hybrid-item"]


def _rows(rng, n_features: int):
    """CSR (indptr, fields, features) of one-hot rows, rows with a field met twice, and one-hot rows
    whose last node holds the first node's feature (a feature in two fields)."""
    parts = [
        random_rows(rng, 40, n_features, F, max_per_field=1, real_values=False),
        random_rows(rng, 15, n_features, F, max_per_field=2, field_prob=0.9, real_values=False),
    ]
    ip, f, j, _ = random_rows(rng, 10, n_features, F, max_per_field=1, field_prob=1.0, real_values=False)
    j = j.copy()
    j[ip[1:] - 1] = j[ip[:-1]]  # the last node of each row takes the row's first feature
    parts.append((ip, f, j, None))
    indptr = [np.zeros(1, np.int64)]
    for p in parts:
        indptr.append(p[0][1:] + indptr[-1][-1])
    return np.concatenate(indptr), np.concatenate([p[1] for p in parts]), np.concatenate([p[2] for p in parts])


def _pair(rng, n_features: int, labels: bool):
    """The same rows twice: without values and with values all 1."""
    indptr, fields, feats = _rows(rng, n_features)
    y = rng.integers(0, 2, indptr.size - 1).astype(np.float32) if labels else None
    kw = dict(n_features=n_features, n_fields=F)
    ones = np.ones(feats.size, np.float32)
    return (
        fmrecall.Dataset(indptr, fields, feats, None, y, **kw),
        fmrecall.Dataset(indptr, fields, feats, ones, y, **kw),
    )


def _model(kind: str):
    hyper = dict(k=4, epochs=2, threads=1, seed=3, n_features=N_MODEL, n_fields=F)
    if kind == "fm":
        return fmrecall.FM(**hyper)
    if kind == "ffm":
        return fmrecall.FFM(**hyper)
    return fmrecall.HybridFM(
        sides=fmrecall.Sides(user=[0], context=[1], item=[2, 3, 4, 5]), field_aware="item", **hyper
    )


@pytest.mark.parametrize("kind", KINDS)
def test_one_hot_pass_builds_the_general_row(rng, kind):
    unit, ones = _pair(rng, N_SEEN, labels=True)
    shapes = set()
    for r in range(unit.n_rows):
        lo, hi = unit.indptr[r], unit.indptr[r + 1]
        f, j = unit.fields[lo:hi], unit.features[lo:hi]
        shapes.add(
            "field twice"
            if np.unique(f).size < f.size
            else "feature twice"
            if np.unique(j).size < j.size
            else "one-hot"
        )
    assert shapes == {"one-hot", "field twice", "feature twice"}
    a, b = _model(kind).fit(unit), _model(kind).fit(ones)
    assert a.scale_ != 1.0  # the value scale is applied by both passes
    wa, wb = a.weights(), b.weights()
    assert wa.keys() == wb.keys()
    for key in wa:
        np.testing.assert_array_equal(np.asarray(wa[key]), np.asarray(wb[key]), err_msg=key)
    unit, ones = _pair(rng, N_WIDE, labels=False)  # ids 40..59 have no vectors, 60..69 are outside the model
    np.testing.assert_array_equal(a.decision_function(unit), a.decision_function(ones))
    np.testing.assert_array_equal(a.decision_function(unit), b.decision_function(ones))
