"""One-file, versioned, pickle-free persistence with atomic writes and checksums.

A model file is an uncompressed .npz: the weight arrays plus ``meta``, a UTF-8 JSON document
(format name, format version, class, hyper-parameters) stored as a uint8 array, so loading never
unpickles anything (``np.load(allow_pickle=False)``).

Integrity. ``save_arrays`` records in ``meta["checksums"]`` the SHA-256 of every array member:
the hash of the UTF-8 JSON ``[dtype.str, shape]`` (e.g. ``["<f4", [10, 4]]``) followed by the
array's bytes in C order. ``load_arrays`` verifies them and raises ValueError naming the file and
the member on any mismatch, a member without a checksum or a checksum without a member (the zip
CRC already catches a flipped byte; the checksum also catches an array replaced whole, with a
valid CRC). The format version stays 1: files written before checksums existed (no
``"checksums"`` key) still load, unverified, and older fmrecall versions ignore the key.

A model's metadata is validated like constructor arguments (the model's own ``_check_params``:
``threads=100000``, ``k=-1`` or ``learning_rate=NaN`` in a tampered file raise ValueError naming
the file and the parameter), and every array's dtype and shape is checked against n_features,
n_fields and k before it reaches the C++ core. ``save`` refuses non-finite weights.

Pickling a model (``pickle``, ``copy.deepcopy``, joblib) writes the same .npz bytes, so a pickled
model carries no arbitrary objects and is validated like a file when it is unpickled. An unfitted
model's bytes hold only its parameters (``"fitted": false``, no arrays). A model's metadata also
keeps ``generation``, ``history`` and ``best_epoch`` (optional: older files get generation 1,
no history), and ``estimator`` (a classifier's ``classes_`` with their dtype) plus the array
``columns`` (the field of each column of a matrix fit) when the model has them (older files: none,
classes [0, 1]); ``get_params()`` of a loaded model equals that of the saved one.

Arrays. The core's own: ``bias`` (1,), ``linear`` (n,), ``v`` (rows, k) single vectors with
``single_row`` (n,) int32 (feature -> row of v, -1: none), ``W`` (rows, F, k) field-aware vectors
with ``aware_row`` (n,). Vectors exist only for the features seen in training. Files written before
0.2 have a dense ``v`` (n, k) and no ``single_row`` (format version 1); they still load, as dense
models. See ``MODEL_VERSION`` for which version a file gets.

Every ``path`` argument may also be a binary file-like object (written / read in place, not
atomically).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import zipfile
from typing import IO, TYPE_CHECKING, Any, Callable, Dict, Optional, Tuple, Type, TypeVar, Union, cast, overload

import numpy as np

if TYPE_CHECKING:
    from .models import AnyModel

_T = TypeVar("_T")

MODEL_FORMAT = "fmrecall.model"
# The newest model format version this fmrecall reads. 2: single vectors only for the features seen
# in training ("v" (rows, k) + "single_row" (n,)). A file is written with the lowest version that
# holds it (1 without "single_row": FFM, and models loaded from dense files), so fmrecall 0.1 reads
# what it can and names the version of what it cannot ("upgrade fmrecall").
MODEL_VERSION = 2

PathLike = Union[str, os.PathLike]
PathOrFile = Union[str, os.PathLike, IO[bytes]]

_MAX_INT32 = 2**31 - 1


def atomic_write(path: PathLike, write: Callable[[IO[bytes]], None]) -> None:
    """Write a file via a temporary sibling + fsync + os.replace: on any failure the previous
    file at ``path`` is left untouched and the temporary file is removed."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix="-" + os.path.basename(path), dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _file_mode(path))  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _file_mode(path: str) -> int:
    """The mode of the file being replaced, or 0666 minus the process umask for a new file."""
    try:
        return os.stat(path).st_mode & 0o777
    except FileNotFoundError:
        mask = os.umask(0)
        os.umask(mask)
        return 0o666 & ~mask


def _is_file(obj: Any) -> bool:
    return hasattr(obj, "read") or hasattr(obj, "write")


