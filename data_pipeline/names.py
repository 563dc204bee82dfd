"""Names that the rest of bioscale validates against, in one place each.

Plain data with no imports, so that the CLI (`bioscale prepare --help`), the
training config and the bench can read them without loading numpy, torch or
DALI: the modules that act on the names (`sources.open_source`,
`readers.build_reader`) check against these same tuples.
"""

from __future__ import annotations

DATASETS = ("imagenet", "cifar10", "mnist", "fashion-mnist", "folder")
"""Raw datasets `bioscale prepare` turns into shards (see `sources.open_source`)."""

READER_KINDS = ("dali", "wds")
"""The concrete readers: DALI and WebDataset shards decoded with PIL."""

READERS = ("auto", *READER_KINDS)
"""What `build_reader(kind=...)` and the config's `data.reader` accept: a concrete
reader, or "auto" (DALI when importable, else wds)."""

__all__ = ["DATASETS", "READERS", "READER_KINDS"]
