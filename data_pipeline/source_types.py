"""The types a raw-dataset source is made of: `Source` (its classes, format
facts and splits), `SourceSplit` (sorted ids with integer labels) and
`Encoded` (the bytes of one sample as stored in a shard).

Shared by `sources.py` (array datasets, the `open_source` dispatch) and
`imagefiles.py` (image-file datasets); imports neither.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Encoded:
    ext: str  # "jpg" or "png"
    data: bytes
    width: int
    height: int
    quirks: tuple[str, ...] = ()  # what was repaired (cmyk, grayscale, png_as_jpeg, resized, ...)


@dataclass
class SourceSplit:
    ids: list[str]
    labels: np.ndarray  # int64, one per id


@dataclass
class Source:
    dataset: str
    root: Path
    classes: list[str]
    channels: int
    image: dict  # format facts written to the manifest
    splits: dict[str, SourceSplit]
    skipped: list[dict] = field(default_factory=list)  # problems found while listing (empty classes, ...)

    def encode(self, split: str, i: int) -> Encoded:  # pragma: no cover - abstract
        raise NotImplementedError


__all__ = ["Encoded", "Source", "SourceSplit"]
