"""FM, FFM and HybridFM estimators over the C++ core.

scikit-learn conventions (scikit-learn itself optional; tested with its check_estimator): the loss
makes a binary classifier ("logistic", "bpr") or a regressor ("squared") through
``__sklearn_tags__``; fit / predict take a Dataset / Interactions or a matrix X with labels y
(fmrecall.estimator_input); classifiers' predict gives labels, predict_proba (logistic only)
probabilities, decision_function raw scores. Constructors and set_params store parameters; fit and
predict check them.

Thread safety (a web service predicting on many threads while one thread retrains):
- predict / decision_function / split vectors / weights() / save / pickling may run on any number
  of threads while another thread calls fit, partial_fit or save. The C++ core holds a
  readers–writer lock per model (shared for reading and Hogwild training, exclusive while a table
  is reallocated), taken once per call after the GIL is released.
- ``fit`` trains a new core aside and swaps it in (with ``schema_``, ``history_``, ``best_epoch_``,
  ``classes_``) only when training has finished: meanwhile predictions come from the previously
  fitted weights (NotFittedError if there were none). A fit that raises leaves the previous model
  in place.
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
import warnings
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Protocol, Tuple, TypeVar, Union, cast

import numpy as np
import numpy.typing as npt

from . import _core, training
from ._limits import check_threads
from .dataset import Dataset
from .estimator_input import class_labels, column_fields, is_source, matrix_rows, regression_targets, source_classes
from .model_state import CoreArrays, ModelState
from .model_state import NotFittedError as NotFittedError  # re-exported: fmrecall.models.NotFittedError
from .sides import Sides
from .sklearn_tags import estimator_type, sklearn_tags
from .source import TrainingSource

if TYPE_CHECKING:
    from .split import Split


_M = TypeVar("_M", bound="_FactorizationModel")  # fit / partial_fit / set_params return self's own type


class SparseMatrix(Protocol):
    """A scipy.sparse matrix or array (any format): what fit / predict need of one."""

    @property
    def shape(self) -> Tuple[int, ...]: ...

    def tocsr(self) -> Any: ...


# what fit / predict take: a Dataset / Interactions, or a matrix X (array-like or scipy sparse)
Rows = Union[TrainingSource, npt.ArrayLike, SparseMatrix]


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
    reg_factors="auto" is 2 / (mean ||x||²)³ of the training rows (2e-3 on 10 one-hot fields, 3.4e-5
    on 39), the value used is ``reg_factors_`` and each history_ record's "reg_factors".
    average=0.9: fit keeps a per-epoch exponential moving average of the weights,
    avg ← average·avg + (1 − average)·weights after each epoch (the first epoch's weights start it),
    and returns it; with `valid`, each epoch scores both the weights and their average and keeps
    the better (history_ record "averaged"). 0 returns the last (or best) epoch's weights. The
    decay used is at most 1 − 2/epochs (none for one or two epochs: training.average_decay).
    partial_fit (one epoch in place) does not average.
    """

    def __init__(
        self,
        k: int = 4,
        *,
        loss: str = "logistic",
        epochs: int = 30,
        learning_rate: Union[float, str] = "auto",
        reg_linear: float = 2e-5,
        reg_factors: Union[float, str] = "auto",
        init_std: float = 0.05,
        normalize: Union[bool, str] = "mean",
        patience: Optional[int] = 3,
        average: float = 0.9,
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
        self.average = average
        self.threads = threads
        self.seed = seed
        self.n_features = n_features
        self.n_fields = n_fields
        self.verbose = verbose
        # sklearn: parameters are stored as given and checked by fit / predict (_check_params);
        # fitted attributes (schema_, history_, best_epoch_, generation_, classes_, ...) appear with fit
        self._core: Optional[_core.Model] = None
        self._classes: Optional[np.ndarray] = None  # classes_ of a classifier's fit (None: [0, 1])
        self._columns: Optional[np.ndarray] = None  # int32 field of each column of a matrix fit
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

    def set_params(self: _M, **params: Any) -> _M:
        """Set parameters (sklearn); unknown names raise before any is set, values are checked by
        fit / predict (as for the constructor)."""
        valid = set(self._param_names())
        for name in params:
            if name not in valid:
                raise ValueError(f"{type(self).__name__} has no parameter {name!r}; valid: {sorted(valid)}")
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
        reg: Any = self.reg_factors
        if reg != "auto" and (not real(reg) or not np.isfinite(reg) or reg < 0):
            raise ValueError(f'reg_factors must be "auto" or a number >= 0, got {reg!r}')
        for name in ("reg_linear", "init_std"):
            value = getattr(self, name)
            if not real(value) or not np.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        if not (isinstance(self.normalize, (bool, np.bool_)) or self.normalize in training.NORMALIZE):
            raise ValueError(f"normalize must be one of {training.NORMALIZE} (or True / False), got {self.normalize!r}")
        if self.patience is not None and (not integer(self.patience) or self.patience < 1):
            raise ValueError(f"patience must be None or a positive integer, got {self.patience!r}")
        if not real(self.average) or not 0 <= self.average < 1:
            raise ValueError(f"average must be a number in [0, 1), got {self.average!r}")
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
        """(n_fields, single_row, aware_row, field-aware rows, v, W) of the arrays weights() returns."""
        raise NotImplementedError

    # ------------------------------------------------------------------ sklearn recognition (fmrecall.sklearn_tags)
    def __sklearn_tags__(self) -> Any:
        """sklearn.utils.Tags: a binary classifier for loss "logistic" / "bpr", a regressor for
        "squared"; sparse input; non-deterministic unless threads == 1 (Hogwild)."""
        return sklearn_tags(self)

    def __sklearn_is_fitted__(self) -> bool:
        return self._core is not None

    @property
    def _estimator_type(self) -> str:  # what scikit-learn < 1.6 reads (is_classifier / is_regressor)
        return estimator_type(self.loss)

    @property
    def classes_(self) -> np.ndarray:
        """The two class labels (classifiers: loss "logistic" / "bpr"), sorted; ``classes_[1]`` is
        the positive class. From y for a matrix fit, else [0, 1] (or [-1, 1] for labels in {-1, 1}).
        AttributeError for a regressor; NotFittedError before fit."""
        if estimator_type(self.loss) != "classifier":
            raise AttributeError(f"a {type(self).__name__} with loss={self.loss!r} is a regressor: no classes_")
        self._require_core()
        return self._classes if self._classes is not None else np.array([0, 1])

    @property
    def n_features_in_(self) -> int:
        """Columns of the matrix X of a matrix fit; for a Dataset / Interactions fit, the model's
        number of features (n_features_). NotFittedError before fit."""
        core = self._require_core()
        columns = self._columns
        return int(columns.size) if columns is not None else int(core.n_features)

    # ------------------------------------------------------------------ hooks of fmrecall.persist
    def _matrix_state(self) -> Tuple[Dict[str, Any], Optional[np.ndarray]]:
        """({"classes": [...], "classes_dtype": ...} or {}, field of each column or None): what a
        saved model keeps of a classifier's classes_ and a matrix fit's columns."""
        with self._lock:
            classes, columns = self._classes, self._columns
        meta: Dict[str, Any] = {}
        if classes is not None:
            kind = classes.dtype.kind
            meta = {"classes": classes.tolist(), "classes_dtype": classes.dtype.str if kind in "biufU" else "object"}
        return meta, columns

    def _set_matrix_state(self, meta: Any, columns: Optional[np.ndarray], n_fields: int, where: str) -> None:
        """Inverse of _matrix_state, validated (ValueError naming `where`)."""
        if meta:
            raw = meta.get("classes") if isinstance(meta, dict) else None
            dtype = meta.get("classes_dtype") if isinstance(meta, dict) else None
            ok = isinstance(raw, list) and len(raw) == 2 and isinstance(dtype, str)
            try:
                classes = np.asarray(raw, dtype=object if dtype == "object" else np.dtype(dtype)) if ok else None
            except (TypeError, ValueError):
                classes = None
            if classes is None or classes.shape != (2,):
                raise ValueError(f"{where}: estimator classes must be two labels with a dtype, got {meta!r}")
            self._classes = classes
        if columns is not None:
            if columns.dtype != np.int32 or columns.ndim != 1 or columns.size == 0:
                raise ValueError(f"{where}: member 'columns' must be a non-empty int32 vector")
            if columns.min() < 0 or columns.max() >= n_fields:
                raise ValueError(f"{where}: member 'columns' names a field outside [0, {n_fields})")
            self._columns = np.ascontiguousarray(columns)

    # ------------------------------------------------------------------ training (fmrecall.training)
    def _training_data(
        self, train: Any, y: Any, fields: Any, classes: Any, fresh: bool, what: str
    ) -> Tuple[TrainingSource, Optional[np.ndarray], Optional[np.ndarray]]:
        """(source, classes_, field_of_column) of fit / partial_fit's arguments: a TrainingSource as
        it is, or a matrix X with labels y (fmrecall.estimator_input)."""
        classifier = estimator_type(self.loss) == "classifier"
        if is_source(train):
            if y is not None:
                raise ValueError(f"y: a Dataset / Interactions carries its own labels; {what}(train) takes no y")
            if fields is not None:
                raise ValueError("fields= maps the columns of a matrix X to fields; a Dataset has its own fields")
            keep = self._classes if not fresh else None
            return train, (keep if keep is not None else source_classes(train)) if classifier else None, None
        columns = None if fresh else self._columns
        if not fresh and columns is None:
            raise ValueError(
                f"this {type(self).__name__} was fit on a Dataset / Interactions: {what} it on that kind of data"
            )
        rows = matrix_rows(train, columns, "X", fitting=True, who=type(self).__name__)
        if fresh:
            columns = column_fields(fields, rows.n_features)
        elif (
            fields is not None
            and columns is not None
            and not np.array_equal(column_fields(fields, rows.n_features), columns)
        ):
            raise ValueError("fields= differs from the fields the model was fit with")
        assert columns is not None
        who = type(self).__name__
        if classifier:
            known = classes if fresh else self._classes
            classes_, labels = class_labels(y, rows.n_rows, who, None if known is None else np.asarray(known))
        else:
            classes_, labels = None, regression_targets(y, rows.n_rows, who)
        source = Dataset(
            rows.indptr,
            columns[rows.features] if rows.nnz else rows.fields,
            rows.features,
            rows.values,
            labels,
            n_features=rows.n_features,
            n_fields=int(columns.max()) + 1,
        )
        return source, classes_, columns

    def _validation_data(self, valid: Any, classes: Optional[np.ndarray], columns: Optional[np.ndarray]) -> Any:
        """fit's `valid`: None, a TrainingSource, or (X_valid, y_valid) for a matrix fit."""
        if valid is None or is_source(valid):
            return valid
        if columns is None or not isinstance(valid, tuple) or len(valid) != 2:
            raise ValueError("valid must be a Dataset / Interactions, or (X_valid, y_valid) when fitting on a matrix X")
        rows = matrix_rows(valid[0], columns, "valid X", who=type(self).__name__)
        who = type(self).__name__
        if classes is not None:
            labels = class_labels(valid[1], rows.n_rows, who, classes)[1]
        else:
            labels = regression_targets(valid[1], rows.n_rows, who)
        return Dataset(
            rows.indptr,
            rows.fields,
            rows.features,
            rows.values,
            labels,
            n_features=rows.n_features,
            n_fields=rows.n_fields,
        )

    def fit(
        self: _M,
        train: Rows,
        y: Optional[npt.ArrayLike] = None,
        *,
        valid: Optional[Union[TrainingSource, Tuple[Any, Any]]] = None,
        fields: Optional[npt.ArrayLike] = None,
    ) -> _M:
        """Train with AdaGrad SGD (Hogwild over `threads`), rows reshuffled every epoch. Returns self.

        `train` is a Dataset of labelled rows, or fmrecall.Interactions (users, items and events
        kept apart; the rows are assembled in C++): labelled events, or implicit feedback with
        `negatives` items sampled per positive per epoch (logistic loss, or loss="bpr"); `y` is
        then None. Or, sklearn style, a matrix X (numpy array, list of lists, DataFrame of
        numbers, scipy sparse matrix) with labels `y`: column c is feature c of field c, or of
        field ``fields[c]`` (fmrecall.estimator_input); classifiers (logistic, bpr) take any two
        class labels (``classes_``), regressors (squared) real targets.

        Without `valid`, fit returns the moving average of the weights over its epochs
        (`average`, 0.9 by default; 0: the last epoch's weights). With `valid` (a Dataset /
        Interactions, or ``(X_valid, y_valid)`` for a matrix fit), each epoch scores both the
        weights and their average on it and keeps the better (history_ record "averaged"); training
        stops once the validation loss has not improved for `patience` epochs, and what the best
        epoch kept is restored (a copy of the weights only, never of the AdaGrad state).

        The new weights are trained aside: until fit returns, other threads keep predicting with
        the previous weights (or get NotFittedError), and a fit that raises changes nothing. At
        the end the new core, schema_, history_, best_epoch_ and classes_ are swapped in and
        generation_ increases. The old weights stay in memory until then: a refit needs room for
        both models, plus up to two copies of the new weights without their AdaGrad state (the
        average and the early-stopping snapshot); partial_fit, in place, needs room for one such
        copy (the snapshot it restores if the epoch diverges).
        """
        if is_source(train) and is_source(y):  # fit(train, valid), the signature before 0.2
            if valid is not None:
                raise ValueError("valid given twice: as y and as valid=")
            warnings.warn(
                "fit(train, valid) is deprecated: pass the validation data by keyword, fit(train, valid=valid)",
                DeprecationWarning,
                stacklevel=2,
            )
            y, valid = None, cast(TrainingSource, y)
        source, classes, columns = self._training_data(train, y, fields, None, True, "fit")
        valid_source = self._validation_data(valid, classes, columns)
        core, history, best_epoch = training.fit(self, source, valid_source)
        # the swap: readers take self._core once per call, so each sees the old or the new model
        with self._lock:
            self._core = core
            self._classes, self._columns = classes, columns
            self.schema_ = source.source_schema()
            self.history_ = history
            self.best_epoch_ = best_epoch
            self._bump_generation()
        return self

    def partial_fit(
        self: _M,
        train: Rows,
        y: Optional[npt.ArrayLike] = None,
        *,
        classes: Optional[npt.ArrayLike] = None,
        fields: Optional[npt.ArrayLike] = None,
    ) -> _M:
        """One more epoch over `train`, continuing from the current weights and AdaGrad state
        (a fresh model is created first if there is none). For incremental daily updates.
        `train` / `y` / `fields` as in fit; a matrix X must have the columns of the first fit, and
        `classes` (sklearn) names the two classes at the first call when y may not hold both.

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
        current = self._core
        fresh_model = current is None  # then built aside like fit, swapped in once trained
        data, classes_, columns = self._training_data(train, y, fields, classes, fresh_model, "partial_fit")
        data.check_labels(self.loss, "train")
        core = training.new_core(self, data) if current is None else current
        schema = data.source_schema()
        if schema is not None and not fresh_model and self.schema_ is not None and not schema.extends(self.schema_):
            raise ValueError(
                "train's schema is neither the model's schema_ nor a growth of it "
                "(Schema.partial_fit / Interactions(..., grow=True)): refit instead"
            )
        training.grow(self, core, data)
        epoch = 1 if fresh_model else len(self.history_) + 1
        record = training.partial_fit_epoch(self, core, data, epoch)
        with self._lock:
            if fresh_model:
                self._core = core
                self._classes, self._columns = classes_, columns
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

    @property
    def reg_factors_(self) -> Optional[float]:
        """The L2 on the latent vectors the last epoch trained with (reg_factors="auto" derives it
        from the data at fit time), None before any training."""
        history = self.history_
        return float(history[-1]["reg_factors"]) if history and "reg_factors" in history[-1] else None

    def _train_part(
        self, core: _core.Model, train: TrainingSource, order: np.ndarray, epoch: int, lr: float, reg: float
    ) -> Tuple[float, int]:
        """One chunk of an epoch in C++ on `core` at learning rate `lr` and factor L2 `reg`: (summed
        loss, loss terms)."""
        loss = _core.Loss.__members__[self.loss].value
        return train.train_chunk(
            core,
            order,
            loss,
            training.epoch_seed(self.seed, epoch),
            lr,
            float(self.reg_linear),
            reg,
            int(self.threads),
        )

    def _evaluate(self, core: _core.Model, data: TrainingSource) -> Dict[str, float]:
        """{"loss", "auc"} on `data` (implicit feedback: negatives drawn with a fixed seed)."""
        return data.evaluate(core, self.loss, int(self.seed) + 7919, int(self.threads))

    # ------------------------------------------------------------------ prediction
    def _rows(self, X: Any) -> TrainingSource:
        """A TrainingSource as it is; a matrix X encoded with the fit's columns (ValueError if the
        model was fit on a Dataset / Interactions, or X has another number of columns)."""
        if is_source(X):
            return cast(TrainingSource, X)
        columns = self._columns
        if columns is None:
            raise ValueError(
                f"this {type(self).__name__} was fit on a Dataset / Interactions (fields of its own), "
                f"not on a matrix X: predict on a Dataset / Interactions"
            )
        return matrix_rows(X, columns, "X", who=type(self).__name__)

    def decision_function(self, X: Rows) -> np.ndarray:
        """Raw model scores, float32 (n_rows,) — or (n_events,) for Interactions. `X`: a Dataset /
        Interactions, or a matrix with the columns of a matrix fit. Indices beyond the model are
        ignored."""
        core = self._require_core()
        return self._rows(X).scores(core, check_threads(self.threads))

    def predict(self, X: Rows) -> np.ndarray:
        """Classifiers (loss "logistic" / "bpr"): the class label of every row, ``classes_[1]``
        where the score is > 0 (σ(score) > 0.5), else ``classes_[0]``. Regressors (loss
        "squared"): the predicted values, float32. (Before 0.2 predict returned σ(score): that is
        ``predict_proba(X)[:, 1]`` now.)"""
        s = self.decision_function(X)
        if estimator_type(self.loss) == "regressor":
            return s
        return self.classes_[(s > 0).astype(np.intp)]

    @property
    def predict_proba(self) -> Callable[[Rows], np.ndarray]:
        """``predict_proba(X)``: float64 (n_rows, 2), columns ``[1 − σ(s), σ(s)]`` for
        ``classes_[0]``, ``classes_[1]``, s the raw score. Under implicit feedback with sampled
        negatives σ(s) is P(positive vs a sampled negative), not a click rate. Only for
        loss="logistic" (AttributeError otherwise, so sklearn falls back to decision_function:
        bpr scores only rank, squared is a regressor)."""
        if self.loss != "logistic":
            raise AttributeError(
                f"predict_proba needs loss='logistic'; this {type(self).__name__} has loss={self.loss!r} "
                f"(use decision_function for its scores)"
            )
        return self._predict_proba

    def _predict_proba(self, X: Rows) -> np.ndarray:
        p = _sigmoid(self.decision_function(X))
        return np.column_stack([1.0 - p, p])

    def score(self, X: Rows, y: Optional[npt.ArrayLike] = None, sample_weight: Optional[npt.ArrayLike] = None) -> float:
        """sklearn's score: mean accuracy of predict (classifiers) or R² (regressors), weighted by
        `sample_weight`. `y` defaults to the labels of a Dataset / Interactions."""
        if y is None and is_source(X):
            y = getattr(X, "labels", None)
            if y is None:
                raise ValueError("score needs labels: this data has none (give y)")
        pred = self.predict(X)
        truth = np.asarray(y).ravel()
        if truth.shape != pred.shape:
            raise ValueError(f"y has {truth.size} entries, the data {pred.size} rows")
        w = np.ones(pred.size) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64).ravel()
        if w.shape != pred.shape:
            raise ValueError(f"sample_weight has {w.size} entries, the data {pred.size} rows")
        if estimator_type(self.loss) == "classifier":
            return float(np.average(pred == truth, weights=w))
        t = truth.astype(np.float64)
        residual = float(np.sum(w * (t - pred) ** 2))
        total = float(np.sum(w * (t - np.average(t, weights=w)) ** 2))
        if total == 0.0:
            return 1.0 if residual == 0.0 else 0.0
        return 1.0 - residual / total

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


def _check_row_map(raw: Any, n: int, rows: int, name: str, unique: bool) -> np.ndarray:
    """int32 (n,) feature -> row map, each entry -1 or < rows (and no row twice if `unique`)."""
    a = np.asarray(raw)
    if a.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {a.shape}")
    if a.size and a.dtype.kind not in "iu":
        raise ValueError(f"{name} must hold integers, got dtype {a.dtype}")
    if a.size and (a.min() < -1 or a.max() >= rows):
        raise ValueError(f"{name} entries must be -1 or < {rows}")
    used = a[a >= 0]
    if unique and np.unique(used).size != used.size:
        raise ValueError(f"{name} gives two features the same row")
    return np.ascontiguousarray(a, dtype=np.int32)


def _single_from_core(w: Dict[str, Any], core: _core.Model) -> Dict[str, Any]:
    """weights()' single vectors: "factors" (rows, k) and "single_row" (n,) (explicit even where
    the core's map is the identity: a model loaded from a dense file)."""
    n = w["linear"].size
    v = w["v"] if w["v"] is not None else np.zeros((0, core.k), np.float32)
    rows = w["single_row"] if w["single_row"] is not None else np.arange(n, dtype=np.int32)
    return {"factors": v, "single_row": rows}


