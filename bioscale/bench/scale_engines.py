"""`bioscale bench scale --engine trainer`: the throughput configurations run through the
trainer's own engines (training/engines.py) — what `bioscale train` would run — instead of
the project's hand-written pipeline (`distributed.pipeline.Pipeline`, still used for the
decoupled mode and by `--engine own`):

    1rank       distributed.backend=none, one process, the whole batch
    dpN         distributed.backend=ddp, N replicas of batch / N
    pipelineS   distributed.backend=pipeline, S stages (torch.distributed.pipelining, 1F1B)
    pipelineS_dpD  the same, S stages × D replicas

Timing as in bench/scale.py: wall-clock between two barriers on rank 0 after warm-up steps."""

from __future__ import annotations

import time

import torch
import torch.distributed as dist

from bioscale.algorithms import build_learner
from bioscale.distributed.environment import DistEnv
from bioscale.distributed.process_group import barrier


def engine_throughput_worker(
    arch: str, rule: str, batch: int, stages: int, replicas: int, micro_batches: int, warmup: int, steps: int
) -> dict:
    """Runs on every rank: build the trainer's engine for this layout, warm up, then time
    `steps` global batches (each replica takes its slice, as the data plan gives it)."""
    from bioscale.training.config_loader import config_from_dict
    from bioscale.training.engines import make_engine

    backend = "pipeline" if stages > 1 else ("ddp" if replicas > 1 else "none")
    per_rank = batch // replicas
    cfg = config_from_dict(
        {
            "model": {"arch": arch},
            "algorithm": {"rule": rule},
            "optim": {"forward": {"lr": 1e-4}, "inverse": {"lr": 1e-4}},
            "data": {"batch_size_per_rank": per_rank},
            "distributed": {
                "backend": backend,
                "stages": stages,
                "micro_batches": micro_batches if stages > 1 else 1,
                "device": "cpu",
            },
        },
        source="bench scale",
    )
    world, rank = dist.get_world_size(), dist.get_rank()
    env = DistEnv(rank=rank, local_rank=rank, world_size=world, local_world_size=world, launcher="torchrun")
    engine = make_engine(cfg, env)
    learner = build_learner(arch, cfg.algorithm, seed=0)
    engine.build(learner)
    g = torch.Generator().manual_seed(0)
    shape, classes = learner.net.input_shape, learner.net.num_classes
    batches = [
        (torch.randn(batch, *shape, generator=g), torch.randint(0, classes, (batch,), generator=g))
        for _ in range(warmup + steps)
    ]
    part = torch.tensor_split(torch.arange(batch), engine.data_world)[engine.data_rank]
    phase = learner.rule.phase_for_epoch(1)  # the forward phase for the alternating schedule
    for x, y in batches[:warmup]:
        engine.step(x[part], y[part], phase)
    barrier()
    t0, c0 = time.perf_counter(), time.process_time()
    for x, y in batches[warmup:]:
        out = engine.step(x[part], y[part], phase)
    cpu = time.process_time() - c0
    barrier()
    seconds = time.perf_counter() - t0
    layers = getattr(engine.updater, "layers", list(range(1, learner.net.depth + 1)))
    return {
        "images_per_sec": batch * steps / seconds,
        "cpu_s": cpu,
        "images": batch * steps,
        "stage": {"stage": rank // replicas, "backend": backend},
        "layers": layers,
        "loss": float(out.task_loss),
    }


# ---- per-rank state of the full-width net under pipeline × sharding layouts ---------------------
MEMORY_LAYOUTS = {1: [(1, 1)], 2: [(2, 1), (1, 2)], 4: [(4, 1), (1, 4), (2, 2)]}
"""N ranks → (stages S, replicas D) layouts; D > 1 is sharded (FSDP2, distributed.zero_stage=3)."""


def pipeline_memory_worker(arch: str, input_shape: tuple, rule: str, stages: int, steps: int) -> dict:
    """Bytes this rank holds at rest after `steps` steps (Adam's state exists only after the
    first): its stage's weights (its shard of them when the stage has replicas) and Adam's
    two moment estimates, as the pipeline engine of `bioscale train` keeps them."""
    import bioscale.models.fullwidth  # noqa: F401  (registers the full-width names)
    from bioscale.algorithms import AdamConfig, OptimConfig, RuleConfig
    from bioscale.distributed.pipeline_engine import PipelineStageEngine

    replicas = dist.get_world_size() // stages
    learner = build_learner(arch, RuleConfig(rule=rule), seed=0, input_shape=input_shape)
    micro = max(stages, 1)
    engine = PipelineStageEngine(
        learner,
        OptimConfig(forward=AdamConfig(lr=1e-4), inverse=AdamConfig(lr=1e-4)),
        stages=stages,
        micro_batches=micro,
        micro_batch_size=1,
        shard=replicas > 1,
    )
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x = torch.randn(micro, *input_shape, generator=g)
        y = torch.randint(0, learner.net.num_classes, (micro,), generator=g)
        out = engine.step(x, y)

    def local(t):
        return t.to_local() if hasattr(t, "to_local") else t

    params = sum(local(p).numel() * p.element_size() for p in engine.params)
    adam = sum(
        local(v).numel() * v.element_size()
        for opt in engine.updater.optimizers()
        for st in opt.state.values()
        for v in st.values()
        if torch.is_tensor(v) and v.dim()
    )
    return {"params": params, "adam": adam, "state_total": params + adam, "loss": float(out.task_loss)}


def run_pipeline_memory(rule: str, ranks: list[int], steps: int = 1) -> dict:
    from bioscale.distributed.pipeline_launch import run_ranks

    arch, shape = "imagenet_lc_fullwidth_neurips", (3, 32, 32)
    out: dict = {}
    for n in ranks:
        for stages, replicas in MEMORY_LAYOUTS[n]:
            res = run_ranks(pipeline_memory_worker, n, arch, shape, rule, stages, steps, timeout_s=900)
            out[f"{stages}x{replicas}"] = {
                "ranks": n,
                "stages": stages,
                "replicas": replicas,
                "max_state_bytes": max(r["state_total"] for r in res),
                "per_rank_state_bytes": [r["state_total"] for r in res],
            }
    return {"arch": arch, "input_shape": list(shape), "layouts": out}
