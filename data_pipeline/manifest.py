"""`manifest.json`, one per split directory, and `open_split` that reads it.

The manifest is the contract between preparation and reading: dataset, split,
classes, image format, normalisation, the shard list (sample counts, byte
sizes, sha256 of each tar and index) and, for the held-out validation split,
the exact source ids and the seed that chose them. Readers trust it for
counts and check cheap facts (files present, sizes) on open; `bioscale
inspect` checks everything.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from .atomic_files import atomic_write_text
from .errors import DataError
from .transforms import AUTO, NORMALIZATION

FORMAT = "bioscale-shards/1"
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class ShardInfo:
    path: Path
    index_path: Path
    num_samples: int
    bytes: int
    sha256: str
    index_sha256: str

    @property
    def name(self) -> str:
        return self.path.name


@dataclass(frozen=True)
class SplitInfo:
    path: Path  # the split directory
    dataset: str
    split: str
    num_samples: int
    classes: list[str]
    channels: int
    image_shape: tuple[int, int, int]  # (C, H, W) a reader outputs with augment="auto"
    mean: tuple[float, ...]
    std: tuple[float, ...]
    shards: list[ShardInfo]
    manifest: dict = field(repr=False)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def manifest_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path if path.is_file() or path.suffix == ".json" else path / MANIFEST


def load_manifest(path: str | os.PathLike) -> dict:
    mpath = manifest_path(path)
    try:
        text = mpath.read_text()
    except FileNotFoundError:
        hint = ""
        if mpath.parent.is_dir() and any((mpath.parent / s / MANIFEST).exists() for s in ("train", "val", "test")):
            hint = f" ({mpath.parent} holds splits: pass {mpath.parent}/train, /val or /test)"
        raise DataError(f"{mpath}: no manifest; run `bioscale prepare` first{hint}") from None
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{mpath}: manifest is not valid JSON: {exc}") from None
    missing = [
        k for k in ("format", "dataset", "split", "num_samples", "classes", "shards", "image") if k not in manifest
    ]
    if missing or manifest.get("format") != FORMAT:
        raise DataError(f"{mpath}: not a {FORMAT} manifest (missing {missing or 'format'})")
    return manifest


def write_manifest(split_dir: Path, manifest: dict) -> None:
    """Atomic (fsynced temporary file, then rename) and deterministic (sorted keys)."""
    atomic_write_text(split_dir / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True) + "\n")


def open_split(path: str | os.PathLike, check_files: bool = True) -> SplitInfo:
    """Read a split's manifest (`path` is the split directory or its
    manifest.json). With `check_files`, every shard and index listed must
    exist with the manifest's byte size: a missing or truncated shard is a
    DataError naming it, raised here rather than mid-epoch."""
    mpath = manifest_path(path)
    manifest = load_manifest(mpath)
    split_dir = mpath.parent
    shards = []
    for entry in manifest["shards"]:
        shard = ShardInfo(
            path=split_dir / entry["name"],
            index_path=split_dir / entry["index"],
            num_samples=int(entry["num_samples"]),
            bytes=int(entry["bytes"]),
            sha256=entry["sha256"],
            index_sha256=entry["index_sha256"],
        )
        if check_files:
            for file in (shard.path, shard.index_path):
                if not file.exists():
                    raise DataError(f"{file}: listed in {mpath} but absent")
            size = shard.path.stat().st_size
            if size != shard.bytes:
                raise DataError(f"{shard.path}: {size} bytes, manifest says {shard.bytes} (truncated or rewritten)")
        shards.append(shard)
    counted = sum(s.num_samples for s in shards)
    if counted != manifest["num_samples"]:
        raise DataError(f"{mpath}: shards hold {counted} samples, manifest says {manifest['num_samples']}")
    dataset = manifest["dataset"]
    channels = int(manifest["image"]["channels"])
    norm = manifest.get("normalization") or {}
    mean, std = NORMALIZATION.get(dataset, NORMALIZATION["folder"])
    native = AUTO.get(dataset, AUTO["folder"])[2]
    return SplitInfo(
        path=split_dir,
        dataset=dataset,
        split=manifest["split"],
        num_samples=int(manifest["num_samples"]),
        classes=list(manifest["classes"]),
        channels=channels,
        image_shape=(channels, native, native),
        mean=tuple(norm.get("mean", mean)),
        std=tuple(norm.get("std", std)),
        shards=shards,
        manifest=manifest,
    )
