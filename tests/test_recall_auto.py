"""index="auto" and the norm-tiered inverted lists it picks for short vectors (issue 13): the choice
rule, exact re-scoring (every returned score is the model's score of the joined row, computed by
brute force in helpers.World), the switch between kinds as the catalogue grows, the tier table
against a numpy re-derivation, and persistence. Concurrency: tests/test_recall_concurrency.py."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import SD, World, check_top, random_id_lists

import fmrecall
import fmrecall.recall.faiss_auto as faiss_auto
from fmrecall.recall.faiss_tiers import TIER_FRACTIONS


@pytest.mark.parametrize(
    "n,dim,spread,segments,want",
    [
        (1_000, 65, 1.3, 1, "exact"),  # small: exact
        (516_000, 65, 1.3, 1, "exact"),  # n·d = 33.54M ≤ 2^25
        (517_000, 65, 1.3, 1, "tiered-ivf"),  # just above: short vectors with spread norms
        (1_000_000, 65, 1.25, 1, "tiered-ivf"),  # the FM k=64 catalogue of bench/
        (1_000_000, 128, 1.06, 1, "tiered-ivf"),
        (1_000_000, 65, 1.01, 1, "hnsw"),  # norms do not spread (e.g. normalised): no tiers
        (1_000_000, 129, 1.3, 1, "hnsw"),  # long vectors
        (1_000_000, 301, 1.44, 1, "hnsw"),  # the FFM catalogue of bench/
        (100_000, 301, 1.44, 1, "exact"),
        (112_000, 301, 1.44, 1, "hnsw"),
        (1_000_000, 301, 1.44, 3, "exact"),  # segments: exact for the certificate
    ],
)
def test_choice_rule(n, dim, spread, segments, want):
    kind, why = faiss_auto.choose(n, dim, spread, segments)
    assert kind == want, why
    assert why


def test_stale_after_growth_or_crossing_the_exact_bound():
    big = faiss_auto.EXACT_MAX_FLOATS // 65 + 1  # first size above the exact bound at d = 65
    assert faiss_auto.stale("exact", 10, big, 65)  # grew past the bound
    assert not faiss_auto.stale("exact", 10, big - 1, 65)
    assert faiss_auto.stale("tiered-ivf", big, big - 1, 65)  # shrank below it
    assert not faiss_auto.stale("tiered-ivf", big, 4 * big - 1, 65)
    assert faiss_auto.stale("tiered-ivf", big, 4 * big, 65)  # 4× the catalogue it was built for
    assert not faiss_auto.stale("exact", 10, 10**9, 65, segments=2)


def test_norm_spread_is_p99_over_median():
    rng = np.random.default_rng(3)
    v = (rng.normal(size=(1000, 8)) * rng.uniform(0.5, 3, size=(1000, 1))).astype(np.float32)
    norms = np.sqrt((v.astype(np.float64) ** 2).sum(axis=1))
    assert faiss_auto.norm_spread(v) == pytest.approx(np.percentile(norms, 99) / np.median(norms), rel=1e-9)
    assert faiss_auto.norm_spread(np.zeros((0, 8), np.float32)) == 1.0


def _auto_large(monkeypatch):
    """index="auto" behaving as on a catalogue above the exact bound (tiny catalogues here)."""
    monkeypatch.setattr(faiss_auto, "EXACT_MAX_FLOATS", 0)


@pytest.mark.parametrize("kind", ["fm", "hybrid-item"])
def test_auto_rescores_exactly(rng, monkeypatch, kind):
    """auto on a 'large' catalogue picks tiered-ivf (short vectors, spread norms); every returned
    score is the model's score on the joined row, with and without exclude; probing every list
    gives the exact top k."""
    _auto_large(monkeypatch)
    world = World(rng, kind, m=20, n=400)
    rec = world.recaller("auto")
    assert rec.index_kind == "auto" and rec.index.chosen == "tiered-ivf" and not rec.exact
    res = rec.search(world.queries, 10)
    hits = check_top(world, res, 10, exact=False)
    assert not res.certified.any()
    assert sum(h for h, _ in hits) / sum(t for _, t in hits) >= 0.8
    excl = random_id_lists(rng, world, world.m, size_max=40)
    check_top(world, rec.search(world.queries, 10, exclude=excl), 10, ~world.mask_of(excl, False), exact=False)
    every = rec.index.parts()[0].tiers.nlist
    check_top(world, rec.search(world.queries, 10, nprobe=every), 10)  # all lists: the exact top k
    check_top(world, rec.search(world.queries, 10, exclude=excl, nprobe=every), 10, ~world.mask_of(excl, False))


def test_auto_small_catalogue_is_exact(rng):
    """The Recaller's default is auto, and a small catalogue gets the exact index."""
    world = World(rng, "ffm", m=10, n=200)
    rec = fmrecall.Recaller(world.model, fmrecall.Sides(**SD), threads=1).add_items(world.items, world.ids)
    assert rec.index_kind == "auto" and rec.index.chosen == "exact" and rec.exact
    res = rec.search(world.queries, 15)
    check_top(world, res, 15)
    assert res.certified.all()


