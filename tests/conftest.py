"""Shared fixtures and helpers: real-data location, random field-aware datasets and weights,
and the kernel instruction sets (FMRECALL_ARCH) this CPU can run."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path
from typing import Optional

import numpy as np
import pytest

import fmrecall

REPO_ROOT = Path(__file__).resolve().parent.parent
ARCH_NAMES = ("generic", "avx2", "avx512")


# ---------------------------------------------------------------------------- real data
def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """Directory of the shared real data sets ($FMRECALL_DATA, default ../shared/data)."""
    path = Path(os.environ.get("FMRECALL_DATA", REPO_ROOT.parent / "shared" / "data"))
    if not path.is_dir():
        msg = (f"real data directory {path} is missing: set FMRECALL_DATA to the shared data "
               f"directory (see shared/data/README.md)")
        if _in_ci():
            pytest.fail(msg)
        pytest.skip(msg)
    return path


# ---------------------------------------------------------------------------- kernel variants
def _available_archs():
    """Instruction sets the kernels can be forced to on this CPU (FMRECALL_ARCH is read per call)."""
    old = os.environ.get("FMRECALL_ARCH")
    found = []
    try:
        for name in ARCH_NAMES:
            os.environ["FMRECALL_ARCH"] = name
            if fmrecall.best_arch() == name:
                found.append(name)
    finally:
        if old is None:
            os.environ.pop("FMRECALL_ARCH", None)
        else:
            os.environ["FMRECALL_ARCH"] = old
    return found


AVAILABLE_ARCHS = _available_archs()


@pytest.fixture(params=AVAILABLE_ARCHS)
def arch(request, monkeypatch) -> str:
    """Run the test with the kernels forced to each instruction set this CPU supports."""
    monkeypatch.setenv("FMRECALL_ARCH", request.param)
    assert fmrecall.best_arch() == request.param
    return request.param


# ---------------------------------------------------------------------------- random data
def feature_field(n_features: int, n_fields: int) -> np.ndarray:
    """The field every synthetic feature belongs to (feature j -> field j % n_fields)."""
    return np.arange(n_features) % n_fields


def random_rows(rng: np.random.Generator, n_rows: int, n_features: int, n_fields: int, *,
                max_per_field: int = 3, field_prob: float = 0.8, real_values: bool = True,
                negative_values: bool = True):
    """CSR arrays of random rows: several fields per row, multi-valued fields (up to
    `max_per_field` distinct features of one field), nodes shuffled so fields are out of order,
    real (optionally negative) values. Every feature appears at most once per row and every row
    has at least one node."""
    owner = feature_field(n_features, n_fields)
    pools = [np.flatnonzero(owner == f) for f in range(n_fields)]
    indptr = [0]
    fields, features = [], []
    for _ in range(n_rows):
        rf, rj = [], []
        for f in range(n_fields):
            if rng.random() > field_prob or pools[f].size == 0:
                continue
            cnt = int(rng.integers(1, min(max_per_field, pools[f].size) + 1))
            rj.extend(rng.choice(pools[f], size=cnt, replace=False).tolist())
            rf.extend([f] * cnt)
        if not rj:  # at least one node per row (rows without nodes have their own tests)
            f = int(rng.integers(0, n_fields))
            rj.append(int(rng.choice(pools[f])))
            rf.append(f)
        order = rng.permutation(len(rj))
        fields.extend(np.asarray(rf, dtype=np.int64)[order].tolist())
        features.extend(np.asarray(rj, dtype=np.int64)[order].tolist())
        indptr.append(len(features))
    nnz = len(features)
    values = None
    if real_values:
        values = rng.uniform(0.2, 1.5, size=nnz)
        if negative_values:
            values *= np.where(rng.random(nnz) < 0.2, -1.0, 1.0)
        values = values.astype(np.float32)
    return (np.asarray(indptr, dtype=np.int64), np.asarray(fields, dtype=np.int32),
            np.asarray(features, dtype=np.int32), values)


def random_labels(rng: np.random.Generator, n_rows: int, loss: str = "logistic",
                  minus_one: bool = False) -> np.ndarray:
    if loss == "logistic":
        y = rng.integers(0, 2, size=n_rows).astype(np.float32)
        if minus_one:
            y = 2 * y - 1
        return y
    return rng.normal(0.0, 1.0, size=n_rows).astype(np.float32)


def random_dataset(rng: np.random.Generator, n_rows: int = 50, n_features: int = 40, n_fields: int = 5, *,
                   loss: str = "logistic", labels: bool = True, **kw) -> fmrecall.Dataset:
    indptr, fields, features, values = random_rows(rng, n_rows, n_features, n_fields, **kw)
    y = random_labels(rng, n_rows, loss) if labels else None
    return fmrecall.Dataset(indptr, fields, features, values, y, n_features=n_features, n_fields=n_fields)


def one_row_dataset(fields, features, values, label: Optional[float], *, n_features: int,
                    n_fields: int) -> fmrecall.Dataset:
    fields = np.asarray(fields, dtype=np.int32)
    indptr = np.array([0, fields.size], dtype=np.int64)
    vals = None if values is None else np.asarray(values, dtype=np.float32)
    y = None if label is None else np.array([label], dtype=np.float32)
    return fmrecall.Dataset(indptr, fields, np.asarray(features, dtype=np.int32), vals, y,
                            n_features=n_features, n_fields=n_fields)


def random_weights(rng: np.random.Generator, kind: str, n_features: int, n_fields: int, k: int,
                   scale: float = 0.3) -> dict:
    """Weights in the layout of FM.weights() ("fm") or FFM.weights() ("ffm"), float32."""
    shape = (n_features, k) if kind == "fm" else (n_features, n_fields, k)
    return {
        "bias": float(np.float32(rng.normal(0.0, scale))),
        "linear": rng.normal(0.0, scale, size=n_features).astype(np.float32),
        "factors": rng.normal(0.0, scale, size=shape).astype(np.float32),
    }


MODEL_CLASSES = {"fm": fmrecall.FM, "ffm": fmrecall.FFM}


def model_from_weights(kind: str, weights: dict, n_fields: int, **hyper):
    cls = MODEL_CLASSES[kind]
    if kind == "fm":
        hyper.setdefault("n_fields", n_fields)
    return cls.from_weights(weights, **hyper)


@pytest.fixture
def rng(request) -> np.random.Generator:
    """A generator seeded from the test's node id: reproducible per test, different across tests."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


# ---------------------------------------------------------------------------- isolation
def run_isolated(code: str, timeout: float = 120.0):
    """Run `code` in a fresh interpreter (same sys.path and environment) and return the JSON value
    it prints on its last stdout line. A crash (e.g. a segfault in the C++ core) fails the calling
    test with the exit status and stderr instead of killing the whole pytest run."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env=env)
    if proc.returncode != 0:
        pytest.fail(f"subprocess exited with status {proc.returncode} "
                    f"({'signal ' + str(-proc.returncode) if proc.returncode < 0 else 'error'}):\n"
                    f"{proc.stderr[-3000:]}", pytrace=False)
    lines = proc.stdout.strip().splitlines()
    return json.loads(lines[-1]) if lines else None
