"""Worker started by test_environment.py under a real launcher (torchrun, or
two processes with SLURM variables): reads its environment, joins a gloo
group, all-reduces its rank + 1 and writes what it saw to OUT_DIR/rank<r>.json."""

import json
import os
from dataclasses import asdict

import torch

from bioscale.distributed import all_reduce_sum, exit_process, init_distributed, is_main_process, read_environment

env = read_environment()
started = init_distributed(env, backend="gloo", timeout_s=60)
total = all_reduce_sum(torch.tensor([float(env.rank + 1)]))
record = dict(asdict(env), started=started, total=total.item(), is_main=is_main_process())
with open(os.path.join(os.environ["OUT_DIR"], f"rank{env.rank}.json"), "w") as f:
    json.dump(record, f)
# Always leave through exit_process: a plain interpreter exit after gloo work sometimes
# aborts ("terminate called without an active exception", seen in CI on this test).
exit_process(0)
