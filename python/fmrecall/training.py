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
    mean_sq = max(train.mean_sq_norm(), 1.0)  # rows of small values are not "fewer fields": lr <= 8
    return LR_PER_NODE / mean_sq


# reg_factors="auto": REG_PER_NODE_CUBED / (mean ||x||^2)^3 of the training rows (raw values): 2e-3 at
# 10 one-hot fields (frappe, MovieLens u1 at 11), 3.4e-5 at 39 (Criteo-shaped). Why the cube: with
# the constant value scale a pair's product is 1/m (m = mean ||x||^2), and a model's logit is shared
# by about m^2/2 field pairs, so the signal one pair's vectors see near zero shrinks as 1/m^3; an L2
# above it holds the factors at 0 (a linear model: Criteo-shaped FFM at 4e-4 and 2e-3 both give the
# linear model's 0.5297). README "Accuracy at default settings" has the study.
REG_PER_NODE_CUBED = 2.0
REG_CAP = 2e-3  # the rule at m = 10 (frappe)


def reg_factors(model: "_FactorizationModel", train: "TrainingSource", continued: bool = False) -> float:
    """The L2 on the latent vectors a fit (or, `continued`, a partial_fit) on `train` uses: the
    model's number; for "auto" REG_PER_NODE_CUBED / (mean ||x||^2)^3 of `train`, or the one the model
    trained with so far."""
    if model.reg_factors != "auto":
        return float(model.reg_factors)
    if continued and model.reg_factors_ is not None:
        return model.reg_factors_
    mean_sq = train.mean_sq_norm()
    # at most REG_CAP: the rule was measured from 10 to 39 fields; fewer (or rows of small values)
    # keep the 10-field value instead of growing as 1/m^3 (m = 2 would give 0.25)
    return min(REG_PER_NODE_CUBED / mean_sq**3, REG_CAP) if mean_sq > 0 else REG_CAP


def average_decay(model: "_FactorizationModel") -> float:
    """The decay of fit's moving average of the weights: model.average, at most 1 - 2 / epochs so
    that the average's window, 1 / (1 - decay) epochs, spans at most half of them (a short fit
    keeps its early, barely trained epochs out of it); 0 (no average) for one or two epochs."""
    return max(0.0, min(float(model.average), 1.0 - 2.0 / model.epochs))


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch `epoch` (its permutation; Interactions derive their negative draws from it)."""
    return (int(seed) * 1_000_003 + epoch) & 0xFFFFFFFFFFFFFFFF


def vector_features(nodes: "Dataset", flags: np.ndarray, aware: bool) -> np.ndarray:
    """Sorted int32 features that occur in the field-aware (`aware`) or single fields (`flags`:
    1 = field-aware) of `nodes`, in-model fields only: the features that need vectors of that kind."""
    in_model = nodes.fields < flags.size
    if in_model.all() and (flags[: nodes.n_fields] == aware).all():
        feats = nodes.features  # every node is of that kind (FFM: all field-aware; FM: all single)
    else:
        kind = np.zeros(nodes.nnz, dtype=bool)
        kind[in_model] = flags[nodes.fields[in_model]].astype(bool) == aware
        feats = nodes.features[kind]
    # a presence mask, not np.unique: one O(nnz) scatter instead of a hash or sort of every node
    # (np.unique took ~1.4 s per partial_fit on 17.5M nodes, a third of an FFM k=4 epoch)
    present = np.zeros(nodes.n_features, dtype=bool)  # Dataset features are in [0, n_features)
    present[feats] = True
    return np.flatnonzero(present).astype(np.int32)


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
        row_normalized(model.normalize),
        None if single is None else row_map(n_features, single),
        0 if single is None else int(single.size),
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


def run_epoch(
    model: "_FactorizationModel",
    core: _core.Model,
    train: "TrainingSource",
    epoch: int,
    lr: float,
    reg: float,
    bar: Optional[Bar] = None,
) -> Dict[str, Any]:
    """One epoch on `core` at learning rate `lr` and factor L2 `reg`, chunk by chunk (each chunk through
    ``model._train_part``): its record {"epoch", "train_loss", "learning_rate", "reg_factors"} (mean
    loss per term)."""
    n = len(train)
    order = _core.permutation(n, epoch_seed(model.seed, epoch))
    total, terms = 0.0, 0
    for start in range(0, n, _CHUNK_ROWS):
        part = order[start : start + _CHUNK_ROWS]
        loss_sum, count = model._train_part(core, train, part, epoch, lr, reg)
        total += loss_sum
        terms += count
        if bar is not None:
            bar.update(part.size)
    return {"epoch": epoch, "train_loss": total / max(terms, 1), "learning_rate": lr, "reg_factors": reg}


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
    early stopping after `patience` epochs without improvement restores the best epoch's weights
    (or their average, whichever that epoch scored better: score_epoch). Without `valid`, the core
    ends with the moving average of the weights (model.average > 0, more than two epochs) or the
    last epoch's."""
    model._check_params()
    train.check_labels(model.loss, "train")
    if valid is not None:
        valid.check_labels(model.loss, "valid")
    if len(train) == 0:
        raise ValueError("train has no rows")
    core = new_core(model, train)
    lr = learning_rate(model, train)
    reg = reg_factors(model, train)
    decay = average_decay(model)
    averaging = decay > 0
    history: List[Dict[str, Any]] = []
    best_epoch: Optional[int] = None
    best = np.inf
    since_best = 0
    with progress(len(train) * model.epochs, f"{type(model).__name__}.fit", "row", model.verbose) as bar:
        for epoch in range(1, model.epochs + 1):
            t0 = time.perf_counter()
            record = run_epoch(model, core, train, epoch, lr, reg, bar)
            check_finite(core, record, "fit leaves the model as it was")
            if averaging:
                core.average(decay)  # avg <- decay avg + (1 - decay) weights
            record["averaged"] = averaging
            if valid is not None:
                keep = model.patience is not None and epoch < model.epochs  # the last one needs no copy
                score_epoch(model, core, valid, record, best, keep, averaging)
            record["seconds"] = time.perf_counter() - t0
            history.append(record)
            info(epoch_line(record), model.verbose)
            if valid is None:
                continue
            if record["valid_loss"] < best:
                best, best_epoch, since_best = record["valid_loss"], epoch, 0
            else:
                since_best += 1
                if model.patience is not None and since_best >= model.patience:
                    break  # the bar closes at 100%: the run is complete
    if valid is not None and model.patience is not None and best_epoch not in (None, history[-1]["epoch"]):
        core.restore()  # the snapshot holds what that epoch scored best: weights or average
        info(f"restored epoch {best_epoch} (best valid loss {best:.5f})", model.verbose)
    elif history[-1]["averaged"]:
        core.swap_average()
    core.drop_snapshot()
    core.drop_average()
    return core, history, best_epoch


