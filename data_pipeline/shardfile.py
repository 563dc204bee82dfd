"""WebDataset tar shards and DALI index files, written deterministically.

A shard is a plain ustar archive whose members are `<key>.<ext>`, grouped by
key (all members of a sample are adjacent). Every header is fixed (mtime 0,
uid/gid 0, mode 0644, no user names) and ustar is forced, so the same samples
always give the same bytes: no PAX header with a float mtime is ever emitted
(webdataset's default writer adds one per member, 7% of a small-image shard).

The index is the text format of DALI's `wds2idx` tool (version v1.2):
    v1.2 <num_samples>
    <ext> <data_offset> <size> <member_name> [<ext> <offset> <size> <name> ...]
one line per sample, offsets pointing at member data (header + 512). DALI's
`fn.readers.webdataset(index_paths=...)` reads it, and our own readers use it
for random access without scanning the tar.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from .atomic_files import atomic_open, atomic_write_text
from .errors import DataError

INDEX_VERSION = "v1.2"


def split_member_name(name: str) -> tuple[str, str]:
    """`dir/abc.seg.png` -> (`dir/abc`, `seg.png`): the extension starts at the
    first dot of the base name, as in webdataset and DALI."""
    dot = name.find(".", name.rfind("/") + 1)
    if dot < 0:
        return name, ""
    return name[:dot], name[dot + 1 :]


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


def write_tar(target: str | os.PathLike | IO[bytes], samples: list[tuple[str, list[tuple[str, bytes]]]]) -> None:
    """Write `samples` = [(key, [(ext, data), ...]), ...] in the given order, to a
    path (published atomically) or into an open binary file (flushed, left open:
    e.g. one from `atomic_open`, which publishes it)."""
    if isinstance(target, (str, os.PathLike)):
        with atomic_open(target, "wb") as raw:
            write_tar(raw, samples)
        return
    with tarfile.open(fileobj=target, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for key, members in samples:
            if "." in key.rsplit("/", 1)[-1]:
                raise ValueError(f"sample key {key!r} contains a dot; DALI would split its extension there")
            for ext, data in members:
                tar.addfile(_tarinfo(f"{key}.{ext}", len(data)), io.BytesIO(data))
    target.flush()


def index_lines(tar_path: str | os.PathLike) -> list[str]:
    """The DALI index of an existing tar, computed with the tarfile module (the
    same numbers `wds2idx` gets from GNU tar). Raises DataError naming the
    shard and the last good member when the archive is damaged."""
    samples: list[list[tuple[str, int, int, str]]] = []
    last_key = None
    last_name = "<start of archive>"
    try:
        with tarfile.open(tar_path, mode="r:") as tar:
            for member in tar:
                if not member.isreg():
                    continue
                key, ext = split_member_name(member.name)
                if not key or key.endswith("/"):
                    continue  # hidden files, skipped by wds2idx as well
                if key != last_key:
                    samples.append([])
                    last_key = key
                samples[-1].append((ext, member.offset_data, member.size, member.name))
                last_name = member.name
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DataError(f"{tar_path}: damaged tar after member {last_name!r}: {exc}") from exc
    if not samples:
        raise DataError(f"{tar_path}: tar holds no samples")
    size = os.path.getsize(tar_path)
    for bundle in samples:
        for _ext, offset, length, name in bundle:
            if offset + length > size:
                raise DataError(f"{tar_path}: member {name!r} is truncated ({offset + length} > {size} bytes)")
    lines = [f"{INDEX_VERSION} {len(samples)}"]
    lines += [" ".join(f"{e} {o} {n} {m}" for e, o, n, m in bundle) for bundle in samples]
    return lines


def write_index(tar_path: str | os.PathLike, idx_path: str | os.PathLike) -> None:
    """Compute the DALI index of `tar_path` and publish it (atomically) at `idx_path`."""
    atomic_write_text(idx_path, "\n".join(index_lines(tar_path)) + "\n")


@dataclass(frozen=True)
class IndexedSample:
    key: str
    members: dict[str, tuple[int, int]]  # ext -> (data offset, size)


def read_index(idx_path: str | os.PathLike) -> list[IndexedSample]:
    path = Path(idx_path)
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise DataError(f"{path}: index file is missing (re-run `bioscale prepare` to rebuild it)") from None
    if not lines or not lines[0].startswith("v1.") or len(lines[0].split()) != 2:
        raise DataError(f"{path}: not a DALI webdataset index (first line {lines[:1]!r})")
    expected = int(lines[0].split()[1])
    samples = []
    for lineno, line in enumerate(lines[1:], start=2):
        fields = line.split()
        if not fields or len(fields) % 4:
            raise DataError(f"{path}:{lineno}: malformed index line")
        members = {}
        key = None
        for i in range(0, len(fields), 4):
            ext, offset, size, name = fields[i : i + 4]
            key = split_member_name(name)[0]
            members[ext] = (int(offset), int(size))
        assert key is not None  # the line has at least one member
        samples.append(IndexedSample(key, members))
    if len(samples) != expected:
        raise DataError(f"{path}: header says {expected} samples, file lists {len(samples)}")
    return samples
