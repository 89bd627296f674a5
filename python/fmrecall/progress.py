"""The library's logger and progress bars.

Messages go to ``logging.getLogger("fmrecall")`` (INFO: epochs, stages); the library never prints.
With ``verbose=True`` a message is also written to stderr when that logger would not show it
(no handler configured, or a level above INFO), so ``FM(verbose=True).fit(...)`` prints its epochs
without any logging setup and never twice.

A long operation (``fit``, ``partial_fit``, ``Recaller.add_items``, ``Interactions``,
``Schema.transform``) opens one tqdm bar with ``progress(...)``. It appears only once the operation
has run for ``DELAY_S`` seconds, and only on a terminal (stderr is a tty) or with ``verbose=True``;
``FMRECALL_PROGRESS=0`` / ``1`` forces it off / on. An operation nested in another (the transforms
inside ``Interactions``) adds no second bar. On success the bar is closed at 100% (also when early
stopping ends ``fit`` before its last epoch). tqdm is optional: without it there are no bars.
"""

from __future__ import annotations

import logging
import os
import sys
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Iterator, Optional

logger = logging.getLogger("fmrecall")

DELAY_S = 1.0  # a bar shows only once its operation has run this long
_ENV = "FMRECALL_PROGRESS"


def _tty() -> bool:
    stream = sys.stderr
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


def bars_wanted(verbose: bool) -> bool:
    """Whether a long operation shows a bar: FMRECALL_PROGRESS=0/1 decides, else verbose or a tty."""
    env = os.environ.get(_ENV, "").strip().lower()
    if env in ("0", "false", "no", "off"):
        return False
    if env in ("1", "true", "yes", "on"):
        return True
    return bool(verbose) or _tty()


class Bar:
    """One operation's bar (a tqdm bar, or nothing when none is wanted or tqdm is missing)."""

    def __init__(self, total: int, desc: str, unit: str, verbose: bool, show: bool = True) -> None:
        self.total = int(total)
        self._tqdm: Any = None
        if show and self.total > 0 and bars_wanted(verbose):
            try:
                from tqdm.auto import tqdm
            except ImportError:
                return
            self._tqdm = tqdm(
                total=self.total, desc=desc, unit=unit, unit_scale=True, delay=DELAY_S, file=sys.stderr, leave=True
            )

    @property
    def shown(self) -> bool:
        """True when a tqdm bar exists (it may still be waiting for DELAY_S to pass)."""
        return self._tqdm is not None

    def update(self, n: int) -> None:
        """Move by `n` units (never past the total: a rebuild may redo more work than planned)."""
        if self._tqdm is not None:
            self._tqdm.update(max(0, min(int(n), self.total - self._tqdm.n)))

    def write(self, line: str) -> None:
        """`line` on stderr without garbling the bar (and without showing a bar still in its delay)."""
        tq = self._tqdm
        if tq is not None and tq.last_print_t >= tq.start_t + tq.delay:  # the bar is on screen
            tq.write(line, file=sys.stderr)
        elif sys.stderr is not None:
            sys.stderr.write(line + "\n")
            sys.stderr.flush()

    def close(self, complete: bool) -> None:
        """Close the bar; `complete`: first move it to 100% (the operation succeeded)."""
        if self._tqdm is None:
            return
        if complete and self._tqdm.n < self.total:
            self._tqdm.update(self.total - self._tqdm.n)
        self._tqdm.close()
        self._tqdm = None


_NO_BAR = Bar(0, "", "", False, show=False)
_current: ContextVar[Optional[Bar]] = ContextVar("fmrecall_progress", default=None)


@contextmanager
def progress(total: int, desc: str, unit: str = "row", verbose: bool = False) -> Iterator[Bar]:
    """The bar of one long operation of `total` units (see the module docstring). Inside another
    operation's bar it yields a bar that shows nothing. Closed at 100% when the block succeeds."""
    outer = _current.get()
    bar = _NO_BAR if outer is not None else Bar(total, desc, unit, verbose)
    token = _current.set(bar)
    ok = False
    try:
        yield bar
        ok = True
    finally:
        _current.reset(token)
        bar.close(complete=ok)


def advance(n: int) -> None:
    """Move the bar of the operation running in this thread (if any) by `n` units."""
    bar = _current.get()
    if bar is not None:
        bar.update(n)


def info(message: str, verbose: bool = False) -> None:
    """Log `message` at INFO on the "fmrecall" logger; with `verbose`, also write it to stderr
    (through the current bar) when the logger would not show it."""
    if logger.isEnabledFor(logging.INFO) and logger.hasHandlers():
        logger.info(message)
    elif verbose:
        (_current.get() or _NO_BAR).write(message)
