"""Item ids of any kind callers hold (issue 12, item 4): strings, bytes and UUIDs are mapped to
internal int64 ids, returned in results, accepted by exclude / restrict / remove_items /
item_vectors, saved with the Recaller (checksummed) and consistent under a concurrent writer.
A Recaller with such ids must give exactly what the same Recaller with integer ids gives, which
`check_top` checks against the brute-force scores of the joined rows."""

from __future__ import annotations

import json
import os
import pickle
import uuid

import numpy as np
import pytest
import scipy.sparse as sp
from helpers import SD, World, check_top, run_stress

import fmrecall
from fmrecall.persist import load_arrays
from fmrecall.recall.catalogue import ItemKeys

HERE = os.path.dirname(os.path.abspath(__file__))

KEYS = {
    "str": lambda ids: np.array([f"item-{x}" for x in ids], dtype=object),
    "uuid": lambda ids: np.array([uuid.UUID(int=int(x) * 7919) for x in ids], dtype=object),
    "bytes": lambda ids: np.array([b"\x00id" + int(x).to_bytes(4, "little") for x in ids], dtype=object),
}


def _translate(world, keys, res):
    """The result with keys replaced by the world's int ids (None -> -1), for check_top."""
    back = {k: int(x) for k, x in zip(keys, world.ids)}
    ids = np.array([[-1 if k is None else back[k] for k in row] for row in res.ids], dtype=np.int64)
    return ids, res.scores


def _same_as_int(world, keys, got, want):
    """`got` (keyed) is `want` (int ids) with ids replaced by their keys."""
    of = dict(zip(world.ids.tolist(), keys))
    expect = np.array([[of.get(int(x)) for x in row] for row in want.ids], dtype=object)
    assert got.ids.dtype == object and got.ids.tolist() == expect.tolist()
    np.testing.assert_array_equal(got.scores, want.scores)


@pytest.mark.parametrize("kind,index", [("str", "exact"), ("uuid", "exact"), ("bytes", "exact"), ("str", "hnsw")])
def test_keyed_recaller_equals_the_int_recaller(rng, kind, index):
    world = World(rng, "ffm", m=8, n=60)
    keys = KEYS[kind](world.ids)
    of = dict(zip(world.ids.tolist(), keys))
    by_int = world.recaller(index)
    rec = fmrecall.Recaller(world.model, fmrecall.Sides(**SD), index, threads=1).add_items(world.items, keys)
    assert rec.id_kind == kind and by_int.id_kind == "int" and len(rec) == world.n
    assert rec.ids.tolist() == keys.tolist()
    np.testing.assert_array_equal(rec.item_vectors(keys[::-1]), by_int.item_vectors(world.ids[::-1]))
    np.testing.assert_array_equal(rec.item_vectors(keys[3]), by_int.item_vectors([world.ids[3]]))
    exact = index == "exact"
    res = rec.search(world.queries, 7)
    _same_as_int(world, keys, res, by_int.search(world.queries, 7))
    check_top(world, _translate(world, keys, res), 7, exact=exact, scores_only=not exact)
    # filters by key: per query (sets, lists, None), flat, a previous result (None padding)
    per = [None if i % 3 == 0 else set(rng.choice(keys, 20).tolist()) for i in range(world.m)]
    per_int = [None if p is None else [int(world.ids[keys.tolist().index(k)]) for k in p] for p in per]
    for name, default in (("exclude", False), ("restrict", True)):
        got = rec.search(world.queries, 7, **{name: per})
        _same_as_int(world, keys, got, by_int.search(world.queries, 7, **{name: per_int}))
        mask = world.mask_of(per_int, default)
        check_top(world, _translate(world, keys, got), 7, ~mask if name == "exclude" else mask, exact=exact)
        flat = list(keys[:9]) + list(KEYS[kind]([5]))  # with a key of no item
        want = by_int.search(world.queries, 7, **{name: world.ids[:9]})
        _same_as_int(world, keys, rec.search(world.queries, 7, **{name: flat}), want)
    first = rec.search(world.queries, 4, restrict=[keys[:2]] * world.m)  # padded with None
    again = rec.search(world.queries, 4, exclude=first.ids)
    _same_as_int(world, keys, again, by_int.search(world.queries, 4, exclude=[world.ids[:2]] * world.m))
    # remove by key (unknown keys ignored), re-add some, replace one item's row
    gone = keys[10:30]
    rec.remove_items(list(gone) + list(KEYS[kind]([5, 999_999])))  # keys of no item: ignored
    by_int.remove_items(world.ids[10:30])
    rec.add_items(world.items.subset(np.arange(10, 15)), gone[:5])
    by_int.add_items(world.items.subset(np.arange(10, 15)), world.ids[10:15])
    rec.remove_items(keys[5])
    by_int.remove_items([world.ids[5]])
    assert sorted(map(str, rec.ids.tolist())) == sorted(str(of[int(x)]) for x in by_int.ids)
    _same_as_int(world, keys, rec.search(world.queries, 12), by_int.search(world.queries, 12))
    with pytest.raises(KeyError, match="is not indexed"):
        rec.item_vectors([keys[5]])
    df = rec.search(world.queries, 3).to_frame()
    assert len(df) == 3 * world.m and set(df["item_id"]) <= set(keys.tolist())


