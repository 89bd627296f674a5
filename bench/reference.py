"""Plain-numpy per-row FFM / FM SGD: the reference the training benchmarks compare speed with.

Same rule as fmrecall's core (libffm's): logistic loss, kappa = σ(t) - y; every parameter the row
touches gets  g = kappa * dscore/dparam + l2 * param;  G += g²;  param -= eta * g / sqrt(G),
accumulators G starting at 1, all in float32, the gradients of one row taken from the weights
before that row's update. One row at a time, vectorised over the row's pairs with numpy.

The pair gather/scatter needs distinct fields per row (one-hot data, like the benchmark's); the
Criteo-shaped data always satisfies this (checked).
"""
from __future__ import annotations

from typing import Dict, Tuple

import numpy as np

F32 = np.float32


class _Base:
    def __init__(self, bias: float, linear: np.ndarray, learning_rate: float, reg_linear: float,
                 reg_factors: float) -> None:
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


class NumpyFFM(_Base):
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
        ia, ib = self._offdiag(j.size)          # ordered pairs a != b (each unordered pair twice)
        ja, fb = j[ia], f[ib]
        P = self.W[ja, fb]                       # w_{a, f(b)}      (m, k)
        Q = self.W[j[ib], f[ia]]                 # w_{b, f(a)}
        xx = (x[ia] * x[ib])[:, None]
        t = self.w0 + np.sum(self.w[j] * x) + F32(0.5) * np.sum(xx * P * Q)
        kappa = F32(1.0) / (F32(1.0) + np.exp(-t)) - y
        g = kappa * (xx * Q) + self.l2_fac * P   # d score / d w_{a,f(b)} = x_a x_b w_{b,f(a)}
        G = self.GW[ja, fb] + g * g
        self.GW[ja, fb] = G
        self.W[ja, fb] = P - self.eta * g / np.sqrt(G)
        self._linear_step(j, x, kappa)
        return float(np.logaddexp(0.0, t) - y * t)

    def weights(self):
        return {"bias": float(self.w0), "linear": self.w, "factors": self.W}


class NumpyFM(_Base):
    """v: (n_features, k) float32, pair (a, b) = <v_a, v_b> x_a x_b (sum trick)."""

    def __init__(self, bias, linear, factors, **hyper) -> None:
        super().__init__(bias, linear, **hyper)
        self.v = np.array(factors, dtype=F32)
        self.gv = np.ones_like(self.v)

    def _row(self, j, f, x, y) -> float:
        V = self.v[j]                            # (n, k)
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


def make(kind: str, n_features: int, n_fields: int, k: int, seed: int = 0, init_std: float = 0.05,
         **hyper):
    """A reference model with U(-a, a) factors (std init_std), zero linear weights and bias."""
    rng = np.random.default_rng(seed)
    a = F32(init_std * np.sqrt(3.0))
    shape = (n_features, n_fields, k) if kind == "ffm" else (n_features, k)
    factors = rng.uniform(-a, a, size=shape).astype(F32)
    linear = np.zeros(n_features, dtype=F32)
    cls = NumpyFFM if kind == "ffm" else NumpyFM
    return cls(0.0, linear, factors, **hyper)


def check_one_hot(ds, rows: np.ndarray) -> None:
    for r in rows:
        f = ds.fields[ds.indptr[r]:ds.indptr[r + 1]]
        if np.unique(f).size != f.size:
            raise ValueError(f"row {r} has a repeated field; the numpy reference needs one-hot rows")
