"""fmrecall.MilvusIndex on Milvus Lite: the same top k and the same exact scores as the exact faiss
Recaller (FLAT, and HNSW / IVF_FLAT / AUTOINDEX with generous parameters on a small catalogue),
under exclude / restrict; scores checked against b + <q, p> computed here in numpy; add / replace /
remove; reconnecting, save / load, pickle, another process; validation; a failed add rolled back;
searches concurrent with writes."""

from __future__ import annotations

import os
import pickle
import threading
import time
import zlib

import numpy as np
import pytest
from helpers import SD, F, N, World, check_top, in_ci, random_id_lists, rows_dataset, run_isolated

import fmrecall
import fmrecall.recall.recaller as frecaller
from fmrecall.recall.milvus import _lite_engine_collection

SIDES = fmrecall.Sides(**SD)


# ---------------------------------------------------------------------------- fixtures / helpers
@pytest.fixture(scope="module")
def lite(tmp_path_factory) -> str:
    """A Milvus Lite file for this module (skipped where Milvus Lite cannot start, failed in CI)."""
    path = str(tmp_path_factory.mktemp("milvus") / "items.db")
    try:
        from pymilvus import MilvusClient

        client = MilvusClient(path)
        client.list_collections()
        client.close()
    except Exception as e:  # ImportError, or the embedded server failing to start
        msg = f'Milvus Lite cannot start here ({type(e).__name__}: {e}); pip install "fmrecall[milvus]"'
        if in_ci():
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)
    return path


@pytest.fixture
def name(request) -> str:
    """A collection name of its own per test."""
    return f"t{zlib.crc32(request.node.nodeid.encode()):08x}"


def milvus_recaller(world, uri, collection, index_type="FLAT", add=True, **kw):
    rec = fmrecall.Recaller(
        world.model, SIDES, index=fmrecall.MilvusIndex(uri, collection, index_type, **kw), threads=1
    )
    if add:
        rec.add_items(world.items, world.ids)
    return rec


def reference_scores(world, ids_of_items=None, items=None):
    """b_q + <q, p> for every query and item, float64, from the split's vectors (numpy only)."""
    split = world.model.split(SIDES)
    q, b = split.query_vectors(world.queries)
    p = split.item_vectors(world.items if items is None else items)
    return b.astype(np.float64)[:, None] + q.astype(np.float64) @ p.astype(np.float64).T


def check_scores(world, res, ref=None, ids=None):
    """Every returned (id, score) is b + <q, p_id> (ref: (m, n) scores by the columns of `ids`)."""
    ref = reference_scores(world) if ref is None else ref
    pos = {int(x): j for j, x in enumerate(world.ids if ids is None else ids)}
    for i in range(res.ids.shape[0]):
        got = res.ids[i][res.ids[i] >= 0]
        want = ref[i, [pos[int(x)] for x in got]]
        np.testing.assert_allclose(res.scores[i, : got.size], want, rtol=1e-5, atol=world.tol[i])


def assert_same_top(a, b, tol=1e-5):
    """Same scores; the same ids wherever a score is tied neither with another in its row nor with
    the last one returned (an item just outside the top k may tie with it)."""
    assert a.ids.shape == b.ids.shape and b.ids.dtype == np.int64 and b.scores.dtype == np.float32
    np.testing.assert_array_equal(a.ids < 0, b.ids < 0)
    np.testing.assert_allclose(b.scores, a.scores, rtol=tol, atol=tol)
    for i in range(a.ids.shape[0]):
        valid = a.ids[i] >= 0
        s = a.scores[i, valid].astype(np.float64)
        if s.size == 0:
            continue
        gap = np.abs(s[:, None] - s[None, :]) + np.eye(s.size) * 1e9
        alone = (gap.min(axis=1) > 1e-4) & (s > s.min() + 1e-4)
        np.testing.assert_array_equal(b.ids[i, : s.size][alone], a.ids[i, : s.size][alone], err_msg=f"query {i}")


