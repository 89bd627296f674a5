"""The README cannot drift: its API tour runs as written, and it links only inside the repository.

The tour is every ```python block of README.md, run in order as one script in a child process (as
a user pastes it), in an empty directory, with $FMRECALL_DATA pointing at the real data. Nothing is
patched: the tour itself is small enough to be fast.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from helpers import child_env

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def python_blocks(text: str) -> list:
    return re.findall(r"^```python\n(.*?)^```$", text, flags=re.S | re.M)


def test_the_api_tour_runs_as_written(data_dir: Path, tmp_path: Path) -> None:
    blocks = python_blocks(README.read_text(encoding="utf-8"))
    assert blocks, "README.md has no python block"
    env = child_env(FMRECALL_DATA=str(data_dir), FMRECALL_PROGRESS="0")
    r = subprocess.run(
        [sys.executable, "-c", "\n".join(blocks)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr[-4000:]
    # what the tour prints: a trained FFM on frappe and a personalised FM on MovieLens
    auc = float(re.search(r"holdout AUC (\S+)", r.stdout).group(1))
    recall = float(re.search(r"Recall@50 (\S+)", r.stdout).group(1))
    assert auc > 0.9 and recall > 0.3, r.stdout  # popularity alone: Recall@50 0.27 (README)
    assert re.search(r"^epoch +1 ", r.stderr, flags=re.M)  # verbose=True: epochs on stderr
    assert (tmp_path / "ffm.npz").is_file() and (tmp_path / "recaller" / "CURRENT").is_file()


def test_readme_and_docs_link_only_inside_the_repository() -> None:
    for doc in [README, *sorted((ROOT / "docs").glob("*.md"))]:
        text = doc.read_text(encoding="utf-8")
        assert "../shared" not in text.replace("default `../shared/data`", "").replace('"../shared/data"', ""), (
            f"{doc.name} points outside the repository"
        )
        for target in re.findall(r"\]\(([^)]+)\)", text):
            if re.match(r"https?://", target):
                continue
            path = (doc.parent / target.split("#")[0]).resolve()
            assert path.is_relative_to(ROOT) and path.exists(), f"{doc.name}: broken link {target}"
