"""The one engine interface the trainer talks to, and its implementations.

An engine owns distribution: it joins the process group, says which share of the data
this rank reads, runs a training step, evaluates, reports learning rates, and saves and
loads its own part of a checkpoint. The trainer owns the loop, logging and the loop
state (step, epoch, history, reader, RNG), which it hands to `save` and gets back from
`load`. The runtime pieces live in `distributed/` (DDP wrappers, the DeepSpeed engine,
the pipeline stage); these adapters sit in `training/` because the checkpoint layout of
a run directory is the trainer's business:

    none       checkpoints/step_*.pt + latest (rank 0; weights and optimizer state inside)
    ddp        same (replicas are identical)
    deepspeed  checkpoints/deepspeed/ (DeepSpeed's sharded files, every rank writes)
    pipeline   checkpoints/stage{s}/step_*.pt + latest (replica 0 of each stage; its
               weights under the single-process names, so the stage files merge into
               one model), and checkpoints/latest once every stage has saved a step;
               resume takes the newest step every stage has. Both pipeline modes (sync,
               decoupled) write the same files.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from bioscale.algorithms import Updater
from bioscale.algorithms.learner import Learner, StepOutput
from bioscale.distributed import init_distributed, local_device
from bioscale.distributed.environment import DistEnv
from bioscale.distributed.gradient_sync import all_reduce_gradients
from bioscale.distributed.pipeline import Pipeline
from bioscale.distributed.pipeline_outputs import evaluate_stage, stage_output
from bioscale.distributed.pipeline_schedule import PipelineConfig
from bioscale.distributed.process_group import all_reduce_sum, barrier, is_initialized
from bioscale.training.checkpoint import (
    CheckpointError,
    CheckpointManager,
    check_checkpoint_layout,
    write_stages_marker,
)
from bioscale.training.config import ConfigError, ExperimentConfig
from bioscale.training.evaluation import add_batch_counts, evaluate, summarize

log = logging.getLogger("bioscale.train")
StateCheck = Callable[[dict], None]
"""Called with a loaded loop state before any weights are applied (the trainer refuses a
run directory holding another model or rule there)."""


class Engine:
    """Plain: one process, or on many the gradients SUM-all-reduced after backward
    (`distributed.backend=none`); the base of the others."""

    full_model = True
    """Whether this rank holds every weight (the angle-to-BP diagnostic needs them)."""
    deepspeed_zero_stage: int | None = None
    """The ZeRO stage when DeepSpeed owns the weights (weight sharing writes its master copy)."""

    def __init__(self, cfg: ExperimentConfig, env: DistEnv):
        self.cfg, self.env = cfg, env
        # The backend follows the device chosen (distributed.device=cpu on a GPU node: gloo).
        init_distributed(env, require_group=self.requires_group, device=cfg.distributed.device)
        self.device = local_device(env, cfg.distributed.device)
        self.data_rank, self.data_world = env.rank, env.world_size
        """This rank's share of the data: reader rank and number of readers."""
        self.learner: Learner | None = None
        self.updater: Any = None
        """What steps: an `Updater`, a DDP or DeepSpeed updater, or a pipeline stage."""

    requires_group = False
    """Whether a one-process run still needs a process group (DeepSpeed does)."""

    def build(self, learner: Learner) -> None:
        self.learner = learner
        self.updater = Updater(learner, self.cfg.optim, grad_sync=all_reduce_gradients)

    def step(self, x: torch.Tensor, y: torch.Tensor, phase: str) -> StepOutput:
        return self.updater.step(x, y, phase)

    def evaluate(self, reader, autocast_dtype: torch.dtype | None) -> dict[str, float]:
        assert self.learner is not None
        return evaluate(self.learner.net, reader, self.device, autocast_dtype)

    def learning_rates(self) -> dict[str, float]:
        return self.updater.learning_rates()

    def extra_scalars(self) -> dict[str, float]:
        """The engine's own scalars for the trainer's log steps (every rank calls it there,
        so it may run a collective); none but the decoupled pipeline's staleness."""
        return {}

    # ---- checkpoints (every rank calls both) ----------------------------------------------
    def save(self, run_dir: Path, step: int, state: dict[str, Any], keep: int) -> None:
        if self.env.rank == 0:
            assert self.learner is not None
            full = {**state, "model": self.learner.state_dict(), "optim": self.updater.state_dict()}
            CheckpointManager(run_dir, keep=keep).save(full, step)

    def load(self, run_dir: Path, check: StateCheck) -> dict | None:
        check_checkpoint_layout(run_dir, "plain")
        state = CheckpointManager(run_dir).load_latest(map_location=self.device)
        if state is None:
            return None
        check(state)
        assert self.learner is not None
        self.learner.load_state_dict(state["model"])
        self.updater.load_state_dict(state["optim"])
        return state


