"""What a pipeline stage hands the trainer, one definition for both of the project's
pipelines: the sync one on torch.distributed.pipelining (`pipeline_engine.PipelineStageEngine`)
and our own 1F1B schedule (`pipeline.Pipeline`), which runs the decoupled mode because the
library's schedules step nothing between micro-batches. A step's `StepOutput` and the
evaluation counts come from here, so the two modes log and evaluate the same quantities
(and a sync run and a decoupled run with one micro-batch per batch agree exactly)."""

from __future__ import annotations

from typing import Protocol

import torch
import torch.distributed as dist
import torch.nn.functional as F

from bioscale.algorithms.feedback import FeedbackTrace
from bioscale.algorithms.learner import Learner, StepOutput
from bioscale.algorithms.rules import Rule


class Stage(Protocol):
    """The attributes both stage classes have: this rank's blocks and its neighbours."""

    learner: Learner
    rule: Rule
    layers: list[int]  # 1-based blocks of this stage
    first: bool
    last: bool
    depth: int
    num_classes: int
    dtype: torch.dtype  # the weights' (and the receive buffers') dtype
    device: torch.device
    prev_rank: int | None
    next_rank: int | None


def stage_output(
    stage: Stage,
    y: torch.Tensor,
    phase: str,
    logits: list[torch.Tensor],
    local_losses: list[dict[int, torch.Tensor]],
    inverse: dict[int, torch.Tensor],
) -> StepOutput:
    """A step's StepOutput with the same keys on every stage (zeros for layers another
    stage owns; empty logits below the last stage), so sums over all ranks are right.
    `logits`: the last stage's, per micro-batch in batch order; `local_losses`: each
    micro-batch trace's after its backward; `inverse`: Σ over micro-batches per layer."""
    zero = torch.zeros((), dtype=torch.float64, device=stage.device)
    trace = FeedbackTrace(1.0)
    if phase != "inverse":
        for l in range(1, stage.depth):
            owned = [t[l] for t in local_losses if l in t]
            trace.local_losses[l] = sum(owned, zero.clone()) if owned else zero.clone()
    inverse_out = {
        l: inverse.get(l, zero).to(torch.float64) for l in stage.rule.inverse_layers(stage.depth) if phase != "forward"
    }
    if stage.last:
        out = torch.cat(logits)
        task_loss = F.cross_entropy(out, y, reduction="sum")
    else:
        out = torch.zeros(0, stage.num_classes, dtype=stage.dtype, device=stage.device)
        task_loss = zero
    return StepOutput(loss=task_loss, logits=out, task_loss=task_loss, inverse_losses=inverse_out, trace=trace)


@torch.no_grad()
def evaluate_stage(stage: Stage, reader, add_counts, autocast_dtype: torch.dtype | None = None) -> torch.Tensor:
    """This rank's counts over a split read once across the replicas: activations go
    down the stage chain and the last stage adds each batch with
    `add_counts(counts, logits, labels)` (training/evaluation.py's, the one definition);
    the other stages return zeros. The caller sums them over all ranks. A plain forward
    chain of our own rather than a schedule: evaluation batches vary in size, a schedule's
    receive buffers do not."""
    net = stage.learner.net
    was_training = net.training
    net.eval()
    counts = torch.zeros(4, dtype=torch.float64, device=stage.device)
    in_shape = net.block(stage.layers[0]).in_shape
    for images, labels in reader:
        n = labels.numel()
        if n == 0:
            continue  # every stage of the replica reads the same batches: all skip it
        if stage.first:
            h = images.to(stage.device, stage.dtype, non_blocking=True)
        else:
            h = torch.empty((n, *in_shape), dtype=stage.dtype, device=stage.device)
            p2p([dist.P2POp(dist.irecv, h, stage.prev_rank)])
        with torch.autocast(stage.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            for l in stage.layers:
                h = net.blocks[l - 1](h)
        if not stage.last:  # in the receive buffer's dtype (autocast computes in bf16)
            p2p([dist.P2POp(dist.isend, h.to(stage.dtype).contiguous(), stage.next_rank)])
            continue
        add_counts(counts, h, labels.to(stage.device, non_blocking=True))
    net.train(was_training)
    return counts


def p2p(ops: list[dist.P2POp]) -> None:
    """Point-to-point through batch_isend_irecv: NCCL orders p2p per pair of ranks, and a
    batched exchange cannot deadlock on that order. Each op is posted on its own: in a
    forward-only chain a pair of ranks carries one direction only."""
    for work in dist.batch_isend_irecv(ops):
        work.wait()
