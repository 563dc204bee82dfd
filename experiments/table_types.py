"""The data types a results table is made of: rows (method x architecture, the config that
runs each), the paper's number for a row, budgets (how long rows train, whether a search
comes first) and the table itself. The registered tables are in tables.py."""

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
    other_net: bool = False
    """The paper ran this method on another net than the row's (named in `source`); the
    Markdown table marks its cell with †."""


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
