"""Command line: ``fmrecall demo | train | predict | index | recommend`` (also ``python -m fmrecall``).

Results (predictions, recommendations, tables) go to stdout or ``--out``; progress, epochs and
errors go to stderr. Exit status: 0 on success (also when a reader such as ``head`` closes the
pipe early), 1 for a runtime error (a missing or malformed file, an unsuitable model: one line on
stderr, no traceback), 2 for a usage error (bad or missing arguments), 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, NoReturn, Optional, Sequence, TextIO, Tuple, Union

import numpy as np

from . import FFM, FM, Dataset, HybridFM, Recaller, Sides, __version__, load
from .joins import join_rows
from .metrics import auc

MODELS = {"fm": FM, "ffm": FFM, "hybrid": HybridFM}
MOVIELENS_MODELS = {"fm": "FM", "hybrid": "HybridFM", "ffm": "FFM"}


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Every option's help ends with its default, except defaults that mean "not given"."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False:
            return action.help or ""
        return super()._get_help_string(action) or ""


def _usage_error(args: argparse.Namespace, message: str) -> NoReturn:
    """Exit 2 with the sub-command's usage line and `message` (argparse's own usage-error path)."""
    parser: argparse.ArgumentParser = args.parser
    parser.error(message)


# ---------------------------------------------------------------------------------------- inputs
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


def _field_ranges(spec: str) -> List[Tuple[int, int]]:
    """'0:957,957:5039' -> [(0, 957), (957, 5039)] ([start, end) feature ranges, one per field)."""
    out: List[Tuple[int, int]] = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        start, end = part.split(":")
        out.append((int(start), int(end)))
    return out


def _spec(parse: Callable[[str], Any], what: str) -> Callable[[str], Any]:
    """An argparse type: a bad spec is a usage error naming the flag's syntax."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None

    return convert


def _has_labels(path: str) -> bool:
    """False when the first non-blank line starts with a field:feature(:value) token, not a label."""
    try:
        with open(path, "rb") as f:
            for line in f:
                tokens = line.split()
                if tokens:
                    return b":" not in tokens[0]
    except OSError:
        pass  # the parser reports the file itself
    return True


def _parse(path: str, args: argparse.Namespace) -> Dataset:
    if args.format == "libsvm":
        return Dataset.from_libsvm(path, args.fields)
    return Dataset.from_libffm(path)


def _read(path: str, args: argparse.Namespace, need_labels: bool = False) -> Dataset:
    """Rows of a libffm / libsvm file; query and item files may leave out the label (every line
    then starts with its first field:feature token)."""
    if args.format == "libsvm" and not args.fields:
        _usage_error(args, "--format libsvm needs --fields start:end,start:end,... (one range per field)")
    if _has_labels(path):
        return _parse(path, args)
    if need_labels:
        first = _first_token(path)
        raise ValueError(f"{path}: the rows have no labels (the first token is {first!r}); training needs them")
    # a label-free file: parsed as a copy with a 0 label per line (line numbers kept for errors)
    fd, tmp = tempfile.mkstemp(prefix="fmrecall-", suffix=os.path.splitext(path)[1])
    try:
        with os.fdopen(fd, "wb") as out, open(path, "rb") as src:
            for line in src:
                out.write(b"0 " + line if line.strip() else line)
        try:
            data = _parse(tmp, args)
        except ValueError as e:
            raise ValueError(str(e).replace(tmp, path)) from None
    finally:
        os.unlink(tmp)
    data.labels = None
    data.source = path
    return data


def _first_token(path: str) -> str:
    with open(path, "rb") as f:
        for line in f:
            if line.split():
                return line.split()[0].decode("utf-8", "replace")
    return ""


def _read_id_lists(path: str, n: int) -> List[np.ndarray]:
    """One line per query: the item ids to exclude, separated by spaces or commas (a blank line
    excludes nothing). ValueError naming path:line for a bad id or a wrong line count."""
    out: List[np.ndarray] = []
    with open(path, encoding="utf-8") as f:
        for no, line in enumerate(f, 1):
            tokens = line.replace(",", " ").split()
            try:
                out.append(np.array([int(t) for t in tokens], dtype=np.int64))
            except ValueError:
                bad = next(t for t in tokens if not t.lstrip("+-").isdigit())
                raise ValueError(f"{path}:{no}: bad item id {bad!r} (ids are integers)") from None
    if len(out) != n:
        raise ValueError(f"{path}: {len(out)} lines, but there are {n} query rows (one line per query, blank = none)")
    return out


