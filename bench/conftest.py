"""Shared fixtures of the benchmarks and the hook that writes bench/results.md.

    cd /work/main && PYTHONPATH=python python3 -m pytest bench -q --benchmark-only
    FMRECALL_BENCH_ROWS=100000 ... for a quick run (smaller data set, cached separately)
"""
from __future__ import annotations

import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import report  # noqa: E402
import synth  # noqa: E402


@pytest.fixture(scope="session")
def synth_file():
    """(path, meta) of the cached Criteo-shaped libffm file (generated on first use)."""
    path, meta = synth.ensure()
    report.record("data", "synth", meta)
    return path, meta


@pytest.fixture(scope="session")
def synth_data(synth_file):
    """(train, valid, meta): the file parsed once per session, split 90% / 10% (zero-copy)."""
    path, meta = synth_file
    ds = synth.load(path, meta)
    train, valid = synth.split_views(ds)
    return train, valid, meta


def pytest_sessionfinish(session, exitstatus):
    if report.recorded_this_session():
        report.render()
        tr = session.config.pluginmanager.get_plugin("terminalreporter")
        if tr is not None:
            tr.write_line(f"benchmark tables written to {os.path.relpath(report.RESULTS_MD)}")
