"""FM, FFM and HybridFM estimators (sklearn-style) over the C++ core.

Thread safety (a web service predicting on many threads while one thread retrains):
- predict / decision_function / split vectors / weights() / save / pickling may run on any number
  of threads while another thread calls fit, partial_fit or save. The C++ core holds a
  readers–writer lock per model (shared for reading and Hogwild training, exclusive while a table
  is reallocated), taken once per call after the GIL is released.
- ``fit`` trains a new core aside and swaps it in (with ``schema_``, ``history_``, ``best_epoch_``)
  only when training has finished: meanwhile predictions come from the previously fitted weights
  (NotFittedError if there were none). A fit that raises leaves the previous model in place.
- ``partial_fit`` trains in place (that is its point): predictions during it see weights in
  progress; features new to the model get their vectors under the exclusive lock.
- ``generation_`` (0 when unfitted) increases whenever the weights change: at the end of fit, after
  each partial_fit, in from_weights, and on load / unpickling (which restore the saved generation,
  at least 1). Read it before the weights to detect a retrained model.
- Pickle, ``copy.deepcopy`` and joblib store the model as its .npz file bytes (fmrecall.persist):
  no arbitrary objects, validated like a file when loaded; unfitted models keep their parameters.
"""

from __future__ import annotations

import inspect
import threading
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple, Union

import numpy as np

from . import _core, training
from ._limits import check_threads
from .model_state import CoreArrays, ModelState
from .model_state import NotFittedError as NotFittedError  # re-exported: fmrecall.models.NotFittedError
from .sides import Sides
from .source import TrainingSource

if TYPE_CHECKING:
    from .schema import Schema
    from .split import Split


def _sigmoid(t: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-t.astype(np.float64)))


