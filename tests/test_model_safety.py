"""Model-level safety for a production server (issue 10): predicting on many threads while one
thread retrains (the C++ core's readers–writer lock, fit building aside), bounded thread counts,
pickle / copy / joblib through the validated file format, and model files that detect corruption
and tampering (checksums, parameters validated like constructor arguments).

Crash-prone checks (concurrent growth of the tables, 1024 OpenMP threads) run in a child process
with a time limit, so a segfault or a deadlock fails one test instead of the whole run."""

from __future__ import annotations

import copy
import io
import json
import pickle
import struct
import threading
import zipfile

import joblib
import numpy as np
import pytest
from helpers import random_dataset, run_isolated

import fmrecall
from fmrecall import FFM, FM, HybridFM, NotFittedError, Sides
from fmrecall._limits import MAX_THREADS, check_threads

N_FEATURES, N_FIELDS = 40, 4
SIDES = Sides(user=[0], context=[1], item=[2, 3])
KINDS = ["fm", "ffm", "hybrid"]


def _make(kind: str, **hyper):
    params = dict(k=3, epochs=2, threads=1, seed=5)
    params.update(hyper)
    if kind == "fm":
        return FM(**params)
    if kind == "ffm":
        return FFM(**params)
    return HybridFM(sides=SIDES, **params)


def _data(rng, n_rows=80):
    return random_dataset(rng, n_rows=n_rows, n_features=N_FEATURES, n_fields=N_FIELDS)


# ---------------------------------------------------------------------------- concurrency
_STRESS_CHILD = """
import json, threading, time
import numpy as np
import fmrecall
from fmrecall import Dataset, Sides

KIND = {kind!r}
F, BATCH, NEW_PER_BATCH, ROUNDS = 4, 400, 300, {rounds}
sides = Sides(user=[0], context=[1], item=[2, 3])
rng = np.random.default_rng(11)

def rows(features_per_field, n):
    # one feature per field; feature j belongs to field j % F
    cols = [rng.choice(features_per_field[f], size=n) * F + f for f in range(F)]
    feats = np.stack(cols, axis=1).astype(np.int32)
    fields = np.tile(np.arange(F, dtype=np.int32), n)
    indptr = np.arange(0, n * F + 1, F, dtype=np.int64)
    return Dataset(indptr, fields, feats.ravel(), None, rng.integers(0, 2, n).astype(np.float32))

n_ids = 50 + ROUNDS * NEW_PER_BATCH
N = n_ids * F
base = [np.arange(50)] * F
kw = dict(k=4, epochs=1, threads=2, n_features=N, n_fields=F)
model = (fmrecall.FFM(**kw) if KIND == "ffm" else fmrecall.HybridFM(field_aware="item", sides=sides, **kw))
model.fit(rows(base, 2000))
split = model.split(sides)
probe = rows([np.arange(n_ids)] * F, 300)  # features seen, not yet seen and grown during the run
def side_rows(fields):
    keep = np.isin(probe.fields, fields)
    counts = np.add.reduceat(keep.astype(np.int64), probe.indptr[:-1])
    return Dataset(np.r_[0, np.cumsum(counts)].astype(np.int64), probe.fields[keep], probe.features[keep])
q_rows, i_rows = side_rows([0, 1]), side_rows([2, 3])

stop = threading.Event()
calls, errors = [0, 0, 0], []
def reader(t):
    try:
        while not stop.is_set():
            p = model.decision_function(probe)
            q, b = split.query_vectors(q_rows)
            v = split.item_vectors(i_rows)
            assert p.shape == (300,) and q.shape == (300, split.dim) and v.shape == (300, split.dim)
            assert np.isfinite(p).all() and np.isfinite(q).all() and np.isfinite(v).all() and np.isfinite(b).all()
            calls[t] += 1
    except BaseException as e:  # reported by the parent
        errors.append(repr(e))

threads = [threading.Thread(target=reader, args=(t,)) for t in range(3)]
for t in threads:
    t.start()
t0 = time.perf_counter()
grows = 0
for r in range(ROUNDS):
    new = np.arange(50 + r * NEW_PER_BATCH, 50 + (r + 1) * NEW_PER_BATCH)
    before = model._core.aware_rows
    model.partial_fit(rows([np.r_[np.arange(50), new]] * F, BATCH))
    grows += model._core.aware_rows > before
seconds = time.perf_counter() - t0
calls_during = sum(calls)
stop.set()
for t in threads:
    t.join()
print(json.dumps(dict(calls=calls_during, per_thread=calls, grows=int(grows), rounds=ROUNDS,
                      seconds=seconds, errors=errors, generation=model.generation_,
                      aware_rows=int(model._core.aware_rows))))
"""


