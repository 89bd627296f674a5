"""The command line, run as users run it: ``python -m fmrecall`` in a child process.

Exit status 0 / 1 (runtime error) / 2 (usage error), no traceback, a quiet closed pipe, label-free
query and item files, ``recommend --exclude --proba --out`` and ``train --patience``. Expected
values come from the library's API on the same files (and numpy for σ), not from the CLI.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
from helpers import child_env

import fmrecall
from fmrecall import Dataset, load
from fmrecall.cli import build_parser, demo_models, main
from fmrecall.datasets import synthetic
from fmrecall.joins import join_rows

ROOT = Path(__file__).resolve().parents[1]
SIDES = ["--user", "0-2", "--context", "3-4", "--item", "5-8"]  # the fields of the synthetic log


def fmrecall_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = child_env(FMRECALL_PROGRESS="0")
    return subprocess.run(
        [sys.executable, "-m", "fmrecall", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def strip_label(src: Path, dst: Path) -> None:
    dst.write_text("".join(line.split(" ", 1)[1] for line in src.read_text().splitlines(keepends=True)))


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train / valid (labelled), items and queries (label-free), a trained FM and its Recaller."""
    d = tmp_path_factory.mktemp("cli")
    log = synthetic(n_users=1000, n_items=150, seed=0)
    train, valid = log.impressions.holdout(0.8, seed=0)
    train.to_libffm(str(d / "train.ffm"))
    valid.to_libffm(str(d / "valid.ffm"))
    log.items.to_libffm(str(d / "items_labelled.ffm"))
    strip_label(d / "items_labelled.ffm", d / "items.ffm")
    rng = np.random.default_rng(1)
    log.queries(rng.integers(0, 1000, 12), rng.integers(0, 6, 12), rng.integers(0, 3, 12)).to_libffm(
        str(d / "queries_labelled.ffm")
    )
    strip_label(d / "queries_labelled.ffm", d / "queries.ffm")
    np.savetxt(d / "ids.txt", 1000 + np.arange(150), fmt="%d")
    (d / "bad.ffm").write_text("1 0:1:1\n1 0:x:1\n")
    r = fmrecall_cli("train", "train.ffm", "--valid", "valid.ffm", "--model", "fm", "--out", "fm.npz", cwd=d)
    assert r.returncode == 0, r.stderr
    r = fmrecall_cli("index", "fm.npz", "items.ffm", "--ids", "ids.txt", *SIDES, "--out", "rec", cwd=d)
    assert r.returncode == 0, r.stderr
    return d


def parse_lines(text: str) -> List[Dict[int, float]]:
    out = []
    for i, line in enumerate(text.splitlines()):
        row, items = line.split("\t")
        assert int(row) == i
        out.append({int(p.split(":")[0]): float(p.split(":")[1]) for p in items.split()})
    return out


def test_version_and_defaults_in_help(files: Path) -> None:
    r = fmrecall_cli("--version", cwd=files)
    assert r.returncode == 0 and r.stdout.strip() == f"fmrecall {fmrecall.__version__}"
    r = fmrecall_cli("train", "--help", cwd=files)
    assert r.returncode == 0
    text = " ".join(r.stdout.split())  # argparse wraps lines
    assert "--k K latent size (default: 4)" in text
    assert "(0: train every epoch) (default: 3)" in text  # --patience: the library's defaults
    assert "(auto: 8 / mean ||x||^2) (default: auto)" in text and "--epochs EPOCHS most epochs (default: 30)" in text
    assert "(0: the last or best epoch's weights) (default: 0.9)" in text  # --average


@pytest.mark.parametrize("value", ["0", "0.5"])
def test_train_average(files: Path, value: str) -> None:
    args = ["train", "train.ffm", "--model", "fm", "--epochs", "3", "--threads", "1", "--average", value]
    r = fmrecall_cli(*args, "--out", f"avg{value}.npz", cwd=files)
    assert r.returncode == 0, r.stderr
    model = load(str(files / f"avg{value}.npz"))
    assert model.average == float(value)
    assert [h["averaged"] for h in model.history_] == [float(value) > 0] * 3


