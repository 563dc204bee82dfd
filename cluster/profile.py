"""Cluster profiles: what a site's SLURM needs (partition, account, qos,
constraint, resources, time limit, requeue budget) kept in small YAML files,
so nothing site-specific is hard-coded.

A profile is found by name in `cluster/profiles/<name>.yaml` or given as a
path; `BIOSCALE_PROFILE` picks the default (else `local`, the single-node
cluster of `cluster/local_slurm.sh`). Command-line options override single
keys (`--partition`, `--gpus-per-node`, ...).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bioscale.data_pipeline.errors import UserError

PROFILE_DIR = Path(__file__).resolve().parent / "profiles"
DEFAULT_PROFILE = "local"


class ProfileError(UserError, ValueError):
    """A missing or malformed cluster profile; the message names the file and key."""

    exit_code = 2


@dataclass
class ClusterProfile:
    description: str = ""
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    nodes: int = 1
    gpus_per_node: int = 0
    tasks_per_node: int = 1
    cpus_per_task: int = 1
    mem_gb: float | None = None
    timeout_min: int = 60
    max_num_timeout: int = 3
    signal_delay_s: int = 90
    setup: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    source: str = "<defaults>"

    @property
    def tasks(self) -> int:
        """Training processes per node: one per GPU on GPU nodes."""
        return self.gpus_per_node if self.gpus_per_node > 0 else self.tasks_per_node

    @property
    def world_size(self) -> int:
        return self.nodes * self.tasks

    def with_overrides(self, **overrides: Any) -> ClusterProfile:
        """A copy with the given keys replaced; None values are ignored (an
        option not given on the command line)."""
        given = {k: v for k, v in overrides.items() if v is not None}
        bad = sorted(set(given) - _field_names())
        if bad:
            raise ProfileError(f"unknown profile key(s) {bad}")
        new = dataclasses.replace(self, **given)
        if given:
            new.source = f"{self.source} + command line ({', '.join(sorted(given))})"
        new.validate()
        return new

    def validate(self) -> None:
        def fail(key: str, problem: str) -> None:
            raise ProfileError(f"{self.source}: {key} = {getattr(self, key)!r}: {problem}")

        for key in ("nodes", "tasks_per_node", "cpus_per_task", "timeout_min"):
            if getattr(self, key) < 1:
                fail(key, "must be >= 1")
        for key in ("gpus_per_node", "max_num_timeout", "signal_delay_s"):
            if getattr(self, key) < 0:
                fail(key, "must be >= 0")
        if self.mem_gb is not None and self.mem_gb <= 0:
            fail("mem_gb", "must be > 0 (or null for the partition's default)")
        if self.signal_delay_s >= self.timeout_min * 60:
            fail("signal_delay_s", f"must be shorter than the time limit ({self.timeout_min} min)")

    def executor_parameters(self) -> dict[str, Any]:
        """Parameters for `submitit.AutoExecutor.update_parameters` (SLURM)."""
        params: dict[str, Any] = {
            "nodes": self.nodes,
            "tasks_per_node": self.tasks,
            "cpus_per_task": self.cpus_per_task,
            "timeout_min": self.timeout_min,
            "slurm_signal_delay_s": self.signal_delay_s,
        }
        if self.gpus_per_node:
            params["gpus_per_node"] = self.gpus_per_node
        if self.mem_gb is not None:
            params["mem_gb"] = self.mem_gb
        for key in ("partition", "account", "qos", "constraint"):
            if getattr(self, key):
                params[f"slurm_{key}"] = getattr(self, key)
        # Every training process uses exactly its CPUs: without this, each of
        # N tasks on a node starts one thread per core and they fight.
        params["slurm_setup"] = [f"export OMP_NUM_THREADS={self.cpus_per_task}", *self.setup]
        # Requeue must be allowed explicitly on sites whose default is JobRequeue=0.
        params["slurm_additional_parameters"] = {"requeue": True, **self.extra}
        return params

    def describe(self) -> str:
        where = " ".join(
            f"{k}={getattr(self, k)}" for k in ("partition", "account", "qos", "constraint") if getattr(self, k)
        )
        gpus = f", {self.gpus_per_node} GPU(s)/node" if self.gpus_per_node else ""
        return (
            f"{self.nodes} node(s) × {self.tasks} task(s){gpus}, {self.cpus_per_task} CPU(s)/task, "
            f"{self.timeout_min} min{', ' + where if where else ''} [{self.source}]"
        )


def _field_names() -> set[str]:
    return {f.name for f in dataclasses.fields(ClusterProfile)} - {"source"}


def available_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.yaml"))


def resolve_profile_path(name: str | None) -> Path:
    name = name or os.environ.get("BIOSCALE_PROFILE") or DEFAULT_PROFILE
    path = Path(name).expanduser()
    if path.suffix in (".yaml", ".yml") or os.sep in name:
        if not path.is_file():
            raise ProfileError(f"cluster profile file {path} does not exist")
        return path
    path = PROFILE_DIR / f"{name}.yaml"
    if not path.is_file():
        known = available_profiles()
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ProfileError(
            f"unknown cluster profile {name!r}{hint}; known: {', '.join(known)} "
            f"(in {PROFILE_DIR}), or pass a path to a YAML file"
        )
    return path


def load_profile(name: str | None = None, **overrides: Any) -> ClusterProfile:
    """Read a profile by name or path, apply command-line overrides, validate."""
    path = resolve_profile_path(name)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ProfileError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ProfileError(f"{path}: the top level must be a mapping of profile keys")
    known = _field_names()
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(str(key), sorted(known), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ProfileError(f"{path}: unknown profile key {key!r}{hint}; known: {', '.join(sorted(known))}")
    hints: dict[str, str] = {}
    for f in dataclasses.fields(ClusterProfile):
        # `from __future__ import annotations`: every field's type is its annotation string
        assert isinstance(f.type, str), (f.name, f.type)
        hints[f.name] = f.type
    for key, value in data.items():
        _check_type(path, key, value, hints[key])
    profile = ClusterProfile(**data, source=str(path))
    profile.validate()
    return profile.with_overrides(**overrides)


def _check_type(path: Path, key: str, value: Any, annotation: str) -> None:
    # The annotations are strings (postponed evaluation); a small table suffices.
    expected: tuple[type, ...] = {
        "str": (str,),
        "str | None": (str, type(None)),
        "int": (int,),
        "float | None": (int, float, type(None)),
        "list[str]": (list,),
        "dict[str, Any]": (dict,),
    }[annotation]
    if isinstance(value, bool) or not isinstance(value, expected):
        raise ProfileError(f"{path}: {key}: expected {annotation}, got {type(value).__name__} {value!r}")
    if annotation == "list[str]":
        assert isinstance(value, list)  # checked against (list,) above
        if not all(isinstance(v, str) for v in value):
            raise ProfileError(f"{path}: {key}: expected a list of shell lines (strings)")
