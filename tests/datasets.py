"""Small real datasets for tests that train: a slice of the Debian package's Fashion-MNIST,
written as IDX files and prepared into shards with the real `bioscale prepare`."""

from __future__ import annotations

import atexit
import gzip
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

FASHION = Path("/usr/share/datasets/fashion-mnist")


def _read_idx(path: Path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return dims, data[4 + 4 * ndim :]


def _write_idx(path: Path, dims, payload: bytes, magic3: int) -> None:
    header = bytes([0, 0, 0x08, magic3]) + struct.pack(">" + "I" * len(dims), *dims)
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
        f.write(header + payload)


def fashion_subset(root: Path, n_train: int, n_test: int) -> Path:
    """IDX files holding the first n_train / n_test Fashion-MNIST images."""
    if not (FASHION / "train-images-idx3-ubyte.gz").exists():
        raise RuntimeError(f"Fashion-MNIST not found at {FASHION}: apt-get install dataset-fashion-mnist")
    root.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        (_, h, w), pixels = _read_idx(FASHION / f"{prefix}-images-idx3-ubyte.gz")
        _, labels = _read_idx(FASHION / f"{prefix}-labels-idx1-ubyte.gz")
        _write_idx(root / f"{prefix}-images-idx3-ubyte.gz", (n, h, w), pixels[: n * h * w], 3)
        _write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", (n,), labels[:n], 1)
    return root


_PREPARED: dict[tuple[int, int, int], Path] = {}
"""Shards this test process already prepared, by size: later modules get a copy (the
preparation is ~3 s; a dozen modules train on the same slice)."""


def prepare_small_fashion(root: Path, n_train: int = 1200, n_test: int = 400, val_size: int = 200) -> Path:
    out = root / "shards"
    done = _PREPARED.get((n_train, n_test, val_size))
    if done is not None and done.is_dir():
        shutil.copytree(done, out)  # a copy: a test may damage its shards
        return out
    src = fashion_subset(root / "src", n_train, n_test)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "bioscale",
            "prepare",
            "fashion-mnist",
            "--src",
            str(src),
            "--out",
            str(out),
            "--val-size",
            str(val_size),
            "--workers",
            "1",
            "--no-progress",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    # kept pristine outside any test's directory (the first test may damage its own copy)
    cache = Path(tempfile.mkdtemp(prefix="bioscale-test-shards-"))
    atexit.register(shutil.rmtree, cache, True)
    shutil.copytree(out, cache / "shards")
    _PREPARED[(n_train, n_test, val_size)] = cache / "shards"
    return out
