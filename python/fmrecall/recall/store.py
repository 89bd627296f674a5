"""A Recaller on disk: versioned, checksummed directories behind an atomically switched pointer.

    directory/
      CURRENT            {"version_dir": "v-…", "manifest_sha256": …}: replaced atomically (rename)
      v-<time>-<rand>/   one complete version: manifest.json (SHA-256 and size of every member),
                         model.npz, items.npz (ids, vectors, settings, the table of string /
                         bytes / UUID item ids), index<s>.faiss

A save writes a new version beside the current one (under a .tmp- name, renamed when complete),
then switches CURRENT. A reader therefore always finds a complete version, old or new, and a save
killed at any moment leaves the previous version loadable. The previous version is kept (a reader
may have just read the old pointer); anything older, and the debris of interrupted saves, is
removed by the next save. Directories written by fmrecall 0.1 (members directly in the directory,
no checksums) still load.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import secrets
import shutil
import tempfile
import time
import zipfile
from typing import Any, BinaryIO, Dict, NamedTuple, Optional, Tuple, Type, Union

import numpy as np

from ..persist import (
    MODEL_FORMAT,
    MODEL_VERSION,
    atomic_write,
    load_arrays,
    model_from_arrays,
    model_to_arrays,
    save_arrays,
)
from ..schema import Schema
from ..sides import Sides
from .base import ItemIndex
from .catalogue import KEY_ARRAYS, ItemKeys, present

RECALLER_FORMAT = "fmrecall.recaller"
RECALLER_VERSION = 3  # 3: string / bytes / UUID item ids (written only by Recallers that have them)
POINTER = "CURRENT"
MANIFEST = "manifest.json"
_VERSION_DIR = re.compile(r"^v-[0-9a-f]{1,20}-[0-9a-f]{8}$")
_MEMBER = re.compile(r"^(model\.npz|items\.npz|index[0-9]{1,4}\.faiss)$")
_LOAD_PATIENCE_S = 60.0  # how long a load keeps following the pointer while saves overtake it


class Member(NamedTuple):
    """One file of a saved version: its path (for messages) and the open handle it is read from."""

    path: str
    file: BinaryIO


def _backends() -> Dict[str, Type[ItemIndex]]:
    from .faiss_index import FaissIndex

    out: Dict[str, Type[ItemIndex]] = {"faiss": FaissIndex}
    try:
        from .milvus import MilvusIndex

        out["milvus"] = MilvusIndex
    except ImportError:  # pragma: no cover - the milvus module is part of the package
        pass
    return out


def digest(f: BinaryIO) -> Tuple[str, int]:
    """(SHA-256 hex, size in bytes) of an open binary file, read from where it stands to its end."""
    h = hashlib.sha256()
    size = 0
    for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
        size += len(block)
    return h.hexdigest(), size


def sha256_file(path: str) -> str:
    with open(path, "rb") as f:
        return digest(f)[0]


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - not every platform opens directories
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _fsync_file(path: str) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


# ---------------------------------------------------------------------------- writing
def write_version(rec: Any, target: str) -> None:
    """Write every member of `rec` and the manifest into the (new, empty) directory `target`."""
    from .recaller import recaller_config

    meta_m, arrays_m = model_to_arrays(rec.model)
    save_arrays(os.path.join(target, "model.npz"), meta_m, arrays_m)
    index_meta, index_arrays, files = rec.index.state()
    for name, arr in index_arrays.items():
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise ValueError(f"refusing to save: the index's {name} contain non-finite values")
        if name in KEY_ARRAYS:
            raise ValueError(f"an index may not name an array {name!r} (the Recaller's id table)")
    key_arrays = rec._keys.state()
    meta = {
        "format": RECALLER_FORMAT,
        "version": RECALLER_VERSION if key_arrays else 2,  # readable by older fmrecall when it can be
        "recaller": recaller_config(rec),
        "index": index_meta,
    }
    save_arrays(os.path.join(target, "items.npz"), meta, {**index_arrays, **key_arrays})
    for name, write in files.items():
        if not _MEMBER.match(name):
            raise ValueError(f"bad member name {name!r}")
        write(os.path.join(target, name))
    members = {}
    for name in sorted(os.listdir(target)):
        path = os.path.join(target, name)
        _fsync_file(path)
        members[name] = {"sha256": sha256_file(path), "size": os.path.getsize(path)}
    manifest = {"format": RECALLER_FORMAT, "version": RECALLER_VERSION, "members": members}
    with open(os.path.join(target, MANIFEST), "wb") as f:
        f.write(json.dumps(manifest, sort_keys=True, indent=1).encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(target)


def save_recaller(rec: Any, directory: Union[str, os.PathLike]) -> None:
    directory = os.path.abspath(os.fspath(directory))
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise ValueError(f"{directory} exists and is not a directory")
    created = not os.path.exists(directory)
    os.makedirs(directory, exist_ok=True)
    entries = set(os.listdir(directory))
    legacy = "items.npz" in entries and POINTER not in entries
    ours = {e for e in entries if e == POINTER or _VERSION_DIR.match(e) or e.startswith(".tmp-")}
    if not legacy and entries - ours:
        raise ValueError(f"{directory} is not empty and is not a saved Recaller; refusing to write into it")
    previous = _read_pointer(directory)[0] if POINTER in entries else None
    name = f"v-{time.time_ns():x}-{secrets.token_hex(4)}"
    tmp = os.path.join(directory, ".tmp-" + name)
    os.mkdir(tmp)
    try:
        write_version(rec, tmp)
        os.rename(tmp, os.path.join(directory, name))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if created:
            shutil.rmtree(directory, ignore_errors=True)
        raise
    manifest_sha = sha256_file(os.path.join(directory, name, MANIFEST))
    pointer = {"format": RECALLER_FORMAT, "version_dir": name, "manifest_sha256": manifest_sha}
    atomic_write(os.path.join(directory, POINTER), lambda f: _write_bytes(f, json.dumps(pointer).encode("utf-8")))
    _fsync_dir(directory)
    _clean(directory, keep={name, previous}, legacy=legacy)


def _write_bytes(f: Any, data: bytes) -> None:
    f.write(data)


def _clean(directory: str, keep: set, legacy: bool) -> None:
    """Remove older versions and the debris of interrupted saves (never anything not ours)."""
    for entry in os.listdir(directory):
        path = os.path.join(directory, entry)
        if entry in keep or entry == POINTER:
            continue
        if _VERSION_DIR.match(entry) or entry.startswith(".tmp-"):
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
        elif legacy and (entry in ("model.npz", "items.npz") or re.match(r"^index[0-9]+\.faiss$", entry)):
            os.unlink(path)  # fmrecall 0.1 members, superseded by the version just written


# ---------------------------------------------------------------------------- reading
def _read_pointer(directory: str) -> Tuple[str, str]:
    path = os.path.join(directory, POINTER)
    try:
        with open(path, "rb") as f:
            raw = f.read(4096)
        pointer = json.loads(raw.decode("utf-8"))
        name, sha = pointer["version_dir"], pointer["manifest_sha256"]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: corrupt pointer file ({e})") from None
    if not isinstance(name, str) or not _VERSION_DIR.match(name) or not isinstance(sha, str):
        raise ValueError(f"{path}: corrupt pointer file (version {name!r})")
    return name, sha


def _open_members(version: str, manifest_sha: Optional[str], stack: contextlib.ExitStack) -> Dict[str, Member]:
    """member name -> (path, open file), every file checked against the manifest's SHA-256 and size.
    The files are opened first and read through those handles only, so a concurrent save that
    removes this version afterwards cannot take them away (FileNotFoundError only while opening)."""
    mpath = os.path.join(version, MANIFEST)
    with open(mpath, "rb") as f:
        raw = f.read()
    if manifest_sha is not None and hashlib.sha256(raw).hexdigest() != manifest_sha:
        raise ValueError(f"{mpath}: checksum mismatch (the manifest is corrupt)")
    try:
        manifest = json.loads(raw.decode("utf-8"))
        members = manifest["members"]
        if manifest.get("format") != RECALLER_FORMAT or not isinstance(members, dict):
            raise KeyError("format")
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{mpath}: corrupt manifest ({e})") from None
    opened: Dict[str, Member] = {}
    for name, info in members.items():
        if not isinstance(name, str) or not _MEMBER.match(name) or not isinstance(info, dict):
            raise ValueError(f"{mpath}: bad member entry {name!r}")
        path = os.path.join(version, name)
        opened[name] = Member(path, stack.enter_context(open(path, "rb")))
    for need in ("model.npz", "items.npz"):
        if need not in opened:
            raise ValueError(f"{mpath}: no {need}")
    for name, member in opened.items():  # verified through the open handles
        info = members[name]
        sha, size = digest(member.file)
        member.file.seek(0)
        if size != info.get("size") or sha != info.get("sha256"):
            raise ValueError(f"{member.path}: checksum mismatch (the file is corrupt or was changed after saving)")
    return opened


def load_recaller(directory: Union[str, os.PathLike], **options: Any) -> Any:
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise FileNotFoundError(2, "No such directory", directory)
    if not os.path.exists(os.path.join(directory, POINTER)):
        if os.path.exists(os.path.join(directory, "items.npz")):  # fmrecall 0.1 layout, no checksums
            with contextlib.ExitStack() as stack:
                paths = [os.path.join(directory, e) for e in os.listdir(directory) if _MEMBER.match(e)]
                files = {os.path.basename(p): Member(p, stack.enter_context(open(p, "rb"))) for p in paths}
                return _load_members(files, directory, options)
        raise ValueError(f"{directory}: not a saved Recaller (no {POINTER} file)")
    deadline = time.monotonic() + _LOAD_PATIENCE_S
    while True:
        name, sha = _read_pointer(directory)
        with contextlib.ExitStack() as stack:
            try:
                files = _open_members(os.path.join(directory, name), sha, stack)
            except FileNotFoundError:
                # saves removed the version we started on before we opened its files: read the
                # pointer again; a version missing files while it is still current is broken
                if time.monotonic() > deadline or _read_pointer(directory)[0] == name:
                    raise
                continue
            return _load_members(files, os.path.join(directory, name), options)


def _load_members(files: Dict[str, Member], where: str, options: Dict[str, Any]) -> Any:
    from .recaller import Recaller

    for need in ("model.npz", "items.npz"):
        if need not in files:
            raise FileNotFoundError(2, "member missing", os.path.join(where, need))
    mpath = files["model.npz"].path
    meta_m, arrays_m = load_arrays(files["model.npz"].file, MODEL_FORMAT, MODEL_VERSION, name=mpath)
    try:
        model = model_from_arrays(meta_m, arrays_m, mpath)
    except KeyError as e:
        raise ValueError(f"{mpath}: missing entry {e}") from None
    ipath = files["items.npz"].path
    meta, arrays = load_arrays(files["items.npz"].file, RECALLER_FORMAT, RECALLER_VERSION, name=ipath)
    if meta.get("version") == 1:
        meta = _upgrade_v1(meta)
    try:
        conf, index_meta = meta["recaller"], meta["index"]
        sides = Schema.from_dict(conf["schema"]) if conf.get("schema") else Sides.from_dict(conf["sides"])
        backend = _backends().get(conf["backend"])
        if backend is None:
            raise ValueError(f"unknown index backend {conf['backend']!r}")
        rec = Recaller.__new__(Recaller)
        rec._init_loaded(model, sides, conf["threads"])  # validates like the constructor
        index_files = {n: m.file for n, m in files.items() if n.endswith(".faiss")}
        key_arrays = {n: arrays.pop(n) for n in KEY_ARRAYS if n in arrays}
        rec.index = backend.from_state(index_meta, arrays, index_files, rec.dim, rec.threads, ipath, **options)
        rec._keys = _item_keys(conf.get("item_keys"), key_arrays, rec.index, ipath)
    except (KeyError, TypeError) as e:
        raise ValueError(f"{ipath}: bad Recaller metadata ({e!r})") from None
    except ValueError as e:
        msg = str(e)
        raise ValueError(msg if msg.startswith(ipath) else f"{ipath}: {msg}") from None
    return rec


def _item_keys(kind: Any, arrays: Dict[str, np.ndarray], index: ItemIndex, where: str) -> ItemKeys:
    """The Recaller's id table, checked against the ids the index holds (directories without one:
    integer ids when the index holds items)."""
    if kind is None and len(index):
        kind = "int"
    if kind in (None, "int") and arrays:
        raise ValueError(f"{where}: an id table for {kind or 'no'} item ids")
    keys = ItemKeys.from_state(kind, arrays, where)
    if keys.mapped:
        held = np.unique(index.ids)
        known = np.flatnonzero(present(keys.keys))
        if not np.array_equal(held, known):
            raise ValueError(
                f"{where}: the id table lists {known.size} items, the index holds {held.size} "
                f"(differing ids, e.g. {np.setxor1d(held, known)[:3].tolist()})"
            )
    return keys


def _upgrade_v1(meta: Dict[str, Any]) -> Dict[str, Any]:
    p = dict(meta.get("params", {}))
    pad = p.pop("pad", None)
    return {
        "recaller": {
            "sides": meta["sides"],
            "threads": meta.get("threads", 0),
            "backend": "faiss",
            "schema": meta.get("schema"),
        },
        "index": {
            "kind": meta["index"],
            "segments": meta["segments"],
            "candidates": meta.get("candidates"),
            **p,
            "pad": pad,
            "max_norms": meta["max_norms"],
        },
    }


# ---------------------------------------------------------------------------- pickle
def recaller_to_bytes(rec: Any) -> bytes:
    """One version directory as an uncompressed zip: the pickle payload of a Recaller."""
    with tempfile.TemporaryDirectory(prefix="fmrecall-pickle-") as tmp:
        write_version(rec, tmp)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
            for name in sorted(os.listdir(tmp)):
                z.write(os.path.join(tmp, name), name)
        return buf.getvalue()


def recaller_from_bytes(payload: bytes) -> Any:
    """The Recaller `recaller_to_bytes` wrote, verified like a directory."""
    if not isinstance(payload, (bytes, bytearray)):
        raise ValueError("a pickled Recaller carries bytes")
    with tempfile.TemporaryDirectory(prefix="fmrecall-pickle-") as tmp:
        try:
            with zipfile.ZipFile(io.BytesIO(payload)) as z:
                names = z.namelist()
                for name in names:
                    if name != MANIFEST and not _MEMBER.match(name):
                        raise ValueError(f"unexpected member {name!r}")
                    with z.open(name) as src, open(os.path.join(tmp, name), "wb") as dst:
                        shutil.copyfileobj(src, dst)
        except zipfile.BadZipFile as e:
            raise ValueError(f"corrupt pickled Recaller ({e})") from None
        with contextlib.ExitStack() as stack:
            return _load_members(_open_members(tmp, None, stack), "<pickle>", {})
