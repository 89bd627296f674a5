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
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Union

import numpy as np

from . import _core
from ._limits import check_threads
from .dataset import Dataset
from .interactions import Interactions
from .metrics import auc, logloss_from_scores, mse
from .sides import Sides

if TYPE_CHECKING:
    from .schema import Schema
    from .split import Split

_LOSSES = {"logistic": 0, "squared": 1, "bpr": 2}  # bpr: pairwise, implicit Interactions only
_CHUNK_ROWS = 1 << 18  # rows per call into C++: progress bar granularity and Ctrl-C latency


class NotFittedError(RuntimeError):
    """The model has no weights yet: call fit() or from_weights() first."""


def _sigmoid(t: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-t.astype(np.float64)))


class _FactorizationModel:
    """Shared estimator machinery: parameters, fit loop, prediction, weights, persistence.

    Subclasses only say which fields are field-aware (`_aware_flags`) and which features of
    those fields get field-aware vectors (`_aware_rows`); the C++ core runs one kernel for all.
    """

    def __init__(self, k: int = 4, *, loss: str = "logistic", epochs: int = 10,
                 learning_rate: float = 0.05, reg_linear: float = 2e-5, reg_factors: float = 2e-5,
                 init_std: float = 0.05, normalize: bool = False, patience: Optional[int] = 2,
                 threads: int = 0, seed: int = 0, n_features: Optional[int] = None,
                 n_fields: Optional[int] = None, verbose: bool = False) -> None:
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
            params = inspect.signature(klass.__init__).parameters
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

    def _bump_generation(self) -> None:
        with self._lock:
            self.generation_ += 1

    def _snapshot(self):
        """(core, core weights, schema_, history_, best_epoch_, generation_), read together: a fit
        swapping in new weights waits until the copy is taken (what save and pickling store)."""
        with self._lock:
            core = self._require_core()
            return (core, core.get_weights(), self.schema_, list(self.history_), self.best_epoch_,
                    self.generation_)

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
        if not isinstance(self.loss, str) or self.loss not in _LOSSES:
            raise ValueError(f"loss must be one of {sorted(_LOSSES)}, got {self.loss!r}")
        if not integer(self.epochs) or self.epochs < 1:
            raise ValueError(f"epochs must be a positive integer, got {self.epochs!r}")
        for name in ("learning_rate",):
            value = getattr(self, name)
            if not real(value) or not np.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be > 0, got {value!r}")
        for name in ("reg_linear", "reg_factors", "init_std"):
            value = getattr(self, name)
            if not real(value) or not np.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        if not isinstance(self.normalize, (bool, np.bool_)):
            raise ValueError(f"normalize must be True or False, got {self.normalize!r}")
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
        raise NotImplementedError

    @staticmethod
    def _aware_features(data: Dataset, flags: np.ndarray) -> np.ndarray:
        """Sorted int32 features that occur in field-aware fields of `data`."""
        in_model = data.fields < flags.size
        aware_nodes = np.zeros(data.nnz, dtype=bool)
        aware_nodes[in_model] = flags[data.fields[in_model]].astype(bool)
        return np.unique(data.features[aware_nodes]).astype(np.int32)

    def _aware_rows(self, data: Dataset, n_features: int, flags: np.ndarray):
        """(aware_row int32 (n_features,), number of W rows): field-aware vectors exist only for the
        features that occur in field-aware fields of the training data (others stay neutral)."""
        if not flags.any():
            return None, 0
        feats = self._aware_features(data, flags)
        rows = np.full(n_features, -1, dtype=np.int32)
        rows[feats] = np.arange(feats.size, dtype=np.int32)
        return rows, int(feats.size)

    def _weights_from_core(self, w: dict, core: _core.Model) -> Dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def _core_arrays_from_weights(cls, weights: Dict[str, Any], hyper: Dict[str, Any]):
        raise NotImplementedError

    # ------------------------------------------------------------------ training
    def _check_labels(self, data, name: str) -> None:
        if isinstance(data, Interactions):
            if self.loss == "bpr" and data.negatives < 1:
                raise ValueError(f"loss='bpr' needs sampled negatives: build {name} with negatives >= 1")
            if data.negatives > 0:
                if self.loss == "squared":
                    raise ValueError("implicit feedback (negatives > 0) needs loss='logistic' or 'bpr'")
                return
            if data.labels is None:
                raise ValueError(f"{name} has neither labels nor negatives: give label= or negatives=")
        elif self.loss == "bpr":
            raise ValueError("loss='bpr' is pairwise: train it on fmrecall.Interactions with negatives >= 1")
        if data.labels is None:
            raise ValueError(f"{name} has no labels")
        if self.loss == "logistic" and data.labels.size:
            allowed = (-1.0, 1.0) if np.any(data.labels == -1.0) else (0.0, 1.0)
            bad = np.flatnonzero(~np.isin(data.labels, allowed))
            if bad.size:
                i = int(bad[0])
                raise ValueError(f"logistic loss needs labels all in {{0, 1}} or all in {{-1, 1}}; {name} row "
                                 f"{i} has label {float(data.labels[i])!r}")

    def _new_core(self, train, valid) -> _core.Model:
        if isinstance(train, Interactions):
            train = train.feature_nodes()
        n_features = max(train.n_features, self.n_features or 0)
        n_fields = max(train.n_fields, self.n_fields or 0)
        for name, given, need in (("n_features", self.n_features, train.n_features),
                                  ("n_fields", self.n_fields, train.n_fields)):
            if given is not None and given < need:
                raise ValueError(f"{name}={given} is smaller than the training data needs ({need})")
        flags = self._aware_flags(n_fields)
        aware_row, m = self._aware_rows(train, n_features, flags)
        seen = np.zeros(n_features, dtype=np.uint8)  # features absent from train keep zero weights
        seen[train.features] = 1
        return _core.Model(n_features, n_fields, int(self.k), flags, aware_row, m,
                           float(self.init_std), int(self.seed), bool(self.normalize), seen)

    def _eval(self, core: _core.Model, data) -> Dict[str, float]:
        if isinstance(data, Interactions) and (data.labels is None or data.negatives > 0):
            return self._eval_implicit(core, data)
        scores = self._scores(core, data)
        if self.loss == "logistic":
            return {"loss": logloss_from_scores(data.labels, scores), "auc": auc(data.labels, scores)}
        return {"loss": mse(data.labels, scores), "auc": float("nan")}

    def fit(self, train: Union[Dataset, Interactions], valid: Union[Dataset, Interactions, None] = None
            ) -> "_FactorizationModel":
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
        self._check_params()
        self._check_labels(train, "train")
        if valid is not None:
            self._check_labels(valid, "valid")
        if (train.n_events if isinstance(train, Interactions) else train.n_rows) == 0:
            raise ValueError("train has no rows")
        core = self._new_core(train, valid)
        history: List[Dict[str, Any]] = []
        best_epoch: Optional[int] = None
        best = np.inf
        since_best = 0
        n = train.n_events if isinstance(train, Interactions) else train.n_rows
        bar = None
        if self.verbose and n * self.epochs >= 4 * _CHUNK_ROWS:
            try:
                from tqdm.auto import tqdm
                bar = tqdm(total=n * self.epochs, unit="row", unit_scale=True, leave=False)
            except ImportError:  # pragma: no cover - tqdm is a dependency
                bar = None
        try:
            for epoch in range(1, self.epochs + 1):
                t0 = time.perf_counter()
                order = _core.permutation(n, self._epoch_seed(epoch))
                total, terms = 0.0, 0
                for start in range(0, n, _CHUNK_ROWS):
                    part = order[start:start + _CHUNK_ROWS]
                    loss_sum, count = self._train_part(core, train, part, epoch)
                    total += loss_sum
                    terms += count
                    if bar is not None:
                        bar.update(part.size)
                record: Dict[str, Any] = {"epoch": epoch, "train_loss": total / max(terms, 1)}
                if valid is not None:
                    ev = self._eval(core, valid)
                    record["valid_loss"], record["valid_auc"] = ev["loss"], ev["auc"]
                record["seconds"] = time.perf_counter() - t0
                history.append(record)
                if self.verbose:
                    self._print_epoch(record)
                if valid is None:
                    continue
                if record["valid_loss"] < best:
                    best = record["valid_loss"]
                    best_epoch = epoch
                    since_best = 0
                    if self.patience is not None and epoch < self.epochs:
                        core.snapshot()
                else:
                    since_best += 1
                    if self.patience is not None and since_best >= self.patience:
                        break
        finally:
            if bar is not None:
                bar.close()
        if valid is not None and self.patience is not None and best_epoch != history[-1]["epoch"]:
            core.restore()
            if self.verbose:
                print(f"restored epoch {best_epoch} (best valid loss {best:.5f})", file=sys.stdout, flush=True)
        # the swap: readers take self._core once per call, so each sees the old or the new model
        with self._lock:
            self._core = core
            self.schema_ = train.schema if isinstance(train, Interactions) else None
            self.history_ = history
            self.best_epoch_ = best_epoch
            self._bump_generation()
        return self

    def partial_fit(self, train: Union[Dataset, Interactions]) -> "_FactorizationModel":
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
        self._check_labels(train, "train")
        current = self._core
        fresh_model = current is None  # then built aside like fit, swapped in once trained
        core = self._new_core(train, None) if current is None else current
        schema = train.schema if isinstance(train, Interactions) else None
        if schema is not None and not fresh_model and self.schema_ is not None and not schema.extends(self.schema_):
            raise ValueError("train's schema is neither the model's schema_ nor a growth of it "
                             "(Schema.partial_fit / Interactions(..., grow=True)): refit instead")
        nodes = train.feature_nodes() if isinstance(train, Interactions) else train
        n_features, n_fields = (schema.n_features, schema.n_fields) if schema is not None else \
            (nodes.n_features, nodes.n_fields)
        if n_fields > core.n_fields:
            raise ValueError(f"train has {n_fields} fields, the model {core.n_fields}: new fields are not "
                             f"supported by partial_fit - refit instead")
        n_old = core.n_features
        if n_features > n_old:  # append the new features (existing indices keep their parameters)
            seen = np.zeros(n_features - n_old, dtype=np.uint8)
            feats = nodes.features
            seen[feats[feats >= n_old] - n_old] = 1
            core.grow_features(n_features - n_old, seen, float(self.init_std), int(self.seed))
        # features new to the model get their field-aware vectors now (fit only allocates seen ones)
        fresh = self._aware_features(nodes, self._aware_flags(core.n_fields))
        if fresh.size:
            core.grow_rows(fresh, float(self.init_std), int(self.seed))
        epoch = 1 if fresh_model else len(self.history_) + 1
        t0 = time.perf_counter()
        n = train.n_events if isinstance(train, Interactions) else train.n_rows
        total, terms = self._train_part(core, train, _core.permutation(n, self._epoch_seed(epoch)), epoch)
        record = {"epoch": epoch, "train_loss": total / max(terms, 1), "seconds": time.perf_counter() - t0}
        with self._lock:
            if fresh_model:
                self._core = core
                self.schema_ = train.schema if isinstance(train, Interactions) else None
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

    def _epoch_seed(self, epoch: int) -> int:
        return (int(self.seed) * 1_000_003 + epoch) & 0xFFFFFFFFFFFFFFFF

    def _train_part(self, core: _core.Model, train, order: np.ndarray, epoch: int):
        """One chunk of an epoch in C++ on `core`: (summed loss, number of loss terms)."""
        args = (float(self.learning_rate), float(self.reg_linear), float(self.reg_factors), int(self.threads))
        if isinstance(train, Interactions):
            seed = self._epoch_seed(epoch) ^ 0x5DEECE66D  # negative draws: seeded per epoch and event
            return core.train_factored(train.core(), order, _LOSSES[self.loss], train.negatives,
                                       train.hard_negatives, seed, *args)
        total = core.train(*train.core_args(), train.labels, order, _LOSSES[self.loss], *args)
        return total, order.size

    def _eval_implicit(self, core: _core.Model, data: Interactions) -> Dict[str, float]:
        """Each event against one sampled negative (fixed seed, the same every epoch): BPR loss or
        logloss of positives and negatives, and AUC = P(score(positive) > score(negative))."""
        rng = np.random.default_rng(int(self.seed) + 7919)
        w = data.sample_weights()
        neg = rng.choice(w.size, size=data.n_events, p=w / w.sum()).astype(np.int32)
        fd = data.core()
        pos_s = core.score_factored(fd, None, int(self.threads)).astype(np.float64)
        neg_s = core.score_factored(fd, neg, int(self.threads)).astype(np.float64)
        d = pos_s - neg_s
        auc_pairs = float(np.mean(d > 0) + 0.5 * np.mean(d == 0))
        if self.loss == "bpr":
            return {"loss": float(np.mean(np.logaddexp(0.0, -d))), "auc": auc_pairs}
        y = np.r_[np.ones(d.size), np.zeros(d.size)]
        return {"loss": logloss_from_scores(y, np.r_[pos_s, neg_s]), "auc": auc_pairs}

    @staticmethod
    def _print_epoch(r: Dict[str, Any]) -> None:
        line = f"epoch {r['epoch']:3d}  train_loss {r['train_loss']:.5f}"
        if "valid_loss" in r:
            line += f"  valid_loss {r['valid_loss']:.5f}  valid_auc {r['valid_auc']:.5f}"
        line += f"  {r['seconds']:.2f}s"
        print(line, file=sys.stdout, flush=True)

    # ------------------------------------------------------------------ prediction
    def _require_core(self) -> _core.Model:
        core = self._core  # read once: fit may swap it meanwhile
        if core is None:
            raise NotFittedError(f"this {type(self).__name__} has no weights: call fit() or from_weights()")
        return core

    def decision_function(self, data: Union[Dataset, Interactions]) -> np.ndarray:
        """Raw model scores, float32 (n_rows,) — or (n_events,) for Interactions. Indices beyond the
        model are ignored."""
        return self._scores(self._require_core(), data)

    def _scores(self, core: _core.Model, data: Union[Dataset, Interactions]) -> np.ndarray:
        if isinstance(data, Interactions):
            return core.score_factored(data.core(), None, int(self.threads))
        return core.predict(*data.core_args(), int(self.threads))

    def predict(self, data: Union[Dataset, Interactions]) -> np.ndarray:
        """Probabilities σ(score) for the logistic loss, raw scores for squared and BPR (whose scores
        only rank). float (n_rows,)."""
        s = self.decision_function(data)
        return _sigmoid(s) if self.loss == "logistic" else s

    # ------------------------------------------------------------------ weights and persistence
    @property
    def n_features_(self) -> int:
        return self._require_core().n_features

    @property
    def n_fields_(self) -> int:
        return self._require_core().n_fields

    def weights(self) -> Dict[str, Any]:
        """Copies of the weights as numpy arrays (see the subclass for the factor shapes), taken
        in one consistent copy under the core's lock."""
        core = self._require_core()
        w = core.get_weights()
        out = {"bias": float(w["bias"]), "linear": w["linear"]}
        out.update(self._weights_from_core(w, core))
        return out

    @classmethod
    def from_weights(cls, weights: Dict[str, Any], **hyper: Any) -> "_FactorizationModel":
        """A model with the given weights (as returned by weights()) and hyper-parameters."""
        model = cls(**hyper)
        model._check_params()
        if "bias" not in weights or "linear" not in weights:
            raise ValueError("weights need 'bias' and 'linear'")
        linear = np.ascontiguousarray(weights["linear"], dtype=np.float32)
        if linear.ndim != 1:
            raise ValueError(f"linear must be 1-d, got shape {linear.shape}")
        n_features = linear.size
        n_fields, flags, aware_row, m, v, W = cls._core_arrays_from_weights(weights, model.get_params())
        k = (v if v is not None else W).shape[-1]
        if k != model.k:
            if "k" in hyper:
                raise ValueError(f"k={model.k} but the factors have size {k}")
            model.k = int(k)
        model._check_params()
        model.n_features, model.n_fields = n_features, n_fields
        core = _core.Model(n_features, n_fields, int(model.k), flags, aware_row, m,
                           float(model.init_std), int(model.seed), bool(model.normalize))
        core.set_weights(float(weights["bias"]), linear, v, W)
        model._core = core
        model._bump_generation()
        return model

    def split(self, sides: Sides) -> "Split":
        """The exact query/item split of this model for `sides` (DESIGN.md §2–4):
        score(query row ⊕ item row) = b_q + <q, p>. See fmrecall.split.Split."""
        from .split import Split
        return Split(self, sides)

    def _core_state(self) -> Dict[str, Any]:
        """The core's own arrays (compact field-aware table + its row map), for persistence."""
        return self._require_core().get_weights()

    def _set_core_state(self, state: Dict[str, Any], n_fields: int) -> None:
        """Inverse of _core_state, on arrays already checked (fmrecall.persist._check_state):
        bit-identical weights, same layout. Replaces the core at once (no fit in between)."""
        linear, v, W, rows = state["linear"], state["v"], state["W"], state["aware_row"]
        core = _core.Model(linear.size, int(n_fields), int(self.k), self._aware_flags(int(n_fields)), rows,
                           0 if W is None else W.shape[0], float(self.init_std), int(self.seed),
                           bool(self.normalize))
        core.set_weights(float(state["bias"]), linear, v, W)
        self._core = core

    def save(self, path) -> None:
        """Write the model to one versioned .npz file, atomically (see fmrecall.persist); `path`
        may also be a binary file-like object (written in place). ValueError for non-finite
        weights."""
        from .persist import save_model
        save_model(self, path)

    @classmethod
    def load(cls, path) -> "_FactorizationModel":
        """Load a model file (path or binary file-like object) written by save(); ValueError if it
        holds another model class (fmrecall.load takes any) or fails validation."""
        from .persist import load
        return load(path, expected_class=cls)

    # ------------------------------------------------------------------ pickle / copy / joblib
    def __reduce__(self):
        """Pickled as the bytes of its .npz file (fmrecall.persist.model_to_bytes): no arbitrary
        objects, validated like a file when unpickled. copy.copy / deepcopy make a full copy."""
        from .persist import model_to_bytes
        return (_unpickle_model, (model_to_bytes(self),))


