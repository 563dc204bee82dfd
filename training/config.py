"""Typed experiment configuration: the sections and their fields.

Each field carries a docstring (the string literal right after it); `describe()`
renders them for `bioscale train --help-config`, so a field without one is a bug.
Reading configs — defaults ← experiment YAML (with `inherit:`) ← `key=value`
overrides, every leaf type-checked, every error naming the file (or override) and
the full dotted key — is `training/config_loader.py`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bioscale.algorithms.config import AdamConfig, OptimConfig, RuleConfig
from bioscale.data_pipeline.atomic_files import atomic_write_text
from bioscale.data_pipeline.errors import UserError

__all__ = [
    "ConfigError",
    "ModelConfig",
    "DataConfig",
    "TrainConfig",
    "DistributedConfig",
    "ExperimentConfig",
    "AdamConfig",
    "OptimConfig",
    "RuleConfig",
]

DTYPES = ("float32", "float64", "bfloat16")
WEIGHT_SHARING = ("none", "instant", "dynamic")
BACKENDS = ("none", "ddp", "deepspeed", "pipeline")
SCHEDULES = ("1f1b", "gpipe")
PIPELINE_MODES = ("sync", "decoupled")
PRECISIONS = ("fp32", "bf16")
DEVICES = ("auto", "cpu", "cuda")
EVAL_SPLITS = ("val", "test")


class ConfigError(UserError, ValueError):
    """A bad configuration: the message names the file (or override) and the key."""

    exit_code = 2


@dataclass
class ModelConfig:
    arch: str = "iclr_mnist_lc"
    """Architecture name from the models registry (e.g. iclr_mnist_lc, fashion_mnist_fc)."""
    dtype: str = "float32"
    """Parameter dtype: float32 | float64 | bfloat16 (float64 only without DeepSpeed)."""
    weight_sharing: str = "none"
    """LC nets only: none | instant | dynamic — every weight_sharing_every_steps optimizer
    steps, instant replaces each LC layer's filters (forward layers, the transposed LC layers
    of TP inverses, and a KP layer's trained feedback) by their average over positions, per
    (out-channel, kernel-tap) slot, biases per channel (Pogodin et al. 2021's weight-sharing
    phase, exact); dynamic instead pulls them towards that average by anti-Hebbian steps on
    shared random inputs (their lateral dynamics, as SGD; training/weight_sharing.py). The
    weights stay untied in between. Training starts from tied weights (position 0's filter at
    every position). FA's fixed feedback and Adam's moments are left alone."""
    weight_sharing_every_steps: int | None = None
    """Optimizer steps between two sharing events (instant or dynamic sharing); None = 10."""
    weight_sharing_rate: float | None = None
    """dynamic only: γ in (0, 1], the anti-Hebbian rate; each iteration moves every filter by
    γ(W̄ − W) in expectation (spread × ≈ sqrt((1 − γ)² + γ²)). None = 0.5."""
    weight_sharing_iterations: int | None = None
    """dynamic only: anti-Hebbian iterations per sharing event (each: fan-in random inputs
    shown to every position). None = 10."""

    def sharing_every_steps(self) -> int:
        """Steps between sharing events, the default filled in."""
        return 10 if self.weight_sharing_every_steps is None else self.weight_sharing_every_steps

    def sharing_rate(self) -> float:
        return 0.5 if self.weight_sharing_rate is None else self.weight_sharing_rate

    def sharing_iterations(self) -> int:
        return 10 if self.weight_sharing_iterations is None else self.weight_sharing_iterations


@dataclass
class DataConfig:
    path: str | None = None
    """Directory of the prepared shards (with manifest.json per split); `--data` sets it."""
    reader: str = "auto"
    """Shard reader: auto (DALI when it loads and can open the device — GPU decode on GPU, and less CPU
    per image than PIL on CPU — else WebDataset, with one warning line saying why) | wds | dali."""
    batch_size_per_rank: int = 128
    """Training batch per process; the global batch is this × world size."""
    eval_batch_size_per_rank: int | None = None
    """Evaluation batch per process; None = same as batch_size_per_rank."""
    num_workers: int = 2
    """Data loader worker processes per rank (0 = load in the training process)."""
    augment: str = "auto"
    """Training augmentation preset; auto = the dataset's default in the paper."""


