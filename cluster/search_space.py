"""Hyperparameter search spaces and seeded random sampling.

The paper's space (ICLR 2018 appendix, Table 4; the NeurIPS version uses the
same ranges): Adam learning rates log-uniform in [1e-5, 3e-4], β1 fixed to 0.9
(the config default), β2 ∈ {0.99, 0.999}, ε ∈ {1e-4, 1e-6, 1e-8}, for the
forward optimizer and, for the target-propagation rules, the inverse one too;
σ (inverse-training noise) uniform in [0.01, 0.3] for TP rules; α (DTP's
penultimate target step) uniform in [0.01, 0.2] for DTP. Backprop searched
only its forward optimizer; FA/DFA have no inverses, so the same holds.
Our α multiplies the gradient of the *summed* batch loss (algorithms/config.py),
so the published α range transfers only as far as that convention matches.

A space file is YAML mapping config keys to distributions:

    optim.forward.lr: {log_uniform: [1.0e-5, 3.0e-4]}
    optim.forward.beta2: {choice: [0.99, 0.999]}
    algorithm.sigma: {uniform: [0.01, 0.3]}
    train.epochs: 20            # a plain value is a constant

Sampling is a pure function of (space, seed, trial index): trial 7 of a sweep
gets the same values whether the sweep has 10 trials or 60.
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import yaml

from bioscale.algorithms.config import TP_RULES
from bioscale.training.config import ConfigError

DISTRIBUTIONS = ("log_uniform", "uniform", "choice")
SIGNIFICANT_DIGITS = 4  # sampled floats are rounded: readable configs, exact text round trip

_ADAM = {
    "lr": {"log_uniform": [1e-5, 3e-4]},
    "beta2": {"choice": [0.99, 0.999]},
    "eps": {"choice": [1e-4, 1e-6, 1e-8]},
}


def paper_space(rule: str) -> dict[str, Any]:
    """Table 4 for one learning rule (keys are config keys)."""
    space = {f"optim.forward.{k}": v for k, v in _ADAM.items()}
    if rule in TP_RULES:
        space.update({f"optim.inverse.{k}": v for k, v in _ADAM.items()})
        space["algorithm.sigma"] = {"uniform": [0.01, 0.3]}
    if rule == "dtp":
        space["algorithm.alpha"] = {"uniform": [0.01, 0.2]}
    return space


def load_space(spec: str, rule: str) -> dict[str, Any]:
    """`paper` (Table 4 for `rule`) or the path of a space YAML file; checked."""
    if spec == "paper":
        space = paper_space(rule)
        source = f"the paper's space for {rule}"
    else:
        path = Path(spec)
        try:
            space = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"--space {spec}: cannot read it ({exc.strerror}); use 'paper' or a YAML file") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(space, dict) or not space:
            raise ConfigError(f"{path}: a search space is a non-empty mapping of config keys to distributions")
        source = str(path)
    for key, dist in space.items():
        _check_distribution(source, str(key), dist)
    return space


def _check_distribution(source: str, key: str, dist: Any) -> None:
    if not isinstance(dist, dict):
        return  # a constant
    if len(dist) != 1 or next(iter(dist)) not in DISTRIBUTIONS:
        raise ConfigError(
            f"{source}: {key}: a distribution is one of {{log_uniform: [lo, hi]}}, "
            f"{{uniform: [lo, hi]}}, {{choice: [a, b, ...]}}; got {dist!r}"
        )
    kind, args = next(iter(dist.items()))
    if not isinstance(args, list) or not args:
        raise ConfigError(f"{source}: {key}: {kind} needs a list, got {args!r}")
    if kind == "choice":
        return
    if len(args) != 2 or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args):
        raise ConfigError(f"{source}: {key}: {kind} needs [low, high] numbers, got {args!r}")
    lo, hi = args
    if not lo < hi:
        raise ConfigError(f"{source}: {key}: {kind} needs low < high, got {args!r}")
    if kind == "log_uniform" and lo <= 0:
        raise ConfigError(f"{source}: {key}: log_uniform needs low > 0, got {args!r}")


def _round(x: float) -> float:
    return float(f"{x:.{SIGNIFICANT_DIGITS}g}")


def sample(space: dict[str, Any], seed: int, trial: int) -> dict[str, Any]:
    """One configuration: {config key: value}, in the space's key order."""
    rng = random.Random(f"bioscale-sweep/{seed}/{trial}")  # str seeds are stable across runs and platforms
    values: dict[str, Any] = {}
    for key, dist in space.items():
        if not isinstance(dist, dict):
            values[key] = dist
            continue
        kind, args = next(iter(dist.items()))
        if kind == "choice":
            values[key] = rng.choice(args)
        elif kind == "uniform":
            values[key] = _round(rng.uniform(args[0], args[1]))
        else:
            values[key] = _round(math.exp(rng.uniform(math.log(args[0]), math.log(args[1]))))
    return values


def as_overrides(values: dict[str, Any]) -> list[str]:
    """{key: value} -> ['key=value', ...] in the form `load_config` parses back exactly."""
    return [
        f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"
        for key, value in values.items()
    ]
