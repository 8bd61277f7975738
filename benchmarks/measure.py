"""Peak RSS of a process tree (a vLLM run spans several processes), sampled every 50 ms, per named phase."""

from __future__ import annotations

import threading
import time

import psutil


class TreeRSS:
    """`with TreeRSS(pid) as rss: ...` samples the tree's RSS; `rss.phase = name` attributes what follows.

    `rss.peaks[name]` is the tree's peak RSS in bytes during that phase, `rss.peak` the overall one."""

    def __init__(self, pid: int, phase: str = "run", interval_s: float = 0.05) -> None:
        self.root = psutil.Process(pid)
        self.phase, self.interval_s = phase, interval_s
        self.peaks: dict[str, int] = {}
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    @property
    def peak(self) -> int:
        return max(self.peaks.values(), default=0)

    def __enter__(self) -> TreeRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._done.is_set():
            try:
                rss = sum(p.memory_info().rss for p in (self.root, *self.root.children(recursive=True)))
                self.peaks[self.phase] = max(self.peaks.get(self.phase, 0), rss)
            except psutil.Error:
                pass
            time.sleep(self.interval_s)
