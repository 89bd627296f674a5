"""The part every readers-and-a-writer stress run shares (tests/stress_recall.py, stress_keys.py):
counts and failures under one lock, the writer's loop (one mutation cycle, a save every 5th), the
threads, and the JSON line the parent test reads (tests/helpers.run_stress)."""

from __future__ import annotations

import json
import threading
import time
import traceback
from typing import Any, Callable, Dict, List


class Stress:
    """Counts ("searches", "mutations", "saves", "failures", plus `extra`), the first 5 failure
    messages, and the stop event the reader loops watch."""

    def __init__(self, **extra: Any) -> None:
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.counts: Dict[str, Any] = {"searches": 0, "mutations": 0, "saves": 0, "failures": 0, **extra}
        self.errors: List[str] = []

    def fail(self, msg: str) -> None:
        with self.lock:
            self.counts["failures"] += 1
            if len(self.errors) < 5:
                self.errors.append(msg)

    def count(self, key: str, n: int = 1) -> None:
        with self.lock:
            self.counts[key] += n

    def run(
        self,
        reader: Callable[[int], None],
        readers: int,
        cycle: Callable[[], None],
        mutations: int,
        rec: Any,
        save_dir: str,
        seconds: float,
    ) -> None:
        """`readers` threads of reader(seed) and one writer repeating cycle() (`mutations` changes
        each; rec.save(save_dir) every 5th cycle when save_dir) for `seconds`, then stop and join."""

        def writer() -> None:
            done = 0
            while not self.stop.is_set():
                try:
                    cycle()
                    done += 1
                    self.count("mutations", mutations)
                    if save_dir and done % 5 == 0:
                        rec.save(save_dir)
                        self.count("saves")
                except Exception:
                    self.fail(traceback.format_exc(limit=3))

        threads = [threading.Thread(target=reader, args=(s,)) for s in range(readers)]
        threads.append(threading.Thread(target=writer))
        for t in threads:
            t.start()
        time.sleep(seconds)
        self.stop.set()
        for t in threads:
            t.join(60)

    def report(self) -> int:
        """Print the counts (and errors) as one JSON line; the exit status: 1 on any failure."""
        print(json.dumps({**self.counts, "errors": self.errors}))
        return 1 if self.counts["failures"] else 0
