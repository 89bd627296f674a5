"""The one training loop of FM / FFM / HybridFM, over any ``TrainingSource`` (fmrecall.source).

``fit`` = a fresh core, built aside, + epochs of the chunked loop + (with validation data) early
stopping, then one swap into the model; ``partial_fit`` = one epoch of the same loop on the model's
own core (grown first for new features). An epoch visits the examples in a seeded permutation, in
chunks of ``_CHUNK_ROWS`` per call into C++ (progress bar granularity and Ctrl-C latency).
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

import numpy as np

from . import _core

if TYPE_CHECKING:
    from .dataset import Dataset
    from .models import _FactorizationModel
    from .source import TrainingSource

_CHUNK_ROWS = 1 << 18  # examples per call into C++

# normalize=: "mean" a constant value scale 1/sqrt(mean ||x||^2) of the training rows, fixed at fit
# (split-compatible, DESIGN.md §6); "row" (= True) libffm's whole-row 1/||x|| (ranking only: split()
# refuses it); "none" (= False) values as given.
NORMALIZE = ("mean", "row", "none")


def row_normalized(normalize: Any) -> bool:
    """Whether `normalize` asks for whole-row scaling (True or "row")."""
    return normalize is True or normalize == "row" or (isinstance(normalize, np.bool_) and bool(normalize))


class DivergenceError(FloatingPointError):
    """Training produced a non-finite loss or weight (the learning rate is too large for the data).
    ``epoch`` is the epoch it happened in; fit leaves the model as it was, partial_fit restores the
    weights it started from."""

    def __init__(self, message: str, epoch: int) -> None:
        super().__init__(message)
        self.epoch = epoch


def check_finite(core: _core.Model, record: Dict[str, Any], what: str) -> None:
    """DivergenceError naming the epoch if the epoch's training loss or a weight is not finite."""
    loss = float(record["train_loss"])
    if np.isfinite(loss) and core.finite():
        return
    raise DivergenceError(
        f"training diverged in epoch {record['epoch']} (train_loss {loss:.4g}; non-finite "
        f"{'weights' if np.isfinite(loss) else 'loss'}): {what}. Retry with a smaller learning_rate "
        f"(now {record['learning_rate']:g}; e.g. {record['learning_rate'] / 10:g})",
        int(record["epoch"]),
    )


# learning_rate="auto": LR_PER_NODE / mean ||x||^2 of the training rows (raw values, before any
# scaling), i.e. 0.2 on 39 one-hot fields, 0.8 on 10 (the normalisation study in README.md).
LR_PER_NODE = 8.0


