"""Synthetic JPEG shard sets for smoke runs, benchmarks and GPU checks: a `folder` dataset
(train/<class>/*.jpg, test/<class>/*.jpg) of smooth colour fields with texture, prepared
into real shards + DALI indices + manifests by the ordinary `prepare`.

    python -m bioscale.data_pipeline.synthetic --out DIR [--train 256] [--test 64] [--size 256]

writes DIR/raw (the images) and DIR/shards/{train,val,test} and prints DIR/shards.
The images are random but fixed by `seed`; labels are their folder, so a net can learn
a little (each class has its own tint)."""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np


def _jpeg(rng: np.random.Generator, size: int, tint: np.ndarray, quality: int) -> bytes:
    from PIL import Image

    width = max(8, size + int(rng.integers(-size // 8, size // 8 + 1)))
    height = max(8, size + int(rng.integers(-size // 8, size // 8 + 1)))
    x = np.linspace(0, rng.uniform(3, 9), width)[None, :]
    y = np.linspace(0, rng.uniform(3, 9), height)[:, None]
    planes = [np.sin(x * rng.uniform(0.5, 2) + c) * np.cos(y * rng.uniform(0.5, 2)) for c in range(3)]
    array = np.stack(planes, -1) * 60 + 128 + tint + rng.normal(0, 12, (height, width, 3))
    buf = io.BytesIO()
    Image.fromarray(array.clip(0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def write_images(root: str | Path, train: int, test: int, *, classes: int = 10, size: int = 256, seed: int = 0) -> Path:
    """root/train/<class>/*.jpg and root/test/<class>/*.jpg, about size x size (±1/8), quality 90.
    At most 64 distinct encodes are made and reused, so large counts stay cheap to write."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    tints = rng.uniform(-40, 40, (classes, 3))
    cache: dict[tuple[int, int], bytes] = {}
    for split, count in (("train", train), ("test", test)):
        for i in range(count):
            c = i % classes
            key = (c, i // classes % max(1, 64 // classes))
            if key not in cache:
                cache[key] = _jpeg(rng, size, tints[c], quality=90)
            directory = root / split / f"class{c:03d}"
            directory.mkdir(parents=True, exist_ok=True)
            (directory / f"{split}_{i:06d}.jpg").write_bytes(cache[key])
    return root


def synthetic_shards(
    out: str | Path,
    *,
    train: int = 256,
    test: int = 64,
    val: int = 32,
    classes: int = 10,
    size: int = 256,
    shard_size: int = 64,
    seed: int = 0,
    workers: int = 1,
) -> Path:
    """Write the images under out/raw and prepare out/shards (train / val / test); return
    out/shards. `val` training images are held out as validation, as for ImageNet."""
    from .prepare import prepare

    out = Path(out)
    write_images(out / "raw", train + val, test, classes=classes, size=size, seed=seed)
    prepare(
        "folder",
        out / "shards",
        out / "raw",
        shard_size=shard_size,
        val_size=val,
        seed=seed,
        workers=workers,
        progress=False,
    )
    return out / "shards"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bioscale.data_pipeline.synthetic", description=__doc__)
    parser.add_argument("--out", required=True)
    parser.add_argument("--train", type=int, default=256, help="training images (besides --val)")
    parser.add_argument("--val", type=int, default=32, help="training images held out as validation")
    parser.add_argument("--test", type=int, default=64)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--size", type=int, default=256, help="approximate image side in pixels")
    parser.add_argument("--shard-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    path = synthetic_shards(
        args.out,
        train=args.train,
        test=args.test,
        val=args.val,
        classes=args.classes,
        size=args.size,
        shard_size=args.shard_size,
        workers=args.workers,
    )
    print(path)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
