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


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch `epoch` (its permutation; Interactions derive their negative draws from it)."""
    return (int(seed) * 1_000_003 + epoch) & 0xFFFFFFFFFFFFFFFF


def aware_features(nodes: "Dataset", flags: np.ndarray) -> np.ndarray:
    """Sorted int32 features that occur in field-aware fields (`flags`) of `nodes`."""
    if nodes.n_fields <= flags.size and flags[: nodes.n_fields].all():
        feats = nodes.features  # FFM: every node is field-aware
    else:
        in_model = nodes.fields < flags.size
        aware_nodes = np.zeros(nodes.nnz, dtype=bool)
        aware_nodes[in_model] = flags[nodes.fields[in_model]].astype(bool)
        feats = nodes.features[aware_nodes]
    # a presence mask, not np.unique: one O(nnz) scatter instead of a hash or sort of every node
    # (np.unique took ~1.4 s per partial_fit on 17.5M nodes, a third of an FFM k=4 epoch)
    present = np.zeros(nodes.n_features, dtype=bool)  # Dataset features are in [0, n_features)
    present[feats] = True
    return np.flatnonzero(present).astype(np.int32)


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
        bool(model.normalize),
        seen,
    )


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
    model: "_FactorizationModel", core: _core.Model, train: "TrainingSource", epoch: int, bar: Any = None
) -> Dict[str, Any]:
    """One epoch on `core`, chunk by chunk (each chunk through ``model._train_part``): its record
    {"epoch", "train_loss"} (mean loss per loss term)."""
    n = len(train)
    order = _core.permutation(n, epoch_seed(model.seed, epoch))
    total, terms = 0.0, 0
    for start in range(0, n, _CHUNK_ROWS):
        part = order[start : start + _CHUNK_ROWS]
        loss_sum, count = model._train_part(core, train, part, epoch)
        total += loss_sum
        terms += count
        if bar is not None:
            bar.update(part.size)
    return {"epoch": epoch, "train_loss": total / max(terms, 1)}


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
    history: List[Dict[str, Any]] = []
    best_epoch: Optional[int] = None
    best = np.inf
    since_best = 0
    bar = _progress(model, len(train) * model.epochs)
    try:
        for epoch in range(1, model.epochs + 1):
            t0 = time.perf_counter()
            record = run_epoch(model, core, train, epoch, bar)
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
    if valid is not None and model.patience is not None and best_epoch != history[-1]["epoch"]:
        core.restore()
        if model.verbose:
            print(f"restored epoch {best_epoch} (best valid loss {best:.5f})", file=sys.stdout, flush=True)
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
    """One epoch of the fit loop on `core` (trained in place): its record."""
    t0 = time.perf_counter()
    bar = _progress(model, len(train))
    try:
        record = run_epoch(model, core, train, epoch, bar)
    finally:
        if bar is not None:
            bar.close()
    record["seconds"] = time.perf_counter() - t0
    return record
