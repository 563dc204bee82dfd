"""bioscale's data pipeline: shard preparation, verification and readers.

    from bioscale.data_pipeline import SplitInfo, open_split, build_reader
    info = open_split("DIR/train")
    reader = build_reader("DIR/train", kind="dali" | "wds" | "auto", train=True, batch_size=128,
                          rank=0, world_size=1, seed=0, augment="auto", image_size=None,
                          num_workers=2, device="cpu")
    for images, labels in reader: ...   # float32 NCHW normalised, int64

Names are imported lazily so that `bioscale prepare` does not pay for torch
or DALI. This package imports nothing from the rest of bioscale.

Shard preparation is `from bioscale.data_pipeline.prepare import prepare`: it is not
exported here, because a lazy name equal to a submodule's name is shadowed by that
submodule (importing `bioscale.data_pipeline.prepare` binds the package attribute
`prepare` to the module, and `__getattr__` only runs for missing attributes). No name
in `_EXPORTS` may be the name of a submodule.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "DataError": "errors",
    "UserError": "errors",
    "SplitInfo": "manifest",
    "ShardInfo": "manifest",
    "open_split": "manifest",
    "build_reader": "readers",
    "Reader": "reader_base",
    "READERS": "names",
    "READER_KINDS": "names",
    "DATASETS": "names",
    "verify_split": "verify",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'data_pipeline' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
