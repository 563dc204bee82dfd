"""`distributed.backend=pipeline` through `bioscale train` (the interface of issue 12):
`torchrun --nproc_per_node 2 -m bioscale train --config C --data D --out O
distributed.backend=pipeline distributed.stages=2` writes the usual run directory, trains
like one process with the same batch (float64, σ = 0: per-epoch history and final weights
to 1e-9), resumes per stage by re-running the same command, and bad layouts are refused
before anything starts. `distributed.pipeline_mode=decoupled` (the project's own schedule,
a step after every micro-batch) runs through the same command, writes the same run
directory, and with one micro-batch per batch equals the sync run."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bioscale.training.checkpoint import CheckpointError, check_checkpoint_layout
from bioscale.training.config import ConfigError
from bioscale.training.config_loader import load_config
from tests.datasets import prepare_small_fashion
from tests.training.test_multiprocess import final_weights, free_port

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "fashion_mnist"
CONFIG = CONFIGS / "lc_sdtp.yaml"
ARGS = [
    "model.dtype=float64",
    "data.num_workers=0",
    "data.batch_size_per_rank=16",
    "train.max_steps_per_epoch=6",
    "train.log_every_steps=3",
    "train.checkpoint_every_steps=4",
    "train.angle_every_steps=0",
    "train.eval_splits=[val]",
]
PIPELINE = ["distributed.backend=pipeline", "distributed.stages=2"]
# val error after 2 epochs of 6 steps, both pipeline modes (here: sync 0.50, decoupled 0.40; chance 0.9)
VAL_BOUND = 0.8


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return prepare_small_fashion(tmp_path_factory.mktemp("fashion_pipe"))


def train(
    shards, out: Path, *extra: str, epochs: int, ranks: int = 1, config: Path = CONFIG
) -> subprocess.CompletedProcess:
    launch = [sys.executable]
    if ranks > 1:
        torchrun = Path(sys.executable).with_name("torchrun")
        launch = [str(torchrun), "--nproc_per_node", str(ranks), "--master_addr", "127.0.0.1"]
        launch += ["--master_port", str(free_port())]
    cmd = [*launch, "-m", "bioscale", "train", "--config", str(config), "--data", str(shards), "--out", str(out)]
    cmd += [*ARGS, *extra, f"train.epochs={epochs}"]  # extra wins over ARGS
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def history(run: Path) -> list[dict]:
    return json.loads((run / "result.json").read_text())["history"]


def stage_weights(run: Path) -> dict:
    merged: dict = {}
    for stage in sorted((run / "checkpoints").glob("stage*")):
        newest = sorted(stage.glob("step_*.pt"))[-1]
        merged.update(torch.load(newest, weights_only=False)["model"])
    return merged


def assert_same_history(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys()
        for k in ra:
            assert ra[k] == pytest.approx(rb[k], rel=1e-9, abs=1e-12), (k, ra, rb)


# DFA here is slow, like BP and DTP below: the engine-level test covers every rule
# (tests/distributed/test_pipeline_engine.py), DFA through `bioscale train` runs decoupled below
@pytest.mark.parametrize("rule", ["sdtp", pytest.param("dfa", marks=pytest.mark.slow)])
def test_two_stage_pipeline_trains_like_one_process_and_resumes(shards, tmp_path, rule):
    # SDTP's noise is drawn per rank: σ = 0 makes one process comparable
    rule_args = ["algorithm.sigma=0.0"] if rule == "sdtp" else []
    config = CONFIGS / f"lc_{rule}.yaml"
    one = train(shards, tmp_path / "one", *rule_args, epochs=2, config=config)
    assert one.returncode == 0, one.stderr
    run = tmp_path / "pipe"
    if rule == "sdtp":  # stop after epoch 0, then the same command with 2 epochs resumes
        first = train(shards, run, *rule_args, *PIPELINE, epochs=1, ranks=2, config=config)
        assert first.returncode == 0, first.stderr
    proc = train(shards, run, *rule_args, *PIPELINE, epochs=2, ranks=2, config=config)
    assert proc.returncode == 0, proc.stderr
    assert "pipeline stage 0 of 2 (layers [1, 2])" in proc.stderr
    if rule == "sdtp":
        assert "resumed" in proc.stderr and "at step 6 (epoch 1)" in proc.stderr
    # the usual run directory, one checkpoint directory per stage
    for name in ("config.yaml", "metrics.jsonl", "result.json", "tb"):
        assert (run / name).exists(), name
    # one checkpoint directory per stage, and one marker for the step every stage has
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "stage0", "stage1"]
    marker = json.loads((run / "checkpoints" / "latest").read_text())
    assert marker["step"] == 12 and marker["stages"] == [f"stage{s}/step_0000000012.pt" for s in (0, 1)]
    assert_same_history(history(run), history(tmp_path / "one"))
    a, b = final_weights(tmp_path / "one"), stage_weights(run)
    assert a.keys() == b.keys()  # the stages' files merge into the single-process state dict
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-9, rtol=0), f"{k}: max diff {(a[k] - b[k]).abs().max():.2e}"
    logged = set().union(*(json.loads(line) for line in (run / "metrics.jsonl").open()))
    assert {"train/loss", "train/top1_err", "val/top1_err", "perf/images_per_sec", "layer1/local_loss"} <= logged
    if rule == "sdtp":  # a run directory of the other layout is refused with the reason, not overwritten
        plain = train(shards, run, *rule_args, epochs=3, config=config)
        assert plain.returncode == 1 and "Traceback" not in plain.stderr, plain.stderr
        assert "holds a 2-stage pipeline run" in plain.stderr, plain.stderr
        assert len(history(run)) == 2  # it did not go on
        with pytest.raises(CheckpointError, match="holds checkpoints of a run without the pipeline"):
            check_checkpoint_layout(tmp_path / "one", "pipeline", 2)  # what the pipeline engine checks before it loads
        with pytest.raises(CheckpointError, match="a 2-stage pipeline run, now distributed.stages = 4"):
            check_checkpoint_layout(run, "pipeline", 4)


@pytest.mark.parametrize(
    ("config", "stages"),
    [
        # BP and DTP at S = 2 are slow here: the engine-level test covers every rule
        # (tests/distributed/test_pipeline_engine.py), these the same through `bioscale train`
        pytest.param("lc_bp", 2, marks=pytest.mark.slow),
        pytest.param("lc_dtp", 2, marks=pytest.mark.slow),
        ("lc_sdtp_alt", 2),  # alternating: an inverse epoch, then a forward epoch
        pytest.param("lc_sdtp", 4, marks=pytest.mark.slow),
        pytest.param("lc_dfa", 4, marks=pytest.mark.slow),
        pytest.param("lc_dtp_alt", 4, marks=pytest.mark.slow),
    ],
)
def test_pipeline_matches_one_process_for_every_rule_kind(shards, tmp_path, config, stages):
    """BP, DTP and the alternating schedule at S = 2 (with the test above: SDTP; DFA slow),
    and S = 4 (slow: four processes on this machine's two cores): same per-epoch history
    (float64, σ = 0) as one process with the same batch."""
    rule_args = [] if config in ("lc_bp", "lc_dfa") else ["algorithm.sigma=0.0"]
    path = CONFIGS / f"{config}.yaml"
    one = train(shards, tmp_path / "one", *rule_args, epochs=2, config=path)
    assert one.returncode == 0, one.stderr
    pipe = ["distributed.backend=pipeline", f"distributed.stages={stages}"]
    proc = train(shards, tmp_path / "pipe", *rule_args, *pipe, epochs=2, ranks=stages, config=path)
    assert proc.returncode == 0, proc.stderr
    assert_same_history(history(tmp_path / "pipe"), history(tmp_path / "one"))
    a, b = final_weights(tmp_path / "one"), stage_weights(tmp_path / "pipe")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-9, rtol=0), f"{k}: max diff {(a[k] - b[k]).abs().max():.2e}"


@pytest.mark.slow
def test_pipeline_runs_several_inverse_steps_per_batch(shards, tmp_path):
    """L-DRL with algorithm.feedback_iterations=2 at S = 2: every stage steps its inverse
    optimizer twice and its forward optimizer once per batch (the saved Adam states)."""
    config = CONFIGS.parent / "later_rules" / "fashion_mnist" / "lc_ldrl.yaml"
    proc = train(
        shards, tmp_path / "k2", *PIPELINE, "algorithm.feedback_iterations=2", epochs=1, ranks=2, config=config
    )
    assert proc.returncode == 0, proc.stderr
    assert len(history(tmp_path / "k2")) == 1
    for stage in sorted((tmp_path / "k2" / "checkpoints").glob("stage*")):
        optim = torch.load(sorted(stage.glob("step_*.pt"))[-1], weights_only=False)["optim"]
        steps = {k: {int(s["step"]) for s in v["state"].values()} for k, v in optim.items() if v}
        assert steps == {"forward": {6}, "inverse": {12}}, (stage.name, steps)


def test_pipeline_refuses_a_world_size_the_stages_do_not_divide(shards, tmp_path):
    proc = train(shards, tmp_path / "bad", *PIPELINE, epochs=1)  # one process, two stages
    assert proc.returncode == 2, proc.stderr
    assert "distributed.stages = 2 does not divide the world size 1" in proc.stderr
    assert not (tmp_path / "bad" / "checkpoints").exists()


@pytest.mark.parametrize(
    "override, message",
    [
        ("distributed.micro_batches=3", "must divide data.batch_size_per_rank = 16"),
        ("distributed.micro_batches=1", "1f1b needs at least as many micro-batches as stages"),
        ("distributed.stage_boundaries=[5]", "must give each of the 2 stages >= 1 block"),
        ("distributed.schedule=zb", "must be one of 1f1b, gpipe"),
    ],
)
def test_bad_pipeline_config_is_refused_with_the_reason(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(CONFIG, [*PIPELINE, "data.batch_size_per_rank=16", override])


def test_more_stages_than_blocks_is_refused():
    from bioscale.algorithms import RuleConfig, build_learner
    from bioscale.distributed.pipeline_engine import PipelineStageEngine
    from tests.scale.workers import OPTIM

    learner = build_learner("iclr_mnist_lc", RuleConfig(rule="bp"))
    with pytest.raises(ValueError, match="has only 5 blocks"):
        PipelineStageEngine(learner, OPTIM, stages=6, micro_batches=6, micro_batch_size=1)


def _rank_pids(parent: int) -> dict[int, int]:
    """RANK → pid of torchrun's worker processes (children of `parent`)."""
    out = {}
    for child in Path(f"/proc/{parent}/task/{parent}/children").read_text().split():
        try:
            environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for item in environ:
            if item.startswith(b"RANK="):
                out[int(item[5:])] = int(child)
    return out


@pytest.mark.parametrize("backend", ["pipeline", pytest.param("none", marks=pytest.mark.slow)])
def test_kill_9_of_one_rank_mid_epoch_then_the_same_command_gives_the_same_history(shards, tmp_path, backend):
    """pipeline: rank 1 is the last stage; σ > 0: the inverse losses' noise is drawn on each
    stage's rank, so this also checks that every stage restores its own RNG state. none:
    2 data-parallel ranks; the epoch's partial sums of both ranks survive the resume."""
    layout = PIPELINE if backend == "pipeline" else ["distributed.backend=none"]
    longer = ["train.max_steps_per_epoch=12", "algorithm.sigma=0.1" if backend == "pipeline" else "algorithm.sigma=0.0"]
    ref = tmp_path / "ref"
    assert train(shards, ref, *layout, *longer, epochs=2, ranks=2).returncode == 0
    out = tmp_path / "killed"
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(free_port())]
    cmd += ["-m", "bioscale", "train", "--config", str(CONFIG), "--data", str(shards), "--out", str(out)]
    cmd += [*ARGS, *layout, *longer, "train.epochs=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # the run's marker: the step every stage has (a stage's own marker can run ahead of the
    # others', and a kill then resumes from the step before)
    marker = out / "checkpoints" / "latest"
    deadline = time.time() + 300
    while time.time() < deadline:  # mid-epoch 1 (steps 13..24), after its first checkpoint (16)
        if marker.exists() and json.loads(marker.read_text())["step"] >= 16:
            break
        time.sleep(0.02)
    os.kill(_rank_pids(proc.pid)[1], signal.SIGKILL)  # rank 1's process only
    proc.wait(timeout=300)
    assert proc.returncode != 0
    assert not (out / "result.json").exists() or json.loads((out / "result.json").read_text())["epochs_completed"] < 2
    resumed = train(shards, out, *layout, *longer, epochs=2, ranks=2)  # the same command
    assert resumed.returncode == 0, resumed.stderr
    # at the kill's checkpoint 16, or 20 where a loaded machine let rank 1 write one more
    at = re.search(r"resumed \S+ at step (\d+) \(epoch 1\)", resumed.stderr)
    assert at and int(at[1]) in (16, 20), resumed.stderr
    # equal up to the order of summation (the partial sums were all-reduced at the checkpoint)
    assert_same_history(history(out), history(ref))


def test_two_stages_by_two_replicas_across_two_torchrun_nodes_match_one_process(shards, tmp_path):
    """S × D = 2 × 2: two torchrun "nodes" of 2 ranks; stage-major placement puts each
    stage's replicas on one node. Equals one process with the global batch 2 × 16."""
    one = train(shards, tmp_path / "one", "algorithm.sigma=0.0", "data.batch_size_per_rank=32", epochs=1)
    assert one.returncode == 0, one.stderr
    port, torchrun = free_port(), Path(sys.executable).with_name("torchrun")
    run = tmp_path / "pipe"
    nodes = []
    for n in (0, 1):
        cmd = [str(torchrun), "--nnodes", "2", "--nproc-per-node", "2", "--node-rank", str(n)]
        cmd += ["--master-addr", "127.0.0.1", "--master-port", str(port), "-m", "bioscale", "train"]
        cmd += ["--config", str(CONFIG), "--data", str(shards), "--out", str(run), *PIPELINE]
        cmd += [*ARGS, "algorithm.sigma=0.0", "train.epochs=1"]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        nodes.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = [p.communicate(timeout=600)[0] for p in nodes]
    assert [p.returncode for p in nodes] == [0, 0], "\n".join(logs)
    assert "global batch 32 (16 × 2 ranks)" in logs[0]
    assert "pipeline stage 0 of 2 (layers [1, 2]) × 2 replicas" in logs[0]
    assert_same_history(history(run), history(tmp_path / "one"))
    a, b = final_weights(tmp_path / "one"), stage_weights(run)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-9, rtol=0), f"{k}: max diff {(a[k] - b[k]).abs().max():.2e}"


