"""Progress of an epoch for the person watching: a tqdm bar on a terminal, a
plain line every N steps or T seconds when stderr goes to a file (SLURM logs
would otherwise fill with carriage-return bar redraws). Rank 0 only: other
ranks pass `enabled=False`."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO


def _clock_text(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class ProgressReporter:
    """`update(n, loss=..., img_s=...)` after each step; `close()` at the end of the epoch."""

    def __init__(
        self,
        total: int | None,
        desc: str = "",
        enabled: bool = True,
        use_bar: bool | None = None,
        every_steps: int = 100,
        every_seconds: float = 60.0,
        stream: TextIO | None = None,
        unit: str = "step",
        clock: Callable[[], float] = time.monotonic,
    ):
        self.total, self.desc, self.enabled, self.unit = total, desc, enabled, unit
        self.every_steps, self.every_seconds = max(1, every_steps), every_seconds
        self.stream = sys.stderr if stream is None else stream
        self._clock = clock
        self.done = 0
        self.stats: dict[str, float] = {}
        self._start = self._last_time = clock()
        self._last_done = 0
        self._bar = None
        if not enabled:
            return
        if use_bar is None:
            use_bar = bool(getattr(self.stream, "isatty", lambda: False)())
        if use_bar:
            from tqdm import tqdm

            self._bar = tqdm(
                total=total, desc=desc or None, unit=unit, file=self.stream, dynamic_ncols=True, leave=True
            )

    def update(self, n: int = 1, **stats: float) -> None:
        if not self.enabled:
            return
        self.done += n
        self.stats.update({k: float(v) for k, v in stats.items()})
        if self._bar is not None:
            if stats:
                self._bar.set_postfix({k: f"{v:.4g}" for k, v in self.stats.items()}, refresh=False)
            self._bar.update(n)
            return
        now = self._clock()
        if self.done - self._last_done >= self.every_steps or now - self._last_time >= self.every_seconds:
            self._write_line(now)

    def line(self, now: float | None = None) -> str:
        """The text of a periodic log line for the current state."""
        now = self._clock() if now is None else now
        elapsed = now - self._start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        parts = [self.desc] if self.desc else []
        if self.total:
            parts.append(f"{self.done}/{self.total} {self.unit}s ({100.0 * self.done / self.total:.0f}%)")
        else:
            parts.append(f"{self.done} {self.unit}s")
        parts += [f"{k}={v:.4g}" for k, v in self.stats.items()]
        timing = f"| {rate:.2f} {self.unit}/s, elapsed {_clock_text(elapsed)}"
        if self.total and rate > 0:
            timing += f", eta {_clock_text((self.total - self.done) / rate)}"
        return " ".join(parts + [timing])

    def _write_line(self, now: float) -> None:
        self.stream.write(self.line(now) + "\n")
        self.stream.flush()
        self._last_done, self._last_time = self.done, now

    def close(self) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.done != self._last_done:  # the final state, unless just printed
            self._write_line(self._clock())
        self.enabled = False

    def __enter__(self) -> ProgressReporter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