def test_auto_changes_kind_as_the_catalogue_grows_and_shrinks(rng, monkeypatch):
    world = World(rng, "fm", m=12, n=400)
    monkeypatch.setattr(faiss_auto, "EXACT_MAX_FLOATS", 100 * world.model.split(fmrecall.Sides(**SD)).dim)
    rec = fmrecall.Recaller(world.model, fmrecall.Sides(**SD), threads=1)
    rec.add_items(world.items.subset(np.arange(60)), world.ids[:60])
    assert rec.index.chosen == "exact" and rec.index.built_n == 60
    rec.add_items(world.items.subset(np.arange(60, 150)), world.ids[60:150])  # 150 > 100: rebuilt
    assert rec.index.chosen == "tiered-ivf" and rec.index.built_n == 150
    rec.add_items(world.items.subset(np.arange(150, 400)), world.ids[150:400])  # < 4 × 150: in place
    assert rec.index.chosen == "tiered-ivf" and rec.index.built_n == 150
    check_top(world, rec.search(world.queries, 10, nprobe=10**6), 10)
    rec.remove_items(world.ids[:320])  # a quarter removed: compacted, 80 left: exact again
    assert rec.index.chosen == "tiered-ivf" or len(rec) == 80
    rec.add_items(world.items.subset([0]), world.ids[:1])
    assert rec.index.chosen == "exact" and len(rec) == 81
    allowed = np.zeros(world.S.shape, bool)
    allowed[:, world.cols(np.concatenate([world.ids[:1], world.ids[320:]]))] = True
    res = rec.search(world.queries, 10)
    check_top(world, res, 10, allowed)
    assert res.certified.all()


def test_tier_table_against_numpy(rng):
    """Tiers by norm rank (1/64, 3/64, 12/64, 48/64 of the items, highest first), lists in
    proportion to tier size, every item in a list of its own tier, radii covering the members;
    later items join the tier of their norm (a norm above every tier: the top tier)."""
    world = World(rng, "fm", m=5, n=640)
    rec = world.recaller("tiered-ivf", nlist=32)
    seg = rec.index.parts()[0]
    tiers, index = seg.tiers, seg.index
    P = rec.vectors.astype(np.float64)
    norms = np.sqrt((P**2).sum(axis=1))
    order = np.argsort(-norms, kind="stable")
    ends = np.round(np.cumsum(TIER_FRACTIONS) * 640).astype(int)
    table = tiers.table
    assert table.shape == (4, 4) and table[0, 2] == 0 and table[-1, 3] == tiers.nlist
    lists = np.full(640, -1)
    invlists = index.invlists
    import faiss

    for lst in range(tiers.nlist):
        size = invlists.list_size(lst)
        if size:
            ids = faiss.rev_swig_ptr(invlists.get_ids(lst), size).copy()
            lists[ids] = lst
    assert (lists >= 0).all()
    for t, (a, b) in enumerate(zip(np.r_[0, ends[:-1]], ends)):
        rows = order[a:b]
        lo, hi = int(table[t, 2]), int(table[t, 3])
        assert hi - lo == max(1, round(32 * (b - a) / 640))
        assert ((lists[rows] >= lo) & (lists[rows] < hi)).all(), t
        assert table[t, 1] == pytest.approx(norms[rows].max())
        dist = np.sqrt(((P[rows] - tiers.centroids[lists[rows]]) ** 2).sum(axis=1))
        assert (dist <= tiers.radii[lists[rows]] * (1 + 1e-5) + 1e-6).all()
    # a new item far above every norm joins the top tier, one far below the bottom tier
    big = world.items.subset([int(order[0])])
    small = world.items.subset([int(order[-1])])
    x = np.vstack([P[order[0]] * 3, P[order[-1]] * 0.01]).astype(np.float32)
    got = tiers.assign(x)
    assert table[0, 2] <= got[0] < table[0, 3] and table[3, 2] <= got[1] < table[3, 3]
    del big, small