@pytest.mark.slow  # the engine-level twin: tests/distributed/test_pipeline_engine.py (sharded stages)
def test_sharded_pipeline_replicas_train_like_one_process_and_resume(shards, tmp_path):
    """distributed.zero_stage=3 with the pipeline: FSDP2 shards each stage over its replicas
    (here 1 stage × 2 replicas). Checkpoints hold the whole stage (gathered at save,
    re-sharded at load): the resumed run equals one process with the global batch."""
    sharded = ["distributed.backend=pipeline", "distributed.stages=1", "distributed.micro_batches=2"]
    sharded += ["distributed.zero_stage=3", "algorithm.sigma=0.0"]
    one = train(shards, tmp_path / "one", "algorithm.sigma=0.0", "data.batch_size_per_rank=32", epochs=2)
    assert one.returncode == 0, one.stderr
    run = tmp_path / "fsdp"
    first = train(shards, run, *sharded, epochs=1, ranks=2)
    assert first.returncode == 0, first.stderr
    proc = train(shards, run, *sharded, epochs=2, ranks=2)
    assert proc.returncode == 0, proc.stderr
    assert "resumed" in proc.stderr and "global batch 32 (16 × 2 ranks)" in proc.stderr
    assert_same_history(history(run), history(tmp_path / "one"))
    a, b = final_weights(tmp_path / "one"), stage_weights(run)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-9, rtol=0), f"{k}: max diff {(a[k] - b[k]).abs().max():.2e}"


