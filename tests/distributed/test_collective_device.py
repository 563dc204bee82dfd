"""Every tensor handed to a collective lives on the group's device (NCCL refuses CPU
tensors), and the backend follows the device a run computes on.

No GPU here, so the model's device is `meta` and the group is declared to collect on
`meta` (`collective_device` patched): each call site of the trainer and the evaluation
then has to hand the collective a tensor on the model's device, and reach it without a
host sync (any `.item()` on a meta tensor raises). The old code, which built these
statistics as CPU float64 tensors with `.item()` per step, fails every one of them."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from bioscale.algorithms.feedback import FeedbackTrace
from bioscale.algorithms.learner import StepOutput
from bioscale.distributed import DistEnv, process_group
from bioscale.distributed.process_group import (
    CollectiveDeviceError,
    all_reduce_sum,
    backend_for_device,
    collective_device,
    init_distributed,
    local_device,
    shutdown,
)
from bioscale.training.divergence import DivergenceError, DivergenceMonitor
from bioscale.training.evaluation import evaluate
from bioscale.training.trainer import Trainer

META = torch.device("meta")
ONE = DistEnv(
    rank=0, local_rank=0, world_size=1, local_world_size=1, master_addr="127.0.0.1", master_port=1, launcher="torchrun"
)


@pytest.fixture
def group():
    """A real one-rank gloo group (in-process store); the environment is restored after."""
    saved = dict(os.environ)
    assert init_distributed(ONE, backend="gloo", require_group=True)
    yield
    shutdown()
    os.environ.clear()
    os.environ.update(saved)


class Reached(Exception):
    pass


@pytest.fixture
def collectives(group, monkeypatch):
    """Declare the group's device `meta`; record the device of every tensor that reaches a
    collective and stop there (a meta tensor cannot be read back)."""
    seen: list[torch.device] = []
    check = process_group.check_collective_device

    def record(tensor, group=None):
        seen.append(tensor.device)
        check(tensor, group)  # the real check, against the declared device
        raise Reached

    monkeypatch.setattr(process_group, "collective_device", lambda group=None: META)
    monkeypatch.setattr(process_group, "check_collective_device", record)
    return seen


def test_backend_follows_the_device_chosen(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU node
    assert backend_for_device(local_device(ONE, "cpu")) == "gloo"
    assert backend_for_device("cuda:0") == "nccl" and backend_for_device(META) == "gloo"
    saved = dict(os.environ)
    try:
        # distributed.device=cpu on a GPU node: gloo, never nccl with CPU tensors
        assert init_distributed(ONE, require_group=True, device="cpu")
        assert torch.distributed.get_backend() == "gloo"
        assert collective_device() == torch.device("cpu")
    finally:
        shutdown()
        os.environ.clear()
        os.environ.update(saved)


def test_a_cpu_tensor_meeting_a_cuda_group_is_refused(group, monkeypatch):
    assert all_reduce_sum(torch.ones(3)).tolist() == [1.0, 1.0, 1.0]  # gloo group: CPU is right
    monkeypatch.setattr(process_group, "collective_device", lambda group=None: torch.device("cuda", 0))
    with pytest.raises(CollectiveDeviceError, match="a cpu tensor .* must be on cuda"):
        all_reduce_sum(torch.ones(3))


def test_evaluation_counts_reach_the_collective_on_the_model_device(collectives):
    net = nn.Linear(6, 10, device=META)
    net.num_classes = 10  # type: ignore[assignment]
    reader = [(torch.randn(4, 6), torch.randint(0, 10, (4,))) for _ in range(3)]
    with pytest.raises(Reached):
        evaluate(net, reader, META)
    assert collectives == [META]


def _step_output(batch: int = 4) -> StepOutput:
    trace = FeedbackTrace(1.0)
    trace.local_losses = {1: torch.empty((), device=META), 2: torch.empty((), device=META)}
    return StepOutput(
        loss=torch.empty((), device=META),
        logits=torch.empty(batch, 10, device=META),
        task_loss=torch.empty((), device=META),
        inverse_losses={2: torch.empty((), device=META)},
        trace=trace,
    )


def _trainer_on_meta() -> Trainer:
    """The trainer's state that the statistics paths touch, on the `meta` device."""
    t = object.__new__(Trainer)
    t.device, t.step, t.epoch = META, 0, 0
    t.epoch_stats = t._new_epoch_stats()
    t.divergence = DivergenceMonitor()
    return t


def test_train_statistics_reach_the_collective_on_the_model_device(collectives):
    t = _trainer_on_meta()
    y = torch.zeros(4, dtype=torch.int64, device=META)
    for _ in range(3):  # per-step bookkeeping: on the device, no host sync (meta would raise)
        t.step += 1
        n, errors = t._record_step(_step_output(), y)
    assert t.epoch_stats.device == META and n == 4 and errors.device == META
    with pytest.raises(Reached):  # the log step's sums
        t._log_train(_step_output(), n, errors, 12, 0.1, 0.2)
    with pytest.raises(Reached):  # the epoch's sums
        t._end_epoch()
    assert collectives == [META, META]


def _finite_output(value: float) -> StepOutput:
    trace = FeedbackTrace(1.0)
    trace.local_losses = {1: torch.tensor(1.0), 2: torch.tensor(value)}
    return StepOutput(
        loss=torch.tensor(1.0),
        logits=torch.zeros(2, 3),
        task_loss=torch.tensor(1.0),
        inverse_losses={2: torch.tensor(0.5)},
        trace=trace,
    )


def test_divergence_is_recorded_per_step_and_reported_at_the_check():
    monitor, module = DivergenceMonitor(), nn.Linear(2, 2)
    monitor.record(1, _finite_output(1.0))
    monitor.check(1, _finite_output(1.0), module)  # all finite: no error
    monitor.record(2, _finite_output(float("nan")))  # layer 2's target gap
    monitor.record(3, _finite_output(float("inf")))
    monitor.record(4, _finite_output(1.0))
    with pytest.raises(DivergenceError, match=r"diverged at step 2 \(found by the check at step 4\)"):
        monitor.check(4, _finite_output(1.0), module)
    with pytest.raises(DivergenceError, match="diverged at step 3: layer 2 target gap"):
        monitor.check(3, _finite_output(float("inf")), module, flag=3.0)
    with torch.no_grad():
        module.weight[0, 0] = float("nan")
    with pytest.raises(DivergenceError, match="diverged at step 5: parameter weight holds NaN/inf"):
        DivergenceMonitor().check(5, None, module)  # no bad loss recorded, but NaN weights