def _unpickle_model(payload: bytes) -> _FactorizationModel:
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

    def _weights_from_core(self, w: dict, core: _core.Model) -> Dict[str, Any]:
        return {"factors": w["v"]}

    @classmethod
    def _core_arrays_from_weights(cls, weights, hyper):
        n = np.asarray(weights["linear"]).size
        v = _check_factors(weights.get("factors"), 2, "factors", n)
        n_fields = hyper.get("n_fields") or weights.get("n_fields")
        if n_fields is None:
            raise ValueError("FM.from_weights needs n_fields (fields beyond it would be ignored)")
        return int(n_fields), np.zeros(int(n_fields), np.uint8), None, 0, v, None


class FFM(_FactorizationModel):
    """Field-aware FM: score = w0 + Σ w_j x_j + Σ_{i<j} <w_{i,f(j)}, w_{j,f(i)}> x_i x_j.

    Every feature keeps one vector per field, its own field included (libffm convention).
    weights(): {"bias": float, "linear": (n,), "factors": (n, F, k)} (float32).
    """

    def _aware_flags(self, n_fields: int) -> np.ndarray:
        return np.ones(n_fields, dtype=np.uint8)

    def _weights_from_core(self, w: dict, core: _core.Model) -> Dict[str, Any]:
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
    def _core_arrays_from_weights(cls, weights, hyper):
        n = np.asarray(weights["linear"]).size
        W = _check_factors(weights.get("factors"), 3, "factors", n)
        n_fields = W.shape[1]
        return n_fields, np.ones(n_fields, np.uint8), None, n, None, W


