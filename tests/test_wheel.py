"""The portable wheel of tools/build_wheel.sh (pip wheel + auditwheel repair), installed into a fresh
virtual environment: it carries LICENSE and its own OpenMP runtime, imports from the venv (not the
source tree), and trains, splits and retrieves exactly.

Building the wheel compiles the extension (minutes on 2 cores), so this test checks a wheel built
beforehand, named by FMRECALL_WHEEL. CI (.ci/run) builds it with tools/build_wheel.sh and sets
FMRECALL_WHEEL before it runs the tests, so there the test always runs, and fails if the variable
is missing; elsewhere it is skipped with the command that builds the wheel. The venv gets
fmrecall from the wheel only (`--no-deps`); its dependencies (numpy, faiss, pandas) are the ones
this interpreter already has, made visible through a .pth file, so the test needs no network.
"""

from __future__ import annotations

import os
import site
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
from helpers import in_ci

ROOT = Path(__file__).resolve().parents[1]
HOW = "build it with `bash tools/build_wheel.sh` and set FMRECALL_WHEEL to the printed path"


@pytest.fixture(scope="module")
def wheel() -> Path:
    path = os.environ.get("FMRECALL_WHEEL", "")
    if not path:
        if in_ci():
            pytest.fail(f"FMRECALL_WHEEL is not set: {HOW}")
        pytest.skip(f"no repaired wheel given: {HOW}")
    p = Path(path)
    assert p.is_file(), f"FMRECALL_WHEEL={path} is not a file"
    return p


def test_wheel_is_portable_and_carries_its_license(wheel: Path) -> None:
    assert "manylinux" in wheel.name, wheel.name  # auditwheel's platform tag
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        licenses = [n for n in names if n.endswith(".dist-info/licenses/LICENSE")]
        assert len(licenses) == 1 and z.read(licenses[0]) == (ROOT / "LICENSE").read_bytes()
        assert any(n.startswith("fmrecall.libs/libgomp") for n in names), "libgomp is not bundled"
        assert [n for n in names if n.startswith("fmrecall/") and n.endswith(".so")], "no extension module"
        assert not [n for n in names if any(d in n for d in ("ml-100k", "frappe", "criteo", "tests/"))]


CHECK = textwrap.dedent(
    """
    import os, sys
    import numpy as np
    import fmrecall
    from fmrecall.datasets import synthetic
    from fmrecall.joins import join_rows

    venv = sys.argv[1]
    assert fmrecall.__file__.startswith(venv), fmrecall.__file__  # the wheel, not the source tree
    log = synthetic(n_users=200, n_items=50, seed=0)
    model = fmrecall.FFM(k=4, epochs=2, threads=2).fit(log.impressions)
    rec = fmrecall.Recaller(model, log.sides).add_items(log.items, np.arange(50))
    queries = log.queries(np.arange(5), np.zeros(5, int), np.zeros(5, int))
    res = rec.search(queries, 3)
    joined = join_rows([(queries, np.repeat(np.arange(5), 3)), (log.items, res.ids.ravel())])
    err = np.abs(model.decision_function(joined) - res.scores.ravel()).max()
    assert err < 1e-4, err
    maps = open("/proc/self/maps").read()
    gomp = sorted({line.split()[-1] for line in maps.splitlines() if "libgomp" in line})
    assert any(p.startswith(venv) and "fmrecall.libs" in p for p in gomp), gomp  # the bundled OpenMP
    print("wheel ok", fmrecall.__version__)
    """
)


def test_wheel_installs_and_runs_in_a_fresh_venv(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    install = [sys.executable, "-m", "pip", "--python", str(py), "install", "--quiet", "--no-deps", "--no-index"]
    subprocess.run([*install, str(wheel)], check=True)
    purelib = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # the dependencies this interpreter has: appended after the venv's own site-packages
    (Path(purelib) / "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["FMRECALL_PROGRESS"] = "0"
    run = dict(cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    r = subprocess.run([str(py), "-c", CHECK, str(venv.resolve())], **run)  # type: ignore[call-overload]
    assert r.returncode == 0 and "wheel ok" in r.stdout, r.stdout + r.stderr
    r = subprocess.run([str(venv / "bin" / "fmrecall"), "--version"], **run)  # type: ignore[call-overload]
    assert r.returncode == 0 and r.stdout.startswith("fmrecall "), r.stderr
