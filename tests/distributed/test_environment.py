"""distributed.environment: every launcher's variables, nodelists, and a real
2-process gloo all_reduce under torchrun and under SLURM-style variables."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bioscale.distributed import (
    DistEnv,
    LaunchEnvironmentError,
    all_reduce_sum,
    barrier,
    expand_nodelist,
    init_distributed,
    is_main_process,
    local_device,
    read_environment,
    shutdown,
)

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("process_group_worker.py")
BIN = Path(sys.executable).parent

SLURM_STEP = {  # rank 5 of 8, second of two nodes, started by srun
    "SLURM_JOB_ID": "123456",
    "SLURM_PROCID": "5",
    "SLURM_LOCALID": "1",
    "SLURM_NTASKS": "8",
    "SLURM_STEP_NUM_TASKS": "8",
    "SLURM_NNODES": "2",
    "SLURM_NODEID": "1",
    "SLURM_STEP_ID": "0",
    "SLURM_JOB_NODELIST": "gpu[07-08]",
    "SLURM_STEP_TASKS_PER_NODE": "4(x2)",
    "SLURM_RESTART_COUNT": "2",
}
TORCHRUN = {
    "RANK": "3",
    "LOCAL_RANK": "1",
    "WORLD_SIZE": "4",
    "LOCAL_WORLD_SIZE": "2",
    "GROUP_RANK": "1",
    "MASTER_ADDR": "node01",
    "MASTER_PORT": "29400",
    "TORCHELASTIC_RUN_ID": "abc",
    "TORCHELASTIC_RESTART_COUNT": "0",
}
DEEPSPEED = {
    "RANK": "2",
    "LOCAL_RANK": "0",
    "WORLD_SIZE": "4",
    "LOCAL_SIZE": "2",
    "CROSS_RANK": "1",
    "CROSS_SIZE": "2",
    "MASTER_ADDR": "10.0.0.1",
    "MASTER_PORT": "29500",
}


@pytest.mark.parametrize(
    "environ, expected",
    [
        ({}, DistEnv()),
        ({"MASTER_PORT": "12345"}, DistEnv(master_port=12345)),
        (
            TORCHRUN,
            DistEnv(
                rank=3,
                local_rank=1,
                world_size=4,
                local_world_size=2,
                node_rank=1,
                master_addr="node01",
                master_port=29400,
                launcher="torchrun",
            ),
        ),
        (
            DEEPSPEED,
            DistEnv(
                rank=2,
                local_rank=0,
                world_size=4,
                local_world_size=2,
                node_rank=1,
                master_addr="10.0.0.1",
                master_port=29500,
                launcher="deepspeed",
            ),
        ),
        (
            SLURM_STEP,
            DistEnv(
                rank=5,
                local_rank=1,
                world_size=8,
                local_world_size=4,
                node_rank=1,
                master_addr="gpu07",
                master_port=15000 + 123456 % 15000,
                launcher="slurm",
                slurm_job_id="123456",
                restart_count=2,
            ),
        ),
        # torchrun started inside a SLURM allocation: torchrun's ranks win, the job id is kept
        (
            {**SLURM_STEP, **TORCHRUN},
            DistEnv(
                rank=3,
                local_rank=1,
                world_size=4,
                local_world_size=2,
                node_rank=1,
                master_addr="node01",
                master_port=29400,
                launcher="torchrun",
                slurm_job_id="123456",
                restart_count=2,
            ),
        ),
        (
            {**SLURM_STEP, **DEEPSPEED},
            DistEnv(
                rank=2,
                local_rank=0,
                world_size=4,
                local_world_size=2,
                node_rank=1,
                master_addr="10.0.0.1",
                master_port=29500,
                launcher="deepspeed",
                slurm_job_id="123456",
                restart_count=2,
            ),
        ),
        # the batch script itself (no srun step) is one process even with --ntasks=8
        (
            {k: v for k, v in SLURM_STEP.items() if k not in ("SLURM_STEP_ID", "SLURM_STEP_NUM_TASKS")}
            | {"SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0"},
            DistEnv(slurm_job_id="123456", restart_count=2),
        ),
        # an explicit MASTER_PORT overrides the one derived from the job id; job-level fallbacks
        (
            {
                "SLURM_JOB_ID": "77_3",
                "SLURM_PROCID": "0",
                "SLURM_NTASKS": "2",
                "SLURM_STEP_ID": "1",
                "SLURM_NODELIST": "a1,b2",
                "SLURM_TASKS_PER_NODE": "1(x2)",
                "MASTER_PORT": "23456",
            },
            DistEnv(world_size=2, master_addr="a1", master_port=23456, launcher="slurm", slurm_job_id="77_3"),
        ),
    ],
    ids=[
        "single",
        "single-port",
        "torchrun",
        "deepspeed",
        "slurm",
        "torchrun-in-slurm",
        "deepspeed-in-slurm",
        "slurm-batch-script",
        "slurm-job-level",
    ],
)
def test_read_environment(environ, expected):
    assert read_environment(environ, isatty=False) == expected


def test_derived_properties_and_tty():
    env = read_environment(SLURM_STEP, isatty=True)
    assert env.is_tty and not env.is_main and env.is_distributed and env.num_nodes == 2
    assert read_environment({}, isatty=False).is_main


@pytest.mark.parametrize(
    "environ, match",
    [
        ({"RANK": "4", "WORLD_SIZE": "4"}, "rank 4 outside"),
        ({"RANK": "x", "WORLD_SIZE": "4"}, "RANK='x' is not an integer"),
        (
            {"SLURM_PROCID": "0", "SLURM_STEP_ID": "0", "SLURM_NTASKS": "2", "SLURM_TASKS_PER_NODE": "2(x)"},
            "cannot parse tasks-per-node",
        ),
    ],
)
def test_bad_environment(environ, match):
    with pytest.raises(LaunchEnvironmentError, match=match):
        read_environment(environ)


@pytest.mark.parametrize(
    "nodelist, hosts",
    [
        ("node[01-03,07],gpu5", ["node01", "node02", "node03", "node07", "gpu5"]),
        ("host", ["host"]),
        ("a1, b2", ["a1", "b2"]),
        ("n[8-10]", ["n8", "n9", "n10"]),
        ("n[098-101]", ["n098", "n099", "n100", "n101"]),
        ("rack[1-2]-n[01-02]", ["rack1-n01", "rack1-n02", "rack2-n01", "rack2-n02"]),
        ("gpu[3]-ib,cpu[1-2]", ["gpu3-ib", "cpu1", "cpu2"]),
    ],
)
def test_expand_nodelist(nodelist, hosts):
    assert expand_nodelist(nodelist) == hosts


@pytest.mark.parametrize("nodelist", ["n[3-1]", "n[01", "n]1", "n[a-b]"])
def test_expand_nodelist_rejects(nodelist):
    with pytest.raises(ValueError, match="nodelist"):
        expand_nodelist(nodelist)


def test_single_process_helpers_are_identities():
    env = read_environment({}, isatty=False)
    assert init_distributed(env) is False
    t = torch.tensor([2.0, 3.0])
    assert all_reduce_sum(t) is t and t.tolist() == [2.0, 3.0]
    barrier()
    shutdown()
    assert is_main_process()


def test_one_process_group_on_request(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)  # init_distributed exports them; restored afterwards
    env = read_environment({}, isatty=False)
    try:
        assert init_distributed(env, backend="gloo", require_group=True) is True
        assert torch.distributed.get_world_size() == 1 and is_main_process()
        assert all_reduce_sum(torch.tensor([4.0])).item() == 4.0
        assert init_distributed(env, backend="gloo", require_group=True) is True  # idempotent
        assert os.environ["LOCAL_RANK"] == "0"  # DeepSpeed asserts it is set
    finally:
        shutdown()
    assert not torch.distributed.is_initialized()


def test_local_device():
    env = read_environment(SLURM_STEP, isatty=False)
    assert local_device(env, "cpu") == torch.device("cpu")
    if torch.cuda.is_available():
        assert local_device(env, "auto").index == env.local_rank % torch.cuda.device_count()
    else:
        assert local_device(env, "auto") == torch.device("cpu")
        with pytest.raises(RuntimeError, match="distributed.device=cuda but torch sees no CUDA device"):
            local_device(env, "cuda")
    with pytest.raises(ValueError, match="auto, cpu or cuda"):
        local_device(env, "gpu")


def _free_port(lo: int = 0, hi: int = 0) -> int:
    for port in [0] if lo == 0 else range(lo, hi):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise RuntimeError("no free port")


def _child_env(out_dir: Path) -> dict:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLURM_", "RANK", "LOCAL_", "WORLD_SIZE", "MASTER_", "TORCHELASTIC"))
    }
    return env | {"OUT_DIR": str(out_dir), "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _records(out_dir: Path) -> list[dict]:
    return [json.loads((out_dir / f"rank{r}.json").read_text()) for r in range(2)]


def test_torchrun_two_process_all_reduce(tmp_path):
    port = _free_port()
    proc = subprocess.run(
        [
            str(BIN / "torchrun"),
            "--nproc_per_node",
            "2",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(port),
            str(WORKER),
        ],
        env=_child_env(tmp_path),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = _records(tmp_path)
    assert [r["total"] for r in records] == [3.0, 3.0]
    assert [
        (r["rank"], r["local_rank"], r["world_size"], r["launcher"], r["started"], r["is_main"]) for r in records
    ] == [(0, 0, 2, "torchrun", True, True), (1, 1, 2, "torchrun", True, False)]


def test_slurm_variables_two_process_all_reduce_and_exit_process(tmp_path):
    # Two plain processes with the variables srun would give them; the port is
    # derived from the job id, so pick a job id whose port is free.
    port = _free_port(15000, 30000)
    procs = []
    for rank in range(2):
        env = _child_env(tmp_path) | {
            "SLURM_JOB_ID": str(port - 15000),
            "SLURM_PROCID": str(rank),
            "SLURM_LOCALID": str(rank),
            "SLURM_NTASKS": "2",
            "SLURM_STEP_NUM_TASKS": "2",
            "SLURM_STEP_ID": "0",
            "SLURM_NODEID": "0",
            "SLURM_NNODES": "1",
            "SLURM_JOB_NODELIST": "localhost",
            "SLURM_STEP_TASKS_PER_NODE": "2",
        }
        procs.append(
            subprocess.Popen([sys.executable, str(WORKER)], env=env, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
        )
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-3000:]
    records = _records(tmp_path)
    assert [r["total"] for r in records] == [3.0, 3.0]
    assert {(r["launcher"], r["master_addr"], r["master_port"]) for r in records} == {("slurm", "localhost", port)}
