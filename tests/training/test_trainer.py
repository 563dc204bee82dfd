"""`bioscale train` end to end on a real slice of Fashion-MNIST: run directory, TensorBoard
tags, result.json, resume after SIGKILL, divergence, bad configs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bioscale.training.checkpoint import CheckpointManager
from tests.datasets import prepare_small_fashion

BASE = [
    "model.arch=iclr_mnist_lc",
    "data.batch_size_per_rank=32",
    "data.num_workers=0",
    "train.log_every_steps=5",
    "train.angle_every_steps=5",
    "train.checkpoint_every_steps=4",
    "optim.forward.lr=0.001",
    "optim.inverse.lr=0.001",
]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return prepare_small_fashion(tmp_path_factory.mktemp("fashion"))


def train_cmd(data, out, *overrides, epochs=2, rule="sdtp"):
    return [
        sys.executable,
        "-m",
        "bioscale",
        "train",
        "--data",
        str(data),
        "--out",
        str(out),
        "--epochs",
        str(epochs),
        f"algorithm.rule={rule}",
        *BASE,
        *overrides,
    ]


def run(cmd, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, **kw)


def scalars(tb_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_train_writes_run_directory_and_tensorboard(shards, tmp_path):
    out = tmp_path / "run"
    proc = run(train_cmd(shards, out))
    assert proc.returncode == 0, proc.stderr
    result = json.loads((out / "result.json").read_text())
    for key in ("val_top1_err", "test_top1_err"):
        assert 0.0 <= result[key] < 0.6, result  # 10 classes: chance is 0.9
    assert result["selected_epoch"] in (0, 1) and result["epochs_completed"] == 2
    printed = json.loads(proc.stdout.strip().splitlines()[-1])
    assert printed["test_top1_err"] == result["test_top1_err"]
    tags = scalars(out / "tb")
    for tag in (
        "train/loss",
        "train/top1_err",
        "val/top1_err",
        "val/top5_err",
        "test/top1_err",
        "layer1/local_loss",
        "layer2/inverse_loss",
        "layer5/inverse_loss",
        "layer1/angle_to_bp_deg",
        "perf/images_per_sec",
        "perf/data_time_pct",
        "opt/lr_forward",
        "opt/lr_inverse",
    ):
        assert tag in tags, f"missing TensorBoard tag {tag}; have {sorted(tags)}"
    steps_per_epoch = 1000 // 32
    assert [s for s, _ in tags["val/top1_err"]] == [steps_per_epoch, 2 * steps_per_epoch]
    saved = (out / "config.yaml").read_text()
    assert "rule: sdtp" in saved and "arch: iclr_mnist_lc" in saved
    ckpt = torch.load(sorted((out / "checkpoints").glob("step_*.pt"))[-1], weights_only=False)
    assert ckpt["config"]["algorithm"]["rule"] == "sdtp" and isinstance(ckpt["config"], dict)


def test_killed_run_resumes_to_the_same_result(shards, tmp_path):
    ref = tmp_path / "ref"
    assert run(train_cmd(shards, ref)).returncode == 0
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        train_cmd(shards, out),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    deadline = time.time() + 300
    marker = out / "checkpoints" / "latest"
    while time.time() < deadline:  # kill mid-epoch 1, after its first checkpoint
        if marker.exists() and json.loads(marker.read_text())["step"] >= 36:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "result.json").exists() or json.loads((out / "result.json").read_text())["epochs_completed"] < 2
    resumed = run(train_cmd(shards, out))  # the same command
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed" in resumed.stderr
    a, b = (json.loads((d / "result.json").read_text()) for d in (ref, out))
    assert a["history"] == b["history"], "resumed run differs from the uninterrupted one"
    ref_steps, steps = (
        [json.loads(line)["step"] for line in (d / "metrics.jsonl").read_text().splitlines()] for d in (ref, out)
    )
    assert steps == ref_steps, "metrics.jsonl after resume differs from the uninterrupted run's (duplicates?)"
    tb_steps = [s for s, _ in scalars(out / "tb")["train/loss"]]
    assert tb_steps == sorted(set(tb_steps)), "TensorBoard kept points from before the resume (purge_step)"


def test_divergence_stops_with_layer_and_step(shards, tmp_path):
    out = tmp_path / "nan"
    proc = run(train_cmd(shards, out, "optim.forward.lr=1e37", "optim.inverse.lr=1e37"))
    assert proc.returncode == 3, proc.stderr
    assert "diverged at step" in proc.stderr and ("layer" in proc.stderr or "parameter" in proc.stderr)
    for path in (out / "checkpoints").glob("step_*.pt"):  # whatever was kept is finite
        state = torch.load(path, weights_only=False)
        assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


@pytest.mark.parametrize(
    "override,message",
    [
        ("algorithm.alpha=0.1", "algorithm.alpha applies to rule 'dtp' only"),
        ("optim.forward.lrr=0.1", "optim.forward.lrr"),
        ("model.arch=resnet", "unknown architecture 'resnet'"),
    ],
)
def test_bad_config_is_rejected_before_training(shards, tmp_path, override, message):
    out = tmp_path / "bad"
    proc = run(train_cmd(shards, out, override))
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert not (out / "checkpoints").exists()


def test_alternating_schedule_trains_inverses_then_forward(shards, tmp_path):
    out = tmp_path / "alt"
    proc = run(train_cmd(shards, out, "algorithm.schedule=alternating", "train.eval_splits=[val]"))
    assert proc.returncode == 0, proc.stderr
    tags = scalars(out / "tb")
    spe = 1000 // 32
    # epoch 0 trains only the inverses: no forward-loss gradients → top-1 unchanged from init is allowed,
    # but inverse losses are logged; epoch 1 trains the forward weights with the task loss.
    inv_steps = [s for s, _ in tags["layer2/inverse_loss"]]
    assert inv_steps and max(inv_steps) <= spe
    assert any(s > spe for s, _ in tags["train/loss"])


def test_feedback_iterations_run_k_inverse_steps_per_batch(shards, tmp_path):
    """LDRL with algorithm.feedback_iterations=3 through `bioscale train`: per batch the
    inverse optimizer steps 3 times and the forward optimizer once (the saved Adam states),
    and the inverse losses are still logged."""
    out = tmp_path / "k3"
    args = ("algorithm.feedback_iterations=3", "train.max_steps_per_epoch=3", "train.log_every_steps=1")
    proc = run(train_cmd(shards, out, "model.arch=iclr_mnist_fc", *args, epochs=1, rule="ldrl"))
    assert proc.returncode == 0, proc.stderr
    state = CheckpointManager(out).load_latest()
    assert state is not None and state["step"] == 3
    steps = {k: {int(s["step"]) for s in v["state"].values()} for k, v in state["optim"].items()}
    assert steps == {"forward": {3}, "inverse": {9}}
    assert [s for s, _ in scalars(out / "tb")["layer2/inverse_loss"]] == [1, 2, 3]


def test_init_from_loads_weights_but_starts_a_new_run(shards, tmp_path):
    first = tmp_path / "first"
    assert run(train_cmd(shards, first, epochs=1)).returncode == 0
    ckpt = sorted((first / "checkpoints").glob("step_*.pt"))[-1]
    fresh, warm = tmp_path / "fresh", tmp_path / "warm"
    one_step = ("train.max_steps_per_epoch=1", "train.log_every_steps=1", "train.eval_splits=[val]")
    assert run(train_cmd(shards, fresh, *one_step, epochs=1)).returncode == 0
    proc = run([*train_cmd(shards, warm, *one_step, epochs=1), "--init-from", str(ckpt)])
    assert proc.returncode == 0, proc.stderr
    assert "resumed" not in proc.stderr
    loss = {d.name: json.loads((d / "metrics.jsonl").read_text().splitlines()[0])["train/loss"] for d in (fresh, warm)}
    assert loss["warm"] < 0.7 * loss["fresh"], loss  # started from trained weights, at step 1


def test_resume_refuses_a_different_experiment(shards, tmp_path):
    out = tmp_path / "run"
    assert (
        run(train_cmd(shards, out, "train.max_steps_per_epoch=2", "train.eval_splits=[val]", epochs=1)).returncode == 0
    )
    # a checkpoint of an earlier version (no model.weight_sharing keys yet) resumes: keys added
    # since take their defaults
    manager = CheckpointManager(out)
    record = manager.records()[-1]
    state = torch.load(out / "checkpoints" / record.file, map_location="cpu", weights_only=False)
    for key in ("weight_sharing", "weight_sharing_every_steps"):
        del state["config"]["model"][key]
    manager.save(state, record.step)
    same = run(train_cmd(shards, out, "train.max_steps_per_epoch=2", "train.eval_splits=[val]", epochs=2))
    assert same.returncode == 0 and "resumed" in same.stderr, same.stderr
    proc = run(train_cmd(shards, out, "train.max_steps_per_epoch=2", "train.eval_splits=[val]", epochs=3, rule="bp"))
    assert proc.returncode == 2 and "different algorithm config" in proc.stderr, proc.stderr


def test_bf16_on_cpu_trains_like_fp32(shards, tmp_path):
    """distributed.precision=bf16 on CPU (CPU autocast, the path CUDA autocast takes too):
    DTP at the ImageNet configs' α trains like the fp32 run end to end, and the checkpoint's
    weights stay float32 (the signals' fidelity: tests/algorithms/test_bf16.py)."""
    common = ("algorithm.alpha=1.273e-3", "train.max_steps_per_epoch=15", "train.eval_splits=[val]")
    fp32 = run(train_cmd(shards, tmp_path / "fp32", *common, epochs=1, rule="dtp"))
    assert fp32.returncode == 0, fp32.stderr
    bf16 = run(train_cmd(shards, tmp_path / "bf16", *common, "distributed.precision=bf16", epochs=1, rule="dtp"))
    assert bf16.returncode == 0, bf16.stderr
    a = json.loads((tmp_path / "fp32" / "result.json").read_text())["history"][0]
    b = json.loads((tmp_path / "bf16" / "result.json").read_text())["history"][0]
    assert abs(a["train_loss"] - b["train_loss"]) < 0.03 * a["train_loss"], (a, b)
    assert abs(a["val_top1_err"] - b["val_top1_err"]) < 0.05, (a, b)
    ckpt = sorted((tmp_path / "bf16" / "checkpoints").glob("*.pt"))[-1]
    weights = torch.load(ckpt, map_location="cpu", weights_only=False)
    model = weights.get("model", weights.get("learner"))
    assert model is not None, sorted(weights)
    assert {v.dtype for v in model.values() if v.is_floating_point()} == {torch.float32}
