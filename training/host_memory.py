"""Host memory behaviour of the training process.

glibc returns freed memory to the OS after every step and the next step page-faults it
back (~2 GB/s in these VMs); LC layers free and re-allocate weight-sized gradients every
step, so with the default thresholds ImageNet LC layers ran ~1.8× slower (measured,
BENCHMARKS.md). Keeping freed memory in the process removes that cost."""

from __future__ import annotations

import ctypes


def keep_freed_memory() -> bool:
    """Keep freed memory in the process (no trimming, no per-allocation mmap). glibc only."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_trim_threshold, 1 << 30)) and bool(libc.mallopt(m_mmap_threshold, 1 << 30))