@pytest.mark.parametrize("kind", ["ffm", "hybrid"])
def test_partial_fit_growing_tables_while_three_threads_predict(kind, capsys):
    """partial_fit adds features (grow_rows reallocates the field-aware table) while 3 threads
    predict and build query / item vectors: no crash (the child would die of SIGSEGV without the
    lock), no exception, every result finite, every round grew the table."""
    rounds = 80
    out = run_isolated(_STRESS_CHILD.format(kind=kind, rounds=rounds), timeout=60)
    with capsys.disabled():
        print(
            f"\n[{kind}] {out['calls']} reader calls ({out['per_thread']}) during {out['grows']} grows "
            f"in {out['seconds']:.2f} s"
        )
    assert out["errors"] == []
    assert out["grows"] == rounds  # every partial_fit brought new features
    assert out["generation"] == 1 + rounds
    assert all(c >= 1 for c in out["per_thread"])  # every reader ran while the tables grew
    assert out["calls"] >= 10


def _long_data(rng, n_rows):
    return random_dataset(rng, n_rows=n_rows, n_features=N_FEATURES, n_fields=N_FIELDS, max_per_field=2)


@pytest.mark.parametrize("kind", ["ffm", "hybrid"])
def test_predictions_during_fit_are_the_old_model_until_the_swap(rng, kind):
    old_data, new_data, valid = _long_data(rng, 300), _long_data(rng, 12000), _long_data(rng, 1000)
    probe = _data(rng, 50)
    model = _make(kind, epochs=2).fit(old_data)
    old = model.decision_function(probe)
    generation = model.generation_
    # what the refit must produce (threads=1: deterministic), computed on a separate model
    expected_new = _make(kind, epochs=6, patience=1).fit(new_data, valid=valid).decision_function(probe)
    assert not np.array_equal(old, expected_new)

    model.set_params(epochs=6, patience=1)
    seen, errors = [], []

    def refit():
        try:
            model.fit(new_data, valid=valid)  # early stopping: snapshot / restore happen on the new core
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    t = threading.Thread(target=refit)
    t.start()
    while t.is_alive():
        gen = model.generation_
        p = model.decision_function(probe)
        seen.append((t.is_alive(), gen, p))
    t.join()
    assert errors == []
    np.testing.assert_array_equal(model.decision_function(probe), expected_new)
    assert model.generation_ == generation + 1
    kinds = []
    for alive, gen, p in seen:
        if np.array_equal(p, old):
            kinds.append("old")
        else:
            np.testing.assert_array_equal(p, expected_new)  # never a model in training
            kinds.append("new")
            assert gen in (generation, generation + 1)
        if alive and kinds[-1] == "old":
            assert gen == generation
    assert "old" in [k for (alive, _, _), k in zip(seen, kinds, strict=True) if alive]  # predicted during the fit
    assert kinds == sorted(kinds, key=lambda k: k == "new")  # old ... old new ... new
    assert model.best_epoch_ is not None and len(model.history_) >= 1


