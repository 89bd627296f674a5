"""The moving average of the weights (`average=`, README "Accuracy at default settings").

fit keeps avg <- b avg + (1 - b) w after each epoch and returns it; the expected values here are a
numpy moving average of the weights that shorter fits (average=0, the same trajectory: an epoch's
rows and draws depend only on the seed and the epoch number) end with. With validation data each
epoch keeps the better of the weights and their average, scored here from those same weights.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import random_dataset

import fmrecall
from fmrecall.metrics import logloss_from_scores

N_FEATURES, N_FIELDS = 30, 4
FACTOR_KEYS = ("factors", "field_factors")


def make(kind: str, **hyper) -> fmrecall.FM:
    base = dict(k=5, threads=1, seed=3)  # k = 5: padded to 8 lanes, so the padding is carried too
    if kind == "hybrid":
        sides = fmrecall.Sides(user=[0], context=[1], item=[2, 3])
        return fmrecall.HybridFM(sides=sides, field_aware="item", **base, **hyper)
    return {"fm": fmrecall.FM, "ffm": fmrecall.FFM}[kind](**base, **hyper)


def planted(rng: np.random.Generator, n_rows: int) -> fmrecall.Dataset:
    """Rows whose labels follow a planted linear model plus noise (a signal to learn, then overfit)."""
    ds = random_dataset(rng, n_rows=n_rows, n_features=N_FEATURES, n_fields=N_FIELDS)
    w = np.random.default_rng(99).normal(size=N_FEATURES)
    s = np.add.reduceat(w[ds.features] * ds.values_or_ones(), ds.indptr[:-1].astype(np.int64))
    y = (s + rng.normal(0.0, 1.0, n_rows) > 0).astype(np.float32)
    return fmrecall.Dataset(ds.indptr, ds.fields, ds.features, ds.values, y, n_features=N_FEATURES, n_fields=N_FIELDS)


def moving_average(per_epoch: list, beta: float) -> dict:
    """numpy: avg_1 = w_1, avg_e = beta avg_(e-1) + (1 - beta) w_e, per weight array (and the bias)."""
    out = {}
    for key in ("bias", "linear", *FACTOR_KEYS):
        if key not in per_epoch[0]:
            continue
        avg = np.asarray(per_epoch[0][key], np.float64)
        for w in per_epoch[1:]:
            avg = beta * avg + (1.0 - beta) * np.asarray(w[key], np.float64)
        out[key] = avg
    return out


@pytest.mark.parametrize("kind", ["fm", "ffm", "hybrid"])
def test_fit_returns_the_moving_average_of_its_epochs(rng, kind):
    train = random_dataset(rng, n_rows=90, n_features=N_FEATURES, n_fields=N_FIELDS)
    per_epoch = [make(kind, epochs=e, average=0.0).fit(train).weights() for e in range(1, 6)]
    assert not np.array_equal(per_epoch[3]["linear"], per_epoch[4]["linear"])  # the epochs do move
    # (epochs, average, the decay used): average itself, or 1 - 2 / epochs when that is smaller
    for epochs, average, decay in [(5, 0.5, 0.5), (4, 0.9, 0.5)]:
        got = make(kind, epochs=epochs, average=average).fit(train)
        want = moving_average(per_epoch[:epochs], decay)
        w = got.weights()
        assert w["bias"] == pytest.approx(want["bias"], rel=1e-5, abs=1e-7)
        for key, value in want.items():
            if key != "bias":
                np.testing.assert_allclose(w[key], value, rtol=1e-5, atol=1e-6, err_msg=f"{key} {epochs}")
        assert [h["averaged"] for h in got.history_] == [True] * epochs
    # one or two epochs: no average (no copy is made), the last epoch's weights
    for epochs in (1, 2):
        short = make(kind, epochs=epochs, average=0.9).fit(train)
        np.testing.assert_array_equal(short.weights()["linear"], per_epoch[epochs - 1]["linear"])
        assert not any(h["averaged"] for h in short.history_)


def _valid_loss(kind: str, weights: dict, valid: fmrecall.Dataset) -> float:
    w = {
        k: (v.astype(np.float32) if isinstance(v, np.ndarray) and v.dtype.kind == "f" else v)
        for k, v in weights.items()
    }
    w["bias"] = float(weights["bias"])
    if kind == "fm":
        model = fmrecall.FM.from_weights(w, n_fields=N_FIELDS)
    else:
        model = fmrecall.FFM.from_weights(w)
    return logloss_from_scores(valid.labels, model.decision_function(valid))


@pytest.mark.parametrize("kind", ["fm", "ffm"])
def test_validation_keeps_the_better_of_weights_and_average(kind):
    rng = np.random.default_rng(2)
    train, valid = planted(rng, 200), planted(rng, 100)
    hyper = dict(learning_rate=1.0, patience=None)
    per_epoch = [make(kind, epochs=e, average=0.0, **hyper).fit(train).weights() for e in range(1, 6)]
    got = make(kind, epochs=5, average=0.8, **hyper).fit(train, valid=valid)  # decay 1 - 2/5 = 0.6
    for e, record in enumerate(got.history_, start=1):
        last = _valid_loss(kind, per_epoch[e - 1], valid)
        avg = _valid_loss(kind, {**per_epoch[e - 1], **moving_average(per_epoch[:e], 0.6)}, valid)
        assert record["averaged"] == (avg < last), e
        assert record["valid_loss"] == pytest.approx(min(last, avg), rel=1e-4), e
    assert any(h["averaged"] for h in got.history_) and not all(h["averaged"] for h in got.history_)
    # patience=None: fit ends with the last epoch's better one
    final = logloss_from_scores(valid.labels, got.decision_function(valid))
    assert final == pytest.approx(got.history_[-1]["valid_loss"], rel=1e-6)


@pytest.mark.parametrize("kind", ["fm", "ffm"])
def test_early_stopping_restores_what_the_best_epoch_scored(kind):
    restored = set()  # which kind each early-stopped fit's best epoch kept: both must occur
    for seed, lr in [(s, lr) for s in range(4) for lr in (1.0, 2.0)]:
        rng = np.random.default_rng(seed)
        train, valid = planted(rng, 200), planted(rng, 100)
        m = make(kind, epochs=12, patience=2, average=0.8, learning_rate=lr).fit(train, valid=valid)
        best = m.history_[m.best_epoch_ - 1]
        assert best["valid_loss"] == min(h["valid_loss"] for h in m.history_)
        final = logloss_from_scores(valid.labels, m.decision_function(valid))
        assert final == pytest.approx(best["valid_loss"], rel=1e-6), seed
        if m.best_epoch_ < len(m.history_):  # stopped early: the snapshot was restored
            restored.add(best["averaged"])
    assert restored == {True, False}


def test_partial_fit_does_not_average(rng):
    train = random_dataset(rng, n_rows=60, n_features=N_FEATURES, n_fields=N_FIELDS)
    a = make("fm", epochs=3, average=0.9).fit(train).partial_fit(train).weights()  # fit averages (decay 1/3)
    b = make("fm", epochs=3, average=0.9).fit(train)
    assert b.history_[-1]["averaged"] is True
    before = b.weights()
    b.partial_fit(train)
    np.testing.assert_array_equal(a["linear"], b.weights()["linear"])
    assert not np.array_equal(before["linear"], b.weights()["linear"])
    assert b.history_[-1]["averaged"] is False


def test_core_average_and_swap(rng):
    m = make("ffm", epochs=1, average=0.0).fit(random_dataset(rng, n_rows=40, n_features=N_FEATURES, n_fields=N_FIELDS))
    core = m._core
    assert core is not None
    with pytest.raises(RuntimeError, match="without average"):
        core.swap_average()
    w = core.get_weights()
    draws = [
        {k: rng.normal(size=np.shape(w[k])).astype(np.float32) for k in ("linear", "W")} | {"bias": float(rng.normal())}
        for _ in range(3)
    ]
    for d in draws:
        core.set_weights(d["bias"], d["linear"], None, d["W"])
        core.average(0.6)
    want = moving_average([{"bias": d["bias"], "linear": d["linear"], "field_factors": d["W"]} for d in draws], 0.6)
    core.swap_average()  # the average in, the last weights out
    got = core.get_weights()
    assert got["bias"] == pytest.approx(want["bias"], rel=1e-6)
    np.testing.assert_allclose(got["linear"], want["linear"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(got["W"], want["field_factors"], rtol=1e-6, atol=1e-7)
    core.swap_average()  # and back
    back = core.get_weights()
    np.testing.assert_array_equal(back["W"], draws[-1]["W"])
    np.testing.assert_array_equal(back["linear"], draws[-1]["linear"])
    core.grow_features(2)  # the tables change: the average no longer matches and is gone
    with pytest.raises(RuntimeError, match="without average"):
        core.swap_average()
    core.drop_average()


@pytest.mark.parametrize("bad", [1.0, -0.1, float("nan"), "0.9", True])
def test_average_must_be_in_unit_interval(rng, bad):
    train = random_dataset(rng, n_rows=20, n_features=N_FEATURES, n_fields=N_FIELDS)
    with pytest.raises(ValueError, match="average must be"):
        fmrecall.FM(k=2, epochs=1, average=bad).fit(train)