@pytest.mark.parametrize("value", ["1", "-0.5"])
def test_train_average_out_of_range_is_a_usage_error(files: Path, value: str) -> None:
    r = fmrecall_cli("train", "train.ffm", "--average", value, "--out", "x.npz", cwd=files)
    assert r.returncode == 2 and "--average must be in [0, 1)" in r.stderr


def test_every_argument_has_help() -> None:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert set(sub.choices) == {"demo", "train", "predict", "index", "recommend"}
    for name, command in sub.choices.items():
        for action in command._actions:
            assert action.help, f"{name} {action.option_strings or action.dest} has no help"


def test_train_patience_stops_early_and_keeps_the_best_epoch(files: Path) -> None:
    args = ["train", "train.ffm", "--valid", "valid.ffm", "--model", "ffm", "--k", "8", "--learning-rate", "0.3"]
    r = fmrecall_cli(*args, "--epochs", "30", "--patience", "1", "--threads", "1", "--out", "ffm.npz", cwd=files)
    assert r.returncode == 0, r.stderr
    model = load(str(files / "ffm.npz"))
    losses = [h["valid_loss"] for h in model.history_]
    assert model.patience == 1 and len(losses) < 30  # stopped early
    assert losses[-1] >= losses[-2] and model.best_epoch_ == int(np.argmin(losses)) + 1
    assert "epoch   1" in r.stderr and "train_loss" not in r.stdout  # epochs on stderr, results on stdout
    # the saved weights are the best epoch's: its validation loss, recomputed with numpy
    valid = Dataset.from_libffm(str(files / "valid.ffm"))
    p = sigmoid(model.decision_function(valid).astype(np.float64))
    y = valid.labels > 0
    logloss = -np.mean(np.where(y, np.log(p), np.log(1 - p)))
    assert logloss == pytest.approx(min(losses), rel=1e-4)


def test_predict_writes_probabilities(files: Path) -> None:
    r = fmrecall_cli("predict", "fm.npz", "valid.ffm", "--out", "pred.txt", cwd=files)
    assert r.returncode == 0, r.stderr
    assert re.fullmatch(r"AUC 0\.\d{5}\n", r.stderr)
    got = np.loadtxt(files / "pred.txt")
    want = sigmoid(load(str(files / "fm.npz")).decision_function(Dataset.from_libffm(str(files / "valid.ffm"))))
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_predict_into_a_closed_pipe_exits_quietly(files: Path) -> None:
    # 32,000 lines (~300 kB) are far more than a pipe holds: the reader takes one line and closes it
    # while predict still writes (GNU head may drain the pipe first; this reader never does)
    reader = f"{sys.executable} -c 'import sys; print(sys.stdin.readline(), end=\"\")'"
    cmd = f"{sys.executable} -m fmrecall predict fm.npz train.ffm | {reader}"
    env = child_env()
    r = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], cwd=files, env=env, capture_output=True, text=True)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert len(r.stdout.splitlines()) == 1


