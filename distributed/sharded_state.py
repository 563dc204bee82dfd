"""Whole tensors from FSDP2 shards and back, for checkpoints of a sharded pipeline stage
(`distributed.backend=pipeline distributed.zero_stage=3`): a stage's file holds its whole
weights and Adam state under the single-process names (gathered at save, re-sharded at load)."""

from __future__ import annotations

import torch


def gather_full(t: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


def shard_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`full` sharded like the DTensor `like` (unchanged if `like` is a plain tensor)."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if not isinstance(like, DTensor):
        return full
    return distribute_tensor(full.to(like.device, like.dtype), like.device_mesh, like.placements)


def map_tensors(obj, fn):
    """`obj` (nested dicts / lists of state) with every tensor passed through `fn`, in a
    fixed order (dict insertion order), so collective `fn`s line up across ranks."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, dict):
        return {k: map_tensors(v, fn) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(map_tensors(v, fn) for v in obj)
    return obj
