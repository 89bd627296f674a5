"""User code written from the README type-checks: the README's API tour (taken from README.md, so
it cannot drift) plus the sklearn-style calls, inside a function whose arguments stand for the
tour's data, checked with mypy --strict and with pyright (basedpyright's bundled pyright in
"standard" mode, the PyPI package: the npm pyright cannot be installed offline). assert_type pins
the types that matter: fit returns the model's own class, fmrecall.load a model."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap

import pytest
from helpers import REPO_ROOT

PRELUDE = """\
from typing import Any, List, Set

import numpy as np
import pandas as pd
import scipy.sparse as sp
from typing_extensions import assert_type

import fmrecall
from fmrecall import FFM, FM, Dataset, HybridFM, Recaller, Sides


def tour(
    query_rows: Dataset,
    item_rows: Dataset,
    ids: np.ndarray,
    seen_per_query: List[Set[int]],
    users_df: pd.DataFrame,
    items_df: pd.DataFrame,
    events_df: pd.DataFrame,
    requests_df: pd.DataFrame,
    seen: List[List[int]],
) -> None:
"""

SKLEARN_STYLE = """

def sklearn_style(X: np.ndarray, y: np.ndarray, X_sparse: Any, labels: pd.Series) -> None:
    model = FM(k=8).fit(X, y)
    assert_type(model, FM)
    assert_type(FFM().fit(X, y, fields=[0, 0, 1]).set_params(k=4), FFM)
    assert_type(HybridFM(sides=Sides(user=[0], item=[1])).partial_fit(X, y, classes=[0, 1]), HybridFM)
    proba: np.ndarray = model.predict_proba(X_sparse)
    labels_out: np.ndarray = model.predict(X.tolist())
    accuracy: float = model.score(X, labels)
    n: int = model.n_features_in_
    classes: np.ndarray = model.classes_
    loaded = fmrecall.load("m.npz")
    assert_type(loaded, FM | FFM | HybridFM)
    assert_type(FFM.load("m.npz"), FFM)
    assert_type(fmrecall.load("m.npz", expected_class=FM), FM)
    rec = Recaller(loaded, Sides(user=[0], item=[1]))
    rec.add_items(Dataset.from_arrays(np.arange(3), np.zeros(2), np.arange(2), labels=labels[:2]), np.arange(2))
    rates: dict[str, float] = rec.last_unseen
    print(proba, labels_out, accuracy, n, classes, rates)
"""


def _tour() -> str:
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme[readme.index("## API tour") :]
    block = re.search(r"```python\n(.*?)```", section, re.S)
    assert block is not None, "README.md: no python block in the API tour"
    return block.group(1)


@pytest.fixture(scope="module")
def checkers(tmp_path_factory):
    """Run mypy and pyright on the user script at once (two processes: about half the wall time)
    and return their (return code, stdout, stderr) by name."""
    folder = tmp_path_factory.mktemp("typing")
    script = folder / "user_code.py"
    script.write_text(PRELUDE + textwrap.indent(_tour(), "    ") + SKLEARN_STYLE)
    config = {
        "typeCheckingMode": "standard",
        "pythonVersion": "3.10",
        "extraPaths": [str(REPO_ROOT / "python")],
        "reportMissingModuleSource": False,
    }
    (folder / "pyrightconfig.json").write_text(json.dumps(config))
    mypy = [
        sys.executable,
        "-m",
        "mypy",
        "--strict",
        "--python-version=3.10",
        "--ignore-missing-imports",  # pandas, faiss, scipy ship no types
        "--follow-imports=silent",  # report the user's code; fmrecall itself is checked by the gates
        "--cache-dir",
        str(folder / ".mypy_cache"),
        str(script),
    ]
    pyright = shutil.which("basedpyright")
    env = {**os.environ, "MYPYPATH": str(REPO_ROOT / "python")}
    runs = {"mypy": subprocess.Popen(mypy, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)}
    if pyright is not None:
        cmd = [pyright, "--outputjson", str(script)]
        runs["pyright"] = subprocess.Popen(cmd, cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    results = {}
    for name, proc in runs.items():
        out, err = proc.communicate(timeout=300)
        results[name] = (proc.returncode, out.decode(), err.decode())
    return results


def test_readme_tour_type_checks_under_mypy(checkers):
    code, out, err = checkers["mypy"]
    assert code == 0, out + err


def test_readme_tour_type_checks_under_pyright(checkers):
    if "pyright" not in checkers:
        pytest.fail("basedpyright is missing: pip install '.[test]' installs it")
    code, out, err = checkers["pyright"]
    report = json.loads(out)
    errors = [
        f"{d['range']['start']['line'] + 1}: {d['message']}"
        for d in report["generalDiagnostics"]
        if d["severity"] == "error"
    ]
    assert not errors and code == 0, "\n".join(errors) or err


def test_a_missing_schema_is_a_clear_error():
    """model.schema_ is Optional (None after a Dataset fit): Interactions says so instead of failing
    on None.fitted."""
    import pandas as pd

    import fmrecall

    frame = pd.DataFrame({"user_id": [1], "item_id": [2]})
    with pytest.raises(ValueError, match="schema must be a fmrecall.Schema, got None"):
        fmrecall.Interactions(frame, frame, frame, None)