class DDPEngine(Engine):
    """`distributed.backend=ddp`: DistributedDataParallel with a SUM hook (plain on one process)."""

    def build(self, learner: Learner) -> None:
        if self.env.world_size == 1:
            return super().build(learner)
        from bioscale.distributed.ddp_engine import DDPUpdater

        self.learner = learner
        self.updater = DDPUpdater(learner, self.cfg.optim, device=self.device)


class DeepSpeedEngine(Engine):
    """`distributed.backend=deepspeed`: ZeRO 0-3; DeepSpeed writes its own sharded checkpoints."""

    requires_group = True

    @property
    def full_model(self) -> bool:  # type: ignore[override]
        return self.cfg.distributed.zero_stage != 3  # ZeRO-3: weights are sharded

    @property
    def deepspeed_zero_stage(self) -> int | None:  # type: ignore[override]
        return self.cfg.distributed.zero_stage

    def build(self, learner: Learner) -> None:
        from bioscale.distributed.deepspeed_engine import DeepSpeedUpdater

        self.learner = learner
        try:
            self.updater = DeepSpeedUpdater(
                learner, self.cfg.optim, self.cfg.distributed, self.cfg.data.batch_size_per_rank
            )
        except ValueError as exc:
            raise ConfigError(f"config: {exc}") from None

    def save(self, run_dir: Path, step: int, state: dict[str, Any], keep: int) -> None:
        directory = run_dir / "checkpoints" / "deepspeed"
        self.updater.save(directory, f"step_{step:010d}", state, keep)

    def load(self, run_dir: Path, check: StateCheck) -> dict | None:
        check_checkpoint_layout(run_dir, "deepspeed")
        # DeepSpeed applies weights and optimizer state while loading; the check follows.
        state = self.updater.load(run_dir / "checkpoints" / "deepspeed")
        if state is not None:
            check(state)
        return state


