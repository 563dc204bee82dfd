"""`build_reader`: one interface over the DALI and the WebDataset+PIL readers.

The concrete readers (`dali_reader.DaliReader`, `wds_reader.WdsReader`)
subclass `reader_base.Reader`; this module imports them, never the reverse.
The reader names live in `names.READERS`.
"""

from __future__ import annotations

from pathlib import Path

from .dali_reader import DaliReader
from .errors import DataError
from .manifest import SplitInfo, open_split
from .names import READERS
from .reader_base import Reader
from .transforms import resolve
from .wds_reader import WdsReader


def _dali_available() -> bool:
    try:
        import nvidia.dali  # noqa: F401 -- only whether it imports
    except ImportError:
        return False
    return True


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
    with PIL in DataLoader workers) or "auto" (DALI when importable). Yields
    (float32 NCHW normalised images, int64 labels)."""
    if kind not in READERS:
        raise ValueError(f"kind must be one of {READERS}, got {kind!r}")
    # Skipping reads what it can: missing or cut shards are dropped by the index.
    info = path if isinstance(path, SplitInfo) else open_split(path, check_files=on_error == "raise")
    transform = resolve(info.dataset, augment, train, image_size, info.channels, info.mean, info.std)
    if kind == "auto":
        kind = "dali" if _dali_available() else "wds"
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


__all__ = ["READERS", "Reader", "build_reader", "DataError"]
