"""Running bioscale on SLURM: cluster profiles (`profile`), the submitit
launcher (`launcher`) and the callable every task runs with its requeue
contract (`training_job`), SLURM job states and logs (`slurm_jobs`), random
search spaces (`search_space`), sweeps with successive-halving pruning
(`sweep`) and their reports (`sweep_report`). `local_slurm.sh` brings up a
single-node SLURM on this machine. See docs/cluster.md.

Imports only point down: training/, distributed/, algorithms/, models/,
data_pipeline/ — never the bioscale CLI."""
