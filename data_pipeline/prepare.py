"""`bioscale prepare`: a raw dataset -> WebDataset shards + DALI indices + manifests.

Layout written under OUT:
    OUT/train/train-000000.tar, train-000000.idx, ..., manifest.json
    OUT/val/...    (held out of the official training set, `val_size` ids chosen by `seed`)
    OUT/test/...   (the official test / validation set)

Determinism: the source listing is sorted; the held-out ids and the training
order come from `seed` alone; each shard's content depends only on its item
list; tar headers are fixed. Same input + seed -> byte-identical files, for
any number of workers.

Resumability: a shard is written under a temporary name and renamed when
complete, then a small record (counts, sha256) is dropped in `.partial/`. A
re-run (after a crash or kill) re-hashes and keeps every shard whose record
matches, rewrites the rest, and writes the manifest when all are there.
Training shards are shuffled at write time so that sequential readers see
mixed classes; val and test are in source order.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from collections import Counter
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .atomic_files import atomic_open, atomic_write_text
from .errors import DataError
from .manifest import FORMAT, MANIFEST, load_manifest, write_manifest
from .shardfile import file_sha256, write_index, write_tar
from .sources import Source, open_source
from .transforms import NORMALIZATION

DEFAULT_SHARD_SIZE = {"imagenet": 1000, "folder": 1000, "cifar10": 5000, "mnist": 10000, "fashion-mnist": 10000}
PARTIAL = ".partial"


@dataclass(frozen=True)
class ShardTask:
    split: str  # output split (train / val / test)
    name: str
    source_split: str  # official split the items come from
    items: tuple[int, ...]  # indices into the source split
    plan: str  # hash of everything that decides this split's content


def held_out(n: int, val_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training order, sorted held-out ids) of n training items. The held-out
    set depends on (n, val_size, seed) only; the training order is a seeded
    permutation of the rest."""
    if not 0 <= val_size < n:
        raise DataError(f"--val-size {val_size} must be in [0, {n}) for a training set of {n} images")
    val = np.sort(np.random.default_rng(seed).choice(n, size=val_size, replace=False))
    keep = np.ones(n, dtype=bool)
    keep[val] = False
    train = np.flatnonzero(keep)
    return train[np.random.default_rng([seed, 1]).permutation(len(train))], val


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def plan_splits(
    source: Source, *, seed: int, val_size: int, shard_size: int, max_side: int | None
) -> dict[str, tuple[str, np.ndarray, list[ShardTask]]]:
    """{output split: (source split, item order, shard tasks)}."""
    train = source.splits["train"]
    listing = _digest([train.ids, train.labels.tolist()])
    order, val = held_out(len(train.ids), val_size, seed)
    splits = {"train": ("train", order)}
    if val_size:
        splits["val"] = ("train", val)
    if "test" in source.splits:
        splits["test"] = ("test", np.arange(len(source.splits["test"].ids)))
    plans = {}
    for split, (source_split, items) in splits.items():
        src = source.splits[source_split]
        plan = _digest(
            {
                "format": FORMAT,
                "dataset": source.dataset,
                "split": split,
                "seed": seed,
                "val_size": val_size,
                "shard_size": shard_size,
                "max_side": max_side,
                "train_listing": listing,
                "listing": _digest([src.ids, src.labels.tolist()]),
            }
        )
        tasks = [
            ShardTask(split, f"{split}-{k:06d}", source_split, tuple(int(i) for i in items[s : s + shard_size]), plan)
            for k, s in enumerate(range(0, len(items), shard_size))
        ]
        plans[split] = (source_split, items, tasks)
    return plans


# ----------------------------------------------------------- shard writing

_SOURCE: Source | None = None  # set in each worker (inherited on fork, sent once on spawn)
_SKIP_BAD = False


def _init_worker(source: Source | None, skip_bad: bool) -> None:
    global _SOURCE, _SKIP_BAD
    if source is not None:
        _SOURCE = source
    _SKIP_BAD = skip_bad


