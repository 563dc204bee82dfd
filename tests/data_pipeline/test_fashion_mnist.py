"""The real Fashion-MNIST from the Debian package (dataset-fashion-mnist):
prepared with the default source path, read back in full by both readers."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch

from bioscale.cli import main
from bioscale.data_pipeline import build_reader, open_split

SOURCE = Path("/usr/share/datasets/fashion-mnist")

pytestmark = pytest.mark.skipif(
    not (SOURCE / "train-images-idx3-ubyte.gz").exists(), reason="dataset-fashion-mnist is not installed"
)


def test_fashion_mnist_prepare_and_read_back_with_both_readers(tmp_path):
    out = tmp_path / "fashion"
    assert main(["prepare", "fashion-mnist", "--out", str(out), "--workers", "2"]) == 0
    expected = {"train": 50000, "val": 10000, "test": 10000}
    for split, count in expected.items():
        info = open_split(out / split)
        assert (info.num_samples, info.num_classes, info.image_shape) == (count, 10, (1, 28, 28))
        assert info.classes[0] == "T-shirt/top" and info.classes[9] == "Ankle boot"
        first = {}
        for kind in ("wds", "dali"):
            reader = build_reader(out / split, kind=kind, train=False, batch_size=1000, num_workers=2)
            histogram, total = Counter(), 0
            for k, (images, labels) in enumerate(reader):
                assert images.shape[1:] == (1, 28, 28) and images.dtype == torch.float32
                histogram.update(labels.tolist())
                total += len(labels)
                if k == 0:
                    first[kind] = images
            assert total == count
            assert [histogram[c] for c in range(10)] == info.manifest["class_counts"]
        torch.testing.assert_close(first["wds"], first["dali"], rtol=0, atol=1e-5)  # lossless PNG
    assert open_split(out / "test").manifest["class_counts"] == [1000] * 10
    held = open_split(out / "val").manifest["heldout"]
    assert held["seed"] == 0 and len(held["ids"]) == 10000
