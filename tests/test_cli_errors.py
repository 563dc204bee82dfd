"""Every expected error ends a `bioscale` command with one line on stderr that names the
file or key, a non-zero status and no traceback; `--debug` shows the traceback; Ctrl-C
during training is one line, exit 130, and the same command resumes.

Each case is a real subprocess (`python -m bioscale ...`), as a user would run it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.datasets import FASHION, prepare_small_fashion

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "fashion_mnist" / "lc_sdtp.yaml"
MISSING = "/no/such/dir"
LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d \[rank \d+\] ")  # the trainer's INFO log, also on stderr


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "BIOSCALE_DEBUG"}
    return {**env, "OMP_NUM_THREADS": "1"}


def bioscale(*args: Any, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bioscale", *map(str, args)],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=cwd or ROOT,
        timeout=300,
    )


def assert_one_line(
    proc: subprocess.CompletedProcess, command: str, *names: str, code: int | None = None, logs: bool = False
) -> str:
    """Non-zero exit, exactly one non-empty stderr line `bioscale <command>: ...` that
    contains every one of `names`, and no traceback. With `logs`, the trainer's INFO
    log lines before it are allowed (the error must still be the last line)."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    if logs:
        lines = [line for line in lines if not LOG_LINE.match(line)]
    assert proc.returncode != 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"bioscale {command}"), lines[0]
    assert proc.stderr.strip().splitlines()[-1] == lines[0], proc.stderr
    for name in names:
        assert name in lines[0], lines[0]
    if code is not None:
        assert proc.returncode == code, (proc.returncode, proc.stderr)
    return lines[0]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    if not (FASHION / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"Fashion-MNIST not found at {FASHION}")
    return prepare_small_fashion(tmp_path_factory.mktemp("fashion"), n_train=300, n_test=100, val_size=50)


# ------------------------------------------------------------- one case per command


def _cases(tmp: Path) -> dict[str, tuple[list[Any], tuple[str, ...], int | None]]:
    """id -> (argv, strings the line must name, exit status or None for 'non-zero')."""
    missing_yaml = "/no/such/config.yaml"
    missing_profile = "/no/such/profile.yaml"
    return {
        "prepare-missing-src": (["prepare", "folder", "--src", MISSING, "--out", tmp / "p"], (MISSING,), 1),
        "prepare-no-src": (["prepare", "mnist", "--out", tmp / "p"], ("--src",), 1),
        "inspect-missing-path": (["inspect", MISSING], (MISSING,), 1),
        "inspect-no-manifest": (["inspect", tmp], (str(tmp), "manifest"), 1),
        "train-missing-data": (["train", "--data", MISSING, "--out", tmp / "t"], (MISSING,), 1),
        "train-bad-key": (
            ["train", "--config", CONFIG, "--data", MISSING, "--out", tmp / "t", "optim.forward.nosuchkey=1"],
            ("optim.forward.nosuchkey",),
            2,
        ),
        "train-missing-config": (["train", "--config", missing_yaml, "--out", tmp / "t"], (missing_yaml,), 2),
        "launch-missing-config": (
            ["launch", "--local", "--config", missing_yaml, "--data", MISSING, "--out", tmp / "l"],
            (missing_yaml,),
            2,
        ),
        "sweep-missing-config": (
            ["sweep", "--out", tmp / "s", "--config", missing_yaml, "--data", MISSING, "--trials", "2"],
            (missing_yaml,),
            2,
        ),
        "launch-missing-profile": (
            ["launch", "--profile", missing_profile, "--config", CONFIG, "--data", MISSING, "--out", tmp / "l"],
            (missing_profile,),
            2,
        ),
        "sweep-missing-profile": (
            ["sweep", "--local", "--profile", missing_profile, "--out", tmp / "s"]
            + ["--config", CONFIG, "--data", MISSING, "--trials", "2"],
            (missing_profile,),
            2,
        ),
        "sweep-status-missing": (["sweep", "status", "--out", MISSING], (MISSING,), 2),
        "reproduce-missing-data": (
            ["reproduce", "fashion-mnist", "--data", MISSING, "--out", tmp / "r"],
            (MISSING,),
            2,
        ),
        "bench-missing-shards": (["bench", "data", "--shards", MISSING], (MISSING,), 1),
    }


@pytest.mark.parametrize("case", list(_cases(Path("/tmp"))))
def test_expected_error_is_one_line(case, tmp_path):
    argv, names, code = _cases(tmp_path)[case]
    assert_one_line(bioscale(*argv), argv[0], *names, code=code)