def _sides(args: argparse.Namespace) -> Optional[Sides]:
    if not (args.user or args.context or args.item):
        return None
    return Sides(user=args.user or [], context=args.context or [], item=args.item or [])


def _open_out(path: Optional[str]) -> TextIO:
    return open(path, "w", encoding="utf-8") if path else sys.stdout


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """σ(x), float64, without overflow warnings."""
    x = np.asarray(x, dtype=np.float64)
    return np.exp(-np.logaddexp(0.0, -x))


# -------------------------------------------------------------------------------------- commands
def cmd_train(args: argparse.Namespace) -> int:
    if args.patience < 0:
        _usage_error(args, f"--patience must be >= 0, got {args.patience}")
    if not 0 <= args.average < 1:
        _usage_error(args, f"--average must be in [0, 1), got {args.average}")
    hyper: Dict[str, Any] = dict(
        k=args.k,
        loss=args.loss,
        epochs=args.epochs,
        learning_rate=args.learning_rate,
        reg_linear=args.reg_linear,
        reg_factors=args.reg_factors,
        patience=args.patience or None,
        average=args.average,
        threads=args.threads,
        seed=args.seed,
        verbose=True,
    )
    if args.model == "hybrid":
        sides = _sides(args)
        if sides is None:
            _usage_error(args, "--model hybrid needs --user/--context/--item")
        hyper.update(sides=sides, field_aware=args.field_aware)
    train = _read(args.train, args, need_labels=True)
    valid = _read(args.valid, args, need_labels=True) if args.valid else None
    model = MODELS[args.model](**hyper).fit(train, valid=valid)
    model.save(args.out)
    best = f", best epoch {model.best_epoch_}" if model.best_epoch_ is not None else ""
    print(f"saved {type(model).__name__} ({len(model.history_)} epochs{best}) to {args.out}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    model = load(args.model)
    data = _read(args.data, args)
    scores = model.decision_function(data)
    pred = _sigmoid(scores) if model.loss == "logistic" else scores
    out = _open_out(args.out)
    try:
        for start in range(0, pred.size, 4096):  # ~40 kB per write
            out.write("".join(f"{v:.6g}\n" for v in pred[start : start + 4096]))
        out.flush()
    finally:
        if args.out:
            out.close()
    if data.labels is not None and model.loss == "logistic" and len(np.unique(data.labels > 0)) == 2:
        print(f"AUC {auc(data.labels, scores):.5f}", file=sys.stderr)
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    model = load(args.model)
    sides = _sides(args) or getattr(model, "sides", None)
    if sides is None:
        _usage_error(args, "give the sides with --user/--context/--item (an FM / FFM model file does not hold them)")
    items = _read(args.items, args)
    ids = np.loadtxt(args.ids, dtype=np.int64, ndmin=1) if args.ids else np.arange(items.n_rows, dtype=np.int64)
    rec = Recaller(model, sides, args.index, segments=args.segments, threads=args.threads).add_items(items, ids)
    rec.save(args.out)
    print(f"indexed {len(rec)} items (dim {rec.dim}) into {args.out}")
    return 0


def cmd_recommend(args: argparse.Namespace) -> int:
    rec = Recaller.load(args.recaller)
    queries = _read(args.queries, args)
    exclude = _read_id_lists(args.exclude, queries.n_rows) if args.exclude else None
    res = rec.search(queries, args.k, exclude=exclude)
    values = res.proba if args.proba else res.scores  # proba: σ(score), logistic models only
    out = _open_out(args.out)
    try:
        for r in range(res.ids.shape[0]):
            items = " ".join(f"{i}:{s:.6g}" for i, s in zip(res.ids[r], values[r]) if i >= 0)
            out.write(f"{r}\t{items}\n")
        out.flush()
    finally:
        if args.out:
            out.close()
    return 0


def demo_models(args: argparse.Namespace) -> Tuple[str, ...]:
    """The models `demo --movielens` trains: the README's headline FM unless --model / --all-models."""
    if args.all_models:
        return ("FM", "HybridFM", "FFM")
    return (MOVIELENS_MODELS[args.model or "fm"],)


def cmd_demo(args: argparse.Namespace) -> int:
    """Generate a click log, train, index every item, recommend, and check exactness and quality;
    or, with --movielens PATH, the MovieLens-100K comparison against classic recall channels."""
    if args.movielens:
        from .experiments import movielens

        models = demo_models(args)
        print(f"MovieLens-100K {args.split}: {', '.join(models)} vs classic recall channels (progress on stderr)")
        sys.stdout.flush()
        out = movielens.run(
            args.movielens, split=args.split, models=models, threads=args.threads, seed=args.seed, verbose=True
        )
        print(movielens.format_table(out))
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
    model_name = args.model or "ffm"
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
    if model_name == "hybrid":
        hyper.update(sides=log.sides, field_aware="item")
    model = MODELS[model_name](**hyper).fit(train, valid=valid)
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


# ---------------------------------------------------------------------------------------- parser
def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=["libffm", "libsvm"], default="libffm", help="input text format")
    p.add_argument(
        "--fields",
        type=_spec(_field_ranges, "start:end,start:end,..."),
        help="libsvm only: the [start, end) feature range of each field, e.g. 0:957,957:5039",
    )


