"""The plain-numpy per-row SGD (reference.NumpyFFM / NumpyFM in tests/reference.py) that training is
compared with: bench/test_peers.py times it as a benchmark, bench/test_train.py's test_epoch divides
by its rate. tests/test_kernels.py checks that it makes the same updates as fmrecall (so the ratio
compares like with like)."""

from __future__ import annotations

import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)
TESTS = os.path.join(os.path.dirname(HERE), "tests")  # reference.py: the numpy SGD baseline
if TESTS not in sys.path:
    sys.path.append(TESTS)

import common  # noqa: E402
import reference  # noqa: E402

RATES = {}  # (kind, k) -> rows/s of the numpy reference, measured once per session


REF_HYPER = {k: common.HYPER[k] for k in ("learning_rate", "reg_linear", "reg_factors")}


def numpy_reference(kind, k, train):
    """(reference model, rows) ready to time: full-size tables (all n_features ids), random init."""
    rows = np.arange(min(common.NUMPY_ROWS, train.n_rows))
    reference.check_one_hot(train, rows)
    ref = reference.make_sgd(
        kind, train.n_features, train.n_fields, k, seed=0, init_std=common.HYPER["init_std"], **REF_HYPER
    )
    return ref, rows


def numpy_rate(kind, k, train):
    """rows/s of the numpy reference (measured here if test_numpy_reference did not run)."""
    if (kind, k) not in RATES:
        ref, rows = numpy_reference(kind, k, train)
        t0 = time.perf_counter()
        ref.train_rows(train, rows)
        RATES[(kind, k)] = rows.size / (time.perf_counter() - t0)
    return RATES[(kind, k)]