class HybridFM(_FactorizationModel):
    """Field-aware on one side only (DESIGN.md §4): the features of the `field_aware` side keep one
    vector per field (FFM rule among themselves), the other side's features keep one vector (FM
    rule among themselves), and a cross pair scores <v_i, w_{j,f(i)}>. The split is exact with
    dim |F_query|·k + 1 (field_aware="item") or |F_item|·k + 1 (field_aware="query").
    Put high-cardinality id fields on the single-vector side.

    weights(): {"bias", "linear": (n,), "factors": (n, k) single vectors,
                "field_factors": (m, F, k) field-aware vectors, "field_rows": (n,) int32 row of
                field_factors for each feature (-1: none; such a feature in a field-aware field
                contributes only its linear weight)}.
    """

    def __init__(self, k: int = 4, *, field_aware: str = "item", sides: Optional[Sides] = None,
                 **kwargs: Any) -> None:
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
        item = self.sides.item_mask(n_fields)
        return item if self.field_aware == "item" else (1 - item).astype(np.uint8)

    def _weights_from_core(self, w: dict, core: _core.Model) -> Dict[str, Any]:
        return {"factors": w["v"], "field_factors": w["W"], "field_rows": w["aware_row"]}

    @classmethod
    def _core_arrays_from_weights(cls, weights, hyper):
        n = np.asarray(weights["linear"]).size
        sides, aware_side = hyper.get("sides"), hyper.get("field_aware", "item")
        if not isinstance(sides, Sides):
            raise ValueError("HybridFM.from_weights needs sides=fmrecall.Sides(...)")
        v = _check_factors(weights.get("factors"), 2, "factors", n)
        W = _check_factors(weights.get("field_factors"), 3, "field_factors")
        rows = np.ascontiguousarray(weights.get("field_rows"), dtype=np.int32)
        if rows.shape != (n,):
            raise ValueError(f"field_rows must have shape ({n},), got {rows.shape}")
        if rows.size and (rows.min() < -1 or rows.max() >= W.shape[0]):
            raise ValueError(f"field_rows entries must be -1 or < {W.shape[0]}")
        n_fields = W.shape[1]
        item = sides.item_mask(n_fields)
        flags = item if aware_side == "item" else (1 - item).astype(np.uint8)
        return n_fields, flags, rows, W.shape[0], v, W

    def split(self, sides: Optional[Sides] = None) -> "Split":
        """The exact query/item split; `sides` defaults to (and must match) the model's own."""
        if sides is not None and sides != self.sides:
            raise ValueError(f"a HybridFM is field-aware by side: split it with its own sides {self.sides}")
        return super().split(self.sides)
