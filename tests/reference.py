"""A deliberately plain numpy reference of the fmrecall math (DESIGN.md §2-§4), in float64.

Nothing here is fast or clever: scores are sums over explicit node pairs, gradients are sums
over explicit ordered pairs, and one AdaGrad step is written out parameter by parameter. The
library's kernels use the FM sum trick, per-slot accumulators and float32 SIMD lanes; this file
uses none of that, so agreement between the two is evidence that both are right.

Parameters are a dict ``{"bias": float, "linear": (n,), "v": (n, k) or None, "W": (n, F, k) or None}``
and ``aware`` is a bool array (F,) saying which fields are field-aware. A node p is the triple
(field f_p, feature j_p, value x_p). Its vector towards a partner in field b is

    vec(p, b) = W[j_p, b]   if aware[f_p]       (one vector per field, libffm convention)
              = v[j_p]      otherwise            (one vector, FM rule)

and a pair (p, q) scores x_p x_q <vec(p, f_q), vec(q, f_p)>. This gives all three rules at once:
both single -> <v_i, v_j>; both aware -> <w_{i,f(j)}, w_{j,f(i)}>; i single, j aware ->
<v_i, w_{j,f(i)}>. FM = no aware field, FFM = every field aware, the hybrid = one side aware.
"""

from __future__ import annotations

import copy
from typing import Dict, Tuple

import numpy as np

Params = Dict[str, object]


# ---------------------------------------------------------------------------- parameters
def make_params(bias: float, linear, v=None, W=None) -> Params:
    return {
        "bias": float(bias),
        "linear": np.array(linear, dtype=np.float64),
        "v": None if v is None else np.array(v, dtype=np.float64),
        "W": None if W is None else np.array(W, dtype=np.float64),
    }


def fm_aware(n_fields: int) -> np.ndarray:
    return np.zeros(n_fields, dtype=bool)


def ffm_aware(n_fields: int) -> np.ndarray:
    return np.ones(n_fields, dtype=bool)


def dense_single(w: dict) -> np.ndarray:
    """The single vectors of FM / HybridFM weights as one (n, k) row per feature: factors[single_row[j]],
    or zeros where single_row[j] = -1 (no vector: such a feature's pairs vanish). Weights without
    "single_row" (the dense layout) are returned as they are."""
    if w.get("single_row") is None:
        return np.asarray(w["factors"])
    rows = np.asarray(w["single_row"])
    dense = np.zeros((rows.size, np.asarray(w["factors"]).shape[1]), np.float32)
    dense[rows >= 0] = np.asarray(w["factors"])[rows[rows >= 0]]
    return dense


def params_from_model_weights(kind: str, w: dict) -> Params:
    """Reference params from ``model.weights()`` of an FM ("fm") or FFM ("ffm")."""
    if kind == "fm":
        return make_params(w["bias"], w["linear"], v=dense_single(w))
    if kind == "ffm":
        return make_params(w["bias"], w["linear"], W=w["factors"])
    raise ValueError(kind)


def fresh_state(params: Params) -> Params:
    """AdaGrad accumulators, every one initialised to 1.0 (libffm convention)."""
    return {
        "bias": 1.0,
        "linear": np.ones_like(params["linear"]),
        "v": None if params["v"] is None else np.ones_like(params["v"]),
        "W": None if params["W"] is None else np.ones_like(params["W"]),
    }


# ---------------------------------------------------------------------------- rows
def value_scale(rows) -> float:
    """normalize="mean": the constant c every value is multiplied by, c = 1 / sqrt(mean ||x||^2) over
    the training rows (a list of (fields, features, values or None)); pairs then carry c^2 (the
    libffm 1/||x||^2 of one-hot rows with a fixed field count, but one constant for all rows)."""
    sq = [np.sum(np.square(np.asarray(v, dtype=np.float64))) if v is not None else float(len(j)) for _, j, v in rows]
    return float(1.0 / np.sqrt(np.mean(sq)))


