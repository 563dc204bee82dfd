"""Replace files atomically: write a hidden temp file next to the target,
fsync it, rename it over the target, fsync the directory. A reader (or a
process restarted after SIGKILL / power loss) sees the old file or the new
one, never a torn one.

The one way bioscale publishes a file that someone else reads back: shards,
their DALI indices and manifests, checkpoints and their `latest` marker, the
saved config, result/record JSON, the rewritten metrics.jsonl, sweep and
table reports. (Appends to jsonl logs stay appends.) It lives on the ground
floor of the import ladder, in data_pipeline, so that every floor can use it:
data_pipeline cannot import training, and the fixed layout has no shared
utility package; it imports nothing but the standard library.

`atomic_open` yields a real file object whose `.name` is the temporary path,
so a writer may read its own output back (hash it, index it) before it is
published under the final name."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

TEMP_MARK = ".tmp-"


def temp_name(path: Path) -> Path:
    # Hidden and pid-tagged: never matches a checkpoint glob, and a leftover
    # from a killed process is recognisable (`is_temp`) and safe to delete.
    return path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}")


def is_temp(path: Path) -> bool:
    return path.name.startswith(".") and TEMP_MARK in path.name


def fsync_dir(directory: Path) -> None:
    """Make a rename in `directory` durable (no-op where directories can't be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb", *, newline: str | None = None) -> Iterator[IO]:
    """`with atomic_open(p) as f: f.write(...)` — `p` appears complete or not at all.
    Text modes write UTF-8; `newline` as for `open` (pass "" for the csv module)."""
    path = Path(path)
    tmp = temp_name(path)
    f = open(tmp, mode, encoding=None if "b" in mode else "utf-8", newline=newline)
    try:
        yield f
        f.flush()
        os.fsync(f.fileno())
        f.close()
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        f.close()
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)
