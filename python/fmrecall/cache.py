"""Binary CSR cache of parsed libffm / libsvm text, memory-mapped by ``Dataset.from_libffm(...,
mmap=True)`` and ``Dataset.from_libsvm(..., mmap=True)``.

The text is parsed once, in one streaming pass (16 MiB blocks, bounded memory), into a cache
directory; later opens map its arrays read-only (``np.memmap``), so the rows live in the page cache
and not in the process's anonymous memory.

Layout: ``<cache_dir or the first source's directory>/<first source's name>.fmcache-<key>/`` where
``key`` is the first 16 hex digits of the SHA-256 of (format, absolute source paths, field map). It
holds one raw little-endian file per array and ``header.json``::

    {"magic": "fmrecall-csr-cache", "version": 1, "kind": "libffm" | "libsvm",
     "sources": [{"path": abs path, "size": bytes, "mtime_ns": int}, ...],
     "field_map_sha256": hex | null,
     "n_rows", "nnz", "n_features", "n_fields": int, "has_values": bool,
     "arrays": {"indptr": {"file": "indptr.i8", "dtype": "<i8", "length": n_rows + 1, "sha256": hex},
                "fields" ("<i4"), "features" ("<i4"), "labels" ("<f4"), and "values" ("<f4") only
                when some value is not 1},
     "header_sha256": SHA-256 of the canonical JSON of everything above}

Every open checks the header checksum, the format version, the sources' sizes and mtimes (a
changed source makes the cache stale) and every array's length and SHA-256 (hashed in parallel,
~0.7 GB/s per core); anything that does not match is rebuilt, never trusted. A build writes into a
temporary sibling directory (fsynced) and renames it into place, so readers only ever see a complete
cache; a cache that another process completed first is used instead of ours.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import _core

MAGIC = "fmrecall-csr-cache"
VERSION = 1
_HEADER = "header.json"
_ARRAYS = (
    ("indptr", "<i8", "indptr.i8"),
    ("fields", "<i4", "fields.i4"),
    ("features", "<i4", "features.i4"),
    ("labels", "<f4", "labels.f4"),
    ("values", "<f4", "values.f4"),
)
_READ = 1 << 22  # bytes per read while hashing
_ONES_BLOCK = 1 << 20


class CacheError(Exception):
    """A cache that cannot be used (missing, stale or corrupt); it is rebuilt."""


def _stats(paths: Sequence[str]) -> List[Dict[str, object]]:
    out = []
    for p in paths:
        st = os.stat(p)
        out.append({"path": p, "size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)})
    return out


def _canonical(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode("utf-8")


def cache_path(paths: Sequence[str], kind: str, fmap: Optional[np.ndarray], cache_dir: Optional[str]) -> str:
    """The cache directory for these sources (it may not exist yet)."""
    fmap_hash = None if fmap is None else hashlib.sha256(np.ascontiguousarray(fmap, "<i4").tobytes()).hexdigest()
    key = hashlib.sha256(_canonical([kind, list(paths), fmap_hash])).hexdigest()[:16]
    parent = os.fspath(cache_dir) if cache_dir is not None else os.path.dirname(paths[0])
    return os.path.join(parent, f"{os.path.basename(paths[0])}.fmcache-{key}")


def _hash_file(path: str) -> str:
    h = hashlib.sha256()
    buf = bytearray(_READ)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            h.update(view[:n])  # hashlib releases the GIL: arrays hash in parallel
    return h.hexdigest()


def _read_header(directory: str) -> dict:
    try:
        with open(os.path.join(directory, _HEADER), "rb") as f:
            raw = f.read(1 << 20)
        header = json.loads(raw.decode("utf-8"))
    except FileNotFoundError:
        raise CacheError("no cache") from None
    except (OSError, ValueError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise CacheError(f"unreadable header: {e}") from None
    if not isinstance(header, dict):
        raise CacheError("header is not an object")
    return header


def _verify(directory: str, kind: str, fmap_hash: Optional[str], sources: List[Dict[str, object]]) -> dict:
    """The header of a complete, current and intact cache, or CacheError saying why not."""
    header = _read_header(directory)
    body = {k: v for k, v in header.items() if k != "header_sha256"}
    if header.get("header_sha256") != hashlib.sha256(_canonical(body)).hexdigest():
        raise CacheError("header checksum mismatch")
    if header.get("magic") != MAGIC or header.get("version") != VERSION:
        raise CacheError(f"format version {header.get('version')!r}, this fmrecall writes {VERSION}")
    if header.get("kind") != kind or header.get("field_map_sha256") != fmap_hash:
        raise CacheError("built for another format or field map")
    if header.get("sources") != sources:
        raise CacheError("stale: a source file changed since the cache was built")
    arrays = header.get("arrays")
    if not isinstance(arrays, dict):
        raise CacheError("header has no arrays")
    names = {name: (dtype, fname) for name, dtype, fname in _ARRAYS}
    need = {"indptr", "fields", "features", "labels"} | ({"values"} if header.get("has_values") else set())
    if set(arrays) != need:
        raise CacheError("header lists the wrong arrays")
    n_rows, nnz = header.get("n_rows"), header.get("nnz")
    if not (isinstance(n_rows, int) and isinstance(nnz, int) and n_rows >= 0 and nnz >= 0):
        raise CacheError("bad row or node count")
    lengths = {"indptr": n_rows + 1, "fields": nnz, "features": nnz, "labels": n_rows, "values": nnz}
    for name, meta in arrays.items():
        dtype, fname = names[name]
        if meta.get("dtype") != dtype or meta.get("file") != fname or meta.get("length") != lengths[name]:
            raise CacheError(f"{name}: unexpected dtype, file or length")
        try:
            size = os.stat(os.path.join(directory, fname)).st_size
        except OSError:
            raise CacheError(f"{name}: file missing") from None
        if size != lengths[name] * np.dtype(dtype).itemsize:
            raise CacheError(f"{name}: file is {size} bytes, expected {lengths[name] * np.dtype(dtype).itemsize}")
    with ThreadPoolExecutor(max_workers=min(4, len(arrays))) as pool:
        digests = dict(zip(arrays, pool.map(lambda n: _hash_file(os.path.join(directory, names[n][1])), arrays)))
    for name, meta in arrays.items():
        if digests[name] != meta.get("sha256"):
            raise CacheError(f"{name}: checksum mismatch (corrupt cache)")
    return header


class _Writer:
    """Appends parsed blocks to the array files of a cache being built, hashing as it writes."""

    def __init__(self, directory: str) -> None:
        self.dir = directory
        self.files = {name: open(os.path.join(directory, fname), "wb") for name, _, fname in _ARRAYS}
        self.hashes = {name: hashlib.sha256() for name, _, _ in _ARRAYS}
        self.n_rows = 0
        self.nnz = 0
        self.n_features = 0
        self.n_fields = 0
        self.has_values = False
        self._put("indptr", np.zeros(1, "<i8"))

    def _put(self, name: str, a: np.ndarray) -> None:
        b = np.ascontiguousarray(a).data.cast("B")
        self.files[name].write(b)
        self.hashes[name].update(b)

    def _ones(self, count: int) -> None:
        block = np.ones(min(count, _ONES_BLOCK), "<f4")
        while count > 0:
            n = min(count, block.size)
            self._put("values", block[:n])
            count -= n

    def add(self, block: dict) -> None:
        feats = block["features"]
        self._put("indptr", block["indptr"][1:] + self.nnz)
        self._put("fields", block["fields"])
        self._put("features", feats)
        self._put("labels", block["labels"])
        if block["values"] is not None:
            if not self.has_values:  # first value other than 1: the ones so far are written now
                self.has_values = True
                self._ones(self.nnz)
            self._put("values", block["values"])
        elif self.has_values:
            self._ones(feats.size)
        self.n_rows += block["labels"].size
        self.nnz += feats.size
        self.n_features = max(self.n_features, int(block["n_features"]))
        self.n_fields = max(self.n_fields, int(block["n_fields"]))

    def finish(self, kind: str, fmap_hash: Optional[str], sources: List[Dict[str, object]]) -> dict:
        for f in self.files.values():
            f.flush()
            os.fsync(f.fileno())
            f.close()
        arrays = {}
        for name, dtype, fname in _ARRAYS:
            if name == "values" and not self.has_values:
                os.unlink(os.path.join(self.dir, fname))
                continue
            length = {"indptr": self.n_rows + 1, "labels": self.n_rows}.get(name, self.nnz)
            arrays[name] = {"file": fname, "dtype": dtype, "length": length, "sha256": self.hashes[name].hexdigest()}
        header = {
            "magic": MAGIC,
            "version": VERSION,
            "kind": kind,
            "sources": sources,
            "field_map_sha256": fmap_hash,
            "n_rows": self.n_rows,
            "nnz": self.nnz,
            "n_features": self.n_features,
            "n_fields": self.n_fields,
            "has_values": self.has_values,
            "arrays": arrays,
        }
        header["header_sha256"] = hashlib.sha256(_canonical(header)).hexdigest()
        with open(os.path.join(self.dir, _HEADER), "wb") as f:
            f.write(json.dumps(header, sort_keys=True, indent=1).encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
        return header

    def abort(self) -> None:
        for f in self.files.values():
            f.close()


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:  # pragma: no cover - not every file system allows it
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _build(
    final: str,
    paths: Sequence[str],
    kind: str,
    fmap: Optional[np.ndarray],
    fmap_hash: Optional[str],
    sources: List[Dict[str, object]],
) -> Optional[dict]:
    """Parses `paths` into a new cache at `final`; its header, or None if another process put a cache
    there first (the caller verifies that one)."""
    parent = os.path.dirname(final) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = f"{final}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        os.mkdir(tmp)
    except OSError as e:
        raise OSError(
            e.errno, f"cannot create the mmap cache ({e.strerror}); pass cache_dir= a writable directory", tmp
        ) from None
    try:
        writer = _Writer(tmp)
        try:
            for p in paths:
                if kind == "libffm":
                    _core.stream_libffm(p, writer.add)
                else:
                    assert fmap is not None
                    _core.stream_libsvm(p, fmap, writer.add)
        except BaseException:
            writer.abort()
            raise
        if _stats(paths) != sources:  # a source changed while we read it: do not label it as `sources`
            raise ValueError(f"{', '.join(paths)}: a source file changed while it was being parsed")
        header: Optional[dict] = writer.finish(kind, fmap_hash, sources)
        _fsync_dir(tmp)
        if os.path.lexists(final):  # stale or corrupt: move it aside, then put ours in its place
            trash = f"{final}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            try:
                os.rename(final, trash)
            except FileNotFoundError:  # another process moved it first
                pass
            else:
                shutil.rmtree(trash, ignore_errors=True)
        try:
            os.rename(tmp, final)
        except OSError:  # another process put a cache there meanwhile: keep theirs (it is verified on open)
            shutil.rmtree(tmp, ignore_errors=True)
            header = None
        _fsync_dir(parent)
        return header
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _map(directory: str, header: dict) -> Dict[str, Optional[np.ndarray]]:
    out: Dict[str, Optional[np.ndarray]] = {"values": None}
    for name, meta in header["arrays"].items():
        if meta["length"] == 0:  # mmap cannot map an empty file
            out[name] = np.zeros(0, dtype=meta["dtype"])
        else:
            out[name] = np.memmap(
                os.path.join(directory, meta["file"]), dtype=meta["dtype"], mode="r", shape=(meta["length"],)
            )
    return out


def open_cache(
    paths: Sequence[str], kind: str, fmap: Optional[np.ndarray] = None, cache_dir: Optional[str] = None
) -> Tuple[Dict[str, Optional[np.ndarray]], dict, str, bool]:
    """(read-only memory-mapped arrays, header, cache directory, whether it was (re)built now).

    `paths` are absolute paths of regular files; their rows are concatenated in order."""
    fmap_hash = None if fmap is None else hashlib.sha256(np.ascontiguousarray(fmap, "<i4").tobytes()).hexdigest()
    directory = cache_path(paths, kind, fmap, cache_dir)
    sources = _stats(paths)
    built = False
    header: Optional[dict]
    try:
        header = _verify(directory, kind, fmap_hash, sources)
    except CacheError:
        header = _build(directory, paths, kind, fmap, fmap_hash, sources)
        if header is None:  # a concurrent builder's cache: verified like any other
            header = _verify(directory, kind, fmap_hash, sources)
        built = True
    assert header is not None
    return _map(directory, header), header, directory, built
