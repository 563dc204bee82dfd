"""`bioscale bench data`: the DALI reader against the WebDataset + PIL reader
on the same shards, in one process: images/s (wall) and CPU ms per image
(this process's threads plus its DataLoader workers), training transform
(random-resized-crop to --image-size + flip, normalised float32 NCHW).

Without --shards it writes synthetic ~400x350 JPEGs (ImageNet's typical size
and quality) to a temporary `folder` dataset and prepares shards from it.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shards", help="a prepared split directory (default: synthetic JPEG shards)")
    parser.add_argument("--images", type=int, default=768, help="synthetic images to generate")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2, help="DALI threads / DataLoader workers")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs per reader (median reported)")


def _synthetic_folder(root, count: int) -> None:
    """Smooth colour fields with texture, 400x350 (+-), JPEG quality 90:
    decode cost close to real photos; 32 distinct images reused."""
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    encoded = []
    for k in range(32):
        width, height = 400 + int(rng.integers(-40, 41)), 350 + int(rng.integers(-30, 31))
        x = np.linspace(0, rng.uniform(3, 9), width)[None, :]
        y = np.linspace(0, rng.uniform(3, 9), height)[:, None]
        planes = [np.sin(x * rng.uniform(0.5, 2) + c) * np.cos(y * rng.uniform(0.5, 2) + k) for c in range(3)]
        array = np.stack(planes, -1) * 80 + 128 + rng.normal(0, 14, (height, width, 3))
        buf = io.BytesIO()
        Image.fromarray(array.clip(0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
        encoded.append(buf.getvalue())
    for i in range(count):
        directory = root / f"class{i % 10}"
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"{i:06d}.jpg").write_bytes(encoded[i % len(encoded)])


def _cpu_seconds() -> float:
    """CPU time of this process (all threads: DALI's included) plus its live
    children (the PIL reader's persistent DataLoader workers) and reaped ones."""
    import resource

    own, reaped = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    total = own.ru_utime + own.ru_stime + reaped.ru_utime + reaped.ru_stime
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil comes with the test/DeepSpeed extras
        return total
    for child in psutil.Process().children(recursive=True):
        try:
            times = child.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def _measure(reader) -> tuple[int, float, float]:
    import time

    wall, cpu = time.perf_counter(), _cpu_seconds()
    images = sum(len(labels) for _, labels in reader)  # workers are joined when the epoch ends
    return images, time.perf_counter() - wall, _cpu_seconds() - cpu


def run(args: argparse.Namespace) -> dict:
    import os
    import statistics
    import tempfile
    from pathlib import Path

    from bioscale.data_pipeline import build_reader, open_split
    from bioscale.data_pipeline.names import READER_KINDS
    from bioscale.data_pipeline.prepare import prepare  # the package's lazy `prepare` can be the submodule

    with tempfile.TemporaryDirectory(prefix="bioscale-bench-data-") as tmp:
        if args.shards:
            split, source = Path(args.shards), str(args.shards)
        else:
            _synthetic_folder(Path(tmp) / "raw", args.images)
            prepare(
                "folder",
                Path(tmp) / "shards",
                Path(tmp) / "raw",
                val_size=0,
                shard_size=256,
                workers=args.workers,
                progress=False,
            )
            split, source = Path(tmp) / "shards" / "train", f"synthetic {args.images} JPEG ~400x350 q90"
        info = open_split(split)
        readers = {
            kind: build_reader(
                info,
                kind=kind,
                train=True,
                batch_size=args.batch_size,
                augment="crop",
                image_size=args.image_size,
                num_workers=args.workers,
            )
            for kind in READER_KINDS
        }
        for reader in readers.values():  # warm-up: page cache, pipeline build, first fork
            _measure(reader)
        runs: dict[str, list[tuple[int, float, float]]] = {kind: [] for kind in readers}
        for _ in range(max(1, args.repeats)):
            for kind, reader in readers.items():  # interleaved, so load changes hit both alike
                runs[kind].append(_measure(reader))
    result = {
        "source": source,
        "num_samples": info.num_samples,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "image_size": args.image_size,
        "cpu_count": os.cpu_count(),
        "transform": f"random-resized-crop {args.image_size} + flip, normalised float32 NCHW",
        "device": "cpu",
    }
    for kind, name in (("dali", "dali"), ("wds", "pil")):
        rates = [n / wall for n, wall, _ in runs[kind]]
        cpu_ms = [1000 * cpu / n for n, _, cpu in runs[kind]]
        result[f"{name}_images_per_s"] = round(statistics.median(rates), 1)
        result[f"{name}_cpu_ms_per_image"] = round(statistics.median(cpu_ms), 3)
    result["dali_vs_pil_cpu_ratio"] = round(result["pil_cpu_ms_per_image"] / result["dali_cpu_ms_per_image"], 3)
    result["dali_vs_pil_wall_ratio"] = round(result["dali_images_per_s"] / result["pil_images_per_s"], 3)
    return result