def test_predict_during_first_fit_is_not_fitted(rng):
    model = FFM(k=3, epochs=4, threads=1)
    data, probe = _long_data(rng, 12000), _data(rng, 20)
    t = threading.Thread(target=model.fit, args=(data,))
    t.start()
    outcomes = []
    while t.is_alive():
        generation, history = model.generation_, model.history_  # read before the core (swapped first)
        try:
            model.decision_function(probe)
            outcomes.append("fitted")
        except NotFittedError:
            outcomes.append("unfitted")
            assert generation == 0 and history == []
    t.join()
    assert outcomes and outcomes[0] == "unfitted"
    assert outcomes == sorted(outcomes, key=lambda o: o == "fitted")
    assert model.generation_ == 1


def test_failed_fit_keeps_the_previous_model(rng):
    model = _make("ffm").fit(_data(rng))
    probe = _data(rng, 20)
    before, generation = model.decision_function(probe), model.generation_
    bad = _data(rng)
    bad.labels[3] = 0.5  # not a logistic label
    with pytest.raises(ValueError, match="label"):
        model.fit(bad)
    np.testing.assert_array_equal(model.decision_function(probe), before)
    assert model.generation_ == generation


def test_generation_counts_weight_changes(rng, tmp_path):
    model = _make("ffm")
    assert model.generation_ == 0
    data = _data(rng)
    model.fit(data)
    assert model.generation_ == 1
    model.partial_fit(data)
    model.partial_fit(data)
    assert model.generation_ == 3
    model.set_params(learning_rate=0.1)  # parameters are not weights
    model.decision_function(data)
    assert model.generation_ == 3
    model.fit(data)
    assert model.generation_ == 4
    assert FFM.from_weights(model.weights()).generation_ == 1
    assert _make("fm").partial_fit(data).generation_ == 1
    model.save(tmp_path / "m.npz")
    assert fmrecall.load(tmp_path / "m.npz").generation_ == 4  # the generation it was saved with


# ---------------------------------------------------------------------------- thread counts
def test_check_threads():
    assert MAX_THREADS == fmrecall.MAX_THREADS == fmrecall._core.MAX_THREADS == 1024
    assert check_threads(0) == 0 and check_threads(np.int64(3)) == 3 and check_threads(1024) == 1024
    assert type(check_threads(np.int32(2))) is int
    for bad in (True, False, np.bool_(True), 2.0, "2", None, -1, 1025, 100000, np.int64(-3)):
        with pytest.raises(ValueError, match="n_jobs") as info:
            check_threads(bad, name="n_jobs")
        assert repr(bad) in str(info.value)


@pytest.mark.parametrize("cls", [FM, FFM], ids=["FM", "FFM"])
@pytest.mark.parametrize("bad", [-1, 1025, 100000, 2.0, True])
def test_bad_threads_rejected_by_fit_and_predict(cls, bad):
    """sklearn: constructors and set_params store parameters; fit and predict check them before a
    bad count reaches OpenMP."""
    ds = _data(np.random.default_rng(0), 40)
    with pytest.raises(ValueError, match="threads"):
        cls(threads=bad).fit(ds)
    model = cls(threads=1, k=3, epochs=1).fit(ds)
    assert model.set_params(threads=bad).get_params()["threads"] is bad
    for call in (model.decision_function, model.predict, model.fit, model.partial_fit):
        with pytest.raises(ValueError, match="threads"):
            call(ds)
    with pytest.raises(ValueError, match="threads"):
        HybridFM(sides=SIDES, threads=bad).fit(ds)


def test_set_params_threads_100000_and_ffm_threads_minus_one():
    ds = _data(np.random.default_rng(0), 40)
    with pytest.raises(ValueError, match="threads.*100000"):
        FFM().set_params(threads=100000).fit(ds)
    with pytest.raises(ValueError, match="threads.*-1"):
        FFM(threads=-1).fit(ds)


def test_numpy_thread_counts_keep_their_identity():
    t = np.int64(2)
    assert FFM(threads=t).get_params()["threads"] is t  # sklearn's clone checks identity


