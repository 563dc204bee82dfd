"""The one place that reads the process environment: who am I, how many of us
are there, and where is rank 0 (single process, torchrun, DeepSpeed launcher,
SLURM srun).

Nothing else in bioscale reads RANK / SLURM_* variables: everything downstream
takes a `DistEnv`. `read_environment` accepts a mapping so that every launcher
can be tested without being that launcher.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass

from bioscale.data_pipeline.errors import UserError

LAUNCHERS = ("single", "torchrun", "slurm", "deepspeed")

# Ports derived from a SLURM job id land in [15000, 30000): below the Linux
# ephemeral range (32768+) so an outgoing connection never holds our port, and
# two jobs sharing a node get different ports unless their ids differ by a
# multiple of the span.
_PORT_BASE = 15000
_PORT_SPAN = 15000
DEFAULT_MASTER_PORT = 29500


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    """Global rank of this process, 0 .. world_size-1."""
    local_rank: int = 0
    """Rank among the processes on this node (selects the GPU)."""
    world_size: int = 1
    """Number of processes in the job."""
    local_world_size: int = 1
    """Number of processes on this node."""
    node_rank: int = 0
    """Index of this node among the job's nodes."""
    master_addr: str = "127.0.0.1"
    """Host of rank 0, where the rendezvous store listens."""
    master_port: int = DEFAULT_MASTER_PORT
    """Port of the rendezvous store."""
    launcher: str = "single"
    """single | torchrun | slurm | deepspeed: who started this process."""
    slurm_job_id: str | None = None
    """SLURM job id when running inside an allocation (any launcher), else None."""
    restart_count: int = 0
    """SLURM_RESTART_COUNT: how many times SLURM requeued this job (0 outside SLURM)."""
    is_tty: bool = False
    """Whether stderr is a terminal (progress bar) or a log file (periodic lines)."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def num_nodes(self) -> int:
        return max(1, self.world_size // max(1, self.local_world_size))


class LaunchEnvironmentError(UserError, RuntimeError):
    """Missing or inconsistent launcher variables (e.g. RANK >= WORLD_SIZE)."""

    exit_code = 2


def _int(environ: Mapping[str, str], key: str, default: int | None = None) -> int:
    raw = environ.get(key)
    if raw is None or raw == "":
        if default is None:
            raise LaunchEnvironmentError(f"environment variable {key} is not set")
        return default
    try:
        return int(raw)
    except ValueError:
        raise LaunchEnvironmentError(f"environment variable {key}={raw!r} is not an integer") from None


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside [...]."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced ']' in nodelist {text!r}")
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth != 0:
        raise ValueError(f"unbalanced '[' in nodelist {text!r}")
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def _expand_ranges(spec: str, nodelist: str) -> list[str]:
    """'01-03,07' -> ['01', '02', '03', '07'], keeping zero padding."""
    out = []
    for item in spec.split(","):
        item = item.strip()
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", item)
        if not m:
            raise ValueError(f"bad range {item!r} in nodelist {nodelist!r}")
        lo, hi = m.group(1), m.group(2) or m.group(1)
        if int(hi) < int(lo):
            raise ValueError(f"descending range {item!r} in nodelist {nodelist!r}")
        width = len(lo) if lo.startswith("0") else 0
        out += [str(n).zfill(width) for n in range(int(lo), int(hi) + 1)]
    return out


def _expand_host(pattern: str, nodelist: str) -> list[str]:
    m = re.search(r"\[([^\[\]]*)\]", pattern)
    if not m:
        return [pattern]
    head, tail = pattern[: m.start()], pattern[m.end() :]
    # A pattern may hold several bracket groups (rack[1-2]-n[01-02]): the later
    # groups are expanded recursively, giving SLURM's order (last varies fastest).
    return [
        head + value + rest for value in _expand_ranges(m.group(1), nodelist) for rest in _expand_host(tail, nodelist)
    ]


def expand_nodelist(nodelist: str) -> list[str]:
    """Expand a SLURM hostlist such as 'node[01-03,07],gpu5' into host names,
    in SLURM's order (the first host runs rank 0)."""
    hosts: list[str] = []
    for pattern in _split_top_level(nodelist):
        hosts += _expand_host(pattern, nodelist)
    return hosts


def _tasks_per_node(spec: str) -> list[int]:
    """'2(x3),1' -> [2, 2, 2, 1] (SLURM_TASKS_PER_NODE format)."""
    counts: list[int] = []
    for item in spec.split(","):
        m = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", item)
        if not m:
            raise LaunchEnvironmentError(f"cannot parse tasks-per-node {spec!r}")
        counts += [int(m.group(1))] * int(m.group(2) or 1)
    return counts


def _port_from_job_id(job_id: str | None) -> int:
    digits = re.sub(r"\D", "", job_id or "")  # array jobs look like '1234_7'
    if not digits:
        return DEFAULT_MASTER_PORT
    return _PORT_BASE + int(digits) % _PORT_SPAN


def _slurm_job_id(environ: Mapping[str, str]) -> str | None:
    return environ.get("SLURM_JOB_ID") or environ.get("SLURM_JOBID") or None


