"""The weights side of the estimators: weights() out, the one constructor of a core from arrays
(``from_weights`` and loading / unpickling both go through ``_install_weights``), and the hooks
fmrecall.persist uses (``_snapshot``, ``_set_core_state``, save / load, pickling)."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple, Type, TypeVar

import numpy as np

from ._core import Model as CoreModel

if TYPE_CHECKING:
    from .persist import PathOrFile
    from .schema import Schema

# (n_fields, single_row or None, aware_row or None, field-aware rows, v or None, W or None): a core's
# layout and factors (a row map None: the identity, one row per feature; v's rows: single_rows)
CoreArrays = Tuple[int, Optional[np.ndarray], Optional[np.ndarray], int, Optional[np.ndarray], Optional[np.ndarray]]
M = TypeVar("M", bound="ModelState")


class NotFittedError(RuntimeError, ValueError, AttributeError):
    """The model has no weights yet: call fit() or from_weights() first. A ValueError and an
    AttributeError too, like sklearn's NotFittedError (and an instance of that class whenever
    scikit-learn is loaded: fmrecall.sklearn_tags.not_fitted)."""


class ModelState:
    """Mixin of the estimators (fmrecall.models._FactorizationModel): their weights in and out."""

    k: int
    init_std: float
    seed: int
    normalize: Any
    n_features: Optional[int]
    n_fields: Optional[int]
    _core: Optional[CoreModel]
    _lock: threading.RLock
    # fitted attributes: class-level defaults until fit / load set them on the instance (sklearn:
    # a constructor sets nothing but its parameters)
    schema_: Optional["Schema"] = None
    history_: List[Dict[str, Any]] = []  # never mutated: fit and partial_fit assign new lists
    best_epoch_: Optional[int] = None
    generation_: int = 0

    if TYPE_CHECKING:  # provided by the estimator classes

        def __init__(self, k: int = 4, **hyper: Any) -> None: ...
        def _check_params(self) -> None: ...
        def get_params(self, deep: bool = True) -> Dict[str, Any]: ...
        def _aware_flags(self, n_fields: int) -> np.ndarray: ...
        def _weights_from_core(self, w: Dict[str, Any], core: CoreModel) -> Dict[str, Any]: ...
        @classmethod
        def _core_arrays_from_weights(cls, weights: Dict[str, Any], hyper: Dict[str, Any]) -> CoreArrays: ...

    def _require_core(self) -> CoreModel:
        core = self._core  # read once: fit may swap it meanwhile
        if core is None:
            from .sklearn_tags import not_fitted

            raise not_fitted(f"this {type(self).__name__} has no weights: call fit() or from_weights()")
        return core

    def _bump_generation(self) -> None:
        with self._lock:
            self.generation_ += 1

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
        out = {"bias": float(w["bias"]), "linear": w["linear"]}  # type: ignore[arg-type]
        out.update(self._weights_from_core(w, core))
        out["scale"] = float(core.scale)  # every value is multiplied by it before scoring
        return out

    @property
    def scale_(self) -> float:
        """The constant every feature value is multiplied by (pairs by its square): 1/sqrt(mean ‖x‖²)
        of the training rows with normalize="mean", else 1. Fixed at fit time, so the split stays exact."""
        return float(self._require_core().scale)

    def _install_weights(
        self,
        n_fields: int,
        single_row: Optional[np.ndarray],
        aware_row: Optional[np.ndarray],
        m: int,
        bias: float,
        linear: np.ndarray,
        v: Optional[np.ndarray],
        W: Optional[np.ndarray],
        scale: float = 1.0,
    ) -> None:
        """The one constructor of a core from arrays (from_weights, load, unpickling): a core of
        this model's type and hyper-parameters holding exactly these weights, made the model's.
        v: (single rows, k), or (n, k) with single_row None (dense: row j is feature j's)."""
        if v is not None and v.shape[0] == 0:
            v = None  # a table with no rows is no table for the core
        from .training import row_normalized

        core = CoreModel(
            int(linear.size),
            int(n_fields),
            int(self.k),
            self._aware_flags(int(n_fields)),
            aware_row,
            int(m),
            float(self.init_std),
            int(self.seed),
            row_normalized(self.normalize),
            single_row,
            0 if v is None else int(v.shape[0]),
            scale=float(scale),
        )
        core.set_weights(float(bias), linear, v, W)
        self._core = core

    @classmethod
    def from_weights(cls: Type[M], weights: Dict[str, Any], **hyper: Any) -> M:
        """A model with the given weights (as returned by weights()) and hyper-parameters."""
        model = cls(**hyper)
        model._check_params()
        if "bias" not in weights or "linear" not in weights:
            raise ValueError("weights need 'bias' and 'linear'")
        linear = np.ascontiguousarray(weights["linear"], dtype=np.float32)
        if linear.ndim != 1:
            raise ValueError(f"linear must be 1-d, got shape {linear.shape}")
        n_fields, single_row, aware_row, m, v, W = cls._core_arrays_from_weights(weights, model.get_params())
        factors = v if v is not None else W
        assert factors is not None
        k = factors.shape[-1]
        if k != model.k:
            if "k" in hyper:
                raise ValueError(f"k={model.k} but the factors have size {k}")
            model.k = int(k)
        model._check_params()
        model.n_features, model.n_fields = int(linear.size), n_fields
        scale = weights.get("scale", 1.0)
        if isinstance(scale, bool) or not isinstance(scale, (int, float, np.floating)) or not 0 < scale < np.inf:
            raise ValueError(f"scale must be a finite number > 0, got {scale!r}")
        model._install_weights(n_fields, single_row, aware_row, m, float(weights["bias"]), linear, v, W, float(scale))
        model._bump_generation()
        return model

    # ------------------------------------------------------------------ hooks of fmrecall.persist
    def _snapshot(
        self,
    ) -> Tuple[CoreModel, Dict[str, Any], Optional["Schema"], List[Dict[str, Any]], Optional[int], int]:
        """(core, core weights, schema_, history_, best_epoch_, generation_), read together: a fit
        swapping in new weights waits until the copy is taken (what save and pickling store)."""
        with self._lock:
            core = self._require_core()
            return (core, core.get_weights(), self.schema_, list(self.history_), self.best_epoch_, self.generation_)

    def _set_core_state(self, state: Dict[str, Any], n_fields: int, scale: float = 1.0) -> None:
        """Install the core's own arrays (compact tables + their row maps, as get_weights returns
        them), already checked by fmrecall.persist._check_state: bit-identical weights, same
        layout. Replaces the core at once (no fit in between)."""
        W = state["W"]
        self._install_weights(
            n_fields,
            state["single_row"],
            state["aware_row"],
            0 if W is None else W.shape[0],
            state["bias"],
            state["linear"],
            state["v"],
            W,
            scale,
        )

    def save(self, path: PathOrFile) -> None:
        """Write the model to one versioned .npz file, atomically (see fmrecall.persist); `path`
        may also be a binary file-like object (written in place). ValueError for non-finite
        weights."""
        from .persist import save_model

        save_model(self, path)

    @classmethod
    def load(cls: Type[M], path: PathOrFile) -> M:
        """Load a model file (path or binary file-like object) written by save(); ValueError if it
        holds another model class (fmrecall.load takes any) or fails validation."""
        from .persist import load

        model: M = load(path, expected_class=cls)
        return model

    # ------------------------------------------------------------------ pickle / copy / joblib
    def __reduce__(self) -> Tuple[Callable[[bytes], Any], Tuple[bytes]]:
        """Pickled as the bytes of its .npz file (fmrecall.persist.model_to_bytes): no arbitrary
        objects, validated like a file when unpickled. copy.copy / deepcopy make a full copy."""
        from .models import _unpickle_model  # the name pickles hold: fmrecall.models._unpickle_model
        from .persist import model_to_bytes

        return (_unpickle_model, (model_to_bytes(self),))
