"""training.progress: periodic log lines off a terminal, tqdm bar on one, silence off rank 0."""

import io

from bioscale.training.progress import ProgressReporter


class Clock:
    """A clock the test advances by hand, so time-based lines are deterministic."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_log_lines_every_n_steps_and_at_close():
    out, clock = io.StringIO(), Clock()
    with ProgressReporter(total=10, desc="epoch 1", stream=out, every_steps=4, every_seconds=1e9, clock=clock) as p:
        for _ in range(10):
            clock.now += 0.5
            p.update(1, loss=0.123456, img_s=2000)
    lines = out.getvalue().splitlines()
    assert len(lines) == 3  # after steps 4 and 8, and the final state at close
    assert lines[0].startswith("epoch 1 4/10 steps (40%) loss=0.1235 img_s=2000 | 2.00 step/s")
    assert "eta 0:00:03" in lines[0]
    assert lines[-1].startswith("epoch 1 10/10 steps (100%)") and "elapsed 0:00:05" in lines[-1]


def test_log_lines_every_t_seconds_without_total():
    out, clock = io.StringIO(), Clock()
    p = ProgressReporter(total=None, stream=out, every_steps=10**6, every_seconds=60, clock=clock)
    for _ in range(5):
        clock.now += 25
        p.update(2)
    p.close()
    assert [line.split(" |")[0] for line in out.getvalue().splitlines()] == ["6 steps", "10 steps"]


def test_bar_on_a_terminal():
    out = io.StringIO()
    with ProgressReporter(total=5, desc="epoch 2", stream=out, use_bar=True) as p:
        for _ in range(5):
            p.update(1, loss=0.5)
    text = out.getvalue()
    assert "epoch 2" in text and "5/5" in text and "loss=0.5" in text and "\r" in text


def test_disabled_reporter_is_silent():
    out = io.StringIO()
    with ProgressReporter(total=5, stream=out, enabled=False, every_steps=1) as p:
        p.update(5, loss=1.0)
    assert out.getvalue() == ""
