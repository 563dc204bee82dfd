"""Ctrl-C that a run cannot lose.

Python raises KeyboardInterrupt wherever the main thread happens to be when SIGINT
arrives. If that is inside a `__del__`, a weakref or GC callback, or a Python callback
that C++ calls and whose error it drops, the interrupt is printed as "Exception ignored"
(or not at all) and the run trains on: seen once in CI under load, where
`tests/test_cli_errors.py::test_interrupted_run_is_one_line_and_resumes` sent SIGINT after
the first checkpoint and the run was still training two epochs later. The latch records the
signal as well as raising it, and the trainer re-raises it at the next step boundary.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType


class InterruptLatch:
    """`with InterruptLatch() as latch:` — SIGINT raises KeyboardInterrupt as usual and is
    remembered; `latch.check()` raises it again if it was swallowed. Installed only in the
    main thread and only over Python's own SIGINT handler (a caller that ignores or handles
    SIGINT itself keeps its handler); the previous handler is restored on exit."""

    def __init__(self) -> None:
        self.pending = False
        self._installed = False

    def __enter__(self) -> InterruptLatch:
        if threading.current_thread() is threading.main_thread():
            if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
                signal.signal(signal.SIGINT, self._on_sigint)
                self._installed = True
        return self

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        self.pending = True
        raise KeyboardInterrupt

    def check(self) -> None:
        """Raise KeyboardInterrupt if SIGINT arrived since entry (and was swallowed)."""
        if self.pending:
            raise KeyboardInterrupt

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            self._installed = False
