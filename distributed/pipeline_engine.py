"""`distributed.backend=pipeline`: a Learner's blocks split into S stages on
`torch.distributed.pipelining` (PipelineStage + Schedule1F1B / ScheduleGPipe), S stages × D
replicas, stage-major ranks (rank = stage·D + replica, `pipeline_schedule.placement`).

Why the library's schedules fit a rule that is not backprop: the gradient that crosses a
stage boundary is whatever the stage's autograd sends down, and with the rule's boundary
Functions (algorithms/feedback.py) that already is the rule's signal. What the library
does not know about is carried by one identity Function on each stage's outputs,
`_StageOutput`, whose backward
  - seeds the stage's local loss (Σ inverse losses of its layers) with 1, so those ride the
    backward the schedule runs for the stage — no schedule code of ours;
  - for DFA, reads the output error e: it arrives as the gradient of a zero "error
    carrier" tensor every stage passes on and the last adds to its logits (so its
    gradient is ∂L/∂logits = e), and is stored in the micro-batch's trace before any
    boundary of the stage runs (they are reachable only through this node).

Each micro-batch gets its own `FeedbackTrace`; every loss is a batch sum, so the M
micro-batch gradients add up to the full batch's (`scale_grads=False`, c = 1). Shapes are
declared up front (static metadata: no inference pass through the rule's forward) from
the micro-batch size, which is fixed: training batches are drop-last and M divides them.

Sync mode only: one optimizer step per stage per global batch, after the schedule, with
the stage's gradients SUM-all-reduced over its D replicas first (the decoupled mode, a
step after every micro-batch, runs on our own schedule, distributed/pipeline.py).
Evaluation is a plain forward chain of our own (`batch_isend_irecv` pairs, NCCL-safe),
because evaluation batches vary in size and the schedule's receive buffers do not; it and
the step's StepOutput are shared with the decoupled mode (distributed/pipeline_outputs.py).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

from bioscale.algorithms.config import OptimConfig
from bioscale.algorithms.feedback import FeedbackTrace, TraceGap
from bioscale.algorithms.learner import Learner, StepOutput
from bioscale.algorithms.optim import Updater
from bioscale.distributed.gradient_sync import all_reduce_gradients
from bioscale.distributed.pipeline import Pipeline, _StageParams
from bioscale.distributed.pipeline_outputs import evaluate_stage, stage_output
from bioscale.distributed.pipeline_schedule import partition, ranges_from_balance
from bioscale.distributed.process_group import get_rank, get_world_size
from bioscale.distributed.sharded_state import gather_full, map_tensors, shard_like

log = logging.getLogger("bioscale.pipeline")
SCHEDULES = {"1f1b": Schedule1F1B, "gpipe": ScheduleGPipe}


class _StageOutput(torch.autograd.Function):
    """Identity on a stage's outputs; backward seeds the stage's local loss with 1 and (DFA)
    stores the error carrier's gradient — the output error — in the micro-batch's trace."""

    @staticmethod
    def forward(ctx, trace, carrier_index, loss, *outs):
        ctx.trace, ctx.carrier_index = trace, carrier_index
        ctx.loss_meta = (loss.shape, loss.dtype, loss.device)
        # contiguous: p2p sends refuse strided tensors (LC activations are NCHW views of HWCN memory)
        return tuple(o.contiguous().view_as(o) for o in outs)

    @staticmethod
    def backward(ctx, *grads):
        if ctx.carrier_index is not None and grads[ctx.carrier_index] is not None:
            ctx.trace.output_error = grads[ctx.carrier_index].detach()
        shape, dtype, device = ctx.loss_meta
        return (None, None, torch.ones(shape, dtype=dtype, device=device), *grads)


def _cross_entropy_sum(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y, reduction="sum")


class _StageModule(nn.Module):
    """One stage's blocks as the module a PipelineStage runs: the same graph as
    `Learner._propagate` for layers `layers`, plus the stage's inverse losses. Records, per
    micro-batch, the detached values the trainer logs."""

    def __init__(self, learner: Learner, layers: list[int], first: bool, last: bool, carries_error: bool):
        super().__init__()
        self.learner = learner
        self.rule, self.net = learner.rule, learner.net
        self.layers, self.first, self.last, self.carries_error = layers, first, last, carries_error
        self.phase = "both"
        self.traces: list[FeedbackTrace] = []
        self.logits: list[torch.Tensor] = []
        self.inverse: dict[int, torch.Tensor] = {}

    def begin(self, phase: str) -> None:
        self.phase, self.traces, self.logits, self.inverse = phase, [], [], {}

    def forward(self, *inputs: torch.Tensor, y: torch.Tensor | None = None, **noise: torch.Tensor):
        phase, rule, depth = self.phase, self.rule, self.net.depth
        signal = phase != "inverse" and torch.is_grad_enabled()
        trace = FeedbackTrace(1.0)
        self.traces.append(trace)
        h = inputs[0]
        carrier = inputs[1] if len(inputs) > 1 else None
        if self.carries_error and carrier is None:  # the first stage starts the carrier
            carrier = torch.zeros(
                h.shape[0], self.net.num_classes, dtype=self.dtype, device=h.device, requires_grad=signal
            )
        hs, feedback, blocks, logits = {self.layers[0] - 1: h}, self.learner.feedback, self.net.blocks, None
        with torch.set_grad_enabled(signal):
            for l in self.layers:
                if l == depth:
                    assert y is not None, "the last stage needs the labels"
                    logits = rule.top(l, blocks[l - 1], h, y, trace, feedback)
                else:
                    h = rule.hidden(l, blocks[l - 1], h, trace, feedback)
                    if h.requires_grad:
                        h = TraceGap.apply(h, l, trace)
                    hs[l] = h
        eps = {int(k.removeprefix("noise_")): v for k, v in noise.items()} or None
        inv = rule.inverse_losses(self.net, hs, eps, layers=set(self.layers)) if phase != "forward" else {}
        for l, v in inv.items():
            self.inverse[l] = self.inverse.get(l, 0) + v.detach()
        total = sum(inv.values())
        if not isinstance(total, torch.Tensor):
            # no local loss: a zero leaf still makes the outputs require grad, so every
            # micro-batch has the same metadata and the schedule's backward runs
            total = torch.zeros((), dtype=self.dtype, device=h.device, requires_grad=True)
        if self.last:
            assert logits is not None
            if carrier is not None:
                logits = logits + carrier  # its gradient is ∂L/∂logits: the output error e
            self.logits.append(logits.detach())
            return _StageOutput.apply(trace, None, total, logits)[0]
        # in the declared dtype: under bf16 autocast the LC outputs are bf16, the next stage's
        # receive buffers have the weights' dtype
        outs = tuple(o.to(self.dtype) for o in ((h, carrier) if carrier is not None else (h,)))
        return _StageOutput.apply(trace, 1 if carrier is not None else None, total, *outs)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.learner.net.parameters()).dtype


class PipelineStageEngine:
    """This rank's stage of an S × D pipeline: `step` runs one global batch (this replica's
    share) through the schedule and steps the stage's optimizers; `evaluate` counts top-1 /
    top-5 hits on the last stage. Every rank of the world calls both."""

    def __init__(
        self,
        learner: Learner,
        optim: OptimConfig,
        *,
        stages: int,
        micro_batches: int,
        micro_batch_size: int,
        schedule: str = "1f1b",
        boundaries: list[int] | None = None,
        device: torch.device | None = None,
        shard: bool = False,
    ):
        """`shard`: FSDP2 `fully_shard` of the stage over its D replicas (weights, gradients
        and Adam state at rest 1/D per rank; see `_shard`)."""
        world, rank = get_world_size(), get_rank()
        net, rule = learner.net, learner.rule
        if stages > net.depth:
            raise ValueError(f"distributed.stages = {stages}: the network {net.arch!r} has only {net.depth} blocks")
        if world % stages:
            raise ValueError(f"distributed.stages = {stages} does not divide the world size {world}")
        if schedule not in SCHEDULES:
            raise ValueError(f"distributed.schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
        self.stages, self.replicas = stages, world // stages
        self.stage, self.replica = divmod(rank, self.replicas)
        self.first, self.last = self.stage == 0, self.stage == stages - 1
        costs = [sum(p.numel() for p in b.parameters()) for b in net.blocks]
        ranges = ranges_from_balance(tuple(boundaries), len(costs)) if boundaries else partition(costs, stages)
        self.layers = [i + 1 for i in ranges[self.stage]]
        self.depth, self.num_classes = net.depth, net.num_classes
        self.rule, self.learner = rule, learner
        carries = rule.name == "dfa"
        Pipeline._drop_other_blocks(learner, set(self.layers), shift=1 if carries else 0)
        D = self.replicas
        # new_group is collective over the world: every rank creates every group, in order
        self.pp_group = self.dp_group = None
        for d in range(D):
            g = dist.new_group([s * D + d for s in range(stages)]) if D > 1 else None
            if d == self.replica:
                self.pp_group = g
        for s in range(stages):
            g = dist.new_group([s * D + d for d in range(D)]) if D > 1 else None
            if s == self.stage:
                self.dp_group = g
        self.device: torch.device = device or forward_device(net, self.layers[0])
        self.module = _StageModule(learner, self.layers, self.first, self.last, carries)
        self.sharded = shard and self.dp_group is not None
        if self.sharded:
            self._shard(net)
        # the parameter lists after sharding: fully_shard replaces them by DTensor shards
        inverse = [
            p
            for l in rule.inverse_layers(net.depth)
            if l in self.layers
            for p in net.block(l).inverse_layer.parameters()  # type: ignore[union-attr]
        ]
        forward = [p for l in self.layers for p in net.block(l).layer.parameters()]
        self.updater = Updater(_StageParams(forward, inverse), optim)
        self.params = forward + inverse
        self.dtype = forward[0].dtype
        self.micro_batches = micro_batches
        mb = micro_batch_size
        first_block = net.block(self.layers[0])
        ins = [self._example((mb, *first_block.in_shape), requires_grad=not self.first)]
        if carries and not self.first:
            ins.append(self._example((mb, self.num_classes), requires_grad=True))
        if self.last:
            outs = [self._example((mb, self.num_classes), requires_grad=True)]
        else:
            outs = [self._example((mb, *net.block(self.layers[-1]).out_shape), requires_grad=True)]
            if carries:
                outs.append(self._example((mb, self.num_classes), requires_grad=True))
        self.pipeline_stage = PipelineStage(
            self.module, self.stage, stages, self.device, input_args=tuple(ins), output_args=tuple(outs),
            group=self.pp_group,
        )  # fmt: skip
        self.schedule = SCHEDULES[schedule](
            self.pipeline_stage, n_microbatches=micro_batches, loss_fn=_cross_entropy_sum, scale_grads=False
        )
        self.prev_rank = rank - D if not self.first else None
        self.next_rank = rank + D if not self.last else None
        if self.replica == 0:
            log.info(
                "pipeline stage %d of %d (layers %s) × %d replicas, %s, %d micro-batches of %d",
                self.stage, stages, self.layers, D, schedule, micro_batches, mb,
            )  # fmt: skip

    def _shard(self, net) -> None:
        """FSDP2 over the stage's data-parallel group, one unit per block. Why FSDP2 and not
        DeepSpeed ZeRO: DeepSpeed owns the backward (engine.backward) and the step, while
        here the pipeline schedule runs the backward; PipelineStage drives an FSDP module
        itself (no gradient sync per micro-batch, one reduce-scatter after the last).
        `reshard_after_forward=False`: the TP boundaries call g_l inside the backward, as a
        method, where FSDP's hooks would not gather the weights; they stay gathered from the
        forward to the end of the backward, and at rest each rank holds its 1/D shard.
        Divide factor 1: gradients SUMMED over replicas (losses are batch sums)."""
        import warnings

        from torch.distributed.device_mesh import DeviceMesh
        from torch.distributed.fsdp import fully_shard

        # The stage's outputs are views (the identity Function) that nothing modifies in
        # place — the schedule sends them or detaches them — which is all FSDP warns about.
        warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
        from torch.distributed.tensor import Shard

        assert self.dp_group is not None  # only stages with replicas are sharded
        mesh = DeviceMesh.from_group(self.dp_group, self.device.type)
        units = [net.blocks[l - 1] for l in self.layers]

        D = self.replicas

        def even_dim(p: torch.Tensor) -> Shard:
            # LC weights are (positions, out, in·k·k): deep in the net dim 0 (a few output
            # positions, e.g. 9) splits unevenly, and the largest rank's share sets the
            # per-rank memory. FSDP2 shards other dims only evenly: take the largest such.
            even = [d for d in range(p.dim()) if p.shape[d] % D == 0]
            return Shard(0 if not even or 0 in even else max(even, key=lambda d: p.shape[d]))

        for unit in [*units, self.module]:
            fully_shard(unit, mesh=mesh, reshard_after_forward=False, shard_placement_fn=even_dim)
            unit.set_gradient_divide_factor(1.0)
            # plain SUM collectives: FSDP would otherwise pick PREMUL_SUM (float32), which gloo refuses
            unit.set_force_sum_reduction_for_comms(True)

    def _example(self, shape, requires_grad: bool) -> torch.Tensor:
        return torch.empty(shape, dtype=self.dtype, device=self.device).requires_grad_(requires_grad)

    # ---- training ----------------------------------------------------------------------------
    def step(
        self, x: torch.Tensor, y: torch.Tensor, phase: str = "both", noise: dict[int, torch.Tensor] | None = None
    ) -> StepOutput:
        """One global batch: this replica's x (read by stage 0) and y (used by the last
        stage); `noise[l]` (tests) for this stage's inverse losses."""
        for opt in self.updater.optimizers():
            opt.zero_grad(set_to_none=True)
        self.module.begin(phase)
        kwargs: dict[str, Any] = {f"noise_{l}": n for l, n in (noise or {}).items() if l in self.layers}
        if self.last:
            kwargs["y"] = y
        args = (x,) if self.first else ()
        if self.last:
            self.schedule.step(*args, target=y, return_outputs=False, **kwargs)
        else:
            self.schedule.step(*args, return_outputs=False, **kwargs)
        if self.dp_group is not None and not self.sharded:  # FSDP reduce-scatters itself
            # SUM over the stage's replicas: losses are batch sums, so D × B equals one × D·B
            all_reduce_gradients(self.params, group=self.dp_group)
        if phase in ("both", "forward"):
            self.updater.forward.step()
        if self.updater.inverse is not None and phase in ("both", "inverse"):
            self.updater.inverse.step()
        return self._output(y, phase)

    def _output(self, y: torch.Tensor, phase: str) -> StepOutput:
        m = self.module
        return stage_output(self, y, phase, m.logits, [t.local_losses for t in m.traces], m.inverse)

    # ---- evaluation --------------------------------------------------------------------------
    def evaluate(self, reader, add_counts, autocast_dtype: torch.dtype | None = None) -> torch.Tensor:
        """This rank's evaluation counts (`pipeline_outputs.evaluate_stage`)."""
        return evaluate_stage(self, reader, add_counts, autocast_dtype)

    # ---- state -------------------------------------------------------------------------------
    def learning_rates(self) -> dict[str, float]:
        return self.updater.learning_rates()

    def state_dict(self) -> dict:
        """This stage's weights (single-process names) and optimizer state, whole: a sharded
        stage gathers its shards here (a collective: every replica of the stage calls it)."""
        return map_tensors({"model": self.learner.state_dict(), "optim": self.updater.state_dict()}, gather_full)

    def load_state_dict(self, state: dict) -> None:
        """The whole stage's state (as `state_dict` returns it); a sharded stage keeps its
        shards of it (a collective too)."""
        model, optim = state["model"], state["optim"]
        if self.sharded:
            current = self.learner.state_dict()
            model = {k: shard_like(v, current[k]) for k, v in model.items()}
            optim = dict(optim)
            for side, opt in (("forward", self.updater.forward), ("inverse", self.updater.inverse)):
                if opt is None or optim.get(side) is None:
                    continue
                params = [p for g in opt.param_groups for p in g["params"]]
                saved = optim[side]
                optim[side] = {
                    **saved,
                    "state": {
                        i: {k: _shard_moment(v, params[int(i)]) for k, v in st.items()}
                        for i, st in saved["state"].items()
                    },
                }
        self.learner.load_state_dict(model)
        self.updater.load_state_dict(optim)


def _shard_moment(v, param: torch.Tensor):
    """An Adam state entry for `param`: moments (tensors with a shape) sharded like it."""
    return shard_like(v, param) if torch.is_tensor(v) and v.dim() else v


def forward_device(net, layer: int) -> torch.device:
    return next(net.block(layer).layer.parameters()).device