def filter_cases(rng, world):
    """(exclude, restrict) pairs: shared arrays and per-query lists, small and large restrictions."""
    top = world.ids[np.argsort(-world.S[0])[:6]]
    per_ex = random_id_lists(rng, world, world.m, size_max=40)
    per_re = random_id_lists(rng, world, world.m, size_max=30, with_none=True)
    per_re[1] = world.ids[:3].tolist()
    big = rng.choice(world.ids, size=world.n - 20, replace=False)  # more than the candidates
    return [
        (None, None),
        (np.r_[top, top[:2], 424242], None),
        (per_ex, None),
        (None, rng.choice(world.ids, size=20, replace=False)),
        (None, big),
        (None, per_re),
        (per_ex, per_re),
        (top, big),
    ]


# ---------------------------------------------------------------------------- equal to exact faiss
@pytest.mark.parametrize("kind", ["fm", "ffm", "hybrid-item"])
def test_flat_equals_exact_faiss_under_filters(rng, lite, name, kind):
    world = World(rng, kind, m=20, n=300)
    exact = world.recaller("exact")
    rec = milvus_recaller(world, lite, name, "FLAT")
    assert len(rec) == world.n and rec.index_kind == "milvus" and rec.dim == exact.dim
    np.testing.assert_array_equal(rec.ids, np.sort(world.ids))
    perm = rng.permutation(world.n)
    np.testing.assert_array_equal(rec.item_vectors(world.ids[perm]), exact.item_vectors(world.ids[perm]))
    ref = reference_scores(world)
    for excl, allow in filter_cases(rng, world):
        for k in (1, 10):
            a = exact.search(world.queries, k, exclude=excl, restrict=allow)
            b = rec.search(world.queries, k, exclude=excl, restrict=allow)
            assert_same_top(a, b)
            check_scores(world, b, ref)
            assert b.certified.all()  # FLAT, or a restriction scored in full
    # top k of everything, and k beyond the catalogue pads
    b = rec.search(world.queries, 40)
    check_top(world, b, 40)
    b = rec.search(world.queries, world.n + 5)
    assert np.all(b.ids[:, world.n :] == -1) and np.all(b.scores[:, world.n :] == -np.inf)
    check_top(world, b, world.n + 5)


@pytest.mark.parametrize(
    "index_type,params",
    [
        ("HNSW", {"M": 16, "efConstruction": 200, "ef": 400}),
        ("IVF_FLAT", {"nlist": 4, "nprobe": 4}),
        ("AUTOINDEX", None),
    ],
)
def test_ann_with_generous_parameters_equals_exact(rng, lite, name, index_type, params):
    world = World(rng, "ffm", m=20, n=300)
    exact = world.recaller("exact")
    rec = milvus_recaller(world, lite, name, index_type, params=params, candidates=300)
    rec.index.flush()  # sealed: Milvus searches its index, not its recent rows by brute force
    if index_type != "AUTOINDEX":  # Milvus Lite received the build parameters (its private API)
        engine = _lite_engine_collection(lite, name)
        if engine is not None:
            spec = engine._index_specs["vector"]
            assert spec.index_type == index_type
            assert dict(spec.build_params) == {k: v for k, v in params.items() if k in ("M", "efConstruction", "nlist")}
    ref = reference_scores(world)
    for excl, allow in filter_cases(rng, world)[:4]:
        a = exact.search(world.queries, 10, exclude=excl, restrict=allow)
        b = rec.search(world.queries, 10, exclude=excl, restrict=allow)
        check_scores(world, b, ref)  # always exact scores
        assert_same_top(a, b)
        if allow is None:
            assert not b.certified.any()  # an ANN index certifies nothing


def test_default_hnsw_scores_are_always_exact(rng, lite, name):
    world = World(rng, "hybrid-item", m=20, n=300)
    rec = milvus_recaller(world, lite, name, "HNSW")
    rec.index.flush()
    res = rec.search(world.queries, 10, exclude=random_id_lists(rng, world, world.m, size_max=30))
    check_scores(world, res)
    check_top(world, res, 10, exact=False, scores_only=True)


