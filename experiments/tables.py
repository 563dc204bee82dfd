"""The paper's tables as data: which rows (method × architecture) a table has, which config
under configs/ runs each row, and what the paper reported for it.

Row configs follow one naming scheme, so a row is (rule, schedule, architecture label):
    configs/<iclr2018|neurips2018>/<dataset>/<arch>_<rule>[_<schedule>].yaml   the papers' rows
    configs/fashion_mnist/[neurips_]<arch>_<rule>[_alt].yaml                    our stand-in table
Paper numbers are error percentages as printed (ICLR text; NeurIPS via
/work/shared/reference/neurips2018-facts.md, whose row alignment is partly reconstructed)."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

# Display order of the methods, as in the papers' tables.
METHODS = (
    ("dtp", "parallel"),
    ("dtp", "alternating"),
    ("sdtp", "parallel"),
    ("sdtp", "alternating"),
    ("aosdtp", "parallel"),
    ("aosdtp", "alternating"),
    ("fa", None),
    ("dfa", None),
    ("bp", None),
)
RULE_NAMES = {
    "dtp": "DTP",
    "sdtp": "SDTP",
    "aosdtp": "AO-SDTP",
    "fa": "FA",
    "dfa": "DFA",
    "bp": "BP",
    "signsym": "Sign-symmetry",
    "kp": "Kolen–Pollack",
    "ldrl": "L-DRL",
    "drl": "DRL",
}


@dataclass(frozen=True)
class PaperResult:
    source: str
    """Where the numbers are printed, e.g. 'ICLR T1' (a different net or dataset is named here)."""
    train: float | None
    """Train top-1 error, % (None: not reported)."""
    test: float | None
    """Test top-1 error, %."""
    test_top5: float | None = None


@dataclass(frozen=True)
class Row:
    rule: str
    schedule: str | None
    """'parallel' | 'alternating' for TP rules, None for BP/FA/DFA."""
    arch: str
    """Architecture label within the table: fc, lc, conv (ICLR nets) or neurips_fc, ... ."""
    net: str
    """Registry name (models.architectures), e.g. iclr_mnist_lc."""
    config: str
    """Config path relative to configs/."""
    paper: PaperResult | None = None

    @property
    def key(self) -> str:
        """Unique within every table: the config path without `.yaml` (also the run directory)."""
        return self.config.removesuffix(".yaml")

    @property
    def method(self) -> str:
        if self.arch.endswith("conv"):
            return "BP ConvNet"
        return RULE_NAMES[self.rule] + (f", {self.schedule}" if self.schedule else "")


@dataclass(frozen=True)
class Search:
    """A pruned random search per row before its final runs (the paper's protocol, as
    successive halving): `trials` configurations sampled from `space` (`paper`: its Table 4
    for the row's rule) train `prune_after_epochs[0]` epochs, the best `keep[0]` by validation
    error continue to `prune_after_epochs[1]`, ... and the last one kept trains on to the
    budget's epochs: it is the row's seed-0 run; the other seeds train that configuration."""

    trials: int = 12
    prune_after_epochs: tuple[int, ...] = (3, 10)
    keep: tuple[int, ...] = (4, 1)
    space: str = "paper"
    seed: int = 0
    """Sampling seed of the configurations."""


@dataclass(frozen=True)
class Budget:
    """How long each row trains. None keeps the config's value."""

    epochs: int | None = None
    max_steps_per_epoch: int | None = None
    alternating_factor: int = 1
    """Alternating rows get this many times the epochs: one epoch in two trains only the
    inverses, so 2 gives them as many forward updates as the parallel rows."""
    overrides: tuple[str, ...] = ()
    seeds: int = 1
    note: str = ""
    search: Search | None = None
    """Search each row's hyperparameters first (None: train the config's)."""
    rows: tuple[str, ...] = ()
    """Row patterns (as `--rows`) this budget runs by default; empty: every row."""
    one_seed: tuple[str, ...] = ()
    """Row patterns that get one seed only (cheap or secondary rows)."""

    def seeds_for(self, row: Row) -> int:
        return 1 if any(row_matches(row, p) for p in self.one_seed) else self.seeds

    def epochs_for(self, row: Row, epochs: int) -> int:
        """`epochs` of forward training for this row (alternating rows get their inverse epochs on top)."""
        return epochs * (self.alternating_factor if row.schedule == "alternating" else 1)

    def row_overrides(self, row: Row) -> list[str]:
        out = list(self.overrides)
        if self.epochs is not None:
            out.append(f"train.epochs={self.epochs_for(row, self.epochs)}")
        if self.max_steps_per_epoch is not None:
            out.append(f"train.max_steps_per_epoch={self.max_steps_per_epoch}")
        return out


def row_matches(row: Row, pattern: str) -> bool:
    """A glob on the row key ('fashion_mnist/fc_*') or on its last part ('fc_*')."""
    return fnmatch.fnmatch(row.key, pattern) or fnmatch.fnmatch(row.key.rsplit("/", 1)[-1], pattern)


@dataclass(frozen=True)
class Table:
    name: str
    title: str
    dataset: str
    """`bioscale prepare <dataset>` name."""
    rows: tuple[Row, ...]
    budgets: dict[str, Budget]
    top5: bool = False
    paper_note: str = ""
    arch_titles: dict[str, str] = field(default_factory=dict)

    def row(self, key: str) -> Row:
        for row in self.rows:
            if row.key == key:
                return row
        raise KeyError(f"table {self.name!r} has no row {key!r}")


# ----------------------------------------------------------------- paper numbers (error %)
# (rule, schedule) -> (train, test) per architecture label; ImageNet: (top-1, top-5) test.
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
_ICLR_T2_ORDER = (
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
ICLR_T2 = {k: dict(zip(_ICLR_T2_ORDER, v)) for k, v in _ICLR_T2.items()}
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


def _stem(arch: str, rule: str, schedule: str | None, short_alt: bool = False) -> str:
    if short_alt:  # configs/fashion_mnist: parallel is the default, alternating is `_alt`
        return f"{arch}_{rule}" + ("_alt" if schedule == "alternating" else "")
    return f"{arch}_{rule}" + (f"_{schedule}" if schedule else "")


def _rows(
    folder: str, prefix: str, kind: str, archs: dict[str, tuple], source: str, paper: dict, imagenet: bool = False
) -> list[Row]:
    """archs: label -> (methods, paper key) for the paper's own rows."""
    rows = []
    for arch, (methods, key) in archs.items():
        for rule, schedule in methods:
            numbers = paper.get(key, {}).get((rule, schedule))
            result = None
            if numbers is not None:
                result = (
                    PaperResult(source, None, numbers[0], numbers[1])
                    if imagenet
                    else PaperResult(source, numbers[0], numbers[1])
                )
            # labels as in the Fashion-MNIST table: ICLR nets plain, NeurIPS nets prefixed
            label = arch if prefix == "iclr" else f"neurips_{arch}"
            rows.append(
                Row(
                    rule,
                    schedule,
                    label,
                    f"{prefix}_{kind}_{arch}",
                    f"{folder}/{_stem(arch, rule, schedule)}.yaml",
                    result,
                )
            )
    return rows


ICLR_TP = _ICLR_T2_ORDER
CONV_BP = (("bp", None),)
SMALL_NOTE = (
    "a CPU-sized budget: far fewer updates than the paper's 500 epochs, one seed unless "
    "`--seeds`; rankings at this budget reflect speed of learning as much as final error"
)


def _paper_budget(epochs: int | None = None) -> dict[str, Budget]:
    return {"paper": Budget(epochs=epochs, note="the configs' epochs (the paper's), full epochs")}


def _small(epochs: int, steps: int, *extra: str) -> Budget:
    return Budget(
        epochs=epochs,
        max_steps_per_epoch=steps,
        alternating_factor=2,
        note=SMALL_NOTE,
        overrides=("data.eval_batch_size_per_rank=500", *extra),
    )


def _fashion_rows() -> list[Row]:
    rows = []
    for version, label, paper_src in (("iclr", "", "ICLR T1"), ("neurips", "neurips_", "NeurIPS")):
        for arch in ("fc", "lc", "conv"):
            methods = CONV_BP if arch == "conv" else METHODS
            for rule, schedule in methods:
                same = (
                    (ICLR_T1 if version == "iclr" else NEURIPS)
                    .get(arch if version == "iclr" else f"mnist_{arch}", {})
                    .get((rule, schedule))
                )
                if same is None and version == "iclr":  # not run on the ICLR nets: the NeurIPS net's numbers
                    same = NEURIPS[f"mnist_{arch}"].get((rule, schedule))
                    src = f"NeurIPS, {arch.upper()} net 'neurips_mnist_{arch}'"
                else:
                    src = f"{paper_src} MNIST"
                paper = PaperResult(src, *same) if same else None
                rows.append(
                    Row(
                        rule,
                        schedule,
                        label + arch,
                        f"{version}_mnist_{arch}",
                        f"fashion_mnist/{_stem(label + arch, rule, schedule, short_alt=True)}.yaml",
                        paper,
                    )
                )
    return rows


TABLES: dict[str, Table] = {}


def _register(table: Table) -> None:
    TABLES[table.name] = table


_register(
    Table(
        "fashion-mnist",
        "Fashion-MNIST (stand-in for the MNIST rows of both paper versions)",
        "fashion-mnist",
        tuple(_fashion_rows()),
        {
            "small": _small(4, 80, "train.angle_every_steps=40", "train.checkpoint_every_steps=0"),
            "full": Budget(
                epochs=30,
                alternating_factor=2,
                seeds=3,
                search=Search(),
                rows=tuple(
                    f"{arch}_{rule}"
                    for arch in ("fc", "lc")
                    for rule in ("dtp", "dtp_alt", "sdtp", "sdtp_alt", "aosdtp", "fa", "dfa", "bp")
                )
                + ("conv_bp",),
                one_seed=("fc_fa", "fc_dfa", "fc_aosdtp"),
                overrides=("data.eval_batch_size_per_rank=500", "train.angle_every_steps=400"),
                note="the paper's protocol at a CPU's scale: per row a random search over its Table 4 space "
                "(12 configurations, the best 4 continued after 3 epochs, the best one after 10), that one "
                "trained to 30 epochs of forward training, then 3 seeds of it (LC rows, conv twin, BP/DTP/SDTP "
                "on FC; 1 seed for FA, DFA, AO-SDTP on FC); model selection over 5 consecutive epochs",
            ),
            "paper": Budget(epochs=500, note="500 epochs, the paper's MNIST protocol (days on a CPU)"),
        },
        paper_note="The paper numbers are its MNIST results on the same net (Fashion-MNIST is harder: "
        "expect several times their error); they orient the ranking, not the level.",
        arch_titles={
            "fc": "ICLR FC (7×240)",
            "lc": "ICLR LC",
            "conv": "ICLR conv twin",
            "neurips_fc": "NeurIPS FC (5×256)",
            "neurips_lc": "NeurIPS LC",
            "neurips_conv": "NeurIPS conv twin",
        },
    )
)

_register(
    Table(
        "mnist",
        "MNIST: ICLR 2018 Table 1 and the NeurIPS 2018 MNIST columns",
        "mnist",
        tuple(
            _rows("iclr2018/mnist", "iclr", "mnist", {"fc": (ICLR_TP, "fc"), "lc": (ICLR_TP, "lc")}, "ICLR T1", ICLR_T1)
            + _rows(
                "neurips2018/mnist",
                "neurips",
                "mnist",
                {"fc": (METHODS, "mnist_fc"), "lc": (METHODS, "mnist_lc"), "conv": (CONV_BP, "mnist_conv")},
                "NeurIPS",
                NEURIPS,
            )
        ),
        {"small": _small(4, 100, "train.angle_every_steps=50"), **_paper_budget()},
    )
)

_register(
    Table(
        "cifar10",
        "CIFAR-10 without augmentation: ICLR 2018 Table 2 (left) and its conv twin",
        "cifar10",
        tuple(
            _rows(
                "iclr2018/cifar10",
                "iclr",
                "cifar",
                {"fc": (ICLR_TP, "noaug_fc"), "lc": (ICLR_TP, "noaug_lc"), "conv": (CONV_BP, "noaug_conv")},
                "ICLR T2",
                ICLR_T2,
            )
        ),
        {"small": _small(4, 100), **_paper_budget()},
    )
)

_register(
    Table(
        "cifar10-aug",
        "CIFAR-10 with flips and random crops: ICLR 2018 Table 2 (right) and the NeurIPS CIFAR columns",
        "cifar10",
        tuple(
            _rows(
                "iclr2018/cifar10_aug",
                "iclr",
                "cifar",
                {"fc": (ICLR_TP, "aug_fc"), "lc": (ICLR_TP, "aug_lc")},
                "ICLR T2",
                ICLR_T2,
            )
            + _rows(
                "neurips2018/cifar10_aug",
                "neurips",
                "cifar",
                {"fc": (METHODS, "cifar_fc"), "lc": (METHODS, "cifar_lc"), "conv": (CONV_BP, "cifar_conv")},
                "NeurIPS",
                NEURIPS,
            )
        ),
        {"small": _small(4, 100), **_paper_budget()},
    )
)

_register(
    Table(
        "imagenet",
        "ImageNet: ICLR 2018 Table 3 and the NeurIPS 2018 ImageNet results",
        "imagenet",
        tuple(
            _rows(
                "iclr2018/imagenet",
                "iclr",
                "imagenet",
                {"lc": ((("dtp", "parallel"), ("sdtp", "parallel"), ("bp", None)), "lc")},
                "ICLR T3",
                ICLR_T3,
                imagenet=True,
            )
            + _rows(
                "neurips2018/imagenet",
                "neurips",
                "imagenet",
                {
                    "lc": (
                        (("dtp", "parallel"), ("dtp", "alternating"), ("sdtp", "parallel"), ("fa", None), ("bp", None)),
                        "lc",
                    ),
                    "conv": (CONV_BP, "conv"),
                },
                "NeurIPS",
                NEURIPS_IMAGENET,
                imagenet=True,
            )
        ),
        {"small": _small(2, 50, "train.angle_every_steps=0"), **_paper_budget()},
        top5=True,
        paper_note="ICLR reports top-1 only, after 18 epochs.",
    )
)


# ---- beyond the paper: later FA and TP variants, LC weight sharing (configs/later_rules) ----
LATER_RULES = ("signsym", "kp")
LATER_TP_RULES = ("ldrl", "drl")


def _later_rows(folder: str, kind: str, archs: tuple[str, ...], tp_rules: tuple[str, ...]) -> tuple[Row, ...]:
    """signsym and kp on each of the ICLR nets `archs`, the later TP rules `tp_rules` (parallel)
    on the LC net, then BP on the LC net with instant (lc_ws) and dynamic (lc_wsd) weight
    sharing every 10 steps."""
    rows = [
        Row(rule, None, arch, f"iclr_{kind}_{arch}", f"later_rules/{folder}/{arch}_{rule}.yaml")
        for arch in archs
        for rule in LATER_RULES
    ]
    rows += [
        Row(rule, "parallel", "lc", f"iclr_{kind}_lc", f"later_rules/{folder}/lc_{rule}.yaml") for rule in tp_rules
    ]
    rows.append(Row("bp", None, "lc_ws", f"iclr_{kind}_lc", f"later_rules/{folder}/lc_ws_bp.yaml"))
    rows.append(Row("bp", None, "lc_wsd", f"iclr_{kind}_lc", f"later_rules/{folder}/lc_wsd_bp.yaml"))
    return tuple(rows)


_LATER_TITLES = {
    "fc": "ICLR FC (7×240)",
    "lc": "ICLR LC",
    "lc_ws": "ICLR LC, weights shared every 10 steps",
    "lc_wsd": "ICLR LC, dynamic (anti-Hebbian) sharing every 10 steps",
}
_register(
    Table(
        "later-fashion-mnist",
        "Fashion-MNIST, beyond the paper: sign-symmetry, Kolen–Pollack, L-DRL, DRL, LC weight sharing",
        "fashion-mnist",
        _later_rows("fashion_mnist", "mnist", ("fc", "lc"), LATER_TP_RULES),
        {
            "small": TABLES["fashion-mnist"].budgets["small"],
            "full": Budget(
                epochs=30,
                seeds=3,
                search=Search(),
                one_seed=("fc_*",),
                overrides=("data.eval_batch_size_per_rank=500", "train.angle_every_steps=400"),
                note="the fashion-mnist table's full protocol (search over Table 4's Adam space, 30 epochs, "
                "model selection over 5 epochs); read next to that table's FA, BP and conv rows",
            ),
        },
        paper_note="No paper numbers: these rules and weight sharing came after the paper.",
        arch_titles=_LATER_TITLES,
    )
)
_register(
    Table(
        "later-imagenet",
        "ImageNet, beyond the paper: sign-symmetry, Kolen–Pollack, L-DRL, LC weight sharing on the ICLR LC net",
        "imagenet",
        # no DRL row: its loss runs the whole net above each layer forward and back
        # (configs/later_rules/imagenet/lc_ldrl.yaml)
        _later_rows("imagenet", "imagenet", ("lc",), ("ldrl",)),
        {"small": _small(2, 50, "train.angle_every_steps=0"), **_paper_budget()},
        top5=True,
        paper_note="No paper numbers; compare with the imagenet table's ICLR rows (same net, 18 epochs).",
        arch_titles=_LATER_TITLES,
    )
)


def get_table(name: str) -> Table:
    try:
        return TABLES[name]
    except KeyError:
        raise ValueError(f"unknown table {name!r}; known: {', '.join(TABLES)}") from None