class PipelineEngine(Engine):
    """`distributed.backend=pipeline`: this rank is one stage of S × D (stage-major ranks);
    the D ranks of replica d (one per stage) read the d-th share of the data — stage 0 uses
    the images, the last stage the labels."""

    requires_group = True
    full_model = False

    def __init__(self, cfg: ExperimentConfig, env: DistEnv):
        dcfg = cfg.distributed
        if env.world_size % dcfg.stages:
            raise ConfigError(
                f"config: distributed.stages = {dcfg.stages} does not divide the world size {env.world_size}"
            )
        super().__init__(cfg, env)
        replicas = env.world_size // dcfg.stages
        self.stage, replica = divmod(env.rank, replicas)
        self.data_rank, self.data_world = replica, replicas
        self.is_writer = replica == 0  # replicas of a stage are identical: one writes

    def build(self, learner: Learner) -> None:
        from bioscale.distributed.pipeline_engine import PipelineStageEngine

        dcfg = self.cfg.distributed
        self.learner = learner
        try:
            self.updater = PipelineStageEngine(
                learner,
                self.cfg.optim,
                stages=dcfg.stages,
                micro_batches=dcfg.micro_batches,
                micro_batch_size=self.cfg.data.batch_size_per_rank // dcfg.micro_batches,
                schedule=dcfg.schedule,
                boundaries=dcfg.stage_boundaries,
                device=self.device,
                shard=dcfg.zero_stage == 3,
            )
        except ValueError as exc:
            raise ConfigError(f"config: {exc}") from None

    def evaluate(self, reader, autocast_dtype: torch.dtype | None) -> dict[str, float]:
        counts = self.updater.evaluate(reader, add_batch_counts, autocast_dtype)
        return summarize(counts, self.updater.num_classes, reader)

    def _manager(self, run_dir: Path, keep: int = 3) -> CheckpointManager:
        return CheckpointManager(run_dir, keep=keep, subdir=f"checkpoints/stage{self.stage}")

    def save(self, run_dir: Path, step: int, state: dict[str, Any], keep: int) -> None:
        whole = self.updater.state_dict()  # every replica: a sharded stage gathers here
        if self.is_writer:
            self._manager(run_dir, keep).save({**state, **whole, "stage": self.stage}, step)
        barrier()  # a checkpoint step exists once every stage has written it
        if self.env.rank == 0:
            write_stages_marker(run_dir, step, self.cfg.distributed.stages)

    def load(self, run_dir: Path, check: StateCheck) -> dict | None:
        check_checkpoint_layout(run_dir, "pipeline", self.cfg.distributed.stages)
        manager = self._manager(run_dir)
        records = manager.records() if manager.dir.is_dir() else []
        # the newest step every stage has (a kill between two stages' saves leaves one behind)
        common = int(self._reduce(records[-1].step if records else -1, dist.ReduceOp.MIN))
        if common < 0:
            return None
        state = manager.load_latest(map_location=self.device, at_most=common)
        step = state["step"] if state is not None else -1
        low, high = self._reduce(step, dist.ReduceOp.MIN), self._reduce(step, dist.ReduceOp.MAX)
        if low != high or state is None:
            raise CheckpointError(
                f"{run_dir}: pipeline stages resumed at different steps ({int(low)}..{int(high)}): "
                "no checkpoint step is intact on every stage"
            )
        check(state)
        self.updater.load_state_dict(state)
        return state

    def _reduce(self, value: float, op) -> float:
        t = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        if is_initialized():
            dist.all_reduce(t, op=op)
        return float(t.item())