# ---------------------------------------------------------------------------- writes
def test_add_replace_remove_then_search(rng, lite, name):
    world = World(rng, "fm", m=15, n=200)
    exact = fmrecall.Recaller(world.model, SIDES, "exact", threads=1)
    rec = milvus_recaller(world, lite, name, "FLAT", add=False)
    assert len(rec) == 0 and rec.ids.size == 0
    assert np.all(rec.search(world.queries, 5).ids == -1)
    for r in (exact, rec):
        r.add_items(world.items.subset(np.arange(120)), world.ids[:120])
        r.add_items(world.items.subset(np.arange(120, 200)), world.ids[120:])
    assert len(rec) == 200
    assert_same_top(exact.search(world.queries, 10), rec.search(world.queries, 10))
    # replace: ids 0..4 get the item rows of columns 50..54
    new_rows = rows_dataset([world.irows[c] for c in range(50, 55)], n_features=N, n_fields=F)
    for r in (exact, rec):
        r.add_items(new_rows, world.ids[:5])
        r.remove_items(np.r_[world.ids[100:130], 31337])  # an unknown id is ignored
    assert len(rec) == 170
    np.testing.assert_array_equal(rec.ids, np.sort(exact.ids))
    np.testing.assert_array_equal(rec.item_vectors(world.ids[:5]), exact.item_vectors(world.ids[:5]))
    with pytest.raises(KeyError, match=str(world.ids[100])):
        rec.item_vectors(world.ids[99:101])
    for kw in ({}, {"exclude": world.ids[:3]}, {"restrict": world.ids[90:140]}):
        a, b = exact.search(world.queries, 12, **kw), rec.search(world.queries, 12, **kw)
        assert_same_top(a, b)
        assert not np.isin(b.ids, world.ids[100:130]).any()
    # sealed and indexed by Milvus: the same results
    rec.index.flush()
    assert_same_top(exact.search(world.queries, 12), rec.search(world.queries, 12))
    # removing everything, then adding again
    rec.remove_items(rec.ids)
    assert len(rec) == 0 and np.all(rec.search(world.queries, 3).ids == -1)
    rec.add_items(world.items, world.ids)
    check_top(world, rec.search(world.queries, 10), 10)


def test_failed_add_is_rolled_back(rng, lite, name, monkeypatch):
    """A failure after some upsert requests went through: the ids written that were new are
    deleted again and the replaced vectors are written back."""
    world = World(rng, "ffm", m=10, n=150)
    rec = fmrecall.Recaller(world.model, SIDES, fmrecall.MilvusIndex(lite, name, "FLAT"), threads=1)
    rec.add_items(world.items.subset(np.arange(60)), world.ids[:60])
    before = rec.search(world.queries, 10)
    old = rec.item_vectors(world.ids[:60])
    monkeypatch.setattr(fmrecall.MilvusIndex, "_rows_per_request", lambda self: 20)
    # ids 30..149: 30..59 (indexed) get the rows of columns 0..29, 60..149 (new) their own rows;
    # upserts of 20 rows, the 4th fails: 60 rows were written, 30 of them replacements
    items = world.items.subset(np.r_[np.arange(0, 30), np.arange(60, 150)])
    client, calls = rec.index.client, []
    real_upsert = client.upsert

    def upsert(*a, **k):
        calls.append(1)
        if len(calls) == 4:
            raise ConnectionError("injected failure")
        return real_upsert(*a, **k)

    monkeypatch.setattr(client, "upsert", upsert)
    with pytest.raises(ConnectionError, match="injected failure"):
        rec.add_items(items, world.ids[30:])
    assert len(calls) >= 4
    monkeypatch.setattr(client, "upsert", real_upsert)
    assert len(rec) == 60
    np.testing.assert_array_equal(rec.ids, np.sort(world.ids[:60]))
    np.testing.assert_array_equal(rec.item_vectors(world.ids[:60]), old)
    after = rec.search(world.queries, 10)
    np.testing.assert_array_equal(after.ids, before.ids)
    np.testing.assert_array_equal(after.scores, before.scores)

    # a failure while the item vectors are built, after two requests went through
    monkeypatch.setattr(frecaller, "ADD_CHUNK", 16)
    split_vectors, slices = rec.split.item_vectors, []

    def failing(ds):
        slices.append(ds.n_rows)
        if len(slices) == 4:
            raise RuntimeError("injected vector failure")
        return split_vectors(ds)

    monkeypatch.setattr(rec.split, "item_vectors", failing)
    with pytest.raises((RuntimeError, ValueError), match="injected vector failure|nothing was added"):
        rec.add_items(items, world.ids[30:])
    assert slices == [16, 16, 16, 16]
    assert len(rec) == 60
    np.testing.assert_array_equal(rec.item_vectors(world.ids[:60]), old)
    np.testing.assert_array_equal(rec.search(world.queries, 10).ids, before.ids)


