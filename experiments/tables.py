"""The registered tables: which rows (method × architecture) each has, which config under
configs/ runs each row, what the paper reported for it (paper_numbers.py) and the budgets it
can run at (the types are in table_types.py).

Row configs follow one naming scheme, so a row is (rule, schedule, architecture label):
    configs/<iclr2018|neurips2018>/<dataset>/<arch>_<rule>[_<schedule>].yaml   the papers' rows
    configs/fashion_mnist/[neurips_]<arch>_<rule>[_alt].yaml                    our stand-in table
    configs/later_rules/<dataset>/<arch>_<rule>.yaml                            beyond the paper"""

from __future__ import annotations

from bioscale.experiments.paper_numbers import ICLR_T1, ICLR_T2, ICLR_T3, ICLR_TP, NEURIPS, NEURIPS_IMAGENET
from bioscale.experiments.table_types import METHODS, Budget, PaperResult, Row, Search, Table


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
                other_net = same is None and version == "iclr"
                if other_net:  # not run on the ICLR nets: the NeurIPS net's numbers
                    same = NEURIPS[f"mnist_{arch}"].get((rule, schedule))
                    src = f"NeurIPS, {arch.upper()} net 'neurips_mnist_{arch}'"
                else:
                    src = f"{paper_src} MNIST"
                paper = PaperResult(src, *same, other_net=other_net) if same else None
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
        paper_note="The paper numbers are its MNIST results on the same net, or (†) on the NeurIPS "
        "version's net of the same kind where the ICLR paper did not run the method (Fashion-MNIST is "
        "harder: expect several times their error); they orient the ranking, not the level.",
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