class _FactorizationModel(ModelState):
    """Shared estimator machinery: parameters, fit / partial_fit (the loop: fmrecall.training),
    prediction; weights and persistence come from fmrecall.model_state.ModelState.

    Subclasses only say which fields are field-aware (`_aware_flags`) and how their weights()
    arrays map to the core's (`_weights_from_core`, `_core_arrays_from_weights`); the C++ core
    runs one kernel for all.

    The defaults are meant to work untuned (README "Accuracy at default settings"):
    normalize="mean" multiplies every value by one constant fixed at fit time, 1/sqrt(mean ||x||²)
    of the training rows (``scale_``; split-compatible, DESIGN.md §6); "row" / True is libffm's
    whole-row 1/||x|| (ranking only: split() refuses it); "none" / False leaves values as they are.
    learning_rate="auto" is 8 / mean ||x||² of the training rows (0.2 on 39 one-hot fields), the
    value used is ``learning_rate_`` and each history_ record's "learning_rate".
    """

    def __init__(
        self,
        k: int = 4,
        *,
        loss: str = "logistic",
        epochs: int = 30,
        learning_rate: Union[float, str] = "auto",
        reg_linear: float = 2e-5,
        reg_factors: float = 2e-3,
        init_std: float = 0.05,
        normalize: Union[bool, str] = "mean",
        patience: Optional[int] = 3,
        threads: int = 0,
        seed: int = 0,
        n_features: Optional[int] = None,
        n_fields: Optional[int] = None,
        verbose: bool = False,
    ) -> None:
        self.k = k
        self.loss = loss
        self.epochs = epochs
        self.learning_rate = learning_rate
        self.reg_linear = reg_linear
        self.reg_factors = reg_factors
        self.init_std = init_std
        self.normalize = normalize
        self.patience = patience
        self.threads = threads
        self.seed = seed
        self.n_features = n_features
        self.n_fields = n_fields
        self.verbose = verbose
        check_threads(threads)  # a bad count would reach OpenMP (the rest is checked by fit)
        self._core: Optional[_core.Model] = None
        self.schema_: Optional["Schema"] = None  # the Schema of the Interactions it was fit on (saved with it)
        self.history_: List[Dict[str, Any]] = []
        self.best_epoch_: Optional[int] = None
        self.generation_ = 0  # bumped whenever the weights change (see the module docstring)
        self._lock = threading.RLock()  # makes the swap after fit and a save's reading atomic

    # ------------------------------------------------------------------ sklearn conventions
    @classmethod
    def _param_names(cls) -> List[str]:
        names: List[str] = []
        skip = (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
        for klass in cls.__mro__:
            if klass is object or "__init__" not in klass.__dict__:
                continue
            params = inspect.signature(klass.__dict__["__init__"]).parameters
            names += [p for p, spec in params.items() if p != "self" and p not in names and spec.kind not in skip]
        return names

    def get_params(self, deep: bool = True) -> Dict[str, Any]:
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params: Any) -> "_FactorizationModel":
        """Set parameters (sklearn); all are checked before any is set (threads too, here)."""
        valid = set(self._param_names())
        for name in params:
            if name not in valid:
                raise ValueError(f"{type(self).__name__} has no parameter {name!r}; valid: {sorted(valid)}")
        if "threads" in params:
            check_threads(params["threads"])
        for name, value in params.items():
            setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    def _check_params(self) -> None:
        """ValueError naming the parameter for any value fit could not use (also run on every
        loaded file's parameters, so types are checked, not assumed)."""

        def integer(value: Any) -> bool:
            return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))

        def real(value: Any) -> bool:
            return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))

        if not integer(self.k) or not 1 <= self.k <= 512:
            raise ValueError(f"k must be an integer in [1, 512], got {self.k!r}")
        if not isinstance(self.loss, str) or self.loss not in _core.Loss.__members__:
            raise ValueError(f"loss must be one of {sorted(_core.Loss.__members__)}, got {self.loss!r}")
        if not integer(self.epochs) or self.epochs < 1:
            raise ValueError(f"epochs must be a positive integer, got {self.epochs!r}")
        lr: Any = self.learning_rate
        if lr != "auto" and (not real(lr) or not np.isfinite(lr) or lr <= 0):
            raise ValueError(f'learning_rate must be "auto" or a number > 0, got {lr!r}')
        for name in ("reg_linear", "reg_factors", "init_std"):
            value = getattr(self, name)
            if not real(value) or not np.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        if not (isinstance(self.normalize, (bool, np.bool_)) or self.normalize in training.NORMALIZE):
            raise ValueError(f"normalize must be one of {training.NORMALIZE} (or True / False), got {self.normalize!r}")
        if self.patience is not None and (not integer(self.patience) or self.patience < 1):
            raise ValueError(f"patience must be None or a positive integer, got {self.patience!r}")
        check_threads(self.threads)
        if not integer(self.seed) or not 0 <= self.seed < 2**64:
            raise ValueError(f"seed must be an integer in [0, 2**64), got {self.seed!r}")
        for name in ("n_features", "n_fields"):
            value = getattr(self, name)
            if value is not None and (not integer(value) or not 0 <= value < 2**31):
                raise ValueError(f"{name} must be None or an integer in [0, 2**31), got {value!r}")
        if not isinstance(self.verbose, (bool, np.bool_, int, np.integer)):
            raise ValueError(f"verbose must be True or False, got {self.verbose!r}")

    # ------------------------------------------------------------------ subclass hooks
    def _aware_flags(self, n_fields: int) -> np.ndarray:
        """uint8 (n_fields,): 1 for the fields whose features keep one vector per field."""
        raise NotImplementedError

    def _weights_from_core(self, w: Dict[str, Any], core: _core.Model) -> Dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def _core_arrays_from_weights(cls, weights: Dict[str, Any], hyper: Dict[str, Any]) -> CoreArrays:
        """(n_fields, aware_row, field-aware rows, v, W) of the arrays weights() returns."""
        raise NotImplementedError

    # ------------------------------------------------------------------ training (fmrecall.training)
    def fit(self, train: TrainingSource, valid: Optional[TrainingSource] = None) -> "_FactorizationModel":
        """Train with AdaGrad SGD (Hogwild over `threads`), rows reshuffled every epoch.

        `train` is a Dataset of labelled rows, or fmrecall.Interactions (users, items and events
        kept apart; the rows are assembled in C++): labelled events, or implicit feedback with
        `negatives` items sampled per positive per epoch (logistic loss, or loss="bpr").

        With `valid`, each epoch is scored on it; training stops once the validation loss has
        not improved for `patience` epochs and the best epoch's weights are restored (a copy of
        the weights only, never of the AdaGrad state). Returns self.

        The new weights are trained aside: until fit returns, other threads keep predicting with
        the previous weights (or get NotFittedError), and a fit that raises changes nothing. At
        the end the new core, schema_, history_ and best_epoch_ are swapped in and generation_
        increases. The old weights stay in memory until then: a refit needs room for both models
        (partial_fit, in place, does not).
        """
        core, history, best_epoch = training.fit(self, train, valid)
        # the swap: readers take self._core once per call, so each sees the old or the new model
        with self._lock:
            self._core = core
            self.schema_ = train.source_schema()
            self.history_ = history
            self.best_epoch_ = best_epoch
            self._bump_generation()
        return self

    def partial_fit(self, train: TrainingSource) -> "_FactorizationModel":
        """One more epoch over `train`, continuing from the current weights and AdaGrad state
        (a fresh model is created first if there is none). For incremental daily updates.

        New features: `train` may use feature indices beyond the model's n_features (a schema
        grown by ``Schema.partial_fit`` / ``Interactions(..., grow=True)``, or a larger Dataset).
        The model appends them first: linear weight 0, latent vectors random like fit's for those
        that occur in `train` (zero, hence neutral, for the others), AdaGrad state 1, and
        field-aware vectors for those in field-aware fields; existing parameters do not move.
        New fields are not supported (ValueError: refit). For Interactions the model's schema_
        becomes train's schema, which must be schema_ itself or a growth of it.

        Trains in place: threads predicting meanwhile see the weights in progress (features new
        to the model get their vectors under the core's exclusive lock, so that is safe).
        generation_ increases once the epoch is done: a Recaller built before refuses to search,
        build a new one over the grown model (it can add the new items)."""
        self._check_params()
        train.check_labels(self.loss, "train")
        current = self._core
        fresh_model = current is None  # then built aside like fit, swapped in once trained
        core = training.new_core(self, train) if current is None else current
        schema = train.source_schema()
        if schema is not None and not fresh_model and self.schema_ is not None and not schema.extends(self.schema_):
            raise ValueError(
                "train's schema is neither the model's schema_ nor a growth of it "
                "(Schema.partial_fit / Interactions(..., grow=True)): refit instead"
            )
        training.grow(self, core, train)
        epoch = 1 if fresh_model else len(self.history_) + 1
        record = training.partial_fit_epoch(self, core, train, epoch)
        with self._lock:
            if fresh_model:
                self._core = core
                self.schema_ = schema
                self.history_ = [record]
                self.best_epoch_ = None
            elif self._core is not core:  # a fit swapped in other weights meanwhile: this epoch is gone
                return self
            else:
                self.history_ = self.history_ + [record]  # a new list: readers of the old one are safe
                if schema is not None and self.schema_ is not None:
                    self.schema_ = schema  # a grown schema (checked above) goes with the grown model
            self._bump_generation()
        return self

    @property
    def learning_rate_(self) -> Optional[float]:
        """The learning rate the last epoch trained with (learning_rate="auto" derives it from the
        data at fit time), None before any training."""
        history = self.history_
        return float(history[-1]["learning_rate"]) if history and "learning_rate" in history[-1] else None

    def _train_part(
        self, core: _core.Model, train: TrainingSource, order: np.ndarray, epoch: int, lr: float
    ) -> Tuple[float, int]:
        """One chunk of an epoch in C++ on `core` at learning rate `lr`: (summed loss, loss terms)."""
        loss = _core.Loss.__members__[self.loss].value
        return train.train_chunk(
            core,
            order,
            loss,
            training.epoch_seed(self.seed, epoch),
            lr,
            float(self.reg_linear),
            float(self.reg_factors),
            int(self.threads),
        )

    def _evaluate(self, core: _core.Model, data: TrainingSource) -> Dict[str, float]:
        """{"loss", "auc"} on `data` (implicit feedback: negatives drawn with a fixed seed)."""
        return data.evaluate(core, self.loss, int(self.seed) + 7919, int(self.threads))

    # ------------------------------------------------------------------ prediction
    def decision_function(self, data: TrainingSource) -> np.ndarray:
        """Raw model scores, float32 (n_rows,) — or (n_events,) for Interactions. Indices beyond the
        model are ignored."""
        return data.scores(self._require_core(), int(self.threads))

    def predict(self, data: TrainingSource) -> np.ndarray:
        """Probabilities σ(score) for the logistic loss, raw scores for squared and BPR (whose scores
        only rank). float (n_rows,)."""
        s = self.decision_function(data)
        return _sigmoid(s) if self.loss == "logistic" else s

    def split(self, sides: Sides) -> "Split":
        """The exact query/item split of this model for `sides` (DESIGN.md §2–4):
        score(query row ⊕ item row) = b_q + <q, p>. See fmrecall.split.Split."""
        from .split import Split

        return Split(self, sides)


