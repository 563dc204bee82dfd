"""Replace files atomically: write a hidden temp file next to the target,
fsync it, rename it over the target, fsync the directory. A reader (or a
process restarted after SIGKILL / power loss) sees the old file or the new
one, never a torn one. Used for checkpoints, their `latest` marker,
result.json and the rewritten metrics.jsonl."""

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
def atomic_open(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """`with atomic_open(p) as f: f.write(...)` — `p` appears complete or not at all."""
    path = Path(path)
    tmp = temp_name(path)
    f = open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"}))
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


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)
