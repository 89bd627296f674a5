"""Seeded generator of Criteo-shaped click data with a planted field-aware model.

Shape (like the Criteo display-advertising logs, scaled to one machine):

* ``N`` rows (default 1,000,000; env ``FMRECALL_BENCH_ROWS`` overrides), 39 one-hot fields:
  13 "numeric bucket" fields of 30-100 values and 26 categorical fields whose vocabularies
  (Criteo's cardinality profile, capped) sum with the numeric ones to 600,000 global feature ids.
  Field ``f`` owns the contiguous id range ``[offset[f], offset[f] + size[f])``.
* Within a field, ids are drawn from a truncated power law P(rank r) ∝ r^-s (s in [1.1, 1.3] per
  field), and ranks are mapped to ids through a per-field random permutation, so popular ids are
  spread over the range instead of all being low.
* Labels are Bernoulli(σ(score)) with score from a **planted FFM** (k=4): w0 + Σ w_j +
  Σ_{i<j} <w_{i,f(j)}, w_{j,f(i)}>, small Gaussian weights, and w0 solved so that ~25% of rows
  are positive. As on real logs, ~15% of the field pairs interact strongly and the rest weakly
  (strength 0.1), and rare ids carry weaker effects than popular ones, so a good model can get
  most of the way from the base rate to the planted model's logloss (the floor). The planted
  scores are computed with plain numpy (never with fmrecall).

The libffm text goes to ``bench/.cache/criteo_synth_{N}.ffm`` (written by ``Dataset.to_libffm``)
with ``criteo_synth_{N}.json`` next to it: the planted ("floor") logloss and AUC on the last 10%
of rows, the base-rate logloss there, the positive rate, the sizes. Both are reused when present.
Split: first 90% of rows = train, last 10% = valid (``split_views``, zero-copy).

Run ``python bench/synth.py [N]`` to generate ahead of time.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Dict, Optional, Tuple

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
CACHE = os.path.join(HERE, ".cache")
VERSION = 3  # bump when the generator changes: cached files with another version are rebuilt

DEFAULT_ROWS = 1_000_000
SEED = 20240601
K_PLANTED = 4
N_NUMERIC = 13
N_CATEGORICAL = 26
N_FIELDS = N_NUMERIC + N_CATEGORICAL
TOTAL_FEATURES = 600_000
VALID_FRACTION = 0.10
TARGET_POSITIVE_RATE = 0.25
# Planted weight scales: linear std SIGMA_LIN, latent entries std SIGMA_FAC (before the rank and
# field-pair scaling below). Chosen so that the planted score has std ~1.25 (floor logloss ~0.46,
# base rate ~0.565 at 25% positives; Criteo models reach ~0.44 against ~0.57).
SIGMA_LIN = 0.12
SIGMA_FAC = 0.25
# Rare ids carry weaker effects: the planted weights of the id of popularity rank r (0-based, per
# field) are scaled by (1 + r / R0)^-POWER, so the label noise from ids seen a handful of times
# (unlearnable by any model) stays small, as on real logs.
RANK_SCALE_R0 = 100.0
RANK_SCALE_POWER = 0.5
PAIR_STRONG_FRACTION = 0.15
PAIR_WEAK = 0.1

# Criteo's 26 categorical cardinalities (Kaggle display-advertising set), large ones capped; the
# largest is then adjusted so that all 39 fields together have exactly TOTAL_FEATURES ids.
_CATEGORICAL_PROFILE = [
    1460,
    583,
    150_000,
    90_000,
    305,
    24,
    12517,
    633,
    3,
    60_000,
    5683,
    130_000,
    3194,
    27,
    14992,
    80_000,
    10,
    5652,
    2173,
    4,
    100_000,
    18,
    15,
    30_000,
    105,
    3000,
]


def rows_from_env() -> int:
    return int(os.environ.get("FMRECALL_BENCH_ROWS", DEFAULT_ROWS))


def field_sizes(seed: int = SEED) -> np.ndarray:
    rng = np.random.default_rng([seed, 1])
    numeric = rng.integers(30, 101, size=N_NUMERIC)
    cat = np.array(_CATEGORICAL_PROFILE, dtype=np.int64)
    cat[np.argmax(cat)] += TOTAL_FEATURES - numeric.sum() - cat.sum()
    sizes = np.concatenate([numeric, cat]).astype(np.int64)
    assert sizes.sum() == TOTAL_FEATURES and sizes.min() >= 1
    return sizes


def paths(n_rows: int) -> Tuple[str, str]:
    base = os.path.join(CACHE, f"criteo_synth_{n_rows}")
    return base + ".ffm", base + ".json"


def _power_law_ids(rng: np.random.Generator, n: int, size: int, s: float):
    """n draws of ids 0..size-1: rank r ~ r^-s (truncated), then a random rank -> id permutation.
    Returns (ids, perm) with perm[rank] = id."""
    cdf = np.cumsum(np.arange(1, size + 1, dtype=np.float64) ** -s)
    cdf /= cdf[-1]
    rank = np.searchsorted(cdf, rng.random(n), side="right")
    np.minimum(rank, size - 1, out=rank)
    perm = rng.permutation(size)
    return perm[rank], perm


def planted_scores(ids: np.ndarray, lin: np.ndarray, W: np.ndarray, bias: float = 0.0, chunk: int = 4096) -> np.ndarray:
    """Plain-numpy FFM scores of one-hot rows ``ids`` (n, F), feature ids[:, f] in field f.

    score = bias + Σ_f lin[ids_f] + Σ_{a<b} <W[ids_a, b], W[ids_b, a]>,  W: (n_features, F, k).
    """
    n, F = ids.shape
    out = np.empty(n, dtype=np.float64)
    diag = np.arange(F)
    for s in range(0, n, chunk):
        idx = ids[s : s + chunk]
        G = W[idx]  # (r, F, F, k): G[r, a, b] = w_{ids_a, b}
        full = np.einsum("rabk,rbak->r", G, G, optimize=False, dtype=np.float64)
        self_pairs = np.einsum("rak,rak->r", G[:, diag, diag], G[:, diag, diag], dtype=np.float64)
        out[s : s + chunk] = 0.5 * (full - self_pairs) + lin[idx].sum(axis=1, dtype=np.float64)
    return out + bias


def _solve_bias(scores: np.ndarray, rate: float) -> float:
    lo, hi = -20.0, 20.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if np.mean(1.0 / (1.0 + np.exp(-(scores + mid)))) > rate:
            hi = mid
        else:
            lo = mid
    return 0.5 * (lo + hi)


def _logloss(y: np.ndarray, t: np.ndarray) -> float:
    return float(np.mean(np.logaddexp(0.0, t) - y * t))


def _auc(y: np.ndarray, s: np.ndarray) -> float:
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(s.size)
    ranks[order] = np.arange(1, s.size + 1)
    n_pos = y.sum()
    n_neg = y.size - n_pos
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def generate_arrays(n_rows: int, seed: int = SEED):
    """(ids (n, 39) int32 global feature ids, labels float32, meta dict). No fmrecall involved."""
    t0 = time.perf_counter()
    sizes = field_sizes(seed)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    exps = np.random.default_rng([seed, 2]).uniform(1.1, 1.3, size=N_FIELDS)
    ids = np.empty((n_rows, N_FIELDS), dtype=np.int32)
    scale = np.empty(TOTAL_FEATURES, dtype=np.float32)  # planted weight scale by popularity rank
    for f in range(N_FIELDS):
        rng = np.random.default_rng([seed, 3, f])
        fid, perm = _power_law_ids(rng, n_rows, int(sizes[f]), float(exps[f]))
        ids[:, f] = offsets[f] + fid
        scale[offsets[f] + perm] = (1.0 + np.arange(sizes[f]) / RANK_SCALE_R0) ** -RANK_SCALE_POWER
    t_ids = time.perf_counter() - t0

    rng = np.random.default_rng([seed, 4])
    lin = (rng.standard_normal(TOTAL_FEATURES, dtype=np.float32) * SIGMA_LIN).astype(np.float32)
    W = rng.standard_normal((TOTAL_FEATURES, N_FIELDS, K_PLANTED), dtype=np.float32)
    W *= np.float32(SIGMA_FAC)
    lin *= scale
    # field-pair strengths: a few strong pairs (like real logs), the rest weak; W[i, b] for a
    # feature i of field a is scaled by sqrt(c_ab), so the pair (a, b) term scales by c_ab.
    strong = np.triu(rng.random((N_FIELDS, N_FIELDS)) < PAIR_STRONG_FRACTION, 1)
    c = np.where(strong | strong.T, 1.0, PAIR_WEAK)
    for a in range(N_FIELDS):
        lo, hi = offsets[a], offsets[a] + sizes[a]
        W[lo:hi] *= np.sqrt(c[a]).astype(np.float32)[None, :, None] * scale[lo:hi, None, None]
    raw = planted_scores(ids, lin, W)
    del W
    bias = _solve_bias(raw, TARGET_POSITIVE_RATE)
    t = raw + bias
    labels = (np.random.default_rng([seed, 5]).random(n_rows) < 1.0 / (1.0 + np.exp(-t))).astype(np.float32)

    cut = train_rows(n_rows)
    y_va = labels[cut:].astype(np.float64)
    p_tr = float(labels[:cut].mean())
    base_t = np.full(y_va.size, np.log(p_tr / (1.0 - p_tr)))
    meta = {
        "version": VERSION,
        "seed": seed,
        "rows": n_rows,
        "n_fields": N_FIELDS,
        "n_features": TOTAL_FEATURES,
        "field_sizes": sizes.tolist(),
        "zipf_exponents": exps.round(4).tolist(),
        "k_planted": K_PLANTED,
        "sigma_linear": SIGMA_LIN,
        "sigma_factors": SIGMA_FAC,
        "planted_bias": bias,
        "rank_scale": [RANK_SCALE_R0, RANK_SCALE_POWER],
        "strong_field_pairs": int(strong.sum()),
        "weak_pair_strength": PAIR_WEAK,
        "train_rows": cut,
        "valid_rows": n_rows - cut,
        "positive_rate": float(labels.mean()),
        "positive_rate_train": p_tr,
        "positive_rate_valid": float(y_va.mean()),
        "planted_score_std": float(raw.std()),
        "floor_logloss_valid": _logloss(y_va, t[cut:]),  # the planted model itself
        "floor_auc_valid": _auc(y_va, t[cut:]),
        "base_rate_logloss_valid": _logloss(y_va, base_t),  # constant = train positive rate
        "distinct_features_used": int(np.unique(ids).size),
        "seconds_ids": round(t_ids, 2),
    }
    meta["seconds_total"] = round(time.perf_counter() - t0, 2)
    return ids, labels, meta


def train_rows(n_rows: int) -> int:
    return n_rows - int(round(VALID_FRACTION * n_rows))


def ensure(n_rows: Optional[int] = None, verbose: bool = True) -> Tuple[str, Dict]:
    """Path of the cached libffm file for ``n_rows`` rows (generated if missing) and its meta."""
    from fmrecall import Dataset  # only to write the file (its fast C++ writer)

    n_rows = rows_from_env() if n_rows is None else int(n_rows)
    ffm, js = paths(n_rows)
    if os.path.exists(ffm) and os.path.exists(js):
        with open(js) as f:
            meta = json.load(f)
        if meta.get("version") == VERSION and meta.get("file_bytes") == os.path.getsize(ffm):
            return ffm, meta
    os.makedirs(CACHE, exist_ok=True)
    if verbose:
        print(f"[synth] generating {n_rows:,} rows -> {ffm}", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    ids, labels, meta = generate_arrays(n_rows)
    n = ids.shape[0]
    ds = Dataset(
        np.arange(0, N_FIELDS * n + 1, N_FIELDS, dtype=np.int64),
        np.tile(np.arange(N_FIELDS, dtype=np.int32), n),
        ids.reshape(-1),
        None,
        labels,
        n_features=TOTAL_FEATURES,
        n_fields=N_FIELDS,
    )
    tmp = ffm + f".tmp{os.getpid()}"
    t1 = time.perf_counter()
    ds.to_libffm(tmp)
    meta["seconds_write"] = round(time.perf_counter() - t1, 2)
    os.replace(tmp, ffm)
    meta["file_bytes"] = os.path.getsize(ffm)
    meta["seconds_total"] = round(time.perf_counter() - t0, 2)
    with open(js + ".tmp", "w") as f:
        json.dump(meta, f, indent=1)
    os.replace(js + ".tmp", js)
    if verbose:
        print(
            f"[synth] done in {meta['seconds_total']} s: {meta['file_bytes'] / 1e6:.0f} MB, positives "
            f"{meta['positive_rate']:.3f}, floor logloss {meta['floor_logloss_valid']:.4f}, base-rate "
            f"{meta['base_rate_logloss_valid']:.4f}",
            file=sys.stderr,
            flush=True,
        )
    return ffm, meta


def load(path: str, meta: Dict):
    """Dataset.from_libffm with the generator's n_features / n_fields (ids unseen in the sample
    still get weights, as in a real vocabulary)."""
    from fmrecall import Dataset

    return Dataset.from_libffm(path, n_features=meta["n_features"], n_fields=meta["n_fields"])


def split_views(ds, n_train: Optional[int] = None):
    """(train, valid): first 90% / last 10% of rows as zero-copy views of ``ds``'s arrays."""
    from fmrecall import Dataset

    cut = train_rows(ds.n_rows) if n_train is None else n_train
    e = int(ds.indptr[cut])
    vals = ds.values

    def part(lo_row, hi_row, lo, hi):
        return Dataset(
            ds.indptr[lo_row : hi_row + 1] - lo if lo else ds.indptr[: hi_row + 1],
            ds.fields[lo:hi],
            ds.features[lo:hi],
            None if vals is None else vals[lo:hi],
            ds.labels[lo_row:hi_row],
            n_features=ds.n_features,
            n_fields=ds.n_fields,
        )

    return part(0, cut, 0, e), part(cut, ds.n_rows, e, ds.nnz)


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else None
    path, meta = ensure(n)
    print(json.dumps({k: v for k, v in meta.items() if k not in ("field_sizes", "zipf_exponents")}, indent=1))
