"""Peak RSS of a process tree (a vLLM run spans several processes), sampled every 50 ms, per named phase."""

from __future__ import annotations

import contextlib
import threading

import psutil


class TreeRSS:
    """`with TreeRSS(pid) as rss: ...` samples the tree's RSS; `rss.phase = name` attributes what follows.

    `rss.peaks[name]` is the tree's peak RSS in bytes during that phase, `rss.peak` the overall one;
    `rss.largest[name]` the peak of its largest single process. Setting a phase samples at once, so a phase shorter
    than the interval still gets a figure."""

    def __init__(self, pid: int, phase: str = "run", interval_s: float = 0.05) -> None:
        self.root = psutil.Process(pid)
        self.interval_s = interval_s
        self.peaks: dict[str, int] = {}
        self.largest: dict[str, int] = {}
        self._lock = threading.Lock()
        self._phase = phase
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    @property
    def phase(self) -> str:
        return self._phase

    @phase.setter
    def phase(self, name: str) -> None:
        self._phase = name
        self._record()

    @property
    def peak(self) -> int:
        return max(self.peaks.values(), default=0)

    def __enter__(self) -> TreeRSS:
        self._record()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _tree_rss(self) -> list[int]:
        # A child may exit between listing and reading: count the ones still there rather than drop the sample.
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return []
        sizes = []
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                sizes.append(proc.memory_info().rss)
        return sizes

    def _record(self) -> None:
        sizes = self._tree_rss()
        if sizes:
            with self._lock:
                self.peaks[self._phase] = max(self.peaks.get(self._phase, 0), sum(sizes))
                self.largest[self._phase] = max(self.largest.get(self._phase, 0), max(sizes))

    def _sample(self) -> None:
        while not self._done.wait(self.interval_s):
            self._record()
