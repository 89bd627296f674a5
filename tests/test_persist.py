"""model.save / fmrecall.load: one pickle-free .npz, bit-identical predictions, atomic writes,
clear errors for files that are not fmrecall models."""
from __future__ import annotations

import json
import os
import zipfile

import numpy as np
import pytest

import fmrecall
import fmrecall.persist
from conftest import MODEL_CLASSES, random_dataset

KINDS = ["fm", "ffm"]


def _fitted(rng, kind, **hyper):
    ds = random_dataset(rng, n_rows=60, n_features=25, n_fields=4)
    params = dict(k=5, epochs=2, threads=1, seed=3)
    params.update(hyper)
    return MODEL_CLASSES[kind](**params).fit(ds), ds


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("hyper", [dict(), dict(normalize=True, loss="squared", k=3, learning_rate=0.05)],
                         ids=["default", "normalize-squared"])
def test_round_trip_is_bit_identical(rng, tmp_path, kind, hyper):
    model, ds = _fitted(rng, kind, **hyper)
    path = tmp_path / "model.npz"
    model.save(path)
    loaded = fmrecall.load(path)
    assert type(loaded) is type(model)
    np.testing.assert_array_equal(loaded.decision_function(ds), model.decision_function(ds))
    np.testing.assert_array_equal(loaded.predict(ds), model.predict(ds))
    a, b = model.weights(), loaded.weights()
    assert a["bias"] == b["bias"]
    np.testing.assert_array_equal(a["linear"], b["linear"])
    np.testing.assert_array_equal(a["factors"], b["factors"])
    for name in ("k", "loss", "normalize", "learning_rate", "reg_linear", "reg_factors", "epochs", "seed",
                 "patience", "init_std"):
        assert loaded.get_params()[name] == model.get_params()[name], name
    # str paths work too
    model.save(str(tmp_path / "again.npz"))
    np.testing.assert_array_equal(fmrecall.load(str(tmp_path / "again.npz")).decision_function(ds),
                                  model.decision_function(ds))


@pytest.mark.parametrize("kind", KINDS)
def test_loaded_model_keeps_unseen_index_rules(rng, tmp_path, kind):
    """n_features / n_fields survive: indices beyond them are still ignored after loading."""
    model, ds = _fitted(rng, kind)
    model.save(tmp_path / "m.npz")
    loaded = fmrecall.load(tmp_path / "m.npz")
    assert (loaded.n_features_, loaded.n_fields_) == (model.n_features_, model.n_fields_)
    # move every second node of each row outside the model (first node stays: rows with no
    # in-model node at all have their own tests in test_models.py)
    pos = np.arange(ds.nnz) - np.repeat(ds.indptr[:-1], np.diff(ds.indptr))
    odd = pos % 2 == 1
    wide = fmrecall.Dataset(ds.indptr, ds.fields + (odd & (ds.features % 2 == 0)) * 10,
                            ds.features + (odd & (ds.features % 2 == 1)) * 100, ds.values, ds.labels)
    assert wide.n_features > model.n_features_ and wide.n_fields > model.n_fields_
    np.testing.assert_array_equal(loaded.decision_function(wide), model.decision_function(wide))


def test_file_is_one_plain_npz(rng, tmp_path):
    model, _ = _fitted(rng, "ffm")
    path = tmp_path / "model.bin"  # no .npz suffix: the file is written exactly where asked
    model.save(path)
    assert sorted(os.listdir(tmp_path)) == ["model.bin"]
    assert zipfile.is_zipfile(path)
    with np.load(path, allow_pickle=False) as z:  # loads without unpickling anything
        for name in z.files:
            assert z[name].dtype != object, name


def test_save_overwrites(rng, tmp_path):
    a, ds = _fitted(rng, "fm", seed=1)
    b, _ = _fitted(rng, "fm", seed=2)
    path = tmp_path / "m.npz"
    a.save(path)
    b.save(path)
    np.testing.assert_array_equal(fmrecall.load(path).decision_function(ds), b.decision_function(ds))
    assert os.listdir(tmp_path) == ["m.npz"]


