"""The DALI reader: the plan's samples are fed to a DALI pipeline through
`fn.external_source`; DALI decodes (a region-of-interest decode for crops),
resizes, flips and normalises in its own threads -- on the CPU with
`device_id=None`, or with `mixed` GPU decoding when `device` is CUDA.

Why external_source rather than `fn.readers.webdataset`: the built-in reader
shards by contiguous ranges and shuffles with a small buffer, so its order
cannot be shared with the PIL reader, its epochs need `pad_last_batch`
tricks for equal batch counts, and resume needs per-rank DALI checkpoints.
Feeding the plan keeps one definition of "which sample, which crop" for
both readers; resume is then exact and rank-independent. (DALI's reader does
read our `.idx` files -- the tests check that.)

A sample DALI cannot decode makes the pipeline fail without naming it; the
reader then re-decodes the pending batches with PIL to name the shard and
member, and with on_error="skip" rebuilds the pipeline without them.
"""

from __future__ import annotations

import io
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from .errors import DataError
from .plan import EpochPlan
from .reader_base import Reader
from .wds_reader import decode_pil

PREFETCH = 2
AHEAD = PREFETCH + 2
"""Batches the feeder's thread prepares ahead of the one DALI asks for."""


class _Feeder:
    """Prepares batch j (bytes, crop boxes, flips, labels) once and hands it
    to DALI in order, skipping batches left with no samples.

    The preparation (reading each sample from its shard, parsing JPEG headers for the crop
    boxes) runs on one thread of its own, `AHEAD` batches in front of DALI: DALI calls the
    source from the thread that runs the pipeline, which is the training loop's, and there
    this per-batch Python work would leave the GPU idle. One worker keeps the batches'
    order and the skip bookkeeping sequential."""

    def __init__(self, reader: DaliReader, plan: EpochPlan, start: int, excluded: set[int]):
        self.reader, self.plan, self.excluded = reader, plan, excluded
        self.futures: dict[int, Future] = {}
        self.next_batch = start
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dali-feed")
        self.lock = threading.Lock()  # futures is touched by DALI's caller and by `_batches`

    def prepare(self, j: int) -> dict:
        """Batch j (waits for the feed thread); queues the next `AHEAD` batches behind it."""
        with self.lock:
            for k in range(j, min(j + AHEAD + 1, self.plan.num_batches)):
                if k not in self.futures:
                    self.futures[k] = self.pool.submit(self._prepare, k)
            future = self.futures[j]
        return future.result()

    def done(self, j: int) -> None:
        with self.lock:
            self.futures.pop(j, None)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def _prepare(self, j: int) -> dict:
        r = self.reader
        draws = self.plan.draws(j)
        batch: dict[str, list[Any]] = {"ids": [], "data": [], "anchor": [], "shape": [], "flip": [], "labels": []}
        for k, i in enumerate(self.plan.indices(j)):
            i = int(i)
            if i in self.excluded:
                continue
            try:
                data, label = r.index.read(i)
                params = self._params(data, i, None if draws is None else draws[k])
            except DataError as exc:
                if r.on_error != "skip":
                    raise
                r._skip([str(exc)])
                self.excluded.add(i)
                continue
            batch["ids"].append(i)
            batch["data"].append(np.frombuffer(data, dtype=np.uint8))
            batch["labels"].append(label)
            box = params.box or (0, 0, 0, 0)
            batch["anchor"].append(np.array(params.offset or box[:2], dtype=np.int32))
            batch["shape"].append(np.array(box[2:], dtype=np.int32))
            batch["flip"].append(np.array(int(params.flip), dtype=np.int32))
        return batch

    def _params(self, data: bytes, i: int, draws):
        t = self.reader.transform
        if t.mode in ("none", "padcrop"):
            size = (t.size, t.size)  # checked by DALI's fixed output shape; no header parse needed
        else:
            from PIL import Image

            try:
                size = Image.open(io.BytesIO(data)).size
            except Exception as exc:
                raise DataError(f"{self.reader.index.member(i)}: cannot read image header: {exc}") from None
        return t.params(*size, draws)

    def __call__(self, info):
        while self.next_batch < self.plan.num_batches and not self.prepare(self.next_batch)["ids"]:
            self.next_batch += 1
        if self.next_batch >= self.plan.num_batches:
            raise StopIteration
        batch = self.prepare(self.next_batch)
        self.next_batch += 1
        mode = self.reader.transform.mode
        if mode in ("crop", "resize"):
            return batch["data"], batch["anchor"], batch["shape"], batch["flip"]
        if mode == "padcrop":
            return batch["data"], batch["anchor"], batch["flip"]
        return (batch["data"],)


