"""Start N local gloo ranks running one function and collect what each returns — for the
scale benchmark and tests on one machine (a cluster uses torchrun / SLURM and
`read_environment` instead).

forkserver with torch preloaded: a child starts in ~0.1 s instead of re-importing torch
(~1.5 s of CPU each, which matters on a 2-core machine), and unlike plain fork it never
inherits an initialised OpenMP pool from the parent (GNU OpenMP is not fork-safe)."""

from __future__ import annotations

import multiprocessing as mp
import socket
import tempfile
import traceback
from pathlib import Path

import torch

from bioscale.data_pipeline.atomic_files import atomic_open
from bioscale.distributed.environment import DistEnv
from bioscale.distributed.process_group import exit_process, init_distributed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child(fn, rank: int, world: int, port: int, out: str, args: tuple, threads: int) -> None:
    try:
        torch.set_num_threads(threads)
        env = DistEnv(
            rank=rank,
            local_rank=rank,
            world_size=world,
            local_world_size=world,
            master_addr="127.0.0.1",
            master_port=port,
            launcher="torchrun",
        )
        # require_group: DeepSpeed needs a group (and the env:// variables) even on one rank.
        init_distributed(env, backend="gloo", timeout_s=300, require_group=True)
        result = fn(*args)
        with atomic_open(Path(out) / f"rank{rank}.pt", "wb") as f:  # the parent reads it back
            torch.save(result, f)
    except BaseException:
        traceback.print_exc()
        exit_process(1)
    # exit_process: a plain interpreter exit after gloo work sometimes aborts.
    exit_process(0)


def run_ranks(fn, world_size: int, *args, threads: int = 1, timeout_s: float = 600) -> list:
    """Run `fn(*args)` on `world_size` fresh gloo ranks; returns their results by rank.
    `fn` must be importable (module level). Raises if any rank fails or times out."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "torch.distributed", "bioscale.distributed.pipeline"])
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="bioscale_ranks_") as out:
        procs = [
            ctx.Process(target=_child, args=(fn, r, world_size, port, out, args, threads)) for r in range(world_size)
        ]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout_s)
        failed = [r for r, p in enumerate(procs) if p.exitcode != 0]
        for p in procs:
            if p.is_alive():
                p.kill()
        if failed:
            raise RuntimeError(
                f"ranks {failed} of {world_size} failed running {fn.__qualname__} "
                f"(exit codes {[p.exitcode for p in procs]}); see their stderr above"
            )
        return [torch.load(Path(out) / f"rank{r}.pt", weights_only=False) for r in range(world_size)]
