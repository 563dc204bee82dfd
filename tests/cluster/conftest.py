"""The cluster tests run against a real single-node SLURM (with accounting)
that they bring up themselves with `cluster/local_slurm.sh up` (installing the
Debian packages if missing) and stop with `down` when the session ends — only
if this session started it, and only when no other test session on the
machine still uses it (sessions register under the state directory). A SLURM
that cannot start fails the tests with the script's reason; nothing skips.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
from pathlib import Path

import pytest

from tests.datasets import prepare_small_fashion

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "cluster" / "local_slurm.sh"
STATE = Path(os.environ.get("BIOSCALE_SLURM_DIR", "/var/lib/bioscale-slurm"))
SESSIONS = STATE / "test-sessions"
STARTED_BY_TESTS = STATE / "started-by-tests"

# A fast experiment for cluster tests: 5 × FC256 on 28×28, batch 32, no worker
# processes, a periodic checkpoint every 5 steps (what a requeue resumes from).
FAST_CONFIG = """\
name: fast
model: {arch: neurips_mnist_fc}
algorithm: {rule: sdtp}
optim:
  forward: {lr: 0.001}
  inverse: {lr: 0.001}
data: {batch_size_per_rank: 32, num_workers: 0}
train: {epochs: 2, max_steps_per_epoch: 20, log_every_steps: 5, angle_every_steps: 0, checkpoint_every_steps: 5}
"""


def _script(action: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), action], capture_output=True, text=True, timeout=timeout)


class _Lock:
    def __enter__(self):
        STATE.mkdir(parents=True, exist_ok=True)
        self._f = open(STATE / ".test-sessions.lock", "a")
        fcntl.flock(self._f, fcntl.LOCK_EX)

    def __exit__(self, *exc):
        fcntl.flock(self._f, fcntl.LOCK_UN)
        self._f.close()


def _live_sessions() -> list[Path]:
    alive = []
    for f in SESSIONS.glob("*"):
        if f.name.isdigit() and Path(f"/proc/{f.name}").exists():
            alive.append(f)
        else:
            f.unlink(missing_ok=True)  # a session that died without cleaning up
    return alive


@pytest.fixture(scope="session")
def slurm():
    """A running local SLURM; yields the output of `local_slurm.sh status`."""
    me = SESSIONS / str(os.getpid())
    with _Lock():
        if _script("status", timeout=60).returncode != 0:
            up = _script("up")
            if up.returncode != 0:
                pytest.fail(
                    f"local SLURM did not start (cluster/local_slurm.sh up, exit {up.returncode}):\n"
                    f"{up.stderr}{up.stdout}",
                    pytrace=False,
                )
            STARTED_BY_TESTS.write_text(str(os.getpid()))
        SESSIONS.mkdir(parents=True, exist_ok=True)
        me.write_text("")
    status = _script("status", timeout=60)
    if status.returncode != 0:
        pytest.fail(f"local SLURM is not fully up:\n{status.stdout}{status.stderr}", pytrace=False)
    yield status.stdout
    with _Lock():
        me.unlink(missing_ok=True)
        if STARTED_BY_TESTS.exists() and not _live_sessions():
            down = _script("down", timeout=120)
            STARTED_BY_TESTS.unlink(missing_ok=True)
            assert down.returncode == 0, f"local_slurm.sh down failed:\n{down.stderr}"


@pytest.fixture(scope="session")
def shards(tmp_path_factory):
    """1000 train / 200 val / 400 test images of the real Fashion-MNIST."""
    return prepare_small_fashion(tmp_path_factory.mktemp("fashion_cluster"))


@pytest.fixture
def fast_config(tmp_path) -> Path:
    path = tmp_path / "fast.yaml"
    path.write_text(FAST_CONFIG)
    return path
