"""The WebDataset + PIL reader: shard members fetched through the index,
decoded and augmented with PIL/numpy in DataLoader worker processes.

Each DataLoader item is a whole batch (the plan's sample ids and draws for
that batch), so workers return finished, normalised tensors and the batch
order is the plan's order whatever the number of workers.
"""

from __future__ import annotations

import io

import numpy as np
import torch

from .errors import DataError
from .index import SampleIndex
from .plan import EpochPlan
from .readers import Reader
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


def normalise(batch: np.ndarray, transform: Transform) -> torch.Tensor:
    """uint8 (N, H, W, C) -> float32 (N, C, H, W), (x/255 - mean) / std."""
    images = torch.from_numpy(batch).permute(0, 3, 1, 2).float().contiguous()
    mean = torch.tensor(transform.mean, dtype=torch.float32).view(1, -1, 1, 1) * 255
    scale = 1.0 / (torch.tensor(transform.std, dtype=torch.float32).view(1, -1, 1, 1) * 255)
    return images.sub_(mean).mul_(scale)


class _BatchDecoder(torch.utils.data.Dataset):
    """dataset[(ids, draws)] -> (images, labels, problems): one batch per item."""

    def __init__(self, index: SampleIndex, transform: Transform, skip: bool):
        self.index, self.transform, self.skip = index, transform, skip

    def __getitem__(self, task):
        ids, draws = task
        t = self.transform
        out = np.empty((len(ids), t.size, t.size, t.channels), dtype=np.uint8)
        labels = np.empty(len(ids), dtype=np.int64)
        problems, n = [], 0
        for k, i in enumerate(ids):
            try:
                data, label = self.index.read(i)
                member = self.index.member(i)
                image = decode_pil(data, t.channels, member)
                try:
                    params = t.params(*image.size, None if draws is None else draws[k])
                except ValueError as exc:
                    raise DataError(f"{member}: {exc}") from None
                out[n] = apply_pil(image, params, t)
            except DataError as exc:
                problems.append(str(exc))
                if not self.skip:  # reported to the main process, which raises it cleanly
                    return None, None, problems
                continue
            labels[n] = label
            n += 1
        return normalise(out[:n], t), torch.from_numpy(labels[:n]), problems


def _identity(item):
    return item  # module level so that spawned workers can unpickle it


class _Tasks:
    """The DataLoader's 'sampler': batch tasks computed lazily (an ImageNet
    epoch of draws would not fit comfortably in memory at once)."""

    def __init__(self, plan: EpochPlan, start: int):
        self.plan, self.start = plan, start

    def __len__(self) -> int:
        return max(0, self.plan.num_batches - self.start)

    def __iter__(self):
        for batch in range(self.start, self.plan.num_batches):
            yield self.plan.indices(batch), self.plan.draws(batch)


class WdsReader(Reader):
    kind = "wds"

    def _batches(self, plan: EpochPlan, start: int):
        dataset = _BatchDecoder(self.index, self.transform, self.on_error == "skip")
        tasks = _Tasks(plan, start)
        if self.num_workers > 0:
            loader = torch.utils.data.DataLoader(dataset, sampler=tasks, batch_size=None,
                                                 num_workers=self.num_workers, collate_fn=_identity,
                                                 pin_memory=self.device.type == "cuda")
        else:
            loader = (dataset[task] for task in tasks)
        batches = iter(loader)
        try:
            for images, labels, problems in batches:
                if images is None:
                    raise DataError(problems[0])
                if problems:
                    self._skip(problems)
                if self.device.type != "cpu":
                    images = images.to(self.device, non_blocking=True)
                    labels = labels.to(self.device, non_blocking=True)
                yield images, labels
        finally:
            # Stop the workers now: a traceback keeping the iterator alive
            # would otherwise leak it into the next DataLoader's forked workers.
            del batches
