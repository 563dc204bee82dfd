"""The WebDataset + PIL reader: shard members fetched through the index,
decoded and augmented with PIL/numpy in DataLoader worker processes.

Each DataLoader item is a whole batch (the plan's sample ids and draws for
that batch), so workers return finished, normalised tensors and the batch
order is the plan's order whatever the number of workers.
"""

from __future__ import annotations

import io
from collections.abc import Iterable

import numpy as np
import torch

from .errors import DataError
from .index import SampleIndex
from .plan import EpochPlan
from .reader_base import Reader
from .transforms import Transform, apply_pil


def decode_pil(data: bytes, channels: int, member: str):
    """Fully decode one image to RGB or L; a broken image is a DataError naming `member`."""
    from PIL import Image

    try:
        image = Image.open(io.BytesIO(data))
        image.load()
        return image.convert("L" if channels == 1 else "RGB")
    except Exception as exc:  # PIL raises many types for broken files
        raise DataError(f"{member}: cannot decode image: {exc}") from None


def normalisation_tables(transform: Transform) -> np.ndarray:
    """(C, 256) float32: the normalised value of each uint8 level per channel,
    so normalising is one table lookup per pixel instead of four passes."""
    levels = np.arange(256, dtype=np.float64) / 255.0
    return np.stack([(levels - m) / s for m, s in zip(transform.mean, transform.std)]).astype(np.float32)


def _batch_tensor(shape: tuple[int, ...]) -> torch.Tensor:
    """A float32 tensor; inside a DataLoader worker it is allocated in shared
    memory directly, as torch's default_collate does, which saves the copy
    into shared memory when the batch is sent to the main process."""
    if torch.utils.data.get_worker_info() is None:
        return torch.empty(shape, dtype=torch.float32)
    numel = int(np.prod(shape))
    storage = torch.empty(0, dtype=torch.float32)._typed_storage()._new_shared(numel)
    return torch.empty(0, dtype=torch.float32).new(storage).view(shape)


class _BatchDecoder(torch.utils.data.Dataset):
    """dataset[(ids, draws)] -> (images, labels, problems): one batch per item."""

    def __init__(self, index: SampleIndex, transform: Transform, skip: bool):
        self.index, self.transform, self.skip = index, transform, skip
        self.tables = normalisation_tables(transform)

    def __getitem__(self, task):
        ids, draws = task
        t = self.transform
        images = _batch_tensor((len(ids), t.channels, t.size, t.size))
        out = images.numpy()
        labels = np.empty(len(ids), dtype=np.int64)
        problems, n = [], 0
        for k, i in enumerate(ids):
            try:
                data, label = self.index.read(i)
                member = self.index.member(i)
                image = decode_pil(data, t.channels, member)
                try:
                    width, height = image.size
                    params = t.params(width, height, None if draws is None else draws[k])
                except ValueError as exc:
                    raise DataError(f"{member}: {exc}") from None
                pixels = apply_pil(image, params, t)
                for c in range(t.channels):
                    np.take(self.tables[c], pixels[:, :, c], out=out[n, c])
            except DataError as exc:
                problems.append(str(exc))
                if not self.skip:  # reported to the main process, which raises it cleanly
                    return None, None, problems
                continue
            labels[n] = label
            n += 1
        return images[:n], torch.from_numpy(labels[:n]), problems


def _worker_context():
    """fork where the OS has it, whatever the parent's default: workers then
    start in milliseconds and share the sample index copy-on-write. They only
    use PIL and numpy (never CUDA or DALI), which is what makes fork safe even
    after the trainer initialised CUDA. (Under torch.multiprocessing.spawn the
    default would be spawn: seconds per worker to re-import torch.)"""
    import multiprocessing

    return multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)


def _identity(item):
    return item  # module level so that spawned workers can unpickle it


class _Tasks:
    """The DataLoader's 'sampler': batch tasks computed lazily (an ImageNet
    epoch of draws would not fit comfortably in memory at once)."""

    def __init__(self, plan: EpochPlan | None, start: int):
        self.plan, self.start = plan, start

    def __len__(self) -> int:
        assert self.plan is not None  # set by WdsReader._batches before the loader reads it
        return max(0, self.plan.num_batches - self.start)

    def __iter__(self):
        assert self.plan is not None  # set by WdsReader._batches before the loader reads it
        for batch in range(self.start, self.plan.num_batches):
            yield self.plan.indices(batch), self.plan.draws(batch)


class WdsReader(Reader):
    kind = "wds"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._dataset = _BatchDecoder(self.index, self.transform, self.on_error == "skip")
        self._tasks = _Tasks(None, 0)
        self._loader = None

    def _batches(self, plan: EpochPlan, start: int):
        self._tasks.plan, self._tasks.start = plan, start
        loader: Iterable[tuple]
        if self.num_workers == 0:
            loader = (self._dataset[task] for task in self._tasks)
        else:
            if self._loader is None:
                # Persistent workers: forked once, reused every epoch (the
                # sampler is read in this process, so a new plan needs no restart).
                self._loader = torch.utils.data.DataLoader(
                    self._dataset,
                    sampler=self._tasks,
                    batch_size=None,
                    num_workers=self.num_workers,
                    collate_fn=_identity,
                    pin_memory=self.device.type == "cuda",
                    persistent_workers=True,
                    multiprocessing_context=_worker_context(),
                )
            loader = self._loader
        for images, labels, problems in loader:
            if images is None:
                raise DataError(problems[0])
            if problems:
                self._skip(problems)
            if self.device.type != "cpu":
                images = images.to(self.device, non_blocking=True)
                labels = labels.to(self.device, non_blocking=True)
            yield images, labels