# ---- distributed.pipeline_mode=decoupled: our own schedule, a step after every micro-batch ----
DECOUPLED = [*PIPELINE, "distributed.pipeline_mode=decoupled"]
ONE_MICRO_BATCH = ["distributed.micro_batches=1"]


@pytest.fixture(scope="module")
def sync_one_micro_batch(shards, tmp_path_factory) -> Path:
    """The sync pipeline, one micro-batch per batch (gpipe: the library's 1f1b needs M >= S),
    2 epochs, σ = 0.1. Other M draw the inverse losses' noise in other shapes, which moves
    the history by ~1e-5 (relative); decoupled updates move it by far more."""
    run = tmp_path_factory.mktemp("sync_m1") / "run"
    proc = train(shards, run, *PIPELINE, *ONE_MICRO_BATCH, "distributed.schedule=gpipe", epochs=2, ranks=2)
    assert proc.returncode == 0, proc.stderr
    return run


def test_decoupled_pipeline_trains_through_bioscale_train_and_resumes(shards, tmp_path):
    """SDTP, 2 stages, M = 4 micro-batches: the usual run directory, per-stage checkpoints,
    resume by re-running the command with one more epoch; a history of its own (stage 0
    steps after each micro-batch, with staleness 1 on all but the first) that learns."""
    run = tmp_path / "decoupled"
    first = train(shards, run, *DECOUPLED, epochs=1, ranks=2)
    assert first.returncode == 0, first.stderr
    assert "pipeline stage 0 of 2 (layers [1, 2]) × 1 replicas, decoupled" in first.stderr
    proc = train(shards, run, *DECOUPLED, epochs=2, ranks=2)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"resumed \S+ at step 6 \(epoch 1\)", proc.stderr), proc.stderr
    for name in ("config.yaml", "metrics.jsonl", "result.json", "tb"):
        assert (run / name).exists(), name
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "stage0", "stage1"]
    marker = json.loads((run / "checkpoints" / "latest").read_text())
    assert marker["step"] == 12 and marker["stages"] == [f"stage{s}/step_0000000012.pt" for s in (0, 1)]
    ours = history(run)
    assert len(ours) == 2 and ours[-1]["val_top1_err"] < VAL_BOUND, ours
    lines = [json.loads(line) for line in (run / "metrics.jsonl").open()]
    logged = set().union(*lines)
    assert {"train/loss", "val/top1_err", "layer1/local_loss", "layer2/inverse_loss", "layer4/inverse_loss"} <= logged
    # stage 0 of S = 2 with M = 4: staleness 0, 1, 1, 1; the last stage steps before its next forward
    staleness = [line for line in lines if "pipeline/staleness_mean" in line]
    assert staleness and all(line["pipeline/stage0/staleness_max"] == 1 for line in staleness)
    assert all(line["pipeline/stage1/staleness_max"] == 0 for line in staleness)
    assert all(line["pipeline/staleness_mean"] == pytest.approx(3 / 8) for line in staleness)


