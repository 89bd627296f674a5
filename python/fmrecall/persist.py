"""One-file, versioned, pickle-free persistence with atomic writes.

A model file is an uncompressed .npz: the weight arrays plus ``meta``, a UTF-8 JSON document
(format name, format version, class, hyper-parameters) stored as a uint8 array, so loading never
unpickles anything (``np.load(allow_pickle=False)``).
"""
from __future__ import annotations

import json
import os
import tempfile
import zipfile
from typing import Any, Callable, Dict, IO, Union

import numpy as np

MODEL_FORMAT = "fmrecall.model"
MODEL_VERSION = 1

PathLike = Union[str, os.PathLike]


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


def encode_meta(meta: Dict[str, Any]) -> np.ndarray:
    return np.frombuffer(json.dumps(meta, sort_keys=True).encode("utf-8"), dtype=np.uint8)


def decode_meta(arr: np.ndarray, path: str) -> Dict[str, Any]:
    try:
        return json.loads(arr.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: corrupt metadata ({e})") from None


def save_arrays(path: PathLike, meta: Dict[str, Any], arrays: Dict[str, np.ndarray]) -> None:
    for name in arrays:
        if name == "meta":
            raise ValueError("'meta' is a reserved array name")
    atomic_write(path, lambda f: np.savez(f, meta=encode_meta(meta), **arrays))


def load_arrays(path: PathLike, expected_format: str, max_version: int):
    """(meta, {name: array}) of a file written by save_arrays, with format/version checks."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(2, "No such file", path)
    try:
        z = np.load(path, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise ValueError("not an .npz archive")
        with z:
            arrays = {name: z[name] for name in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path}: not an fmrecall file ({e})") from None
    if "meta" not in arrays:
        raise ValueError(f"{path}: not an fmrecall file (no metadata)")
    meta = decode_meta(arrays.pop("meta"), path)
    if meta.get("format") != expected_format:
        raise ValueError(f"{path}: format {meta.get('format')!r}, expected {expected_format!r}")
    if not isinstance(meta.get("version"), int) or meta["version"] > max_version:
        raise ValueError(f"{path}: format version {meta.get('version')!r} is newer than this fmrecall "
                         f"supports ({max_version}); upgrade fmrecall")
    return meta, arrays


def _json_params(model) -> Dict[str, Any]:
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
    return {c.__name__: c for c in models.__dict__.values()
            if isinstance(c, type) and issubclass(c, models._FactorizationModel) and c is not models._FactorizationModel}


def _restore_params(params: Dict[str, Any]) -> Dict[str, Any]:
    from . import sides as sides_mod
    out = {}
    for name, value in params.items():
        if isinstance(value, dict) and "__type__" in value:
            kind = value["__type__"]
            body = {k: v for k, v in value.items() if k != "__type__"}
            cls = getattr(sides_mod, kind, None)
            if cls is None or not hasattr(cls, "from_dict"):
                raise ValueError(f"unknown parameter type {kind!r}")
            value = cls.from_dict(body)
        out[name] = value
    return out


def model_to_arrays(model):
    """(meta, arrays) of a model: its hyper-parameters and the core's own (compact) arrays."""
    from . import __version__
    state = model._core_state()
    meta = {"format": MODEL_FORMAT, "version": MODEL_VERSION, "class": type(model).__name__,
            "params": _json_params(model), "fmrecall": __version__,
            "n_features": int(model.n_features_), "n_fields": int(model.n_fields_),
            "schema": model.schema_.to_dict() if getattr(model, "schema_", None) is not None else None}
    arrays = {"bias": np.asarray([state["bias"]], dtype=np.float32)}
    arrays.update({k: np.asarray(v) for k, v in state.items() if k != "bias" and v is not None})
    return meta, arrays


def model_from_arrays(meta: Dict[str, Any], arrays: Dict[str, np.ndarray], path: str = "<memory>"):
    classes = _model_classes()
    cls = classes.get(meta.get("class"))
    if cls is None:
        raise ValueError(f"{path}: unknown model class {meta.get('class')!r}")
    params = _restore_params(meta.get("params", {}))
    params["n_fields"] = meta["n_fields"]
    params["n_features"] = meta["n_features"]
    state: Dict[str, Any] = dict(arrays)
    state["bias"] = np.float32(arrays["bias"][0])
    model = cls._from_core_state(state, **params)
    if meta.get("schema"):
        from .schema import Schema
        model.schema_ = Schema.from_dict(meta["schema"])
    return model


def save_model(model, path: PathLike) -> None:
    meta, arrays = model_to_arrays(model)
    save_arrays(path, meta, arrays)


def load(path: PathLike):
    """Load a model written by ``model.save(path)``; it predicts bit-identically."""
    meta, arrays = load_arrays(path, MODEL_FORMAT, MODEL_VERSION)
    try:
        return model_from_arrays(meta, arrays, os.fspath(path))
    except KeyError as e:
        raise ValueError(f"{os.fspath(path)}: missing entry {e}") from None
