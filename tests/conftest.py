"""Suite-wide markers: `slow` runs only with BIOSCALE_SLOW=1 or `-m slow`; `gpu` runs only
where CUDA is available (each GPU test has a CPU twin that always runs)."""

from __future__ import annotations

import os
import signal

import pytest
import torch

# One thread: multi-process tests run beside in-process ones on 2 cores, and
# oversubscribed OpenMP threads made small-op tests ~10x slower under load (measured).
torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    markexpr = config.getoption("-m") or ""
    run_slow = os.environ.get("BIOSCALE_SLOW") == "1" or "slow" in markexpr
    has_gpu = torch.cuda.is_available()
    skip_slow = pytest.mark.skip(reason="slow: set BIOSCALE_SLOW=1 or pass -m slow")
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "slow" in item.keywords and not run_slow:
            item.add_marker(skip_slow)
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _python_sigint_handler():
    """Every test starts with Python's own SIGINT handler. A library used by an earlier test can
    leave SIGINT ignored in this process; every child process then inherits the ignore (Python
    keeps an inherited SIG_IGN), and the Ctrl-C tests hung until their timeouts (CI, twice)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, signal.default_int_handler)