def test_1024_threads_predict_and_train():
    """1024 OpenMP threads on this (2-core) machine: training and prediction work, prediction
    equals the 1-thread one; the core itself rejects 1025 and 100000 (in a child process: a crash
    must not take the test run with it, and 1024 idle OpenMP threads must not stay in pytest)."""
    out = run_isolated(
        """
        import json
        import numpy as np
        import fmrecall
        from fmrecall import Dataset
        rng = np.random.default_rng(3)
        n, F = 3000, 4
        feats = (rng.integers(0, 30, size=(n, F)) * F + np.arange(F)).astype(np.int32)
        ds = Dataset(np.arange(0, n * F + 1, F, dtype=np.int64), np.tile(np.arange(F, dtype=np.int32), n),
                     feats.ravel(), None, rng.integers(0, 2, n).astype(np.float32))
        res = {}
        for kind in ("FM", "FFM"):
            m = getattr(fmrecall, kind)(k=4, epochs=2, threads=1024, seed=1).fit(ds)
            p1024 = m.decision_function(ds)
            m.partial_fit(ds)
            p1024b = m.decision_function(ds)
            m.set_params(threads=1)
            res[kind] = dict(finite=bool(np.isfinite(p1024b).all()), loss=[h["train_loss"] for h in m.history_],
                             same=bool(np.array_equal(m.decision_function(ds), p1024b)),
                             moved=bool((p1024 != p1024b).any()))
        core = m._core
        args = ds.core_args()
        for t in (1025, 100000, -1):
            try:
                core.predict(*args, t)
                res[t] = "accepted"
            except ValueError as e:
                res[t] = str(e)
        print(json.dumps(res))
    """,
        timeout=60,
    )
    for kind in ("FM", "FFM"):
        r = out[kind]
        assert r["finite"] and r["same"] and r["moved"], r
        assert all(np.isfinite(r["loss"])) and r["loss"][-1] < r["loss"][0] + 0.05, r
    for t in ("1025", "100000", "-1"):
        assert "threads must be in [0, 1024]" in out[t], out[t]


# ---------------------------------------------------------------------------- pickle / copy / joblib
def _round_trips(tmp_path):
    def joblib_file(m):
        path = tmp_path / "m.joblib"
        joblib.dump(m, path)
        return joblib.load(path)

    return {
        "pickle": lambda m: pickle.loads(pickle.dumps(m)),
        "pickle-protocol-2": lambda m: pickle.loads(pickle.dumps(m, protocol=2)),
        "deepcopy": copy.deepcopy,
        "copy": copy.copy,
        "joblib": joblib_file,
    }


@pytest.mark.parametrize("kind", KINDS)
def test_fitted_round_trips_predict_bit_identically(rng, tmp_path, kind):
    data, probe = _data(rng), _data(rng, 30)
    model = _make(kind, learning_rate=0.07).fit(data, valid=_data(rng, 30))
    model.partial_fit(data)
    before, params = model.decision_function(probe), model.get_params()
    raw = model.decision_function(probe)
    weights = model.weights()
    for name, trip in _round_trips(tmp_path).items():
        other = trip(model)
        assert type(other) is type(model) and other is not model, name
        np.testing.assert_array_equal(other.decision_function(probe), before, err_msg=name)
        np.testing.assert_array_equal(other.decision_function(probe), raw, err_msg=name)
        assert other.get_params() == params, name
        assert other.generation_ == model.generation_ == 2, name
        assert other.history_ == model.history_ and other.best_epoch_ == model.best_epoch_, name
        for key, value in other.weights().items():
            if value is None:
                assert weights[key] is None
            else:
                np.testing.assert_array_equal(value, weights[key], err_msg=f"{name} {key}")
    # a copy is independent: training it leaves the original alone
    other = copy.deepcopy(model)
    other.partial_fit(data)
    np.testing.assert_array_equal(model.decision_function(probe), before)
    assert not np.array_equal(other.decision_function(probe), before)