@pytest.mark.slow  # two more 2-rank runs (~27 s); the engine-level schedules: tests/scale/test_pipeline.py
def test_decoupled_with_one_micro_batch_equals_sync(shards, tmp_path, sync_one_micro_batch):
    """M = 1: stepping after the batch's only micro-batch is stepping after the batch, so
    the two schedules (ours and torch.distributed.pipelining's) give the same run — the
    inverse losses' noise (σ = 0.1) included: each stage draws it in the same order."""
    run = tmp_path / "decoupled_m1"
    proc = train(shards, run, *DECOUPLED, *ONE_MICRO_BATCH, epochs=2, ranks=2)
    assert proc.returncode == 0, proc.stderr
    assert_same_history(history(run), history(sync_one_micro_batch))
    a, b = stage_weights(sync_one_micro_batch), stage_weights(run)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-9, rtol=0), f"{k}: max diff {(a[k] - b[k]).abs().max():.2e}"


def test_backprop_in_decoupled_mode_is_refused_before_anything_starts(shards, tmp_path):
    proc = train(shards, tmp_path / "bp", *DECOUPLED, epochs=1, config=CONFIGS / "lc_bp.yaml")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("bioscale train")]
    assert len(errors) == 1, proc.stderr
    assert "distributed.pipeline_mode=decoupled with algorithm.rule=bp" in errors[0]
    assert "weight stashing" in errors[0]
    assert not (tmp_path / "bp").exists()  # refused before the run directory or a process group