def row_nodes(fields, features, values, n_features: int, n_fields: int, normalize: bool = False, scale: float = 1.0):
    """The row's in-model nodes (f, j, x) as float64 / int64 arrays.

    Nodes with feature >= n_features, field >= n_fields or value 0 are dropped; with `normalize`
    every remaining value is multiplied by 1 / ||x||_2 over the remaining nodes, otherwise by the
    model's constant `scale` (value_scale).
    """
    fields = np.asarray(fields, dtype=np.int64)
    features = np.asarray(features, dtype=np.int64)
    if values is None:
        values = np.ones(features.size, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    keep = (features >= 0) & (features < n_features) & (fields >= 0) & (fields < n_fields) & (values != 0.0)
    f, j, x = fields[keep], features[keep], values[keep]
    if normalize and x.size:
        x = x / np.sqrt(np.sum(x * x))
    elif not normalize:
        x = x * scale
    return f, j, x


def dataset_row(ds, r: int, n_features: int, n_fields: int, normalize: bool = False):
    """row_nodes of row r of an fmrecall.Dataset."""
    s, e = int(ds.indptr[r]), int(ds.indptr[r + 1])
    vals = None if ds.values is None else ds.values[s:e]
    return row_nodes(ds.fields[s:e], ds.features[s:e], vals, n_features, n_fields, normalize)


# ---------------------------------------------------------------------------- score
def _vec(params: Params, aware: np.ndarray, j: int, own_field: int, partner_field: int) -> np.ndarray:
    if aware[own_field]:
        return params["W"][j, partner_field]
    return params["v"][j]


def score(params: Params, aware: np.ndarray, f, j, x) -> float:
    """w0 + sum_p w_{j_p} x_p + sum_{p<q} x_p x_q <vec(p, f_q), vec(q, f_p)>."""
    t = params["bias"]
    for p in range(len(j)):
        t += params["linear"][j[p]] * x[p]
    for p in range(len(j)):
        for q in range(p + 1, len(j)):
            a = _vec(params, aware, j[p], f[p], f[q])
            b = _vec(params, aware, j[q], f[q], f[p])
            t += x[p] * x[q] * float(np.dot(a, b))
    return float(t)


def score_terms_abs(params: Params, aware: np.ndarray, f, j, x) -> float:
    """|w0| + sum |w_j x_j| + sum |pair terms|: the scale float32 rounding errors are relative to."""
    t = abs(params["bias"])
    for p in range(len(j)):
        t += abs(params["linear"][j[p]] * x[p])
    for p in range(len(j)):
        for q in range(p + 1, len(j)):
            a = _vec(params, aware, j[p], f[p], f[q])
            b = _vec(params, aware, j[q], f[q], f[p])
            t += float(np.sum(np.abs(x[p] * x[q] * a * b)))
    return float(t)


def score_grad(params: Params, aware: np.ndarray, f, j, x) -> Tuple[Params, Params]:
    """(d score / d theta for every parameter, touched masks).

    Touched: the bias; linear weights of the row's features; v_j of every single node (even one
    with no partner: it still gets its L2 step); W[j_p, b] of an aware node p only if some other
    node q != p of the row is in field b.
    """
    g = {
        "bias": 1.0,
        "linear": np.zeros_like(params["linear"]),
        "v": None if params["v"] is None else np.zeros_like(params["v"]),
        "W": None if params["W"] is None else np.zeros_like(params["W"]),
    }
    touched = {
        "bias": True,
        "linear": np.zeros(params["linear"].shape, dtype=bool),
        "v": None if params["v"] is None else np.zeros(params["v"].shape[0], dtype=bool),
        "W": None if params["W"] is None else np.zeros(params["W"].shape[:2], dtype=bool),
    }
    n = len(j)
    for p in range(n):
        g["linear"][j[p]] += x[p]
        touched["linear"][j[p]] = True
        if not aware[f[p]]:
            touched["v"][j[p]] = True
    for p in range(n):
        for q in range(n):
            if p == q:
                continue
            partner = _vec(params, aware, j[q], f[q], f[p])
            if aware[f[p]]:
                g["W"][j[p], f[q]] += x[p] * x[q] * partner
                touched["W"][j[p], f[q]] = True
            else:
                g["v"][j[p]] += x[p] * x[q] * partner
    # expand the per-vector masks to per-entry masks
    if touched["v"] is not None:
        touched["v"] = np.repeat(touched["v"][:, None], params["v"].shape[1], axis=1)
    if touched["W"] is not None:
        touched["W"] = np.repeat(touched["W"][:, :, None], params["W"].shape[2], axis=2)
    return g, touched


# ---------------------------------------------------------------------------- losses
def _positive(y: float) -> float:
    return 1.0 if y > 0 else 0.0


def loss_value(t: float, y: float, loss: str) -> float:
    """The loss as reported: logistic log(1+e^t) - y t (y in {0,1}, y>0 positive); squared (t-y)^2."""
    if loss == "logistic":
        return float(np.logaddexp(0.0, t) - _positive(y) * t)
    if loss == "squared":
        return float((t - y) ** 2)
    raise ValueError(loss)


def objective(t: float, y: float, loss: str) -> float:
    """The function whose derivative the optimiser uses: as reported for logistic, ½(t-y)² for squared."""
    if loss == "logistic":
        return loss_value(t, y, loss)
    if loss == "squared":
        return 0.5 * float((t - y) ** 2)
    raise ValueError(loss)


def loss_grad(t: float, y: float, loss: str) -> float:
    """kappa = d objective / d t: sigmoid(t) - y for logistic, t - y for squared."""
    if loss == "logistic":
        return float(1.0 / (1.0 + np.exp(-t)) - _positive(y))
    if loss == "squared":
        return float(t - y)
    raise ValueError(loss)


def sigmoid(t):
    return 1.0 / (1.0 + np.exp(-np.asarray(t, dtype=np.float64)))


# ---------------------------------------------------------------------------- optimiser
def adagrad_apply(
    params: Params, state: Params, grad: Params, touched: Params, *, lr: float, reg_linear: float, reg_factors: float
) -> Tuple[Params, Params]:
    """One AdaGrad step of every touched parameter, given d objective / d theta (`grad`, L2 not
    included): (new params, new state). Untouched parameters and accumulators are left as they are.

    For every touched theta, from the weights *before* the update:
        g = grad + lambda * theta   (lambda: reg_linear, reg_factors, 0 for the bias)
        G += g^2;  theta -= lr * g / sqrt(G)
    """
    new = copy.deepcopy(params)
    st = copy.deepcopy(state)
    if touched["bias"]:
        g = grad["bias"]
        st["bias"] += g * g
        new["bias"] = params["bias"] - lr * g / np.sqrt(st["bias"])
    for name, lam in (("linear", reg_linear), ("v", reg_factors), ("W", reg_factors)):
        if params[name] is None:
            continue
        m = touched[name]
        g = grad[name] + lam * params[name]
        st[name][m] += g[m] ** 2
        new[name][m] = params[name][m] - lr * g[m] / np.sqrt(st[name][m])
    return new, st


def _scaled(grad: Params, kappa: float) -> Params:
    return {name: None if g is None else kappa * g for name, g in grad.items()}


def adagrad_step(
    params: Params,
    state: Params,
    aware: np.ndarray,
    f,
    j,
    x,
    y: float,
    *,
    loss: str,
    lr: float,
    reg_linear: float,
    reg_factors: float,
):
    """One row of libffm-style AdaGrad: (new params, new state, reported loss of the row).

    kappa = d loss / d score at the weights before the update; grad = kappa * d score / d theta;
    then adagrad_apply on every parameter the row touches.
    """
    t = score(params, aware, f, j, x)
    kappa = loss_grad(t, y, loss)
    ds, touched = score_grad(params, aware, f, j, x)
    new, st = adagrad_apply(
        params, state, _scaled(ds, kappa), touched, lr=lr, reg_linear=reg_linear, reg_factors=reg_factors
    )
    return new, st, loss_value(t, y, loss)


def bpr_step(
    params: Params, state: Params, aware: np.ndarray, pos, neg, *, lr: float, reg_linear: float, reg_factors: float
):
    """One BPR pair as one AdaGrad step: (new params, new state, loss, touched masks).

    pos, neg: (f, j, x) of the positive and the negative row. loss = log(1 + e^{-d}),
    d = score(pos) - score(neg); d loss / d theta = kappa (d s+ / d theta - d s- / d theta) with
    kappa = -sigmoid(-d), summed over both rows before the step, so a parameter the two rows share
    gets one step; touched = touched by either row (the bias: gradient 0, an exact no-op).
    """
    d = score(params, aware, *pos) - score(params, aware, *neg)
    kappa = -1.0 / (1.0 + np.exp(d))
    gp, tp = score_grad(params, aware, *pos)
    gn, tn = score_grad(params, aware, *neg)
    grad = {name: None if gp[name] is None else kappa * (gp[name] - gn[name]) for name in gp}
    touched = {name: None if tp[name] is None else tp[name] | tn[name] for name in tp}
    new, st = adagrad_apply(params, state, grad, touched, lr=lr, reg_linear=reg_linear, reg_factors=reg_factors)
    return new, st, float(np.logaddexp(0.0, -d)), touched


def adagrad_gradient(delta, lr: float) -> np.ndarray:
    """The gradient g of one AdaGrad step from its update delta = -lr g / sqrt(1 + g^2)
    (accumulator starting at 1): g = r / sqrt(1 - r^2), r = -delta / lr."""
    r = -np.asarray(delta, dtype=np.float64) / lr
    assert np.all(np.abs(r) < 0.97), "step too close to lr: g not recoverable"
    return r / np.sqrt(1.0 - r * r)


def touched_mask(params: Params, aware: np.ndarray, f, j, x) -> Params:
    return score_grad(params, aware, f, j, x)[1]


# ---------------------------------------------------------------------------- checks
def finite_difference_grad(params: Params, aware: np.ndarray, f, j, x, y: float, loss: str, h: float = 1e-6) -> Params:
    """Central differences of objective(score(theta)) w.r.t. every parameter entry (float64)."""
    out = {"bias": None, "linear": None, "v": None, "W": None}

    def obj(p):
        return objective(score(p, aware, f, j, x), y, loss)

    p = copy.deepcopy(params)
    p["bias"] = params["bias"] + h
    up = obj(p)
    p["bias"] = params["bias"] - h
    down = obj(p)
    out["bias"] = (up - down) / (2 * h)
    for name in ("linear", "v", "W"):
        if params[name] is None:
            continue
        arr = params[name]
        grad = np.zeros_like(arr)
        for idx in np.ndindex(arr.shape):
            p = copy.deepcopy(params)
            p[name][idx] = arr[idx] + h
            up = obj(p)
            p[name][idx] = arr[idx] - h
            down = obj(p)
            grad[idx] = (up - down) / (2 * h)
        out[name] = grad
    return out


def fm_score_sum_trick(params: Params, j, x) -> float:
    """FM score by the O(nk) identity of DESIGN.md §2 (an independent check of `score`)."""
    v = params["v"][j] * x[:, None]
    inter = 0.5 * (np.sum(np.sum(v, axis=0) ** 2) - np.sum(v * v))
    return float(params["bias"] + np.dot(params["linear"][j], x) + inter)


# ---------------------------------------------------------------------------- vectorised per-row SGD
# The benchmarks' speed baseline (bench/test_train.py times it against fmrecall): the same AdaGrad
# rule, all in float32, one row at a time, vectorised over the row's pairs with numpy. Unlike
# everything above it needs one-hot rows (distinct fields) and logistic loss. tests/test_kernels.py
# checks that it makes the same updates as the plain reference above and as fmrecall.
F32 = np.float32


class _SgdBase:
    def __init__(
        self, bias: float, linear: np.ndarray, learning_rate: float, reg_linear: float, reg_factors: float
    ) -> None:
        self.w0 = F32(bias)
        self.g0 = F32(1.0)
        self.w = np.array(linear, dtype=F32)
        self.gw = np.ones_like(self.w)
        self.eta = F32(learning_rate)
        self.l2_lin = F32(reg_linear)
        self.l2_fac = F32(reg_factors)

    def _linear_step(self, j: np.ndarray, x: np.ndarray, kappa: np.float32) -> None:
        self.g0 += kappa * kappa
        self.w0 -= self.eta * kappa / np.sqrt(self.g0)
        wj = self.w[j]
        g = kappa * x + self.l2_lin * wj
        G = self.gw[j] + g * g
        self.gw[j] = G
        self.w[j] = wj - self.eta * g / np.sqrt(G)

    def train_rows(self, ds, rows: np.ndarray) -> float:
        """One SGD step per row of ``ds`` in the order ``rows``; returns the summed logloss."""
        indptr, fields, feats = ds.indptr, ds.fields, ds.features
        vals, labels = ds.values, ds.labels
        total = 0.0
        for r in rows:
            s, e = int(indptr[r]), int(indptr[r + 1])
            x = np.ones(e - s, dtype=F32) if vals is None else vals[s:e]
            total += self._row(feats[s:e], fields[s:e], x, F32(1.0) if labels[r] > 0 else F32(0.0))
        return total


class NumpyFFM(_SgdBase):
    """W: (n_features, n_fields, k) float32, pair (a, b) = <W[j_a, f_b], W[j_b, f_a]> x_a x_b."""

    def __init__(self, bias, linear, factors, **hyper) -> None:
        super().__init__(bias, linear, **hyper)
        self.W = np.array(factors, dtype=F32)
        self.GW = np.ones_like(self.W)
        self._pairs: Dict[int, Tuple[np.ndarray, np.ndarray]] = {}

    def _offdiag(self, n: int):
        p = self._pairs.get(n)
        if p is None:
            a, b = np.nonzero(~np.eye(n, dtype=bool))
            p = self._pairs[n] = (a, b)
        return p

    def _row(self, j, f, x, y) -> float:
        ia, ib = self._offdiag(j.size)  # ordered pairs a != b (each unordered pair twice)
        ja, fb = j[ia], f[ib]
        P = self.W[ja, fb]  # w_{a, f(b)}      (m, k)
        Q = self.W[j[ib], f[ia]]  # w_{b, f(a)}
        xx = (x[ia] * x[ib])[:, None]
        t = self.w0 + np.sum(self.w[j] * x) + F32(0.5) * np.sum(xx * P * Q)
        kappa = F32(1.0) / (F32(1.0) + np.exp(-t)) - y
        g = kappa * (xx * Q) + self.l2_fac * P  # d score / d w_{a,f(b)} = x_a x_b w_{b,f(a)}
        G = self.GW[ja, fb] + g * g
        self.GW[ja, fb] = G
        self.W[ja, fb] = P - self.eta * g / np.sqrt(G)
        self._linear_step(j, x, kappa)
        return float(np.logaddexp(0.0, t) - y * t)

    def weights(self):
        return {"bias": float(self.w0), "linear": self.w, "factors": self.W}


class NumpyFM(_SgdBase):
    """v: (n_features, k) float32, pair (a, b) = <v_a, v_b> x_a x_b (sum trick)."""

    def __init__(self, bias, linear, factors, **hyper) -> None:
        super().__init__(bias, linear, **hyper)
        self.v = np.array(factors, dtype=F32)
        self.gv = np.ones_like(self.v)

    def _row(self, j, f, x, y) -> float:
        V = self.v[j]  # (n, k)
        xv = x[:, None] * V
        S = xv.sum(axis=0)
        t = self.w0 + np.sum(self.w[j] * x) + F32(0.5) * (S @ S - np.sum(xv * xv))
        kappa = F32(1.0) / (F32(1.0) + np.exp(-t)) - y
        g = kappa * (x[:, None] * (S[None, :] - xv)) + self.l2_fac * V
        G = self.gv[j] + g * g
        self.gv[j] = G
        self.v[j] = V - self.eta * g / np.sqrt(G)
        self._linear_step(j, x, kappa)
        return float(np.logaddexp(0.0, t) - y * t)

    def weights(self):
        return {"bias": float(self.w0), "linear": self.w, "factors": self.v}


def make_sgd(kind: str, n_features: int, n_fields: int, k: int, seed: int = 0, init_std: float = 0.05, **hyper):
    """A NumpyFFM ("ffm") / NumpyFM ("fm") with U(-a, a) factors (std init_std), zero linear weights
    and bias."""
    rng = np.random.default_rng(seed)
    a = F32(init_std * np.sqrt(3.0))
    shape = (n_features, n_fields, k) if kind == "ffm" else (n_features, k)
    factors = rng.uniform(-a, a, size=shape).astype(F32)
    linear = np.zeros(n_features, dtype=F32)
    cls = NumpyFFM if kind == "ffm" else NumpyFM
    return cls(0.0, linear, factors, **hyper)


def check_one_hot(ds, rows: np.ndarray) -> None:
    """Raise unless every listed row of ``ds`` has distinct fields (what the vectorised SGD needs)."""
    for r in rows:
        f = ds.fields[ds.indptr[r] : ds.indptr[r + 1]]
        if np.unique(f).size != f.size:
            raise ValueError(f"row {r} has a repeated field; the numpy reference needs one-hot rows")
