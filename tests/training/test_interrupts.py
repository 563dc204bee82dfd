"""A Ctrl-C that something swallows (a `__del__`, a callback C++ runs) still stops the run at
the next step boundary (training/interrupts.py); the latch leaves other handlers alone."""

from __future__ import annotations

import signal

import pytest

from bioscale.training.config_loader import load_config
from bioscale.training.interrupts import InterruptLatch
from bioscale.training.trainer import Trainer
from tests.datasets import prepare_small_fashion


def test_a_swallowed_ctrl_c_stops_the_run_at_the_next_step(tmp_path, monkeypatch):
    shards = prepare_small_fashion(tmp_path / "fashion")
    overrides = [
        "model.arch=iclr_mnist_fc",
        "algorithm.rule=bp",
        "data.batch_size_per_rank=8",
        "data.num_workers=0",
        "train.epochs=2",
        "train.angle_every_steps=0",
        f"data.path={shards}",
        f"out={tmp_path / 'run'}",
    ]
    trainer = Trainer(load_config(None, overrides))
    train_batch = trainer._train_batch

    def step_that_swallows_sigint(x, y, phase):
        out = train_batch(x, y, phase)
        if trainer.step == 3:  # the 4th step: SIGINT lands where its exception is dropped
            try:
                signal.raise_signal(signal.SIGINT)
            except KeyboardInterrupt:
                pass
        return out

    monkeypatch.setattr(trainer, "_train_batch", step_that_swallows_sigint)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    assert trainer.step == 4  # not the 62 steps of two epochs
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_the_latch_keeps_a_handler_it_did_not_install():
    seen = []
    previous = signal.signal(signal.SIGINT, lambda *_: seen.append(1))
    try:
        with InterruptLatch() as latch:
            signal.raise_signal(signal.SIGINT)
            latch.check()  # the caller's handler ran, not the latch's: nothing pending
        assert seen == [1]
    finally:
        signal.signal(signal.SIGINT, previous)