@pytest.mark.parametrize("kind", KINDS)
def test_unfitted_round_trips_keep_params(rng, tmp_path, kind):
    model = _make(kind, learning_rate=0.11, reg_factors=1e-3, seed=9, epochs=3)
    params = model.get_params()
    data, probe = _data(rng), _data(rng, 20)
    expected = _make(kind, learning_rate=0.11, reg_factors=1e-3, seed=9, epochs=3).fit(data).decision_function(probe)
    for name, trip in _round_trips(tmp_path).items():
        other = trip(model)
        assert type(other) is type(model) and other.get_params() == params, name
        assert other.generation_ == 0, name
        with pytest.raises(NotFittedError):
            other.decision_function(probe)
        np.testing.assert_array_equal(other.fit(data).decision_function(probe), expected, err_msg=name)


def test_unfitted_hybrid_without_sides_round_trips():
    model = HybridFM(k=2)  # invalid until fit, but a legal object: copying must not refuse it
    other = copy.deepcopy(model)
    assert other.get_params() == model.get_params() and other.sides is None


def test_pickle_holds_only_the_file_bytes(rng):
    model = _make("ffm").fit(_data(rng))
    reduced = model.__reduce__()
    assert reduced[0] is fmrecall.models._unpickle_model
    (payload,) = reduced[1]
    assert isinstance(payload, bytes) and zipfile.is_zipfile(io.BytesIO(payload))
    with np.load(io.BytesIO(payload), allow_pickle=False) as z:
        assert "meta" in z.files and all(z[name].dtype != object for name in z.files)


class _Forged:
    """Unpickles through fmrecall's own reconstructor with a payload of the attacker's choice."""

    def __init__(self, payload):
        self.payload = payload

    def __reduce__(self):
        return fmrecall.models._unpickle_model, (self.payload,)


def _members(payload: bytes):
    """[(name, start of the member's data, size)] of a zip held in bytes."""
    out = []
    with zipfile.ZipFile(io.BytesIO(payload)) as z:
        for info in z.infolist():
            off = info.header_offset
            name_len, extra_len = struct.unpack("<HH", payload[off + 26 : off + 30])
            out.append((info.filename, off + 30 + name_len + extra_len, info.file_size))
    return out


def _rezip(payload: bytes, change) -> bytes:
    """The zip rewritten with valid CRCs after change(name, npy_bytes) -> npy_bytes per member."""
    src = zipfile.ZipFile(io.BytesIO(payload))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as dst:
        for info in src.infolist():
            dst.writestr(info.filename, change(info.filename, src.read(info.filename)))
    return buf.getvalue()


def _with_meta(payload: bytes, edit) -> bytes:
    with np.load(io.BytesIO(payload), allow_pickle=False) as z:
        arrays = {name: z[name] for name in z.files}
    meta = json.loads(arrays["meta"].tobytes())
    edit(meta)
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


