"""What every rank runs in tests/distributed/test_pipeline_engine.py (importable by name: the
launcher's children import it), and the single-process reference it is compared with."""

from __future__ import annotations

import torch

from bioscale.distributed.pipeline_engine import PipelineStageEngine
from bioscale.distributed.process_group import all_reduce_sum
from tests.scale.workers import OPTIM, make_batches, make_learner, reference


def _sums(out) -> list[float]:
    """task loss, scored samples, Σ local losses, Σ inverse losses of one step (this rank's share)."""
    local = sum(out.trace.local_losses.values(), torch.zeros((), dtype=torch.float64))
    inverse = sum(out.inverse_losses.values(), torch.zeros((), dtype=torch.float64))
    return [float(out.task_loss), float(out.logits.shape[0]), float(local), float(inverse)]


def stage_jobs(jobs: list[dict]) -> list[dict]:
    """Each job: rule, steps, batch, stages, micro_batches, schedule, optional phases (one per
    step). Returns this rank's stage weights and the per-step sums over all ranks."""
    results = []
    for job in jobs:
        rule, steps, batch = job["rule"], job["steps"], job["batch"]
        replicas = torch.distributed.get_world_size() // job["stages"]
        engine = PipelineStageEngine(
            make_learner(rule),
            OPTIM,
            stages=job["stages"],
            micro_batches=job["micro_batches"],
            micro_batch_size=batch // replicas // job["micro_batches"],
            schedule=job.get("schedule", "1f1b"),
            shard=job.get("shard", False),
        )
        curve = []
        for i, (x, y, *noise) in enumerate(make_batches(rule, steps, batch)):
            part = torch.tensor_split(torch.arange(batch), replicas)[engine.replica]
            eps = {l: n[part] for l, n in noise[0].items()} if noise else None
            phase = job["phases"][i] if job.get("phases") else "both"
            out = engine.step(x[part], y[part], phase, noise=eps)
            curve.append(all_reduce_sum(torch.tensor(_sums(out), dtype=torch.float64)).tolist())
        state = {k: _full(v).detach().clone() for k, v in engine.learner.state_dict().items()}
        results.append({"state": state, "curve": curve, "layers": engine.layers, "bytes": _held_bytes(engine)})
    return results


def reference_curve(rule: str, steps: int, batch: int, phases: list[str] | None = None) -> tuple[dict, list]:
    """One process, the whole batch per step (tests.scale.workers.reference), with the
    same per-step sums as `stage_jobs` reports."""
    return reference(rule, steps, batch, phases, record=_sums)


def _full(t: torch.Tensor) -> torch.Tensor:
    """A sharded (DTensor) weight gathered over the stage's replicas (a collective)."""
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def _local(t: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return t.to_local() if isinstance(t, DTensor) else t


def _held_bytes(engine) -> dict[str, int]:
    """Bytes this rank holds at rest: weights (its shard), and Adam's moment estimates."""
    params = sum(_local(p).numel() * p.element_size() for p in engine.params)
    adam = sum(
        _local(v).numel() * v.element_size()
        for opt in engine.updater.optimizers()
        for st in opt.state.values()
        for v in st.values()
        if torch.is_tensor(v) and v.dim()
    )
    return {"params": params, "adam": adam}
