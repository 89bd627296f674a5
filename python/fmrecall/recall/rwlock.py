"""A readers–writer lock: many readers at once, or one writer alone (writers are not starved)."""

from __future__ import annotations

import contextlib
import threading
from typing import Iterator


class ReadWriteLock:
    """``with lock.read():`` any number of readers; ``with lock.write():`` one writer, no readers.

    A waiting writer blocks new readers, so a stream of searches cannot starve an update. Not
    re-entrant: a thread holding the read side must not ask for the write side.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._waiting_writers = 0

    @contextlib.contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._waiting_writers:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if self._readers == 0:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._waiting_writers += 1
            try:
                while self._writer or self._readers:
                    self._cond.wait()
            finally:
                self._waiting_writers -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()
