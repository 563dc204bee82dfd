"""Data parallelism without a wrapper: after backward, sum every gradient over ranks.

`distributed.backend=none` on many ranks (and the pipeline's replica groups). The
alternative, `distributed.backend=ddp`, is real `DistributedDataParallel`
(`ddp_engine.py`: all-reduce overlapped with the backward, one wrapper per phase of the
alternating schedule); both are exact. This one needs no unused-parameter bookkeeping:
it reduces whatever gradients exist once the backward is done. SUM (not mean) because
every loss here is summed over the batch: with SUM, R ranks × batch B give exactly
the gradients of one process with batch R·B, for every rule."""

from __future__ import annotations

import torch
import torch.distributed as dist

from bioscale.distributed.process_group import all_reduce_sum, get_world_size


def all_reduce_gradients(params, bucket_bytes: int = 32 << 20, group=None) -> None:
    """Sum the gradients of `params` over `group` (default: all ranks), in place."""
    if (get_world_size() if group is None else dist.get_world_size(group)) == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    bucket, size = [], 0
    for g in grads:
        bucket.append(g)
        size += g.numel() * g.element_size()
        if size >= bucket_bytes:
            _reduce(bucket, group)
            bucket, size = [], 0
    if bucket:
        _reduce(bucket, group)


def _reduce(tensors: list[torch.Tensor], group) -> None:
    flat = torch.cat([t.reshape(-1) for t in tensors])
    all_reduce_sum(flat, group)  # checks that the gradients live on the group's device
    offset = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[offset : offset + n].view_as(t))
        offset += n