def _write_shard(task: ShardTask, out: str) -> dict:
    source, split_dir = _SOURCE, Path(out) / task.split
    assert source is not None  # set by _init_worker (in this process, or inherited on fork)
    src = source.splits[task.source_split]
    samples, skipped, labels, sizes = [], [], [], []
    quirks: Counter[str] = Counter()
    for i in task.items:
        try:
            enc = source.encode(task.source_split, i)
        except DataError as exc:
            if not _SKIP_BAD:
                raise
            skipped.append({"id": src.ids[i], "error": str(exc)})
            continue
        label = int(src.labels[i])
        samples.append((f"{i:08d}", [(enc.ext, enc.data), ("cls", str(label).encode())]))
        quirks.update(enc.quirks)
        labels.append(label)
        sizes.append((enc.width, enc.height))
    record: dict[str, Any] = {
        "name": f"{task.name}.tar",
        "index": f"{task.name}.idx",
        "num_samples": len(samples),
        "plan": task.plan,
        "quirks": dict(quirks),
        "skipped": skipped,
        "class_counts": {str(c): n for c, n in sorted(Counter(labels).items())},
        "size_range": [
            min(s[0] for s in sizes),
            min(s[1] for s in sizes),
            max(s[0] for s in sizes),
            max(s[1] for s in sizes),
        ]
        if sizes
        else None,
    }
    if samples:
        # The tar is published last (when the outer block ends): its presence means complete.
        # Its index is computed from, and its hashes taken of, the finished temporary tar.
        with atomic_open(split_dir / record["name"], "wb") as tar_file:
            write_tar(tar_file, samples)
            tmp_tar, idx_path = Path(tar_file.name), split_dir / record["index"]
            write_index(tmp_tar, idx_path)
            record.update(bytes=tmp_tar.stat().st_size, sha256=file_sha256(tmp_tar), index_sha256=file_sha256(idx_path))
    atomic_write_text(split_dir / PARTIAL / f"{task.name}.json", json.dumps(record, sort_keys=True))
    return record


def _reusable(split_dir: Path, record: dict | None, plan: str) -> bool:
    """A finished shard from an earlier run, intact: same plan, same hashes."""
    if not record or record.get("plan") != plan:
        return False
    if record["num_samples"] == 0:
        return True
    tar, idx = split_dir / record["name"], split_dir / record["index"]
    return (
        tar.exists()
        and idx.exists()
        and tar.stat().st_size == record["bytes"]
        and file_sha256(tar) == record["sha256"]
        and file_sha256(idx) == record["index_sha256"]
    )


def _previous_records(split_dir: Path, plan: str) -> dict[str, dict]:
    records = {}
    if (split_dir / MANIFEST).exists():
        manifest = load_manifest(split_dir)
        if manifest.get("plan") != plan:
            raise DataError(
                f"{split_dir}: already prepared with different settings or input "
                "(seed, val size, shard size, max side or source); use another --out or delete it"
            )
        records = {r["name"]: dict(r, plan=plan) for r in manifest["shard_records"]}
    for path in sorted((split_dir / PARTIAL).glob("*.json")) if (split_dir / PARTIAL).is_dir() else []:
        record = json.loads(path.read_text())
        records[record["name"]] = record
    for stale in split_dir.glob(".*.tmp-*"):  # left by a killed run
        stale.unlink()
    return records


# --------------------------------------------------------------- manifests


def _manifest(
    source: Source,
    split: str,
    source_split: str,
    records: list[dict],
    *,
    seed: int,
    val_size: int,
    held: np.ndarray,
    plan: str,
) -> dict:
    kept = [r for r in records if r["num_samples"]]
    quirks: Counter[str] = Counter()
    counts: Counter[int] = Counter()
    for r in records:
        quirks.update(r["quirks"])
        counts.update({int(c): n for c, n in r["class_counts"].items()})
    ranges = [r["size_range"] for r in kept]
    image = dict(source.image)
    if ranges and "height" not in image:
        image["size_range"] = {
            "min_width": min(r[0] for r in ranges),
            "min_height": min(r[1] for r in ranges),
            "max_width": max(r[2] for r in ranges),
            "max_height": max(r[3] for r in ranges),
        }
    mean, std = NORMALIZATION[source.dataset]
    train_ids = source.splits["train"].ids
    return {
        "format": FORMAT,
        "dataset": source.dataset,
        "split": split,
        "source_split": source_split,
        "num_samples": sum(r["num_samples"] for r in kept),
        "classes": source.classes,
        "num_classes": len(source.classes),
        "class_counts": [counts.get(c, 0) for c in range(len(source.classes))],
        "image": image,
        "normalization": {"mean": list(mean), "std": list(std)},
        "order": "shuffled by seed" if split == "train" else "source order",
        "shards": [
            {k: r[k] for k in ("name", "index", "num_samples", "bytes", "sha256", "index_sha256")} for r in kept
        ],
        "shard_records": [{k: v for k, v in r.items() if k != "plan"} for r in records],
        "seed": seed,
        "heldout": {
            "seed": seed,
            "size": val_size,
            "from_split": "train",
            "ids": [train_ids[i] for i in held],
            "keys": [f"{i:08d}" for i in held],
        },
        "quirks": dict(sorted(quirks.items())),
        "skipped": [s for r in records for s in r["skipped"]],
        "source_skipped": source.skipped,  # found while listing: empty or unknown classes, unlabelled files
        "source": {"path": str(source.root), "split": source_split},
        "plan": plan,
    }