def _unpickle_model(payload: bytes) -> _FactorizationModel:
    """What a pickled model calls (its path, fmrecall.models._unpickle_model, is in every pickle)."""
    from .persist import model_from_bytes

    return model_from_bytes(payload)


def _check_factors(arr: Any, ndim: int, name: str, n_features: Optional[int] = None) -> np.ndarray:
    a = np.ascontiguousarray(arr, dtype=np.float32)
    if a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-d, got shape {a.shape}")
    if n_features is not None and a.shape[0] != n_features:
        raise ValueError(f"{name} has {a.shape[0]} rows but linear has {n_features}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains a non-finite value")
    return a


class FM(_FactorizationModel):
    """Factorization Machine: score = w0 + Σ w_j x_j + Σ_{i<j} <v_i, v_j> x_i x_j.

    weights(): {"bias": float, "linear": (n,), "factors": (n, k)} (float32).
    Fields do not change the score; they only say which side a feature is on for the split.
    """

    def _aware_flags(self, n_fields: int) -> np.ndarray:
        return np.zeros(n_fields, dtype=np.uint8)

    def _weights_from_core(self, w: Dict[str, Any], core: _core.Model) -> Dict[str, Any]:
        return {"factors": w["v"]}

    @classmethod
    def _core_arrays_from_weights(cls, weights: Dict[str, Any], hyper: Dict[str, Any]) -> CoreArrays:
        n = np.asarray(weights["linear"]).size
        v = _check_factors(weights.get("factors"), 2, "factors", n)
        n_fields = hyper.get("n_fields") or weights.get("n_fields")
        if n_fields is None:
            raise ValueError("FM.from_weights needs n_fields (fields beyond it would be ignored)")
        return int(n_fields), None, 0, v, None


