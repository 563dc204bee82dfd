"""distributed: the process environment (SLURM / torchrun / DeepSpeed launcher /
single) and the torch.distributed process group. Nothing above this package
reads RANK or SLURM_* variables itself."""

from bioscale.distributed.environment import (
    LAUNCHERS,
    DistEnv,
    LaunchEnvironmentError,
    detect_launcher,
    expand_nodelist,
    read_environment,
)
from bioscale.distributed.process_group import (
    CollectiveDeviceError,
    all_reduce_sum,
    backend_for_device,
    barrier,
    check_collective_device,
    collective_device,
    default_backend,
    exit_process,
    get_rank,
    get_world_size,
    init_distributed,
    is_initialized,
    is_main_process,
    local_device,
    shutdown,
)

__all__ = [
    "LAUNCHERS",
    "DistEnv",
    "LaunchEnvironmentError",
    "detect_launcher",
    "expand_nodelist",
    "read_environment",
    "CollectiveDeviceError",
    "all_reduce_sum",
    "backend_for_device",
    "barrier",
    "check_collective_device",
    "collective_device",
    "default_backend",
    "exit_process",
    "get_rank",
    "get_world_size",
    "init_distributed",
    "is_initialized",
    "is_main_process",
    "local_device",
    "shutdown",
]
