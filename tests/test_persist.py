"""model.save / fmrecall.load: one pickle-free .npz, bit-identical predictions, atomic writes,
clear errors for files that are not fmrecall models."""

from __future__ import annotations

import io
import json
import os
import zipfile

import numpy as np
import pytest
from helpers import MODEL_CLASSES, random_dataset

import fmrecall
import fmrecall.persist

KINDS = ["fm", "ffm"]


def _fitted(rng, kind, **hyper):
    ds = random_dataset(rng, n_rows=60, n_features=25, n_fields=4)
    params = dict(k=5, epochs=2, threads=1, seed=3)
    params.update(hyper)
    return MODEL_CLASSES[kind](**params).fit(ds), ds


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "hyper",
    [dict(), dict(normalize=True, loss="squared", k=3, learning_rate=0.05)],
    ids=["default", "normalize-squared"],
)
def test_round_trip_is_bit_identical(rng, tmp_path, kind, hyper):
    model, ds = _fitted(rng, kind, **hyper)
    path = tmp_path / "model.npz"
    model.save(path)
    loaded = fmrecall.load(path)
    assert type(loaded) is type(model)
    np.testing.assert_array_equal(loaded.decision_function(ds), model.decision_function(ds))
    np.testing.assert_array_equal(loaded.decision_function(ds), model.decision_function(ds))
    a, b = model.weights(), loaded.weights()
    assert a["bias"] == b["bias"]
    np.testing.assert_array_equal(a["linear"], b["linear"])
    np.testing.assert_array_equal(a["factors"], b["factors"])
    for name in (
        "k",
        "loss",
        "normalize",
        "learning_rate",
        "reg_linear",
        "reg_factors",
        "epochs",
        "seed",
        "patience",
        "init_std",
    ):
        assert loaded.get_params()[name] == model.get_params()[name], name
    # str paths work too
    model.save(str(tmp_path / "again.npz"))
    np.testing.assert_array_equal(
        fmrecall.load(str(tmp_path / "again.npz")).decision_function(ds), model.decision_function(ds)
    )


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
    wide = fmrecall.Dataset(
        ds.indptr,
        ds.fields + (odd & (ds.features % 2 == 0)) * 10,
        ds.features + (odd & (ds.features % 2 == 1)) * 100,
        ds.values,
        ds.labels,
    )
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
    np.testing.assert_array_equal(
        fmrecall.load(tmp_path / "same.npz").decision_function(ds), model.decision_function(ds)
    )
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


@pytest.mark.parametrize(
    "make",
    [_text, _plain_npz, _npy, _zip_of_text, _pickled_npz],
    ids=["text", "npz-without-meta", "npy", "zip-of-text", "pickled-meta"],
)
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


# ---------------------------------------------------------------------------- integrity and validation
def _zip_members(data: bytes):
    """[(name, offset of the member's data, size)] of a zip file's members."""
    import struct

    out = []
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        for info in z.infolist():
            off = info.header_offset
            name_len, extra_len = struct.unpack("<HH", data[off + 26 : off + 30])
            out.append((info.filename, off + 30 + name_len + extra_len, info.file_size))
    return out


@pytest.mark.parametrize("kind", ["fm", "ffm", "hybrid"])
def test_flipped_byte_in_any_member_raises_naming_it(rng, tmp_path, kind):
    model, _ = _fitted_any(rng, kind)
    path = tmp_path / "m.npz"
    model.save(path)
    data = path.read_bytes()
    members = _zip_members(data)
    assert {m[0] for m in members} >= {"meta.npy", "bias.npy", "linear.npy"}
    for name, start, size in members:
        for where in (0, size // 2, size - 1):  # in the .npy header, the middle, the last data byte
            bad = bytearray(data)
            bad[start + where] ^= 0x04
            path.write_bytes(bytes(bad))
            with pytest.raises(ValueError, match=rf"m\.npz.*{name.removesuffix('.npy')}"):
                fmrecall.load(path)


def _rewrite(src, dst, change_meta=None, change_arrays=None):
    """Rewrite a model file as a valid zip (fresh CRCs) after editing its metadata / arrays; the
    recorded checksums are kept unless change_meta edits them."""
    with np.load(src, allow_pickle=False) as z:
        arrays = {name: z[name] for name in z.files}
    meta = json.loads(arrays.pop("meta").tobytes().decode("utf-8"))
    if change_arrays:
        change_arrays(arrays)
    if change_meta:
        change_meta(meta)
    np.savez(dst, meta=np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8), **arrays)


def _fitted_any(rng, kind):
    if kind == "hybrid":
        ds = random_dataset(rng, n_rows=60, n_features=25, n_fields=4)
        sides = fmrecall.Sides(user=[0], context=[1], item=[2, 3])
        return fmrecall.HybridFM(k=5, epochs=2, threads=1, seed=3, sides=sides).fit(ds), ds
    return _fitted(rng, kind)


