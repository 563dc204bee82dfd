"""Builders of small raw datasets (real JPEG/PNG bytes) shared by the data pipeline tests."""

from __future__ import annotations

import gzip
import io
import struct
from pathlib import Path

import numpy as np
from PIL import Image

WNIDS = ["n01440764", "n01443537", "n01484850"]


def natural_image(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    x = np.linspace(0, rng.uniform(2, 8), width)[None, :]
    y = np.linspace(0, rng.uniform(2, 8), height)[:, None]
    channels = [np.sin(x * rng.uniform(0.5, 2) + c) * np.cos(y * rng.uniform(0.5, 2)) for c in range(3)]
    array = np.stack(channels, -1) * 90 + 128 + rng.normal(0, 12, (height, width, 3))
    return Image.fromarray(array.clip(0, 255).astype(np.uint8))


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.GzipFile(path, "wb", mtime=0) as f:
        f.write(header + array.astype(np.uint8).tobytes())


def idcoded_images(n: int, offset: int, rng: np.random.Generator) -> np.ndarray:
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    ids = np.arange(offset, offset + n)
    images[:, 0, 0], images[:, 0, 1] = ids // 256, ids % 256
    return images


def decode_ids(images, mean: float = 0.1307, std: float = 0.3081) -> list[int]:
    """Inverse of idcoded_images on a normalised (N, 1, 28, 28) tensor."""
    pixels = ((images[:, 0, 0, :2] * std + mean) * 255).round().long()
    return (pixels[:, 0] * 256 + pixels[:, 1]).tolist()


def build_imagenet(root: Path, *, val_labels: str = "csv", seed: int = 0) -> dict:
    """ILSVRC-2012 layout: train/<wnid>/*.JPEG (6 per class, varied sizes, with
    one CMYK JPEG, one grayscale JPEG and one PNG named .JPEG), flat val/ with
    3 images per class labelled by LOC_val_solution.csv or a devkit."""
    rng = np.random.default_rng(seed)
    for c, wnid in enumerate(WNIDS):
        (root / "train" / wnid).mkdir(parents=True)
        for k in range(6):
            image = natural_image(rng, int(rng.integers(90, 180)), int(rng.integers(80, 160)))
            path = root / "train" / wnid / f"{wnid}_{k}.JPEG"
            if (c, k) == (0, 1):
                path.write_bytes(encode(image.convert("CMYK"), "JPEG", quality=90))
            elif (c, k) == (1, 2):
                path.write_bytes(encode(image.convert("L"), "JPEG", quality=90))
            elif (c, k) == (2, 3):
                path.write_bytes(encode(image, "PNG"))
            else:
                path.write_bytes(encode(image, "JPEG", quality=90))
    (root / "val").mkdir()
    truth = []
    for n in range(1, 10):
        image = natural_image(rng, int(rng.integers(90, 180)), int(rng.integers(80, 160)))
        (root / "val" / f"ILSVRC2012_val_{n:08d}.JPEG").write_bytes(encode(image, "JPEG", quality=90))
        truth.append((n - 1) % 3)
    if val_labels == "csv":
        rows = [f"ILSVRC2012_val_{n:08d},{WNIDS[t]} 1 2 30 40" for n, t in enumerate(truth, start=1)]
        (root / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + "\n".join(rows) + "\n")
    else:  # devkit: ILSVRC2012_IDs are not in wnid order, as in the real meta.mat
        from scipy.io import savemat

        ids = {"n01484850": 1, "n01440764": 2, "n01443537": 3}
        data = root / "ILSVRC2012_devkit_t12" / "data"
        data.mkdir(parents=True)
        synsets = np.array(
            [(i, w, 0) for w, i in ids.items()], dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("num_children", "O")]
        )
        savemat(data / "meta.mat", {"synsets": synsets})
        (data / "ILSVRC2012_validation_ground_truth.txt").write_text(
            "\n".join(str(ids[WNIDS[t]]) for t in truth) + "\n"
        )
    return {"truth": truth}