@pytest.mark.parametrize(
    "override, message",
    [
        ("distributed.schedule=gpipe", "runs the project's own 1F1B schedule"),
        ("distributed.zero_stage=3", "decoupled mode has no sharded stages"),
    ],
)
def test_bad_decoupled_config_is_refused_with_the_reason(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(CONFIG, [*DECOUPLED, "data.batch_size_per_rank=16", override])


def test_decoupled_takes_fewer_micro_batches_than_stages():
    # our 1F1B warms up min(S − 1 − s, M) micro-batches: any M, unlike the library's Schedule1F1B
    assert load_config(CONFIG, [*DECOUPLED, *ONE_MICRO_BATCH]).distributed.micro_batches == 1


@pytest.mark.slow  # four more runs; the main decoupled test above covers SDTP at S = 2
@pytest.mark.parametrize(
    ("config", "layout", "first_stage"),
    [
        ("lc_dfa", [], "layers [1, 2]) × 1 replicas"),  # the output error travels down with the signal
        ("lc_sdtp_alt", [], "layers [1, 2]) × 1 replicas"),  # an inverse epoch (nothing sent down), then forward
        ("lc_sdtp", ["distributed.stage_boundaries=[3,2]"], "layers [1, 2, 3]) × 1 replicas"),
        ("lc_sdtp", ["distributed.stages=1", "distributed.micro_batches=2"], "layers [1, 2, 3, 4, 5]) × 2 replicas"),
    ],
)
def test_decoupled_pipeline_trains_for_other_rules_and_layouts(shards, tmp_path, config, layout, first_stage):
    proc = train(shards, tmp_path / "run", *DECOUPLED, *layout, epochs=2, ranks=2, config=CONFIGS / f"{config}.yaml")
    assert proc.returncode == 0, proc.stderr
    assert first_stage in proc.stderr
    assert history(tmp_path / "run")[-1]["val_top1_err"] < VAL_BOUND
