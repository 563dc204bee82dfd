"""Timing for the benchmarks: per-thread CPU time (`time.thread_time`, immune to other
processes on a shared machine), medians over repetitions in which the compared
variants alternate, so drift hits every side alike."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field


@dataclass
class Context:
    quick: bool
    reps: int
    warmup: int
    batch: int
    imagenet_batch: int
    results: dict = field(default_factory=dict)
    log: Callable[[str], None] = print

    def compare(self, fns: Mapping[str, Callable[[], object]], reps: int | None = None) -> dict[str, float]:
        """Median per-thread CPU milliseconds of each fn, the fns alternating within every repetition."""
        for fn in fns.values():
            for _ in range(self.warmup):
                fn()
        times: dict[str, list[float]] = {name: [] for name in fns}
        for _ in range(reps or self.reps):
            for name, fn in fns.items():
                t0 = time.thread_time()
                fn()
                times[name].append(time.thread_time() - t0)
        return {name: statistics.median(v) * 1e3 for name, v in times.items()}
