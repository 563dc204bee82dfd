"""Image-file datasets: `folder` (root/<class>/<image>) and ImageNet (ILSVRC-2012).

Listing is sorted so that ids, and therefore shards, are the same on every
run. Encoding keeps a clean RGB JPEG byte for byte and re-encodes only what
the readers could not take as is -- the real ImageNet quirks: CMYK JPEGs,
grayscale JPEGs, a PNG saved with a .JPEG name -- plus the optional
`--max-side` downscale. Each repair is recorded as a quirk and counted in
the manifest.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import numpy as np

from .errors import DataError
from .source_types import Encoded, Source, SourceSplit

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
JPEG_QUALITY = 95
VAL_NAME = re.compile(r"ILSVRC2012_val_(\d+)")


class FileSource(Source):
    def __init__(self, *args, jpeg_only: bool, max_side: int | None, **kwargs):
        super().__init__(*args, **kwargs)
        self.jpeg_only = jpeg_only
        self.max_side = max_side

    def encode(self, split: str, i: int) -> Encoded:
        path = self.root / self.splits[split].ids[i]
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise DataError(f"{path}: cannot read: {exc}") from None
        return normalise_image(data, str(path), jpeg_only=self.jpeg_only, max_side=self.max_side)


def normalise_image(data: bytes, name: str, *, jpeg_only: bool, max_side: int | None) -> Encoded:
    """Return what a shard stores for this file: the original bytes when they
    are already an RGB JPEG (or RGB PNG for `folder`) within `max_side`, else
    an RGB re-encode; a file that does not decode is a DataError naming it."""
    from PIL import Image

    try:
        image: Image.Image = Image.open(io.BytesIO(data))
        fmt, mode, (width, height) = image.format, image.mode, image.size
        resize = bool(max_side and max(width, height) > max_side)
        keep = mode == "RGB" and not resize and (fmt == "JPEG" or (fmt == "PNG" and not jpeg_only))
        if keep and fmt == "JPEG":
            # Decoding at 1/8 scale still walks all entropy-coded data, so a
            # truncated or corrupt file fails here, about five times faster.
            image.draft("RGB", (max(1, width // 8), max(1, height // 8)))
        image.load()
    except Exception as exc:  # PIL raises many types for broken files
        raise DataError(f"{name}: cannot decode image: {exc}") from None
    if keep:
        return Encoded("jpg" if fmt == "JPEG" else "png", data, width, height)
    quirks = []
    if Path(name).suffix.lower() in (".jpg", ".jpeg") and fmt != "JPEG":
        quirks.append(f"{str(fmt).lower()}_as_jpeg")
    if mode == "CMYK":
        quirks.append("cmyk")
    elif mode in ("L", "LA", "1", "I", "I;16", "F"):
        quirks.append("grayscale")
    elif mode != "RGB":
        quirks.append(f"mode_{mode.lower()}")
    image = image.convert("RGB")
    if resize:
        assert max_side is not None  # resize implies a limit
        scale = max_side / max(width, height)
        width, height = max(1, round(width * scale)), max(1, round(height * scale))
        image = image.resize((width, height), Image.Resampling.LANCZOS)
        quirks.append("resized")
    as_jpeg = jpeg_only or fmt == "JPEG"
    buf = io.BytesIO()
    if as_jpeg:
        image.save(buf, format="JPEG", quality=JPEG_QUALITY)
    else:
        image.save(buf, format="PNG", compress_level=6, optimize=False)
    return Encoded("jpg" if as_jpeg else "png", buf.getvalue(), width, height, tuple(quirks))


def _images_under(directory: Path, base: Path) -> list[str]:
    files = [
        p
        for p in directory.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    ]
    return sorted(p.relative_to(base).as_posix() for p in files)


def list_class_tree(
    directory: Path, base: Path, classes: list[str] | None, skip_bad: bool, skipped: list[dict]
) -> tuple[list[str], SourceSplit]:
    """List `directory/<class>/**/<image>`. With `classes` given (a test split),
    labels follow that list; otherwise the sorted class directories define it.
    An empty class is an error, or with skip_bad dropped and reported."""
    dirs = sorted(d.name for d in directory.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not dirs:
        raise DataError(f"{directory}: no class directories (expected {directory}/<class>/<image>)")
    found: dict[str, list[str]] = {}
    for name in dirs:
        files = _images_under(directory / name, base)
        if not files:
            if not skip_bad:
                raise DataError(f"{directory / name}: class directory holds no images (--skip-bad drops it)")
            skipped.append({"id": (directory / name).relative_to(base).as_posix(), "error": "empty class directory"})
            continue
        found[name] = files
    if classes is None:
        classes = sorted(found)
    lookup = {c: i for i, c in enumerate(classes)}
    ids, labels = [], []
    for name, files in found.items():
        if name not in lookup:
            if not skip_bad:
                raise DataError(f"{directory / name}: class {name!r} does not exist in the training split")
            skipped.append({"id": (directory / name).relative_to(base).as_posix(), "error": "unknown class"})
            continue
        ids += files
        labels += [lookup[name]] * len(files)
    return classes, SourceSplit(ids, np.asarray(labels, dtype=np.int64))


def _find_file(name: str, places: list[Path]) -> Path | None:
    return next((p / name for p in places if (p / name).is_file()), None)


def _val_labels_from_csv(path: Path) -> dict[int, str]:
    labels = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            match = VAL_NAME.search(row.get("ImageId", ""))
            words = (row.get("PredictionString") or "").split()
            if not match or not words:
                raise DataError(f"{path}: malformed row {row}")
            labels[int(match.group(1))] = words[0]
    return labels


def _val_labels_from_devkit(devkit: Path) -> dict[int, str]:
    truth = devkit / "data" / "ILSVRC2012_validation_ground_truth.txt"
    meta = devkit / "data" / "meta.mat"
    try:
        from scipy.io import loadmat
    except ImportError:
        raise DataError(f"{meta}: reading the devkit needs scipy (or provide LOC_val_solution.csv)") from None
    try:
        synsets = loadmat(str(meta), squeeze_me=True)["synsets"]
        id_to_wnid = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets}
        ids = [int(line) for line in truth.read_text().split()]
    except (OSError, KeyError, ValueError) as exc:
        raise DataError(f"{devkit}: cannot read devkit ground truth: {exc}") from None
    missing = sorted(set(ids) - set(id_to_wnid))
    if missing:
        raise DataError(f"{truth}: ILSVRC2012_ID {missing[0]} is not in {meta}")
    # Line k of the ground truth labels ILSVRC2012_val_<k>.JPEG (1-based).
    return {k: id_to_wnid[i] for k, i in enumerate(ids, start=1)}


def _imagenet_val(base: Path, src: Path, classes: list[str], skip_bad: bool, skipped: list[dict]) -> SourceSplit:
    val = base / "val"
    if not val.is_dir():
        raise DataError(f"{val}: ImageNet validation directory missing")
    if any(p.is_dir() for p in val.iterdir()):
        return list_class_tree(val, base, classes, skip_bad, skipped)[1]
    places = [src, base, val, base.parent, base.parent.parent]
    csv_path = _find_file("LOC_val_solution.csv", places)
    devkit = next((p / "ILSVRC2012_devkit_t12" for p in places if (p / "ILSVRC2012_devkit_t12").is_dir()), None)
    if csv_path:
        wnids = _val_labels_from_csv(csv_path)
    elif devkit:
        wnids = _val_labels_from_devkit(devkit)
    else:
        raise DataError(
            f"{val}: flat validation images need LOC_val_solution.csv or ILSVRC2012_devkit_t12/ next to them"
        )
    lookup = {c: i for i, c in enumerate(classes)}
    ids, labels = [], []
    for rel in _images_under(val, base):
        match = VAL_NAME.search(rel)
        wnid = wnids.get(int(match.group(1))) if match else None
        if wnid not in lookup:
            problem = "no ground-truth label" if wnid is None else f"label {wnid} is not a training class"
            if not skip_bad:
                raise DataError(f"{base / rel}: {problem}")
            skipped.append({"id": rel, "error": problem})
            continue
        ids.append(rel)
        labels.append(lookup[wnid])
    return SourceSplit(ids, np.asarray(labels, dtype=np.int64))


def open_file_source(dataset: str, root: Path, *, max_side: int | None, skip_bad: bool) -> FileSource:
    skipped: list[dict] = []
    splits: dict[str, SourceSplit] = {}
    if dataset == "imagenet":
        kaggle = root / "ILSVRC" / "Data" / "CLS-LOC"
        base = kaggle if kaggle.is_dir() else root
        if not (base / "train").is_dir():
            raise DataError(f"{base}/train: ImageNet training directory missing (expected train/<wnid>/*.JPEG)")
        classes, splits["train"] = list_class_tree(base / "train", base, None, skip_bad, skipped)
        splits["test"] = _imagenet_val(base, root, classes, skip_bad, skipped)
    else:
        base = root
        train_dir = root / "train" if (root / "train").is_dir() else root
        classes, splits["train"] = list_class_tree(train_dir, base, None, skip_bad, skipped)
        test_dir = next((root / n for n in ("test", "val") if train_dir != root and (root / n).is_dir()), None)
        if test_dir is not None:
            splits["test"] = list_class_tree(test_dir, base, classes, skip_bad, skipped)[1]
    image = {
        "format": "jpeg" if dataset == "imagenet" else "jpeg/png",
        "mode": "RGB",
        "channels": 3,
        "max_side": max_side,
    }
    return FileSource(
        dataset, base, classes, 3, image, splits, skipped, jpeg_only=dataset == "imagenet", max_side=max_side
    )
