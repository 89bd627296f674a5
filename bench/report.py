"""Collects benchmark numbers into bench/results.md (markdown tables for the README).

Each benchmark calls ``record(section, key, row)``; rows are merged into
``bench/.cache/results.json`` (a row is replaced when the same key is measured again, so running
one bench file updates its rows only), and ``render()`` — called by bench/conftest.py at the end
of every pytest session, or by ``python bench/report.py`` — writes bench/results.md from it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import re
import subprocess
import sys
import time
import uuid
from typing import Any, Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import common  # noqa: E402
import synth  # noqa: E402

RESULTS_MD = os.path.join(HERE, "results.md")


def results_json(n_rows: Optional[int] = None) -> str:
    """One results file per data size, so a quick FMRECALL_BENCH_ROWS run never mixes with 1M rows."""
    n_rows = synth.rows_from_env() if n_rows is None else int(n_rows)
    return os.path.join(HERE, ".cache", f"results_{n_rows}.json")


SESSION = time.strftime("%Y-%m-%d %H:%M:%S") + " " + uuid.uuid4().hex[:6]
_recorded_this_session = False


def _load(n_rows: Optional[int] = None) -> Dict[str, Dict[str, Any]]:
    try:
        with open(results_json(n_rows)) as f:
            return json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def replace_section(heading: str, section: str) -> None:
    """Put `section` (starting with the "## ..." `heading` line) into results.md in place of that
    heading's section, or append it: the hand-run benches (libffm, Milvus) keep their own sections."""
    with open(RESULTS_MD) as f:
        text = f.read()
    pattern = re.compile(r"^" + re.escape(heading) + r"\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(lambda _: section + "\n", text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
    with open(RESULTS_MD, "w") as f:
        f.write(text)


def record(section: str, key: str, row: Dict[str, Any]) -> None:
    global _recorded_this_session
    data = _load()
    row = dict(row, session=SESSION, environment=environment())
    data.setdefault(section, {})[key] = row
    path = results_json()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(data, f, indent=1, default=float)
    os.replace(path + ".tmp", path)
    _recorded_this_session = True


def recorded_this_session() -> bool:
    return _recorded_this_session


_ENV: Optional[Dict[str, str]] = None


def environment() -> Dict[str, str]:
    global _ENV
    if _ENV is None:
        cpu = platform.processor() or "?"
        try:
            with open("/proc/cpuinfo") as f:
                for line in f:
                    if line.startswith("model name"):
                        cpu = line.split(":", 1)[1].strip()
                        break
        except OSError:
            pass
        try:  # the commit of the fmrecall actually imported (may be a clean checkout elsewhere)
            import fmrecall

            root = os.path.dirname(os.path.abspath(fmrecall.__file__))
        except Exception:  # pragma: no cover
            root = os.path.dirname(HERE)
        try:
            commit = subprocess.run(
                ["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
            ).stdout.strip()
            top = subprocess.run(
                ["git", "-C", root, "rev-parse", "--show-toplevel"], capture_output=True, text=True, timeout=10
            ).stdout.strip()
            dirty = subprocess.run(
                ["git", "-C", top or root, "status", "--porcelain", "--", "cpp", "python", "CMakeLists.txt"],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
            commit = (commit or "?") + ("+dirty" if dirty else "")
        except (OSError, subprocess.SubprocessError):
            commit = "?"
        try:
            import fmrecall

            arch = fmrecall.best_arch()
            spec = importlib.util.find_spec("fmrecall._core")  # the extension file, without importing privates
            so = spec.origin if spec is not None and spec.origin else ""
            built = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(os.path.getmtime(so)))
        except Exception:  # pragma: no cover - report must render without the extension
            arch, built = "?", "?"
        import numpy

        _ENV = {
            "cpu": cpu,
            "cores": str(os.cpu_count()),
            "arch": arch,
            "commit": commit,
            "extension_built": built,
            "python": platform.python_version(),
            "numpy": numpy.__version__,
        }
    return _ENV


# ---------------------------------------------------------------------------------- rendering
def fmt_num(x: Any, fmt: str = "{:.2f}") -> str:
    if x is None:
        return "–"
    try:
        return fmt.format(x)
    except (ValueError, TypeError):
        return str(x)


def md_table(header: List[str], rows: List[List[str]]) -> List[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def _order(section: Dict[str, Any]) -> List[str]:
    rank = {
        common.config_id(kind, k, t): i
        for i, (kind, k, t) in enumerate((kind, k, t) for kind, k in common.MODELS for t in common.THREADS)
    }
    return sorted(section, key=lambda key: (rank.get(key, 999), key))


def _pct(x: Optional[float]) -> str:
    return "–" if x is None else f"{100 * x:.0f}%"


def _met(ok: Optional[bool]) -> str:
    return "" if ok is None else (" ✅" if ok else " ❌")


def render(path: str = RESULTS_MD, n_rows: Optional[int] = None) -> str:
    """Write the tables of the results for ``n_rows`` rows (default: FMRECALL_BENCH_ROWS or 1M):
    one function per section, in this order."""
    import report_recall  # retrieval tables (bench/recall_bench.py)

    data = _load(n_rows)
    lines = _header()
    lines += _data(data)
    lines += _train_epoch(data)
    lines += _train_fit(data)
    lines += _numpy_reference(data)
    lines += _parse(data)
    lines += report_recall.lines(data)
    lines += _environment(data)
    text = "\n".join(lines) + _kept_sections(path)
    with open(path, "w") as f:
        f.write(text)
    return text


KEPT = "<!-- sections below are written by their own benchmarks (bench/test_milvus.py, bench/test_mmap.py, bench/test_libffm.py); render() keeps them -->"


def _kept_sections(path: str) -> str:
    """The part of the existing file from the KEPT marker on (results no JSON cache holds)."""
    try:
        with open(path) as f:
            old = f.read()
    except FileNotFoundError:
        return ""
    at = old.find(KEPT)
    return "" if at < 0 else "\n\n" + old[at:]


def _header() -> List[str]:
    """Title and how the file is made."""
    return [
        "# fmrecall benchmarks",
        "",
        "Generated by `PYTHONPATH=python python3 -m pytest bench --benchmark-only` "
        "(bench/report.py; numbers of the latest run of each benchmark). Speed is never "
        "asserted; targets are shown for reference.",
        "",
    ]


def _data(data: Dict[str, Dict[str, Any]]) -> List[str]:
    """The synthetic data set."""
    lines: List[str] = []
    meta = data.get("data", {}).get("synth")
    if meta:
        lines += ["## Data: Criteo-shaped synthetic clicks (bench/synth.py)", ""]
        lines += md_table(
            [
                "rows",
                "train / valid",
                "fields",
                "feature ids (seen)",
                "libffm file",
                "positives",
                "floor logloss (planted model)",
                "base-rate logloss",
                "floor AUC",
            ],
            [
                [
                    f"{meta['rows']:,}",
                    f"{meta['train_rows']:,} / {meta['valid_rows']:,}",
                    str(meta["n_fields"]),
                    f"{meta['n_features']:,} ({meta['distinct_features_used']:,})",
                    f"{meta['file_bytes'] / 1e6:.0f} MB",
                    f"{meta['positive_rate']:.3f}",
                    f"{meta['floor_logloss_valid']:.4f}",
                    f"{meta['base_rate_logloss_valid']:.4f}",
                    f"{meta['floor_auc_valid']:.4f}",
                ]
            ],
        )
        lines += [
            "",
            "39 one-hot fields (13 numeric-bucket fields of 30-100 values, 26 categorical fields), "
            "ids power-law distributed per field (exponent 1.1-1.3), labels drawn from a planted "
            "FFM (k=4) computed in numpy. Floor and base-rate loglosses are on the validation rows "
            "(last 10%).",
            "",
        ]
    return lines


def _train_epoch(data: Dict[str, Dict[str, Any]]) -> List[str]:
    """One training epoch in-process."""
    lines: List[str] = []
    tr = data.get("train_epoch", {})
    if tr:
        lines += [
            "## Training speed: one epoch in-process (pytest-benchmark, `partial_fit`)",
            "",
            "The machine has 2 cores; *other load* is the share of its CPU time that other processes "
            "(builds, tests) used while the benchmark ran — with it above a few percent the timings "
            "compete for the cores, so compare min with mean and prefer the min.",
            "",
        ]
        rows = []
        for key in _order(tr):
            r = tr[key]
            target = ""
            if key == common.config_id("ffm", 4, 2):
                target = f"≤ {common.TARGET_EPOCH_S_FFM4_T2} s (libffm {common.LIBFFM_EPOCH_S} s)" + _met(
                    r["seconds_min"] <= common.TARGET_EPOCH_S_FFM4_T2
                )
            rows.append(
                [
                    r["model"],
                    str(r["threads"]),
                    fmt_num(r["seconds_min"]),
                    fmt_num(r["seconds_mean"]),
                    fmt_num(r.get("first_epoch_seconds")),
                    fmt_num(r.get("cpu_seconds_of_fastest")),
                    fmt_num(r["rows_per_s"], "{:,.0f}"),
                    fmt_num(r["ns_per_pair"], "{:.1f}"),
                    fmt_num(r.get("numpy_rows_per_s"), "{:,.0f}"),
                    fmt_num(r.get("ratio_vs_numpy"), "{:.0f}×"),
                    _pct(r.get("other_load")),
                    target,
                ]
            )
        lines += md_table(
            [
                "model",
                "threads",
                "s/epoch (min)",
                "s/epoch (mean)",
                "1st epoch s (+ model alloc)",
                "CPU s (fastest epoch)",
                "rows/s",
                "ns/pair update",
                "numpy ref rows/s",
                "fmrecall / numpy",
                "other load",
                "target",
            ],
            rows,
        )
        any_r = next(iter(tr.values()))
        lines += [
            "",
            f"{any_r['train_rows']:,} train rows, {any_r['rounds']} timed epochs each after a first "
            f"epoch that also sizes, allocates and initialises the model (timed on its own); hyper-parameters {_hyper()}. The numpy "
            f"reference (tests/reference.py NumpyFFM / NumpyFM) is the same AdaGrad SGD rule per row in float32, timed on "
            f"{common.NUMPY_ROWS:,} train rows in the same process, single-threaded (its update "
            "results match fmrecall's: tests/test_kernels.py); the ratio is rows/s over rows/s, so 2-thread rows "
            "compare against the 1-thread numpy rate. ns/pair update = (s/epoch × threads) / "
            f"(train rows × {common.PAIRS_PER_ROW}) (39·38/2 field pairs per row; FM is counted with "
            "the same pairs although its kernel is O(39·k) per row). CPU s = process CPU time of the "
            "fastest epoch, all threads: ≈ threads × wall when the threads are busy throughout.",
            "",
        ]
    return lines


def _train_fit(data: Dict[str, Dict[str, Any]]) -> List[str]:
    """A training run in a subprocess: memory and accuracy."""
    lines: List[str] = []
    fit = data.get("train_fit", {})
    if fit:
        lines += ["## Training run in a subprocess: memory and accuracy", ""]
        rows = []
        for key in _order(fit):
            r = fit[key]
            gap = (r["base_rate_logloss"] - r["best_valid_logloss"]) / (r["base_rate_logloss"] - r["floor_logloss"])
            target = ""
            if key.startswith("ffm-k4"):
                target = f"≤ {common.TARGET_PEAK_RSS_GB:.1f} GiB (libffm {common.LIBFFM_PEAK_RSS_GB} GB)" + _met(
                    r["peak_rss_mb"] / 1024 <= common.TARGET_PEAK_RSS_GB
                )
            rows.append(
                [
                    r["model"],
                    str(r["threads"]),
                    fmt_num(r["load_seconds"], "{:.1f}"),
                    fmt_num(r["train_seconds_per_epoch"]),
                    fmt_num(r["ns_per_pair"], "{:.1f}"),
                    fmt_num(r["rss_after_load_mb"], "{:,.0f}"),
                    fmt_num(r["peak_rss_mb"], "{:,.0f}"),
                    target,
                    f"{r['best_valid_logloss']:.4f} (ep {r['best_epoch']})",
                    f"{r['best_valid_auc']:.4f}",
                    f"{100 * gap:.0f}%",
                    _pct(r.get("other_load")),
                ]
            )
        lines += md_table(
            [
                "model",
                "threads",
                "load s",
                "train s/epoch",
                "ns/pair update",
                "RSS after load MiB",
                "peak RSS MiB",
                "RSS target",
                "best valid logloss",
                "valid AUC",
                "gap closed",
                "other load",
            ],
            rows,
        )
        any_r = next(iter(fit.values()))
        lines += [
            "",
            f"Each row is one `python bench/train_child.py` process: `Dataset.from_libffm` on the "
            f"file, first 90% of rows train / last 10% valid (zero-copy), `fit(train, valid)` for "
            f"{any_r['epochs']} epochs with `patience=None` (no early stopping, no weight snapshot). "
            "Peak RSS is the high-water mark `VmHWM` of that process (interpreter, data and model; "
            "`ru_maxrss` is not used because Linux carries it over from the spawning pytest process "
            "across exec); RSS after load is the resident size once the data is parsed. train s/epoch = median "
            "epoch time minus one timed validation pass (scoring + logloss + AUC on the valid rows). "
            f"Floor = planted model {any_r['floor_logloss']:.4f}, base rate {any_r['base_rate_logloss']:.4f}; "
            "gap closed = (base rate − best) / (base rate − floor).",
            "",
        ]
    return lines


def _numpy_reference(data: Dict[str, Dict[str, Any]]) -> List[str]:
    """The numpy reference SGD."""
    lines: List[str] = []
    ref = data.get("numpy_reference", {})
    if ref:
        lines += ["## Numpy reference SGD", ""]
        rows = [
            [r["model"], f"{r['rows']:,}", fmt_num(r["seconds"], "{:.2f}"), fmt_num(r["rows_per_s"], "{:,.0f}")]
            for key, r in sorted(ref.items())
        ]
        lines += md_table(["model", "rows", "seconds", "rows/s"], rows) + [""]
    return lines


def _parse(data: Dict[str, Dict[str, Any]]) -> List[str]:
    """Parsing libffm text."""
    lines: List[str] = []
    parse = data.get("parse", {})
    if parse:
        lines += ["## Parsing libffm text", ""]
        rows = []
        for key in ["fmrecall_full", "fmrecall_slice", "python_slice"]:
            if key not in parse:
                continue
            r = parse[key]
            target = ""
            if key.startswith("fmrecall"):
                target = f"≥ {common.TARGET_PARSE_MB_S:.0f} MB/s" + _met(r["mb_per_s"] >= common.TARGET_PARSE_MB_S)
            rows.append(
                [
                    r["what"],
                    f"{r['bytes'] / 1e6:,.1f} MB",
                    fmt_num(r["seconds"], "{:.3f}"),
                    fmt_num(r["mb_per_s"], "{:,.1f}"),
                    fmt_num(r.get("ratio_vs_python"), "{:.0f}×"),
                    _pct(r.get("other_load")),
                    target,
                ]
            )
        lines += md_table(["parser", "input", "seconds (min)", "MB/s", "vs pure Python", "other load", "target"], rows)
        lines += [
            "",
            "MB = 10^6 bytes of libffm text, warm page cache. `Dataset.from_libffm` is single-threaded "
            "(two passes: count, parse). The pure-Python baseline is a `str.split` parser into lists "
            "then numpy arrays, run on the slice (the first lines of the same file); the ratio compares "
            "MB/s on that same slice.",
            "",
        ]
    return lines


def _environment(data: Dict[str, Dict[str, Any]]) -> List[str]:
    """Machines, commits and sessions of the rows above."""
    lines: List[str] = []
    envs = {json.dumps(r.get("environment", {}), sort_keys=True) for sec in data.values() for r in sec.values()}
    sessions = sorted({r.get("session", "?") for sec in data.values() for r in sec.values()})
    lines += ["## Environment", ""]
    for e in sorted(envs):
        e = json.loads(e)
        if e:
            lines.append(
                f"- {e.get('cpu')}, {e.get('cores')} cores, kernels `{e.get('arch')}`, commit "
                f"`{e.get('commit')}` (extension built {e.get('extension_built', '?')}), Python {e.get('python')}, numpy {e.get('numpy')}"
            )
    lines.append(f"- measured in session(s): {', '.join(sessions)}")
    lines.append("")
    return lines


def _hyper() -> str:
    return ", ".join(f"{k}={v}" for k, v in common.HYPER.items())


if __name__ == "__main__":
    # python bench/report.py [N]: re-render bench/results.md from bench/.cache/results_{N}.json
    print(render(n_rows=int(sys.argv[1]) if len(sys.argv) > 1 else None))
