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


_R: dict = {}  # "state": the live R; "last_user": node id of the last test that needs it


@pytest.fixture(scope="session")
def R(synth_file):
    """The retrieval benchmarks' shared state (bench/recall_bench.py State: models, item catalogue,
    vectors, queries, exact truth, cached Recallers), built once for test_peers.py,
    test_recall_exact.py, test_recall_ann.py and test_split_builder.py, and freed after the last
    test that uses it (pytest_runtest_teardown below), not at the end of the session."""
    import recall_bench  # faiss and the models: only when a retrieval benchmark runs

    st = recall_bench.new_state(synth_file)
    _R["state"] = st
    yield st
    _R.pop("state", None)
    recall_bench.close_state(st)


# Files that share R run in this order (the order of the former bench/test_recall.py: the numpy
# rate before exact search, exact before the ANN indexes that free its 1M-item copy, ...); the
# other files keep pytest's order around them.
MODULE_ORDER = ["test_peers.py", "test_recall_exact.py", "test_recall_ann.py", "test_split_builder.py"]


@pytest.hookimpl(trylast=True)  # after -k / -m deselection
def pytest_collection_modifyitems(session, config, items):
    def rank(item):
        name = os.path.basename(str(item.fspath))
        return MODULE_ORDER.index(name) if name in MODULE_ORDER else -1

    ranked = sorted((it for it in items if rank(it) >= 0), key=rank)  # stable: order within a file kept
    slots = iter(ranked)
    items[:] = [next(slots) if rank(it) >= 0 else it for it in items]
    users = [it.nodeid for it in items if "R" in getattr(it, "fixturenames", ())]
    _R["last_user"] = users[-1] if users else None


def pytest_runtest_teardown(item, nextitem):
    """Free R's models, vectors and Recallers once its last user has run (gigabytes at 1M items),
    so that the benchmarks after it (test_train.py) run without them, as they did when R was the
    module fixture of one bench/test_recall.py."""
    if item.nodeid == _R.get("last_user") and "state" in _R:
        import recall_bench

        recall_bench.close_state(_R.pop("state"))


def pytest_sessionfinish(session, exitstatus):
    if report.recorded_this_session():
        report.render()
        tr = session.config.pluginmanager.get_plugin("terminalreporter")
        if tr is not None:
            tr.write_line(f"benchmark tables written to {os.path.relpath(report.RESULTS_MD)}")
