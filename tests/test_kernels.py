"""Every compiled kernel variant (generic / AVX2 / AVX-512: the `arch` fixture) on rows that reach every
path of the row kernel (cpp/fmrecall/kernel_impl.h), against the plain float64 numpy reference
(tests/reference.py): the score, and one exact AdaGrad step per row (libffm's rule: G += g²,
w -= eta g / √G, accumulators starting at 1, L2 included) over a few steps, so that the AdaGrad state a
step leaves behind is checked by the next one.

Which branch a row takes (worked out from kernel_impl.h and row.cc):
* forward: linear terms; `ns` single nodes -> the FM sum trick (S, Q) and, with field-aware nodes too,
  the per-slot sums Sa and the single×aware dots; `na` field-aware nodes -> pair_dots, whose loop is
  the two-pairs-per-ymm loop plus an odd tail for K == 4 on AVX2 / AVX-512 (FMR_WIDE), a compile-time
  chunk loop for every other K > 0 (K = 4 on generic in f4 chunks; K = 8..64 in f8 chunks on AVX2; on
  AVX-512 K = 8 in f8 chunks and K = 16, 32, 64 in f16 chunks), four independent sums over groups of four
  partners plus a remainder, and a run-time add_prod loop for K = 0. The K == 4 wide loops (pair_dots,
  pair_steps4) take the pair value out of the loop when every field-aware node has the same value
  (`same_x`: the one-hot pass, `*-unit*` cases, value scale 1 or 0.7) and build it per pair otherwise.
* K = padded k: k 1..4 -> K=4; 5..8 -> K=8; 13..16 -> K=16; 32 -> K=32; 64 -> K=64; 12 -> kp 12,
  K=0 (run time).
* backward (the kernel's `step` runs it right after forward on the same row): a row with a repeated
  feature (`shared`) -> collect + apply; otherwise 1) single×aware updates (Ca) when the row has both
  kinds, 2) aware×aware: one node per field -> the fused in-place pair loop (pair_steps4 for the pairs
  two at a time + pair_step for an odd one when K == 4 and wide, pair_step otherwise), a field with two
  or more field-aware nodes -> gradients gathered first (grad / used) then one adagrad per vector,
  3) single vectors (with Ca in a hybrid), 4) bias and linear.
* gather (row.cc): one run without a values array (unit values), no instance normalisation and at most 64
  fields -> the one-hot pass (every `unit` case), which hands the row to the general pass at the first
  field met twice (`multi`, `repeat`); values given or normalize -> the general pass.
* BPR pairs (Interactions, loss="bpr") -> bpr_step: collect of both rows into one GradAcc, then apply.
* Interactions with logistic loss and sampled negatives -> backward on the positive, then the negative.
* Every training test runs twice (the `copies` fixture): on the model in place, and with the row's
  hot features and bias pointed at a thread's private copies (hot.cc, FMRECALL_HOT=on: on a call of
  one row every feature of it is hot), merged into the model when the call ends.

A deliberate one-line bug in any of these must fail this file: tools/mutation_check.py plants such
bugs one at a time in a private build and runs it (not part of the test suite).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import pytest
import reference as ref
from helpers import aware_flags, hybrid_ref_params

import fmrecall

N_FIELDS = 6
N_FEATURES = 48  # feature j belongs to field j % 6 (8 features per field)
SIDES = dict(user=[0], context=[1], item=[2, 3, 4, 5])
LR, REG_LIN, REG_FAC = 0.1, 0.05, 0.1  # large L2 so its part of every gradient is visible
STEPS = 3  # rows A, A again (accumulators no longer 1), B
LABELS = {"logistic01": [1.0, 0.0, 1.0], "logistic-11": [-1.0, 1.0, -1.0], "squared": [0.7, -0.4, 1.2]}


@dataclass(frozen=True)
class Case:
    id: str
    kind: str  # fm | ffm | hybrid-item | hybrid-query
    k: int
    shape: str  # onehot | multi | repeat | cross | one-aware
    unit: bool = False  # True: one-hot data without a values array (every value 1)
    normalize: bool = False
    scale: float = 1.0  # the model's value scale (normalize="mean"): every value times it in gather
    labels: str = "logistic01"
    path: str = ""  # the kernel branch the rows take (see the module docstring)

    @property
    def loss(self) -> str:
        return "squared" if self.labels == "squared" else "logistic"


# One line per case: the branch its rows take.
CASES = [
    Case(
        "ffm-onehot-k1",
        "ffm",
        1,
        "onehot",
        path=(
            "K=4, 6 aware one per field: pair_dots 2-pair loop + odd tail; "
            "pair_steps4 + tail pair_step (wide), pair_step<4> (generic)"
        ),
    ),
    Case("ffm-onehot-k2-squared", "ffm", 2, "onehot", labels="squared", path="as k1, squared loss"),
    Case("ffm-onehot-k3-pm1", "ffm", 3, "onehot", labels="logistic-11", path="as k1, labels -1/1"),
    Case("ffm-onehot-k4", "ffm", 4, "onehot", path="as k1, no padding lanes"),
    Case("ffm-onehot-k4-unit", "ffm", 4, "onehot", unit=True, path="as k4, values array absent (all 1)"),
    Case("ffm-onehot-k4-norm", "ffm", 4, "onehot", normalize=True, path="as k4, values scaled by 1/||x|| in gather"),
    Case(
        "ffm-onehot-k4-unit-scale",
        "ffm",
        4,
        "onehot",
        unit=True,
        scale=0.7,
        path="as k4-unit, value scale 0.7: every pair value the same (same_x), taken out of the pair loops",
    ),
    Case("ffm-onehot-k5", "ffm", 5, "onehot", path="K=8: pair_dots chunk loop (one f8 / two f4), pair_step<8>"),
    Case("ffm-onehot-k8-unit-squared", "ffm", 8, "onehot", unit=True, labels="squared", path="K=8, unit values"),
    Case("ffm-onehot-k12", "ffm", 12, "onehot", path="K=0 (kp 12): pair_dots add_prod loop, pair_step<0>"),
    Case("ffm-onehot-k13-pm1", "ffm", 13, "onehot", labels="logistic-11", path="K=16: two f8 chunks"),
    Case("ffm-onehot-k32", "ffm", 32, "onehot", path="K=32: four f8 chunks"),
    Case("ffm-onehot-k64-unit", "ffm", 64, "onehot", unit=True, path="K=64: eight f8 chunks, unit values"),
    Case(
        "ffm-multi-k4",
        "ffm",
        4,
        "multi",
        path="K=4, a field with 3 aware nodes: gathered gradients (grad/used) + adagrad<4>",
    ),
    Case("ffm-multi-k8-unit", "ffm", 8, "multi", unit=True, path="K=8 gathered gradients, unit values"),
    Case("ffm-multi-k12-norm", "ffm", 12, "multi", normalize=True, path="K=0 gathered gradients, normalized"),
    Case("ffm-repeat-k4", "ffm", 4, "repeat", path="repeated feature: collect<4> (aware partners) + apply"),
    Case("ffm-repeat-k16-unit", "ffm", 16, "repeat", unit=True, path="repeated feature: collect<16> + apply"),
    Case(
        "ffm-cross-k4-unit",
        "ffm",
        4,
        "cross",
        unit=True,
        path="one node per field, one feature in two fields, unit values: gather's one-hot pass, collect<4>",
    ),
    Case("fm-cross-k16-unit", "fm", 16, "cross", unit=True, path="as ffm-cross, ns only: collect<16> + apply"),
    Case("fm-onehot-k4", "fm", 4, "onehot", path="ns only: FM sum trick; single-vector adagrad<4> without Ca"),
    Case("fm-multi-k5-unit", "fm", 5, "multi", unit=True, path="ns only, multi-valued fields, K=8"),
    Case("fm-onehot-k12-squared", "fm", 12, "onehot", labels="squared", path="ns only, K=0"),
    Case("fm-onehot-k16-norm", "fm", 16, "onehot", normalize=True, path="ns only, K=16, normalized"),
    Case(
        "fm-onehot-k16-unit-norm",
        "fm",
        16,
        "onehot",
        unit=True,
        normalize=True,
        path="unit values, instance normalisation: gather's general pass",
    ),
    Case("fm-repeat-k4", "fm", 4, "repeat", path="repeated feature, ns only: collect (single vectors) + apply"),
    Case(
        "hybrid-onehot-k4",
        "hybrid-item",
        4,
        "onehot",
        path=(
            "2 single + 4 aware: Sa, single×aware dots; "
            "backward 1) Ca + adagrad, 2) pair_steps4 / pair_step, 3) with Ca"
        ),
    ),
    Case(
        "hybrid-onehot-k8-unit-squared",
        "hybrid-item",
        8,
        "onehot",
        unit=True,
        labels="squared",
        path="as hybrid k4 with K=8, unit values",
    ),
    Case("hybrid-onehot-k12-pm1", "hybrid-item", 12, "onehot", labels="logistic-11", path="as hybrid k4 with K=0"),
    Case(
        "hybrid-multi-k4",
        "hybrid-item",
        4,
        "multi",
        path="multi-valued aware field: gathered gradients; multi-valued single field: Sa sums two nodes",
    ),
    Case(
        "hybrid-multi-k16-norm",
        "hybrid-item",
        16,
        "multi",
        normalize=True,
        path="as hybrid-multi with K=16, normalized",
    ),
    Case("hybrid-query-multi-k5", "hybrid-query", 5, "multi", path="query side aware (2 aware fields), K=8"),
    Case(
        "hybrid-repeat-k4",
        "hybrid-item",
        4,
        "repeat",
        path="feature in a single and an aware field + one repeated: collect with Ca and the Sa slot branch",
    ),
    Case("hybrid-one-aware-k4", "hybrid-item", 4, "one-aware", path="na == 1: no aware×aware loop; single×aware only"),
]


# ---------------------------------------------------------------------------- model worlds
def _aware(kind: str) -> np.ndarray:
    if kind == "fm":
        return ref.fm_aware(N_FIELDS)
    if kind == "ffm":
        return ref.ffm_aware(N_FIELDS)
    return aware_flags(SIDES, kind.split("-")[1], N_FIELDS)


def _start(rng, kind: str, k: int, scale: float = 1.0, **hyper):
    """(library model, reference params) with the same random float32 weights and value scale;
    every feature has field-aware vectors (a hybrid's aware_row are a shuffled order, so row != feature)."""
    f32 = lambda *shape: rng.normal(0.0, 0.4, size=shape).astype(np.float32)  # noqa: E731
    bias, linear = float(f32(1)[0]), f32(N_FEATURES)
    hyper = dict(learning_rate=LR, reg_linear=REG_LIN, reg_factors=REG_FAC, threads=1, **hyper)
    if kind == "fm":
        v = f32(N_FEATURES, k)
        w = {"bias": bias, "linear": linear, "factors": v, "scale": scale}
        return fmrecall.FM.from_weights(w, n_fields=N_FIELDS, **hyper), ref.make_params(bias, linear, v=v)
    if kind == "ffm":
        W = f32(N_FEATURES, N_FIELDS, k)
        w = {"bias": bias, "linear": linear, "factors": W, "scale": scale}
        return fmrecall.FFM.from_weights(w, **hyper), ref.make_params(bias, linear, W=W)
    rows = rng.permutation(N_FEATURES).astype(np.int32)
    w = {
        "bias": bias,
        "linear": linear,
        "factors": f32(N_FEATURES, k),
        "field_factors": f32(N_FEATURES, N_FIELDS, k),
        "aware_row": rows,
        "scale": scale,
    }
    model = fmrecall.HybridFM.from_weights(w, sides=fmrecall.Sides(**SIDES), field_aware=kind.split("-")[1], **hyper)
    return model, hybrid_ref_params(w)


def _params(kind: str, model) -> ref.Params:
    w = model.weights()
    if kind == "fm":
        return ref.make_params(w["bias"], w["linear"], v=w["factors"])
    if kind == "ffm":
        return ref.make_params(w["bias"], w["linear"], W=w["factors"])
    return hybrid_ref_params(w)


def _pool(f: int) -> np.ndarray:
    """The features of field f (feature j belongs to field j % N_FIELDS)."""
    return np.arange(f, N_FEATURES, N_FIELDS)


def _row(rng, case: Case) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """(fields, features, values or None) of one row of the case's shape, nodes shuffled."""
    aware = _aware(case.kind)
    af, sf = np.flatnonzero(aware), np.flatnonzero(~aware)
    fields = list(range(N_FIELDS))  # onehot: one node in every field
    if case.shape == "multi":  # 3 nodes in the first aware field, 2 in the first single one
        fields += [af[0]] * 2 if af.size else []
        fields += [sf[0]] if sf.size else [af[-1]]
    elif case.shape == "one-aware":  # every single field, one aware field
        fields = list(sf) + [af[0]]
    feats = []
    for f in fields:  # distinct features
        feats.append(int(rng.choice(np.setdiff1d(_pool(f), feats))))
    if case.shape == "repeat":  # one feature twice in its field, one in two fields
        fields += [fields[2], sf[0] if sf.size else 0]
        feats += [feats[2], feats[3]]
    if case.shape == "cross":  # one node per field, the last field holding the first field's feature
        feats[-1] = feats[0]
    fields, feats = np.asarray(fields, np.int32), np.asarray(feats, np.int32)
    values = None
    if not case.unit:  # distinct values of both signs
        values = (rng.uniform(0.3, 1.4, fields.size) * np.where(rng.random(fields.size) < 0.3, -1, 1)).astype(
            np.float32
        )
    o = rng.permutation(fields.size)
    return fields[o], feats[o], None if values is None else values[o]


def _dataset(rows, labels=None) -> fmrecall.Dataset:
    indptr = np.r_[0, np.cumsum([r[0].size for r in rows])].astype(np.int64)
    unit = rows[0][2] is None
    return fmrecall.Dataset(
        indptr,
        np.concatenate([r[0] for r in rows]),
        np.concatenate([r[1] for r in rows]),
        None if unit else np.concatenate([r[2] for r in rows]),
        None if labels is None else np.asarray(labels, np.float32),
        n_features=N_FEATURES,
        n_fields=N_FIELDS,
    )


def _assert_score(got: float, params, aware, f, j, x, what=""):
    want = ref.score(params, aware, f, j, x)
    scale = ref.score_terms_abs(params, aware, f, j, x)
    assert abs(float(got) - want) <= 1e-5 * abs(want) + 1e-6 * scale, (what, float(got), want)


def _assert_step(got, want, old, touched, what=""):
    """Library weights after a step vs the reference step from the same weights: the weights, the
    step itself, and untouched entries bit-for-bit unchanged (no stray L2 step)."""
    assert got["bias"] == pytest.approx(want["bias"], rel=1e-5, abs=1e-6), what
    for key in ("linear", "v", "W"):
        if want[key] is None:
            continue
        np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-6, err_msg=f"{what} {key}")
        np.testing.assert_allclose(
            got[key] - old[key], want[key] - old[key], rtol=1e-4, atol=1e-6, err_msg=f"{what} {key} step"
        )
        t = touched[key]
        np.testing.assert_array_equal(got[key][~t], old[key][~t], err_msg=f"{what} {key} untouched")