class FFM(_FactorizationModel):
    """Field-aware FM: score = w0 + Σ w_j x_j + Σ_{i<j} <w_{i,f(j)}, w_{j,f(i)}> x_i x_j.

    Every feature keeps one vector per field, its own field included (libffm convention).
    weights(): {"bias": float, "linear": (n,), "factors": (n, F, k)} (float32).
    """

    def _aware_flags(self, n_fields: int) -> np.ndarray:
        return np.ones(n_fields, dtype=np.uint8)

    def _weights_from_core(self, w: Dict[str, Any], core: _core.Model) -> Dict[str, Any]:
        rows = w["aware_row"]
        if w["W"] is None:  # no feature has field-aware vectors (nothing trained yet)
            return {"factors": np.zeros((w["linear"].size, core.n_fields, core.k), np.float32)}
        if rows is None:
            return {"factors": w["W"]}
        full = np.zeros((rows.size,) + w["W"].shape[1:], dtype=np.float32)  # unseen features: zeros
        has = rows >= 0
        full[has] = w["W"][rows[has]]
        return {"factors": full}

    @classmethod
    def _core_arrays_from_weights(cls, weights: Dict[str, Any], hyper: Dict[str, Any]) -> CoreArrays:
        n = np.asarray(weights["linear"]).size
        W = _check_factors(weights.get("factors"), 3, "factors", n)
        return W.shape[1], None, n, None, W


