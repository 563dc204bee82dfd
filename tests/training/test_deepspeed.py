"""`distributed.backend=deepspeed` on 2 real gloo ranks (torchrun): ZeRO-0 and ZeRO-3 train
like the plain backend, resume from DeepSpeed's sharded checkpoints, and refuse the
alternating schedule (one engine would keep moving the idle group on Adam momentum)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.datasets import prepare_small_fashion
from tests.training.test_multiprocess import free_port

COMMON = [
    "model.arch=iclr_mnist_lc",
    "data.num_workers=0",
    "data.batch_size_per_rank=16",
    "train.angle_every_steps=0",
    "train.max_steps_per_epoch=12",
    "train.checkpoint_every_steps=5",
    "train.eval_splits=[val]",
    "algorithm.rule=sdtp",
    "algorithm.sigma=0.0",
    "optim.forward.lr=0.001",
    "optim.inverse.lr=0.001",
]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return prepare_small_fashion(tmp_path_factory.mktemp("fashion_ds"))


def torchrun(shards, out, *args, epochs=1):
    exe = Path(sys.executable).with_name("torchrun")
    cmd = [
        str(exe),
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        "-m",
        "bioscale",
        "train",
        "--data",
        str(shards),
        "--out",
        str(out),
        "--epochs",
        str(epochs),
        *COMMON,
        *args,
    ]
    return subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)


def history(out):
    return json.loads((out / "result.json").read_text())["history"]


def _matches_plain(shards, tmp_path, stage: int) -> dict:
    """One epoch at ZeRO `stage` against the plain backend (two ranks each): its history row."""
    plain = torchrun(shards, tmp_path / "plain")
    assert plain.returncode == 0, plain.stderr
    ref = history(tmp_path / "plain")[0]
    out = tmp_path / f"zero{stage}"
    proc = torchrun(shards, out, "distributed.backend=deepspeed", f"distributed.zero_stage={stage}")
    assert proc.returncode == 0, proc.stderr
    got = history(out)[0]
    assert abs(got["train_loss"] - ref["train_loss"]) < 0.02 * ref["train_loss"], (stage, got, ref)
    assert abs(got["val_top1_err"] - ref["val_top1_err"]) < 0.03, (stage, got, ref)
    assert (out / "checkpoints" / "deepspeed" / "latest").exists()
    return got


def test_zero3_matches_the_plain_backend_and_resumes(shards, tmp_path):
    got = _matches_plain(shards, tmp_path, 3)
    # the same command with one more epoch resumes from the sharded ZeRO-3 checkpoint
    out = tmp_path / "zero3"
    proc = torchrun(shards, out, "distributed.backend=deepspeed", "distributed.zero_stage=3", epochs=2)
    assert proc.returncode == 0, proc.stderr
    assert "resumed" in proc.stderr
    h = history(out)
    assert len(h) == 2 and h[0] == got


@pytest.mark.slow  # ~35 s of 2-rank runs; ZeRO-3 (above) and ZeRO-2 (bf16, below) run by default
def test_zero0_matches_the_plain_backend(shards, tmp_path):
    _matches_plain(shards, tmp_path, 0)


def test_deepspeed_refuses_the_alternating_schedule(shards, tmp_path):
    proc = torchrun(shards, tmp_path / "alt", "distributed.backend=deepspeed", "algorithm.schedule=alternating")
    assert proc.returncode != 0  # each rank exits 2; torchrun reports the failure as 1
    assert "supports the parallel schedule only" in proc.stderr
    assert not (tmp_path / "alt" / "checkpoints").exists()


def test_deepspeed_refuses_several_inverse_steps_per_batch():
    """feedback_iterations > 1 needs inverse-only steps: refused before DeepSpeed starts."""
    from bioscale.algorithms import OptimConfig, RuleConfig, build_learner
    from bioscale.distributed.deepspeed_engine import DeepSpeedUpdater

    learner = build_learner("neurips_mnist_fc", RuleConfig(rule="ldrl", feedback_iterations=2), input_shape=(16,))
    with pytest.raises(ValueError, match="feedback_iterations > 1 needs inverse-only steps"):
        DeepSpeedUpdater(learner, OptimConfig(), dist_cfg=None, micro_batch=1)


def _rule_args(rule: str) -> list[str]:
    # COMMON's σ is SDTP's; feedback alignment learns no inverses and refuses it
    return [f"algorithm.rule={rule}"] + (["algorithm.sigma=null"] if rule in ("fa", "dfa") else [])


@pytest.mark.parametrize(
    ("stage", "rule"),
    [  # ZeRO-2 with angles in the default suite; the other stages' buffers and paths: slow
        pytest.param(0, "fa", marks=pytest.mark.slow),
        (2, "dfa"),
        pytest.param(3, "aosdtp", marks=pytest.mark.slow),
    ],
)
def test_bf16_trains_every_zero_stage_with_buffers_and_angles(shards, tmp_path, stage, rule):
    """DeepSpeed bf16 (CPU autocast here): bf16 weights and the rule's buffers (feedback
    matrices, AO-SDTP's projection), fp32 gradient reduction, and the angle-to-BP diagnostic
    (which ran outside autocast: a dtype error at the first angle step)."""
    plain = torchrun(shards, tmp_path / "plain", *_rule_args(rule))
    assert plain.returncode == 0, plain.stderr
    out = tmp_path / "bf16"
    proc = torchrun(
        shards,
        out,
        *_rule_args(rule),
        "distributed.backend=deepspeed",
        f"distributed.zero_stage={stage}",
        "distributed.precision=bf16",
        "distributed.device=cpu",
        "train.angle_every_steps=4",
    )
    assert proc.returncode == 0, proc.stderr
    got, ref = history(out)[0], history(tmp_path / "plain")[0]
    assert abs(got["train_loss"] - ref["train_loss"]) < 0.05 * ref["train_loss"], (got, ref)
    assert abs(got["val_top1_err"] - ref["val_top1_err"]) < 0.06, (got, ref)
    angles = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if "angle_to_bp" in line]
    # (ZeRO-3 shards the weights: no angles there, as in fp32)
    assert [a["step"] for a in angles] == ([] if stage == 3 else [4, 8, 12])
    # the output layer is trained by BP under every rule: its angle is ~0 also in bf16
    assert all(a["layer5/angle_to_bp_deg"] < 1.0 for a in angles), angles
