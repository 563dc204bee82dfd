"""`build_reader`: one interface over the DALI and the WebDataset+PIL readers.

The concrete readers (`dali_reader.DaliReader`, `wds_reader.WdsReader`)
subclass `reader_base.Reader`; this module imports them, never the reverse.
The reader names live in `names.READERS`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from .dali_reader import DaliReader
from .errors import DataError
from .manifest import SplitInfo, open_split
from .names import READERS
from .reader_base import Reader
from .transforms import resolve
from .wds_reader import WdsReader

log = logging.getLogger("bioscale.data")

_PROBES: dict[str, str | None] = {}
_WARNED: set[str] = set()


def _device_index(device: torch.device) -> int:
    if device.index is not None:
        return device.index
    return torch.cuda.current_device() if torch.cuda.is_available() else 0


def dali_problem(device: str | torch.device = "cpu") -> str | None:
    """Why DALI cannot serve `device`, or None when it can: the package does not load (not
    installed, or a CUDA build whose libraries do not load beside this driver), or, for a
    CUDA device, a one-sample GPU pipeline cannot be built and run on it (no CUDA, a driver
    older than DALI's CUDA build, no free memory). Cached per device: it is asked once per
    process, so `reader=auto` logs its fallback once."""
    device = torch.device(device)
    key = "cpu" if device.type != "cuda" else f"cuda:{_device_index(device)}"
    if key not in _PROBES:
        _PROBES[key] = _probe(device)
    return _PROBES[key]


def _probe(device: torch.device) -> str | None:
    try:
        import nvidia.dali  # noqa: F401 -- a wrong CUDA build can fail here with OSError, not ImportError
    except Exception as exc:
        return f"DALI does not load ({type(exc).__name__}: {one_line(exc)})"
    if device.type != "cuda":
        return None
    index = _device_index(device)
    try:
        from nvidia.dali import fn, pipeline_def, types

        @pipeline_def(batch_size=1, num_threads=1, device_id=index, prefetch_queue_depth=1)
        def probe():
            ones = fn.constant(fdata=[1.0], shape=[1], dtype=types.DALIDataType.FLOAT, device="cpu")  # type: ignore[attr-defined]  # generated op, absent from DALI's stubs
            return ones.gpu()

        pipe = probe()
        pipe.build()
        pipe.run()
        del pipe
    except Exception as exc:
        return f"DALI cannot open GPU {index} ({type(exc).__name__}: {one_line(exc)})"
    return None


def one_line(exc: BaseException | str, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def resolve_kind(kind: str, device: str | torch.device = "cpu") -> str:
    """The concrete reader for `kind`: "auto" is DALI when it loads and, on a CUDA device,
    can open the GPU; otherwise WebDataset, with one warning line naming the reason."""
    if kind != "auto":
        return kind
    problem = dali_problem(device)
    if problem is None:
        return "dali"
    if problem not in _WARNED:
        _WARNED.add(problem)
        log.warning("data.reader=auto: using the WebDataset reader: %s", problem)
    return "wds"


def build_reader(
    path: str | Path | SplitInfo,
    kind: str = "auto",
    *,
    train: bool = True,
    batch_size: int = 128,
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
    augment: str = "auto",
    image_size: int | None = None,
    num_workers: int = 2,
    device: str = "cpu",
    on_error: str = "raise",
) -> Reader:
    """A reader over one split. kind: "dali", "wds" (WebDataset shards decoded
    with PIL in DataLoader workers) or "auto" (DALI when it loads and can open the
    device, else wds with one warning line: `resolve_kind`). Yields
    (float32 NCHW normalised images, int64 labels)."""
    if kind not in READERS:
        raise ValueError(f"kind must be one of {READERS}, got {kind!r}")
    # Skipping reads what it can: missing or cut shards are dropped by the index.
    info = path if isinstance(path, SplitInfo) else open_split(path, check_files=on_error == "raise")
    transform = resolve(info.dataset, augment, train, image_size, info.channels, info.mean, info.std)
    kind = resolve_kind(kind, device)
    reader_cls: type[Reader] = DaliReader if kind == "dali" else WdsReader
    return reader_cls(
        info,
        transform,
        train=train,
        batch_size=batch_size,
        rank=rank,
        world_size=world_size,
        seed=seed,
        num_workers=num_workers,
        device=device,
        on_error=on_error,
    )


__all__ = ["READERS", "Reader", "build_reader", "dali_problem", "resolve_kind", "DataError"]
