"""Divergence is reported, never silent (issue 8): a non-finite epoch loss or weight stops training
with a DivergenceError naming the epoch and suggesting a smaller learning rate; fit leaves the model
as it was, partial_fit restores the weights it started from; save refuses non-finite weights."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import random_dataset

import fmrecall
from fmrecall import DivergenceError


def _huge_regression(rng):
    """Squared loss on values and targets scaled by 1e6 (the issue's silent-NaN case)."""
    ds = random_dataset(rng, n_rows=200, n_features=30, n_fields=4, loss="squared")
    ds.values *= np.float32(1e6)
    ds.labels *= np.float32(1e6)
    return ds


@pytest.mark.parametrize("cls", [fmrecall.FM, fmrecall.FFM])
def test_squared_loss_on_huge_values_raises_naming_the_epoch(rng, cls):
    model = cls(k=3, loss="squared", normalize="none", epochs=3, threads=1)
    with pytest.raises(DivergenceError, match=r"epoch 1 .*smaller learning_rate \(now [0-9.e+-]+; e\.g\. ") as err:
        model.fit(_huge_regression(rng))
    assert err.value.epoch == 1
    with pytest.raises(fmrecall.NotFittedError):  # fit left the (unfitted) model as it was
        model.decision_function(_huge_regression(rng))


def test_huge_learning_rate_with_valid_raises_instead_of_restoring_nothing(rng):
    """learning_rate=1e30 with validation data used to end in 'restore() without snapshot()'."""
    train = random_dataset(rng, n_rows=300, n_features=30, n_fields=4)
    valid = random_dataset(rng, n_rows=100, n_features=30, n_fields=4)
    model = fmrecall.FFM(k=4, epochs=1, threads=1).fit(train, valid=valid)
    before, generation = model.decision_function(valid), model.generation_
    model.set_params(learning_rate=1e30, epochs=5)
    with pytest.raises(DivergenceError, match=r"epoch \d+ .*learning_rate \(now 1e\+30; e\.g\. 1e\+29\)"):
        model.fit(train, valid=valid)
    np.testing.assert_array_equal(model.decision_function(valid), before)  # the previous weights
    assert model.generation_ == generation and np.all(np.isfinite(before))


def test_partial_fit_divergence_restores_the_weights_it_started_from(rng):
    ds = _huge_regression(rng)
    ds.values /= np.float32(1e6)
    ds.labels /= np.float32(1e6)
    model = fmrecall.FM(k=3, loss="squared", epochs=2, threads=1).fit(ds)
    w0, history = model.weights(), list(model.history_)
    ds.labels *= np.float32(1e30)
    model.set_params(learning_rate=1e10)
    with pytest.raises(DivergenceError, match=f"epoch {len(history) + 1} .*restored"):
        model.partial_fit(ds)
    w1 = model.weights()
    for name in ("bias", "linear", "factors"):
        np.testing.assert_array_equal(w1[name], w0[name], err_msg=name)
    assert model.history_ == history


def test_save_refuses_non_finite_weights(rng, tmp_path):
    """Training can no longer leave non-finite weights behind; save still refuses them (here put
    there by the core's own training call, below the estimator's checks)."""
    ds = random_dataset(rng, n_rows=60, n_features=25, n_fields=4, loss="squared")
    model = fmrecall.FM(k=3, epochs=1, threads=1, loss="squared").fit(ds)
    ds.labels[:] *= np.float32(1e30)
    order = np.arange(ds.n_rows, dtype=np.int64)
    squared = fmrecall._core.Loss.squared
    model._core.train(*ds.core_args(), ds.labels, order, squared, 1e10, 0.0, 0.0, 1)
    assert not model._core.finite()
    with pytest.raises(ValueError, match="non-finite"):
        model.save(tmp_path / "m.npz")
    assert not (tmp_path / "m.npz").exists()
