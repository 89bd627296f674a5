"""Logging and progress bars (fmrecall.progress): epochs through the "fmrecall" logger, verbose
lines on stderr exactly once, one bar per long operation, closed at 100% on early stopping, no
bar off a terminal, none without tqdm, and no print() in the library."""

from __future__ import annotations

import ast
import logging
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tqdm import tqdm

from fmrecall import FM, Categorical, Interactions, Recaller, Schema, progress
from fmrecall.datasets import synthetic

PACKAGE = Path(__file__).resolve().parents[1] / "python" / "fmrecall"


@pytest.fixture(scope="module")
def log():
    return synthetic(n_users=300, n_items=100, seed=0)


@pytest.fixture
def bars_on(monkeypatch):
    """Bars forced on (stderr is captured, not a terminal) and shown at once."""
    monkeypatch.setenv("FMRECALL_PROGRESS", "1")
    monkeypatch.setattr(progress, "DELAY_S", 0.0)


def last_bar_state(err: str, desc: str) -> str:
    """The last state tqdm drew of the bar named `desc` (states are separated by carriage returns)."""
    states = [s for s in re.split(r"[\r\n]", err) if s.startswith(desc)]
    assert states, f"no {desc} bar in {err!r}"
    return states[-1]


def test_epochs_go_to_the_logger_and_never_to_stdout(log, caplog, capsys):
    tr, va = log.impressions.holdout(0.8, seed=0)
    with caplog.at_level(logging.INFO, logger="fmrecall"):
        model = FM(k=4, epochs=3, patience=None, verbose=True).fit(tr, valid=va)
    lines = [r.getMessage() for r in caplog.records if r.name == "fmrecall"]
    assert [int(line.split()[1]) for line in lines] == [1, 2, 3] and len(model.history_) == 3
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""  # shown by the logger's handler only, never twice


def test_verbose_writes_each_epoch_to_stderr_once_without_logging_setup(log, capsys):
    tr, va = log.impressions.holdout(0.8, seed=0)
    FM(k=4, epochs=3, patience=None, verbose=True).fit(tr, valid=va)
    out = capsys.readouterr()
    assert out.out == ""
    assert [line.split()[:2] for line in out.err.splitlines()] == [["epoch", "1"], ["epoch", "2"], ["epoch", "3"]]
    FM(k=4, epochs=3, patience=None).fit(tr, valid=va)
    assert capsys.readouterr().err == ""  # not verbose: silent


def test_fit_bar_closes_at_100_percent_on_early_stopping(log, bars_on, capsys):
    tr, va = log.impressions.holdout(0.8, seed=0)
    model = FM(k=8, epochs=40, learning_rate=0.5, patience=1, seed=0).fit(tr, valid=va)
    assert len(model.history_) < 40  # stopped early
    state = last_bar_state(capsys.readouterr().err, "FM.fit")
    total = tqdm.format_sizeof(tr.n_rows * 40)  # 40 epochs planned: the bar still ends full
    assert "100%" in state and f"{total}/{total}" in state, state


def test_one_bar_for_interactions_and_for_add_items(log, bars_on, capsys):
    users = pd.DataFrame({"user_id": np.arange(50), "age": np.arange(50) % 7})
    items = pd.DataFrame({"item_id": np.arange(30), "genre": np.arange(30) % 4})
    rng = np.random.default_rng(0)
    events = pd.DataFrame({"user_id": rng.integers(0, 50, 400), "item_id": rng.integers(0, 30, 400)})
    schema = Schema(
        [
            Categorical("user_id", "user"),
            Categorical("age", "user"),
            Categorical("item_id", "item"),
            Categorical("genre", "item"),
        ]
    )
    data = Interactions(users, items, events, schema, negatives=2)
    err = capsys.readouterr().err
    assert "100%" in last_bar_state(err, "Interactions")
    assert "Schema.transform" not in err  # the transforms inside add no bar of their own
    schema.transform(items, side="item")
    assert "100%" in last_bar_state(capsys.readouterr().err, "Schema.transform")
    model = FM(k=4, epochs=1).fit(data)
    capsys.readouterr()
    Recaller(model, schema, segments=2).add_items(items, "item_id")
    state = last_bar_state(capsys.readouterr().err, "add_items")
    assert "100%" in state and "90.0/90.0" in state  # 30 vectors built + 30 inserted into each of 2 segments


def test_no_bar_off_a_terminal_or_without_tqdm(log, monkeypatch, capsys):
    monkeypatch.setattr(progress, "DELAY_S", 0.0)
    monkeypatch.delenv("FMRECALL_PROGRESS", raising=False)
    tr = log.impressions
    FM(k=4, epochs=2).fit(tr)  # stderr is captured: not a terminal
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("FMRECALL_PROGRESS", "1")
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # import fails: tqdm is optional
    model = FM(k=4, epochs=2, verbose=True).fit(tr)
    err = capsys.readouterr().err
    assert "%|" not in err and len(err.splitlines()) == len(model.history_) == 2


def test_the_library_never_prints():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "cli.py":  # the command line's output is its job
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert offenders == []