def test_unusable_checkpoint_is_one_line(shards, tmp_path):
    weights = tmp_path / "no_such_weights.pt"
    proc = bioscale("train", "--data", shards, "--out", tmp_path / "run", "--init-from", weights, "data.num_workers=0")
    assert_one_line(proc, "train", str(weights), code=1, logs=True)


@pytest.mark.parametrize(
    "case, names",
    [
        (["--set", "optim.forward.nosuchkey=1"], ("optim.forward.nosuchkey",)),
        (["--launcher", "slurm", "--profile", "/no/such/profile.yaml"], ("/no/such/profile.yaml",)),
    ],
    ids=["bad-key", "missing-profile"],
)
def test_reproduce_error_on_real_data_is_one_line(shards, tmp_path, case, names):
    proc = bioscale("reproduce", "fashion-mnist", "--data", shards, "--out", tmp_path / "r", "--rows", "*fc_bp", *case)
    assert_one_line(proc, "reproduce", *names, code=2)


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_shows_the_traceback(where, tmp_path):
    argv = ["train", "--data", MISSING, "--out", tmp_path / "t"]
    argv = ["--debug", *argv] if where == "before" else [*argv, "--debug"]
    proc = bioscale(*argv)
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "DataError" in proc.stderr and MISSING in proc.stderr, proc.stderr


# ------------------------------------------------------------------ in-process parts


def test_one_line_joins_a_multi_line_message():
    from bioscale.cli import one_line

    assert one_line("no usable checkpoint:\n  a.pt: truncated\n  b.pt: bad hash") == (
        "no usable checkpoint: a.pt: truncated; b.pt: bad hash"
    )
    assert len(one_line("x" * 5000)) <= 600


@pytest.mark.parametrize(
    "module, name, code",
    [
        ("bioscale.data_pipeline.errors", "DataError", 1),
        ("bioscale.training.config", "ConfigError", 2),
        ("bioscale.training.checkpoint", "CheckpointError", 1),
        ("bioscale.training.divergence", "DivergenceError", 3),
        ("bioscale.distributed.environment", "LaunchEnvironmentError", 2),
        ("bioscale.cluster.profile", "ProfileError", 2),
        ("bioscale.cluster.launcher", "SubmissionError", 1),
        ("bioscale.cluster.slurm_jobs", "SlurmError", 1),
    ],
)
def test_expected_errors_share_one_base(module, name, code):
    import importlib

    from bioscale.data_pipeline.errors import UserError

    try:
        cls = getattr(importlib.import_module(module), name)
    except ImportError as exc:  # cluster/ needs submitit
        pytest.skip(f"{module}: {exc}")
    assert issubclass(cls, UserError) and cls.exit_code == code


# ------------------------------------------------------------------------- Ctrl-C


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode} too early: {proc.stderr.read() if proc.stderr else ''}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("timed out")
        time.sleep(0.05)


def _popen(argv: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(argv, cwd=ROOT, env=_env(), text=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _interrupt(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    return err


def test_interrupted_run_is_one_line_and_resumes(shards, tmp_path):
    out = tmp_path / "run"
    argv = [
        sys.executable,
        "-m",
        "bioscale",
        "train",
        "--data",
        str(shards),
        "--out",
        str(out),
        "--epochs",
        "1000",  # never finishes by itself: it is interrupted
        "model.arch=iclr_mnist_fc",
        "algorithm.rule=bp",
        "data.batch_size_per_rank=8",
        "data.num_workers=0",
        "train.angle_every_steps=0",
        "train.checkpoint_every_steps=3",
    ]
    proc = _popen(argv)
    try:
        _wait_for(lambda: any((out / "checkpoints").glob("step_*.pt")), proc)
        err = _interrupt(proc)
    finally:
        proc.kill()
    lines = [line for line in err.splitlines() if line.strip()]  # the run's INFO log is on stderr too
    assert proc.returncode == 130, err
    assert "Traceback" not in err, err
    assert lines[-1] == "bioscale train: interrupted; re-run the same command to resume", err
    assert sum("interrupted" in line for line in lines) == 1, err
    assert any((out / "checkpoints").glob("step_*.pt"))

    # the same command resumes from the checkpoint (then is interrupted again, as cleanly)
    proc = _popen(argv)
    seen: list[str] = []
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 120
        for line in proc.stderr:
            seen.append(line)
            if " resumed " in line or time.monotonic() > deadline:
                break
        assert any(" resumed " in line and " at step " in line for line in seen), "".join(seen)
        err = _interrupt(proc)
    finally:
        proc.kill()
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].endswith("interrupted; re-run the same command to resume"), err