def test_keyed_recaller_saves_loads_and_pickles(rng, tmp_path):
    world = World(rng, "fm", m=6, n=40)
    for kind in ("str", "uuid"):
        keys = KEYS[kind](world.ids)
        rec = fmrecall.Recaller(world.model, fmrecall.Sides(**SD), "hnsw", threads=1).add_items(world.items, keys)
        rec.remove_items(keys[:5])  # freed internal ids, tombstones in the ANN index
        rec.add_items(world.items.subset(np.arange(3)), KEYS[kind](world.ids[:3] + 1))  # reuse them
        want = rec.search(world.queries, 8, exclude=[keys[5:9]] * world.m)
        path = tmp_path / kind
        rec.save(path)
        for back in (fmrecall.Recaller.load(path), pickle.loads(pickle.dumps(rec))):
            assert back.id_kind == kind and back.ids.tolist() == rec.ids.tolist()
            got = back.search(world.queries, 8, exclude=[keys[5:9]] * world.m)
            assert got.ids.tolist() == want.ids.tolist()
            np.testing.assert_array_equal(got.scores, want.scores)
            back.add_items(world.items.subset(np.arange(4)), keys[:4])  # the free ids went along
            assert len(back) == len(rec) + 4
        current = json.loads((path / "CURRENT").read_text())["version_dir"]
        meta, arrays = load_arrays(str(path / current / "items.npz"), "fmrecall.recaller", 3)
        assert meta["version"] == 3 and meta["recaller"]["item_keys"] == kind
        assert arrays["item_key_ids"].size == len(rec)
    # integer ids: the version older fmrecall reads, no table
    plain = world.recaller()
    plain.save(tmp_path / "int")
    current = json.loads((tmp_path / "int" / "CURRENT").read_text())["version_dir"]
    meta, arrays = load_arrays(str(tmp_path / "int" / current / "items.npz"), "fmrecall.recaller", 3)
    assert meta["version"] == 2 and "item_key_ids" not in arrays
    assert fmrecall.Recaller.load(tmp_path / "int").id_kind == "int"


def test_saved_table_is_checked_against_the_index(rng, tmp_path, monkeypatch):
    """A table that does not list exactly the index's items (written through a broken saver, so the
    checksums hold) is refused on load, naming the file; so are inconsistent tables."""
    world = World(rng, "fm", m=3, n=12)
    rec = fmrecall.Recaller(world.model, fmrecall.Sides(**SD), threads=1).add_items(world.items, KEYS["str"](world.ids))
    state = ItemKeys.state

    def drop_one(self):
        out = state(self)
        out["item_key_ids"] = out["item_key_ids"][:-1]
        out["item_key_offsets"] = out["item_key_offsets"][:-1]
        out["item_key_bytes"] = out["item_key_bytes"][: out["item_key_offsets"][-1]]
        return out

    monkeypatch.setattr(ItemKeys, "state", drop_one)
    rec.save(tmp_path / "bad")
    monkeypatch.undo()
    with pytest.raises(ValueError, match=r"items\.npz: the id table lists 11 items, the index holds 12"):
        fmrecall.Recaller.load(tmp_path / "bad")
    good = rec._keys.state()
    bad_tables = [
        ({**good, "item_key_ids": good["item_key_ids"][::-1].copy()}, "distinct, ascending"),
        ({**good, "item_key_offsets": good["item_key_offsets"] + 1}, "do not cover"),
        ({k: v for k, v in good.items() if k != "item_key_bytes"}, "no id table"),
        ({**good, "item_key_bytes": np.full_like(good["item_key_bytes"], 0xFF)}, "corrupt str item id"),
    ]
    for arrays, msg in bad_tables:
        with pytest.raises(ValueError, match=msg):
            ItemKeys.from_state("str", arrays, "items.npz")
    same = {**good, "item_key_bytes": np.frombuffer(b"x" * good["item_key_bytes"].size, np.uint8).copy()}
    same["item_key_offsets"] = np.arange(good["item_key_ids"].size + 1, dtype=np.int64) * 0
    same["item_key_offsets"][-1] = same["item_key_bytes"].size
    with pytest.raises(ValueError, match="duplicate item ids"):
        ItemKeys.from_state("str", same, "items.npz")


