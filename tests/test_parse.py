"""Text parsers: Dataset.from_libffm / Dataset.from_libsvm, contents and error reporting."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from helpers import FRAPPE_FIELD_RANGES

import fmrecall

Dataset = fmrecall.Dataset


def _write(tmp_path, text, name="data.txt", binary=False):
    path = tmp_path / name
    if binary:
        path.write_bytes(text)
    else:
        path.write_bytes(text.encode("utf-8"))
    return path


# ---------------------------------------------------------------------------- libffm contents
def test_libffm_contents(tmp_path):
    text = (
        "1 0:3:0.5 2:7:1.25 1:4:-2\n"  # out-of-order fields
        "\n"  # blank line skipped
        "-1 1:4:1 1:5:3e-1 1:6:1\t0:2:1\n"  # multi-valued field 1, tab separator
        "   \n"  # whitespace-only line skipped
        "0.75 2:9:+4\n"  # real label, explicit '+'
        "0\n"  # a row without nodes
        "1 0:0:1"  # no trailing newline
    )
    ds = Dataset.from_libffm(_write(tmp_path, text))
    assert ds.n_rows == 5
    np.testing.assert_array_equal(ds.indptr, [0, 3, 7, 8, 8, 9])
    np.testing.assert_array_equal(ds.fields, [0, 2, 1, 1, 1, 1, 0, 2, 0])
    np.testing.assert_array_equal(ds.features, [3, 7, 4, 4, 5, 6, 2, 9, 0])
    np.testing.assert_array_equal(ds.values, np.array([0.5, 1.25, -2, 1, 0.3, 1, 1, 4, 1], np.float32))
    np.testing.assert_array_equal(ds.labels, np.array([1, -1, 0.75, 0, 1], np.float32))
    assert (ds.n_features, ds.n_fields) == (10, 3)


def test_libffm_crlf_and_all_ones_drops_values(tmp_path):
    text = "1 0:1:1 1:2:1.0\r\n\r\n0 1:3:1\r\n-1 0:0:1e0 2:5:1\r\n"
    ds = Dataset.from_libffm(_write(tmp_path, text))
    assert ds.values is None
    np.testing.assert_array_equal(ds.indptr, [0, 2, 3, 5])
    np.testing.assert_array_equal(ds.features, [1, 2, 3, 0, 5])
    np.testing.assert_array_equal(ds.fields, [0, 1, 1, 0, 2])
    np.testing.assert_array_equal(ds.labels, [1, 0, -1])
    np.testing.assert_array_equal(ds.values_or_ones(), np.ones(5, np.float32))


def test_libffm_explicit_sizes(tmp_path):
    path = _write(tmp_path, "1 0:3:1\n0 1:1:1\n")
    ds = Dataset.from_libffm(path, n_features=50, n_fields=6)
    assert (ds.n_features, ds.n_fields) == (50, 6)
    with pytest.raises(ValueError, match="n_features"):
        Dataset.from_libffm(path, n_features=3)


def test_libffm_largest_index(tmp_path):
    ds = Dataset.from_libffm(_write(tmp_path, "1 2147483647:2147483647:1\n"))
    assert ds.features[0] == 2**31 - 1 and ds.fields[0] == 2**31 - 1
    assert ds.n_features == 2**31


# ---------------------------------------------------------------------------- libsvm contents
def test_libsvm_ranges(tmp_path):
    text = "1 0:1 5:0.5 3:2\r\n\r\n-1 4:1\r\n"
    ds = Dataset.from_libsvm(_write(tmp_path, text), [(0, 3), (3, 5), (5, 6)])
    np.testing.assert_array_equal(ds.indptr, [0, 3, 4])
    np.testing.assert_array_equal(ds.features, [0, 5, 3, 4])
    np.testing.assert_array_equal(ds.fields, [0, 2, 1, 1])
    np.testing.assert_array_equal(ds.values, np.array([1, 0.5, 2, 1], np.float32))
    np.testing.assert_array_equal(ds.labels, [1, -1])
    assert ds.n_fields == 3


def test_libsvm_field_array_and_one_hot(tmp_path):
    text = "1 0:1 2:1\n0 3:1\n"
    fmap = np.array([1, -1, 0, 1], dtype=np.int32)
    ds = Dataset.from_libsvm(_write(tmp_path, text), fmap)
    assert ds.values is None
    np.testing.assert_array_equal(ds.fields, [1, 0, 1])
    np.testing.assert_array_equal(ds.features, [0, 2, 3])


def test_libsvm_range_list_equals_field_array(tmp_path):
    text = "1 0:1 6:2 4:1\n0 2:1 5:1\n"
    path = _write(tmp_path, text)
    a = Dataset.from_libsvm(path, [(0, 3), (3, 5), (5, 7)])
    b = Dataset.from_libsvm(path, np.array([0, 0, 0, 1, 1, 2, 2]))
    for name in ("indptr", "fields", "features", "values", "labels"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


# ---------------------------------------------------------------------------- file-level errors
@pytest.mark.parametrize("parser", ["libffm", "libsvm"])
def test_missing_file_and_directory(tmp_path, parser):
    parse = (lambda p: Dataset.from_libffm(p)) if parser == "libffm" else (lambda p: Dataset.from_libsvm(p, [(0, 10)]))
    with pytest.raises(FileNotFoundError):
        parse(tmp_path / "nope.txt")
    with pytest.raises(IsADirectoryError):
        parse(tmp_path)


@pytest.mark.parametrize("parser", ["libffm", "libsvm"])
@pytest.mark.parametrize(
    "text", ["", "\n", "\n\n   \n", "\r\n\r\n", " \t "], ids=["empty", "nl", "blanks", "crlf", "spaces"]
)
def test_empty_file(tmp_path, parser, text):
    path = _write(tmp_path, text)
    parse = (lambda p: Dataset.from_libffm(p)) if parser == "libffm" else (lambda p: Dataset.from_libsvm(p, [(0, 10)]))
    with pytest.raises(ValueError, match=re.escape(f"{path}: empty file (no rows)")):
        parse(path)


# ---------------------------------------------------------------------------- line-level errors
GOOD_FFM = "1 0:1:1 1:2:0.5"
LIBFFM_ERRORS = {
    "bad-field": "1 x:2:1",
    "bad-feature": "1 0:y:1",
    "bad-value": "1 0:2:abc",
    "value-trailing-junk": "1 0:2:1.5x",
    "missing-colon": "1 0:2",
    "missing-value": "1 0:2:",
    "only-feature": "1 5",
    "empty-field": "1 :2:1",
    "bad-label": "yes 0:1:1",
    "label-with-colon": "1:0 0:1:1",
    "nan-label": "nan 0:1:1",
    "inf-label": "inf 0:1:1",
    "nan-value": "1 0:1:nan",
    "inf-value": "1 0:1:inf",
    "neg-inf-value": "1 0:1:-inf",
    "overflow-value": "1 0:1:1e39",
    "neg-field": "1 -1:2:1",
    "neg-feature": "1 0:-2:1",
    "field-2^31": "1 2147483648:2:1",
    "feature-2^31": "1 0:2147483648:1",
    "feature-huge": "1 0:99999999999999999999:1",
    "two-signs-label": "+-1 0:1:1",
    "two-plus-label": "++1 0:1:1",
    "two-signs-value": "1 0:1:+-1",
    "lone-plus-value": "1 0:1:+",
    "underflow-then-junk": "1 0:1:1e-50junk",
    "deep-underflow-then-junk": "1 0:1:1e-400x",
    "neg-overflow-value": "1 0:1:-1e39",
    "huge-exponent-value": "1 0:1:1e99999",
    "hex-value": "1 0:1:0x10",
}


@pytest.mark.parametrize("name", sorted(LIBFFM_ERRORS))
@pytest.mark.parametrize("eol", ["\n", "\r\n"], ids=["lf", "crlf"])
def test_libffm_error_names_path_and_line(tmp_path, name, eol):
    # the bad line is line 5: two good lines, two blank lines (counted), then the bad one
    lines = [GOOD_FFM, "", GOOD_FFM, "", LIBFFM_ERRORS[name], GOOD_FFM]
    path = _write(tmp_path, eol.join(lines) + eol)
    with pytest.raises(ValueError, match=re.escape(f"{path}:5:")):
        Dataset.from_libffm(path)


def test_libffm_error_on_first_and_last_line(tmp_path):
    path = _write(tmp_path, "1 0:1:x\n1 0:1:1\n")
    with pytest.raises(ValueError, match=re.escape(f"{path}:1:")):
        Dataset.from_libffm(path)
    path = _write(tmp_path, "1 0:1:1\n\n\n1 0:1:1 0:1:nan", name="last.txt")
    with pytest.raises(ValueError, match=re.escape(f"{path}:4:")):
        Dataset.from_libffm(path)


GOOD_SVM = "1 0:1 4:0.5"
LIBSVM_ERRORS = {
    "beyond-all-ranges": "1 0:1 9:1",
    "in-gap": "1 3:1",  # ranges [0,3) and [4,9): feature 3 belongs to no field
    "missing-colon": "1 2",
    "bad-value": "1 2:zz",
    "nan-value": "1 2:NaN",
    "inf-value": "1 2:inf",
    "bad-label": "pos 2:1",
    "neg-feature": "1 -2:1",
    "feature-2^31": "1 2147483648:1",
    "bad-feature": "1 a:1",
    "two-signs-label": "+-1 2:1",
    "underflow-then-junk": "1 2:1e-50junk",
}


@pytest.mark.parametrize("name", sorted(LIBSVM_ERRORS))
def test_libsvm_error_names_path_and_line(tmp_path, name):
    lines = [GOOD_SVM, GOOD_SVM, "", LIBSVM_ERRORS[name], GOOD_SVM]
    path = _write(tmp_path, "\r\n".join(lines) + "\r\n")
    with pytest.raises(ValueError, match=re.escape(f"{path}:4:")):
        Dataset.from_libsvm(path, [(0, 3), (4, 9)])


def test_large_file_crosses_read_chunks(tmp_path):
    """~23 MB (more than a 16 MiB read buffer): counts and line numbers must stay exact."""
    n = 300_000
    line = "1 0:123456:0.5 1:234567:0.25 2:345678:0.125 3:456789:1 4:567890:1 5:678901:2"  # 79 chars
    rows = [line] * n
    rows[n // 3] = ""  # a blank line in the middle still counts for line numbers
    body = "\n".join(rows) + "\n"
    assert len(body) > (1 << 24) + (1 << 22)
    path = _write(tmp_path, body)
    ds = Dataset.from_libffm(path)
    assert ds.n_rows == n - 1 and ds.nnz == 6 * (n - 1)
    np.testing.assert_array_equal(ds.features[-6:], [123456, 234567, 345678, 456789, 567890, 678901])
    bad = _write(tmp_path, body + "1 0:1:oops\n", name="bad.txt")
    with pytest.raises(ValueError, match=re.escape(f"{bad}:{n + 1}:")):
        Dataset.from_libffm(bad)


# ---------------------------------------------------------------------------- frappe
def test_frappe_parses(data_dir):
    ds = Dataset.from_libsvm(data_dir / "frappe" / "frappe.validation.libfm", FRAPPE_FIELD_RANGES)
    assert ds.n_rows == 57_722
    assert ds.nnz == 10 * 57_722
    assert ds.values is None
    assert ds.n_fields == 10
    np.testing.assert_array_equal(np.diff(ds.indptr), 10)
    # one feature per field, in field order, inside that field's range
    fields = ds.fields.reshape(-1, 10)
    np.testing.assert_array_equal(fields, np.tile(np.arange(10), (ds.n_rows, 1)))
    starts = np.array([r[0] for r in FRAPPE_FIELD_RANGES])
    ends = np.array([r[1] for r in FRAPPE_FIELD_RANGES])
    feats = ds.features.reshape(-1, 10)
    assert np.all((feats >= starts) & (feats < ends))
    assert int((ds.labels == 1).sum()) == 19_063 and int((ds.labels == -1).sum()) == 38_659


# ---------------------------------------------------------------------------- numbers: underflow
def test_underflow_reads_as_zero_overflow_is_an_error(tmp_path):
    """The documented rule: below float32's smallest subnormal reads as 0 (however deep), above its
    maximum is an error; subnormals themselves are kept."""
    path = _write(tmp_path, "1e-400 0:1:1e-50 0:2:1e-400 0:3:-1e-99999 0:4:1e-40 0:5:+2.5\n")
    ds = Dataset.from_libffm(path)
    np.testing.assert_array_equal(ds.labels, [0])
    np.testing.assert_array_equal(ds.values, np.array([0, 0, 0, 1e-40, 2.5], np.float32))
    assert ds.values[3] > 0
    for text in ("1 0:1:1e39\n", "1 0:1:3.5e38\n", "1e39 0:1:1\n"):
        with pytest.raises(ValueError, match=re.escape(f"{path}:1:") + ".*out of float range"):
            Dataset.from_libffm(_write(tmp_path, text))


def test_two_signs_named_with_path_and_line(tmp_path):
    path = _write(tmp_path, "1 0:1:1\n+-1 0:1:1\n")
    with pytest.raises(ValueError, match=re.escape(f"{path}:2: bad label (two signs) in token '+-1'")):
        Dataset.from_libffm(path)


# ---------------------------------------------------------------------------- bytes that are not UTF-8
@pytest.mark.parametrize("parser", ["libffm", "libsvm"])
def test_non_utf8_token_is_a_value_error_naming_path_and_line(tmp_path, parser):
    bad = b"1 0:1:\xff\xfe" if parser == "libffm" else b"1 2:\xc3\x28"
    good = b"1 0:1:1" if parser == "libffm" else b"1 2:1"
    path = _write(tmp_path, good + b"\n" + good + b"\n" + bad + b"\n", binary=True)
    with pytest.raises(ValueError) as err:
        if parser == "libffm":
            Dataset.from_libffm(path)
        else:
            Dataset.from_libsvm(path, [(0, 10)])
    assert not isinstance(err.value, UnicodeError)
    assert type(err.value) is fmrecall._core.InputError
    assert str(err.value).startswith(f"{path}:3: bad value in token ")
    assert "\\x" in str(err.value)


# ---------------------------------------------------------------------------- line length cap
@pytest.mark.parametrize("mmap", [False, True], ids=["memory", "mmap"])
def test_line_longer_than_16_mib_names_path_and_line(tmp_path, mmap):
    long_line = b"1 " + b"0:1:1 " * ((16 << 20) // 6 + 1)
    path = _write(tmp_path, b"1 0:1:1\n\n" + long_line + b"\n1 0:1:1\n", binary=True)
    with pytest.raises(ValueError, match=re.escape(f"{path}:3: line longer than 16 MiB")):
        Dataset.from_libffm(path, mmap=mmap, cache_dir=tmp_path / "cache")
    # also without a final newline (the whole file one line)
    path = _write(tmp_path, long_line, name="one.txt", binary=True)
    with pytest.raises(ValueError, match=re.escape(f"{path}:1: line longer than 16 MiB")):
        Dataset.from_libffm(path)


# ---------------------------------------------------------------------------- endless inputs, Ctrl-C
def _run_child(code: str, timeout: float = 60.0) -> str:
    """Runs `code` in a fresh interpreter (a hang fails the test instead of hanging it)."""
    env = dict(os.environ)
    pkg = os.path.dirname(os.path.dirname(os.path.abspath(fmrecall.__file__)))
    env["PYTHONPATH"] = pkg + os.pathsep + env.get("PYTHONPATH", "")
    res = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=timeout, env=env
    )
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


@pytest.mark.skipif(not hasattr(os, "mkfifo") or not os.path.exists("/dev/zero"), reason="POSIX only")
def test_fifo_and_dev_zero_are_refused_quickly(tmp_path):
    """/dev/zero never ends and a FIFO blocks: both are ValueErrors naming the path, in Python and in
    the C++ parser itself (which opens without blocking and checks the file type first)."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    out = _run_child(
        f"""
        import fmrecall
        from fmrecall import _core
        D = fmrecall.Dataset
        calls = [lambda p: D.from_libffm(p), lambda p: D.from_libsvm(p, [(0, 10)]),
                 lambda p: D.from_libffm(p, mmap=True, cache_dir={str(tmp_path / "c")!r}),
                 lambda p: D.from_libffm([{str(tmp_path / "ok.txt")!r}, p]),
                 _core.parse_libffm, lambda p: _core.parse_libsvm(p, [0]),
                 lambda p: _core.stream_libffm(p, print)]
        open({str(tmp_path / "ok.txt")!r}, "w").write("1 0:1:1\\n")
        for path in ("/dev/zero", {str(fifo)!r}):
            for call in calls:
                try:
                    call(path)
                except ValueError as e:
                    assert type(e) in (ValueError, _core.InputError), type(e)
                    assert str(e).startswith(path + ": not a regular file"), str(e)
                else:
                    raise AssertionError("accepted " + path)
        print("ok")
    """,
        timeout=30,
    )
    assert out.strip() == "ok"


