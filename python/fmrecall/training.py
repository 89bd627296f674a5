"""The one training loop of FM / FFM / HybridFM, over any ``TrainingSource`` (fmrecall.source).

``fit`` = a fresh core, built aside, + epochs of the chunked loop + (with validation data) early
stopping, then one swap into the model; ``partial_fit`` = one epoch of the same loop on the model's
own core (grown first for new features). An epoch visits the examples in a seeded permutation, in
chunks of ``_CHUNK_ROWS`` per call into C++ (progress bar granularity and Ctrl-C latency).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

import numpy as np

from . import _core
from .progress import Bar, info, progress

if TYPE_CHECKING:
    from .dataset import Dataset
    from .models import _FactorizationModel
    from .source import TrainingSource

_CHUNK_ROWS = 1 << 18  # examples per call into C++


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch `epoch` (its permutation; Interactions derive their negative draws from it)."""
    return (int(seed) * 1_000_003 + epoch) & 0xFFFFFFFFFFFFFFFF


def vector_features(nodes: "Dataset", flags: np.ndarray, aware: bool) -> np.ndarray:
    """Sorted int32 features that occur in the field-aware (`aware`) or single fields (`flags`:
    1 = field-aware) of `nodes`, in-model fields only: the features that need vectors of that kind."""
    in_model = nodes.fields < flags.size
    kind = np.zeros(nodes.nnz, dtype=bool)
    kind[in_model] = flags[nodes.fields[in_model]].astype(bool) == aware
    return np.unique(nodes.features[kind]).astype(np.int32)


def row_map(n_features: int, feats: np.ndarray) -> np.ndarray:
    """int32 (n_features,): feature -> row (features `feats`, sorted, get rows 0..len-1), else -1."""
    rows = np.full(n_features, -1, dtype=np.int32)
    rows[feats] = np.arange(feats.size, dtype=np.int32)
    return rows


def new_core(model: "_FactorizationModel", train: "TrainingSource") -> _core.Model:
    """A fresh core sized for `train` (and the model's n_features / n_fields, if larger), with
    vectors only for the features the training data holds: single vectors for those in single
    fields, field-aware ones for those in field-aware fields (rows in feature order). A feature with
    no vectors contributes its linear weight only (0 until trained): it is neutral."""
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
    # per table: the features that get its vectors (None: the model has no field of that kind)
    single = vector_features(nodes, flags, False) if (flags == 0).any() else None
    aware = vector_features(nodes, flags, True) if flags.any() else None
    return _core.Model(
        n_features,
        n_fields,
        int(model.k),
        flags,
        None if aware is None else row_map(n_features, aware),
        0 if aware is None else int(aware.size),
        float(model.init_std),
        int(model.seed),
        bool(model.normalize),
        None if single is None else row_map(n_features, single),
        0 if single is None else int(single.size),
    )


def run_epoch(
    model: "_FactorizationModel", core: _core.Model, train: "TrainingSource", epoch: int, bar: Optional[Bar] = None
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


def epoch_line(r: Dict[str, Any]) -> str:
    """One epoch's record as the line fit logs."""
    line = f"epoch {r['epoch']:3d}  train_loss {r['train_loss']:.5f}"
    if "valid_loss" in r:
        line += f"  valid_loss {r['valid_loss']:.5f}  valid_auc {r['valid_auc']:.5f}"
    return line + f"  {r['seconds']:.2f}s"


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
    with progress(len(train) * model.epochs, f"{type(model).__name__}.fit", "row", model.verbose) as bar:
        for epoch in range(1, model.epochs + 1):
            t0 = time.perf_counter()
            record = run_epoch(model, core, train, epoch, bar)
            if valid is not None:
                ev = model._evaluate(core, valid)
                record["valid_loss"], record["valid_auc"] = ev["loss"], ev["auc"]
            record["seconds"] = time.perf_counter() - t0
            history.append(record)
            info(epoch_line(record), model.verbose)
            if valid is None:
                continue
            if record["valid_loss"] < best:
                best, best_epoch, since_best = record["valid_loss"], epoch, 0
                if model.patience is not None and epoch < model.epochs:
                    core.snapshot()
            else:
                since_best += 1
                if model.patience is not None and since_best >= model.patience:
                    break  # the bar closes at 100%: the run is complete
    if valid is not None and model.patience is not None and best_epoch != history[-1]["epoch"]:
        core.restore()
        info(f"restored epoch {best_epoch} (best valid loss {best:.5f})", model.verbose)
    return core, history, best_epoch


def grow(model: "_FactorizationModel", core: _core.Model, train: "TrainingSource") -> None:
    """Give `core` the features and vectors `train` needs that it lacks (partial_fit): appended
    features get linear 0 and AdaGrad state 1; every feature of `train` without vectors of its
    field's kind (appended, or absent from fit's data) gets them, random as fit draws them."""
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
        core.grow_features(n_features - n_old)
    # features new to the model get their vectors now (fit only allocates those it trains)
    flags = model._aware_flags(core.n_fields)
    single, aware = (vector_features(nodes, flags, kind) for kind in (False, True))
    if single.size or aware.size:
        core.grow_rows(single, aware, float(model.init_std), int(model.seed))


def partial_fit_epoch(
    model: "_FactorizationModel", core: _core.Model, train: "TrainingSource", epoch: int
) -> Dict[str, Any]:
    """One epoch of the fit loop on `core` (trained in place): its record."""
    t0 = time.perf_counter()
    with progress(len(train), f"{type(model).__name__}.partial_fit", "row", model.verbose) as bar:
        record = run_epoch(model, core, train, epoch, bar)
    record["seconds"] = time.perf_counter() - t0
    info(epoch_line(record), model.verbose)
    return record