# ---------------------------------------------------------------------------- rows
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_scores_match_reference(rng, arch, case):
    model, p = _start(rng, case.kind, case.k, case.scale, normalize=case.normalize)
    rows = [_row(rng, case) for _ in range(12)]
    got = model.decision_function(_dataset(rows))
    aware = _aware(case.kind)
    for r, (f, j, x) in enumerate(rows):
        _assert_score(
            got[r],
            p,
            aware,
            *ref.row_nodes(f, j, x, N_FEATURES, N_FIELDS, case.normalize, case.scale),
            what=f"row {r} [{case.path}]",
        )


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_steps_match_reference(rng, arch, copies, case):
    """Rows A, A, B one step each (partial_fit of one row): before each, the score of the row; after,
    every weight against one reference AdaGrad step from the library's previous weights, with the
    reference's own accumulators carried over from the earlier steps; the reported loss."""
    model, p = _start(rng, case.kind, case.k, case.scale, normalize=case.normalize, loss=case.loss)
    aware = _aware(case.kind)
    state = ref.fresh_state(p)
    a, b = _row(rng, case), _row(rng, case)
    for step, (row, y) in enumerate(zip([a, a, b], LABELS[case.labels])):
        f, j, x = ref.row_nodes(*row, N_FEATURES, N_FIELDS, case.normalize, case.scale)
        ds = _dataset([row], [y])
        what = f"step {step} [{case.path}]"
        _assert_score(model.decision_function(ds)[0], p, aware, f, j, x, what=what)
        want, state, loss = ref.adagrad_step(
            p, state, aware, f, j, x, y, loss=case.loss, lr=LR, reg_linear=REG_LIN, reg_factors=REG_FAC
        )
        model.partial_fit(ds)
        got = _params(case.kind, model)
        _assert_step(got, want, p, ref.touched_mask(p, aware, f, j, x), what=what)
        assert model.history_[-1]["train_loss"] == pytest.approx(loss, rel=1e-5, abs=1e-6)
        p = got


