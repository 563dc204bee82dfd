"""Raw datasets as they are downloaded, turned into encoded samples.

A `Source` lists each official split (`train`, `test`) as sorted, stable ids
with integer labels, and encodes item `i` of a split into the bytes stored in
a shard. Array datasets (MNIST-likes from IDX files, CIFAR-10 from its pickle
batches) are encoded as lossless PNG; image-file datasets live in
`imagefiles.py`; the types both build on (`Encoded`, `Source`, `SourceSplit`)
in `source_types.py`. Sources are pickled to preparation workers, so large arrays
are loaded lazily in each process instead of being shipped.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
from pathlib import Path

import numpy as np

from .errors import DataError
from .imagefiles import open_file_source
from .names import DATASETS
from .source_types import Encoded, Source, SourceSplit

FASHION_MNIST_DEFAULT = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


def _png(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    # Fixed compression settings keep the bytes identical run to run.
    Image.fromarray(array).save(buf, format="PNG", compress_level=6, optimize=False)
    return buf.getvalue()


class ArraySource(Source):
    """Images held in uint8 arrays (N, H, W) or (N, H, W, 3), loaded on first use."""

    def __init__(self, *args, loader, **kwargs):
        super().__init__(*args, **kwargs)
        self._loader = loader
        self._arrays: dict[str, np.ndarray] | None = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_arrays"] = None  # each worker reloads: cheaper than pickling 150 MB
        return state

    def encode(self, split: str, i: int) -> Encoded:
        if self._arrays is None:
            self._arrays = {name: images for name, (images, _) in self._loader().items()}
        array = self._arrays[split][i]
        return Encoded("png", _png(array), array.shape[1], array.shape[0])


# ---------------------------------------------------------------- IDX (MNIST)


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read IDX file: {exc}") from None
    if len(data) < 4 + 4 * ndim:
        raise DataError(f"{path}: too short for an IDX header")
    zero, dtype, dims = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08 or dims != ndim:
        raise DataError(f"{path}: not an IDX uint8 file with {ndim} dimension(s) (magic {data[:4].hex()})")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise DataError(f"{path}: header promises {shape}, file holds {body.size} bytes of data (truncated?)")
    return body.reshape(shape)


def _find_idx(root: Path, prefix: str, kind: str) -> Path:
    # Accept the names used by the original site (train-images-idx3-ubyte),
    # its common mirrors (train-images.idx3-ubyte) and gzip or raw files.
    for pattern in (
        f"{prefix}-{kind}-ubyte.gz",
        f"{prefix}-{kind}-ubyte",
        f"{prefix}-{kind.replace('-', '.', 1)}-ubyte",
    ):
        for candidate in (root / pattern, root / "raw" / pattern):
            if candidate.exists():
                return candidate
    raise DataError(f"{root}: no {prefix}-{kind}-ubyte[.gz] file")


def _idx_loader(root: Path):
    def load():
        arrays = {}
        for split, prefix in (("train", "train"), ("test", "t10k")):
            images = _read_idx(_find_idx(root, prefix, "images-idx3"), 3)
            labels = _read_idx(_find_idx(root, prefix, "labels-idx1"), 1)
            if len(images) != len(labels):
                raise DataError(f"{root}: {prefix} has {len(images)} images but {len(labels)} labels")
            arrays[split] = (images, labels.astype(np.int64))
        return arrays

    return load


# ------------------------------------------------------------------- CIFAR-10


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """The CIFAR batches are pickles: allow only what they need (numpy arrays,
    lists, dicts), so a tampered download cannot execute code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return _NumpyOnlyUnpickler(f, encoding="bytes").load()
    except FileNotFoundError:
        raise DataError(f"{path}: CIFAR-10 batch file missing") from None
    except (pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise DataError(f"{path}: not a CIFAR-10 python batch: {exc}") from None


def _cifar_root(src: Path) -> Path:
    for candidate in (src, src / "cifar-10-batches-py"):
        if (candidate / "data_batch_1").exists():
            return candidate
    raise DataError(f"{src}: no CIFAR-10 python batches (data_batch_1..5, test_batch) here or in cifar-10-batches-py/")


def _cifar_loader(root: Path):
    def load():
        arrays = {}
        for split, names in (("train", [f"data_batch_{i}" for i in range(1, 6)]), ("test", ["test_batch"])):
            images, labels = [], []
            for name in names:
                batch = _unpickle(root / name)
                if b"data" not in batch or b"labels" not in batch:
                    raise DataError(f"{root / name}: batch lacks 'data' or 'labels'")
                data = np.asarray(batch[b"data"], dtype=np.uint8)
                if data.ndim != 2 or data.shape[1] != 3072 or len(batch[b"labels"]) != len(data):
                    raise DataError(f"{root / name}: expected N x 3072 images with N labels, got {data.shape}")
                # Rows are channel-major (1024 R, 1024 G, 1024 B): to N x 32 x 32 x 3.
                images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
                labels.append(np.asarray(batch[b"labels"], dtype=np.int64))
            arrays[split] = (np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels))
        return arrays

    return load


# ------------------------------------------------------------------ registry


def _array_source(dataset: str, root: Path, loader, classes: list[str], channels: int) -> ArraySource:
    arrays = loader()
    splits = {
        name: SourceSplit([f"{name}/{i:06d}" for i in range(len(labels))], labels)
        for name, (_, labels) in arrays.items()
    }
    for name, split in splits.items():
        bad = np.flatnonzero((split.labels < 0) | (split.labels >= len(classes)))
        if bad.size:
            raise DataError(
                f"{root}: {name} item {bad[0]} has label {split.labels[bad[0]]}, outside 0..{len(classes) - 1}"
            )
    height, width = arrays["train"][0].shape[1:3]
    image = {
        "format": "png",
        "mode": "L" if channels == 1 else "RGB",
        "channels": channels,
        "height": int(height),
        "width": int(width),
    }
    source = ArraySource(dataset, root, classes, channels, image, splits, loader=loader)
    source._arrays = {name: images for name, (images, _) in arrays.items()}
    return source


def open_source(
    dataset: str, src: str | os.PathLike[str] | None, *, max_side: int | None = None, skip_bad: bool = False
) -> Source:
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {DATASETS}")
    if src is None:
        if dataset != "fashion-mnist":
            raise DataError(f"{dataset}: --src is required")
        src = FASHION_MNIST_DEFAULT
    root = Path(src).expanduser().resolve()
    if not root.is_dir():
        raise DataError(f"{root}: source directory does not exist")
    if dataset in ("mnist", "fashion-mnist"):
        classes = FASHION_CLASSES if dataset == "fashion-mnist" else [str(i) for i in range(10)]
        return _array_source(dataset, root, _idx_loader(root), list(classes), 1)
    if dataset == "cifar10":
        root = _cifar_root(root)
        meta = _unpickle(root / "batches.meta") if (root / "batches.meta").exists() else {}
        classes = [c.decode() for c in meta.get(b"label_names", [])] or [
            "airplane",
            "automobile",
            "bird",
            "cat",
            "deer",
            "dog",
            "frog",
            "horse",
            "ship",
            "truck",
        ]
        return _array_source(dataset, root, _cifar_loader(root), classes, 3)
    return open_file_source(dataset, root, max_side=max_side, skip_bad=skip_bad)


__all__ = ["DATASETS", "Encoded", "Source", "SourceSplit", "ArraySource", "open_source"]
