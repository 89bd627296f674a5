"""``python -m fmrecall.experiments two-stage | vectors --data PATH``: the MovieLens-100K measurements
behind the README tables; each prints its table rows (markdown) and its run time."""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fmrecall.experiments", description=__doc__)
    sub = p.add_subparsers(dest="what", required=True)
    ts = sub.add_parser("two-stage", help="one stage vs the 60/20/20 merge + the same model, Recall@50 per split")
    ts.add_argument("--splits", default="u1,u2,u3,u4,u5", help="comma-separated official splits")
    ts.add_argument("--models", default="FM,HybridFM,FFM", help="comma-separated: FM, HybridFM, FFM")
    vec = sub.add_parser("vectors", help="FM / FFM with user / item ids vs collaborative (SVD) vectors")
    vec.add_argument("--splits", default="u1", help="comma-separated official splits")
    vec.add_argument("--models", default="FM,FFM", help="comma-separated: FM, HybridFM, FFM")
    vec.add_argument("--dim", type=int, default=16, help="SVD vector length")
    for s in (ts, vec):
        s.add_argument("--data", required=True, help="the ml-100k folder")
        s.add_argument("--threads", type=int, default=1)
        s.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    splits, models = a.splits.split(","), a.models.split(",")
    if a.what == "two-stage":
        from . import two_stage

        out = two_stage.run(a.data, splits, models, threads=a.threads, seed=a.seed)
        sys.stdout.write(two_stage.format_table(out) + "\n")  # the table is this command's output
    else:
        from . import collab_vectors

        out = collab_vectors.run(a.data, splits, models, dim=a.dim, threads=a.threads, seed=a.seed)
        sys.stdout.write(collab_vectors.format_table(out) + "\n")  # the table is this command's output
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