# ---------------------------------------------------------------------------- reconnect / persistence
def test_reconnect_save_load_and_pickle(rng, lite, name, tmp_path):
    world = World(rng, "hybrid-item", m=15, n=200)
    rec = milvus_recaller(world, lite, name, "HNSW", params={"M": 16, "ef": 64})
    rec.remove_items(world.ids[:7])
    excl = random_id_lists(rng, world, world.m, size_max=20)
    want = rec.search(world.queries, 10, exclude=excl)
    check_scores(world, want)

    def same(other):
        assert len(other) == world.n - 7
        np.testing.assert_array_equal(other.ids, rec.ids)
        got = other.search(world.queries, 10, exclude=excl)
        np.testing.assert_array_equal(got.ids, want.ids)
        np.testing.assert_array_equal(got.scores, want.scores)

    # a second index on the same collection (another Recaller) sees the same items
    again = fmrecall.Recaller(
        world.model, SIDES, fmrecall.MilvusIndex(lite, name, "HNSW", params={"M": 16, "ef": 64}), threads=1
    )
    same(again)
    # save / load: the directory holds the model and the collection reference, no item vectors
    rec.save(tmp_path / "rec")
    back = fmrecall.Recaller.load(tmp_path / "rec")
    assert isinstance(back.index, fmrecall.MilvusIndex) and back.index.params == {"M": 16, "ef": 64}
    same(back)
    version = next(p for p in (tmp_path / "rec").iterdir() if p.name.startswith("v-"))
    assert sorted(p.name for p in version.iterdir()) == ["items.npz", "manifest.json", "model.npz"]
    same(fmrecall.Recaller.load(tmp_path / "rec", uri=os.path.relpath(lite), token=""))
    with pytest.raises(ValueError, match="unknown load options"):
        fmrecall.Recaller.load(tmp_path / "rec", nprobe=3)
    # pickles: the Recaller and the index alone
    same(pickle.loads(pickle.dumps(rec)))
    idx = pickle.loads(pickle.dumps(rec.index))
    assert idx.config() == rec.index.config() and len(idx) == world.n - 7
    # changes through one are seen by the other
    back.add_items(world.items.subset(np.arange(7)), world.ids[:7])
    assert len(rec) == world.n
    check_top(world, rec.search(world.queries, 10), 10, exact=False, scores_only=True)
    # a collection that is gone: loading names it
    rec.index.client.drop_collection(name)
    with pytest.raises(ValueError, match=f"items.npz.*{name}.*does not exist"):
        fmrecall.Recaller.load(tmp_path / "rec")


def test_another_process_sees_the_items(rng, tmp_path):
    """A child process builds the collection and saves the Recaller; this process loads it (Milvus
    Lite opens a file from one process at a time: the child has exited) and gets its results."""
    world = World(rng, "fm", m=8, n=120)
    split = world.model.split(SIDES)
    np.save(tmp_path / "q.npy", split.query_vectors(world.queries)[0])
    fmrecall.Recaller(world.model, SIDES, "exact", threads=1).save(tmp_path / "model")
    np.save(tmp_path / "ids.npy", world.ids)
    np.save(tmp_path / "p.npy", split.item_vectors(world.items))
    db = str(tmp_path / "child.db")
    code = f"""
        import json, numpy as np, fmrecall
        base = fmrecall.Recaller.load({str(tmp_path / "model")!r})
        rec = fmrecall.Recaller(base.model, base.sides, index=fmrecall.MilvusIndex({db!r}, "shared", "FLAT"))
        ids, p = np.load({str(tmp_path / "ids.npy")!r}), np.load({str(tmp_path / "p.npy")!r})
        rec.index.add(ids, [p[:50], p[50:]])
        rec.remove_items(ids[:10])
        rec.save({str(tmp_path / "rec")!r})
        q = np.load({str(tmp_path / "q.npy")!r})
        top, ip, cert = rec.index.search(q, 5, None, None, False)
        print(json.dumps({{"ids": top.tolist(), "ip": ip.tolist(), "n": len(rec)}}))
    """
    try:
        child = run_isolated(code, timeout=120)
    except BaseException:
        if not in_ci() and not _lite_available():
            pytest.skip("Milvus Lite cannot start here")
        raise
    back = fmrecall.Recaller.load(tmp_path / "rec")
    assert len(back) == child["n"] == world.n - 10
    ids, ip, cert = back.index.search(np.load(tmp_path / "q.npy"), 5, None, None, False)
    np.testing.assert_array_equal(ids, child["ids"])
    np.testing.assert_allclose(ip, child["ip"], rtol=1e-6)
    assert cert.all()
    back.index.close()


