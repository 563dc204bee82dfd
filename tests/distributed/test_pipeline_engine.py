"""`distributed.backend=pipeline`'s engine (torch.distributed.pipelining stages, schedules
1F1B and GPipe) on real gloo processes equals one process with the global batch in float64:
every weight, and per step the task loss, the scored samples, the summed local losses
(½‖δ_l‖², from each stage's backward) and the summed inverse losses (folded into each
stage's backward by the identity Function on its output)."""

from __future__ import annotations

import pytest

from bioscale.distributed.pipeline_launch import run_ranks
from tests.distributed.pipeline_engine_workers import reference_curve, stage_jobs
from tests.scale.workers import make_learner

STEPS, BATCH = 3, 16
ALTERNATING = ["inverse", "forward", "inverse"]  # one phase per step, as epochs of the alternating schedule


def check(results: list[list[dict]], jobs: list[dict]) -> None:
    for i, job in enumerate(jobs):
        rule = job["rule"]
        ref_state, ref_curve = reference_curve(rule, STEPS, BATCH, job.get("phases"))
        state: dict = {}
        for rank in results:
            state.update(rank[i]["state"])
        assert set(state) == set(ref_state), f"{rule}: stages hold {sorted(set(state) ^ set(ref_state))} wrongly"
        worst = max((state[k] - ref_state[k]).abs().max().item() for k in ref_state)
        assert worst <= 1e-9, f"{rule} {job}: max |pipeline − single process| = {worst:.2e}"
        got = results[0][i]["curve"]
        for step, (g, r) in enumerate(zip(got, ref_curve)):
            assert g == pytest.approx(r, rel=1e-9, abs=1e-9), f"{rule} step {step}: {g} != {r}"
        # not a comparison of two untouched nets: every forward weight moved, and the local
        # (and for TP rules inverse) losses the stages report are not zero
        init = make_learner(rule).state_dict()
        assert all(not (init[k] == state[k]).all() for k in state if k.endswith("layer.weight") and "feedback" not in k)
        phases = job.get("phases") or ["both"] * STEPS
        assert all(step[2] > 0 for step, phase in zip(got, phases) if phase != "inverse")
        if rule in ("dtp", "sdtp", "aosdtp"):
            assert all(step[3] > 0 for step, phase in zip(got, phases) if phase != "forward")
        print(f"{rule} {job.get('schedule', '1f1b')} {job.get('phases', '')}: max weight diff {worst:.1e}")


JOBS_2 = [
    dict(rule="bp", stages=2, micro_batches=4),
    dict(rule="fa", stages=2, micro_batches=4),
    dict(rule="dfa", stages=2, micro_batches=4),
    dict(rule="dtp", stages=2, micro_batches=4),
    dict(rule="sdtp", stages=2, micro_batches=4),
    dict(rule="aosdtp", stages=2, micro_batches=4, schedule="gpipe"),
    dict(rule="sdtp", stages=2, micro_batches=2, schedule="gpipe", phases=ALTERNATING),
    dict(rule="dfa", stages=2, micro_batches=2, schedule="gpipe"),
]


def test_two_stages_equal_one_process_for_every_rule_and_both_schedules():
    jobs = [dict(job, steps=STEPS, batch=BATCH) for job in JOBS_2]
    check(run_ranks(stage_jobs, 2, jobs), jobs)


def test_one_stage_two_replicas_equals_one_process():
    jobs = [dict(rule=r, stages=1, micro_batches=2, steps=STEPS, batch=BATCH) for r in ("sdtp", "dfa")]
    check(run_ranks(stage_jobs, 2, jobs), jobs)


def test_four_stages_equal_one_process():
    jobs = [dict(rule=r, stages=4, micro_batches=4, steps=STEPS, batch=BATCH) for r in ("bp", "dfa", "sdtp")]
    results = run_ranks(stage_jobs, 4, jobs)
    assert [r[0]["layers"] for r in results] == [[1], [2], [3], [4, 5]]  # balanced by weights per block
    check(results, jobs)


def test_sharded_stages_equal_one_process_and_hold_a_share_of_the_state():
    """FSDP2 inside each stage (distributed.zero_stage with the pipeline): 1 stage × 2
    replicas and 2 stages × 2 replicas train like one process; each rank holds half of its
    stage's weights and Adam state."""
    common = dict(micro_batches=2, shard=True, steps=STEPS, batch=BATCH)
    jobs = [dict(rule=r, stages=1, **common) for r in ("sdtp", "dfa", "bp")]
    results = run_ranks(stage_jobs, 2, jobs)
    check(results, jobs)
    four = [dict(rule=r, stages=2, **common) for r in ("sdtp", "dfa")]
    check(run_ranks(stage_jobs, 4, four), four)
    plain = run_ranks(stage_jobs, 2, [dict(jobs[0], shard=False)])
    full, half = plain[0][0]["bytes"], results[0][0]["bytes"]
    print(f"per-rank bytes, 1 stage x 2 replicas: unsharded {full}, sharded {half}")
    for key in ("params", "adam"):
        assert half[key] <= 0.51 * full[key], (key, half, full)


@pytest.mark.slow
def test_full_width_state_per_rank_falls_as_one_over_n_with_sharded_stages():
    from bioscale.bench.scale_engines import run_pipeline_memory

    layouts = run_pipeline_memory("sdtp", [1, 2, 4])["layouts"]
    one = layouts["1x1"]["max_state_bytes"]
    for name, m in layouts.items():
        print(f"{name}: {m['max_state_bytes'] / 2**20:.1f} MiB per rank ({m['max_state_bytes'] / one:.3f} of N=1)")
        if m["replicas"] > 1:  # sharded layouts: weights + Adam state 1/(S·D) per rank
            assert m["max_state_bytes"] == pytest.approx(one / m["ranks"], rel=0.02), name
