"""`distributed.backend=ddp` through `bioscale train` on 2 real gloo ranks (torchrun): the
alternating schedule (each epoch leaves one side's parameters unused) trains like one
process with the global batch, and a run stopped at an epoch end resumes from its
checkpoint into the same weights. The rule-by-rule equality of the DDP engine itself is
tests/scale/test_ddp.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.datasets import prepare_small_fashion
from tests.training.test_multiprocess import COMMON, final_weights, free_port

ARGS = [
    *(a for a in COMMON if not a.startswith("train.max_steps_per_epoch")),
    "train.max_steps_per_epoch=4",
    "algorithm.rule=sdtp",
    "algorithm.schedule=alternating",
]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return prepare_small_fashion(tmp_path_factory.mktemp("fashion_ddp"))


def train(shards, out: Path, epochs: int, batch: int, ranks: int = 1) -> subprocess.CompletedProcess:
    launch = [sys.executable]
    if ranks > 1:
        launch = [
            str(Path(sys.executable).with_name("torchrun")),
            "--nproc_per_node",
            str(ranks),
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(free_port()),
        ]
    cmd = [
        *launch,
        "-m",
        "bioscale",
        "train",
        "--data",
        str(shards),
        "--out",
        str(out),
        "--epochs",
        str(epochs),
        *ARGS,
        f"data.batch_size_per_rank={batch}",
        "distributed.backend=ddp",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return proc


def test_ddp_alternating_schedule_and_resume_match_one_process(shards, tmp_path):
    one = train(shards, tmp_path / "one", epochs=2, batch=32)  # one process: no wrapper
    assert "DistributedDataParallel" not in one.stderr
    first = train(shards, tmp_path / "two", epochs=1, batch=16, ranks=2)  # epoch 0: inverse phase
    assert "DistributedDataParallel over 2 ranks" in first.stderr
    assert "wrappers for phases forward, inverse" in first.stderr
    second = train(shards, tmp_path / "two", epochs=2, batch=16, ranks=2)  # resumes; epoch 1: forward
    assert "resumed" in second.stderr and "at step 4 (epoch 1)" in second.stderr
    a, b = final_weights(tmp_path / "one"), final_weights(tmp_path / "two")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-9, rtol=0), f"{k}: max diff {(a[k] - b[k]).abs().max():.2e}"
    # epoch 1 (forward phase) moved θ only: its wrapper never touched λ
    after_inverse_epoch = torch.load(tmp_path / "two" / "checkpoints" / "step_0000000004.pt", weights_only=False)
    for k, v in after_inverse_epoch["model"].items():
        moved = not torch.equal(v, b[k])
        assert moved == (".layer." in k), f"{k}: moved={moved} in the forward epoch"