def _from_rank_variables(environ: Mapping[str, str], launcher: str) -> dict:
    """torchrun and the DeepSpeed launcher both export the env:// variables."""
    world = _int(environ, "WORLD_SIZE")
    local_world = _int(environ, "LOCAL_WORLD_SIZE", _int(environ, "LOCAL_SIZE", world))
    return dict(
        rank=_int(environ, "RANK"),
        local_rank=_int(environ, "LOCAL_RANK", 0),
        world_size=world,
        local_world_size=local_world,
        node_rank=_int(environ, "GROUP_RANK", _int(environ, "CROSS_RANK", 0)),
        master_addr=environ.get("MASTER_ADDR") or "127.0.0.1",
        master_port=_int(environ, "MASTER_PORT", DEFAULT_MASTER_PORT),
        launcher=launcher,
    )


def _from_slurm(environ: Mapping[str, str]) -> dict:
    # Inside `srun` the step's own variables describe the processes actually
    # started; the job-level ones describe the whole allocation.
    world = _int(environ, "SLURM_STEP_NUM_TASKS", _int(environ, "SLURM_NTASKS", 1))
    node_rank = _int(environ, "SLURM_NODEID", 0)
    per_node_spec = environ.get("SLURM_STEP_TASKS_PER_NODE") or environ.get("SLURM_TASKS_PER_NODE")
    nnodes = _int(environ, "SLURM_STEP_NUM_NODES", _int(environ, "SLURM_NNODES", 1))
    if per_node_spec:
        counts = _tasks_per_node(per_node_spec)
        local_world = counts[node_rank] if node_rank < len(counts) else counts[-1]
    else:
        local_world = max(1, world // max(1, nnodes))
    nodelist = environ.get("SLURM_STEP_NODELIST") or environ.get("SLURM_JOB_NODELIST") or environ.get("SLURM_NODELIST")
    master = environ.get("MASTER_ADDR") or (expand_nodelist(nodelist)[0] if nodelist else "127.0.0.1")
    port = _int(environ, "MASTER_PORT", _port_from_job_id(_slurm_job_id(environ)))
    return dict(
        rank=_int(environ, "SLURM_PROCID"),
        local_rank=_int(environ, "SLURM_LOCALID", 0),
        world_size=world,
        local_world_size=local_world,
        node_rank=node_rank,
        master_addr=master,
        master_port=port,
        launcher="slurm",
    )


def detect_launcher(environ: Mapping[str, str]) -> str:
    """Which launcher started this process. Order matters: torchrun or the
    DeepSpeed launcher run *inside* a SLURM allocation also see SLURM_* variables,
    and then their own RANK/WORLD_SIZE are the truth."""
    if "RANK" in environ and "WORLD_SIZE" in environ:
        # deepspeed.launcher.launch exports LOCAL_SIZE / CROSS_RANK; torchrun
        # exports TORCHELASTIC_RUN_ID / LOCAL_WORLD_SIZE instead.
        if "TORCHELASTIC_RUN_ID" not in environ and ("LOCAL_SIZE" in environ or "CROSS_RANK" in environ):
            return "deepspeed"
        return "torchrun"
    # A batch script has SLURM_PROCID=0 and SLURM_NTASKS=N but is one process;
    # only `srun` (a job step) starts the N tasks, and it sets SLURM_STEP_ID.
    if "SLURM_PROCID" in environ and ("SLURM_STEP_ID" in environ or "SLURM_STEPID" in environ):
        return "slurm"
    return "single"


def read_environment(environ: Mapping[str, str] | None = None, *, isatty: bool | None = None) -> DistEnv:
    """Read the launcher's variables (`os.environ` by default) into a `DistEnv`.
    `isatty` defaults to whether this process's stderr is a terminal."""
    environ = os.environ if environ is None else environ
    launcher = detect_launcher(environ)
    if launcher == "slurm":
        fields = _from_slurm(environ)
    elif launcher in ("torchrun", "deepspeed"):
        fields = _from_rank_variables(environ, launcher)
    else:
        fields = dict(
            launcher="single",
            master_addr=environ.get("MASTER_ADDR") or "127.0.0.1",
            master_port=_int(environ, "MASTER_PORT", DEFAULT_MASTER_PORT),
        )
    env = DistEnv(
        **fields,
        slurm_job_id=_slurm_job_id(environ),
        restart_count=_int(environ, "SLURM_RESTART_COUNT", 0),
        is_tty=sys.stderr.isatty() if isatty is None else isatty,
    )
    _check(env)
    return env


def _check(env: DistEnv) -> None:
    where = f"({env.launcher} launcher)"
    if env.world_size < 1:
        raise LaunchEnvironmentError(f"world size {env.world_size} < 1 {where}")
    if not 0 <= env.rank < env.world_size:
        raise LaunchEnvironmentError(f"rank {env.rank} outside [0, {env.world_size}) {where}")
    if not 0 <= env.local_rank < max(env.local_world_size, 1):
        raise LaunchEnvironmentError(f"local rank {env.local_rank} outside [0, {env.local_world_size}) {where}")
    if not 0 < env.master_port < 65536:
        raise LaunchEnvironmentError(f"master port {env.master_port} out of range {where}")
