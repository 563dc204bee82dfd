"""Tiny synthetic stand-ins for the datasets the dev machine lacks, written in their raw
formats and prepared with the real `bioscale prepare`, so the CIFAR-10 and ImageNet tables
run end to end in the tests (MNIST's stand-in is the Fashion-MNIST slice: same format)."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np


def _prepare(dataset: str, src: Path, out: Path, val_size: int) -> Path:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "bioscale",
            "prepare",
            dataset,
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
    return out


def prepare_fake_cifar(root: Path, per_batch: int = 40, seed: int = 0) -> Path:
    """CIFAR-10 python batches (data_batch_1..5, test_batch) of random class-tinted images."""
    rng = np.random.default_rng(seed)
    src = root / "cifar-10-batches-py"
    src.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = rng.integers(0, 10, per_batch)
        images = rng.integers(0, 120, (per_batch, 3, 32, 32)) + (labels * 12)[:, None, None, None]
        batch = {b"data": images.reshape(per_batch, 3072).astype(np.uint8), b"labels": labels.tolist()}
        (src / name).write_bytes(pickle.dumps(batch))
    return _prepare("cifar10", src, root / "shards", val_size=per_batch)


def prepare_fake_imagenet(root: Path, classes: int = 7, per_class: int = 3, seed: int = 0) -> Path:
    """ILSVRC-2012 layout (train/<wnid>/*.JPEG, flat val/ + LOC_val_solution.csv) with more than
    5 classes, so top-5 errors are reported."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    src = root / "raw"
    wnids = [f"n{10000000 + c:08d}" for c in range(classes)]
    truth = []
    for c, wnid in enumerate(wnids):
        (src / "train" / wnid).mkdir(parents=True)
        for k in range(per_class + 1):
            array = rng.integers(0, 256, (int(rng.integers(40, 80)), int(rng.integers(40, 80)), 3), dtype=np.uint8)
            if k < per_class:
                Image.fromarray(array).save(src / "train" / wnid / f"{wnid}_{k}.JPEG", format="JPEG")
            else:
                (src / "val").mkdir(exist_ok=True)
                name = f"ILSVRC2012_val_{c + 1:08d}"
                Image.fromarray(array).save(src / "val" / f"{name}.JPEG", format="JPEG")
                truth.append(f"{name},{wnid} 1 2 30 40")
    (src / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + "\n".join(truth) + "\n")
    return _prepare("imagenet", src, root / "shards", val_size=classes)