@pytest.mark.parametrize("kind", KINDS)
def test_tampered_pickles_raise_value_error(rng, kind):
    model = _make(kind).fit(_data(rng))
    (payload,) = model.__reduce__()[1]
    # sanity: the forged route loads an untouched payload
    probe = _data(rng, 10)
    np.testing.assert_array_equal(
        pickle.loads(pickle.dumps(_Forged(payload))).decision_function(probe), model.decision_function(probe)
    )
    # a flipped byte in the raw bytes of the pickle, inside each member's data
    blob = pickle.dumps(model)
    at = blob.index(payload)
    for name, start, size in _members(payload):
        bad = bytearray(blob)
        bad[at + start + size // 2] ^= 0x10
        with pytest.raises(ValueError, match=name.removesuffix(".npy")):
            pickle.loads(bytes(bad))
    # a member changed with a valid zip CRC: only the checksum sees it
    for name, _, _ in _members(payload):
        if name == "meta.npy":
            continue

        def flip(member, data, name=name):
            if member != name:
                return data
            b = bytearray(data)
            b[-1] ^= 0x01  # last byte of the array data (after the .npy header)
            return bytes(b)

        with pytest.raises(ValueError, match=f"{name.removesuffix('.npy')}.*checksum"):
            pickle.loads(pickle.dumps(_Forged(_rezip(payload, flip))))
    # parameters out of bounds
    for key, value in (("threads", 100000), ("k", -1), ("learning_rate", float("nan"))):
        forged = _with_meta(payload, lambda m, key=key, value=value: m["params"].update({key: value}))
        with pytest.raises(ValueError, match=key):
            pickle.loads(pickle.dumps(_Forged(forged)))
    # not an fmrecall payload at all
    for junk in (b"not a zip", b"", 42, "text"):
        with pytest.raises(ValueError):
            pickle.loads(pickle.dumps(_Forged(junk)))


# ---------------------------------------------------------------------------- file-like objects and load classmethods
@pytest.mark.parametrize("kind", KINDS)
def test_save_and_load_file_objects(rng, tmp_path, kind):
    model = _make(kind).fit(_data(rng))
    probe = _data(rng, 20)
    expected = model.decision_function(probe)
    buf = io.BytesIO()
    model.save(buf)
    for loader in (fmrecall.load, type(model).load):
        buf.seek(0)
        np.testing.assert_array_equal(loader(buf).decision_function(probe), expected)
    model.save(tmp_path / "m.npz")
    np.testing.assert_array_equal(type(model).load(tmp_path / "m.npz").decision_function(probe), expected)
    np.testing.assert_array_equal(type(model).load(str(tmp_path / "m.npz")).decision_function(probe), expected)
    with open(tmp_path / "m.npz", "rb") as f:
        np.testing.assert_array_equal(fmrecall.load(f).decision_function(probe), expected)
    assert (tmp_path / "m.npz").read_bytes() == buf.getvalue()  # the same bytes either way


def test_load_of_another_class_names_both(rng, tmp_path):
    _make("fm").fit(_data(rng)).save(tmp_path / "fm.npz")
    with pytest.raises(ValueError, match=r"fm\.npz.*FM.*FFM"):
        FFM.load(tmp_path / "fm.npz")
    with pytest.raises(ValueError, match=r"FM.*HybridFM"):
        HybridFM.load(tmp_path / "fm.npz")
    assert type(FM.load(tmp_path / "fm.npz")) is FM
    with pytest.raises(FileNotFoundError):
        FM.load(tmp_path / "missing.npz")


def test_split_kept_across_a_refit_to_another_layout_is_refused(rng):
    """A Split made before a refit that changed which fields are field-aware must not index the new
    model's tables with its old offsets (the core compares the layout with the model it reads)."""
    data = _data(rng)
    model = _make("hybrid", field_aware="item").fit(data)
    split = model.split()
    query_rows = random_dataset(rng, n_rows=5, n_features=N_FEATURES, n_fields=2)  # fields 0, 1: query side
    q, b = split.query_vectors(query_rows)
    assert np.isfinite(q).all()
    model.set_params(field_aware="query")
    model.fit(data)
    with pytest.raises(ValueError, match="split the model again"):
        split.query_vectors(query_rows)
    assert np.isfinite(model.split().query_vectors(query_rows)[0]).all()


def test_pickles_taken_during_fit_are_consistent(rng):
    """A copy taken while fit runs is the old model or the new one, never a mix: its weights,
    generation_ and history_ belong together."""
    old_data, new_data = _long_data(rng, 300), _long_data(rng, 12000)
    probe = _data(rng, 30)
    model = _make("ffm", epochs=1).fit(old_data)
    old, old_history = model.decision_function(probe), list(model.history_)
    model.set_params(epochs=5)
    copies = []
    t = threading.Thread(target=model.fit, args=(new_data,))
    t.start()
    while t.is_alive():
        copies.append(pickle.loads(pickle.dumps(model)))
    t.join()
    new = model.decision_function(probe)
    assert copies
    for c in copies:
        if c.generation_ == 1:
            np.testing.assert_array_equal(c.decision_function(probe), old)
            assert c.history_ == old_history
        else:
            assert c.generation_ == 2 and len(c.history_) == 5
            np.testing.assert_array_equal(c.decision_function(probe), new)
    assert any(c.generation_ == 1 for c in copies)
