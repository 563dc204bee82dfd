"""What defines a sweep (`SweepSpec`, stored as sweep.json in its directory at the first
run) and building one from command-line values (`make_spec`). A re-run must give the same
spec: `differences` names what changed. Driving the sweep is sweep.py."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bioscale.cluster.search_space import load_space
from bioscale.training.config import ConfigError
from bioscale.training.config_loader import load_config


@dataclass
class SweepSpec:
    """What defines a sweep; stored in sweep.json at the first run."""

    config: str | None
    overrides: list[str]
    data: str
    space: dict[str, Any]
    space_source: str
    trials: int
    seed: int
    epochs: int
    prune_after_epochs: int | list[int] | None = None
    """End of each pruning stage (successive halving: e.g. [3, 10]); the last stage ends at `epochs`."""
    keep: int | list[int] = 1
    """Trials that continue after each pruning stage (one per entry of prune_after_epochs)."""
    name: str = "sweep"
    base_config: dict[str, Any] = field(default_factory=dict)
    """The merged config (file + overrides) at creation: every trial and stage
    is built from this copy (base_config.yaml), so editing the YAML file later
    cannot change a running sweep; a re-run with a changed file is refused."""

    def __post_init__(self):
        if self.trials < 1:
            raise ConfigError(f"--trials must be >= 1, got {self.trials}")
        if self.epochs < 1:
            raise ConfigError(f"--epochs must be >= 1, got {self.epochs}")
        after, keeps = _as_list(self.prune_after_epochs), _as_list(self.keep)
        if after:
            if len(keeps) != len(after):
                raise ConfigError(f"--keep needs one value per --prune-after-epochs stage ({after}), got {keeps}")
            if after != sorted(set(after)) or not 1 <= after[0] or after[-1] >= self.epochs:
                raise ConfigError(
                    f"--prune-after-epochs must increase within [1, epochs={self.epochs}), "
                    f"got {self.prune_after_epochs}"
                )
            if keeps != sorted(keeps, reverse=True) or keeps[-1] < 1:
                raise ConfigError(f"--keep must be >= 1 and not grow from stage to stage, got {self.keep}")

    @property
    def pruning(self) -> bool:
        return bool(_as_list(self.prune_after_epochs)) and _as_list(self.keep)[0] < self.trials

    @property
    def stages(self) -> list[int]:
        """The epochs each stage trains to; the last is `epochs` (one stage without pruning)."""
        return [*_as_list(self.prune_after_epochs), self.epochs] if self.pruning else [self.epochs]

    @property
    def keeps(self) -> list[int]:
        """How many trials continue after each stage but the last."""
        return _as_list(self.keep) if self.pruning else []


def differences(stored: dict, now: dict, prefix: str = "") -> list[str]:
    """Leaf-level differences of two nested dicts ('base_config.optim.forward.lr: stored 0.001, now 0.002')."""
    out = []
    for key in dict.fromkeys([*stored, *now]):
        a, b = stored.get(key), now.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: stored {a!r}, now {b!r}")
    return out


def _as_list(value: int | list[int] | None) -> list[int]:
    return [] if value is None else [value] if isinstance(value, int) else list(value)


def make_spec(
    config: str | None,
    overrides: list[str],
    data: str,
    space: str,
    trials: int,
    seed: int,
    epochs: int | None,
    prune_after_epochs: int | list[int] | None,
    keep: int | list[int],
    name: str | None,
) -> SweepSpec:
    """A new sweep's spec from command-line values (paths made absolute; a one-stage
    pruning stored as plain numbers, as sweeps always stored it)."""
    if isinstance(prune_after_epochs, list) and len(prune_after_epochs) == 1:
        prune_after_epochs = prune_after_epochs[0]
    if isinstance(keep, list) and len(keep) == 1:
        keep = keep[0]
    base = load_config(config, overrides)
    resolved_space = load_space(space, base.algorithm.rule)
    base_dict = base.to_dict()
    base_dict["data"]["path"], base_dict["out"] = None, None  # set per trial
    return SweepSpec(
        config=str(Path(config).resolve()) if config else None,
        overrides=list(overrides),
        data=str(Path(data).resolve()),
        space=resolved_space,
        space_source=space if space == "paper" else str(Path(space).resolve()),
        trials=trials,
        seed=seed,
        epochs=epochs or base.train.epochs,
        prune_after_epochs=prune_after_epochs,
        keep=keep,
        name=name or base.name,
        base_config=base_dict,
    )
