"""training.metrics: TensorBoard events and metrics.jsonl, read back with
tensorboard's own reader and through a real `tensorboard` server's HTTP API."""

import json
import math
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing import event_accumulator

from bioscale.training.config import ExperimentConfig
from bioscale.training.metrics import MetricsLogger


def scalars(tb_dir: Path, tag: str) -> list[tuple[int, float]]:
    acc = event_accumulator.EventAccumulator(str(tb_dir))
    acc.Reload()
    return [(e.step, round(e.value, 6)) for e in acc.Scalars(tag)]


def jsonl(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_scalars_to_tensorboard_and_jsonl(tmp_path):
    with MetricsLogger(tmp_path, enabled=True, resume_step=None) as m:
        for step in (0, 50, 100):
            m.log_scalars(step, {"train/loss": torch.tensor(2.0 - step / 100), "layer1/local_loss": step})
        m.log_scalars(100, {"val/top1_err": 0.25, "val/top5_err": 0.05})  # same step: one jsonl line
    assert scalars(tmp_path / "tb", "train/loss") == [(0, 2.0), (50, 1.5), (100, 1.0)]
    assert scalars(tmp_path / "tb", "val/top1_err") == [(100, 0.25)]
    lines = jsonl(tmp_path)
    assert [line["step"] for line in lines] == [0, 50, 100]
    assert {k: v for k, v in lines[-1].items() if k != "time"} == {
        "step": 100,
        "train/loss": 1.0,
        "layer1/local_loss": 100.0,
        "val/top1_err": 0.25,
        "val/top5_err": 0.05,
    }


def test_disabled_logger_writes_nothing(tmp_path):
    m = MetricsLogger(tmp_path / "run", enabled=False, resume_step=3)
    m.log_scalars(1, {"train/loss": 1.0})
    m.log_hparams({"a": 1}, {"result/x": 1.0})
    m.close()
    assert not (tmp_path / "run").exists()


def test_non_finite_values_and_bad_values(tmp_path):
    with MetricsLogger(tmp_path, enabled=True, resume_step=None) as m:
        m.log_scalars(1, {"train/loss": float("nan"), "train/top1_err": math.inf})
        for bad in ("x", True, torch.ones(2), None):
            with pytest.raises(ValueError, match="train/loss"):
                m.log_scalars(2, {"train/loss": bad})
    [line] = jsonl(tmp_path)  # JSON has no NaN: null; TensorBoard keeps the NaN
    assert line["train/loss"] is None and line["train/top1_err"] is None
    [(step, value)] = scalars(tmp_path / "tb", "train/loss")
    assert step == 1 and math.isnan(value)


def test_resume_purges_later_steps_in_both(tmp_path):
    with MetricsLogger(tmp_path, enabled=True, resume_step=None) as m:
        for step in range(10):
            m.log_scalars(step, {"train/loss": float(step)})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 10, "train/lo')  # torn line of a killed process
    time.sleep(1.1)  # event file names carry the second; keep them distinct within one process
    with MetricsLogger(tmp_path, enabled=True, resume_step=5) as m:
        for step in range(5, 8):
            m.log_scalars(step, {"train/loss": 100.0 + step})
    expected = [(s, float(s)) for s in range(5)] + [(s, 100.0 + s) for s in range(5, 8)]
    assert scalars(tmp_path / "tb", "train/loss") == expected
    assert [(r["step"], r["train/loss"]) for r in jsonl(tmp_path)] == expected


def test_hparams_in_the_runs_own_event_file(tmp_path):
    cfg = ExperimentConfig(name="hp")
    with MetricsLogger(tmp_path, enabled=True, resume_step=None) as m:
        m.log_scalars(3, {"val/top1_err": 0.3})
        m.log_hparams(cfg.to_dict(), {"result/test_top1_err": 0.125}, step=3)
    assert [p.name for p in (tmp_path / "tb").iterdir() if p.is_dir()] == []  # no sub-run
    acc = event_accumulator.EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= set(acc.PluginTagToContent("hparams"))
    assert scalars(tmp_path / "tb", "result/test_top1_err") == [(3, 0.125)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, body: dict | None = None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read())


def test_real_tensorboard_server_serves_the_run(tmp_path):
    run = tmp_path / "runs" / "fmnist_sdtp"
    with MetricsLogger(run, enabled=True, resume_step=None) as m:
        for epoch, err in enumerate([0.4, 0.3, 0.2], start=1):
            m.log_scalars(epoch * 100, {"val/top1_err": err, "test/top1_err": err + 0.01})
        m.log_hparams(
            {"algorithm": {"rule": "sdtp"}, "optim": {"forward": {"lr": 1e-4}}},
            {"result/test_top1_err": 0.21},
            step=300,
        )
    port = _free_port()
    tb_bin = Path(sys.executable).with_name("tensorboard")
    server = subprocess.Popen(
        [str(tb_bin), "--logdir", str(tmp_path / "runs"), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline, tags = time.monotonic() + 60, {}
        while "val/top1_err" not in tags.get("fmnist_sdtp/tb", {}):
            assert server.poll() is None, server.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, f"tensorboard never listed the tag: {tags}"
            time.sleep(0.5)
            try:
                tags = _get(f"{base}/data/plugin/scalars/tags")
            except OSError:
                tags = {}
        points = _get(f"{base}/data/plugin/scalars/scalars?run=fmnist_sdtp/tb&tag=val/top1_err")
        assert [(step, round(value, 6)) for _, step, value in points] == [(100, 0.4), (200, 0.3), (300, 0.2)]
        groups = _get(
            f"{base}/data/plugin/hparams/session_groups",
            {
                "experimentName": "",
                "startIndex": 0,
                "sliceSize": 10,
                "colParams": [],
                "allowedStatuses": ["STATUS_FAILURE", "STATUS_RUNNING", "STATUS_SUCCESS", "STATUS_UNKNOWN"],
            },
        )
        [group] = groups["sessionGroups"]
        assert group["hparams"]["algorithm.rule"] == "sdtp"
        assert [round(v["value"], 6) for v in group["metricValues"]] == [0.21]
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        server.stderr.close()
