"""Small but real raw datasets in every source format, built once per session.

Images are real JPEG/PNG encodes (smooth gradients plus noise, varied sizes
and modes). The MNIST-like "id-coded" set stores each image's index in its
first two pixels, so a test can tell from a decoded, normalised tensor which
sample it is -- the exactly-once checks rely on that.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from .dp_helpers import build_imagenet, idcoded_images, natural_image, write_idx


@pytest.fixture(scope="session")
def idcoded_src(tmp_path_factory) -> Path:
    """MNIST-layout IDX files: 120 train (ids 0..119), 37 test (ids 1000..1036)."""
    root = tmp_path_factory.mktemp("idcoded")
    rng = np.random.default_rng(7)
    for prefix, n, offset in (("train", 120, 0), ("t10k", 37, 1000)):
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", idcoded_images(n, offset, rng))
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", (np.arange(offset, offset + n) % 10).astype(np.uint8))
    return root


@pytest.fixture(scope="session")
def idcoded_shards(idcoded_src, tmp_path_factory) -> Path:
    from bioscale.data_pipeline.prepare import prepare

    out = tmp_path_factory.mktemp("idcoded_shards")
    prepare("mnist", out, idcoded_src, shard_size=16, val_size=20, seed=3)
    return out


@pytest.fixture(scope="session")
def imagenet_src(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("imagenet_raw")
    build_imagenet(root)
    return root


@pytest.fixture(scope="session")
def imagenet_shards(imagenet_src, tmp_path_factory) -> Path:
    from bioscale.data_pipeline.prepare import prepare

    out = tmp_path_factory.mktemp("imagenet_shards")
    prepare("imagenet", out, imagenet_src, shard_size=4, val_size=5, seed=0)
    return out


@pytest.fixture(scope="session")
def cifar_src(tmp_path_factory) -> Path:
    """cifar-10-batches-py with 5 x 6 training and 7 test images."""
    root = tmp_path_factory.mktemp("cifar_raw") / "cifar-10-batches-py"
    root.mkdir()
    rng = np.random.default_rng(1)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        n = 7 if name == "test_batch" else 6
        images = np.stack([np.asarray(natural_image(rng, 32, 32)) for _ in range(n)])
        batch = {
            b"data": images.transpose(0, 3, 1, 2).reshape(n, 3072),
            b"labels": [int(v) for v in rng.integers(0, 10, n)],
            b"batch_label": name.encode(),
        }
        (root / name).write_bytes(pickle.dumps(batch))
    meta = {
        b"label_names": [
            w.encode()
            for w in ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
        ]
    }
    (root / "batches.meta").write_bytes(pickle.dumps(meta))
    return root.parent


@pytest.fixture(scope="session")
def cifar_shards(cifar_src, tmp_path_factory) -> Path:
    from bioscale.data_pipeline.prepare import prepare

    out = tmp_path_factory.mktemp("cifar_shards")
    prepare("cifar10", out, cifar_src, val_size=5, shard_size=8)
    return out
