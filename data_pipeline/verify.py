"""`bioscale inspect`: check a split against its manifest, member by member.

Checks: every listed shard and index exists with the recorded size and
sha256; the index matches the tar; every sample has one image and a `.cls`;
every label is an integer in range; every image decodes (full PIL decode);
per-shard counts and the class histogram match the manifest. Each problem is
reported as '<shard>: member <name>: <what>', and all problems are
collected (one damaged shard does not hide another).
"""

from __future__ import annotations

import io
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .errors import DataError
from .index import IMAGE_EXTS
from .manifest import MANIFEST, load_manifest, manifest_path
from .shardfile import file_sha256, index_lines, split_member_name


@dataclass
class SplitReport:
    path: Path
    dataset: str = "?"
    split: str = "?"
    expected: int = 0
    num_samples: int = 0
    classes: list[str] = field(default_factory=list)
    class_counts: Counter = field(default_factory=Counter)
    shards: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _check_sample(
    shard: Path, key: str, members: dict[str, bytes], num_classes: int, channels: int, decode: bool, problems: list[str]
) -> int | None:
    """Problems of one sample appended to `problems`; returns its label if valid."""
    from PIL import Image

    images = sorted(set(members) & set(IMAGE_EXTS))
    if len(images) != 1:
        problems.append(f"{shard}: sample {key}: {len(images)} image members (has {sorted(members)})")
    for ext in images if decode else ():
        try:
            image = Image.open(io.BytesIO(members[ext]))
            image.load()
            if channels == 1 and image.mode not in ("L", "1"):
                problems.append(f"{shard}: member {key}.{ext}: mode {image.mode}, manifest says greyscale")
        except Exception as exc:  # PIL raises many types for broken files
            problems.append(f"{shard}: member {key}.{ext}: cannot decode: {exc}")
    if "cls" not in members:
        problems.append(f"{shard}: sample {key}: missing .cls member (has {sorted(members)})")
        return None
    raw = members["cls"]
    try:
        label = int(raw.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        problems.append(f"{shard}: member {key}.cls: not an integer label: {raw[:20]!r}")
        return None
    if not 0 <= label < num_classes:
        problems.append(f"{shard}: member {key}.cls: label {label} out of range [0, {num_classes})")
        return None
    return label


def verify_shard(split_dir: str, entry: dict, num_classes: int, channels: int, decode: bool = True) -> dict:
    """Check one shard; returns {"samples", "labels": Counter, "problems"}."""
    tar_path, idx_path = Path(split_dir) / entry["name"], Path(split_dir) / entry["index"]
    problems: list[str] = []
    result = {"samples": 0, "labels": Counter(), "problems": problems}
    for path in (tar_path, idx_path):
        if not path.exists():
            problems.append(f"{path}: listed in the manifest but absent")
    if problems:
        return result
    if tar_path.stat().st_size != entry["bytes"]:
        problems.append(f"{tar_path}: {tar_path.stat().st_size} bytes, manifest says {entry['bytes']}")
    if file_sha256(tar_path) != entry["sha256"]:
        problems.append(f"{tar_path}: sha256 differs from the manifest")
    if file_sha256(idx_path) != entry["index_sha256"]:
        problems.append(f"{idx_path}: sha256 differs from the manifest")
    try:
        if idx_path.read_text().splitlines() != index_lines(tar_path):
            problems.append(f"{idx_path}: does not match the offsets in {tar_path.name}")
    except DataError:
        pass  # the member walk below names the damaged member
    key, members, current = None, {}, "<start of archive>"
    try:
        with tarfile.open(tar_path, mode="r:") as tar:
            for member in tar:
                current = member.name
                if not member.isreg():
                    continue
                k, ext = split_member_name(member.name)
                if k != key and key is not None:
                    _finish(result, tar_path, key, members, num_classes, channels, decode)
                    members = {}
                key = k
                extracted = tar.extractfile(member)
                assert extracted is not None  # a regular file (checked above) always extracts
                data = extracted.read()
                if len(data) != member.size:
                    raise tarfile.ReadError(f"member data ends after {len(data)} of {member.size} bytes")
                members[ext] = data
    except (tarfile.TarError, EOFError, OSError) as exc:
        problems.append(f"{tar_path}: member {current}: damaged tar ({exc})")
        members = {}
    if key is not None and members:
        _finish(result, tar_path, key, members, num_classes, channels, decode)
    if result["samples"] != entry["num_samples"]:
        problems.append(f"{tar_path}: {result['samples']} samples, manifest says {entry['num_samples']}")
    return result


def _finish(
    result: dict, tar_path: Path, key: str, members: dict, num_classes: int, channels: int, decode: bool
) -> None:
    result["samples"] += 1
    label = _check_sample(tar_path, key, members, num_classes, channels, decode, result["problems"])
    if label is not None:
        result["labels"][label] += 1


def verify_split(path: str | Path, *, decode: bool = True, workers: int = 1) -> SplitReport:
    report = SplitReport(manifest_path(path).parent)
    try:
        manifest = load_manifest(path)
    except DataError as exc:
        report.problems.append(str(exc))
        return report
    report.dataset, report.split = manifest["dataset"], manifest["split"]
    report.expected, report.classes = manifest["num_samples"], list(manifest["classes"])
    report.shards = len(manifest["shards"])
    args = [
        (str(report.path), entry, len(report.classes), int(manifest["image"]["channels"]), decode)
        for entry in manifest["shards"]
    ]
    if workers > 1 and len(args) > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers) as pool:
            results = list(pool.map(verify_shard, *zip(*args)))
    else:
        results = [verify_shard(*a) for a in args]
    for result in results:
        report.num_samples += result["samples"]
        report.class_counts.update(result["labels"])
        report.problems += result["problems"]
    if report.num_samples != report.expected:
        report.problems.append(
            f"{report.path / MANIFEST}: shards hold {report.num_samples} samples, manifest says {report.expected}"
        )
    expected_counts = manifest.get("class_counts")
    counted = [report.class_counts.get(c, 0) for c in range(len(report.classes))]
    if expected_counts is not None and counted != expected_counts and not report.problems:
        report.problems.append(f"{report.path / MANIFEST}: class histogram {counted} differs from {expected_counts}")
    return report


def find_splits(path: str | Path) -> list[Path]:
    """PATH may be a split directory, a manifest, or a directory of splits."""
    path = Path(path)
    if manifest_path(path).exists():
        return [path]
    found = sorted(p.parent for p in path.glob(f"*/{MANIFEST}")) if path.is_dir() else []
    return found or [path]