@pytest.mark.parametrize("kind", KINDS)
def test_failed_save_leaves_previous_file_intact(rng, tmp_path, monkeypatch, kind):
    model, _ = _fitted(rng, kind)
    path = tmp_path / "m.npz"
    model.save(path)
    before = path.read_bytes()

    def broken_savez(file, *args, **kwds):
        (file.write if hasattr(file, "write") else open(file, "wb").write)(b"PK\x03\x04 partial garbage")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(fmrecall.persist.np, "savez", broken_savez)
    other, _ = _fitted(rng, kind, seed=99)
    with pytest.raises(OSError, match="simulated"):
        other.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.npz"]  # no temporary file left behind
    # and a failed first save leaves nothing at all
    with monkeypatch.context() as mp:
        mp.setattr(fmrecall.persist.np, "savez", broken_savez)
        with pytest.raises(OSError):
            other.save(tmp_path / "new.npz")
    assert os.listdir(tmp_path) == ["m.npz"]


def test_saved_file_permissions_follow_umask(rng, tmp_path):
    """The model file gets the permissions any new file gets (umask), like np.savez / open() would
    give it; the atomic write must not leave it readable by its owner only."""
    model, _ = _fitted(rng, "fm")
    old = os.umask(0o022)
    try:
        model.save(tmp_path / "m.npz")
        (tmp_path / "plain").write_bytes(b"")
    finally:
        os.umask(old)
    mode = os.stat(tmp_path / "m.npz").st_mode & 0o777
    assert mode == os.stat(tmp_path / "plain").st_mode & 0o777 == 0o644, oct(mode)


# ---------------------------------------------------------------------------- bad files
def _rewrite_meta(src, dst, change):
    with np.load(src, allow_pickle=False) as z:
        arrays = {name: z[name] for name in z.files}
    meta = json.loads(arrays["meta"].tobytes().decode("utf-8"))
    change(meta)
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
    np.savez(dst, **arrays)


def test_newer_version_and_wrong_format_rejected(rng, tmp_path):
    model, ds = _fitted(rng, "fm")
    path = tmp_path / "m.npz"
    model.save(path)
    # sanity: rewriting with the same metadata still loads
    _rewrite_meta(path, tmp_path / "same.npz", lambda m: None)
    np.testing.assert_array_equal(fmrecall.load(tmp_path / "same.npz").decision_function(ds),
                                  model.decision_function(ds))
    _rewrite_meta(path, tmp_path / "newer.npz", lambda m: m.update(version=m["version"] + 1))
    with pytest.raises(ValueError, match="version"):
        fmrecall.load(tmp_path / "newer.npz")
    _rewrite_meta(path, tmp_path / "other.npz", lambda m: m.update(format="something.else"))
    with pytest.raises(ValueError):
        fmrecall.load(tmp_path / "other.npz")
    _rewrite_meta(path, tmp_path / "cls.npz", lambda m: m.update({"class": "NoSuchModel"}))
    with pytest.raises(ValueError):
        fmrecall.load(tmp_path / "cls.npz")


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        fmrecall.load(tmp_path / "nope.npz")


def _text(path):
    path.write_text("1 0:1:1\n")


def _plain_npz(path):
    np.savez(path, a=np.arange(3))


def _npy(path):
    with open(path, "wb") as f:
        np.save(f, np.arange(3))


def _zip_of_text(path):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("hello.txt", "not an array")


def _pickled_npz(path):
    np.savez(path, meta=np.array([{"format": "fmrecall.model"}], dtype=object))


@pytest.mark.parametrize("make", [_text, _plain_npz, _npy, _zip_of_text, _pickled_npz],
                         ids=["text", "npz-without-meta", "npy", "zip-of-text", "pickled-meta"])
def test_non_fmrecall_files_raise_value_error(tmp_path, make):
    path = tmp_path / "x.npz"
    make(path)
    with pytest.raises(ValueError):
        fmrecall.load(path)


def test_truncated_model_file_raises_value_error(rng, tmp_path):
    model, _ = _fitted(rng, "ffm")
    path = tmp_path / "m.npz"
    model.save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError):
        fmrecall.load(path)
