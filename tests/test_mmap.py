"""Dataset.from_libffm / from_libsvm(mmap=True): the binary cache (fmrecall.cache), its staleness and
corruption checks, and training on memory-mapped rows (exactly as in memory)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from helpers import random_dataset

import fmrecall
from fmrecall import _core, cache

Dataset = fmrecall.Dataset
ARRAYS = ("indptr", "fields", "features", "values", "labels")


def _same(a: Dataset, b: Dataset) -> None:
    for name in ARRAYS:
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            assert x.dtype == y.dtype, name
            np.testing.assert_array_equal(x, y, err_msg=name)
    assert (a.n_features, a.n_fields, a.n_rows) == (b.n_features, b.n_fields, b.n_rows)


@pytest.fixture(scope="module")
def _ffm_text(tmp_path_factory):
    path = tmp_path_factory.mktemp("ffm") / "train.ffm"
    random_dataset(np.random.default_rng(5), 3000, n_features=300, n_fields=6).to_libffm(path)
    return path.read_bytes()


@pytest.fixture
def ffm_file(tmp_path, _ffm_text):
    path = tmp_path / "train.ffm"
    path.write_bytes(_ffm_text)
    return path


def _cache_dirs(where):
    return sorted(d for d in os.listdir(where) if ".fmcache-" in d)


# ---------------------------------------------------------------------------- contents
def test_mmap_equals_in_memory_and_is_mapped(ffm_file, tmp_path):
    mem = Dataset.from_libffm(ffm_file)
    mm = Dataset.from_libffm(ffm_file, mmap=True)
    _same(mem, mm)
    for name in ARRAYS:
        assert isinstance(getattr(mm, name), np.memmap), name
        assert not getattr(mm, name).flags.writeable
    # next to the data by default; a second open reuses it
    (entry,) = _cache_dirs(tmp_path)
    assert entry.startswith("train.ffm.fmcache-")
    _, header, directory, built = cache.open_cache([str(ffm_file)], "libffm")
    assert not built and os.path.basename(directory) == entry
    assert header["version"] == cache.VERSION and header["n_rows"] == 3000


def test_mmap_one_hot_libsvm_several_paths_and_cache_dir(tmp_path):
    a, b = tmp_path / "a.svm", tmp_path / "b.svm"
    a.write_text("1 0:1 4:1\n0 2:1\n")
    b.write_text("1 3:1 5:1\n\n0\n")
    ranges = [(0, 3), (3, 6)]
    mem = Dataset.from_libsvm([a, b, a], ranges)
    mm = Dataset.from_libsvm([a, b, a], ranges, mmap=True, cache_dir=tmp_path / "c" / "d")
    assert mm.values is None and mm.nnz == 8 and mm.n_rows == 6
    _same(mem, mm)
    assert len(_cache_dirs(tmp_path / "c" / "d")) == 1 and not _cache_dirs(tmp_path)
    # another field map is another cache
    other = Dataset.from_libsvm([a, b, a], [(0, 2), (2, 6)], mmap=True, cache_dir=tmp_path / "c" / "d")
    assert len(_cache_dirs(tmp_path / "c" / "d")) == 2
    np.testing.assert_array_equal(other.fields, Dataset.from_libsvm([a, b, a], [(0, 2), (2, 6)]).fields)


def test_values_appearing_late_back_fill_ones(tmp_path):
    """The first value other than 1 arrives in a later 16 MiB block: earlier nodes read 1."""
    line = "1 " + " ".join(f"{f}:{f + 10}:1" for f in range(20)) + "\n"
    n = (17 << 20) // len(line)
    path = tmp_path / "late.ffm"
    path.write_text(line * n + "0 3:4:0.5\n")
    mm = Dataset.from_libffm(path, mmap=True)
    assert mm.values is not None and mm.nnz == 20 * n + 1
    assert mm.values[-1] == np.float32(0.5) and np.all(mm.values[:-1] == 1)
    assert mm.indptr[-1] == mm.nnz and mm.indptr[n] == 20 * n


def test_mmap_sizes_and_errors(ffm_file, tmp_path):
    mm = Dataset.from_libffm(ffm_file, mmap=True, n_features=1000, n_fields=9)
    assert (mm.n_features, mm.n_fields) == (1000, 9)
    with pytest.raises(ValueError, match="n_features=3 but the data has feature index"):
        Dataset.from_libffm(ffm_file, mmap=True, n_features=3)
    bad = tmp_path / "bad.ffm"
    bad.write_text("1 0:1:1\n1 0:1:x\n")
    with pytest.raises(ValueError, match=f"{bad}:2: bad value"):
        Dataset.from_libffm(bad, mmap=True)
    assert not _cache_dirs(tmp_path)[1:], "a failed build leaves no cache"
    assert not [d for d in os.listdir(tmp_path) if ".tmp-" in d]


# ---------------------------------------------------------------------------- stale and corrupt caches
def test_stale_cache_is_rebuilt(ffm_file):
    Dataset.from_libffm(ffm_file, mmap=True)
    # same size, new mtime ("touch"): rebuilt, same rows
    st = os.stat(ffm_file)
    os.utime(ffm_file, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    _, _, _, built = cache.open_cache([str(ffm_file)], "libffm")
    assert built
    # a modified source: rebuilt with the new rows, in the same cache directory
    with open(ffm_file, "a") as f:
        f.write("1 0:299:0.5\n")
    mm = Dataset.from_libffm(ffm_file, mmap=True)
    assert mm.n_rows == 3001 and mm.features[-1] == 299
    _same(Dataset.from_libffm(ffm_file), mm)
    assert len(_cache_dirs(ffm_file.parent)) == 1


@pytest.mark.parametrize("target", ["features.i4", "indptr.i8", "labels.f4", "values.f4", "header.json"])
def test_corrupt_cache_is_rebuilt(ffm_file, target):
    mem = Dataset.from_libffm(ffm_file)
    Dataset.from_libffm(ffm_file, mmap=True)
    (entry,) = _cache_dirs(ffm_file.parent)
    path = ffm_file.parent / entry / target
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10  # one flipped bit
    path.write_bytes(bytes(data))
    _, _, _, built = cache.open_cache([str(ffm_file)], "libffm")
    assert built
    _same(mem, Dataset.from_libffm(ffm_file, mmap=True))


@pytest.mark.parametrize("damage", ["truncate", "delete", "garbage-header", "old-version", "no-header"])
def test_damaged_cache_is_rebuilt(ffm_file, damage):
    mem = Dataset.from_libffm(ffm_file)
    Dataset.from_libffm(ffm_file, mmap=True)
    directory = ffm_file.parent / _cache_dirs(ffm_file.parent)[0]
    if damage == "truncate":
        with open(directory / "fields.i4", "r+b") as f:
            f.truncate(100)
    elif damage == "delete":
        os.unlink(directory / "labels.f4")
    elif damage == "garbage-header":
        (directory / "header.json").write_bytes(b"\xff\x00not json")
    elif damage == "old-version":  # a consistent header of another format version
        header = json.loads((directory / "header.json").read_text())
        header["version"] = cache.VERSION + 1
        body = {k: v for k, v in header.items() if k != "header_sha256"}
        header["header_sha256"] = cache.hashlib.sha256(cache._canonical(body)).hexdigest()
        (directory / "header.json").write_text(json.dumps(header))
    else:
        os.unlink(directory / "header.json")
    _, _, _, built = cache.open_cache([str(ffm_file)], "libffm")
    assert built
    _same(mem, Dataset.from_libffm(ffm_file, mmap=True))


# ---------------------------------------------------------------------------- training on mapped rows
def test_one_thread_training_on_mmap_equals_in_memory(ffm_file, monkeypatch):
    import fmrecall.training as models  # _CHUNK_ROWS: the training loop's chunk size

    monkeypatch.setattr(models, "_CHUNK_ROWS", 512)  # several chunks per epoch
    mem = Dataset.from_libffm(ffm_file)
    mm = Dataset.from_libffm(ffm_file, mmap=True)
    valid = mem.subset(np.arange(0, 3000, 7))
    for make in (
        lambda: fmrecall.FM(4, epochs=3, threads=1, seed=3),
        lambda: fmrecall.FFM(2, epochs=2, threads=1, seed=3),
    ):
        a, b = make().fit(mem, valid=valid), make().fit(mm, valid=valid)
        wa, wb = a.weights(), b.weights()
        for key in wa:
            np.testing.assert_array_equal(wa[key], wb[key], err_msg=key)
        np.testing.assert_array_equal(a.decision_function(mem), b.decision_function(mm))
        a.partial_fit(mem)
        b.partial_fit(mm)
        np.testing.assert_array_equal(a.weights()["linear"], b.weights()["linear"])
    sub = mm.subset([5, 1, 2])
    _same(mem.subset([5, 1, 2]), sub)


def test_train_checks_only_the_chunk_rows():
    """Model.train validates the indptr entries of the rows in `order` only (O(chunk) per call)."""
    ds = random_dataset(np.random.default_rng(2), 50, n_features=20, n_fields=3)
    core = _core.Model(20, 3, 4, np.zeros(3, np.uint8), None, 0, 0.05, 1, False)
    indptr = ds.indptr.copy()
    indptr[10] = indptr[11] + 1  # row 10 would end before it starts
    indptr[20] = ds.nnz + 5  # row 19 would end beyond the nodes, row 20 end before it starts
    order = np.array([0, 1, 2, 9, 30], np.int64)
    args = (ds.fields, ds.features, ds.values, ds.labels)
    core.train(indptr, *args, order, 0, 0.1, 0.0, 0.0, 1)  # rows never touched are not read
    for bad_row in (10, 19, 20):
        with pytest.raises(ValueError, match="non-decreasing"):
            core.train(indptr, *args, np.array([0, bad_row], np.int64), 0, 0.1, 0.0, 0.0, 1)
    with pytest.raises(ValueError, match="row order out of range"):
        core.train(ds.indptr, *args, np.array([50], np.int64), 0, 0.1, 0.0, 0.0, 1)


def test_dataset_over_user_memmaps_is_checked_in_blocks_without_copies(tmp_path, monkeypatch):
    """Dataset(...) over np.load(mmap_mode="r") arrays keeps them (no copy); its checks run block by
    block (small temporaries) and still name the first bad entry, across block boundaries."""
    import fmrecall.dataset_args as dataset_module

    ds = random_dataset(np.random.default_rng(4), 200, n_features=50, n_fields=4)
    for name in ARRAYS:
        np.save(tmp_path / f"{name}.npy", getattr(ds, name))
    arrays = {name: np.load(tmp_path / f"{name}.npy", mmap_mode="r") for name in ARRAYS}
    mm = Dataset(*(arrays[n] for n in ARRAYS))
    for name in ARRAYS:
        assert np.shares_memory(getattr(mm, name), arrays[name]), name
    monkeypatch.setattr(dataset_module, "_BLOCK", 7)
    indptr = ds.indptr.copy()
    indptr[150] = indptr[149] - 1
    with pytest.raises(ValueError, match="indptr decreases at row 149"):
        Dataset(indptr, ds.fields, ds.features)
    feats = ds.features.astype(np.int64)
    feats[-1] = 2**31
    with pytest.raises(ValueError, match=rf"features\[{feats.size - 1}\] = 2147483648 is out of range"):
        Dataset(ds.indptr, ds.fields, feats)
    vals = ds.values.copy()
    vals[99] = np.nan
    with pytest.raises(ValueError, match=r"values\[99\] = nan is not finite"):
        Dataset(ds.indptr, ds.fields, ds.features, vals)
