"""A preparation killed mid-way and re-run ends with the same shards as an
uninterrupted run; the `bioscale prepare` / `inspect` command lines."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from bioscale.cli import main
from bioscale.data_pipeline.prepare import prepare

from .dp_helpers import encode, natural_image
from .test_prepare import same_tree

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def large_folder(tmp_path_factory) -> Path:
    """48 large JPEGs: with --max-side each costs a real decode, resize and
    encode, so a preparation runs long enough to be killed half-way."""
    root = tmp_path_factory.mktemp("large_folder")
    rng = np.random.default_rng(0)
    images = [encode(natural_image(rng, 1400, 1100), "JPEG", quality=92) for _ in range(4)]
    for c in ("a", "b", "c"):
        (root / c).mkdir()
        for k in range(16):
            (root / c / f"{k:02d}.jpg").write_bytes(images[(k + ord(c)) % 4])
    return root


def test_killed_preparation_rerun_matches_uninterrupted(large_folder, tmp_path):
    args = dict(shard_size=2, val_size=8, max_side=160)
    prepare("folder", tmp_path / "reference", large_folder, **args)

    out = tmp_path / "killed"
    command = [
        sys.executable,
        "-m",
        "bioscale",
        "prepare",
        "folder",
        "--src",
        str(large_folder),
        "--out",
        str(out),
        "--shard-size",
        "2",
        "--val-size",
        "8",
        "--max-side",
        "160",
        "--workers",
        "1",
        "--no-progress",
    ]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    records = out / "train" / ".partial"
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if records.is_dir() and len(list(records.glob("*.json"))) >= 3:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "preparation finished before it could be killed"
    assert not (out / "train" / "manifest.json").exists()
    finished = sorted(p.stem for p in records.glob("*.json"))
    assert 3 <= len(finished) < 20
    # Damage a finished shard: the re-run must notice (checksum) and rewrite it.
    victim = out / "train" / f"{finished[0]}.tar"
    data = bytearray(victim.read_bytes())
    data[700] ^= 0xFF
    victim.write_bytes(bytes(data))

    summary = prepare("folder", out, large_folder, workers=2, **args)
    assert summary["train"]["rewritten"] == 20 - len(finished) + 1
    same_tree(tmp_path / "reference", out)


def test_cli_prepare_and_inspect(idcoded_src, tmp_path, capsys):
    out = tmp_path / "shards"
    code = main(
        [
            "prepare",
            "mnist",
            "--src",
            str(idcoded_src),
            "--out",
            str(out),
            "--val-size",
            "20",
            "--shard-size",
            "30",
            "--workers",
            "2",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "train: 100 samples in 4 shards" in printed and "test: 37 samples" in printed
    assert main(["inspect", str(out / "val")]) == 0
    assert main(["inspect", str(out / "test" / "manifest.json")]) == 0
    assert main(["inspect", str(out)]) == 0  # all three splits
    printed = capsys.readouterr().out
    assert "mnist/train: 100 samples (manifest 100) in 4 shards" in printed and "OK" in printed
    shard = out / "train" / "train-000002.tar"
    shard.write_bytes(shard.read_bytes()[:5000])
    assert main(["inspect", str(out / "train")]) == 1
    err = capsys.readouterr().err
    assert "train-000002.tar" in err and "member" in err
    assert main(["prepare", "mnist", "--src", str(tmp_path / "nowhere"), "--out", str(out)]) == 1
    assert "nowhere: source directory does not exist" in capsys.readouterr().err
