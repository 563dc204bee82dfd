"""Instant weight sharing on DeepSpeed (2 gloo ranks, torchrun): at ZeRO 0-3 every LC layer
(the 4 forward layers and the 3 transposed layers of SDTP's inverses) holds one filter after
a sharing event, in the module's weights (gathered under ZeRO-3, where they are
partitioned) and in the optimizer's fp32 master copy (ZeRO 1-3); the next step moves them
by about one learning rate only, so the master copy did not restore the untied weights.
And KP's decoupled decay relation holds on the engine at every stage."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.training.test_multiprocess import free_port

WORKER = Path(__file__).with_name("weight_sharing_worker.py")


def _run_worker(mode: str) -> list[dict]:
    """The worker on 2 torchrun ranks at ZeRO 0-3; one result line per stage."""
    exe = Path(sys.executable).with_name("torchrun")
    cmd = [str(exe), "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(free_port())]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(WORKER.parents[2])}
    proc = subprocess.run([*cmd, str(WORKER), "0,1,2,3", mode], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [r["stage"] for r in results] == [0, 1, 2, 3]
    return results


def test_sharing_reaches_module_and_master_weights_at_every_zero_stage():
    results = _run_worker("sdtp")
    lr = 1e-3
    for r in results:
        stage = r["stage"]
        assert r["shared"] == 7
        assert min(r["before"]) > 0.05, r  # untied before
        assert max(r["after"]) < 1e-6, r  # one filter per layer after
        if stage:
            assert max(r["master"]) < 1e-6, r  # ... in the master copy too
        assert max(r["next_step"]) < 3 * lr, r  # one Adam step from shared, not back to untied
        assert all(r["partitioned"]) == (stage == 3)


def test_kp_decay_relation_on_the_engine_at_every_zero_stage():
    """KP through DeepSpeed (its own param groups, from algorithms.optim.param_groups): B − W
    shrinks by exactly (1 − lr·λ) per step at ZeRO 0-3 (fp32 rounding), while W learns; at
    ZeRO-3 B is partitioned with W and read inside the layer's module call."""
    results = _run_worker("kp")
    for r in results:
        assert r["relative_error"] < 1e-5 and r["min_weight_change"] > 1e-4, r