def _single_from_weights(weights: Dict[str, Any], n: int) -> Tuple[Optional[np.ndarray], np.ndarray]:
    """(single_row or None, v) of weights: "factors" (rows, k) with its "single_row" map, or the
    dense layout before 0.2 (factors (n, k), no map: row j is feature j's)."""
    if weights.get("single_row") is None:
        return None, _check_factors(weights.get("factors"), 2, "factors", n)
    v = _check_factors(weights.get("factors"), 2, "factors")
    return _check_row_map(weights["single_row"], n, v.shape[0], "single_row", unique=True), v


class FM(_FactorizationModel):
    """Factorization Machine: score = w0 + Σ w_j x_j + Σ_{i<j} <v_i, v_j> x_i x_j.

    weights(): {"bias": float, "linear": (n,), "factors": (m, k) latent vectors, "single_row": (n,)
    int32 row of factors for each feature (-1: none, the feature was not seen in training: its
    pairs are 0, it contributes only its linear weight)} (float32). Only seen features have a
    vector, so a hashed field costs what its used buckets cost. from_weights also takes the dense
    layout written before 0.2: "factors" (n, k) without "single_row".
    Fields do not change the score; they only say which side a feature is on for the split.
    """

    def _aware_flags(self, n_fields: int) -> np.ndarray:
        return np.zeros(n_fields, dtype=np.uint8)

    def _weights_from_core(self, w: Dict[str, Any], core: _core.Model) -> Dict[str, Any]:
        return _single_from_core(w, core)

    @classmethod
    def _core_arrays_from_weights(cls, weights: Dict[str, Any], hyper: Dict[str, Any]) -> CoreArrays:
        n = np.asarray(weights["linear"]).size
        single_row, v = _single_from_weights(weights, n)
        n_fields = hyper.get("n_fields") or weights.get("n_fields")
        if n_fields is None:
            raise ValueError("FM.from_weights needs n_fields (fields beyond it would be ignored)")
        return int(n_fields), single_row, None, 0, v, None


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
        return W.shape[1], None, None, n, None, W


