"""What the estimators' fit / predict take besides a TrainingSource: a matrix ``X`` (numpy array,
list of lists, DataFrame of numbers or scipy sparse matrix, one row per example) and labels ``y``
(sklearn conventions).

Matrix rows become Dataset rows: column ``c`` is feature ``c`` of field ``field_of_column[c]``, its
value the matrix entry (zeros are left out, so a sparse matrix costs its non-zeros). By default each
column is its own field (``fields=None``); ``fit(X, y, fields=[0, 0, 0, 1, 1])`` groups columns into
fields, e.g. the one-hot columns of one categorical variable (what FFM and HybridFM need: one field
per variable, not per column).

Classifiers (loss "logistic" / "bpr") take any two class labels in ``y`` (``classes_``, sorted; the
second is the positive class); regressors (loss "squared") take real targets.
"""

from __future__ import annotations

import warnings
from typing import Any, Optional, Tuple

import numpy as np

from .dataset import Dataset
from .diagnostics import outside_frame_level

_RESHAPE = (
    "Reshape your data either using X.reshape(-1, 1) if it has a single feature or X.reshape(1, -1) "
    "if it contains a single sample"
)


def is_source(data: Any) -> bool:
    """Whether `data` is a TrainingSource (Dataset, Interactions, or anything with their methods)."""
    return isinstance(data, Dataset) or (hasattr(data, "train_chunk") and hasattr(data, "feature_nodes"))


def column_fields(fields: Any, n_columns: int) -> np.ndarray:
    """int32 (n_columns,) field of every column: 0..n_columns-1 for None, else `fields` checked."""
    if fields is None:
        return np.arange(n_columns, dtype=np.int32)
    arr = np.asarray(fields)
    if arr.shape != (n_columns,):
        raise ValueError(f"fields must give one field per column of X ({n_columns}), got shape {arr.shape}")
    if arr.size and (arr.dtype.kind not in "iu" or arr.min() < 0 or arr.max() >= 2**31 - 1):
        raise ValueError(f"fields must be non-negative integers (the field of each column), got {arr[:5].tolist()}")
    return np.ascontiguousarray(arr, dtype=np.int32)


def _finite(values: np.ndarray, name: str) -> None:
    bad = ~np.isfinite(values)
    if bad.any():
        what = "NaN" if np.isnan(values[bad]).any() else "inf"
        raise ValueError(f"{name} contains {what} (entry {int(np.flatnonzero(bad)[0])}): NaN and inf are not allowed")


def matrix_rows(
    X: Any, field_of_column: Optional[np.ndarray], name: str = "X", *, fitting: bool = False, who: str = "the model"
) -> Dataset:
    """The Dataset of matrix `X` (rows = examples, see the module docstring). `field_of_column`
    (from fit) fixes the column count; None at fit means one field per column. ValueError naming
    `name` for a matrix of the wrong shape, complex or non-finite entries."""
    if hasattr(X, "tocsr") and hasattr(X, "shape"):  # scipy.sparse matrix or array, any format
        csr = X.tocsr()
        if np.iscomplexobj(csr.data):
            raise ValueError(f"Complex data not supported: {name} has dtype {csr.data.dtype}")
        n_rows, n_cols = (int(s) for s in csr.shape)
        indptr = np.asarray(csr.indptr, dtype=np.int64)
        cols = np.asarray(csr.indices, dtype=np.int64)
        values = np.asarray(csr.data, dtype=np.float64)
    else:
        arr = np.asarray(X)
        if np.iscomplexobj(arr):
            raise ValueError(f"Complex data not supported: {name} has dtype {arr.dtype}")
        if arr.dtype.kind not in "biuf":
            arr = arr.astype(np.float64)  # object arrays of numbers; TypeError for anything else
        if arr.ndim != 2:
            hint = f" {_RESHAPE}." if arr.ndim == 1 else ""
            raise ValueError(f"Expected a 2-d {name} (rows x columns), got {arr.ndim}-d shape {arr.shape}.{hint}")
        n_rows, n_cols = arr.shape
        rows, col_idx = np.nonzero(arr)
        values = arr[rows, col_idx].astype(np.float64)
        indptr = np.zeros(n_rows + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=n_rows), out=indptr[1:])
        cols = col_idx.astype(np.int64)
    _finite(values, name)
    if fitting and n_rows == 0:
        raise ValueError(f"{name} has 0 rows (shape=({n_rows}, {n_cols})) while a minimum of 1 is required.")
    if fitting and n_cols == 0:
        raise ValueError(f"{name} has 0 feature(s) (shape=({n_rows}, 0)) while a minimum of 1 is required.")
    if field_of_column is None:
        field_of_column = np.arange(n_cols, dtype=np.int32)
    elif n_cols != field_of_column.size:
        raise ValueError(
            f"{name} has {n_cols} features, but {who} is expecting {field_of_column.size} features as input"
        )
    v32 = values.astype(np.float32)
    _finite(v32, f"{name} (as float32)")
    return Dataset(
        indptr,
        field_of_column[cols] if cols.size else np.zeros(0, np.int32),
        cols.astype(np.int32),
        None if np.all(v32 == 1.0) else v32,
        None,
        n_features=n_cols,
        n_fields=int(field_of_column.max()) + 1 if field_of_column.size else 0,
    )