def test_ctrl_c_stops_a_long_parse(tmp_path):
    """SIGINT while the C++ parser runs (GIL released) raises KeyboardInterrupt within one 16 MiB
    chunk instead of at the end; an interrupted cache build leaves no partial cache behind."""
    out = _run_child(
        f"""
        import os, signal, threading, time
        import fmrecall
        signal.signal(signal.SIGINT, signal.default_int_handler)  # ignored when started in the background
        path = {str(tmp_path / "big.ffm")!r}
        cache = {str(tmp_path / "cache")!r}
        line = b"1 " + b" ".join(b"%d:%d:1" % (f, 1000 + f) for f in range(39)) + b"\\n"
        open(path, "wb").write(line * ((64 << 20) // len(line)))
        t0 = time.perf_counter()
        fmrecall.Dataset.from_libffm(path)
        full = time.perf_counter() - t0
        for mmap in (False, True):
            delay = 0.2 * full
            for attempt in range(3):
                timer = threading.Timer(delay, os.kill, (os.getpid(), signal.SIGINT))
                entered = False
                t0 = time.perf_counter()
                try:
                    timer.start()
                    entered = True
                    t0 = time.perf_counter()
                    fmrecall.Dataset.from_libffm(path, mmap=mmap, cache_dir=cache)
                except KeyboardInterrupt:
                    took = time.perf_counter() - t0
                else:
                    raise AssertionError("not interrupted")
                timer.join()
                if entered:
                    break
                delay *= 2  # the signal came before the parse began (a loaded machine): again
            assert entered
            assert took < delay + 0.5 * full, (mmap, took, delay, full)  # one 16 MiB chunk is ~full / 4
        assert not os.path.exists(cache) or os.listdir(cache) == [], os.listdir(cache)
        ds = fmrecall.Dataset.from_libffm(path, mmap=True, cache_dir=cache)
        assert ds.n_rows == (64 << 20) // len(line)
        print("ok")
    """,
        timeout=60,
    )
    assert out.strip() == "ok"
