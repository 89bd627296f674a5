"""Command line: ``fmrecall demo | train | predict | index | recommend`` (also ``python -m fmrecall``)."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import FFM, FM, Dataset, HybridFM, Recaller, Sides, load
from .joins import join_rows
from .metrics import auc

MODELS = {"fm": FM, "ffm": FFM, "hybrid": HybridFM}


def _int_list(spec: str) -> List[int]:
    """'0,2-5,9' -> [0, 2, 3, 4, 5, 9] (ranges inclusive)."""
    out: List[int] = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        if "-" in part:
            a, b = part.split("-", 1)
            out += list(range(int(a), int(b) + 1))
        else:
            out.append(int(part))
    return out


def _field_ranges(spec: Optional[str]) -> Optional[List[Tuple[int, int]]]:
    """'0:957,957:5039' -> [(0, 957), (957, 5039)] ([start, end) feature ranges, one per field)."""
    if not spec:
        return None
    out: List[Tuple[int, int]] = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        start, end = part.split(":")
        out.append((int(start), int(end)))
    return out


def _read(path: str, fmt: str, fields: Optional[str]) -> Dataset:
    if fmt == "libffm":
        return Dataset.from_libffm(path)
    ranges = _field_ranges(fields)
    if ranges is None:
        raise SystemExit("fmrecall: --format libsvm needs --fields start:end,start:end,... (one range per field)")
    return Dataset.from_libsvm(path, ranges)


def _sides(args: argparse.Namespace) -> Optional[Sides]:
    if not (args.user or args.context or args.item):
        return None
    return Sides(
        user=_int_list(args.user or ""), context=_int_list(args.context or ""), item=_int_list(args.item or "")
    )


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=["libffm", "libsvm"], default="libffm", help="input text format")
    p.add_argument("--fields", help="libsvm: feature ranges per field, e.g. 0:957,957:5039,...")


def _add_side_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--user", help="user fields, e.g. 0 or 0-2")
    p.add_argument("--context", help="context fields, e.g. 2-9")
    p.add_argument("--item", help="item fields, e.g. 1")


def cmd_train(args: argparse.Namespace) -> int:
    train = _read(args.train, args.format, args.fields)
    valid = _read(args.valid, args.format, args.fields) if args.valid else None
    hyper = dict(
        k=args.k,
        loss=args.loss,
        epochs=args.epochs,
        learning_rate=args.learning_rate,
        reg_linear=args.reg_linear,
        reg_factors=args.reg_factors,
        threads=args.threads,
        seed=args.seed,
        verbose=True,
    )
    if args.model == "hybrid":
        sides = _sides(args)
        if sides is None:
            raise SystemExit("fmrecall: --model hybrid needs --user/--context/--item")
        hyper.update(sides=sides, field_aware=args.field_aware)
    model = MODELS[args.model](**hyper).fit(train, valid=valid)
    model.save(args.out)
    print(f"saved {type(model).__name__} to {args.out}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    model = load(args.model)
    data = _read(args.data, args.format, args.fields)
    # probabilities for the logistic loss, raw scores otherwise (predict gives class labels)
    pred = model.predict_proba(data)[:, 1] if model.loss == "logistic" else model.decision_function(data)
    out = open(args.out, "w") if args.out else sys.stdout
    try:
        for v in pred:
            out.write(f"{v:.6g}\n")
    finally:
        if args.out:
            out.close()
    if data.labels is not None and model.loss == "logistic" and len(np.unique(data.labels > 0)) == 2:
        print(f"AUC {auc(data.labels, pred):.5f}", file=sys.stderr)
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    model = load(args.model)
    sides = _sides(args) or getattr(model, "sides", None)
    if sides is None:
        raise SystemExit("fmrecall: give the sides with --user/--context/--item")
    items = _read(args.items, args.format, args.fields)
    ids = np.loadtxt(args.ids, dtype=np.int64, ndmin=1) if args.ids else np.arange(items.n_rows, dtype=np.int64)
    rec = Recaller(model, sides, args.index, segments=args.segments, threads=args.threads).add_items(items, ids)
    rec.save(args.out)
    print(f"indexed {len(rec)} items (dim {rec.dim}) into {args.out}")
    return 0


def cmd_recommend(args: argparse.Namespace) -> int:
    rec = Recaller.load(args.recaller)
    queries = _read(args.queries, args.format, args.fields)
    res = rec.search(queries, args.k)
    for r in range(res.ids.shape[0]):
        items = [f"{i}:{s:.5g}" for i, s in zip(res.ids[r], res.scores[r]) if i >= 0]
        print(f"{r}\t" + " ".join(items))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Generate a click log, train, index every item, recommend, and check exactness and quality;
    or, with --movielens PATH, the MovieLens-100K comparison against classic recall channels."""
    if args.movielens:
        from .experiments import movielens

        models: Tuple[str, ...] = {"fm": ("FM",), "hybrid": ("HybridFM",), "ffm": ("FFM",)}.get(args.model, ("FM",))
        if args.all_models:
            models = ("FM", "HybridFM", "FFM")
        movielens.run(args.movielens, split=args.split, models=models, threads=args.threads, seed=args.seed)
        return 0
    from .datasets import synthetic

    t0 = time.perf_counter()
    log = synthetic(n_users=args.users, n_items=args.items, seed=args.seed)
    clicked_share = float(np.mean(log.impressions.labels)) if log.impressions.labels is not None else 0.0
    print(
        f"generated {log.impressions.n_rows} impressions ({clicked_share:.1%} clicked), "
        f"{args.users} users, {args.items} items, fields {log.field_names}"
    )
    train, valid = log.impressions.holdout(0.9, seed=args.seed)
    hyper: Dict[str, Any] = dict(
        k=args.k,
        epochs=30,
        learning_rate=0.1,
        reg_linear=1e-4,
        reg_factors=1e-3,
        seed=args.seed,
        threads=args.threads,
        verbose=args.verbose,
    )
    if args.model == "hybrid":
        hyper.update(sides=log.sides, field_aware="item")
    model = MODELS[args.model](**hyper).fit(train, valid=valid)
    assert model.best_epoch_ is not None and train.labels is not None  # fit with validation data, labelled rows
    best = model.history_[model.best_epoch_ - 1]
    print(
        f"trained {type(model).__name__}(k={args.k}): best epoch {model.best_epoch_}, "
        f"valid AUC {best['valid_auc']:.4f}, logloss {best['valid_loss']:.4f}"
    )

    rec = Recaller(model, log.sides, args.index, threads=args.threads)
    rec.add_items(log.items, np.arange(args.items))
    print(f"indexed {len(rec)} items: {args.index} faiss index, vector dim {rec.dim}")

    rng = np.random.default_rng(args.seed + 1)
    m = args.queries
    users = rng.integers(0, args.users, m)
    hours = rng.integers(0, 6, m)
    devices = rng.integers(0, 3, m)
    queries = log.queries(users, hours, devices)
    t = time.perf_counter()
    res = rec.search(queries, args.top)
    dt = time.perf_counter() - t

    # exactness: the returned score is the model's score on the joined (query + item) row
    top5 = res.ids[:, :5]
    joined = join_rows([(queries, np.repeat(np.arange(m), top5.shape[1])), (log.items, top5.ravel())])
    err = np.max(np.abs(model.decision_function(joined) - res.scores[:, :5].ravel()))
    # quality: overlap with the planted best items, vs. recommending the most clicked items
    truth = log.true_scores(users, hours, devices)
    best_items = np.argsort(-truth, axis=1)[:, : args.top]
    hits = np.mean([len(set(best_items[i]) & set(res.ids[i])) / args.top for i in range(m)])
    item_of = train.features[np.isin(train.fields, [5])] - int(log.items.features[0])
    clicked = train.labels[np.repeat(np.arange(train.n_rows), np.diff(train.indptr))][np.isin(train.fields, [5])] > 0
    clicks = np.bincount(item_of[clicked], minlength=args.items)
    popular = np.argsort(-clicks)[: args.top]
    pop_hits = np.mean([len(set(best_items[i]) & set(popular)) / args.top for i in range(m)])
    print(
        f"recommended top-{args.top} for {m} requests in {dt * 1e3:.1f} ms "
        f"({m / dt:,.0f} queries/s); max |score - model score on joined row| = {err:.2e}"
    )
    print(f"overlap with the planted best {args.top}: {hits:.3f} (most-clicked baseline: {pop_hits:.3f})")
    for r in range(min(3, m)):
        top = ", ".join(f"item {i} ({p:.1%})" for i, p in zip(res.ids[r, :5], res.proba[r, :5]))
        print(f"  user {users[r]}, hour bucket {hours[r]}, device {devices[r]}: {top}")
    if args.out:
        rec.save(args.out)
        print(f"saved the recaller (model + index) to {args.out}")
    print(f"done in {time.perf_counter() - t0:.1f} s")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="fmrecall", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)

    d = sub.add_parser("demo", help="generate a click log, train, index, recommend (no data needed)")
    d.add_argument("--model", choices=sorted(MODELS), default="ffm")
    d.add_argument("--k", type=int, default=8)
    d.add_argument("--index", default="exact", help="exact | hnsw | hnsw-ip | ivf | faiss factory string")
    d.add_argument("--users", type=int, default=2000)
    d.add_argument("--items", type=int, default=1000)
    d.add_argument("--queries", type=int, default=500)
    d.add_argument("--top", type=int, default=10)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--threads", type=int, default=0)
    d.add_argument("--out", help="save the Recaller to this directory")
    d.add_argument("--verbose", action="store_true")
    d.add_argument("--movielens", metavar="PATH", help="run the MovieLens-100K comparison on the ml-100k folder")
    d.add_argument("--split", default="u1", help="MovieLens split (u1..u5, ua, ub)")
    d.add_argument("--all-models", action="store_true", help="MovieLens: FM, HybridFM and FFM")
    d.set_defaults(fn=cmd_demo)

    t = sub.add_parser("train", help="train a model on a libffm / libsvm file")
    t.add_argument("train")
    t.add_argument("--valid")
    t.add_argument("--out", required=True, help="model file (.npz)")
    t.add_argument("--model", choices=sorted(MODELS), default="ffm")
    t.add_argument("--k", type=int, default=4)
    t.add_argument("--loss", choices=["logistic", "squared"], default="logistic")
    t.add_argument("--epochs", type=int, default=10)
    t.add_argument("--learning-rate", type=float, default=0.05)
    t.add_argument("--reg-linear", type=float, default=2e-5)
    t.add_argument("--reg-factors", type=float, default=2e-5)
    t.add_argument("--field-aware", choices=["item", "query"], default="item")
    t.add_argument("--threads", type=int, default=0)
    t.add_argument("--seed", type=int, default=0)
    _add_data_args(t)
    _add_side_args(t)
    t.set_defaults(fn=cmd_train)

    p = sub.add_parser("predict", help="probabilities (logistic) or scores for every row")
    p.add_argument("model")
    p.add_argument("data")
    p.add_argument("--out")
    _add_data_args(p)
    p.set_defaults(fn=cmd_predict)

    i = sub.add_parser("index", help="split a model and index item rows with faiss")
    i.add_argument("model")
    i.add_argument("items", help="item rows (item fields only)")
    i.add_argument("--out", required=True, help="Recaller directory")
    i.add_argument("--ids", help="file with one int64 id per item row (default: row numbers)")
    i.add_argument("--index", default="exact")
    i.add_argument("--segments", type=int, default=1)
    i.add_argument("--threads", type=int, default=0)
    _add_data_args(i)
    _add_side_args(i)
    i.set_defaults(fn=cmd_index)

    r = sub.add_parser("recommend", help="top-k items per query row (user + context fields)")
    r.add_argument("recaller")
    r.add_argument("queries")
    r.add_argument("-k", type=int, default=10)
    _add_data_args(r)
    r.set_defaults(fn=cmd_recommend)

    args = ap.parse_args(argv)
    try:
        return args.fn(args)
    except (ValueError, FileNotFoundError, IsADirectoryError) as e:
        print(f"fmrecall: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