def test_row_shapes_take_the_branches_claimed(rng):
    """The row generator really makes the shapes the cases rely on (row.cc: one_per_slot, shared)."""
    for case in CASES:
        aware = _aware(case.kind)
        for _ in range(5):
            f, j, _ = _row(rng, case)
            per_field = np.bincount(f[aware[f]], minlength=N_FIELDS)
            repeated = np.unique(j).size < j.size
            assert repeated == (case.shape in ("repeat", "cross")), case.id
            if case.shape == "cross":
                assert np.unique(f).size == f.size == N_FIELDS, case.id  # one node per field
            if case.kind == "fm":
                continue
            if case.shape == "onehot":
                assert per_field.max() == 1 and per_field.sum() >= 3, case.id  # fused pair loop, >= 3 nodes
            if case.shape == "multi":
                assert per_field.max() >= 2, case.id  # gathered gradients
            if case.shape == "one-aware":
                assert per_field.sum() == 1 and (~aware[f]).any(), case.id


# ---------------------------------------------------------------------------- factored training
pd = None


def _world(kind: str, k: int, loss: str, negatives: int = 1):
    """Interactions with one user, one event (item A, hour 2) and two items, so the one negative
    drawn (positives excluded) is item B; A and B share the tag "t". Returns (model, interactions,
    reference params, aware flags, positive row, negative row)."""
    global pd
    pd = pytest.importorskip("pandas")
    from fmrecall import Categorical, Interactions, MultiCategorical, Numeric, Schema

    rng = np.random.default_rng(zlib.crc32(f"{kind}-{k}-{loss}".encode()))
    users = pd.DataFrame({"user_id": ["u"], "age": ["mid"]})
    items = pd.DataFrame(
        {"item_id": ["A", "B"], "cat": ["c1", "c2"], "tags": [["t", "a1", "a2"], ["t", "b1"]], "price": [2.0, 7.0]}
    )
    events = pd.DataFrame({"user_id": ["u"], "item_id": ["A"], "hour": [2]})
    schema = Schema(
        [
            Categorical("user_id", "user"),
            Categorical("age", "user"),
            Categorical("hour", "context"),
            Categorical("item_id", "item"),
            Categorical("cat", "item"),
            MultiCategorical("tags", "item"),
            Numeric("price", "item"),
        ]
    )
    schema.fit([users, items, events, pd.DataFrame({"price": [1.0, 3.0, 9.0]})])
    inter = Interactions(users, items, events, schema, negatives=negatives)
    n, F = schema.n_features, schema.n_fields
    f32 = lambda *shape: rng.normal(0.0, 0.4, size=shape).astype(np.float32)  # noqa: E731
    hyper = dict(loss=loss, learning_rate=LR, reg_linear=REG_LIN, reg_factors=REG_FAC, threads=1)
    bias, linear = float(f32(1)[0]), f32(n)
    if kind == "fm":
        v = f32(n, k)
        model = fmrecall.FM.from_weights({"bias": bias, "linear": linear, "factors": v}, n_fields=F, **hyper)
        p, aware = ref.make_params(bias, linear, v=v), ref.fm_aware(F)
    elif kind == "ffm":
        W = f32(n, F, k)
        model = fmrecall.FFM.from_weights({"bias": bias, "linear": linear, "factors": W}, **hyper)
        p, aware = ref.make_params(bias, linear, W=W), ref.ffm_aware(F)
    else:
        w = {
            "bias": bias,
            "linear": linear,
            "factors": f32(n, k),
            "field_factors": f32(n, F, k),
            "aware_row": rng.permutation(n).astype(np.int32),
        }
        side = kind.split("-")[1]
        model = fmrecall.HybridFM.from_weights(w, sides=schema.sides, field_aware=side, **hyper)
        p, aware = hybrid_ref_params(w), aware_flags(schema.sides.to_dict(), side, F)
    joined = events.merge(users, on="user_id").merge(items, on="item_id")
    pos = ref.dataset_row(schema.transform(joined), 0, n, F)
    neg = ref.dataset_row(
        schema.transform(joined.assign(item_id="B", cat="c2", tags=[["t", "b1"]], price=7.0)), 0, n, F
    )
    assert pos[1].size == 9 and neg[1].size == 8 and np.any(pos[2] != 1)  # real-valued price node
    return model, inter, p, aware, pos, neg