def test_recommend_label_free_with_exclude_proba_out(files: Path) -> None:
    n_q = 12
    exclude = [[1000 + (3 * q + j) % 150 for j in range(q % 4)] for q in range(n_q)]  # some lines blank
    (files / "seen.txt").write_text("".join(" ".join(map(str, e)) + "\n" for e in exclude))
    r = fmrecall_cli("recommend", "rec", "queries.ffm", "-k", "5", "--exclude", "seen.txt", "--out", "s.txt", cwd=files)
    assert r.returncode == 0 and r.stdout == "", r.stderr
    r = fmrecall_cli("recommend", "rec", "queries.ffm", "-k", "5", "--exclude", "seen.txt", "--proba", cwd=files)
    assert r.returncode == 0, r.stderr
    scores, probas = parse_lines((files / "s.txt").read_text()), parse_lines(r.stdout)
    assert len(scores) == n_q
    # the reference: every item's model score on the joined (query + item) row, excluded items removed
    model = load(str(files / "fm.npz"))
    queries = Dataset.from_libffm(str(files / "queries_labelled.ffm"))
    items = Dataset.from_libffm(str(files / "items_labelled.ffm"))
    joined = join_rows([(queries, np.repeat(np.arange(n_q), 150)), (items, np.tile(np.arange(150), n_q))])
    full = model.decision_function(joined).reshape(n_q, 150)
    for q in range(n_q):
        full[q, [e - 1000 for e in exclude[q]]] = -np.inf
        best = np.argsort(-full[q])[:5]
        assert list(scores[q]) == list(1000 + best)
        np.testing.assert_allclose(list(scores[q].values()), full[q, best], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(list(probas[q].values()), sigmoid(full[q, best]), rtol=1e-5)


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["recommend", "rec", "queries.ffm", "-k", "0"], 2, "argument -k: must be >= 1"),
        (["train", "train.ffm", "--learning-rate", "fast", "--out", "x"], 2, "must be a number or auto, got 'fast'"),
        (["predict", "fm.npz", "valid.ffm", "--format", "libsvm"], 2, "--format libsvm needs --fields"),
        (["index", "fm.npz", "items.ffm", "--out", "x"], 2, "give the sides with --user/--context/--item"),
        (["train", "items.ffm", "--out", "x.npz"], 1, "items.ffm: the rows have no labels"),
        (["recommend", "rec", "queries.ffm", "--exclude", "items.ffm"], 1, "items.ffm:1: bad item id '"),
        (["recommend", "rec", "queries.ffm", "--exclude", "ids.txt"], 1, "150 lines, but there are 12 query rows"),
        (["predict", "fm.npz", "bad.ffm"], 1, "bad.ffm:2"),
        (["recommend", "squared", "queries.ffm", "--proba"], 1, "probabilities need the logistic loss"),
    ],
)
def test_exit_status_and_one_line_errors(
    files: Path, squared: Path, args: List[str], code: int, message: str, monkeypatch, capsys
) -> None:
    # in-process (python -m fmrecall is sys.exit(main())); the child-process path: the test below
    monkeypatch.chdir(files)
    if code == 2:
        with pytest.raises(SystemExit) as stop:
            main(args)
        assert stop.value.code == 2
    else:
        assert main(args) == 1
    err = capsys.readouterr().err
    assert message in err
    if code == 1:  # one line, no traceback
        assert err.startswith(f"fmrecall {args[0]}: error: ") and err.count("\n") == 1


@pytest.fixture(scope="module")
def squared(files: Path) -> Path:
    """A Recaller of a squared-loss model (no probabilities)."""
    model = fmrecall.FM(k=4, loss="squared", epochs=1).fit(Dataset.from_libffm(str(files / "valid.ffm")))
    items = Dataset.from_libffm(str(files / "items_labelled.ffm"))
    fmrecall.Recaller(model, fmrecall.Sides(user=[0, 1, 2], context=[3, 4], item=[5, 6, 7, 8])).add_items(
        items, np.arange(150)
    ).save(str(files / "squared"))
    return files / "squared"


def test_exit_status_in_a_child_process(files: Path) -> None:
    r = fmrecall_cli("recommend", "rec", "queries.ffm", "--bogus", cwd=files)
    assert r.returncode == 2 and "unrecognized arguments: --bogus" in r.stderr and "Traceback" not in r.stderr
    r = fmrecall_cli("recommend", "rec", "missing.ffm", cwd=files)
    assert r.returncode == 1 and r.stderr.startswith("fmrecall recommend: error: ") and "missing.ffm" in r.stderr
    assert r.stderr.count("\n") == 1


def test_demo_runs_and_reports_an_exact_split(files: Path) -> None:
    r = fmrecall_cli("demo", "--users", "300", "--items", "100", "--queries", "50", cwd=files)
    assert r.returncode == 0, r.stderr
    err = float(re.search(r"max \|score - model score on joined row\| = (\S+)", r.stdout).group(1))
    assert err < 1e-4


def test_demo_movielens_trains_the_headline_fm() -> None:
    parse = build_parser().parse_args
    assert demo_models(parse(["demo", "--movielens", "ml-100k"])) == ("FM",)
    assert demo_models(parse(["demo", "--movielens", "ml-100k", "--model", "ffm"])) == ("FFM",)
    assert demo_models(parse(["demo", "--movielens", "ml-100k", "--all-models"])) == ("FM", "HybridFM", "FFM")
