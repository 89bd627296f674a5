"""Child process of tests/test_external_ids.py: readers search a Recaller with string item ids
while a writer relabels 150 of its 600 items (and saves). Prints one JSON line of counts; exits 1
on any failure.

    python tests/stress_keys.py INDEX SECONDS READERS SAVE_DIR

The items 0..149 are "a-j" (item j) in state A and "b-t" (item 149 - t) in state B; the writer
removes one labelling and adds the other, so the internal ids the removal frees are reused for
other items. A search translating with a table that does not match the index it searched would
put a key on another item's score. Every result is checked: each (key, score) is the model's exact
score of that key's item in one of the three states (A, only the other 450 items, B), keys
distinct, scores sorted, padding (None, -inf) at the end, excluded keys absent; the exact index
must return that state's exact top k.
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
MOVED = 150


def main(index: str, seconds: float, readers: int, save_dir: str) -> int:
    rng = np.random.default_rng(11)
    world = World(rng, "ffm", m=16, n=600)
    a_keys = [f"a-{j}" for j in range(MOVED)]
    b_keys = [f"b-{t}" for t in range(MOVED)]  # b-t labels item MOVED - 1 - t
    c_keys = [f"c-{j}" for j in range(MOVED, world.n)]
    states = [  # key -> item column
        {**{k: j for j, k in enumerate(a_keys)}, **{k: MOVED + j for j, k in enumerate(c_keys)}},
        {k: MOVED + j for j, k in enumerate(c_keys)},
        {**{k: MOVED - 1 - t for t, k in enumerate(b_keys)}, **{k: MOVED + j for j, k in enumerate(c_keys)}},
    ]
    rec = fmrecall.Recaller(world.model, fmrecall.Sides(**world.sd), index, threads=1)
    rec.add_items(world.items, a_keys + c_keys)
    a_items = world.items.subset(np.arange(MOVED))
    b_items = world.items.subset(np.arange(MOVED)[::-1])
    pool = np.array(a_keys + b_keys + c_keys, dtype=object)
    excl = [set(rng.choice(pool, 40, replace=False).tolist()) for _ in range(world.m)]
    stress = Stress(states=[0, 0, 0])
    fail = stress.fail

    def check(res, k, e, lo, hi):
        for row, i in enumerate(range(lo, hi)):
            keys, sc = res.ids[row], res.scores[row]
            n = int(sum(x is not None for x in keys))
            got = list(keys[:n])
            if any(x is not None for x in keys[n:]) or not np.all(np.isneginf(sc[n:])):
                return fail("padding not at the end")
            if len(set(got)) != n or not np.all(np.diff(sc[:n]) <= 0):
                return fail("duplicate keys or unsorted scores")
            if e and set(got) & excl[i]:
                return fail("returned an excluded key")
            ok = []
            for s, state in enumerate(states):
                if not all(x in state for x in got):
                    continue
                cols = [state[x] for x in got]
                if not np.allclose(sc[:n], world.S[i, cols], rtol=1e-5, atol=world.tol[i]):
                    continue
                if index == "exact":
                    allowed = [c for x, c in state.items() if not (e and x in excl[i])]
                    best = np.sort(world.S[i, allowed])[::-1][:k]
                    if n != best.size or not np.allclose(
                        np.sort(world.S[i, cols])[::-1], best, rtol=1e-5, atol=world.tol[i]
                    ):
                        continue
                ok.append(s)
            if not ok:
                return fail(f"query {i}: keys / scores match no catalogue state: {got[:5]}")
            if len(ok) == 1:
                with stress.lock:
                    stress.counts["states"][ok[0]] += 1

    def reader(seed):
        r = np.random.default_rng(seed)
        while not stress.stop.is_set():
            k, e = int(r.choice(KS)), int(r.integers(2))
            lo = int(r.integers(world.m))
            hi = world.m if r.random() < 0.3 else lo + 1
            try:
                q = world.queries.subset(np.arange(lo, hi))
                res = rec.search(q, k, exclude=excl[lo:hi] if e else None)
                check(res, k, e, lo, hi)
            except Exception:
                fail(traceback.format_exc(limit=3))
            stress.count("searches")

    def cycle():
        rec.remove_items(a_keys).add_items(b_items, b_keys)
        rec.remove_items(b_keys).add_items(a_items, a_keys)

    stress.run(reader, readers, cycle, 4, rec, save_dir, seconds)
    if save_dir and stress.counts["saves"]:
        back = fmrecall.Recaller.load(save_dir)
        if back.id_kind != "str" or sorted(back.ids.tolist()) != sorted(a_keys + c_keys):
            fail("the saved Recaller does not hold state A's keys")
        check(back.search(world.queries, 10), 10, 0, 0, world.m)
    return stress.report()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4] if len(sys.argv) > 4 else ""))