class HybridFM(_FactorizationModel):
    """Field-aware on one side only (DESIGN.md §4): the features of the `field_aware` side keep one
    vector per field (FFM rule among themselves), the other side's features keep one vector (FM
    rule among themselves), and a cross pair scores <v_i, w_{j,f(i)}>. The split is exact with
    dim |F_query|·k + 1 (field_aware="item") or |F_item|·k + 1 (field_aware="query").
    Put high-cardinality id fields on the single-vector side.

    weights(): {"bias", "linear": (n,), "factors": (m_s, k) single vectors, "single_row": (n,)
                int32 row of factors for each feature, "field_factors": (m, F, k) field-aware
                vectors, "aware_row": (n,) int32 row of field_factors for each feature (-1: none;
                such a feature contributes only its linear weight in a field of that kind)}. Only
                features seen in training have vectors. from_weights also takes the key
                "field_rows", this map's name before 0.2, and dense "factors" (n, k) without
                "single_row" (before 0.2).
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
        return {**_single_from_core(w, core), "field_factors": w["W"], "aware_row": w["aware_row"]}

    @classmethod
    def _core_arrays_from_weights(cls, weights: Dict[str, Any], hyper: Dict[str, Any]) -> CoreArrays:
        n = np.asarray(weights["linear"]).size
        if not isinstance(hyper.get("sides"), Sides):
            raise ValueError("HybridFM.from_weights needs sides=fmrecall.Sides(...)")
        single_row, v = _single_from_weights(weights, n)
        W = _check_factors(weights.get("field_factors"), 3, "field_factors")
        raw = weights["aware_row"] if "aware_row" in weights else weights.get("field_rows")
        rows = _check_row_map(raw, n, W.shape[0], "aware_row", unique=False)
        return W.shape[1], single_row, rows, W.shape[0], v, W

    def split(self, sides: Optional[Sides] = None) -> "Split":
        """The exact query/item split; `sides` defaults to (and must match) the model's own."""
        if sides is not None and sides != self.sides:
            raise ValueError(f"a HybridFM is field-aware by side: split it with its own sides {self.sides}")
        if not isinstance(self.sides, Sides):
            raise ValueError("HybridFM needs sides=fmrecall.Sides(user=..., context=..., item=...)")
        return super().split(self.sides)


AnyModel = Union[FM, FFM, HybridFM]  # what fmrecall.load returns
