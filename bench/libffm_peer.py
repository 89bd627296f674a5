"""libffm as a same-run speed peer: built from its source, run on the same synthetic rows.

* ``build()`` compiles ``ffm-train`` from the libffm source (``FMRECALL_LIBFFM_SRC``, default
  ``../shared/anchors/libffm`` next to the repository) into ``bench/.cache/libffm-<hash>/`` with the
  flags of libffm's own Makefile (g++ -O3 -march=native, SSE, OpenMP). Nothing of libffm is copied
  into the repository.
* ``split_files(path, meta)`` writes the first 90% / last 10% lines of the synthetic libffm file
  (bench/synth.py) as libffm's train and validation files (the same rows as ``synth.split_views``).
* ``run(exe, k, threads, epochs, ...)`` runs ``ffm-train -k K -t E -s T -r eta -l lambda --no-norm
  [-p valid]`` (no ``--auto-stop``) and parses its per-epoch lines: ``tr_time`` is libffm's own
  cumulative training time (validation excluded, printed to 0.1 s), so epoch e took
  ``tr_time[e] - tr_time[e-1]``. ``epoch_times`` adds CPU seconds per epoch (two processes).

libffm's rule differs from fmrecall's in what it leaves out: no bias or linear weights, no
per-row loss kept for the epoch report beyond a sum; its latent init is U(0, 1/sqrt(k)). Speed is
compared per epoch on the same rows, threads and k; the loglosses are reported side by side.
"""

from __future__ import annotations

import hashlib
import os
import re
import resource
import shutil
import subprocess
from typing import Dict, List, Optional, Tuple

import synth

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SOURCES = ("ffm-train.cpp", "ffm.cpp", "timer.cpp")
# libffm's Makefile: CXXFLAGS = -Wall -O3 -std=c++0x -march=native (+ -fopenmp), DFLAG = -DUSESSE -DUSEOMP
FALLBACK_FLAGS = ["-Wall", "-O3", "-std=c++0x", "-march=native", "-fopenmp", "-DUSESSE", "-DUSEOMP"]


def source_dir() -> str:
    default = os.path.join(os.path.dirname(ROOT), "shared", "anchors", "libffm")
    return os.environ.get("FMRECALL_LIBFFM_SRC", default)


def makefile_flags(src: str) -> List[str]:
    """CXXFLAGS and DFLAG of libffm's Makefile (``=`` and ``+=`` lines), else its known defaults."""
    flags: List[str] = []
    try:
        with open(os.path.join(src, "Makefile")) as f:
            for line in f:
                m = re.match(r"^\s*(CXXFLAGS|DFLAG)\s*\+?=\s*(.*)$", line)
                if m:
                    flags += m.group(2).split()
    except OSError:
        pass
    return flags or list(FALLBACK_FLAGS)


def build(src: Optional[str] = None) -> str:
    """Path of an ``ffm-train`` built from ``src`` (cached by a hash of the sources and flags).
    RuntimeError when the source or g++ is missing or the build fails."""
    src = src or source_dir()
    if not all(os.path.exists(os.path.join(src, s)) for s in SOURCES):
        raise RuntimeError(f"libffm source not found in {src} (set FMRECALL_LIBFFM_SRC)")
    cxx = os.environ.get("CXX", "g++")
    if shutil.which(cxx) is None:
        raise RuntimeError(f"{cxx} not found")
    flags = makefile_flags(src)
    h = hashlib.sha256(" ".join([cxx] + flags).encode())
    for name in sorted(os.listdir(src)):
        if name.endswith((".cpp", ".h")):
            with open(os.path.join(src, name), "rb") as f:
                h.update(name.encode() + f.read())
    out_dir = os.path.join(synth.CACHE, f"libffm-{h.hexdigest()[:12]}")
    exe = os.path.join(out_dir, "ffm-train")
    if not os.path.exists(exe):
        os.makedirs(out_dir, exist_ok=True)
        cmd = [cxx] + flags + ["-o", exe + ".tmp"] + [os.path.join(src, s) for s in SOURCES]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"building libffm failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
        os.replace(exe + ".tmp", exe)
    return exe


