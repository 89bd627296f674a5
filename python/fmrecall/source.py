"""What a model trains on: the ``TrainingSource`` protocol, implemented by ``Dataset`` (labelled
rows) and ``Interactions`` (users, items and events kept apart; negatives sampled in C++).

The estimators (fmrecall.models) and the training loop (fmrecall.training) talk to their data only
through these methods, so they never ask which kind of data they hold.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict, Optional, Protocol, Tuple

import numpy as np

from .metrics import auc, logloss_from_scores, mse

if TYPE_CHECKING:
    from . import _core
    from .dataset import Dataset
    from .schema import Schema


class TrainingSource(Protocol):
    """The data a model can be fit, partially fit and evaluated on.

    - ``len(source)``: training examples per epoch (rows, or events for Interactions);
    - ``source_schema()``: the Schema the rows were encoded with (None for plain rows);
    - ``check_labels(loss, name)``: ValueError if `loss` cannot be trained on this data;
    - ``mean_sq_norm()``: the mean squared L2 norm of a training row (fit's value scale);
    - ``feature_nodes()``: a Dataset holding every (field, feature) node a training row can
      contain (it sizes a new model and tells partial_fit which features are new);
    - ``train_chunk(core, order, loss, seed, learning_rate, reg_linear, reg_factors, threads)``:
      one chunk of an epoch (the examples in `order`) on a core, returning (summed loss, number of
      loss terms); `seed` is the epoch's seed (negative draws);
    - ``scores(core, threads)``: the raw score of every example;
    - ``evaluate(core, loss, seed, threads)``: {"loss", "auc"} of the model on this data.
    """

    def __len__(self) -> int: ...

    def source_schema(self) -> Optional["Schema"]: ...

    def check_labels(self, loss: str, name: str) -> None: ...

    def mean_sq_norm(self) -> float: ...

    def feature_nodes(self) -> "Dataset": ...

    def train_chunk(
        self,
        core: "_core.Model",
        order: np.ndarray,
        loss: int,
        seed: int,
        learning_rate: float,
        reg_linear: float,
        reg_factors: float,
        threads: int,
    ) -> Tuple[float, int]: ...

    def scores(self, core: "_core.Model", threads: int) -> np.ndarray: ...

    def evaluate(self, core: "_core.Model", loss: str, seed: int, threads: int) -> Dict[str, float]: ...


def check_labels(labels: Optional[np.ndarray], loss: str, name: str) -> None:
    """ValueError unless `labels` (one per example) can train `loss` (pointwise losses only)."""
    if labels is None:
        raise ValueError(f"{name} has no labels")
    if loss == "logistic" and labels.size:
        allowed = (-1.0, 1.0) if np.any(labels == -1.0) else (0.0, 1.0)
        bad = np.flatnonzero(~np.isin(labels, allowed))
        if bad.size:
            i = int(bad[0])
            raise ValueError(
                f"logistic loss needs labels all in {{0, 1}} or all in {{-1, 1}}; {name} row "
                f"{i} has label {float(labels[i])!r}"
            )


def labelled_metrics(labels: np.ndarray, scores: np.ndarray, loss: str) -> Dict[str, float]:
    """{"loss": logloss (logistic) or MSE, "auc": AUC (logistic) or NaN} of raw scores."""
    if loss == "logistic":
        return {"loss": logloss_from_scores(labels, scores), "auc": auc(labels, scores)}
    return {"loss": mse(labels, scores), "auc": float("nan")}


def pairwise_metrics(pos: np.ndarray, neg: np.ndarray, loss: str) -> Dict[str, float]:
    """Each positive against one negative: BPR loss (loss="bpr") or the logloss of positives and
    negatives, and AUC = P(score(positive) > score(negative))."""
    pos, neg = pos.astype(np.float64), neg.astype(np.float64)
    d = pos - neg
    auc_pairs = float(np.mean(d > 0) + 0.5 * np.mean(d == 0))
    if loss == "bpr":
        return {"loss": float(np.mean(np.logaddexp(0.0, -d))), "auc": auc_pairs}
    y = np.r_[np.ones(d.size), np.zeros(d.size)]
    return {"loss": logloss_from_scores(y, np.r_[pos, neg]), "auc": auc_pairs}
