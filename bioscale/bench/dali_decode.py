"""DALI decode throughput (`bioscale bench gpu`'s dali part): `mixed` (nvJPEG) decode +
random-resized crop on a GPU, the CPU decoder on the CPU, over synthetic JPEG shards."""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

import torch


def measure_dali(args, device, log) -> dict:
    """DALI decode + random-resized crop images/s over synthetic JPEG shards (mixed on GPU)."""
    from bioscale.data_pipeline import build_reader, open_split
    from bioscale.data_pipeline.readers import dali_problem
    from bioscale.data_pipeline.synthetic import synthetic_shards

    problem = dali_problem(device)
    decode = "mixed" if device.type == "cuda" else "cpu"
    if problem:
        log(f"  DALI: skipped: {problem}")
        return {"decode": decode, "error": problem}
    gpu = device.type == "cuda"
    side = args.size + args.size // 7  # ~256 px sources for 224 crops
    with tempfile.TemporaryDirectory(prefix="bioscale-bench-gpu-") as tmp:
        shards = synthetic_shards(
            Path(tmp),
            train=args.dali_images,
            test=0,
            val=0,
            size=side,
            shard_size=256,
            workers=min(8, os.cpu_count() or 1),
        )
        batch = args.batch if gpu else min(args.batch, 8)
        reader = build_reader(
            open_split(shards / "train"),
            kind="dali",
            train=True,
            batch_size=batch,
            augment="crop",
            image_size=args.size,
            num_workers=min(8, os.cpu_count() or 1),
            device=str(device),
        )

        def epoch() -> int:
            n = 0
            for _images, labels in reader:
                n += labels.numel()
            if gpu:
                torch.cuda.synchronize(device)
            return n

        epoch()  # build, warm caches
        rates = []
        for _ in range(2 if gpu else 1):
            t0 = time.perf_counter()
            n = epoch()
            rates.append(n / (time.perf_counter() - t0))
    rate = statistics.median(rates)
    log(f"  DALI {decode} decode + crop {args.size}: {rate:.0f} images/s ({args.dali_images} JPEGs ~{side} px)")
    return {
        "decode": decode,
        "images_per_s": round(rate, 1),
        "images": args.dali_images,
        "source_side": side,
        "batch": batch,
    }
