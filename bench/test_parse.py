"""libffm parsing speed: `Dataset.from_libffm` (C++, single-threaded) vs a pure-Python parser.

* test_parse_full            — the whole Criteo-shaped file (bench/synth.py), MB/s.
* test_parse_python_baseline — a str.split parser on a slice (first ~16 MB of lines) of the same
                               file, checked against fmrecall's result, and fmrecall on the same
                               slice timed in the same process -> ratio of MB/s.

    PYTHONPATH=python python3 -m pytest bench/test_parse.py --benchmark-only
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import common  # noqa: E402
import report  # noqa: E402

from fmrecall import Dataset  # noqa: E402

SLICE_BYTES = int(os.environ.get("FMRECALL_BENCH_PARSE_SLICE_MB", 16)) * 10**6
PARSE_ROUNDS = 3

_fmrecall_full = {}


def parse_python(path):
    """Pure-Python libffm parser: str.split into lists, then numpy arrays."""
    labels, indptr, fields, feats, vals = [], [0], [], [], []
    with open(path) as f:
        for line in f:
            toks = line.split()
            if not toks:
                continue
            labels.append(float(toks[0]))
            for tok in toks[1:]:
                a, b, c = tok.split(":")
                fields.append(int(a))
                feats.append(int(b))
                vals.append(float(c))
            indptr.append(len(feats))
    return (
        np.array(indptr, dtype=np.int64),
        np.array(fields, dtype=np.int32),
        np.array(feats, dtype=np.int32),
        np.array(vals, dtype=np.float32),
        np.array(labels, dtype=np.float32),
    )


@pytest.fixture(scope="module")
def slice_file(synth_file):
    """The first whole lines of the data file, about SLICE_BYTES, as a file of its own (cached)."""
    path, meta = synth_file
    out = os.path.splitext(path)[0] + f".slice{SLICE_BYTES // 10**6}M.ffm"
    if not os.path.exists(out):
        with open(path, "rb") as f:
            head = f.read(SLICE_BYTES)
        head = head[: head.rfind(b"\n") + 1]
        tmp = out + f".tmp{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(head)
        os.replace(tmp, out)
    return out


def test_parse_full(benchmark, synth_file):
    path, meta = synth_file
    size = os.path.getsize(path)
    with common.ForeignLoad() as load:
        ds = benchmark.pedantic(Dataset.from_libffm, args=(path,), rounds=PARSE_ROUNDS, iterations=1, warmup_rounds=1)
    assert ds.n_rows == meta["rows"] and ds.nnz == meta["rows"] * meta["n_fields"]
    secs = benchmark.stats.stats.min
    row = {
        "what": "fmrecall `Dataset.from_libffm`, whole file",
        "bytes": size,
        "seconds": secs,
        "mb_per_s": size / 1e6 / secs,
        "rows": ds.n_rows,
        "other_load": load.share,
    }
    _fmrecall_full.update(row)
    benchmark.extra_info.update(row)
    report.record("parse", "fmrecall_full", row)


def test_parse_python_baseline(benchmark, slice_file):
    size = os.path.getsize(slice_file)
    with common.ForeignLoad() as load:
        indptr, fields, feats, vals, labels = benchmark.pedantic(
            parse_python, args=(slice_file,), rounds=1, iterations=1, warmup_rounds=0
        )
    py_secs = benchmark.stats.stats.min
    # same result as fmrecall's parser
    ds = Dataset.from_libffm(slice_file)
    np.testing.assert_array_equal(ds.indptr, indptr)
    np.testing.assert_array_equal(ds.fields, fields)
    np.testing.assert_array_equal(ds.features, feats)
    np.testing.assert_array_equal(ds.values_or_ones(), vals)
    np.testing.assert_array_equal(ds.labels, labels)
    # fmrecall on the same slice, same process
    with common.ForeignLoad() as load_fm:
        fm_secs = common.best_of(lambda: Dataset.from_libffm(slice_file), 5)
    py_rate, fm_rate = size / 1e6 / py_secs, size / 1e6 / fm_secs
    py_row = {
        "what": "pure Python `str.split`, slice",
        "bytes": size,
        "seconds": py_secs,
        "mb_per_s": py_rate,
        "other_load": load.share,
    }
    fm_row = {
        "what": "fmrecall `Dataset.from_libffm`, same slice",
        "bytes": size,
        "seconds": fm_secs,
        "mb_per_s": fm_rate,
        "ratio_vs_python": fm_rate / py_rate,
        "other_load": load_fm.share,
    }
    benchmark.extra_info.update(python_mb_per_s=py_rate, fmrecall_mb_per_s=fm_rate, ratio=fm_rate / py_rate)
    report.record("parse", "python_slice", py_row)
    report.record("parse", "fmrecall_slice", fm_row)
    if _fmrecall_full:  # whole-file rate of this session against the Python rate on the slice
        full = dict(_fmrecall_full, ratio_vs_python=_fmrecall_full["mb_per_s"] / py_rate)
        report.record("parse", "fmrecall_full", full)
