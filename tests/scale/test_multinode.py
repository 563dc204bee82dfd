"""S × D = 2 × 2 across two rendezvous "nodes" on this machine: two torchrun invocations
(--nnodes 2 --nproc-per-node 2, --node-rank 0 and 1, rendezvous on 127.0.0.1). Stage-major
placement puts each stage's two replicas on one node; the pipeline crosses nodes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bioscale.distributed.pipeline_launch import free_port
from tests.scale.test_pipeline import assert_same
from tests.scale.workers import reference

STEPS, BATCH = 4, 16
WORKER = Path(__file__).with_name("torchrun_worker.py")


def test_two_nodes_of_two_ranks_match_single_process(tmp_path):
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OUT_DIR": str(tmp_path), "STEPS": str(STEPS), "BATCH": str(BATCH)}
    torchrun = Path(sys.executable).with_name("torchrun")
    nodes = [
        subprocess.Popen(
            [
                str(torchrun),
                "--nnodes",
                "2",
                "--nproc-per-node",
                "2",
                "--node-rank",
                str(n),
                "--master-addr",
                "127.0.0.1",
                "--master-port",
                str(port),
                str(WORKER),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for n in (0, 1)
    ]
    logs = [p.communicate(timeout=300)[0] for p in nodes]
    assert [p.returncode for p in nodes] == [0, 0], "\n".join(logs)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(4)]
    # stage-major: ranks 0, 1 (node 0) are stage 0's replicas, ranks 2, 3 (node 1) stage 1's
    assert [r["node_rank"] for r in ranks] == [0, 0, 1, 1]
    assert [r["jobs"][0]["layers"] for r in ranks][::2] == [[1, 2], [3, 4, 5]]
    for i, rule in enumerate(("bp", "sdtp")):
        ref, ref_losses = reference(rule, STEPS, BATCH)
        for replica in (0, 1):
            state = {**ranks[replica]["jobs"][i]["state"], **ranks[2 + replica]["jobs"][i]["state"]}
            assert_same(state, ref)
        print(
            f"{rule}: loss curve 2x2 {[round(v, 4) for v in ranks[0]['jobs'][i]['loss']]}, "
            f"single process {[round(v, 4) for v in ref_losses]}"
        )
        assert ranks[0]["jobs"][i]["loss"] == pytest.approx(ref_losses, rel=1e-9)
    # decoupled with data parallelism: replicas all-reduce after every micro-batch and stay
    # identical; stage 0 is one step stale, stage 1 never
    dec = [r["jobs"][2] for r in ranks]
    for a, b in ((dec[0], dec[1]), (dec[2], dec[3])):
        assert all(torch.equal(a["state"][k], b["state"][k]) for k in a["state"])
    assert [d["staleness"]["max"] for d in dec] == [1, 1, 0, 0]