def test_one_kind_of_id_per_recaller(rng):
    world = World(rng, "fm", m=3, n=12)
    rec = fmrecall.Recaller(world.model, fmrecall.Sides(**SD), threads=1)
    items = world.items.subset(np.arange(3))
    cases = [
        (["a", 1, "c"], r"ids\[1\] is 1 \(int\), not a str id like ids\[0\]"),
        (["a", None, "c"], r"ids\[1\] is None \(NoneType\), not an item id"),
        (["a", 2.5, "c"], r"ids\[1\] is 2.5"),
        (["a", "b", "a"], r"duplicate id 'a'"),
        ([3, 4, 3], r"duplicate id 3"),
        ([3, -4, 5], r"integer item ids must be >= 0, got -4"),
        (["a", "b"], r"one id per item row \(3\), got 2"),
        (np.array([[1, 2, 3]]), r"ids must be 1-d"),
        (np.array([1.0, 2.0, 3.0]), r"ids must hold item ids .* float64"),
    ]
    for ids, msg in cases:
        with pytest.raises(ValueError, match=msg):
            rec.add_items(items, ids)
        assert rec.id_kind is None and len(rec) == 0  # a failed add fixes nothing
    ivf = fmrecall.Recaller(world.model, fmrecall.Sides(**SD), "ivf", nlist=8, threads=1)
    with pytest.raises(ValueError, match="could not index"):  # fails inside the index
        ivf.add_items(items, ["a", "b", "c"])
    assert ivf.id_kind is None and len(ivf) == 0 and ivf.ids.size == 0
    rec.add_items(items, np.array(["a", "b", "c"]))  # numpy strings
    for bad, msg in (([7], r"ids\[0\] is 7 \(int\): this Recaller's item ids are str"), ([b"a"], "are str")):
        with pytest.raises(ValueError, match=msg):
            rec.add_items(items.subset(np.arange(1)), bad)
        with pytest.raises(ValueError, match=msg):
            rec.remove_items(bad)
    with pytest.raises(ValueError, match=r"exclude\[1\]\[0\] is 7 \(int\): this Recaller's item ids are str"):
        rec.search(world.queries, 2, exclude=[["a"], [7], None])
    with pytest.raises(ValueError, match="sparse matrix gives item ids as column indices"):
        rec.search(world.queries, 2, exclude=sp.csr_matrix((3, 5)))
    by_int = fmrecall.Recaller(world.model, fmrecall.Sides(**SD), threads=1).add_items(items, [0, 1, 2])
    with pytest.raises(ValueError, match=r"ids\[0\] is 'a' \(str\): this Recaller's item ids are int"):
        by_int.add_items(items.subset(np.arange(1)), ["a"])
    by_int.remove_items([0, 1, 2])  # empty again, still integer ids
    assert by_int.id_kind == "int"


def test_removed_ids_are_reused(rng):
    """Internal ids freed by removals go to the next new keys: relabelling items day after day
    does not grow the table."""
    world = World(rng, "fm", m=4, n=30)
    rec = fmrecall.Recaller(world.model, fmrecall.Sides(**SD), "hnsw", threads=1)
    rec.add_items(world.items, [f"d0-{j}" for j in range(world.n)])
    for day in range(1, 6):
        rec.remove_items(
            [f"d{day - 1}-{j}" for j in range(10)] + [f"d{day - 1}-{j}" for j in range(10, 30) if day == 1]
        )
        if day == 1:
            rec.add_items(world.items.subset(np.arange(10, 30)), [f"d{day}-{j}" for j in range(10, 30)])
        rec.add_items(world.items.subset(np.arange(10)[::-1]), [f"d{day}-{j}" for j in range(10)])
        assert rec._keys.keys.size == world.n and len(rec) == world.n
    keys = [f"d5-{j}" for j in range(10)] + [f"d1-{j}" for j in range(10, 30)]
    cols = [9 - j for j in range(10)] + list(range(10, 30))  # d5-j labels item 9 - j
    res = rec.search(world.queries, 30)
    for i in range(world.m):
        got = [cols[keys.index(k)] for k in res.ids[i]]
        np.testing.assert_allclose(res.scores[i], world.S[i, got], rtol=1e-5, atol=world.tol[i])
        np.testing.assert_allclose(
            np.sort(res.scores[i])[::-1], np.sort(world.S[i])[::-1], rtol=1e-5, atol=world.tol[i]
        )


@pytest.mark.parametrize("index", ["exact", "hnsw"])
def test_keys_stay_consistent_under_a_writer(tmp_path, index):
    """6 readers search with key exclusions while a writer relabels 150 of 600 items (reusing the
    freed internal ids for other items) and saves: every key comes back with its own item's exact
    score, in one catalogue state (tests/stress_keys.py)."""
    counts = run_stress("stress_keys.py", index, 2, 6, tmp_path / "saved")
    assert counts["searches"] >= 100 and counts["mutations"] >= 8, counts
