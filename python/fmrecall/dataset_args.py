"""Argument checks of Dataset's constructors: paths, index / offset / value arrays, field ranges.
Every bad value is a ValueError naming the argument (no silent truncation or int32 wrap-around)."""

from __future__ import annotations

import os
import stat
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt

ArrayLike = npt.ArrayLike  # numpy arrays, sequences, pandas Series: anything np.asarray takes
_INT32_MAX = np.iinfo(np.int32).max


def _check_path(path: Union[str, bytes, os.PathLike]) -> str:
    """The path as str if it names a regular file: FileNotFoundError, IsADirectoryError, or
    ValueError naming the path for anything else (a FIFO or /dev/zero would never end)."""
    path = os.fspath(path)
    if not isinstance(path, str):
        path = os.fsdecode(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(2, "No such file", path) from None
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(21, "Is a directory", path)
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{path}: not a regular file (a FIFO, device or socket cannot be parsed)")
    return path


def _paths(path_or_paths: Union[str, bytes, os.PathLike, Sequence[Union[str, bytes, os.PathLike]]]) -> List[str]:
    """One path or a non-empty sequence of paths, each checked by _check_path."""
    if isinstance(path_or_paths, (str, bytes, os.PathLike)):
        return [_check_path(path_or_paths)]
    paths = list(path_or_paths)
    if not paths:
        raise ValueError("path_or_paths: no paths given")
    return [_check_path(p) for p in paths]


_BLOCK = 1 << 20  # entries per step of the checks: temporaries stay small for memory-mapped arrays


def _first(arr: np.ndarray, bad: Callable[[np.ndarray], np.ndarray], overlap: int = 0) -> Optional[int]:
    """Index of the first entry where ``bad(block)`` is True, checked block by block (no temporary
    as large as `arr`), or None. With ``overlap=1`` each block also sees the next block's first
    entry (for checks on np.diff)."""
    for s in range(0, arr.size, _BLOCK):
        hit = np.flatnonzero(bad(arr[s : s + _BLOCK + overlap]))
        if hit.size:
            return s + int(hit[0])
    return None


def _integral(arr: np.ndarray, name: str) -> None:
    """ValueError naming `name` unless `arr` holds integers (integral finite floats are accepted)."""
    if arr.size and arr.dtype.kind not in "iu":
        if arr.dtype.kind == "f":
            i = _first(arr, lambda b: ~np.isfinite(b) | (b != np.round(b)))
            if i is not None:
                raise ValueError(f"{name}[{i}] = {arr[i]} is not an integer")
        else:
            raise ValueError(f"{name} must be integers, got dtype {arr.dtype}")


def _check_range(arr: np.ndarray, name: str, hi: int, what: str) -> None:
    """ValueError naming the first entry outside [0, hi]; min / max first (no temporaries)."""
    if arr.size and (arr.min() < 0 or arr.max() > hi):
        i = _first(arr, lambda b: (b < 0) | (b > hi))
        raise ValueError(f"{name}[{i}] = {arr[i]} is out of range [0, {what})")


def _index_array(a: ArrayLike, name: str) -> np.ndarray:
    """int32 view of an index array, or ValueError naming the first bad entry."""
    arr = np.asarray(a)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-d, got shape {arr.shape}")
    _integral(arr, name)
    _check_range(arr, name, _INT32_MAX, "2^31")
    return np.ascontiguousarray(arr, dtype=np.int32)


def _indptr_array(a: ArrayLike) -> np.ndarray:
    """int64 indptr, or ValueError for non-integers (1.7 is not truncated to 1) or out-of-range
    entries (uint64 above 2^63 would wrap)."""
    arr = np.asarray(a)
    if arr.dtype.kind in "iu" and arr.dtype.itemsize <= 8 and not (arr.dtype.kind == "u" and arr.dtype.itemsize == 8):
        return np.ascontiguousarray(arr, dtype=np.int64)
    if arr.ndim != 1:
        raise ValueError(f"indptr must be 1-d, got shape {arr.shape}")
    _integral(arr, "indptr")
    _check_range(arr, "indptr", np.iinfo(np.int64).max, "2^63")
    return np.ascontiguousarray(arr, dtype=np.int64)


def _float_array(a: ArrayLike, name: str, size: int) -> np.ndarray:
    arr = np.ascontiguousarray(a, dtype=np.float32)
    if arr.ndim != 1 or arr.size != size:
        raise ValueError(f"{name} must be 1-d with {size} entries, got shape {arr.shape}")
    i = _first(arr, lambda b: ~np.isfinite(b))
    if i is not None:
        raise ValueError(f"{name}[{i}] = {arr[i]} is not finite")
    return arr


def field_map(fields: Union[Sequence[Tuple[int, int]], ArrayLike]) -> np.ndarray:
    """int32 feature -> field array from ``[start, end)`` ranges or from such an array itself.
    Non-integer bounds or entries (1.5 is not truncated) and values beyond int32 are ValueErrors."""
    arr = np.asarray(fields)
    if arr.ndim == 2 and arr.shape[1] == 2:
        if arr.size == 0:
            raise ValueError("fields: no ranges given")
        if arr.dtype.kind not in "iu":
            ok = arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr))
            if not ok:
                raise ValueError(f"fields: range bounds must be integers, got {arr.tolist()[:4]}...")
        if np.any(arr[:, 0] < 0) or np.any(arr[:, 1] < arr[:, 0]):
            raise ValueError("fields: every range must satisfy 0 <= start <= end")
        if np.any(arr[:, 1] > 2**31):
            raise ValueError("fields: range ends must be <= 2^31 (feature indices are below 2^31)")
        if arr.shape[0] > 2**31:
            raise ValueError("fields: too many ranges")
        arr = arr.astype(np.int64)
        fmap = np.full(int(arr[:, 1].max()), -1, dtype=np.int32)
        for f, (s, e) in enumerate(arr):
            if np.any(fmap[s:e] >= 0):
                raise ValueError(f"fields: range {f} [{s}, {e}) overlaps an earlier range")
            fmap[s:e] = f
        return fmap
    if arr.ndim == 1:
        if arr.size and arr.dtype.kind not in "iu":
            raise ValueError(f"fields: a feature -> field array must be integers, got {arr.dtype}")
        if arr.size and (arr.min() < -1 or arr.max() > _INT32_MAX):
            raise ValueError("fields: field_of_feature entries must be in [-1, 2^31)")
        return np.ascontiguousarray(arr, dtype=np.int32)
    raise ValueError("fields must be a list of [start, end) ranges or a feature -> field array")