def _lite_available() -> bool:
    try:
        import milvus_lite  # noqa: F401
        import pymilvus  # noqa: F401
    except ImportError:
        return False
    return True


# ---------------------------------------------------------------------------- validation
def test_dimension_and_field_mismatch(rng, lite, name):
    world = World(rng, "fm", m=3, n=20)
    milvus_recaller(world, lite, name, "FLAT")
    other = World(rng, "fm", m=3, n=20, k=6)  # another latent size: another dimension
    with pytest.raises(ValueError, match=f"collection '{name}' holds vectors of dimension"):
        fmrecall.Recaller(other.model, SIDES, fmrecall.MilvusIndex(lite, name, "FLAT"))
    with pytest.raises(ValueError, match=f"collection '{name}' has a FLAT index.*expected HNSW"):
        fmrecall.Recaller(world.model, SIDES, fmrecall.MilvusIndex(lite, name, "HNSW"))
    # a collection that is not ours
    from pymilvus import DataType, MilvusClient

    client = MilvusClient(lite)
    schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("pk", DataType.INT64, is_primary=True)
    schema.add_field("emb", DataType.FLOAT_VECTOR, dim=world.model.split(SIDES).dim)
    ip = client.prepare_index_params()
    ip.add_index(field_name="emb", index_type="FLAT", metric_type="IP")
    client.create_collection(name + "_x", schema=schema, index_params=ip)
    with pytest.raises(ValueError, match=f"collection '{name}_x' is not an fmrecall item collection"):
        fmrecall.Recaller(world.model, SIDES, fmrecall.MilvusIndex(lite, name + "_x", "FLAT"))


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(uri="items.txt"), "must end in '.db'"),
        (dict(uri=""), "uri must be"),
        (dict(collection="bad-name"), "collection must be"),
        (dict(index_type="IVF_PQ"), "index_type must be one of"),
        (dict(metric="L2"), "metric must be 'IP'"),
        (dict(params={"M": 1}), r"params\['M'\] must be an integer in \[2, 2048\]"),
        (dict(params={"ef": "64"}), r"params\['ef'\] must be an integer"),
        (dict(params={"nlist": 8}), r"params\['nlist'\] is not a HNSW parameter"),
        (dict(index_type="FLAT", params={"ef": 8}), r"params\['ef'\] is not a FLAT parameter"),
        (dict(params=[("M", 8)]), "params must be a dict"),
        (dict(candidates=0), "candidates must be"),
        (dict(candidates=20000), "candidates must be"),
        (dict(token=3), "token must be"),
    ],
)
def test_bad_parameters(tmp_path, kw, match):
    args = {"uri": str(tmp_path / "x.db"), **kw}
    with pytest.raises(ValueError, match=match):
        fmrecall.MilvusIndex(**args)


