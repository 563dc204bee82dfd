"""The papers' printed results (error %), as data for the tables of tables.py: ICLR 2018
Tables 1-3 from its text, NeurIPS 2018 (Bartunov et al., "Assessing the scalability of
biologically-motivated deep learning algorithms and architectures") from its tables, whose row
alignment is partly reconstructed. (rule, schedule) -> (train, test) per architecture
label; ImageNet: (top-1, top-5) test."""

from __future__ import annotations

from bioscale.experiments.table_types import METHODS

ICLR_T1 = {  # MNIST, ICLR Table 1
    "fc": {
        ("dtp", "parallel"): (0.06, 1.77),
        ("dtp", "alternating"): (0.07, 1.85),
        ("sdtp", "parallel"): (0.06, 2.03),
        ("sdtp", "alternating"): (0.05, 1.88),
        ("bp", None): (0.00, 1.96),
    },
    "lc": {
        ("dtp", "parallel"): (0.15, 1.48),
        ("dtp", "alternating"): (0.15, 1.48),
        ("sdtp", "parallel"): (0.10, 1.49),
        ("sdtp", "alternating"): (0.05, 1.63),
        ("bp", None): (0.00, 1.46),
    },
}
ICLR_TP = (  # the methods of the ICLR tables, in their order
    ("dtp", "parallel"),
    ("dtp", "alternating"),
    ("sdtp", "parallel"),
    ("sdtp", "alternating"),
    ("bp", None),
)
_ICLR_T2 = {  # CIFAR-10, ICLR Table 2: FC, LC without augmentation, then FC, LC augmented
    "noaug_fc": ((1.13, 44.97), (1.14, 44.67), (1.10, 44.66), (1.06, 44.76), (0.00, 45.13)),
    "noaug_lc": ((30.14, 44.83), (29.90, 45.99), (29.75, 45.89), (29.56, 45.24), (27.63, 43.49)),
    "aug_fc": ((24.73, 41.39), (25.41, 42.16), (24.70, 41.40), (26.09, 41.72), (25.75, 42.13)),
    "aug_lc": ((25.58, 37.62), (23.49, 37.35), (23.26, 36.71), (23.71, 36.56), (20.94, 36.56)),
}
ICLR_T2 = {k: dict(zip(ICLR_TP, v)) for k, v in _ICLR_T2.items()}
ICLR_T2["noaug_conv"] = {("bp", None): (31.23, 34.37)}  # §3.2 text: "convolutional analog of the LC network"
ICLR_T3 = {"lc": {("dtp", "parallel"): (95.49, None), ("sdtp", "parallel"): (95.63, None), ("bp", None): (87.62, None)}}

_N = METHODS  # NeurIPS table rows in METHODS order, then the BP ConvNet
_NEURIPS = {
    "mnist_fc": (
        (0.44, 2.86),
        (0.00, 1.83),
        (1.14, 3.52),
        (0.00, 2.28),
        (0.96, 2.93),
        (0.00, 1.86),
        (0.00, 1.85),
        (0.85, 2.75),
        (0.00, 1.48),
    ),
    "mnist_lc": (
        (0.00, 1.52),
        (0.00, 1.46),
        (0.00, 1.98),
        (0.00, 1.90),
        (0.00, 1.92),
        (0.00, 1.91),
        (0.00, 1.26),
        (0.23, 2.05),
        (0.00, 1.17),
    ),
    "cifar_fc": (
        (59.45, 59.14),
        (30.41, 42.32),
        (51.48, 55.32),
        (48.65, 54.27),
        (4.28, 47.11),
        (0.00, 45.40),
        (25.62, 41.97),
        (33.35, 47.80),
        (28.97, 41.32),
    ),
    "cifar_lc": (
        (28.69, 39.47),
        (28.54, 39.47),
        (43.00, 46.63),
        (40.40, 45.66),
        (32.67, 40.05),
        (34.11, 40.21),
        (17.46, 37.44),
        (32.74, 44.41),
        (0.83, 32.41),
    ),
}
NEURIPS = {k: dict(zip(_N, v)) for k, v in _NEURIPS.items()}
NEURIPS["mnist_conv"] = {("bp", None): (0.00, 1.01)}
NEURIPS["cifar_conv"] = {("bp", None): (1.39, 31.87)}
NEURIPS_IMAGENET = {  # test (top-1, top-5); DFA's feedback did not fit a 16 GB GPU
    "lc": {
        ("dtp", "parallel"): (98.34, 94.56),
        ("dtp", "alternating"): (99.36, 97.28),
        ("sdtp", "parallel"): (99.28, 97.15),
        ("fa", None): (93.08, 82.54),
        ("bp", None): (71.43, 49.07),
    },
    "conv": {("bp", None): (63.93, 40.17)},
}
