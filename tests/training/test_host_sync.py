"""No host sync inside a training step (CUDA: a sync stalls the launch queue every step).

CUDA (`gpu`): one whole step of every rule (forward, the rule's backward, fused Adam, the
trainer's per-step statistics and divergence record) under
`torch.cuda.set_sync_debug_mode("error")`. CPU twin: the same step's forward, backward
and per-step bookkeeping with every tensor→host read (`item`, `tolist`, `bool`, `float`,
`int`) made to raise (CPU Adam reads its step counter on the host, so it is left out)."""

from __future__ import annotations

import contextlib

import pytest
import torch

from bioscale.algorithms import AdamConfig, OptimConfig, RuleConfig, Updater, build_learner
from bioscale.algorithms.config import RULES
from bioscale.training.divergence import DivergenceMonitor

READS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__")


def _setup(rule: str, device: str):
    learner = build_learner("iclr_mnist_lc", RuleConfig(rule=rule), seed=0, device=device)
    updater = Updater(learner, OptimConfig(forward=AdamConfig(lr=1e-4), inverse=AdamConfig(lr=1e-4)))
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 1, 28, 28, generator=g).to(device)
    y = torch.randint(0, 10, (16,), generator=g).to(device)
    return learner, updater, x, y


def _bookkeeping(out, y, monitor: DivergenceMonitor, stats: torch.Tensor, step: int) -> None:
    """What the trainer does after every step (training/trainer.py, `_record_step`)."""
    monitor.record(step, out)
    errors = (out.logits.argmax(1) != y).sum()
    stats += torch.stack([errors.to(torch.float64), stats.new_tensor(float(y.numel())), out.task_loss.double()])


@contextlib.contextmanager
def _no_host_reads(monkeypatch):
    def refuse(self, *args, **kwargs):
        raise AssertionError("a tensor was read back to the host inside the step")

    with monkeypatch.context() as m:
        for name in READS:
            m.setattr(torch.Tensor, name, refuse)
        yield


@pytest.mark.parametrize("rule", RULES)
def test_step_reads_nothing_back_to_the_host_cpu(rule, monkeypatch):
    learner, _, x, y = _setup(rule, "cpu")
    monitor, stats = DivergenceMonitor(), torch.zeros(3, dtype=torch.float64)
    with _no_host_reads(monkeypatch):
        with pytest.raises(AssertionError, match="read back"):
            float(stats[0])  # the guard is on
        out = learner(x, y)
        out.loss.backward()
        _bookkeeping(out, y, monitor, stats, 1)
    assert int(stats[1]) == 16  # (the guard is off again)


@pytest.mark.gpu
@pytest.mark.parametrize("rule", RULES)
def test_step_has_no_host_sync_cuda(rule):
    learner, updater, x, y = _setup(rule, "cuda")
    monitor, stats = DivergenceMonitor(), torch.zeros(3, dtype=torch.float64, device="cuda")
    out = updater.step(x, y)  # warm-up: lazy state (Adam's, cuBLAS workspaces) is built here
    _bookkeeping(out, y, monitor, stats, 1)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = updater.step(x, y)
        _bookkeeping(out, y, monitor, stats, 2)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert monitor.first_bad_step() is None
