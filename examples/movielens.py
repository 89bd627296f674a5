"""MovieLens-100K: one FM / HybridFM / FFM recall model vs popularity, item-CF and a multi-channel merge.

    python examples/movielens.py [PATH_TO_ml-100k] [--split u1]

Same as `fmrecall demo --movielens PATH --all-models`. The data is never copied into this repo.
"""

import argparse
import os

from fmrecall.experiments import movielens

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    default = os.path.join(os.environ.get("FMRECALL_DATA", "../shared/data"), "ml-100k")
    ap.add_argument("path", nargs="?", default=default)
    ap.add_argument("--split", default="u1")
    args = ap.parse_args()
    print(movielens.format_table(movielens.run(args.path, split=args.split)))
