"""Shared pytest fixtures: real-data location, per-test random generator, the kernel instruction
sets (FMRECALL_ARCH) this CPU can run, frappe. Plain helpers live in helpers.py."""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import numpy as np
import pytest
from helpers import AVAILABLE_ARCHS, FRAPPE_FIELD_RANGES, REPO_ROOT, in_ci

import fmrecall


# ---------------------------------------------------------------------------- real data
@pytest.fixture(scope="session")
def data_dir() -> Path:
    """Directory of the shared real data sets ($FMRECALL_DATA, default ../shared/data)."""
    path = Path(os.environ.get("FMRECALL_DATA", REPO_ROOT.parent / "shared" / "data"))
    if not path.is_dir():
        msg = (
            f"real data directory {path} is missing: set FMRECALL_DATA to the shared data "
            f"directory (see shared/data/README.md)"
        )
        if in_ci():
            pytest.fail(msg)
        pytest.skip(msg)
    return path


# ---------------------------------------------------------------------------- kernel variants
@pytest.fixture(params=AVAILABLE_ARCHS)
def arch(request, monkeypatch) -> str:
    """Run the test with the kernels forced to each instruction set this CPU supports."""
    monkeypatch.setenv("FMRECALL_ARCH", request.param)
    assert fmrecall.best_arch() == request.param
    return request.param


@pytest.fixture(params=["auto", "on"])
def copies(request, monkeypatch) -> str:
    """Run a one-thread training test twice: on the model in place ("auto" on one thread) and through
    a thread's private copies of the hot parameters (FMRECALL_HOT=on; cpp/fmrecall/hot.h), which
    must give the same steps."""
    monkeypatch.setenv("FMRECALL_HOT", request.param)
    return request.param


# ---------------------------------------------------------------------------- random generator
@pytest.fixture
def rng(request) -> np.random.Generator:
    """A generator seeded from the test's node id: reproducible per test, different across tests."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


# ---------------------------------------------------------------------------- frappe
@pytest.fixture(scope="session")
def frappe_data(data_dir):
    """(train 80%, holdout 20%) of frappe, seeded split (the same as test_real_data.py)."""
    ds = fmrecall.Dataset.from_libsvm(data_dir / "frappe" / "frappe.validation.libfm", FRAPPE_FIELD_RANGES)
    return ds.holdout(0.8, seed=0)
