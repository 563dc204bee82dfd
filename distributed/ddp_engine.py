"""`distributed.backend=ddp`: `torch.nn.parallel.DistributedDataParallel` around the
`Learner`, with gradients SUMMED over ranks.

What DDP adds over the plain backend's all-reduce after backward
(`gradient_sync.all_reduce_gradients`): gradients are bucketed (25 MiB, in the order
autograd produces them, last block first) and each bucket's all-reduce starts while the
backward of the blocks below is still running.

Three facts this relies on (tested on 2 gloo ranks, `tests/scale/test_ddp.py`, `tests/training/test_ddp_backend.py`):

- SUM, not mean. Every loss is summed over the batch, so R ranks × batch B must give the
  gradients of one process with batch R·B. DDP's built-in reduction divides by the world
  size; a communication hook (`sum_allreduce_hook`) replaces it by a plain SUM all-reduce
  (with a hook registered, DDP's reducer does no division of its own).
- The boundary Functions (algorithms/feedback.py) are ordinary autograd nodes: θ_l's
  gradient reaches θ_l through the AccumulateGrad node DDP hooks into, whatever signal
  the boundary sends down; the g_l calls inside their backward run under `no_grad` and
  give λ nothing. So DDP's hooks fire once per parameter per backward, as for any model.
- The alternating schedule leaves one side without gradients for a whole epoch. Rather
  than `find_unused_parameters=True` (a walk of the autograd graph after every forward,
  and an extra bitmap all-reduce per step), there is one DDP wrapper per phase, each
  tracking exactly the parameters its phase trains (`inverse`: λ, `forward`: θ, `both`:
  θ and λ); the others are hidden from it. Every tracked parameter then gets a gradient
  in every step of that wrapper's phase, as DDP's default mode requires. The wrappers
  share the one `Learner` (same parameter tensors); only the one of the current phase
  runs, so the other's hooks stay idle (DDP's reducer ignores hooks outside its own
  forward/backward).

One process (world size 1): nothing to reduce, the plain `Updater` is used (trainer).
"""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from bioscale.algorithms.config import OptimConfig
from bioscale.algorithms.learner import Learner, StepOutput
from bioscale.algorithms.optim import Updater

log = logging.getLogger("bioscale.ddp")


def sum_allreduce_hook(group, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """DDP communication hook: all-reduce the bucket with SUM (DDP's default divides by
    the world size). `group` is the hook state: a process group, or None for all ranks."""
    work = dist.all_reduce(bucket.buffer(), op=dist.ReduceOp.SUM, group=group, async_op=True)
    return work.get_future().then(lambda fut: fut.value()[0])


# `register_comm_hook` compares the annotations with the real classes; under
# `from __future__ import annotations` they are strings.
sum_allreduce_hook.__annotations__.update(bucket=dist.GradBucket, **{"return": torch.futures.Future[torch.Tensor]})


def phase_parameters(learner: Learner, phase: str) -> list[nn.Parameter]:
    """The parameters a phase trains (and so the ones its DDP wrapper reduces)."""
    if phase == "forward":
        return learner.forward_parameters()
    if phase == "inverse":
        return learner.inverse_parameters()
    return learner.forward_parameters() + learner.inverse_parameters()


def wrap_phase(
    learner: Learner,
    phase: str,
    device: torch.device | None = None,
    group=None,
    bucket_cap_mb: float = 25.0,
    find_unused_parameters: bool = False,
) -> DistributedDataParallel:
    """A DDP wrapper of `learner` that reduces only `phase`'s parameters, with SUM.
    A collective: every rank must call it (DDP broadcasts rank 0's tracked tensors)."""
    tracked = {id(p) for p in phase_parameters(learner, phase)}
    ignore = [name for name, p in learner.named_parameters() if id(p) not in tracked]
    # DDP reads the names to leave alone from this attribute at construction only
    # (`DistributedDataParallel._set_params_and_buffers_to_ignore_for_model` sets it and
    # also marks the tensors `_ddp_ignored`, which would leak into the next wrapper's
    # construction; only mixed-precision DDP reads that mark).
    learner.__dict__["_ddp_params_and_buffers_to_ignore"] = ignore
    try:
        ddp = DistributedDataParallel(
            learner,
            device_ids=[device.index] if device is not None and device.type == "cuda" else None,
            process_group=group,
            bucket_cap_mb=bucket_cap_mb,
            # The feedback matrices B_l are buffers fixed at construction, identical on
            # every rank (same seed; DDP's constructor broadcasts them once anyway): no
            # broadcast before every forward.
            forward_sync_buffers=False,
            find_unused_parameters=find_unused_parameters,
        )
    finally:
        del learner.__dict__["_ddp_params_and_buffers_to_ignore"]
    ddp.register_comm_hook(group, sum_allreduce_hook)
    return ddp


class DDPUpdater(Updater):
    """`algorithms.Updater` (same optimisers, state dict and learning rates) whose forward
    and backward run through DDP: gradients are summed over ranks during the backward."""

    def __init__(
        self,
        learner: Learner,
        cfg: OptimConfig,
        device: torch.device | None = None,
        group=None,
        bucket_cap_mb: float = 25.0,
        per_phase: bool = True,
    ):
        """`per_phase=False` (for comparison, `bioscale bench ddp`): the alternating schedule
        gets one wrapper over θ and λ with `find_unused_parameters=True` instead."""
        super().__init__(learner, cfg)
        alternating = learner.rule.separate_phases  # the alternating schedule, or K inverse steps per batch
        # Built up front on every rank (a collective), before any checkpoint is loaded:
        # loading copies into the same parameter tensors DDP holds. Two wrappers must never
        # track the same parameter (measured: both reducers then write its .grad, silently wrong).
        if alternating and not per_phase:
            both = wrap_phase(learner, "both", device, group, bucket_cap_mb, find_unused_parameters=True)
            self.wrappers = {"inverse": both, "forward": both}
        else:
            phases = ("inverse", "forward") if alternating else ("both",)
            self.wrappers = {phase: wrap_phase(learner, phase, device, group, bucket_cap_mb) for phase in phases}
        if dist.get_rank(group) == 0:
            log.info(
                "DistributedDataParallel over %d ranks: SUM all-reduce hook, %g MB buckets, wrappers for phases %s",
                dist.get_world_size(group),
                bucket_cap_mb,
                ", ".join(sorted(self.wrappers)),
            )

    def step(
        self, x: torch.Tensor, y: torch.Tensor, phase: str = "both", noise: dict[int, torch.Tensor] | None = None
    ) -> StepOutput:
        """As `Updater.step`; `noise` (tests) is passed to the learner's forward."""
        if phase not in self.wrappers:
            raise ValueError(f"DDP wrappers exist for phases {sorted(self.wrappers)}, not {phase!r}")
        for opt in self.optimizers():
            opt.zero_grad(set_to_none=True)
        out = self.wrappers[phase](x, y, phase=phase, noise=noise)
        out.loss.backward()  # the wrapper's buckets are all-reduced (SUM) during this backward
        if phase in ("both", "forward"):
            self.forward.step()
        if self.inverse is not None and phase in ("both", "inverse"):
            self.inverse.step()
        return out
