"""Which samples each rank reads, batch by batch: a pure function of
(num_samples, world_size, rank, batch_size, seed, epoch).

Training: an epoch is `max(1, N // (world * B))` full batches on every rank
(the same count everywhere, so DDP/DeepSpeed never wait on a rank that ran
out). The epoch's order is one seeded permutation of all N samples, cut into
global batches of world*B samples; rank r takes the r-th B-slice of each
global batch. So R ranks with batch B see exactly the batches of one process
with batch R*B (the trainer sums gradients over ranks: the runs then agree up
to float summation order). At most world*B-1 samples (a different random
set each epoch) are left out, the usual drop-last behaviour. Only when N <
world*B does the permutation wrap, so tiny sets still give one batch.

Evaluation: rank r reads the contiguous range [N*r//world, N*(r+1)//world)
in shard order (DALI's sharding formula), so every sample is read exactly
once across ranks. All ranks run the same number of batches,
ceil(ceil(N/world)/B); a rank's last batch may be short or empty. No sample
is ever repeated to pad a batch, so metrics summed over ranks are exact.

Per-sample augmentation draws come from (seed, epoch, rank, batch) too; a
resumed epoch therefore repeats the interrupted one bit for bit.
"""

from __future__ import annotations

import math

import numpy as np

from .transforms import NUM_DRAWS


class EpochPlan:
    def __init__(
        self, num_samples: int, *, train: bool, batch_size: int, rank: int, world_size: int, seed: int, epoch: int
    ):
        if batch_size < 1:
            raise ValueError("batch_size must be positive")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world of size {world_size}")
        if num_samples < 1:
            raise ValueError("the split holds no samples")
        self.num_samples, self.train, self.batch_size = num_samples, train, batch_size
        self.rank, self.world_size, self.seed, self.epoch = rank, world_size, seed, epoch
        self.num_batches = num_batches(num_samples, train=train, batch_size=batch_size, world_size=world_size)
        if train:
            per_rank = self.num_batches * batch_size
            order = np.random.default_rng([seed, epoch]).permutation(num_samples)
            need = per_rank * world_size
            if need > num_samples:
                order = np.resize(order, need)  # wrap: only when N < world * B
            global_batches = order[:need].reshape(self.num_batches, world_size, batch_size)
            self._indices = global_batches[:, rank, :].reshape(-1)
        else:
            start = num_samples * rank // world_size
            self._indices = np.arange(start, num_samples * (rank + 1) // world_size)

    def indices(self, batch: int) -> np.ndarray:
        return self._indices[batch * self.batch_size : (batch + 1) * self.batch_size]

    def draws(self, batch: int) -> np.ndarray | None:
        """(n, NUM_DRAWS) uniforms for the random transforms of this batch."""
        if not self.train:
            return None
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, batch, 0xDA7A])
        return rng.random((len(self.indices(batch)), NUM_DRAWS))


def num_batches(num_samples: int, *, train: bool, batch_size: int, world_size: int) -> int:
    if train:
        return max(1, num_samples // (world_size * batch_size))
    return math.ceil(math.ceil(num_samples / world_size) / batch_size)
