"""`Reader`: the base class of the DALI and the WebDataset+PIL readers
(`build_reader` in `readers.py` picks one).

Both readers take their batches from the same `EpochPlan` and their random
crops/flips from the same `Transform`, and differ only in who decodes and
resamples. Shared here: epoch bookkeeping, resumable position, `len`.

Position and resume: `state_dict()` is {"epoch", "batch"} (+ a few facts to
refuse a mismatched reader); "batch" counts the batches already handed out
in that epoch, updated as each batch is yielded. After `load_state_dict`,
the next iteration starts at that epoch and batch and yields exactly the
batches -- same samples, same augmentations -- that would have come. The
state is the same on every rank, so saving rank 0's copy is enough.
A finished iteration advances the epoch by one (calling `set_epoch` each
epoch, as with DistributedSampler, gives the same result).
"""

from __future__ import annotations

import warnings

import torch

from .index import SampleIndex
from .manifest import SplitInfo
from .plan import EpochPlan, num_batches
from .transforms import Transform


class Reader:
    kind = "base"

    def __init__(
        self,
        info: SplitInfo,
        transform: Transform,
        *,
        train: bool,
        batch_size: int,
        rank: int,
        world_size: int,
        seed: int,
        num_workers: int,
        device: str,
        on_error: str,
    ):
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.info, self.transform, self.train = info, transform, train
        self.batch_size, self.rank, self.world_size, self.seed = batch_size, rank, world_size, seed
        self.num_workers, self.device, self.on_error = num_workers, torch.device(device), on_error
        self.index = SampleIndex(info, skip=on_error == "skip")
        self.epoch, self._resume_batch, self._consumed = 0, 0, 0
        self.skipped: list[str] = []  # with on_error="skip": '<shard>: member <key>.<ext>: <problem>'
        self._skip(self.index.problems)
        # The plan runs over the readable samples: all of them unless skipping.
        self.num_samples = len(self.index)
        self._plan(0)  # validates the arguments now rather than at the first batch

    def _plan(self, epoch: int) -> EpochPlan:
        return EpochPlan(
            self.num_samples,
            train=self.train,
            batch_size=self.batch_size,
            rank=self.rank,
            world_size=self.world_size,
            seed=self.seed,
            epoch=epoch,
        )

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.transform.output_shape

    def __len__(self) -> int:
        return num_batches(self.num_samples, train=self.train, batch_size=self.batch_size, world_size=self.world_size)

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            # a new epoch starts at its first batch, whatever was consumed of the last one
            self.epoch, self._resume_batch, self._consumed = int(epoch), 0, 0

    def state_dict(self) -> dict:
        return {
            "version": 1,
            "epoch": self.epoch,
            "batch": self._consumed,
            "train": self.train,
            "num_samples": self.num_samples,
            "batch_size": self.batch_size,
            "world_size": self.world_size,
            "seed": self.seed,
        }

    def load_state_dict(self, state: dict) -> None:
        mine = self.state_dict()
        for key in ("train", "num_samples", "batch_size", "world_size", "seed"):
            if state.get(key) != mine[key]:
                raise ValueError(f"reader state was saved with {key}={state.get(key)!r}, this reader has {mine[key]!r}")
        self.epoch, self._resume_batch, self._consumed = int(state["epoch"]), int(state["batch"]), int(state["batch"])

    def __iter__(self):
        epoch, start = self.epoch, self._resume_batch
        self._resume_batch, self._consumed = 0, start
        plan = self._plan(epoch)
        for images, labels in self._batches(plan, start):
            self._consumed += 1
            yield images, labels
        self.epoch, self._consumed = epoch + 1, 0

    def _batches(self, plan: EpochPlan, start: int):  # pragma: no cover - abstract
        raise NotImplementedError

    def _empty(self) -> tuple[torch.Tensor, torch.Tensor]:
        return (
            torch.empty((0, *self.image_shape), dtype=torch.float32, device=self.device),
            torch.empty((0,), dtype=torch.int64, device=self.device),
        )

    def _skip(self, problems: list[str]) -> None:
        for problem in problems:
            warnings.warn(f"skipping damaged sample: {problem}", stacklevel=3)
        self.skipped += problems


__all__ = ["Reader"]
