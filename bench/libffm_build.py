"""Build libffm (BSD-3, ../shared/anchors/libffm; see its COPYRIGHT) into bench/.cache for same-run
comparisons. Its sources are copied into the ignored cache folder and built there with its own
Makefile; nothing of it enters the repository. ``ffm_train()`` returns the path of ffm-train
(None if the sources or a compiler are missing)."""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Optional

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.environ.get("FMRECALL_LIBFFM", os.path.join(HERE, "..", "..", "shared", "anchors", "libffm"))
BUILD = os.path.join(HERE, ".cache", "libffm")


def ffm_train() -> Optional[str]:
    """Path of a built ffm-train, building it on first use."""
    exe = os.path.join(BUILD, "ffm-train")
    if os.path.exists(exe):
        return exe
    if not os.path.exists(os.path.join(SOURCE, "ffm.cpp")) or shutil.which("g++") is None:
        return None
    shutil.rmtree(BUILD, ignore_errors=True)
    shutil.copytree(SOURCE, BUILD)
    subprocess.run(["make", "-C", BUILD, "ffm-train", "ffm-predict"], check=True, capture_output=True)
    return exe


if __name__ == "__main__":
    print(ffm_train())