class HybridFM(_FactorizationModel):
    """Field-aware on one side only (DESIGN.md §4): the features of the `field_aware` side keep one
    vector per field (FFM rule among themselves), the other side's features keep one vector (FM
    rule among themselves), and a cross pair scores <v_i, w_{j,f(i)}>. The split is exact with
    dim |F_query|·k + 1 (field_aware="item") or |F_item|·k + 1 (field_aware="query").
    Put high-cardinality id fields on the single-vector side.

    weights(): {"bias", "linear": (n,), "factors": (n, k) single vectors,
                "field_factors": (m, F, k) field-aware vectors, "aware_row": (n,) int32 row of
                field_factors for each feature (-1: none; such a feature in a field-aware field
                contributes only its linear weight)}. from_weights also takes the key "field_rows",
                this map's name before 0.2.
    """

    def __init__(self, k: int = 4, *, field_aware: str = "item", sides: Optional[Sides] = None, **kwargs: Any) -> None:
        super().__init__(k, **kwargs)
        self.field_aware = field_aware
        self.sides = sides

    def _check_params(self) -> None:
        super()._check_params()
        if self.field_aware not in ("item", "query"):
            raise ValueError(f"field_aware must be 'item' or 'query', got {self.field_aware!r}")
        if not isinstance(self.sides, Sides):
            raise ValueError("HybridFM needs sides=fmrecall.Sides(user=..., context=..., item=...)")

    def _aware_flags(self, n_fields: int) -> np.ndarray:
        if not isinstance(self.sides, Sides):
            raise ValueError("HybridFM needs sides=fmrecall.Sides(user=..., context=..., item=...)")
        item = self.sides.item_mask(n_fields)
        return item if self.field_aware == "item" else (1 - item).astype(np.uint8)

    def _weights_from_core(self, w: Dict[str, Any], core: _core.Model) -> Dict[str, Any]:
        return {"factors": w["v"], "field_factors": w["W"], "aware_row": w["aware_row"]}

    @classmethod
    def _core_arrays_from_weights(cls, weights: Dict[str, Any], hyper: Dict[str, Any]) -> CoreArrays:
        n = np.asarray(weights["linear"]).size
        if not isinstance(hyper.get("sides"), Sides):
            raise ValueError("HybridFM.from_weights needs sides=fmrecall.Sides(...)")
        v = _check_factors(weights.get("factors"), 2, "factors", n)
        W = _check_factors(weights.get("field_factors"), 3, "field_factors")
        raw = np.asarray(weights["aware_row"] if "aware_row" in weights else weights.get("field_rows"))
        if raw.shape != (n,):
            raise ValueError(f"aware_row must have shape ({n},), got {raw.shape}")
        if raw.size and raw.dtype.kind not in "iu":
            raise ValueError(f"aware_row must hold integers, got dtype {raw.dtype}")
        if raw.size and (raw.min() < -1 or raw.max() >= W.shape[0]):
            raise ValueError(f"aware_row entries must be -1 or < {W.shape[0]}")
        rows = np.ascontiguousarray(raw, dtype=np.int32)
        return W.shape[1], rows, W.shape[0], v, W

    def split(self, sides: Optional[Sides] = None) -> "Split":
        """The exact query/item split; `sides` defaults to (and must match) the model's own."""
        if sides is not None and sides != self.sides:
            raise ValueError(f"a HybridFM is field-aware by side: split it with its own sides {self.sides}")
        if not isinstance(self.sides, Sides):
            raise ValueError("HybridFM needs sides=fmrecall.Sides(user=..., context=..., item=...)")
        return super().split(self.sides)
