"""fmrecall.metrics against brute-force definitions."""

from __future__ import annotations

import numpy as np
import pytest

from fmrecall import metrics


def _auc_pairs(y, s):
    """Probability that a random positive outscores a random negative, ties half (O(n^2))."""
    pos, neg = s[y > 0], s[y <= 0]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return wins / (pos.size * neg.size)


def test_auc_small_cases():
    assert metrics.auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert metrics.auc([1, 0], [0.3, 0.3]) == pytest.approx(0.5)  # a tie is half credit
    assert metrics.auc([1, 1, 0], [1.0, 2.0, 3.0]) == pytest.approx(0.0)
    assert metrics.auc([-1, 1, -1, 1], [0.0, 1.0, 0.5, 2.0]) == pytest.approx(1.0)  # -1/1 labels


@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_pairwise_definition_with_ties(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=300)
    s = rng.integers(0, 12, size=300).astype(np.float32)  # many ties
    assert metrics.auc(y, s) == pytest.approx(_auc_pairs(y, s), rel=1e-12)
    assert metrics.auc(2 * y - 1, s) == pytest.approx(_auc_pairs(y, s), rel=1e-12)
    s2 = rng.normal(size=300)
    assert metrics.auc(y, s2) == pytest.approx(_auc_pairs(y, s2), rel=1e-12)


def test_auc_one_class_is_nan_and_length_mismatch_raises():
    assert np.isnan(metrics.auc([1, 1, 1], [0.1, 0.2, 0.3]))
    with pytest.raises(ValueError):
        metrics.auc([0, 1], [0.1, 0.2, 0.3])


def test_logloss_and_logloss_from_scores():
    y = np.array([1, 0, 1, -1, 0])
    t = np.array([2.0, -1.0, -0.5, 3.0, 0.0])
    p = 1 / (1 + np.exp(-t))
    y01 = (y > 0).astype(float)
    want = -np.mean(y01 * np.log(p) + (1 - y01) * np.log(1 - p))
    assert metrics.logloss(y, p) == pytest.approx(want, rel=1e-12)
    assert metrics.logloss_from_scores(y, t) == pytest.approx(want, rel=1e-12)
    # stable for huge scores: no overflow, no log(0)
    big = metrics.logloss_from_scores([0, 1], [1000.0, -1000.0])
    assert big == pytest.approx(1000.0, rel=1e-12)
    assert metrics.logloss_from_scores([1, 0], [1000.0, -1000.0]) == pytest.approx(0.0, abs=1e-12)
    # probabilities of exactly 0 / 1 are clipped, not infinite
    assert np.isfinite(metrics.logloss([1, 0], [0.0, 1.0]))


def test_mse():
    assert metrics.mse([1.0, 2.0, 3.0], [1.5, 2.0, 1.0]) == pytest.approx((0.25 + 0 + 4) / 3)