def _target(y: Any, n_rows: int, who: str) -> np.ndarray:
    """`y` as a 1-d array of n_rows entries (a column vector is raveled with a warning)."""
    if y is None:
        raise ValueError(f"{who} requires y to be passed, but the target y is None")
    arr = np.asarray(y)
    if arr.ndim == 2 and arr.shape[1] == 1:
        try:
            from sklearn.exceptions import DataConversionWarning as category
        except ImportError:  # pragma: no cover - scikit-learn is optional
            category = UserWarning
        warnings.warn(
            "A column-vector y was passed when a 1d array was expected. Please change the shape of y to "
            "(n_samples, ), for example using ravel().",
            category,
            stacklevel=outside_frame_level(),
        )
        arr = arr.ravel()
    if arr.ndim != 1:
        raise ValueError(f"y should be a 1d array, got an array of shape {arr.shape} instead")
    if arr.size != n_rows:
        raise ValueError(f"y has {arr.size} entries but X has {n_rows} rows")
    if arr.dtype.kind in "fc":
        _finite(arr.astype(np.float64), "Input y")
    return arr


def class_labels(y: Any, n_rows: int, who: str, classes: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
    """(classes_, float32 labels in {0, 1}) of binary class labels `y`; `classes` (from an earlier
    fit or partial_fit's ``classes=``) fixes the two classes."""
    arr = _target(y, n_rows, who)
    if arr.dtype.kind == "f" and arr.size and np.any(arr != np.round(arr)):
        raise ValueError(
            f"Unknown label type: continuous. {who} is a classifier (loss 'logistic' / 'bpr'): y must hold "
            f"two class labels; use loss='squared' for real targets"
        )
    found = np.unique(arr)
    if classes is None:
        classes = found
    else:
        classes = np.asarray(classes)
        unknown = np.setdiff1d(found, classes)
        if unknown.size:
            raise ValueError(f"y holds label {unknown[0]!r}, not one of classes_ {classes.tolist()}")
    if classes.size > 2:
        raise ValueError(
            f"Only binary classification is supported. The type of the target is multiclass "
            f"({classes.size} classes: {classes[:5].tolist()}...)"
        )
    if classes.size < 2:
        raise ValueError(
            f"{who} needs 2 classes in y, got {classes.size} class ({classes.tolist()}): a classifier cannot "
            f"train when only one class is present"
        )
    return classes, (arr == classes[1]).astype(np.float32)


def regression_targets(y: Any, n_rows: int, who: str) -> np.ndarray:
    """float32 targets of real `y` (loss "squared")."""
    arr = _target(y, n_rows, who)
    try:
        out = arr.astype(np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{who} (loss='squared') needs real targets y, got dtype {arr.dtype}") from None
    _finite(out, "Input y")
    return out.astype(np.float32)


def source_classes(data: Any) -> np.ndarray:
    """classes_ of a TrainingSource a classifier trains on: [-1, 1] if its labels use -1, else [0, 1]."""
    labels = getattr(data, "labels", None)
    if labels is not None and np.size(labels) and np.any(np.asarray(labels) == -1):
        return np.array([-1, 1])
    return np.array([0, 1])