def split_files(path: str, meta: Dict) -> Tuple[str, str]:
    """(train, valid) libffm files: the first ``meta['train_rows']`` lines of ``path`` and the rest."""
    base = path[: -len(".ffm")] if path.endswith(".ffm") else path
    tr, va = base + ".train.ffm", base + ".valid.ffm"
    stamp = f"{os.path.getsize(path)}:{meta['train_rows']}"
    stamp_file = base + ".split"
    if os.path.exists(tr) and os.path.exists(va) and os.path.exists(stamp_file):
        with open(stamp_file) as f:
            if f.read() == stamp:
                return tr, va
    n_train = int(meta["train_rows"])
    with open(path, "rb") as src, open(tr + ".tmp", "wb") as a, open(va + ".tmp", "wb") as b:
        for i, line in enumerate(src):
            (a if i < n_train else b).write(line)
    os.replace(tr + ".tmp", tr)
    os.replace(va + ".tmp", va)
    with open(stamp_file, "w") as f:
        f.write(stamp)
    return tr, va


def run(exe: str, k: int, threads: int, epochs: int, train: str, valid: Optional[str], eta: float, lam: float) -> Dict:
    """One ``ffm-train`` process: {"epoch_seconds": [...], "tr_logloss": [...], "va_logloss": [...]
    (with ``valid``), "cpu_seconds": user + system CPU time of the whole process, "command": str}.
    The model file goes to a scratch path in bench/.cache."""
    model = os.path.join(synth.CACHE, f"libffm_k{k}_t{threads}.model")
    cmd = [exe, "-k", str(k), "-t", str(epochs), "-s", str(threads), "-r", str(eta), "-l", str(lam), "--no-norm"]
    cmd += (["-p", os.path.abspath(valid)] if valid else []) + [os.path.abspath(train), model]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=synth.CACHE)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    cumulative, tr_loss, va_loss = [], [], []
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) in (3, 4) and parts[0].isdigit():  # iter tr_logloss [va_logloss] tr_time
            tr_loss.append(float(parts[1]))
            if len(parts) == 4:
                va_loss.append(float(parts[2]))
            cumulative.append(float(parts[-1]))
    if len(cumulative) != epochs:
        raise RuntimeError(f"unexpected ffm-train output:\n{proc.stdout[-2000:]}")
    try:
        os.remove(model)
    except OSError:
        pass
    per_epoch = [b - a for a, b in zip([0.0] + cumulative[:-1], cumulative)]
    shown = [os.path.relpath(c, ROOT) if os.path.isabs(c) else c for c in cmd]
    return {
        "epoch_seconds": per_epoch,
        "tr_logloss": tr_loss,
        "va_logloss": va_loss,
        "cpu_seconds": cpu,
        "command": " ".join(shown),
    }


def epoch_times(exe: str, k: int, threads: int, epochs: int, train: str, eta: float, lam: float) -> Dict:
    """Wall and CPU seconds of libffm's epochs 2..``epochs`` (no validation): two processes, one of
    1 epoch and one of ``epochs``; wall = its ``tr_time`` steps, CPU = the difference of the two
    processes' CPU time over the extra epochs (so conversion, loading and the first epoch cancel out)."""
    one = run(exe, k, threads, 1, train, None, eta, lam)
    many = run(exe, k, threads, epochs, train, None, eta, lam)
    cpu = (many["cpu_seconds"] - one["cpu_seconds"]) / (epochs - 1)
    return {
        "wall": many["epoch_seconds"][1:],
        "cpu_per_epoch": cpu if cpu > 0 else None,  # None: epochs too short to show above process noise
        "command": many["command"],
    }
