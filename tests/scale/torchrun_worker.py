"""Started by torchrun (test_multinode.py): joins the job from the launcher's environment,
runs a 2-stage × 2-replica pipeline and writes this rank's result to OUT_DIR/rank<r>.pt."""

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # torchrun runs this file as a script

from bioscale.distributed import exit_process, init_distributed, read_environment  # noqa: E402
from tests.scale.workers import pipeline_jobs  # noqa: E402

env = read_environment()
init_distributed(env, backend="gloo", timeout_s=120)
torch.set_num_threads(1)
jobs = [
    dict(
        rule=rule,
        steps=int(os.environ["STEPS"]),
        batch=int(os.environ["BATCH"]),
        stages=2,
        data_parallel=2,
        micro_batches=2,
    )
    for rule in ("bp", "sdtp")
]
jobs.append(dict(jobs[1], mode="decoupled"))
result = {"jobs": pipeline_jobs(jobs), "node_rank": env.node_rank, "local_rank": env.local_rank}
torch.save(result, Path(os.environ["OUT_DIR"]) / f"rank{env.rank}.pt")
exit_process(0)  # a plain exit after gloo work sometimes aborts
