"""Pure planning for the layer pipeline (no processes, no tensors): which blocks each
stage owns, which rank plays which (stage, replica), and the 1F1B order of work.

Kept apart from `distributed/pipeline.py` so the plan can be unit-tested and printed
without a process group."""

from __future__ import annotations

from dataclasses import dataclass

MODES = ("sync", "decoupled")


@dataclass(frozen=True)
class PipelineConfig:
    stages: int = 2
    """S: number of pipeline stages (consecutive groups of blocks)."""
    data_parallel: int = 1
    """D: replicas of the whole pipeline; world size must be S·D."""
    micro_batches: int = 4
    """M: micro-batches each replica's share of a global batch is cut into."""
    mode: str = "sync"
    """'sync': gradients of the M micro-batches accumulate and every stage steps once per
    batch (equals one process with the global batch). 'decoupled': a stage steps after
    every micro-batch backward and micro-batches stream across batch boundaries (no flush)."""
    balance: tuple[int, ...] | None = None
    """Blocks per stage; default balances parameter counts (a proxy for LC/FC compute:
    every weight is used once per sample)."""

    def __post_init__(self):
        if self.stages < 1 or self.data_parallel < 1 or self.micro_batches < 1:
            raise ValueError(f"stages, data_parallel and micro_batches must be >= 1, got {self}")
        if self.mode not in MODES:
            raise ValueError(f"pipeline mode must be one of {MODES}, got {self.mode!r}")
        if self.balance is not None and (len(self.balance) != self.stages or min(self.balance) < 1):
            raise ValueError(f"balance {self.balance} must give every one of the {self.stages} stages >= 1 block")


def decoupled_refusal(rule: str) -> str | None:
    """Why `rule` cannot run in decoupled mode, or None. The one statement of it: the
    pipeline refuses it at construction, `training/preflight.py` before a run starts."""
    if rule == "bp":
        return (
            "decoupled mode needs a rule whose boundary signal does not read the forward "
            "weights (TP rules, FA, DFA): backprop through weights stepped since the forward is "
            "refused by autograd's version check (it would need weight stashing)"
        )
    return None


def partition(costs: list[int], stages: int) -> list[range]:
    """Contiguous split of blocks (0-based) into `stages` non-empty ranges minimising the
    largest stage cost (the pipeline runs at the pace of its slowest stage). Exact DP;
    L is at most a few dozen blocks."""
    n = len(costs)
    if not 1 <= stages <= n:
        raise ValueError(f"cannot split {n} blocks into {stages} non-empty stages")
    prefix = [0]
    for c in costs:
        prefix.append(prefix[-1] + c)
    inf = float("inf")
    # best[s][i]: minimal max-cost of splitting the first i blocks into s stages; cut[s][i]: start of the last one.
    best = [[inf] * (n + 1) for _ in range(stages + 1)]
    cut = [[0] * (n + 1) for _ in range(stages + 1)]
    best[0][0] = 0
    for s in range(1, stages + 1):
        for i in range(s, n + 1):
            for j in range(s - 1, i):
                v = max(best[s - 1][j], prefix[i] - prefix[j])
                if v < best[s][i]:
                    best[s][i], cut[s][i] = v, j
    bounds, i = [], n
    for s in range(stages, 0, -1):
        bounds.append(range(cut[s][i], i))
        i = cut[s][i]
    return bounds[::-1]


def ranges_from_balance(balance: tuple[int, ...], num_blocks: int) -> list[range]:
    if sum(balance) != num_blocks:
        raise ValueError(f"balance {balance} covers {sum(balance)} blocks, the network has {num_blocks}")
    out, start = [], 0
    for n in balance:
        out.append(range(start, start + n))
        start += n
    return out


def placement(rank: int, cfg: PipelineConfig) -> tuple[int, int]:
    """(stage, replica) of a global rank. Stage-major (rank = stage·D + replica): with
    torchrun the D replicas of a stage are then consecutive ranks, i.e. on the same node
    when D divides the processes per node. Why that way round: an LC stage's weights
    (all-reduced every step by data parallelism) are far larger than the activations the
    pipeline sends, so the heavy all-reduce stays inside a node and the light
    point-to-point traffic crosses nodes."""
    return divmod(rank, cfg.data_parallel)


def one_f_one_b(stage: int, stages: int, n: int) -> list[tuple[str, int]]:
    """Order of forward ('F', j) and backward ('B', j) micro-batch work on `stage`:
    S−1−stage warm-up forwards, then alternate one forward / one backward, then drain.
    At most S−stage activations are alive at once (GPipe keeps all M)."""
    warmup = min(stages - 1 - stage, n)
    order = [("F", j) for j in range(warmup)]
    for i in range(n - warmup):
        order += [("F", warmup + i), ("B", i)]
    order += [("B", j) for j in range(n - warmup, n)]
    return order
