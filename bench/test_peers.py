"""Peers: what fmrecall is compared with (numpy sgemm, the numpy reference SGD, LightFM).

* test_numpy_sgemm     — numpy ``Q @ P.T`` (1,000 queries) at the raw and the padded dimension:
                         the sgemm rate the exact index is compared with (bench/test_recall_exact.py).
* test_numpy_reference — the plain-numpy per-row SGD (bench/numpy_sgd.py) on a small slice: the rate
                         bench/test_train.py's test_epoch compares fmrecall's training with.
* test_lightfm         — LightFM WARP vs fmrecall FM on MovieLens-100K u1 (when lightfm imports).

    PYTHONPATH=python python3 -m pytest bench/test_peers.py --benchmark-only -q
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import common  # noqa: E402
import numpy_sgd  # noqa: E402
import recall_data as rd  # noqa: E402
import report  # noqa: E402
from recall_bench import NUMPY_RATES, ROUNDS, grid, numpy_threads, pad_dim, pad_to  # noqa: E402


# ------------------------------------------------------------------------------------- numpy sgemm
@pytest.mark.parametrize("name,n", grid())
def test_numpy_sgemm(benchmark, R, name, n):
    P, q = R.P[name][:n], R.q[name]
    d = P.shape[1]
    dp = pad_dim(d)
    Pp, qp = pad_to(P, dp), pad_to(q, dp)
    n_q = q.shape[0]
    chunk = int(max(1, min(n_q, (512 << 20) // (4 * n))))
    buf = np.empty((chunk, n), dtype=np.float32)

    def run(qq, PP):
        for s in range(0, n_q, chunk):
            c = min(chunk, n_q - s)
            np.matmul(qq[s : s + c], PP.T, out=buf[:c])

    t0 = time.perf_counter()
    run(qp, Pp)
    rounds = min(ROUNDS, 2) if time.perf_counter() - t0 > 2.0 else ROUNDS
    with common.ForeignLoad() as load:
        benchmark.pedantic(run, args=(qp, Pp), rounds=rounds, iterations=1)
        padded = n_q / benchmark.stats.stats.min
        raw = n_q / common.best_of(lambda: run(q, P), rounds) if dp != d else padded
    NUMPY_RATES[(name, n)] = {"numpy_qps_raw": raw, "numpy_qps_padded": padded, "dim": d, "dim_padded": dp}
    row = {
        "model": rd.LABELS[name],
        "n_items": n,
        "dim": d,
        "dim_padded": dp,
        "queries": n_q,
        "numpy_qps_padded": padded,
        "numpy_qps_raw": raw,
        "gflops_padded": 2.0 * n_q * n * dp / (n_q / padded) / 1e9,
        "gflops_raw": 2.0 * n_q * n * d / (n_q / raw) / 1e9,
        "numpy_threads": numpy_threads(),
        "chunk_queries": chunk,
        "other_load": load.share,
    }
    benchmark.extra_info.update(row)
    report.record("recall_numpy", f"{name}-{n}", row)


# ------------------------------------------------------------------------------------- numpy reference SGD
@pytest.mark.parametrize("kind,k", common.MODELS, ids=[f"{kind}-k{k}" for kind, k in common.MODELS])
def test_numpy_reference(benchmark, synth_data, kind, k):
    train, valid, meta = synth_data
    ref, rows = numpy_sgd.numpy_reference(kind, k, train)
    benchmark.pedantic(ref.train_rows, args=(train, rows), rounds=1, iterations=1)
    secs = benchmark.stats.stats.min
    numpy_sgd.RATES[(kind, k)] = rows.size / secs
    benchmark.extra_info.update(rows=int(rows.size), rows_per_s=rows.size / secs)
    report.record(
        "numpy_reference",
        f"{kind}-k{k}",
        {"model": common.model_label(kind, k), "rows": int(rows.size), "seconds": secs, "rows_per_s": rows.size / secs},
    )


# ------------------------------------------------------------------------------------- LightFM
ML_PATH = os.path.join(os.environ.get("FMRECALL_DATA", "/work/shared/data"), "ml-100k")


def test_lightfm(benchmark):
    lightfm = pytest.importorskip("lightfm")
    if not os.path.exists(os.path.join(ML_PATH, "u1.base")):
        pytest.skip(f"MovieLens-100K not found at {ML_PATH}")
    import scipy.sparse as sp

    import fmrecall.experiments.movielens as fml
    from fmrecall.datasets import movielens100k
    from fmrecall.metrics import recall_at_k

    t0 = time.perf_counter()
    ours = fml.run(ML_PATH, models=("FM",), cold=False, verbose=False)
    ours_s = time.perf_counter() - t0
    ml = movielens100k(ML_PATH, "u1")
    exp = fml.Experiment(ml, fml.default_schema(ml))  # same users, exclusions, relevant sets
    n_users, n_items = int(ml.users.user_id.max()), int(ml.items.item_id.max())
    tr = ml.train
    X = sp.coo_matrix(
        (np.ones(len(tr), np.float32), (tr.user_id.to_numpy() - 1, tr.item_id.to_numpy() - 1)), shape=(n_users, n_items)
    ).tocsr()
    X.data[:] = 1.0
    users = exp.queries.user_id.to_numpy() - 1
    rows = {}

    def fit_eval(label, model, epochs, **fit_kw):
        t = time.perf_counter()
        model.fit(X, epochs=epochs, num_threads=2, **fit_kw)
        fit_s = time.perf_counter() - t
        uf, itf = fit_kw.get("user_features"), fit_kw.get("item_features")
        scores = np.stack(
            [
                model.predict(int(u), np.arange(n_items), user_features=uf, item_features=itf, num_threads=2)
                for u in users
            ]
        )
        scores[X[users].nonzero()] = -np.inf  # exclude the user's train items
        top = np.argsort(-scores, axis=1)[:, :100] + 1
        rows[label] = {f"recall@{k}": recall_at_k(top, exp.relevant, k) for k in (10, 50, 100)}
        rows[label]["fit_seconds"] = fit_s

    def run_all():
        fit_eval(
            "LightFM WARP (ids only)",
            lightfm.LightFM(no_components=64, loss="warp", learning_rate=0.05, random_state=0),
            30,
        )
        # with side features: user demographics, item genres / decade (+ identity features)
        from sklearn.preprocessing import OneHotEncoder

        u = ml.users.sort_values("user_id")
        uf = sp.hstack(
            [
                sp.identity(n_users, format="csr"),
                OneHotEncoder().fit_transform(u[["age", "gender", "occupation", "zip"]].astype(str)),
            ]
        ).tocsr()
        it = ml.items.sort_values("item_id")
        g = sp.csr_matrix(np.array([[1.0 if gg in gs else 0.0 for gg in fml.GENRES] for gs in it.genres], np.float32))
        itf = sp.hstack(
            [sp.identity(n_items, format="csr"), g, OneHotEncoder().fit_transform(it[["year"]].astype(str))]
        ).tocsr()
        fit_eval(
            "LightFM WARP (ids + side features)",
            lightfm.LightFM(no_components=64, loss="warp", learning_rate=0.05, random_state=0),
            30,
            user_features=uf,
            item_features=itf,
        )

    benchmark.pedantic(run_all, rounds=1, iterations=1)
    ours_rows = {k: {m: v[m] for m in ("recall@10", "recall@50", "recall@100")} for k, v in ours["rows"].items()}
    row = {
        "split": "u1",
        "test_users": int(len(users)),
        "lightfm": rows,
        "fmrecall": ours_rows,
        "fmrecall_fit_seconds": ours["fit_seconds"],
        "fmrecall_run_seconds": ours_s,
        "lightfm_version": getattr(lightfm, "__version__", "?"),
    }
    benchmark.extra_info.update({"lightfm": rows})
    report.record("recall_lightfm", "u1", row)