def _name_of(path_or_file: Any) -> str:
    if _is_file(path_or_file):
        name = getattr(path_or_file, "name", None)
        return name if isinstance(name, str) else "<file object>"
    return os.fspath(path_or_file)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def encode_meta(meta: Dict[str, Any]) -> np.ndarray:
    return np.frombuffer(json.dumps(meta, sort_keys=True, default=_json_default).encode("utf-8"), dtype=np.uint8)


def decode_meta(arr: np.ndarray, path: str) -> Dict[str, Any]:
    try:
        meta = json.loads(arr.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: corrupt metadata ({e})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: corrupt metadata (not a JSON object)")
    return meta


def array_sha256(a: np.ndarray) -> str:
    """SHA-256 (hex) of an array's dtype, shape and C-order bytes (see the module docstring)."""
    a = np.ascontiguousarray(a)
    h = hashlib.sha256(json.dumps([a.dtype.str, list(a.shape)]).encode("utf-8"))
    if a.size:
        h.update(a.reshape(-1).view(np.uint8))  # type: ignore[arg-type]  # ndarray is a buffer
    return h.hexdigest()


def save_arrays(path: PathOrFile, meta: Dict[str, Any], arrays: Dict[str, np.ndarray]) -> None:
    """Write ``arrays`` and ``meta`` (plus the SHA-256 of every array in ``meta["checksums"]``) to
    one .npz: atomically to a path, or in place into a binary file-like object."""
    for name in arrays:
        if name == "meta":
            raise ValueError("'meta' is a reserved array name")
    arrays = {name: np.asarray(a) for name, a in arrays.items()}
    for name, a in arrays.items():
        if a.dtype.hasobject:
            raise ValueError(f"array {name!r} has dtype object, which cannot be stored without pickle")
    meta = dict(meta, checksums={name: array_sha256(a) for name, a in arrays.items()})
    encoded = encode_meta(meta)
    members: Dict[str, Any] = dict(arrays, meta=encoded)
    if _is_file(path):
        np.savez(path, **members)
    else:
        atomic_write(cast(PathLike, path), lambda f: np.savez(f, **members))


def load_arrays(
    path: PathOrFile, expected_format: str, max_version: int, *, name: Optional[str] = None
) -> Tuple[Dict[str, Any], Dict[str, np.ndarray]]:
    """(meta, {name: array}) of a file (path or binary file-like object) written by save_arrays,
    with format / version checks and the checksums verified (when the file has them; they are
    removed from the returned meta). ValueError names the file (``name`` overrides how) and the
    member for a corrupt or tampered member."""
    where = name if name is not None else _name_of(path)
    if not _is_file(path) and not os.path.exists(os.fspath(cast(PathLike, path))):
        raise FileNotFoundError(2, "No such file", os.fspath(cast(PathLike, path)))
    arrays: Dict[str, np.ndarray] = {}
    try:
        z = np.load(path, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise ValueError("not an .npz archive")
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"{where}: not an fmrecall file ({e})") from None
    with z:
        for member in z.files:
            try:
                arrays[member] = z[member]
            except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
                raise ValueError(f"{where}: member {member!r} is corrupt ({e})") from None
    if "meta" not in arrays:
        raise ValueError(f"{where}: not an fmrecall file (no metadata)")
    meta_arr = arrays.pop("meta")
    if meta_arr.dtype != np.uint8 or meta_arr.ndim != 1:
        raise ValueError(f"{where}: corrupt metadata (member 'meta' is not a 1-d uint8 array)")
    meta = decode_meta(meta_arr, where)
    if meta.get("format") != expected_format:
        raise ValueError(f"{where}: format {meta.get('format')!r}, expected {expected_format!r}")
    version = meta.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError(f"{where}: bad format version {version!r}")
    if version > max_version:
        raise ValueError(
            f"{where}: format version {version!r} is newer than this fmrecall "
            f"supports ({max_version}); upgrade fmrecall"
        )
    sums = meta.pop("checksums", None)
    if sums is not None:
        _verify(sums, arrays, where)
    return meta, arrays


def _verify(sums: Any, arrays: Dict[str, np.ndarray], where: str) -> None:
    if not isinstance(sums, dict):
        raise ValueError(f"{where}: corrupt metadata (checksums is not an object)")
    for member in sorted(set(sums) | set(arrays)):
        if member not in arrays:
            raise ValueError(f"{where}: member {member!r} is missing (the metadata has its checksum)")
        if member not in sums:
            raise ValueError(f"{where}: member {member!r} has no checksum (added after saving?)")
        if array_sha256(arrays[member]) != sums[member]:
            raise ValueError(
                f"{where}: member {member!r} does not match its SHA-256 checksum (the file was modified or corrupted)"
            )


# ---------------------------------------------------------------------------- models
def _json_params(model: Any) -> Dict[str, Any]:
    params = {}
    for name, value in model.get_params().items():
        if hasattr(value, "to_dict"):
            value = {"__type__": type(value).__name__, **value.to_dict()}
        elif isinstance(value, np.generic):
            value = value.item()
        params[name] = value
    return params


def _model_classes() -> Dict[str, type]:
    from . import models

    return {
        c.__name__: c
        for c in models.__dict__.values()
        if isinstance(c, type) and issubclass(c, models._FactorizationModel) and c is not models._FactorizationModel
    }


def _restore_params(params: Dict[str, Any]) -> Dict[str, Any]:
    from . import sides as sides_mod

    out = {}
    for name, value in params.items():
        if isinstance(value, dict) and "__type__" in value:
            kind = value["__type__"]
            body = {k: v for k, v in value.items() if k != "__type__"}
            cls = getattr(sides_mod, kind, None) if isinstance(kind, str) else None
            if cls is None or not hasattr(cls, "from_dict"):
                raise ValueError(f"unknown parameter type {kind!r}")
            value = cls.from_dict(body)
        out[name] = value
    return out


def model_to_arrays(model: Any) -> Tuple[Dict[str, Any], Dict[str, np.ndarray]]:
    """(meta, arrays) of a fitted model: its hyper-parameters and the core's own (compact) arrays.
    ValueError if a weight is not finite (a diverged model is not worth keeping)."""
    from . import __version__

    core, state, schema, history, best_epoch, generation = model._snapshot()  # one consistent copy
    meta = {
        "format": MODEL_FORMAT,
        "version": 2 if state.get("single_row") is not None else 1,
        "class": type(model).__name__,
        "params": _json_params(model),
        "fmrecall": __version__,
        "n_features": int(core.n_features),
        "n_fields": int(core.n_fields),
        "schema": schema.to_dict() if schema is not None else None,
        "generation": int(generation),
        "history": history,
        "best_epoch": best_epoch,
        "scale": float(core.scale),
    }
    arrays = {"bias": np.asarray([state["bias"]], dtype=np.float32)}
    arrays.update({k: np.asarray(v) for k, v in state.items() if k != "bias" and v is not None})
    estimator, columns = model._matrix_state()  # classes_ and a matrix fit's columns (sklearn)
    if estimator:
        meta["estimator"] = estimator
    if columns is not None:
        arrays["columns"] = columns
    for name, a in arrays.items():
        if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
            raise ValueError(
                f"refusing to save a model whose {name!r} weights contain non-finite values "
                f"(training diverged: lower learning_rate)"
            )
    return meta, arrays


def _unfitted_meta(model: Any) -> Dict[str, Any]:
    from . import __version__

    return {
        "format": MODEL_FORMAT,
        "version": 1,
        "class": type(model).__name__,
        "params": _json_params(model),
        "fmrecall": __version__,
        "fitted": False,
    }


def _count(meta: Dict[str, Any], key: str, path: str) -> int:
    value = meta.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_INT32:
        raise ValueError(f"{path}: {key} must be an integer in [0, {_MAX_INT32}], got {value!r}")
    return value


def _member(arrays: Dict[str, np.ndarray], name: str, dtype: Any, shape: Tuple[int, ...], path: str) -> np.ndarray:
    a = arrays[name]
    if a.dtype != np.dtype(dtype) or a.shape != shape:
        raise ValueError(
            f"{path}: member {name!r} has dtype {a.dtype} and shape {a.shape}, expected {np.dtype(dtype)} and {shape}"
        )
    if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
        raise ValueError(f"{path}: member {name!r} contains non-finite values")
    return np.ascontiguousarray(a)


def _row_map(
    arrays: Dict[str, np.ndarray], name: str, table: str, ndim: int, n: int, kind: bool, what: str, path: str
) -> Tuple[Optional[np.ndarray], int]:
    """(map or None, rows of `table`) of a row-map member (`name`: feature -> row of `table`, -1 =
    none). Without the member the table is dense (identity: one row per feature, n rows, where the
    model has fields of this `kind`): the layout of files written before the map existed."""
    if name not in arrays:
        return None, (n if kind else 0)
    if not kind:
        raise ValueError(f"{path}: unexpected member {name!r} (the model has no {what} field)")
    rows = _member(arrays, name, np.int32, (n,), path)
    m = arrays[table].shape[0] if table in arrays and arrays[table].ndim == ndim else 0
    if rows.size and (rows.min() < -1 or rows.max() >= m):
        raise ValueError(f"{path}: member {name!r} has entries outside [-1, {m})")
    used = rows[rows >= 0]
    if np.unique(used).size != used.size:
        raise ValueError(f"{path}: member {name!r} gives two features the same row")
    return rows, m


def _check_state(model: Any, arrays: Dict[str, np.ndarray], n: int, F: int, path: str) -> Dict[str, Any]:
    """The core arrays of a file, each checked (dtype, shape, values) against n_features = n,
    n_fields = F, k and the model type, as _set_core_state takes them. Single vectors: "v"
    (rows, k) with "single_row" (n,), or (files written before 0.2) a dense "v" (n, k) without a map."""
    k = int(model.k)
    flags = model._aware_flags(F)
    any_single, any_aware = bool((flags == 0).any()), bool(flags.any())
    unknown = sorted(set(arrays) - {"bias", "linear", "v", "W", "single_row", "aware_row"})
    if unknown:
        raise ValueError(f"{path}: unexpected member {unknown[0]!r}")
    for name in ("bias", "linear"):
        if name not in arrays:
            raise ValueError(f"{path}: missing member {name!r}")
    state: Dict[str, Any] = {
        "bias": _member(arrays, "bias", np.float32, (1,), path)[0],
        "linear": _member(arrays, "linear", np.float32, (n,), path),
    }
    for name, table, kind, what in (
        ("single_row", "v", any_single, "single"),
        ("aware_row", "W", any_aware, "field-aware"),
    ):
        state[name], m = _row_map(arrays, name, table, 2 if table == "v" else 3, n, kind, what, path)
        want = m > 0 and F > 0 and kind
        if (table in arrays) != want:
            raise ValueError(
                f"{path}: member {table!r} ({what} vectors) is {'missing' if want else 'unexpected'} "
                f"for a {type(model).__name__} with these fields"
            )
        shape = (m, k) if table == "v" else (m, F, k)
        state[table] = _member(arrays, table, np.float32, shape, path) if want else None
    return state


def model_from_arrays(
    meta: Dict[str, Any], arrays: Dict[str, np.ndarray], path: str = "<memory>", expected_class: Optional[type] = None
) -> Any:
    """The model of (meta, arrays) read by load_arrays, every parameter and array validated first
    (ValueError naming `path`). With `expected_class`, a file holding another class is an error."""
    classes = _model_classes()
    kind = meta.get("class")
    cls = classes.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ValueError(f"{path}: unknown model class {meta.get('class')!r}")
    if expected_class is not None and not issubclass(cls, expected_class):
        raise ValueError(
            f"{path} holds a {cls.__name__}, not a {expected_class.__name__}: "
            f"load it with fmrecall.load or {cls.__name__}.load"
        )
    raw = meta.get("params", {})
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: params must be a JSON object")
    try:
        params = {"average": 0.0, **_restore_params(raw)}  # files before 0.3 hold no averaged weights
        model = cls(**params)
    except TypeError as e:
        raise ValueError(f"{path}: bad parameters ({e})") from None
    except (ValueError, KeyError, AttributeError) as e:
        raise ValueError(f"{path}: {e}") from None
    generation = meta.get("generation", 1)
    if isinstance(generation, bool) or not isinstance(generation, int) or generation < 0:
        raise ValueError(f"{path}: generation must be a non-negative integer, got {generation!r}")
    if meta.get("fitted", True) is False:
        if arrays:
            raise ValueError(f"{path}: an unfitted model has no arrays, got {sorted(arrays)}")
        return model
    try:
        model._check_params()  # exactly the checks fit() makes
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    n = _count(meta, "n_features", path)
    F = _count(meta, "n_fields", path)
    arrays = dict(arrays)
    model._set_matrix_state(meta.get("estimator"), arrays.pop("columns", None), F, path)
    state = _check_state(model, arrays, n, F, path)
    history, best = meta.get("history", []), meta.get("best_epoch")
    if not isinstance(history, list) or not all(isinstance(r, dict) for r in history):
        raise ValueError(f"{path}: history must be a list of objects")
    if best is not None and (isinstance(best, bool) or not isinstance(best, int)):
        raise ValueError(f"{path}: best_epoch must be an integer or null, got {best!r}")
    scale = meta.get("scale", 1.0)  # files before 0.3: no constant value scale
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (0.0 < scale < float("inf")):
        raise ValueError(f"{path}: scale must be a finite number > 0, got {scale!r}")
    schema = None
    if meta.get("schema"):
        from .schema import Schema

        try:
            schema = Schema.from_dict(meta["schema"])
        except (KeyError, TypeError) as e:
            raise ValueError(f"{path}: bad schema ({e!r})") from None
    try:
        model._set_core_state(state, F, float(scale))
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    model.schema_ = schema
    model.history_ = history
    model.best_epoch_ = best
    model.generation_ = max(generation, 1)
    return model


def save_model(model: Any, path: PathOrFile) -> None:
    meta, arrays = model_to_arrays(model)
    save_arrays(path, meta, arrays)


@overload
def load(path: PathOrFile, expected_class: None = None) -> AnyModel: ...


@overload
def load(path: PathOrFile, expected_class: Type[_T]) -> _T: ...


def load(path: PathOrFile, expected_class: Optional[type] = None) -> Any:
    """Load a model written by ``model.save(path)`` (a path or a binary file-like object): an FM,
    FFM or HybridFM (with `expected_class`, that class or ValueError); it predicts bit-identically.
    Every array and parameter is validated (ValueError naming the file)."""
    meta, arrays = load_arrays(path, MODEL_FORMAT, MODEL_VERSION)
    where = _name_of(path)
    try:
        return model_from_arrays(meta, arrays, where, expected_class)
    except KeyError as e:
        raise ValueError(f"{where}: missing entry {e}") from None


def model_to_bytes(model: Any) -> bytes:
    """The .npz bytes of a model, fitted or not (what pickling a model stores)."""
    buf = io.BytesIO()
    if model._core is None:
        save_arrays(buf, _unfitted_meta(model), {})
    else:
        save_model(model, buf)
    return buf.getvalue()


def model_from_bytes(data: bytes, expected_class: Optional[type] = None) -> Any:
    """Inverse of model_to_bytes, validated like a file."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ValueError(f"a pickled fmrecall model holds bytes, got {type(data).__name__}")
    name = "<pickled model>"
    meta, arrays = load_arrays(io.BytesIO(bytes(data)), MODEL_FORMAT, MODEL_VERSION, name=name)
    try:
        return model_from_arrays(meta, arrays, name, expected_class)
    except KeyError as e:
        raise ValueError(f"{name}: missing entry {e}") from None