@pytest.mark.parametrize("kind", ["fm", "ffm", "hybrid"])
def test_changed_array_with_valid_zip_fails_its_checksum(rng, tmp_path, kind):
    model, _ = _fitted_any(rng, kind)
    path = tmp_path / "m.npz"
    model.save(path)
    with np.load(path, allow_pickle=False) as z:
        names = [n for n in z.files if n != "meta"]
    assert set(names) >= {"bias", "linear"}
    for name in names:

        def flip(arrays, name=name):
            raw = bytearray(arrays[name].tobytes())
            raw[len(raw) // 2] ^= 0x01
            arrays[name] = np.frombuffer(bytes(raw), dtype=arrays[name].dtype).reshape(arrays[name].shape)

        _rewrite(path, tmp_path / "bad.npz", change_arrays=flip)
        with pytest.raises(ValueError, match=rf"bad\.npz: member '{name}' does not match its SHA-256"):
            fmrecall.load(tmp_path / "bad.npz")
    # a member removed, or one added, with the checksums left as they were
    _rewrite(path, tmp_path / "bad.npz", change_arrays=lambda a: a.pop("linear"))
    with pytest.raises(ValueError, match="'linear' is missing"):
        fmrecall.load(tmp_path / "bad.npz")
    _rewrite(path, tmp_path / "bad.npz", change_arrays=lambda a: a.update(extra=np.zeros(3)))
    with pytest.raises(ValueError, match="'extra' has no checksum"):
        fmrecall.load(tmp_path / "bad.npz")


def test_files_without_checksums_still_load(rng, tmp_path):
    """Files written before checksums existed (same format version) load unverified."""
    model, ds = _fitted(rng, "ffm")
    path = tmp_path / "m.npz"
    model.save(path)
    model.partial_fit(ds)  # generation 2
    model.save(path)

    def previous_version(meta):  # what the version before checksums wrote
        for key in ("checksums", "generation", "history", "best_epoch"):
            meta.pop(key)

    _rewrite(path, tmp_path / "old.npz", change_meta=previous_version)
    with np.load(tmp_path / "old.npz", allow_pickle=False) as z:
        assert "checksums" not in json.loads(z["meta"].tobytes())
    old = fmrecall.load(tmp_path / "old.npz")
    np.testing.assert_array_equal(old.decision_function(ds), model.decision_function(ds))
    assert old.generation_ == 1 and old.history_ == [] and old.best_epoch_ is None
    assert old.get_params() == model.get_params()


def test_checksums_cover_dtype_and_shape():
    a = np.arange(6, dtype=np.float32)
    digests = {fmrecall.persist.array_sha256(x) for x in (a, a.reshape(2, 3), a.reshape(3, 2), a.view(np.int32))}
    assert len(digests) == 4
    import hashlib

    expected = hashlib.sha256(json.dumps(["<f4", [6]]).encode() + a.tobytes()).hexdigest()
    assert fmrecall.persist.array_sha256(a) == expected


def test_save_arrays_and_load_arrays_are_generic(tmp_path):
    arrays = {"ids": np.arange(5, dtype=np.int64), "vectors": np.ones((5, 3), np.float32)}
    meta = {"format": "some.format", "version": 2, "note": "x"}
    for target in (tmp_path / "a.npz", io.BytesIO()):
        fmrecall.persist.save_arrays(target, meta, arrays)
        if isinstance(target, io.BytesIO):
            target.seek(0)
        got_meta, got = fmrecall.persist.load_arrays(target, "some.format", 2)
        assert got_meta == meta  # the checksums are verified and left out
        assert sorted(got) == ["ids", "vectors"]
        for name in arrays:
            np.testing.assert_array_equal(got[name], arrays[name])
    assert "checksums" not in meta  # the caller's dict is not changed
    with pytest.raises(ValueError, match="newer"):
        fmrecall.persist.load_arrays(tmp_path / "a.npz", "some.format", 1)


# every parameter bound a constructor argument has, applied to a tampered file
TAMPERED_PARAMS = [
    ("threads", 100000),
    ("threads", -1),
    ("threads", 2.5),
    ("threads", True),
    ("threads", "4"),
    ("k", -1),
    ("k", 0),
    ("k", 513),
    ("k", 2.5),
    ("k", "5"),
    ("k", None),
    ("learning_rate", float("nan")),
    ("learning_rate", 0),
    ("learning_rate", -0.1),
    ("learning_rate", "0.1"),
    ("learning_rate", float("inf")),
    ("reg_linear", -1e-3),
    ("reg_factors", float("nan")),
    ("init_std", -1),
    ("epochs", 0),
    ("epochs", 1.5),
    ("patience", 0),
    ("loss", "hinge"),
    ("loss", ["logistic"]),
    ("normalize", "yes"),
    ("seed", -1),
    ("seed", 2**64),
    ("n_features", -5),
    ("n_fields", 1.5),
]


@pytest.mark.parametrize("name,value", TAMPERED_PARAMS, ids=lambda v: repr(v))
def test_tampered_parameters_raise_value_error_naming_file_and_parameter(rng, tmp_path, name, value):
    model, _ = _fitted(rng, "ffm")
    path = tmp_path / "m.npz"
    model.save(path)
    _rewrite(path, tmp_path / "bad.npz", change_meta=lambda m: m["params"].update({name: value}))
    with pytest.raises(ValueError, match=rf"bad\.npz: .*{name}"):
        fmrecall.load(tmp_path / "bad.npz")


@pytest.mark.parametrize(
    "change,match",
    [
        (lambda m: m["params"].update(bogus=1), "bogus"),
        (lambda m: m.update(params=[1, 2]), "params"),
        (lambda m: m.update(n_features=10**12), "n_features"),
        (lambda m: m.update(n_features=-1), "n_features"),
        (lambda m: m.update(n_features=24), "linear"),
        (lambda m: m.update(n_fields=3), "W"),
        (lambda m: m["params"].update(k=4), "W"),
        (lambda m: m.update(generation=-2), "generation"),
        (lambda m: m.update(history="x"), "history"),
        (lambda m: m.update({"class": "FM"}), "'v'"),
        (lambda m: m.update(version=0), "version"),
        (lambda m: m.update(version=True), "version"),
        (lambda m: m.update(checksums=[1]), "checksums"),
    ],
    ids=[
        "unknown-param",
        "params-list",
        "huge-n_features",
        "negative-n_features",
        "n_features-vs-linear",
        "n_fields-vs-W",
        "k-vs-W",
        "generation",
        "history",
        "class-vs-arrays",
        "version-0",
        "version-bool",
        "checksums-list",
    ],
)
def test_tampered_metadata_raises_value_error(rng, tmp_path, change, match):
    model, _ = _fitted(rng, "ffm")
    path = tmp_path / "m.npz"
    model.save(path)
    _rewrite(path, tmp_path / "bad.npz", change_meta=change)
    with pytest.raises(ValueError, match=match) as info:
        fmrecall.load(tmp_path / "bad.npz")
    assert "bad.npz" in str(info.value)


def _recheck(meta, arrays):
    """Recompute the checksums (what a deliberate forger would do)."""
    meta["checksums"] = {n: fmrecall.persist.array_sha256(a) for n, a in arrays.items()}


@pytest.mark.parametrize(
    "change,match",
    [
        (lambda a: a.update(linear=a["linear"].astype(np.float64)), "'linear' has dtype float64"),
        (lambda a: a.update(W=a["W"][:, :, :2].copy()), "'W' has dtype"),
        (lambda a: a.update(bias=np.array([np.nan], np.float32)), "'bias' contains non-finite"),
        (lambda a: a["W"].__setitem__((0, 0, 0), np.inf), "'W' contains non-finite"),
        (lambda a: a["aware_row"].__setitem__(0, 10**6), "'aware_row' has entries outside"),
        (lambda a: a["aware_row"].__setitem__(slice(0, 2), 0), "'aware_row' gives two features the same row"),
        (lambda a: a.update(v=np.zeros((25, 5), np.float32)), "'v'"),
        (lambda a: a.pop("W"), "'aware_row' has entries outside"),  # rows point into the missing W
        (lambda a: a.update(extra=np.zeros(2, np.float32)), "unexpected member 'extra'"),
    ],
    ids=["dtype", "shape", "nan-bias", "inf-W", "row-range", "row-shared", "v-for-ffm", "no-W", "extra"],
)
def test_forged_arrays_with_valid_checksums_are_validated(rng, tmp_path, change, match):
    """Arrays are checked against n_features / n_fields / k before they reach the core, even when
    their checksums were recomputed."""
    model, _ = _fitted(rng, "ffm")
    path = tmp_path / "m.npz"
    model.save(path)
    with np.load(path, allow_pickle=False) as z:
        arrays = {name: z[name].copy() for name in z.files}
    meta = json.loads(arrays.pop("meta").tobytes())
    change(arrays)
    _recheck(meta, arrays)
    np.savez(tmp_path / "bad.npz", meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), **arrays)
    with pytest.raises(ValueError, match=match) as info:
        fmrecall.load(tmp_path / "bad.npz")
    assert "bad.npz" in str(info.value)


def test_loaded_params_equal_saved_params(rng, tmp_path):
    """get_params() survives a round trip exactly (n_features / n_fields stay None when unset)."""
    model, ds = _fitted(rng, "ffm")
    assert model.n_features is None
    model.save(tmp_path / "m.npz")
    loaded = fmrecall.load(tmp_path / "m.npz")
    assert loaded.get_params() == model.get_params()
    assert (loaded.n_features_, loaded.n_fields_) == (model.n_features_, model.n_fields_)
