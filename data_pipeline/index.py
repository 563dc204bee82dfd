"""Random access to every sample of a split through the shards' DALI indices.

Both readers fetch sample `i` (its position in shard order) with one
`os.pread` of the byte range covering its image and `.cls` members, so the
epoch plan -- not the order of bytes on disk -- decides what is read. The
index is checked on load: every sample needs exactly one image member
(`.jpg`/`.jpeg`/`.png`) and a `.cls`; otherwise a DataError names the shard
and the sample.
"""

from __future__ import annotations

import os

import numpy as np

from .errors import DataError
from .manifest import SplitInfo
from .shardfile import read_index

IMAGE_EXTS = ("jpg", "jpeg", "png")


class SampleIndex:
    """With `skip`, damage found here (a shard or index missing, a shard cut
    short, a sample without label or image) drops the affected samples and
    lists them in `problems` instead of raising."""

    def __init__(self, info: SplitInfo, skip: bool = False):
        self.num_classes = info.num_classes
        self.shard_paths = [str(s.path) for s in info.shards]
        self.problems: list[str] = []
        shard_of, img, cls, keys, exts = [], [], [], [], []
        for sid, shard in enumerate(info.shards):
            try:
                samples = self._shard_samples(shard)
            except DataError as exc:
                if not skip:
                    raise
                self.problems.append(f"{exc} (all {shard.num_samples} samples of the shard skipped)")
                continue
            size = shard.path.stat().st_size
            for sample in samples:
                found = [e for e in IMAGE_EXTS if e in sample.members]
                problem = None
                if len(found) != 1:
                    problem = f"has {len(found)} image members"
                elif "cls" not in sample.members:
                    problem = "has no .cls member"
                elif max(o + n for o, n in sample.members.values()) > size:
                    problem = f"lies beyond the end of the shard ({size} bytes: truncated)"
                if problem:
                    message = f"{shard.path}: sample {sample.key!r} {problem} (members: {sorted(sample.members)})"
                    if not skip:
                        raise DataError(message)
                    self.problems.append(message)
                    continue
                shard_of.append(sid)
                img.append(sample.members[found[0]])
                cls.append(sample.members["cls"])
                keys.append(sample.key)
                exts.append(found[0])
        self.shard_of = np.asarray(shard_of, dtype=np.int32)
        self.img = np.asarray(img, dtype=np.int64).reshape(-1, 2)  # (offset, size)
        self.cls = np.asarray(cls, dtype=np.int64).reshape(-1, 2)
        self.keys = np.asarray(keys, dtype=np.bytes_)
        self.exts = np.asarray(exts, dtype=np.bytes_)
        self._fds: dict[int, int] = {}
        self._pid: int | None = None

    @staticmethod
    def _shard_samples(shard) -> list:
        if not shard.path.exists():
            raise DataError(f"{shard.path}: listed in the manifest but absent")
        samples = read_index(shard.index_path)
        if len(samples) != shard.num_samples:
            raise DataError(f"{shard.index_path}: indexes {len(samples)} samples, manifest says {shard.num_samples}")
        return samples

    def __len__(self) -> int:
        return len(self.shard_of)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_fds"], state["_pid"] = {}, None  # descriptors do not cross processes
        return state

    def member(self, i: int, ext: str | None = None) -> str:
        """'<shard path>: member <key>.<ext>', for error messages."""
        ext = ext or self.exts[i].decode()
        return f"{self.shard_paths[self.shard_of[i]]}: member {self.keys[i].decode()}.{ext}"

    def _fd(self, shard: int) -> int:
        if self._pid != os.getpid():  # forked into a DataLoader worker: reopen
            self._fds, self._pid = {}, os.getpid()
        if shard not in self._fds:
            self._fds[shard] = os.open(self.shard_paths[shard], os.O_RDONLY)
        return self._fds[shard]

    def read(self, i: int) -> tuple[bytes, int]:
        """(encoded image bytes, label) of sample i. Label problems raise DataError."""
        (io_, isz), (co, csz) = self.img[i], self.cls[i]
        start, end = min(io_, co), max(io_ + isz, co + csz)
        try:
            blob = os.pread(self._fd(int(self.shard_of[i])), int(end - start), int(start))
        except OSError as exc:
            raise DataError(f"{self.member(i)}: cannot read shard: {exc}") from None
        if len(blob) != end - start:
            raise DataError(f"{self.member(i)}: shard ends early (truncated)")
        raw = blob[co - start : co - start + csz]
        try:
            label = int(raw.decode("ascii").strip())
        except (UnicodeDecodeError, ValueError):
            raise DataError(f"{self.member(i, 'cls')}: not an integer label: {raw[:20]!r}") from None
        if not 0 <= label < self.num_classes:
            raise DataError(f"{self.member(i, 'cls')}: label {label} out of range [0, {self.num_classes})")
        return blob[io_ - start : io_ - start + isz], label

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {}