class DaliReader(Reader):
    kind = "dali"

    def _pipeline(self, feeder: _Feeder):
        from nvidia.dali import fn, pipeline_def, types

        t = self.transform
        gpu = self.device.type == "cuda"
        decoder = "mixed" if gpu else "cpu"
        color = types.DALIImageType.GRAY if t.channels == 1 else types.DALIImageType.RGB

        @pipeline_def(
            batch_size=self.batch_size,
            num_threads=max(1, self.num_workers),
            device_id=self._device_id() if gpu else None,  # type: ignore[arg-type]  # None = CPU-only; DALI's stub says int
            prefetch_queue_depth=PREFETCH,
            seed=self.seed,
        )
        def pipeline():
            outputs = {"crop": 4, "resize": 4, "padcrop": 3, "none": 1}[t.mode]
            inputs = fn.external_source(source=feeder, num_outputs=outputs, batch=True, batch_info=True)
            data, flip = inputs[0], (inputs[-1] if outputs > 1 else 0)
            if t.mode in ("crop", "resize"):
                images = fn.decoders.image_slice(
                    data,
                    inputs[1],
                    inputs[2],
                    normalized_anchor=False,
                    normalized_shape=False,
                    output_type=color,
                    device=decoder,
                )
                # DALI's stubs type every op's result as DataNode | Sequence[DataNode] | None
                images = fn.resize(images, size=[t.size, t.size], antialias=True)  # type: ignore[assignment]
            else:
                images = fn.decoders.image(data, output_type=color, device=decoder)
                if t.mode == "padcrop":
                    images = fn.slice(
                        images, start=inputs[1], shape=[t.size, t.size], out_of_bounds_policy="pad", fill_values=0
                    )
            return fn.crop_mirror_normalize(
                images,
                mirror=flip,
                dtype=types.DALIDataType.FLOAT,
                output_layout="CHW",
                mean=[m * 255 for m in t.mean],
                std=[s * 255 for s in t.std],
            )

        pipe = pipeline()
        pipe.build()
        return pipe

    def _device_id(self) -> int:
        return self.device.index if self.device.index is not None else torch.cuda.current_device()

    def _to_torch(self, pipe, output) -> torch.Tensor:
        tensor = output.as_tensor()
        if pipe.exec_dynamic:
            # DALI's dynamic executor (the default) hands out buffers it never
            # reuses, so the batch is shared with torch, not copied (this is
            # what DALI's own PyTorch iterator does).
            with self.device:
                return torch.from_dlpack(tensor)
        if self.device.type != "cuda":
            return torch.from_numpy(np.array(tensor, copy=True))
        from nvidia.dali.plugin.pytorch import feed_ndarray

        images = torch.empty(tensor.shape(), dtype=torch.float32, device=self.device)
        feed_ndarray(tensor, images, cuda_stream=torch.cuda.current_stream(self.device))
        return images

    def _locate(self, feeder: _Feeder, first: int) -> list[tuple[int, str]]:
        """Decode the batches DALI may have been working on with PIL; return
        the (sample, problem) pairs that fail."""
        bad = []
        for j in range(first, min(first + PREFETCH + 1, feeder.plan.num_batches)):
            for i, data in zip(feeder.prepare(j)["ids"], feeder.prepare(j)["data"]):
                try:
                    decode_pil(data.tobytes(), self.transform.channels, self.index.member(i))
                except DataError as exc:
                    bad.append((i, str(exc)))
        return bad

    def _batches(self, plan: EpochPlan, start: int):
        excluded: set[int] = set()
        j = start
        while j < plan.num_batches:
            feeder = _Feeder(self, plan, j, excluded)
            pipe = self._pipeline(feeder)
            try:
                while j < plan.num_batches:
                    batch = feeder.prepare(j)
                    if not batch["ids"]:
                        yield self._empty()
                    else:
                        images = self._to_torch(pipe, pipe.run()[0])
                        labels = torch.tensor(batch["labels"], dtype=torch.int64, device=self.device)
                        yield images, labels
                    feeder.done(j)
                    j += 1
            except RuntimeError as exc:
                bad = self._locate(feeder, j)
                if not bad:
                    members = [self.index.member(i) for i in feeder.prepare(j)["ids"][:1]]
                    raise DataError(
                        f"DALI failed on batch {j} of epoch {plan.epoch} (PIL decodes all of it; "
                        f"first sample {members or 'none'}): {exc}"
                    ) from exc
                if self.on_error != "skip":
                    raise DataError(bad[0][1]) from None
                self._skip([problem for _, problem in bad])
                excluded.update(i for i, _ in bad)  # rebuild at batch j without them
            finally:
                del pipe
                feeder.close()
