"""Layer pipeline: a Learner's blocks split into S stages on S ranks (× D data-parallel
replicas), micro-batches in a 1F1B schedule, our own point-to-point send/recv over gloo
(nccl on GPU).

`distributed.backend=pipeline` in `bioscale train` runs its sync mode on
torch.distributed.pipelining (distributed/pipeline_engine.py). This schedule runs its
decoupled mode (`distributed.pipeline_mode=decoupled`, through training/engines.py
`DecoupledPipelineEngine`: one `train([(x, y)])` call per trainer step), which the
library's schedules cannot express (they step nothing between micro-batches), and
`bioscale bench scale --engine own`. Point-to-point goes through `batch_isend_irecv`
(NCCL-safe).

Why our own schedule and not DeepSpeed's PipelineModule or torch.distributed.pipelining:
both own the backward — they run autograd from a loss on the last stage and pass
"the gradient" between stages, with one optimizer step at the end. Our rules need (1) each
stage's *own* loss terms (inverse losses) added to the backward of the signal it receives,
(2) each stage stepping its own two optimizers, and (3) in decoupled mode a step right
after each micro-batch backward; PipelineModule also refuses ZeRO 2/3
(shared/notes/deepspeed-cpu.md). With feedback-as-autograd none of that is needed:

    forward  stage s: h_in (received, requires_grad) → the rule's boundaries of its
             blocks → h_out, sent to s+1; inverse losses of its layers from h_in.detach()
    backward stage s: autograd.backward([h_out, own losses], [signal from s+1, 1]);
             h_in.grad is exactly what the boundary Function of the stage's first block
             returns — c·δ_{a−1} for TP (c = 1), the true gradient for BP, B-feedback for
             FA/DFA — and is sent to s−1 (DFA also sends the output error e down).

Micro-batches need no grad scale c: every loss is summed over samples, so accumulating
the M micro-batch gradients gives the full batch's (not so for DeepSpeed's GAS, which
divides the loss).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from bioscale.algorithms.config import OptimConfig
from bioscale.algorithms.feedback import FeedbackTrace, TraceGap
from bioscale.algorithms.learner import Learner
from bioscale.algorithms.optim import Updater
from bioscale.distributed.gradient_sync import all_reduce_gradients
from bioscale.distributed.pipeline_outputs import p2p
from bioscale.distributed.pipeline_schedule import (
    PipelineConfig,
    decoupled_refusal,
    one_f_one_b,
    partition,
    placement,
    ranges_from_balance,
)
from bioscale.distributed.process_group import all_reduce_sum, get_rank, get_world_size

log = logging.getLogger(__name__)


@dataclass
class _InFlight:
    """What a micro-batch leaves on a stage between its forward and its backward."""

    h_in: torch.Tensor | None
    h_out: torch.Tensor | None
    loss: torch.Tensor | None
    trace: FeedbackTrace
    logits: torch.Tensor | None  # last stage only (detached): the batch's loss and accuracy
    version: int  # optimizer steps this stage had taken at the forward (staleness = steps since)


@dataclass
class _Observed:
    """What the last `train` call saw, detached and on the device, for the trainer's
    StepOutput (`pipeline_outputs.stage_output`): no extra compute, no host sync."""

    logits: list[torch.Tensor] = field(default_factory=list)  # last stage: per micro-batch, in order
    local_losses: list[dict[int, torch.Tensor]] = field(default_factory=list)  # each trace, after backward
    inverse: dict[int, torch.Tensor] = field(default_factory=dict)  # Σ over micro-batches per owned layer


@dataclass
class StageStats:
    staleness: list[int] = field(default_factory=list)
    compute_s: float = 0.0
    wait_s: float = 0.0  # blocked in recv: the pipeline bubble plus transfer time


class _StageParams:
    """The two parameter lists `algorithms.Updater` needs, restricted to one stage, so the
    stage reuses its separate forward/inverse Adam logic unchanged."""

    def __init__(self, forward, inverse):
        self._forward, self._inverse = forward, inverse

    def forward_parameters(self):
        return self._forward

    def inverse_parameters(self):
        return self._inverse


class Pipeline:
    """This rank's stage. Call `train(batches)` on every rank with the same global batches
    (stage 0 reads x, the last stage the labels, every stage the micro-batch sizes)."""

    def __init__(self, learner: Learner, optim: OptimConfig, cfg: PipelineConfig):
        world = get_world_size()
        if world != cfg.stages * cfg.data_parallel:
            raise ValueError(
                f"pipeline {cfg.stages} stages × {cfg.data_parallel} replicas needs "
                f"{cfg.stages * cfg.data_parallel} ranks, the process group has {world}"
            )
        rule = learner.rule
        refusal = decoupled_refusal(rule.name) if cfg.mode == "decoupled" else None
        if refusal:
            raise ValueError(refusal)
        self.cfg, self.learner, self.rule = cfg, learner, rule
        net = learner.net
        self.depth, self.num_classes = net.depth, net.num_classes
        self.stage, self.replica = placement(get_rank(), cfg)
        self.first, self.last = self.stage == 0, self.stage == cfg.stages - 1
        costs = [sum(p.numel() for p in b.parameters()) for b in net.blocks]
        ranges = ranges_from_balance(cfg.balance, len(costs)) if cfg.balance else partition(costs, cfg.stages)
        self.ranges = ranges
        self.layers = [i + 1 for i in ranges[self.stage]]  # 1-based, as in the rules
        # DFA: every hidden boundary reads the output error e from the trace the top boundary
        # fills; below the last stage it is not there, so e travels down with the signal.
        self.carries_error = rule.name == "dfa"
        self._drop_other_blocks(learner, set(self.layers), shift=1 if self.carries_error else 0)
        # The rule computes inverse losses for every layer; this stage owns only some.
        self.owned = set(self.layers)
        inverse: list[nn.Parameter] = []
        for l in rule.inverse_layers(self.depth):
            if l in self.owned:
                inverse_layer = net.block(l).inverse_layer
                assert inverse_layer is not None  # the Learner checked every trained layer has one
                inverse.extend(inverse_layer.parameters())
        forward = [p for l in self.layers for p in net.block(l).layer.parameters()]
        self.updater = Updater(_StageParams(forward, inverse), optim)
        self.params = forward + inverse
        first_param = forward[0]
        self.dtype, self.device = first_param.dtype, first_param.device
        rank = get_rank()
        self.prev_rank = rank - cfg.data_parallel if not self.first else None
        self.next_rank = rank + cfg.data_parallel if not self.last else None
        self.dp_group = None
        if cfg.data_parallel > 1:
            # new_group is collective over the whole world: every rank creates every stage's group.
            for s in range(cfg.stages):
                g = dist.new_group([s * cfg.data_parallel + d for d in range(cfg.data_parallel)])
                if s == self.stage:
                    self.dp_group = g
        self.version = 0
        self.stats = StageStats()
        self.observed = _Observed()
        self._pending: list = []

    @staticmethod
    def _drop_other_blocks(learner: Learner, owned: set[int], shift: int) -> None:
        """Free the blocks and feedback matrices other stages use; state_dict() then holds
        exactly this stage's tensors under the single-process names. Block l reads
        feedback_l (FA) or feedback_{l−1} (DFA: B for h_{l−1}), hence `shift`."""
        blocks = learner.net.blocks
        for l in range(1, len(blocks) + 1):
            if l not in owned:
                blocks[l - 1] = nn.Identity()
        for name in list(learner.feedback):
            if name.startswith("feedback_") and int(name.removeprefix("feedback_")) + shift not in owned:
                learner.register_buffer(name, None)

    # ---- one micro-batch -------------------------------------------------------------------
    def _forward(self, x, y, noise, phase) -> _InFlight:
        signal = phase != "inverse"  # the inverse phase trains g_l only: nothing crosses backward
        if self.first:
            h = x
        else:
            h = torch.empty(
                (y.shape[0], *self.learner.net.block(self.layers[0]).in_shape),
                dtype=self.dtype,
                device=self.device,
            )
            assert self.prev_rank is not None  # not the first stage
            self._recv(h, self.prev_rank)
            h.requires_grad_(signal)
        t0 = time.perf_counter()
        h_in, trace, hs = h, FeedbackTrace(1.0), {self.layers[0] - 1: h}
        feedback, blocks = self.learner.feedback, self.learner.net.blocks
        loss = logits = None
        with torch.set_grad_enabled(signal):
            # Same graph as Learner._propagate, for this stage's blocks only.
            for l in self.layers:
                if l == self.depth:
                    logits = self.rule.top(l, blocks[l - 1], h, y, trace, feedback)
                    if phase != "inverse":
                        loss = F.cross_entropy(logits, y, reduction="sum")
                    logits = logits.detach()
                else:
                    h = self.rule.hidden(l, blocks[l - 1], h, trace, feedback)
                    if h.requires_grad:
                        h = TraceGap.apply(h, l, trace)
                    hs[l] = h
        if phase != "forward":
            inv = self.rule.inverse_losses(self.learner.net, hs, noise, layers=self.owned)
            if inv:
                for l, v in inv.items():
                    seen = self.observed.inverse.get(l)
                    self.observed.inverse[l] = v.detach() if seen is None else seen + v.detach()
                inv_total = sum(inv.values())
                assert isinstance(inv_total, torch.Tensor)  # a sum of (at least one) losses
                loss = inv_total if loss is None else loss + inv_total
        self.stats.compute_s += time.perf_counter() - t0
        # in the weights' dtype: under bf16 autocast LC outputs are bf16, the receive buffers not
        h_out = None if self.last else h.to(self.dtype)
        if h_out is not None:
            assert self.next_rank is not None  # not the last stage
            self._send(h_out.detach(), self.next_rank)
        return _InFlight(
            h_in if signal and not self.first else None, h_out if signal else None, loss, trace, logits, self.version
        )

    def _backward(self, rec: _InFlight) -> None:
        tensors, grads = [], []
        if rec.h_out is not None:
            assert self.next_rank is not None  # only the last stage sends nothing on
            g = torch.empty(rec.h_out.shape, dtype=rec.h_out.dtype, device=rec.h_out.device)
            self._recv(g, self.next_rank)
            if self.carries_error:
                e = torch.empty((g.shape[0], self.learner.net.num_classes), dtype=g.dtype, device=g.device)
                self._recv(e, self.next_rank)
                rec.trace.output_error = e
            tensors.append(rec.h_out)
            grads.append(g)
        if rec.loss is not None:
            tensors.append(rec.loss)
            grads.append(torch.ones_like(rec.loss))
        t0 = time.perf_counter()
        if tensors:
            torch.autograd.backward(tensors, grads)
        self.stats.compute_s += time.perf_counter() - t0
        if rec.h_in is not None:
            if rec.h_in.grad is None:
                raise RuntimeError(f"stage {self.stage}: no signal reached its input h_{self.layers[0] - 1}")
            assert self.prev_rank is not None  # only the first stage has no h_in
            self._send(rec.h_in.grad, self.prev_rank)
            if self.carries_error:
                assert rec.trace.output_error is not None  # received above, or set by the top block
                self._send(rec.trace.output_error, self.prev_rank)
        self.stats.staleness.append(self.version - rec.version)

    # ---- communication -----------------------------------------------------------------------
    # NCCL-safe exchange: NCCL orders point-to-point per pair of ranks, so a send posted on
    # its own can wait for a receive the peer has queued behind its own send (both ranks
    # send first: deadlock; gloo matches by tag and never notices). Sends are therefore
    # deferred and posted in one `batch_isend_irecv` group with this rank's next receive
    # (or at the flush), the way torch.distributed.pipelining fuses its sends and receives.
    def _send(self, t: torch.Tensor, dst: int) -> None:
        self._pending.append(dist.P2POp(dist.isend, t.contiguous(), dst))

    def _recv(self, t: torch.Tensor, src: int) -> None:
        t0 = time.perf_counter()
        self._exchange([*self._pending, dist.P2POp(dist.irecv, t, src)])
        self.stats.wait_s += time.perf_counter() - t0

    def _flush_sends(self) -> None:
        self._exchange(self._pending)

    def _exchange(self, ops: list) -> None:
        self._pending = []
        if ops:
            p2p(ops)

    # ---- updates -----------------------------------------------------------------------------
    def _step(self, phase: str) -> None:
        if self.dp_group is not None:
            # SUM over the stage's replicas: losses are batch sums, so D replicas × B = one × D·B
            all_reduce_gradients(self.params, group=self.dp_group)
        if phase in ("both", "forward"):
            self.updater.forward.step()
        if self.updater.inverse is not None and phase in ("both", "inverse"):
            self.updater.inverse.step()
        for opt in self.updater.optimizers():
            opt.zero_grad(set_to_none=True)
        self.version += 1

    # ---- driver ------------------------------------------------------------------------------
    def _micro_batches(self, batches: Iterable, replica_share: bool) -> Iterator[tuple]:
        """This replica's slice of each global batch (rank r of D takes the r-th slice, as in
        the data-parallel plan; the whole batch where it already is this replica's share),
        cut into M micro-batches; noise[l] is sliced the same way."""
        d, D, M = self.replica, self.cfg.data_parallel, self.cfg.micro_batches
        for batch in batches:
            x, y, noise = (*batch, None)[:3]
            idx = torch.arange(y.shape[0])
            if not replica_share:
                idx = torch.tensor_split(idx, D)[d]
            for part in torch.tensor_split(idx, M):
                yield (
                    x[part] if self.first else None,
                    y[part],
                    {l: n[part] for l, n in noise.items()} if noise else None,
                )

    def train(self, batches: list, phase: str = "both", *, replica_share: bool = False, report: bool = True) -> dict:
        """Train on `batches` ([(x, y) or (x, y, noise)], the same global batches on every
        rank; with `replica_share`, each replica's own share, as the trainer's readers hand
        them out). Returns per-batch global loss / correct / count (summed over replicas,
        known on every rank) and this stage's staleness and timing, which `report` logs;
        `self.observed` keeps what the call saw for a StepOutput."""
        self.learner.train()
        self.observed = _Observed()
        cfg, n_batches = self.cfg, len(batches)
        # loss, correct, samples: on the stage's device (the collective below needs it there
        # under nccl) and accumulated without a host sync per micro-batch
        stats = torch.zeros(n_batches, 3, dtype=torch.float64, device=self.device)
        source = self._micro_batches(batches, replica_share)
        inflight: dict[int, _InFlight] = {}
        # sync: one 1F1B schedule per batch, flushed, one step. decoupled: one schedule over
        # the whole stream and a step after every micro-batch backward.
        rounds = [cfg.micro_batches] * n_batches if cfg.mode == "sync" else [cfg.micro_batches * n_batches]
        j0 = 0
        for n in rounds:
            for op, j in one_f_one_b(self.stage, cfg.stages, n):
                j += j0
                if op == "F":
                    x, y, noise = next(source)
                    rec = inflight[j] = self._forward(x, y, noise, phase)
                    if rec.logits is not None:
                        self.observed.logits.append(rec.logits)
                        b = j // cfg.micro_batches
                        stats[b, 0] += F.cross_entropy(rec.logits, y, reduction="sum").to(torch.float64)
                        stats[b, 1] += (rec.logits.argmax(1) == y).sum().to(torch.float64)
                        stats[b, 2] += y.shape[0]
                else:
                    rec = inflight.pop(j)
                    self._backward(rec)
                    self.observed.local_losses.append(rec.trace.local_losses)
                    if cfg.mode == "decoupled":
                        self._step(phase)
            j0 += n
            if cfg.mode == "sync":
                self._step(phase)
        self._flush_sends()
        all_reduce_sum(stats)  # only last-stage ranks contributed: every rank gets the curve
        curve = stats.tolist()  # the one host sync of the statistics
        summary = self.staleness_summary()
        log.log(
            logging.INFO if report else logging.DEBUG,
            "pipeline stage %d (layers %s, %s): staleness mean %.2f max %d over %d micro-batches, "
            "compute %.2f s, waiting %.2f s",
            self.stage,
            self.layers,
            cfg.mode,
            summary["mean"],
            summary["max"],
            summary["micro_batches"],
            summary["compute_s"],
            summary["wait_s"],
        )
        return {
            "loss": [row[0] for row in curve],
            "correct": [row[1] for row in curve],
            "samples": [row[2] for row in curve],
            "staleness": summary,
        }

    def staleness_summary(self) -> dict:
        s = self.stats.staleness
        return {
            "stage": self.stage,
            "mean": sum(s) / len(s) if s else 0.0,
            "max": max(s, default=0),
            "micro_batches": len(s),
            "compute_s": round(self.stats.compute_s, 4),
            "wait_s": round(self.stats.wait_s, 4),
        }

    def stage_state(self) -> dict[str, torch.Tensor]:
        """This stage's parameters and buffers under the single-process Learner's names."""
        return {k: v.detach().clone() for k, v in self.learner.state_dict().items()}