def _add_side_args(p: argparse.ArgumentParser, what: str) -> None:
    ints = _spec(_int_list, "field numbers such as 0,2-5")
    p.add_argument("--user", type=ints, help=f"user fields, e.g. 0 or 0-2 ({what})")
    p.add_argument("--context", type=ints, help=f"context fields, e.g. 2-9 ({what})")
    p.add_argument("--item", type=ints, help=f"item fields, e.g. 1 ({what})")


def _auto_or_float(text: str) -> Union[str, float]:
    """ "auto" (the library's data-derived default) or a number."""
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number or auto, got {text!r}") from None


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="fmrecall", description=__doc__, formatter_class=_Formatter)
    ap.add_argument("--version", action="version", version=f"fmrecall {__version__}")
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    def command(name: str, fn: Callable[[argparse.Namespace], int], help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help, formatter_class=_Formatter)
        p.set_defaults(fn=fn, parser=p)
        return p

    d = command("demo", cmd_demo, "generate a click log, train, index and recommend (no data needed)")
    d.add_argument("--model", choices=sorted(MODELS), help="model type (default: ffm; with --movielens: fm)")
    d.add_argument("--k", type=_positive, default=8, help="latent size of the generated-log model")
    d.add_argument(
        "--index", default="auto", help="auto | exact | hnsw | hnsw-ip | ivf | tiered-ivf | a faiss factory string"
    )
    d.add_argument("--users", type=_positive, default=2000, help="users in the generated log")
    d.add_argument("--items", type=_positive, default=1000, help="items in the generated log")
    d.add_argument("--queries", type=_positive, default=500, help="requests to recommend for")
    d.add_argument("--top", type=_positive, default=10, help="items per request")
    d.add_argument("--seed", type=int, default=0, help="seed of the data, the model and the requests")
    d.add_argument("--threads", type=int, default=0, help="OpenMP threads (0: all cores)")
    d.add_argument("--out", help="save the Recaller to this directory")
    d.add_argument("--verbose", action="store_true", help="print every epoch (stderr)")
    d.add_argument(
        "--movielens",
        metavar="PATH",
        help="run the MovieLens-100K comparison of the README on this ml-100k folder (FM k=64 unless --model)",
    )
    d.add_argument("--split", default="u1", help="MovieLens split (u1..u5, ua, ub)")
    d.add_argument("--all-models", action="store_true", help="MovieLens: FM, HybridFM and FFM")

    t = command("train", cmd_train, "train a model on a labelled libffm / libsvm file")
    t.add_argument("train", help="training rows (label field:feature:value ...)")
    t.add_argument("--valid", help="validation rows: per-epoch loss / AUC and early stopping")
    t.add_argument("--out", required=True, help="model file to write (.npz)")
    t.add_argument("--model", choices=sorted(MODELS), default="ffm", help="model type")
    t.add_argument("--k", type=_positive, default=4, help="latent size")
    t.add_argument("--loss", choices=["logistic", "squared"], default="logistic", help="training loss")
    t.add_argument("--epochs", type=_positive, default=30, help="most epochs")
    t.add_argument(
        "--patience",
        type=int,
        default=3,
        help="with --valid: stop after this many epochs without a better validation loss and keep the "
        "best epoch's weights (0: train every epoch)",
    )
    t.add_argument(
        "--average",
        type=float,
        default=0.9,
        help="per-epoch moving average of the weights, avg = a*avg + (1-a)*weights, kept when it scores "
        "better (0: the last or best epoch's weights)",
    )
    t.add_argument(
        "--learning-rate", type=_auto_or_float, default="auto", help="AdaGrad learning rate (auto: 8 / mean ||x||^2)"
    )
    t.add_argument("--reg-linear", type=float, default=2e-5, help="L2 on the linear weights")
    t.add_argument(
        "--reg-factors",
        type=_auto_or_float,
        default="auto",
        help="L2 on the latent vectors (auto: 2 / (mean ||x||^2)^3, at most 2e-3)",
    )
    t.add_argument("--field-aware", choices=["item", "query"], default="item", help="hybrid: the field-aware side")
    t.add_argument("--threads", type=int, default=0, help="OpenMP threads (0: all cores)")
    t.add_argument("--seed", type=int, default=0, help="seed of the initial weights and the row order")
    _add_data_args(t)
    _add_side_args(t, "--model hybrid")

    p = command("predict", cmd_predict, "probabilities (logistic loss) or values (squared loss) of every row")
    p.add_argument("model", help="model file (.npz) written by train")
    p.add_argument("data", help="rows to score; labelled rows also print the AUC on stderr")
    p.add_argument("--out", help="write one value per line here instead of stdout")
    _add_data_args(p)

    i = command("index", cmd_index, "split a model and index item rows with faiss")
    i.add_argument("model", help="model file (.npz) written by train")
    i.add_argument("items", help="item rows (item fields only; the label may be left out)")
    i.add_argument("--out", required=True, help="Recaller directory to write")
    i.add_argument("--ids", help="file with one int64 id per item row (default: the row numbers)")
    i.add_argument(
        "--index", default="auto", help="auto | exact | hnsw | hnsw-ip | ivf | tiered-ivf | a faiss factory string"
    )
    i.add_argument("--segments", type=_positive, default=1, help="split the vectors into this many indexes")
    i.add_argument("--threads", type=int, default=0, help="OpenMP threads (0: all cores)")
    _add_data_args(i)
    _add_side_args(i, "default: the sides a hybrid model holds")

    r = command("recommend", cmd_recommend, "top-k items per query row (user + context fields)")
    r.add_argument("recaller", help="Recaller directory written by index")
    r.add_argument("queries", help="query rows (user + context fields; the label may be left out)")
    r.add_argument("-k", type=_positive, default=10, help="items per query")
    r.add_argument(
        "--exclude",
        metavar="FILE",
        help="item ids to leave out, one line per query row (ids separated by spaces or commas; blank: none)",
    )
    r.add_argument("--proba", action="store_true", help="print σ(score) instead of the score (logistic models)")
    r.add_argument("--out", help="write the lines (query<TAB>id:value ...) here instead of stdout")
    _add_data_args(r)
    return ap


def _quiet_stdout() -> None:
    """After a closed pipe: point stdout at /dev/null so the interpreter's final flush is silent."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)  # usage errors exit 2 here (or in _usage_error)
    try:
        return int(args.fn(args))
    except BrokenPipeError:  # the reader (e.g. `head`) has what it wanted
        _quiet_stdout()
        return 0
    except KeyboardInterrupt:
        print("fmrecall: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a runtime error: one line, no traceback
        kind = "" if isinstance(e, (ValueError, OSError)) else f"{type(e).__name__}: "
        print(f"fmrecall {args.cmd}: error: {kind}{e}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