class _DecoupledStage:
    """A decoupled `distributed.pipeline.Pipeline` behind `PipelineStageEngine`'s contract
    (step, evaluate, num_classes, learning_rates, state_dict, load_state_dict), so that
    `PipelineEngine`'s evaluation and checkpoints serve both modes unchanged."""

    def __init__(self, pipeline: Pipeline):
        self.pipeline = pipeline
        self.num_classes = pipeline.num_classes

    def step(self, x: torch.Tensor, y: torch.Tensor, phase: str) -> StepOutput:
        p = self.pipeline
        p.train([(x, y)], phase, replica_share=True, report=False)  # the engine logs staleness
        seen = p.observed
        return stage_output(p, y, phase, seen.logits, seen.local_losses, seen.inverse)

    def evaluate(self, reader, add_counts, autocast_dtype: torch.dtype | None = None) -> torch.Tensor:
        return evaluate_stage(self.pipeline, reader, add_counts, autocast_dtype)

    def learning_rates(self) -> dict[str, float]:
        return self.pipeline.updater.learning_rates()

    def state_dict(self) -> dict:
        """PipelineStageEngine's keys (a stage's file is the same in both modes). The
        Pipeline's step counter `version` is not saved: every step drains the pipeline, so
        staleness is a difference within a step and a resumed run reproduces it."""
        return {"model": self.pipeline.stage_state(), "optim": self.pipeline.updater.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.pipeline.learner.load_state_dict(state["model"])
        self.pipeline.updater.load_state_dict(state["optim"])


class DecoupledPipelineEngine(PipelineEngine):
    """`distributed.backend=pipeline distributed.pipeline_mode=decoupled`: every stage steps
    its optimizers right after each micro-batch's backward. It runs on the project's own
    1F1B schedule (distributed/pipeline.py `Pipeline`) because torch.distributed.pipelining's
    schedules step nothing between micro-batches. One trainer step is `Pipeline.train([(x,
    y)])`: the batch's M micro-batches stream through the stages, each stage steps M times,
    and the pipeline drains at the end of the batch, so the staleness of a micro-batch (the
    steps its stage took between its forward and its backward) is at most S−1−s on stage s
    (S−1 at most) and never crosses batches; with M = 1 it is the sync mode. Logged as
    pipeline/* scalars. Evaluation and checkpoints (the sync mode's files) are
    PipelineEngine's, through `_DecoupledStage`."""

    def build(self, learner: Learner) -> None:
        dcfg = self.cfg.distributed
        self.learner = learner
        cfg = PipelineConfig(
            stages=dcfg.stages,
            data_parallel=self.data_world,
            micro_batches=dcfg.micro_batches,
            mode="decoupled",
            # blocks per stage, as for the sync engine (`ranges_from_balance` in both)
            balance=tuple(dcfg.stage_boundaries) if dcfg.stage_boundaries else None,
        )
        try:
            pipeline = Pipeline(learner, self.cfg.optim, cfg)
        except ValueError as exc:
            raise ConfigError(f"config: {exc}") from None
        self.updater = _DecoupledStage(pipeline)
        if self.is_writer:
            log.info(
                "pipeline stage %d of %d (layers %s) × %d replicas, decoupled (a step after every "
                "micro-batch), %d micro-batches of %d",
                self.stage, dcfg.stages, pipeline.layers, self.data_world, dcfg.micro_batches,
                self.cfg.data.batch_size_per_rank // dcfg.micro_batches,
            )  # fmt: skip

    def extra_scalars(self) -> dict[str, float]:
        """Staleness per stage over the micro-batches since the last log step (one small
        all-reduce; a stage's replicas are identical, replica 0 reports)."""
        stages = self.cfg.distributed.stages
        seen = self.updater.pipeline.stats.staleness
        rows = torch.zeros(stages, 3, dtype=torch.float64, device=self.device)  # sum, count, max
        if self.is_writer and seen:
            rows[self.stage] = torch.tensor([sum(seen), len(seen), max(seen)], dtype=torch.float64)
        seen.clear()  # read once: the list would otherwise grow by M entries every step
        out: dict[str, float] = {}
        total = count = 0.0
        for s, (sum_s, count_s, max_s) in enumerate(all_reduce_sum(rows).tolist()):
            if count_s:
                out[f"pipeline/stage{s}/staleness_mean"] = sum_s / count_s
                out[f"pipeline/stage{s}/staleness_max"] = max_s
                total, count = total + sum_s, count + count_s
        if count:
            out["pipeline/staleness_mean"] = total / count
        return out


ENGINES: dict[str, type[Engine]] = {
    "none": Engine,
    "ddp": DDPEngine,
    "deepspeed": DeepSpeedEngine,
    "pipeline": PipelineEngine,
}
PIPELINE_ENGINES: dict[str, type[Engine]] = {"sync": PipelineEngine, "decoupled": DecoupledPipelineEngine}
"""`distributed.pipeline_mode` → the engine of `distributed.backend=pipeline`."""


def make_engine(cfg: ExperimentConfig, env: DistEnv) -> Engine:
    """The engine of `distributed.backend` (and, for the pipeline, `distributed.pipeline_mode`),
    joined to the process group; `build(learner)` next."""
    dcfg = cfg.distributed
    engine = PIPELINE_ENGINES[dcfg.pipeline_mode] if dcfg.backend == "pipeline" else ENGINES[dcfg.backend]
    return engine(cfg, env)
