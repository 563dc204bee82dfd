"""Augmentations, written once as *parameters* and applied by both readers.

Every random choice (which crop box, whether to flip) is made here, in numpy,
from per-sample uniform draws that the epoch plan derives from (seed, epoch,
rank, batch). The PIL reader and the DALI reader then only execute the box:
PIL with `Image.resize(box=...)`, DALI with a region-of-interest decode and a
resize. So the two readers produce the same crops (up to resampling), a
resumed epoch repeats the augmentations of the interrupted one exactly, and
none of it depends on thread or worker counts.

Modes (what `build_reader(augment=...)` resolves to):
  crop     train: random-resized-crop (scale 0.08-1, ratio 3/4-4/3) + flip;
           eval: resize the short side to size*256/224, centre crop `size`.
  resize   the paper's plain "resized to 224x224" (both train and eval).
  padcrop  CIFAR: zero-pad 4, random crop back to the native size, + flip.
  none     decode and normalise only (fixed-size datasets).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# Per-dataset channel statistics (the usual published values; Fashion-MNIST
# computed over its 60k training images).
NORMALIZATION = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "folder": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
}
# augment="auto": (train mode, eval mode) and the default output side.
AUTO = {
    "imagenet": ("crop", "crop", 224),
    "folder": ("crop", "crop", 224),
    "cifar10": ("padcrop", "none", 32),
    "mnist": ("none", "none", 28),
    "fashion-mnist": ("none", "none", 28),
}
AUGMENTS = ("auto", "none", "crop", "resize", "resize224", "padcrop")

RRC_SCALE = (0.08, 1.0)
RRC_RATIO = (3.0 / 4.0, 4.0 / 3.0)
RRC_ATTEMPTS = 10
PAD = 4
# Per-sample draws: 2 per RRC attempt, 2 for the crop position, 1 for the flip.
NUM_DRAWS = 2 * RRC_ATTEMPTS + 3


@dataclass(frozen=True)
class SampleParams:
    """What to do with one decoded image of width w, height h."""

    box: tuple[int, int, int, int] | None  # (x, y, width, height) to cut and resize to size x size
    offset: tuple[int, int] | None  # padcrop: top-left (x, y) of the window, may be negative
    flip: bool


@dataclass(frozen=True)
class Transform:
    mode: str  # crop | resize | padcrop | none
    train: bool
    size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def output_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.size, self.size)

    @property
    def random(self) -> bool:
        return self.train and self.mode in ("crop", "padcrop")

    def params(self, width: int, height: int, draws: np.ndarray | None) -> SampleParams:
        if self.mode == "none":
            self._check_native(width, height)
            return SampleParams(None, None, False)
        if self.mode == "resize":
            return SampleParams((0, 0, width, height), None, False)
        if self.mode == "padcrop":
            self._check_native(width, height)
            if not self.train:
                return SampleParams(None, None, False)
            assert draws is not None  # random modes get per-sample draws
            dx, dy = (int(d * (2 * PAD + 1)) - PAD for d in draws[2 * RRC_ATTEMPTS : 2 * RRC_ATTEMPTS + 2])
            return SampleParams(None, (dx, dy), bool(draws[-1] < 0.5))
        if self.mode == "crop":
            if self.train:
                assert draws is not None  # random modes get per-sample draws
                return SampleParams(random_resized_box(width, height, draws), None, bool(draws[-1] < 0.5))
            return SampleParams(center_box(width, height, self.size), None, False)
        raise ValueError(f"unknown transform mode {self.mode!r}")

    def _check_native(self, width: int, height: int) -> None:
        if (width, height) != (self.size, self.size):
            raise ValueError(
                f"mode {self.mode!r} needs {self.size}x{self.size} images, got {width}x{height}; "
                "use augment='resize' or 'crop' for other sizes"
            )


def random_resized_box(width: int, height: int, draws: np.ndarray) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop box: up to 10 tries at a random area and
    log-uniform aspect ratio, then a centre crop clamped to the ratio range."""
    area = width * height
    log_lo, log_hi = math.log(RRC_RATIO[0]), math.log(RRC_RATIO[1])
    px, py = draws[2 * RRC_ATTEMPTS], draws[2 * RRC_ATTEMPTS + 1]
    for attempt in range(RRC_ATTEMPTS):
        u_area, u_ratio = draws[2 * attempt], draws[2 * attempt + 1]
        target = area * (RRC_SCALE[0] + u_area * (RRC_SCALE[1] - RRC_SCALE[0]))
        ratio = math.exp(log_lo + u_ratio * (log_hi - log_lo))
        w = int(round(math.sqrt(target * ratio)))
        h = int(round(math.sqrt(target / ratio)))
        if 0 < w <= width and 0 < h <= height:
            return int(px * (width - w + 1)), int(py * (height - h + 1)), w, h
    in_ratio = width / height
    if in_ratio < RRC_RATIO[0]:
        w, h = width, int(round(width / RRC_RATIO[0]))
    elif in_ratio > RRC_RATIO[1]:
        w, h = int(round(height * RRC_RATIO[1])), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def center_box(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """Resize-short-side-to-size*256/224 then centre-crop `size`, expressed as
    the square box it cuts from the original image (one resampling, not two)."""
    resized_short = int(round(size * 256 / 224))
    side = max(1, min(width, height, int(round(min(width, height) * size / resized_short))))
    return (width - side) // 2, (height - side) // 2, side, side


def resolve(
    dataset: str,
    augment: str,
    train: bool,
    image_size: int | None,
    channels: int,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
) -> Transform:
    if dataset not in AUTO:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {sorted(AUTO)}")
    if augment not in AUGMENTS:
        raise ValueError(f"augment must be one of {AUGMENTS}, got {augment!r}")
    train_mode, eval_mode, native = AUTO[dataset]
    if augment == "auto":
        mode = train_mode if train else eval_mode
    elif augment == "none":
        mode = eval_mode
    elif augment in ("resize", "resize224"):
        mode = "resize"
    elif augment == "padcrop":
        mode = "padcrop" if train else "none"
    else:  # crop
        mode = "crop"
    size = image_size or (224 if augment == "resize224" else native)
    if mode in ("none", "padcrop") and dataset not in ("imagenet", "folder") and size != native:
        raise ValueError(f"{dataset} images are {native}x{native}; image_size={size} needs augment='resize' or 'crop'")
    default_mean, default_std = NORMALIZATION[dataset]
    mean = tuple(mean or default_mean)
    std = tuple(std or default_std)
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"normalisation has {len(mean)} channels, images have {channels}")
    return Transform(mode, train, int(size), channels, mean, std)


def apply_pil(image, params: SampleParams, transform: Transform) -> np.ndarray:
    """The transform on a decoded PIL image -> uint8 array (H, W, C)."""
    from PIL import Image

    size = transform.size
    if params.box is not None:
        x, y, w, h = params.box
        image = image.resize((size, size), Image.Resampling.BILINEAR, box=(x, y, x + w, y + h))
    array = np.asarray(image, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    if params.offset is not None:
        dx, dy = params.offset
        padded = np.zeros((size + 2 * PAD, size + 2 * PAD, array.shape[2]), np.uint8)
        padded[PAD : PAD + array.shape[0], PAD : PAD + array.shape[1]] = array
        array = padded[PAD + dy : PAD + dy + size, PAD + dx : PAD + dx + size]
    if params.flip:
        array = array[:, ::-1]
    return array