def learning_rate(model: "_FactorizationModel", train: "TrainingSource", continued: bool = False) -> float:
    """The learning rate a fit (or, `continued`, a partial_fit) on `train` uses: the model's number;
    for "auto" LR_PER_NODE / mean ||x||^2 of `train`, or the one the model trained with so far."""
    if model.learning_rate != "auto":
        return float(model.learning_rate)
    if continued and model.learning_rate_ is not None:
        return model.learning_rate_
    mean_sq = train.mean_sq_norm()
    return LR_PER_NODE / mean_sq if mean_sq > 0 else LR_PER_NODE


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch `epoch` (its permutation; Interactions derive their negative draws from it)."""
    return (int(seed) * 1_000_003 + epoch) & 0xFFFFFFFFFFFFFFFF


def aware_features(nodes: "Dataset", flags: np.ndarray) -> np.ndarray:
    """Sorted int32 features that occur in field-aware fields (`flags`) of `nodes`."""
    in_model = nodes.fields < flags.size
    aware_nodes = np.zeros(nodes.nnz, dtype=bool)
    aware_nodes[in_model] = flags[nodes.fields[in_model]].astype(bool)
    return np.unique(nodes.features[aware_nodes]).astype(np.int32)


def new_core(model: "_FactorizationModel", train: "TrainingSource") -> _core.Model:
    """A fresh core sized for `train` (and the model's n_features / n_fields, if larger): field-aware
    vectors only for the features that occur in field-aware fields of the training data, random
    vectors only for the features that occur at all (the others stay neutral)."""
    nodes = train.feature_nodes()
    n_features = max(nodes.n_features, model.n_features or 0)
    n_fields = max(nodes.n_fields, model.n_fields or 0)
    for name, given, need in (
        ("n_features", model.n_features, nodes.n_features),
        ("n_fields", model.n_fields, nodes.n_fields),
    ):
        if given is not None and given < need:
            raise ValueError(f"{name}={given} is smaller than the training data needs ({need})")
    flags = model._aware_flags(n_fields)
    aware_row: Optional[np.ndarray] = None
    m = 0
    if flags.any():
        feats = aware_features(nodes, flags)
        aware_row = np.full(n_features, -1, dtype=np.int32)
        aware_row[feats] = np.arange(feats.size, dtype=np.int32)
        m = int(feats.size)
    seen = np.zeros(n_features, dtype=np.uint8)  # features absent from train keep zero weights
    seen[nodes.features] = 1
    return _core.Model(
        n_features,
        n_fields,
        int(model.k),
        flags,
        aware_row,
        m,
        float(model.init_std),
        int(model.seed),
        row_normalized(model.normalize),
        seen,
        scale=value_scale(model, train),
    )


def value_scale(model: "_FactorizationModel", train: "TrainingSource") -> float:
    """The constant every value is multiplied by: 1/sqrt(mean ||x||^2) of `train`'s rows for
    normalize="mean" (the pair scale 1/mean ||x||^2 is libffm's 1/||x||^2 on one-hot rows of a fixed
    field count, and the same for every row, so the split stays exact: DESIGN.md §6), else 1."""
    if model.normalize != "mean":
        return 1.0
    mean_sq = train.mean_sq_norm()
    return float(1.0 / np.sqrt(mean_sq)) if mean_sq > 0 else 1.0


def _progress(model: "_FactorizationModel", total: int) -> Any:
    """A tqdm bar over `total` examples when verbose and long enough to matter, else None."""
    if not model.verbose or total < 4 * _CHUNK_ROWS:
        return None
    try:
        from tqdm.auto import tqdm

        return tqdm(total=total, unit="row", unit_scale=True, leave=False)
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return None


def run_epoch(
    model: "_FactorizationModel", core: _core.Model, train: "TrainingSource", epoch: int, lr: float, bar: Any = None
) -> Dict[str, Any]:
    """One epoch on `core` at learning rate `lr`, chunk by chunk (each chunk through
    ``model._train_part``): its record {"epoch", "train_loss", "learning_rate"} (mean loss per term)."""
    n = len(train)
    order = _core.permutation(n, epoch_seed(model.seed, epoch))
    total, terms = 0.0, 0
    for start in range(0, n, _CHUNK_ROWS):
        part = order[start : start + _CHUNK_ROWS]
        loss_sum, count = model._train_part(core, train, part, epoch, lr)
        total += loss_sum
        terms += count
        if bar is not None:
            bar.update(part.size)
    return {"epoch": epoch, "train_loss": total / max(terms, 1), "learning_rate": lr}


def print_epoch(r: Dict[str, Any]) -> None:
    line = f"epoch {r['epoch']:3d}  train_loss {r['train_loss']:.5f}"
    if "valid_loss" in r:
        line += f"  valid_loss {r['valid_loss']:.5f}  valid_auc {r['valid_auc']:.5f}"
    line += f"  {r['seconds']:.2f}s"
    print(line, file=sys.stdout, flush=True)


def fit(
    model: "_FactorizationModel", train: "TrainingSource", valid: Optional["TrainingSource"]
) -> Tuple[_core.Model, List[Dict[str, Any]], Optional[int]]:
    """Train a fresh core (the model is not touched): (core, history, best epoch). With `valid`,
    early stopping after `patience` epochs without improvement restores the best epoch's weights."""
    model._check_params()
    train.check_labels(model.loss, "train")
    if valid is not None:
        valid.check_labels(model.loss, "valid")
    if len(train) == 0:
        raise ValueError("train has no rows")
    core = new_core(model, train)
    lr = learning_rate(model, train)
    history: List[Dict[str, Any]] = []
    best_epoch: Optional[int] = None
    best = np.inf
    since_best = 0
    bar = _progress(model, len(train) * model.epochs)
    try:
        for epoch in range(1, model.epochs + 1):
            t0 = time.perf_counter()
            record = run_epoch(model, core, train, epoch, lr, bar)
            check_finite(core, record, "fit leaves the model as it was")
            if valid is not None:
                ev = model._evaluate(core, valid)
                record["valid_loss"], record["valid_auc"] = ev["loss"], ev["auc"]
            record["seconds"] = time.perf_counter() - t0
            history.append(record)
            if model.verbose:
                print_epoch(record)
            if valid is None:
                continue
            if record["valid_loss"] < best:
                best, best_epoch, since_best = record["valid_loss"], epoch, 0
                if model.patience is not None and epoch < model.epochs:
                    core.snapshot()
            else:
                since_best += 1
                if model.patience is not None and since_best >= model.patience:
                    break
    finally:
        if bar is not None:
            bar.close()
    if valid is not None and model.patience is not None and best_epoch not in (None, history[-1]["epoch"]):
        core.restore()
        if model.verbose:
            print(f"restored epoch {best_epoch} (best valid loss {best:.5f})", file=sys.stdout, flush=True)
    core.drop_snapshot()
    return core, history, best_epoch


def grow(model: "_FactorizationModel", core: _core.Model, train: "TrainingSource") -> None:
    """Give `core` the features and field-aware vectors `train` needs that it lacks (partial_fit):
    appended features get linear 0, random vectors if they occur in `train`, AdaGrad state 1."""
    nodes = train.feature_nodes()
    schema = train.source_schema()
    n_features, n_fields = (
        (schema.n_features, schema.n_fields) if schema is not None else (nodes.n_features, nodes.n_fields)
    )
    if n_fields > core.n_fields:
        raise ValueError(
            f"train has {n_fields} fields, the model {core.n_fields}: new fields are not "
            f"supported by partial_fit - refit instead"
        )
    n_old = core.n_features
    if n_features > n_old:  # append the new features (existing indices keep their parameters)
        seen = np.zeros(n_features - n_old, dtype=np.uint8)
        feats = nodes.features
        seen[feats[feats >= n_old] - n_old] = 1
        core.grow_features(n_features - n_old, seen, float(model.init_std), int(model.seed))
    # features new to the model get their field-aware vectors now (fit only allocates seen ones)
    fresh = aware_features(nodes, model._aware_flags(core.n_fields))
    if fresh.size:
        core.grow_rows(fresh, float(model.init_std), int(model.seed))


def partial_fit_epoch(
    model: "_FactorizationModel", core: _core.Model, train: "TrainingSource", epoch: int
) -> Dict[str, Any]:
    """One epoch of the fit loop on `core` (trained in place): its record. If it diverges, the
    weights it started from are restored (a snapshot taken first) and DivergenceError is raised."""
    t0 = time.perf_counter()
    bar = _progress(model, len(train))
    lr = learning_rate(model, train, continued=True)
    core.snapshot()  # the last finite weights, restored if this epoch diverges
    try:
        record = run_epoch(model, core, train, epoch, lr, bar)
    finally:
        if bar is not None:
            bar.close()
    record["seconds"] = time.perf_counter() - t0
    try:
        check_finite(core, record, f"the weights from before epoch {epoch} are restored")
    except DivergenceError:
        core.restore()
        raise
    finally:
        core.drop_snapshot()
    return record
