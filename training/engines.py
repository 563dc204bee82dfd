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
               resume takes the newest step every stage has.
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
from bioscale.distributed.process_group import barrier, is_initialized
from bioscale.training.checkpoint import (
    CheckpointError,
    CheckpointManager,
    check_stages_marker,
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

    # ---- checkpoints (every rank calls both) ----------------------------------------------
    def save(self, run_dir: Path, step: int, state: dict[str, Any], keep: int) -> None:
        if self.env.rank == 0:
            assert self.learner is not None
            full = {**state, "model": self.learner.state_dict(), "optim": self.updater.state_dict()}
            CheckpointManager(run_dir, keep=keep).save(full, step)

    def load(self, run_dir: Path, check: StateCheck) -> dict | None:
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
        check_stages_marker(run_dir, self.cfg.distributed.stages)
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


ENGINES: dict[str, type[Engine]] = {
    "none": Engine,
    "ddp": DDPEngine,
    "deepspeed": DeepSpeedEngine,
    "pipeline": PipelineEngine,
}


def make_engine(cfg: ExperimentConfig, env: DistEnv) -> Engine:
    """The engine of `distributed.backend`, joined to the process group; `build(learner)` next."""
    return ENGINES[cfg.distributed.backend](cfg, env)
