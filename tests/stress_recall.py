"""Child process of tests/test_recall_concurrency.py: readers search one Recaller while a writer
changes its catalogue (and saves it). Prints one JSON line of counts; exits 1 on any failure.

    python tests/stress_recall.py INDEX SECONDS READERS SAVE_DIR

exact: every result must equal, bit for bit, the serial result on one of the two catalogue
states the writer alternates between (its storage order repeats exactly). ANN indexes: their graph
changes with every add, so each result is checked instead: every (id, score) is the model's exact
score for that id, ids distinct, scores sorted, padding only at the end, and the returned ids all
belong to one of the two states.
"""

from __future__ import annotations

import os
import sys
import traceback

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from helpers import World  # noqa: E402
from stress_harness import Stress  # noqa: E402

import fmrecall  # noqa: E402

KS = (10, 300)


def main(index: str, seconds: float, readers: int, save_dir: str) -> int:
    rng = np.random.default_rng(7)
    world = World(rng, "ffm", m=24, n=900)
    if index == "auto-tiered":  # index="auto" as it is on a large catalogue: tiered-ivf
        import fmrecall.recall.faiss_auto as faiss_auto

        faiss_auto.EXACT_MAX_FLOATS, index = 0, "auto"
    rec = world.recaller(index, threads=1)
    moved = world.ids[:150]  # removed and re-added by the writer
    moved_items = world.items.subset(np.arange(150))
    excl = [world.ids[i::7][:20] for i in range(world.m)]
    # one full cycle first, so the exact index's storage order is the one every later cycle repeats
    rec.remove_items(moved).add_items(moved_items, moved)
    slices = [slice(0, world.m)] + [slice(i, i + 1) for i in range(world.m)]

    def serial():
        return {
            (k, e, s.start, s.stop): rec.search(_rows(world, s), k, exclude=None if not e else excl[s])
            for k in KS
            for e in (0, 1)
            for s in slices
        }

    refs = [serial()]
    rec.remove_items(moved)
    refs.append(serial())
    rec.add_items(moved_items, moved)
    live = [set(world.ids.tolist()), set(world.ids[150:].tolist())]
    col = {int(x): j for j, x in enumerate(world.ids)}

    stress = Stress()
    fail = stress.fail

    def check(res, k, e, s):
        if index == "exact":
            if not any(
                np.array_equal(res.ids, r[(k, e, s.start, s.stop)].ids)
                and np.array_equal(res.scores, r[(k, e, s.start, s.stop)].scores)
                for r in refs
            ):
                fail(f"exact result differs from both serial states (k={k}, exclude={e}, queries {s})")
            return
        for row, i in enumerate(range(s.start, s.stop)):
            ids, sc = res.ids[row], res.scores[row]
            n = int((ids >= 0).sum())
            got = ids[:n]
            if (ids[n:] >= 0).any() or not np.all(np.isneginf(sc[n:])):
                fail("padding not at the end")
            if len(set(got.tolist())) != n:
                fail("duplicate ids")
            if not any(set(got.tolist()) <= lv for lv in live):
                fail("ids from no single catalogue state")
            if e and np.isin(got, excl[i]).any():
                fail("returned an excluded id")
            want = world.S[i, [col[int(x)] for x in got]]
            if not np.allclose(sc[:n], want, rtol=1e-5, atol=world.tol[i]):
                fail(f"score is not the model's score for its id (query {i})")
            if np.any(np.diff(sc[:n]) > 0):
                fail("scores not sorted")

    def reader(seed):
        r = np.random.default_rng(seed)
        while not stress.stop.is_set():
            k = int(r.choice(KS))
            e = int(r.integers(2))
            s = slices[int(r.integers(len(slices)))]
            try:
                res = rec.search(_rows(world, s), k, exclude=None if not e else excl[s])
                check(res, k, e, s)
            except Exception:
                fail(traceback.format_exc(limit=3))
            stress.count("searches")

    def cycle():
        rec.remove_items(moved)
        rec.add_items(moved_items, moved)

    stress.run(reader, readers, cycle, 2, rec, save_dir, seconds)
    if save_dir and stress.counts["saves"]:
        back = fmrecall.Recaller.load(save_dir)
        got = back.search(_rows(world, slices[0]), 10)
        if not any(np.array_equal(got.ids, r[(10, 0, 0, world.m)].ids) for r in refs) and index == "exact":
            fail("the saved Recaller matches neither state")
    return stress.report()


def _rows(world, s):
    return world.queries.subset(np.arange(s.start, s.stop))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4] if len(sys.argv) > 4 else ""))