def test_auto_tiered_save_load_round_trip(rng, tmp_path, monkeypatch):
    _auto_large(monkeypatch)
    world = World(rng, "ffm", m=15, n=300)
    rec = world.recaller("auto")
    rec.remove_items(world.ids[:7])
    rec.save(tmp_path / "rec")
    back = fmrecall.Recaller.load(tmp_path / "rec")
    assert back.index.chosen == "tiered-ivf" and back.index.built_n == rec.index.built_n == 300
    for kw in ({}, {"nprobe": 3}):
        a, b = rec.search(world.queries, 10, **kw), back.search(world.queries, 10, **kw)
        np.testing.assert_array_equal(b.ids, a.ids)
        np.testing.assert_array_equal(b.scores, a.scores)
        assert not np.isin(b.ids, world.ids[:7]).any()
    for r in (rec, back):  # in-place additions land in the same lists
        r.add_items(world.items.subset([0, 1, 2]), world.ids[:3])
    np.testing.assert_array_equal(back.index.parts()[0].tiers.radii, rec.index.parts()[0].tiers.radii)
    a, b = rec.search(world.queries, 10, nprobe=2), back.search(world.queries, 10, nprobe=2)
    np.testing.assert_array_equal(b.ids, a.ids)


@pytest.mark.parametrize("bad", ["end beyond the lists", "radii missing"])
def test_corrupt_tier_table_is_refused(rng, tmp_path, bad):
    from fmrecall.recall.faiss_index import FaissIndex

    world = World(rng, "fm", m=4, n=200)
    rec = world.recaller("tiered-ivf", nlist=8)
    meta, arrays, files = rec.index.state()
    files["index0.faiss"](str(tmp_path / "index0.faiss"))
    if bad == "radii missing":
        del arrays["tiers0_radii"]
    else:
        meta["tiers"][0][-1][3] = 99
    with open(tmp_path / "index0.faiss", "rb") as f, pytest.raises(ValueError, match="items.npz.*tier table"):
        FaissIndex.from_state(meta, arrays, {"index0.faiss": f}, rec.dim, 1, "items.npz")


def test_failed_in_place_add_restores_the_radii(rng, monkeypatch):
    """A tiered-ivf add that fails in its third slice leaves rows, list radii (the probe order) and
    the results of a narrow search as they were."""
    import fmrecall.recall.faiss_index as findex
    import fmrecall.recall.faiss_segment as fsegment

    world = World(rng, "fm", m=10, n=200)
    rec = fmrecall.Recaller(world.model, fmrecall.Sides(**SD), "tiered-ivf", nlist=12, threads=1)
    rec.add_items(world.items.subset(np.arange(100)), world.ids[:100])
    radii = rec.index.parts()[0].tiers.radii.copy()
    before = rec.search(world.queries, 10, nprobe=2)
    monkeypatch.setattr(findex, "INSERT_SLICE", 16)
    orig, calls = fsegment.Segment.add, []

    def failing(self, vecs, first_row):
        calls.append(vecs.shape[0])
        if len(calls) == 3:
            raise RuntimeError("injected faiss failure")
        return orig(self, vecs, first_row)

    monkeypatch.setattr(fsegment.Segment, "add", failing)
    with pytest.raises(ValueError, match="nothing was added"):
        rec.add_items(world.items.subset(np.arange(100, 200)), world.ids[100:])
    np.testing.assert_array_equal(rec.index.parts()[0].tiers.radii, radii)
    after = rec.search(world.queries, 10, nprobe=2)
    np.testing.assert_array_equal(after.ids, before.ids)
    np.testing.assert_array_equal(after.scores, before.scores)


def test_auto_long_vectors_get_hnsw_and_exact_scores(rng, tmp_path, monkeypatch):
    """auto above the exact bound with vectors longer than TIERED_MAX_DIM builds hnsw; scores are
    exact and the choice survives save / load."""
    _auto_large(monkeypatch)
    monkeypatch.setattr(faiss_auto, "TIERED_MAX_DIM", 1)
    world = World(rng, "ffm", m=12, n=300)
    rec = world.recaller("auto")
    assert rec.index.chosen == "hnsw" and rec.index.parts()[0].augment
    res = rec.search(world.queries, 10)
    hits = check_top(world, res, 10, exact=False)
    assert sum(h for h, _ in hits) / sum(t for _, t in hits) >= 0.9
    rec.save(tmp_path / "rec")
    back = fmrecall.Recaller.load(tmp_path / "rec")
    assert back.index.chosen == "hnsw"
    np.testing.assert_array_equal(back.search(world.queries, 10).ids, res.ids)
