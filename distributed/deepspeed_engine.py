"""DeepSpeed as the update backend: ZeRO stages 0-3 shard the LC weights (and Adam's
state) across ranks; the learner's forward still returns the loss and the rule's
boundary Functions still decide what crosses each block (see algorithms/feedback.py).

Facts this relies on (measured with DeepSpeed 0.19.8, shared/notes/deepspeed-cpu.md):
- a torch.optim.Adam instance works at every stage; its two param groups (forward,
  inverse) carry their own lr/betas/eps. The DeepSpeed "Adam" config type silently
  becomes AdamW with weight decay 0.01: never used here.
- gradient_clipping defaults to 1.0, a global-norm clip that couples layers and breaks
  local learning: set to 0.
- gradient_accumulation_steps stays 1, so the engine never rescales the loss and the
  rule's grad scale c is 1 (DESIGN: "c").
- one engine with the alternating schedule is wrong at every stage (idle groups get
  zero grads and Adam keeps moving them on momentum): refused here.
- DeepSpeed averages gradients over ranks (the plain backend sums): with Adam the
  difference is only through ε.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from bioscale.algorithms.config import OptimConfig
from bioscale.algorithms.learner import Learner, StepOutput
from bioscale.algorithms.optim import param_groups


def deepspeed_config(zero_stage: int, micro_batch: int, precision: str) -> dict:
    cfg = {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": 0.0,
        "zero_optimization": {"stage": zero_stage},
        "steps_per_print": 10**9,
        "zero_allow_untested_optimizer": True,
        "wall_clock_breakdown": False,
    }
    if precision == "bf16":
        cfg["bf16"] = {"enabled": True}
        # Gradients reduced in float32 (DeepSpeed's default under bf16 is bf16), and for
        # ZeRO 1-3 accumulated in float32 too (stage 0 refuses a float32 accumulator; its
        # bf16 optimizer keeps float32 master weights). The rule's buffers (feedback
        # matrices, AO-SDTP's projection) in bf16 with the weights: DeepSpeed casts only
        # parameters unless told, and a float32 B against bf16 activations is a dtype error.
        cfg["communication_data_type"] = "fp32"
        data_types = {"buffer_dtype": "bf16"}
        if zero_stage:
            data_types["grad_accum_dtype"] = "fp32"
        cfg["data_types"] = data_types
    return cfg


class DeepSpeedUpdater:
    """Same interface as `algorithms.Updater` (step, learning_rates), with DeepSpeed's
    own sharded checkpoints (`save` / `load`) instead of a state dict."""

    def __init__(self, learner: Learner, optim: OptimConfig, dist_cfg, micro_batch: int):
        import deepspeed

        if learner.rule.schedule == "alternating":
            raise ValueError(
                "distributed.backend=deepspeed supports the parallel schedule only: one engine "
                "cannot idle a parameter group for an epoch (Adam keeps moving it on momentum); "
                "use distributed.backend=none for the alternating schedule"
            )
        if learner.rule.separate_phases:
            raise ValueError(
                "distributed.backend=deepspeed runs one merged step per batch: "
                "algorithm.feedback_iterations > 1 needs inverse-only steps, in which one engine would "
                "keep moving the forward group on Adam momentum; use distributed.backend=none, ddp or pipeline"
            )
        # one forward group, or more where a rule tags weights for decoupled decay (KP's W_l, B_l)
        groups = [
            {**_group(g["params"], optim.forward, "forward"), **{k: v for k, v in g.items() if k != "params"}}
            for g in param_groups(learner.forward_parameters(), optim.forward.weight_decay)
        ]
        inverse = learner.inverse_parameters()
        if inverse:
            groups.append(_group(inverse, optim.inverse, "inverse"))
        adam = torch.optim.Adam(groups)
        self.learner = learner
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=learner, optimizer=adam, config=deepspeed_config(dist_cfg.zero_stage, micro_batch, dist_cfg.precision)
        )
        self.zero_stage = dist_cfg.zero_stage

    def step(self, x: torch.Tensor, y: torch.Tensor, phase: str = "both") -> StepOutput:
        out = self.engine(x, y, phase=phase)
        self.engine.backward(out.loss)
        self.engine.step()
        return out

    def learning_rates(self) -> dict[str, float]:
        return {g["name"]: g["lr"] for g in self.optimizer.param_groups}

    def save(self, directory: Path, tag: str, client_state: dict, keep: int) -> None:
        """All ranks call this (each writes its shard); rank 0 prunes old tags."""
        self.engine.save_checkpoint(str(directory), tag=tag, client_state=client_state)
        if self.engine.global_rank == 0:
            tags = sorted(p for p in directory.glob("step_*") if p.is_dir())
            for old in tags[:-keep]:
                shutil.rmtree(old, ignore_errors=True)

    def load(self, directory: Path) -> dict | None:
        if not (directory / "latest").exists():
            return None
        path, client_state = self.engine.load_checkpoint(str(directory))
        return client_state if path is not None else None


def _group(params, cfg, name: str) -> dict:
    return {
        "params": params,
        "lr": cfg.lr,
        "betas": (cfg.beta1, cfg.beta2),
        "eps": cfg.eps,
        "weight_decay": cfg.weight_decay,
        "name": name,
    }
