"""Pipeline stages on real gloo processes equal one process with the global batch
(synchronous mode, float64), and the decoupled mode runs and reports its staleness."""

from __future__ import annotations

import pytest
import torch

from bioscale.distributed.pipeline_launch import run_ranks
from bioscale.distributed.pipeline_schedule import PipelineConfig, one_f_one_b, partition
from tests.scale.workers import pipeline_jobs, reference

STEPS, BATCH = 3, 16


def merge(results: list[list[dict]], job: int) -> dict:
    state = {}
    for rank in results:
        state.update(rank[job]["state"])
    return state


def assert_same(state: dict, ref: dict, tol: float = 1e-5) -> None:
    missing = set(ref) - set(state)
    assert not missing, f"no stage holds {sorted(missing)}"
    worst = max((state[k] - ref[k]).abs().max().item() for k in ref)
    assert worst <= tol, f"max |pipeline − single process| = {worst:.2e}"


def test_plan_is_contiguous_balanced_and_1f1b():
    assert partition([5, 5, 5, 5, 1], 2) == [range(0, 2), range(2, 5)]
    assert partition([1, 1, 1, 1], 4) == [range(i, i + 1) for i in range(4)]
    order = one_f_one_b(0, 2, 4)
    assert order == [("F", 0), ("F", 1), ("B", 0), ("F", 2), ("B", 1), ("F", 3), ("B", 2), ("B", 3)]
    assert one_f_one_b(1, 2, 4)[:2] == [("F", 0), ("B", 0)]
    with pytest.raises(ValueError, match="mode"):
        PipelineConfig(mode="async")


ALTERNATING = ["inverse", "forward", "inverse"]  # one phase per step, as epochs of the alternating schedule


@pytest.mark.parametrize(
    "stages, rules",
    [
        # (no drl: its loss reads the layers above each stage, so it refuses the pipeline)
        (2, ("bp", "fa", "dfa", "dtp", "sdtp", "aosdtp", "sdtp-alternating", "signsym", "kp", "ldrl")),
        (4, ("bp", "dfa", "sdtp")),
    ],
)
def test_sync_pipeline_equals_single_process(stages, rules):
    jobs = [
        dict(
            rule=rule.split("-")[0],
            steps=STEPS,
            batch=BATCH,
            stages=stages,
            micro_batches=4,
            **({"phases": ALTERNATING} if rule.endswith("alternating") else {}),
        )
        for rule in rules
    ]
    results = run_ranks(pipeline_jobs, stages, jobs)
    for i, rule in enumerate(rules):
        ref, ref_losses = reference(rule.split("-")[0], STEPS, BATCH, jobs[i].get("phases"))
        assert_same(merge(results, i), ref)
        # every rank knows the loss curve; it is the single process's
        assert results[0][i]["loss"] == pytest.approx(ref_losses, rel=1e-9)
        assert all(r[i]["staleness"]["max"] == 0 for r in results)  # sync: nothing steps mid-batch


def test_decoupled_mode_runs_and_reports_staleness():
    job = dict(rule="sdtp", steps=3, batch=BATCH, stages=2, micro_batches=4, mode="decoupled", dtype=torch.float32)
    (r0, *others0), (r1, *others1) = run_ranks(pipeline_jobs, 2, [job, dict(job, rule="fa"), dict(job, rule="dfa")])
    assert all(o["staleness"]["max"] == 1 for o in others0)  # FA and DFA run decoupled too
    s0, s1 = r0["staleness"], r1["staleness"]
    # stage 0 steps once (for the previous micro-batch) between a forward and its backward;
    # the last stage runs each backward right after its forward.
    assert (s0["max"], s1["max"]) == (1, 0)
    assert s0["micro_batches"] == 12 and 0.9 <= s0["mean"] <= 1
    assert all(torch.isfinite(torch.tensor(r0["loss"])))


def test_decoupled_refuses_backprop():
    from bioscale.algorithms import RuleConfig, build_learner
    from bioscale.distributed.pipeline import Pipeline
    from tests.scale.workers import OPTIM

    with pytest.raises(ValueError, match="weight stashing"):
        Pipeline(
            build_learner("iclr_mnist_fc", RuleConfig(rule="bp")), OPTIM, PipelineConfig(stages=1, mode="decoupled")
        )