def test_limits_and_filter_sizes(rng, lite, name):
    world = World(rng, "ffm", m=10, n=150)
    exact = world.recaller("exact")
    rec = milvus_recaller(world, lite, name, "FLAT", max_filter_ids=5)
    with pytest.raises(ValueError, match="topk limit"):
        rec.search(world.queries, 20000)
    with pytest.raises(ValueError, match="give index parameters to the index adapter"):
        fmrecall.Recaller(world.model, SIDES, fmrecall.MilvusIndex(lite, name, "FLAT"), ef_search=10)
    # an exclude list longer than one filter expression takes is over-fetched instead
    excl = world.ids[np.argsort(-world.S[0])[:30]]
    a, b = exact.search(world.queries, 10, exclude=excl), rec.search(world.queries, 10, exclude=excl)
    assert_same_top(a, b)
    # a restriction beyond the candidates and the expression limit is refused, naming it
    with pytest.raises(ValueError, match="restrict holds 120 ids"):
        rec.search(world.queries, 10, restrict=world.ids[:120])
    # [] restricts to nothing: padding only
    res = rec.search(world.queries, 4, restrict=[[]] * world.m)
    assert np.all(res.ids == -1) and np.all(res.scores == -np.inf)


# ---------------------------------------------------------------------------- concurrency
def test_searches_during_adds_and_removes(rng, lite, name):
    """4 threads search while one adds and removes items (vectors unchanged on re-add, so every
    state agrees): every returned (id, score) is exact for that id, and nothing raises."""
    world = World(rng, "fm", m=8, n=200)
    rec = milvus_recaller(world, lite, name, "HNSW", params={"M": 16, "ef": 64})
    rec.index.flush()  # an indexed segment, and the writer's rows in Milvus's recent rows
    ref = reference_scores(world)
    pos = {int(x): j for j, x in enumerate(world.ids)}
    stop = threading.Event()
    errors, counts, cycles = [], [], []

    def searcher(seed):
        r = np.random.default_rng(seed)
        n = 0
        try:
            while not stop.is_set():
                rows = np.sort(r.choice(world.m, size=int(r.integers(1, world.m + 1)), replace=False))
                res = rec.search(world.queries.subset(rows), 5)
                for i, row in enumerate(rows):
                    got = res.ids[i][res.ids[i] >= 0]
                    np.testing.assert_allclose(
                        res.scores[i, : got.size], ref[row, [pos[int(x)] for x in got]], rtol=1e-5, atol=world.tol[row]
                    )
                n += 1
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
        counts.append(n)

    def writer():
        r = np.random.default_rng(1)
        try:
            while not stop.is_set():
                cols = np.sort(r.choice(world.n, size=40, replace=False))
                rec.remove_items(world.ids[cols])
                rec.add_items(world.items.subset(cols), world.ids[cols])
                cycles.append(1)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=searcher, args=(s,), daemon=True) for s in range(4)]
    threads.append(threading.Thread(target=writer, daemon=True))
    for t in threads:
        t.start()
    time.sleep(2.5)
    stop.set()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    assert not errors, errors[0]
    assert len(counts) == 4 and min(counts) > 0 and len(cycles) > 0
    assert len(rec) == world.n
    check_top(world, rec.search(world.queries, 5), 5, exact=False, scores_only=True)


def test_string_ids_over_milvus(rng, lite, name, tmp_path):
    """String item ids are mapped by the Recaller, so Milvus keeps its int64 keys: the same results
    as a faiss exact Recaller with those ids, through remove, save and load."""
    world = World(rng, "ffm", m=6, n=50)
    keys = [f"sku-{x}" for x in world.ids]
    rec = fmrecall.Recaller(world.model, SIDES, fmrecall.MilvusIndex(lite, name, "FLAT"), threads=1)
    ref = fmrecall.Recaller(world.model, SIDES, "exact", threads=1)
    for r in (rec, ref):
        r.add_items(world.items, keys).remove_items(keys[:5])
    excl = [keys[5:9]] * world.m
    want = ref.search(world.queries, 8, exclude=excl)
    for other in (rec, fmrecall.Recaller.load(_saved(rec, tmp_path))):
        got = other.search(world.queries, 8, exclude=excl)
        assert other.id_kind == "str" and got.ids.tolist() == want.ids.tolist()
        np.testing.assert_allclose(got.scores, want.scores, rtol=1e-6, atol=1e-6)


def _saved(rec, tmp_path):
    rec.save(tmp_path / "rec")
    return tmp_path / "rec"