def prepare(
    dataset: str,
    out: str | os.PathLike,
    src: str | os.PathLike | None = None,
    *,
    shard_size: int | None = None,
    workers: int = 1,
    seed: int = 0,
    val_size: int = 10000,
    max_side: int | None = None,
    skip_bad: bool = False,
    progress: bool | None = None,
) -> dict:
    """Prepare every split; return {split: summary}. Raises DataError naming
    the file on bad input unless `skip_bad` (then skipped, counted, reported)."""
    global _SOURCE
    source = open_source(dataset, src, max_side=max_side, skip_bad=skip_bad)
    shard_size = shard_size or DEFAULT_SHARD_SIZE[dataset]
    if shard_size < 1:
        raise DataError("--shard-size must be positive")
    plans = plan_splits(source, seed=seed, val_size=val_size, shard_size=shard_size, max_side=max_side)
    out = Path(out)
    todo: list[ShardTask] = []
    done: dict[tuple[str, str], dict] = {}
    for split, (_, _, tasks) in plans.items():
        split_dir = out / split
        (split_dir / PARTIAL).mkdir(parents=True, exist_ok=True)
        previous = _previous_records(split_dir, tasks[0].plan if tasks else "")
        for task in tasks:
            record = previous.get(f"{task.name}.tar")
            if record is not None and _reusable(split_dir, record, task.plan):
                done[(split, task.name)] = record
            else:
                todo.append(task)
    total = sum(len(t.items) for t in todo)
    show = sys.stderr.isatty() if progress is None else progress
    from tqdm import tqdm

    bar = tqdm(total=total, unit="img", desc=f"prepare {dataset}", disable=not show)
    _init_worker(source, skip_bad)
    try:
        if workers <= 1:
            for task in todo:
                done[(task.split, task.name)] = _write_shard(task, str(out))
                bar.update(len(task.items))
        else:
            import multiprocessing as mp

            ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
            init = (None if ctx.get_start_method() == "fork" else source, skip_bad)
            with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=init) as pool:
                futures = {pool.submit(_write_shard, task, str(out)): task for task in todo}
                pending = set(futures)
                while pending:
                    finished, pending = wait(pending, return_when=FIRST_EXCEPTION)
                    for future in finished:
                        task = futures[future]
                        exc = future.exception()
                        if exc is not None:
                            for other in pending:
                                other.cancel()
                            raise exc
                        done[(task.split, task.name)] = future.result()
                        bar.update(len(task.items))
    finally:
        bar.close()
        _SOURCE = None

    summary = {}
    for split, (source_split, _items, tasks) in plans.items():
        split_dir = out / split
        records = [done[(split, t.name)] for t in tasks]
        held = plans["val"][1] if "val" in plans else np.array([], dtype=np.int64)
        plan = tasks[0].plan if tasks else ""
        manifest = _manifest(source, split, source_split, records, seed=seed, val_size=val_size, held=held, plan=plan)
        keep = {name for r in records if r["num_samples"] for name in (r["name"], r["index"])}
        for stray in split_dir.iterdir():  # shards of an earlier, different plan
            if re.fullmatch(rf"{split}-\d{{6}}\.(tar|idx)", stray.name) and stray.name not in keep:
                stray.unlink()
        write_manifest(split_dir, manifest)
        for partial in (split_dir / PARTIAL).glob("*.json"):
            partial.unlink()
        (split_dir / PARTIAL).rmdir()
        summary[split] = {
            "num_samples": manifest["num_samples"],
            "shards": len(manifest["shards"]),
            "rewritten": sum(1 for t in todo if t.split == split),
            "quirks": manifest["quirks"],
            "skipped": manifest["skipped"],
            "source_skipped": manifest["source_skipped"],
        }
    return summary
