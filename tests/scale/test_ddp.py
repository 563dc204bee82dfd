"""`distributed.backend=ddp` is real DistributedDataParallel: on 2 gloo ranks × batch B it
trains exactly like one process with batch 2B (float64, shared inverse-loss noise), for
every rule and both schedules — gradients SUMMED over ranks by the communication hook,
hooks firing for parameters behind the boundary Functions, and the alternating schedule's
idle side hidden from the phase's wrapper."""

from __future__ import annotations

import pytest
import torch

from bioscale.algorithms import RULES
from bioscale.distributed.ddp_engine import DDPUpdater
from bioscale.distributed.pipeline_launch import run_ranks
from tests.scale.ddp_workers import TP, ddp_jobs, make_learner, reference
from tests.scale.workers import OPTIM

STEPS, BATCH = 3, 16  # global batch, 8 per rank; alternating: inverse, forward, inverse
JOBS = [(rule, "parallel") for rule in sorted(RULES)] + [(rule, "alternating") for rule in TP]


@pytest.fixture(scope="module")
def ranks():
    return run_ranks(ddp_jobs, 2, JOBS, STEPS, BATCH)


@pytest.mark.parametrize("job", range(len(JOBS)), ids=[f"{r}-{s}" for r, s in JOBS])
def test_two_ddp_ranks_equal_one_process_with_the_global_batch(ranks, job):
    rule, schedule = JOBS[job]
    ref = reference(rule, schedule, STEPS, BATCH)
    for rank in ranks:
        got = rank[job]
        # weights after STEPS Adam steps (the alternating jobs switch wrappers every step)
        worst = max((got["state"][k] - ref["state"][k]).abs().max().item() for k in ref["state"])
        assert worst <= 1e-10, f"{rule}/{schedule}: max |DDP − one process| = {worst:.2e}"
        # the last step's gradients: SUM over ranks (a mean would be off by 2 — invisible
        # to Adam in the weights, but not here), None where the phase trains nothing
        for name, g in ref["grads"].items():
            if g is None:
                assert got["grads"][name] is None, f"{rule}/{schedule}: {name} got a gradient"
            else:
                diff = (got["grads"][name] - g).abs().max().item()  # summation order only
                assert diff <= 1e-10 * g.abs().max().item(), f"{rule}/{schedule}: {name}: max diff {diff:.2e}"
    # each rank's loss is its half of the batch's summed loss
    total = [a + b for a, b in zip(ranks[0][job]["loss"], ranks[1][job]["loss"])]
    assert total == pytest.approx(ref["loss"], rel=1e-10)
    assert ranks[0][job]["phases"] == (["forward", "inverse"] if schedule == "alternating" else ["both"])


def test_alternating_really_leaves_one_side_without_gradients(ranks):
    """The last step (STEPS odd) is an inverse-phase step: the forward weights got no
    gradient and the inverse weights did, so the phase wrapper had unused parameters to hide."""
    job = JOBS.index(("sdtp", "alternating"))
    learner = make_learner("sdtp", "alternating")
    inverse = {id(p) for p in learner.inverse_parameters()}
    names = {n: id(p) in inverse for n, p in learner.named_parameters()}
    grads = ranks[0][job]["grads"]
    assert STEPS % 2 == 1
    assert all(grads[n] is not None for n, inv in names.items() if inv)
    assert all(grads[n] is None for n, inv in names.items() if not inv)


def test_ddp_updater_keeps_phase_wrappers_for_several_inverse_steps_per_batch(caplog):
    """`feedback_iterations` > 1 runs inverse-only and forward-only steps: one wrapper each
    (a 'both' wrapper would track λ twice), and the merged step is refused."""
    import logging

    import torch.distributed as dist

    from bioscale.algorithms import RuleConfig, build_learner

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        learner = build_learner("neurips_mnist_fc", RuleConfig(rule="ldrl", feedback_iterations=2), input_shape=(16,))
        with caplog.at_level(logging.INFO):
            updater = DDPUpdater(learner.double(), OPTIM)
        assert sorted(updater.wrappers) == ["forward", "inverse"]
        assert "wrappers for phases forward, inverse" in caplog.text
        x, y = torch.randn(4, 16, dtype=torch.float64), torch.tensor([0, 1, 2, 3])
        for phase in learner.rule.step_phases("both"):
            updater.step(x, y, phase)
        assert {int(s["step"]) for s in updater.inverse.state.values()} == {2}
        assert {int(s["step"]) for s in updater.forward.state.values()} == {1}
        with pytest.raises(ValueError, match="phases"):
            updater.step(x, y, "both")
    finally:
        dist.destroy_process_group()


def test_ddp_updater_refuses_a_phase_it_has_no_wrapper_for():
    """One process group of one rank is enough to build the wrappers."""
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        updater = DDPUpdater(make_learner("sdtp", "parallel"), OPTIM)
        x = torch.randn(2, *updater.learner.net.input_shape, dtype=torch.float64)
        with pytest.raises(ValueError, match="phases"):
            updater.step(x, torch.tensor([0, 1]), "inverse")
    finally:
        dist.destroy_process_group()