def score_epoch(
    model: "_FactorizationModel",
    core: _core.Model,
    valid: "TrainingSource",
    record: Dict[str, Any],
    best: float,
    keep: bool,
    averaging: bool,
) -> None:
    """Score the epoch's weights and (`averaging`) their moving average on `valid`; the better
    one goes into `record` ("valid_loss", "valid_auc", "averaged") and, if it beats `best` and
    `keep`, into the core's snapshot. The core holds the weights (not the average) on return."""
    ev = model._evaluate(core, valid)
    averaged = False
    if averaging:
        core.swap_average()
        try:
            ev_avg = model._evaluate(core, valid)
            averaged = bool(ev_avg["loss"] < ev["loss"])
            if averaged:
                ev = ev_avg
                if keep and ev["loss"] < best:
                    core.snapshot()
        finally:
            core.swap_average()
    if keep and not averaged and ev["loss"] < best:
        core.snapshot()
    record["valid_loss"], record["valid_auc"], record["averaged"] = ev["loss"], ev["auc"], averaged


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
    """One epoch of the fit loop on `core` (trained in place): its record. If it diverges, the
    weights it started from are restored (a snapshot taken first) and DivergenceError is raised."""
    t0 = time.perf_counter()
    lr = learning_rate(model, train, continued=True)
    reg = reg_factors(model, train, continued=True)
    core.snapshot()  # the last finite weights, restored if this epoch diverges
    try:
        with progress(len(train), f"{type(model).__name__}.partial_fit", "row", model.verbose) as bar:
            record = run_epoch(model, core, train, epoch, lr, reg, bar)
        record["seconds"] = time.perf_counter() - t0
        record["averaged"] = False  # one epoch in place: the weights themselves
        check_finite(core, record, f"the weights from before epoch {epoch} are restored")
    except DivergenceError:
        core.restore()
        raise
    finally:
        core.drop_snapshot()
    info(epoch_line(record), model.verbose)
    return record
