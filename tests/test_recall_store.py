"""A Recaller on disk and in a pickle: checksums, validation of every loaded parameter, atomic
replace under concurrent loads and kill -9, parameter bounds."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import faiss
import numpy as np
import pytest
from helpers import SD, World

import fmrecall
from fmrecall.persist import load_arrays, save_arrays
from fmrecall.recall import store

HERE = os.path.dirname(os.path.abspath(__file__))


def _version_dir(path: Path) -> Path:
    return path / json.loads((path / "CURRENT").read_text())["version_dir"]


def _same(a, b):
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.scores, b.scores)


@pytest.fixture
def saved(rng, tmp_path):
    world = World(rng, "hybrid-item", m=10, n=120)
    rec = world.recaller("hnsw", segments=2)
    rec.remove_items(world.ids[:5])
    path = tmp_path / "rec"
    rec.save(path)
    return world, rec, path


# ---------------------------------------------------------------------------- integrity
def test_layout_is_a_pointer_and_one_checksummed_version(saved):
    world, rec, path = saved
    assert sorted(p.name for p in path.iterdir())[0] == "CURRENT"
    vdir = _version_dir(path)
    manifest = json.loads((vdir / "manifest.json").read_text())
    assert set(manifest["members"]) == {"model.npz", "items.npz", "index0.faiss", "index1.faiss"}
    for name, info in manifest["members"].items():  # recomputed here, independently
        assert hashlib.sha256((vdir / name).read_bytes()).hexdigest() == info["sha256"]


@pytest.mark.parametrize(
    "member", ["model.npz", "items.npz", "index0.faiss", "index1.faiss", "manifest.json", "CURRENT"]
)
def test_a_flipped_byte_in_any_member_is_refused(saved, member):
    world, rec, path = saved
    target = path / "CURRENT" if member == "CURRENT" else _version_dir(path) / member
    data = bytearray(target.read_bytes())
    for pos in (len(data) // 2, len(data) - 3):  # the middle (payload) and the end (e.g. a float)
        flipped = bytearray(data)
        flipped[pos] ^= 0x10
        target.write_bytes(bytes(flipped))
        with pytest.raises(ValueError, match="CURRENT|manifest|checksum|corrupt") as e:
            fmrecall.Recaller.load(path)
        assert member in str(e.value) or "CURRENT" in str(e.value) or "manifest" in str(e.value)
    target.write_bytes(bytes(data))
    _same(fmrecall.Recaller.load(path).search(world.queries, 5), rec.search(world.queries, 5))


def _rewrite_items(path: Path, edit_meta=None, edit_arrays=None):
    """Change items.npz and re-seal the manifest and pointer, as a consistent but bad save would."""
    vdir = _version_dir(path)
    meta, arrays = load_arrays(vdir / "items.npz", store.RECALLER_FORMAT, store.RECALLER_VERSION)
    if edit_meta:
        edit_meta(meta)
    if edit_arrays:
        edit_arrays(arrays)
    save_arrays(vdir / "items.npz", meta, arrays)
    manifest = json.loads((vdir / "manifest.json").read_text())
    for name in manifest["members"]:
        p = vdir / name
        manifest["members"][name] = {"sha256": hashlib.sha256(p.read_bytes()).hexdigest(), "size": p.stat().st_size}
    (vdir / "manifest.json").write_text(json.dumps(manifest))
    pointer = json.loads((path / "CURRENT").read_text())
    pointer["manifest_sha256"] = hashlib.sha256((vdir / "manifest.json").read_bytes()).hexdigest()
    (path / "CURRENT").write_text(json.dumps(pointer))


def _set(section, key, value):
    return lambda meta: meta[section].__setitem__(key, value)


@pytest.mark.parametrize(
    "edit,match",
    [
        (dict(edit_meta=_set("recaller", "threads", 100000)), "threads"),
        (dict(edit_meta=_set("recaller", "threads", -1)), "threads"),
        (dict(edit_meta=_set("index", "candidates", 0)), "candidates"),
        (dict(edit_meta=_set("index", "hnsw_m", 1)), "hnsw_m"),
        (dict(edit_meta=_set("index", "segments", 0)), "segments"),
        (dict(edit_meta=_set("index", "segments", 3)), "index2.faiss|max_norms"),
        (dict(edit_meta=_set("index", "nprobe", "8")), "nprobe"),
        (dict(edit_meta=_set("index", "kind", "exact")), "IndexFlatIP|removed|vectors"),
        (dict(edit_meta=_set("index", "max_norms", [float("nan"), 1.0])), "max_norms"),
        (dict(edit_meta=_set("recaller", "backend", "elastic")), "backend"),
        (dict(edit_meta=lambda m: m["index"].pop("ef_search")), "ef_search"),
        (dict(edit_arrays=lambda a: a["ids"].__setitem__(0, -5)), "ids"),
        (dict(edit_arrays=lambda a: a["ids"].__setitem__(1, a["ids"][-1])), "unique"),
        (dict(edit_arrays=lambda a: a.__setitem__("ids", a["ids"][:-1])), "holds|vectors"),
        (dict(edit_arrays=lambda a: a["vectors"].__setitem__((3, 0), np.nan)), "non-finite"),
        (dict(edit_arrays=lambda a: a.__setitem__("vectors", a["vectors"][:, :-1])), "vectors"),
    ],
)
def test_every_loaded_parameter_is_validated(saved, edit, match):
    world, rec, path = saved
    _rewrite_items(path, **edit)
    with pytest.raises(ValueError, match=match):
        fmrecall.Recaller.load(path)


def test_save_refuses_non_finite_vectors(rng, tmp_path):
    world = World(rng, "fm", m=4, n=30)
    rec = world.recaller("hnsw")
    rec.index._current().vectors[2, 0] = np.inf  # as a corrupted process memory would
    with pytest.raises(ValueError, match="non-finite"):
        rec.save(tmp_path / "rec")
    assert not (tmp_path / "rec").exists()


def test_legacy_directory_still_loads(rng, tmp_path):
    """A directory written by fmrecall 0.1 (members at the top, no checksums) loads, and saving
    over it converts it."""
    world = World(rng, "ffm", m=6, n=50)
    rec = world.recaller("hnsw")
    path = tmp_path / "old"
    path.mkdir()
    from fmrecall.persist import model_to_arrays

    save_arrays(path / "model.npz", *model_to_arrays(rec.model))
    seg = rec.index.parts()[0]
    meta = {
        "format": "fmrecall.recaller",
        "version": 1,
        "sides": rec.sides.to_dict(),
        "index": "hnsw",
        "segments": 1,
        "candidates": None,
        "threads": 1,
        "dead": 0,
        "max_norms": [seg.max_norm],
        "params": {"hnsw_m": 32, "ef_construction": 80, "ef_search": 128, "nlist": None, "nprobe": 32, "pad": True},
        "schema": None,
    }
    save_arrays(path / "items.npz", meta, {"ids": rec.index._current().catalogue.row_ids, "vectors": rec.vectors})
    faiss.write_index(seg.index, str(path / "index0.faiss"))
    _same(fmrecall.Recaller.load(path).search(world.queries, 5), rec.search(world.queries, 5))
    fmrecall.Recaller.load(path).save(path)
    assert sorted(p.name for p in path.iterdir() if not p.name.startswith("v-")) == ["CURRENT"]
    _same(fmrecall.Recaller.load(path).search(world.queries, 5), rec.search(world.queries, 5))


def test_refuses_to_write_into_a_foreign_directory(rng, tmp_path):
    world = World(rng, "fm", m=4, n=20)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a saved Recaller"):
        world.recaller().save(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


# ---------------------------------------------------------------------------- atomic replace
def test_loads_during_saves_always_get_a_complete_version(rng, tmp_path):
    """One thread saves two different catalogues in turn to one path; another loads it in a loop:
    every load succeeds and is one of the two, and only the newest versions stay on disk."""
    world = World(rng, "fm", m=8, n=200)
    a = world.recaller("exact")
    b = world.recaller("exact").remove_items(world.ids[::3])
    want = [a.search(world.queries, 10), b.search(world.queries, 10)]
    path = tmp_path / "rec"
    a.save(path)
    stop = threading.Event()
    loads, bad, saves = [0], [], [0]

    def saver():
        while not stop.is_set():
            (a, b)[saves[0] % 2].save(path)
            saves[0] += 1

    t = threading.Thread(target=saver)
    t.start()
    t_end = time.time() + 2.5
    try:
        while time.time() < t_end:
            try:
                got = fmrecall.Recaller.load(path).search(world.queries, 10)
                if not any(np.array_equal(got.ids, w.ids) and np.array_equal(got.scores, w.scores) for w in want):
                    bad.append("mismatch")
            except Exception as e:  # noqa: BLE001 - any failure is a finding
                bad.append(repr(e))
            loads[0] += 1
    finally:
        stop.set()
        t.join(60)
    assert not bad, bad[:3]
    assert loads[0] >= 10 and saves[0] >= 10, (loads, saves)
    left = sorted(p.name for p in path.iterdir())
    assert left[0] == "CURRENT" and len(left) <= 3 and not any(n.startswith(".tmp-") for n in left), left


SAVER = """
import sys, numpy as np
sys.path.insert(0, {tests!r})
from helpers import World
world = World(np.random.default_rng(3), "ffm", m=4, n=4000)
rec = world.recaller("exact", segments=2)
print("ready", flush=True)
while True:
    rec.save({path!r})