@dataclass
class TrainConfig:
    epochs: int = 10
    """Number of training epochs."""
    max_steps_per_epoch: int | None = None
    """Cap on steps per epoch (smoke tests, benchmarks); None = the whole training split."""
    log_every_steps: int = 50
    """Write train/* and perf/* scalars every this many steps. Also the cadence of the host's
    look at the device: steps in between run without a host sync (statistics accumulate on
    the device), and the divergence check (non-finite losses, recorded every step on the
    device, and NaN/inf weights) runs at these steps, at angle steps, before every checkpoint
    and at each epoch end — a diverged run stops at the next of those, naming the first bad
    step and the layer, and never saves NaN weights."""
    angle_every_steps: int = 200
    """Measure the angle between each layer's update and the BP gradient every this many steps; 0 = off."""
    checkpoint_every_steps: int = 500
    """Save a checkpoint every this many steps; 0 = at epoch ends only (epoch ends always save)."""
    keep_checkpoints: int = 3
    """How many of the most recent checkpoints to keep."""
    selection_window: int = 5
    """Model selection: consecutive epochs averaged on validation top-1 error (the paper used 5)."""
    eval_splits: list[str] = field(default_factory=lambda: ["val", "test"])
    """Splits evaluated at the end of every epoch (val and/or test)."""


@dataclass
class DistributedConfig:
    backend: str = "none"
    """none: one process, or on many the gradients SUM-all-reduced after backward |
    ddp: torch DistributedDataParallel (bucketed SUM all-reduce overlapped with the
    backward; one wrapper per phase of the alternating schedule; plain on one process) |
    deepspeed: DeepSpeed ZeRO (zero_stage) |
    pipeline: the blocks split into `stages` consecutive stages on torch.distributed.pipelining
    (our own schedule for pipeline_mode=decoupled), world size / stages data-parallel
    replicas of the whole pipeline (stage-major ranks)."""
    zero_stage: int = 0
    """DeepSpeed ZeRO stage 0-3 (3 shards the LC weights) with backend deepspeed; with backend
    pipeline 0 or 3: 3 shards each stage's weights, gradients and Adam state over its
    replicas with FSDP2 (`fully_shard`), 1/(S·D) of the net's state per rank."""
    stages: int = 2
    """Pipeline stages S (backend pipeline); the world size must be a multiple of S."""
    micro_batches: int = 4
    """Micro-batches M each replica's batch is cut into (backend pipeline); must divide
    data.batch_size_per_rank, and sync 1f1b needs M >= stages."""
    schedule: str = "1f1b"
    """Pipeline schedule of torch.distributed.pipelining: 1f1b | gpipe (sync mode; decoupled
    runs the project's own 1F1B, any M)."""
    stage_boundaries: list[int] | None = None
    """Blocks per stage, e.g. [2, 3] (backend pipeline); None = balance the counted per-block
    cost (weights used per sample) over the stages."""
    pipeline_mode: str = "sync"
    """sync: every stage steps once per global batch (equals one process with that batch) |
    decoupled: a stage steps its optimizers after every micro-batch's backward, on the
    project's own 1F1B schedule (distributed/pipeline.py; torch.distributed.pipelining
    steps nothing between micro-batches). The pipeline drains after each batch: staleness
    at most stages − 1 steps, logged as pipeline/*; M = 1 equals sync. Not for bp (refused:
    backprop through weights stepped since the forward), nor zero_stage=3."""
    precision: str = "fp32"
    """fp32 | bf16: autocast to bfloat16 around forward and backward, weights and Adam in the
    parameter dtype (float32); target-propagation differences stay float32 (models/blocks.py).
    On CPU it runs through CPU autocast (correct, not faster: what the test suite checks)."""
    device: str = "auto"
    """auto (cuda when available) | cpu | cuda."""


@dataclass
class ExperimentConfig:
    name: str = "run"
    """Run name, used in logs and as the run directory name under --out when that is a parent."""
    seed: int = 0
    """Seed of weights, data order and noise; a resumed run restores RNG states instead."""
    out: str | None = None
    """Run directory (config.yaml, checkpoints/, tb/, metrics.jsonl, result.json); `--out` sets it."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """Network architecture."""
    algorithm: RuleConfig = field(default_factory=RuleConfig)
    """Learning rule and its hyperparameters (validated per rule by the algorithms package)."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Adam optimizers of the forward and inverse weights."""
    data: DataConfig = field(default_factory=DataConfig)
    """Shards, readers and batch sizes."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Epochs, logging, checkpoints and model selection."""
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    """Process group backend, ZeRO stage, precision and device."""

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML/JSON/checkpoint safe)."""
        return dataclasses.asdict(self)

    def save_yaml(self, path: str | Path) -> None:
        """Write the merged config; `load_config(path)` reads it back equal."""
        text = "# merged bioscale config: defaults <- experiment file <- overrides\n"
        text += yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)
        atomic_write_text(path, text)  # a resume compares against it: never leave half a file