FACTORED = [("fm", 4), ("ffm", 4), ("ffm", 12), ("hybrid-item", 4), ("hybrid-query", 8)]


@pytest.mark.parametrize("kind, k", FACTORED, ids=[f"{a}-k{b}" for a, b in FACTORED])
def test_bpr_steps_match_reference(arch, copies, kind, k):
    """BPR (collect of the positive and the negative row into one accumulator, then apply): three
    pair steps, each one AdaGrad step of the summed gradient of log(1 + e^{-(s+ - s-)})."""
    model, inter, p, aware, pos, neg = _world(kind, k, "bpr")
    state = ref.fresh_state(p)
    for step in range(STEPS):
        want, state, loss, touched = ref.bpr_step(
            p, state, aware, pos, neg, lr=LR, reg_linear=REG_LIN, reg_factors=REG_FAC
        )
        model.partial_fit(inter)
        got = _params(kind, model)
        _assert_step(got, want, p, touched, what=f"step {step}")
        assert model.history_[-1]["train_loss"] == pytest.approx(loss, rel=1e-5, abs=1e-6)
        p = got


@pytest.mark.parametrize("kind, k", FACTORED, ids=[f"{a}-k{b}" for a, b in FACTORED])
def test_factored_logistic_steps_match_reference(arch, copies, kind, k):
    """Implicit Interactions, logistic loss, one negative: backward on the positive (label 1), then on
    the negative (label 0), each from the weights the previous step left; two epochs."""
    model, inter, p, aware, pos, neg = _world(kind, k, "logistic")
    state = ref.fresh_state(p)
    for epoch in range(2):
        old, losses = p, []
        for row, y in ((pos, 1.0), (neg, 0.0)):
            p, state, loss = ref.adagrad_step(
                p, state, aware, *row, y, loss="logistic", lr=LR, reg_linear=REG_LIN, reg_factors=REG_FAC
            )
            losses.append(loss)
        model.partial_fit(inter)
        got = _params(kind, model)
        touched = {
            key: None if t is None else t | u
            for (key, t), u in zip(
                ref.touched_mask(old, aware, *pos).items(), ref.touched_mask(old, aware, *neg).values()
            )
        }
        _assert_step(got, p, old, touched, what=f"epoch {epoch}")
        assert model.history_[-1]["train_loss"] == pytest.approx(np.mean(losses), rel=1e-5, abs=1e-6)
        p = got