"""


def test_kill_during_save_leaves_a_loadable_version_and_the_next_save_cleans_up(rng, tmp_path):
    """kill -9 a process that saves in a loop, at 6 moments: the path always loads, and the next
    save removes every leftover of the interrupted ones."""
    path = tmp_path / "rec"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    world = World(np.random.default_rng(3), "ffm", m=4, n=4000)
    delays = np.random.default_rng(0).uniform(0.0, 0.3, 6)
    killed_with_debris = 0
    for delay in delays:
        proc = subprocess.Popen(
            [sys.executable, "-c", SAVER.format(tests=HERE, path=str(path))], stdout=subprocess.PIPE, text=True, env=env
        )
        try:
            assert proc.stdout.readline().strip() == "ready"
            time.sleep(float(delay) + (0.3 if not (path / "CURRENT").exists() else 0.0))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
        if not (path / "CURRENT").exists():
            continue  # killed before the first save finished: nothing to load yet
        rec = fmrecall.Recaller.load(path)
        assert len(rec) == 4000
        killed_with_debris += any(p.name.startswith(".tmp-") for p in path.iterdir())
    assert (path / "CURRENT").exists()
    assert killed_with_debris >= 1  # some kills really interrupted a save
    world.recaller("exact", segments=2).save(path)
    left = sorted(p.name for p in path.iterdir())
    assert left[0] == "CURRENT" and len(left) <= 3 and not any(n.startswith(".tmp-") for n in left), left
    assert len(fmrecall.Recaller.load(path)) == 4000


# ---------------------------------------------------------------------------- pickle
@pytest.mark.parametrize("index,kw", [("exact", {}), ("hnsw", {}), ("exact", {"segments": 2}), ("ivf", {"nprobe": 4})])
def test_pickle_and_deepcopy_round_trip(rng, index, kw):
    world = World(rng, "ffm", m=8, n=150)
    rec = world.recaller(index, **kw)
    rec.remove_items(world.ids[:4])
    want = rec.search(world.queries, 10)
    for back in (pickle.loads(pickle.dumps(rec)), copy.deepcopy(rec)):
        assert back is not rec and len(back) == len(rec)
        _same(back.search(world.queries, 10), want)
        back.remove_items(world.ids[10:20])  # independent of the original
    _same(rec.search(world.queries, 10), want)


def test_a_tampered_pickle_is_refused(rng):
    world = World(rng, "fm", m=4, n=30)
    payload = pickle.dumps(world.recaller())
    for pos in (len(payload) // 2, len(payload) - 300):  # inside a member's bytes
        bad = bytearray(payload)
        bad[pos] ^= 0x01
        with pytest.raises(ValueError):
            pickle.loads(bytes(bad))
    with pytest.raises(ValueError):
        store.recaller_from_bytes(b"not a zip")


# ---------------------------------------------------------------------------- bounds
@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(threads=100000), "threads"),
        (dict(threads=-2), "threads"),
        (dict(hnsw_m=0), "hnsw_m"),
        (dict(hnsw_m=1), "hnsw_m"),
        (dict(candidates=0), "candidates"),
        (dict(nprobe=0), "nprobe"),
        (dict(nlist=0), "nlist"),
        (dict(segments=0), "segments"),
        (dict(ef_search=0), "ef_search"),
        (dict(index="HNSW1,Flat"), "M >= 2"),
        (dict(index="IVF0,Flat"), "nlist"),
        (dict(index="IVF4_HNSW1,Flat"), "M >= 2"),
        (dict(index="PQ5"), "does not fit vectors of dimension"),
        (dict(index="Nonsense42"), "does not fit"),
        (dict(index=""), "index must be"),
        (dict(index=3), "index must be"),
    ],
)
def test_parameter_bounds(rng, kw, match):
    world = World(rng, "fm", m=3, n=20, k=15)  # FM k=15: d = 16
    index = kw.pop("index", "hnsw")
    with pytest.raises(ValueError, match=match):
        fmrecall.Recaller(world.model, fmrecall.Sides(**SD), index, **kw)


def test_factory_strings_see_the_real_dimension(rng):
    """A factory string is checked at the vectors' own dimension, unpadded unless pad=True: PQ32
    on d = 32 works; PQ16 on d = 65 is refused, with the padded width (80) as a hint, and works
    with pad=True; the built-in kinds pad by default."""
    w32 = World(rng, "fm", m=5, n=300, k=31)  # d = 32
    rec = fmrecall.Recaller(w32.model, fmrecall.Sides(**SD), "PQ32", threads=1)
    assert rec.index.parts()[0].dim == 32
    w65 = World(rng, "fm", m=5, n=300, k=64)  # d = 65
    with pytest.raises(ValueError, match="dimension 65; with pad=True the vectors would be padded to 80"):
        fmrecall.Recaller(w65.model, fmrecall.Sides(**SD), "PQ16", threads=1)
    rec = fmrecall.Recaller(w65.model, fmrecall.Sides(**SD), "PQ16", pad=True, threads=1)
    assert rec.index.parts()[0].dim == 80
    assert fmrecall.Recaller(w65.model, fmrecall.Sides(**SD), "exact", threads=1).index.parts()[0].dim == 80
    assert fmrecall.Recaller(w65.model, fmrecall.Sides(**SD), "HNSW8,Flat", threads=1).index.parts()[0].dim == 65


def test_candidates_below_k_are_raised_to_k(rng):
    world = World(rng, "fm", m=6, n=200)
    rec = world.recaller("hnsw-ip", candidates=1)
    res = rec.search(world.queries, 10)
    assert (res.ids >= 0).all()  # 10 results, not 1


def test_index_adapter_and_faiss_arguments_do_not_mix(rng):
    world = World(rng, "fm", m=3, n=20)
    with pytest.raises(ValueError, match="hnsw_m"):
        fmrecall.Recaller(world.model, fmrecall.Sides(**SD), fmrecall.FaissIndex("hnsw"), hnsw_m=8)
    rec = fmrecall.Recaller(world.model, fmrecall.Sides(**SD), fmrecall.FaissIndex("hnsw", hnsw_m=8), threads=1)
    rec.add_items(world.items, world.ids)
    assert faiss.downcast_index(rec.index.parts()[0].index).hnsw.nb_neighbors(1) == 8
