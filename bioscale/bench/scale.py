"""`bioscale bench scale`: throughput of 1, 2 and 4 local CPU ranks, data-parallel and
layer-pipelined, at the same global batch (images/s and scaling efficiency = speedup / N);
with --zero3, per-rank parameter + optimiser memory of the full-width LC net under ZeRO-3
at N = 1, 2, 4; with --pipeline-memory, the same for the pipeline engine's S stages × D
FSDP2-sharded replicas (bench/scale_engines.py).

By default (`--engine trainer`) every configuration runs the engine `bioscale train` would
(training/engines.py via bench/scale_engines.py): dpN is backend ddp, pipelineS backend
pipeline on torch.distributed.pipelining, 1rank backend none with the whole batch. With
`--engine own` (and always for `--mode decoupled`) they all run the project's hand-written
`distributed.pipeline.Pipeline`: data parallel is S = 1 stage × D replicas. Ranks are
real gloo processes with one thread each; wall-clock time between two barriers on rank 0,
after warm-up steps. On a machine with fewer cores than ranks the
efficiency says so — it is measured, not modelled."""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.distributed as dist

from bioscale.algorithms import AdamConfig, OptimConfig, RuleConfig, build_learner
from bioscale.distributed.pipeline import Pipeline
from bioscale.distributed.pipeline_launch import run_ranks
from bioscale.distributed.pipeline_schedule import PipelineConfig
from bioscale.distributed.process_group import barrier, get_rank

OPTIM = OptimConfig(forward=AdamConfig(lr=1e-4), inverse=AdamConfig(lr=1e-4))
# name → (stages, data_parallel); ranks = S·D
CONFIGS = {
    "1rank": (1, 1),
    "dp2": (1, 2),
    "dp4": (1, 4),
    "pipeline2": (2, 1),
    "pipeline4": (4, 1),
    "pipeline2_dp2": (2, 2),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arch", default="iclr_mnist_lc", help="architecture from the registry")
    parser.add_argument("--rule", default="sdtp")
    parser.add_argument("--batch", type=int, default=128, help="global batch (split over replicas)")
    parser.add_argument("--micro-batches", type=int, default=4, help="pipeline micro-batches per replica")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 10, quick 3)")
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"subset of {','.join(CONFIGS)}")
    parser.add_argument("--mode", default="sync", choices=("sync", "decoupled"))
    parser.add_argument(
        "--engine",
        default="trainer",
        choices=("trainer", "own"),
        help="trainer: the engines `bioscale train` runs (DDP, torch.distributed.pipelining; "
        "bench/scale_engines.py); own: the project's hand-written pipeline (always for --mode decoupled)",
    )
    parser.add_argument("--zero3", action="store_true", help="also measure ZeRO-3 memory of the full-width net")
    parser.add_argument("--zero3-ranks", default="1,2,4")
    parser.add_argument(
        "--pipeline-memory",
        action="store_true",
        help="also measure per-rank weights + Adam state of the full-width net under the pipeline "
        "engine's S stages × D sharded replicas at N = --zero3-ranks",
    )
    parser.add_argument(
        "--accuracy",
        metavar="DATA",
        default=None,
        help="prepared shards (train/, test/): train sync and decoupled pipelines on the same "
        "image budget and report test error (skips the throughput runs)",
    )
    parser.add_argument("--budget", type=int, default=10000, help="--accuracy: training images per epoch")
    parser.add_argument("--epochs", type=int, default=2, help="--accuracy: passes over the budget")
    parser.add_argument("--lr", type=float, default=5e-4, help="--accuracy: Adam lr (forward and inverse)")
    parser.add_argument("--stages", type=int, default=2, help="--accuracy: pipeline stages")
    parser.add_argument("--quick", action="store_true", help="few steps (smoke test)")


def throughput_worker(arch: str, rule: str, batch: int, cfg: PipelineConfig, warmup: int, steps: int) -> dict:
    """Runs on every rank: warm up, then time `steps` global batches between barriers."""
    learner = build_learner(arch, RuleConfig(rule=rule), seed=0)
    pipe = Pipeline(learner, OPTIM, cfg)
    g = torch.Generator().manual_seed(0)
    shape = learner.net.input_shape
    classes = learner.net.num_classes
    batches = [
        (torch.randn(batch, *shape, generator=g), torch.randint(0, classes, (batch,), generator=g))
        for _ in range(warmup + steps)
    ]
    pipe.train(batches[:warmup])
    barrier()
    t0, c0 = time.perf_counter(), time.process_time()
    out = pipe.train(batches[warmup:])
    cpu = time.process_time() - c0  # this rank's CPU time: what the work costs, whatever the machine's load
    barrier()
    seconds = time.perf_counter() - t0
    return {
        "images_per_sec": batch * steps / seconds,
        "cpu_s": cpu,
        "images": batch * steps,
        "stage": pipe.staleness_summary(),
        "layers": pipe.layers,
        "loss": out["loss"][-1],
    }


def run_throughput(args: argparse.Namespace) -> dict:
    steps = args.steps or (3 if args.quick else 10)
    warmup = 1 if args.quick else 2
    own = getattr(args, "engine", "trainer") == "own" or args.mode == "decoupled"
    results = {}
    for name in args.configs.split(","):
        stages, dp = CONFIGS[name]
        if own:
            cfg = PipelineConfig(
                stages=stages, data_parallel=dp, micro_batches=args.micro_batches if stages > 1 else 1, mode=args.mode
            )
            ranks = run_ranks(throughput_worker, stages * dp, args.arch, args.rule, args.batch, cfg, warmup, steps)
        else:
            from bioscale.bench.scale_engines import engine_throughput_worker

            ranks = run_ranks(
                engine_throughput_worker,
                stages * dp,
                *(args.arch, args.rule, args.batch, stages, dp, args.micro_batches, warmup, steps),
            )
        cpu_ms = 1e3 * sum(r["cpu_s"] for r in ranks) / ranks[0]["images"]
        results[name] = {
            "ranks": stages * dp,
            "images_per_sec": ranks[0]["images_per_sec"],
            "cpu_ms_per_image": cpu_ms,
            "stages": [r["stage"] | {"layers": r["layers"]} for r in ranks[::dp]],
        }
    base = results.get("1rank")
    if base:
        for r in results.values():
            r["speedup"] = r["images_per_sec"] / base["images_per_sec"]
            r["efficiency"] = r["speedup"] / r["ranks"]
            # CPU efficiency: 1-rank CPU per image / this config's total. Independent of other jobs'
            # load; times the rank count it bounds the speedup on idle, dedicated cores.
            r["cpu_efficiency"] = base["cpu_ms_per_image"] / r["cpu_ms_per_image"]
    return results


# ---- decoupled vs synchronous accuracy ---------------------------------------------------------
def accuracy_worker(
    data: str, arch: str, rule: str, cfg: PipelineConfig, batch: int, budget: int, epochs: int, lr: float
) -> dict:
    """Every rank reads the same global batches (the pipeline slices them); returns this
    stage's weights, the loss curve and the staleness."""
    from bioscale.data_pipeline import build_reader

    reader = build_reader(f"{data}/train", kind="wds", train=True, batch_size=batch, num_workers=0, seed=0)
    learner = build_learner(arch, RuleConfig(rule=rule), seed=0, input_shape=reader.image_shape)
    pipe = Pipeline(learner, OptimConfig(forward=AdamConfig(lr=lr), inverse=AdamConfig(lr=lr)), cfg)
    losses, t0 = [], time.perf_counter()
    for epoch in range(epochs):
        reader.set_epoch(epoch)
        batches = []
        for x, y in reader:
            batches.append((x, y))
            if len(batches) * batch >= budget:
                break
        out = pipe.train(batches)
        losses.append(sum(out["loss"]) / sum(out["samples"]))
    return {
        "state": pipe.stage_state(),
        "train_loss": losses,
        "staleness": pipe.staleness_summary(),
        "seconds": time.perf_counter() - t0,
        "image_shape": reader.image_shape,
    }


def run_accuracy(args: argparse.Namespace) -> dict:
    from bioscale.data_pipeline import build_reader

    out, m = {}, args.micro_batches
    # The control: synchronous steps on micro-batch-sized batches take as many optimiser
    # steps per image as the decoupled run, without staleness — it separates the two effects.
    runs = {
        "sync": ("sync", args.batch, m),
        "sync_microbatch": ("sync", args.batch // m, 1),
        "decoupled": ("decoupled", args.batch, m),
    }
    for name, (mode, batch, micro) in runs.items():
        cfg = PipelineConfig(stages=args.stages, micro_batches=micro, mode=mode)
        ranks = run_ranks(
            accuracy_worker,
            args.stages,
            args.accuracy,
            args.arch,
            args.rule,
            cfg,
            batch,
            args.budget,
            args.epochs,
            args.lr,
        )
        learner = build_learner(args.arch, RuleConfig(rule=args.rule), seed=0, input_shape=ranks[0]["image_shape"])
        learner.load_state_dict({k: v for r in ranks for k, v in r["state"].items()})
        learner.eval()
        wrong = total = 0
        with torch.no_grad():
            for x, y in build_reader(f"{args.accuracy}/test", kind="wds", train=False, batch_size=500, num_workers=0):
                wrong += int((learner.net(x).argmax(1) != y).sum())
                total += y.shape[0]
        out[name] = {
            "test_top1_err": wrong / total,
            "train_loss_per_epoch": ranks[-1]["train_loss"],
            "staleness": [r["staleness"] for r in ranks],
            "seconds": ranks[0]["seconds"],
        }
        print(
            f"{name:15s} {args.arch} {args.rule}, batch {batch}, {args.stages} stages × {micro} micro-batches, "
            f"{args.epochs} × {args.budget} images: test top-1 error {100 * wrong / total:.2f}%, "
            f"train loss/image {[round(v, 3) for v in ranks[-1]['train_loss']]}, staleness (mean/max per stage) "
            f"{[(round(r['staleness']['mean'], 2), r['staleness']['max']) for r in ranks]}"
        )
    return {
        "arch": args.arch,
        "rule": args.rule,
        "batch": args.batch,
        "micro_batches": args.micro_batches,
        "stages": args.stages,
        "budget": args.budget,
        "epochs": args.epochs,
        "lr": args.lr,
        "accuracy": out,
    }


# ---- ZeRO-3 memory -----------------------------------------------------------------------------
def _stage3_tuning(micro_batch: int) -> dict:
    """DeepSpeed config: the project's (distributed.deepspeed_engine) plus small buckets and
    no persistent parameters, so what a rank holds is its shard (notes/deepspeed-cpu.md:
    default buckets add a 5e8-element reduce bucket per rank)."""
    from bioscale.distributed.deepspeed_engine import deepspeed_config

    cfg = deepspeed_config(3, micro_batch, "fp32")
    cfg["zero_optimization"].update(
        stage3_param_persistence_threshold=0,
        reduce_bucket_size=5_000_000,
        stage3_prefetch_bucket_size=5_000_000,
        stage3_max_live_parameters=50_000_000,
        stage3_max_reuse_distance=0,
    )
    return cfg


def zero3_worker(arch: str, input_shape: tuple, rule: str, micro_batch: int, steps: int) -> dict:
    """Per-rank bytes of parameter shards, fp32 master shards and Adam state under ZeRO-3,
    after `steps` training steps (the optimiser state exists only after the first)."""
    import deepspeed

    import bioscale.models.fullwidth  # noqa: F401  (registers the full-width names)

    config = _stage3_tuning(micro_batch)
    # zero.Init shards each module's weights as soon as it is built: no rank ever holds the
    # whole net (the way a 10⁹-parameter full-width net must be built on GPU nodes).
    with deepspeed.zero.Init(config_dict_or_path=config):
        learner = build_learner(arch, RuleConfig(rule=rule), seed=0, input_shape=input_shape)
    groups = [
        {"params": learner.forward_parameters(), "lr": 1e-4},
        {"params": learner.inverse_parameters(), "lr": 1e-4},
    ]
    engine, optimizer, _, _ = deepspeed.initialize(model=learner, optimizer=torch.optim.Adam(groups), config=config)
    g = torch.Generator().manual_seed(get_rank())
    losses = []
    for _ in range(steps):
        x = torch.randn(micro_batch, *input_shape, generator=g)
        y = torch.randint(0, learner.net.num_classes, (micro_batch,), generator=g)
        out = engine(x, y)
        engine.backward(out.loss)
        engine.step()
        losses.append(float(out.task_loss))

    def nbytes(tensors):
        return sum(t.numel() * t.element_size() for t in tensors)

    params = nbytes(p.ds_tensor for p in engine.module.parameters())
    master = nbytes(optimizer.fp32_partitioned_groups_flat)
    adam = nbytes(v for s in optimizer.optimizer.state.values() for v in s.values() if torch.is_tensor(v) and v.dim())
    with open("/proc/self/status") as f:
        rss = {k: int(v.split()[0]) * 1024 for k, v in (line.split(":", 1) for line in f) if k in ("VmRSS", "VmHWM")}
    total = sum(p.ds_numel for p in engine.module.parameters())
    return {
        "params": params,
        "fp32_master": master,
        "adam_state": adam,
        "state_total": params + master + adam,
        "rss": rss["VmRSS"],
        "peak_rss": rss["VmHWM"],
        "model_params": total,
        "losses": losses,
        "world": dist.get_world_size(),
    }


def run_zero3(args: argparse.Namespace) -> dict:
    arch, shape = "imagenet_lc_fullwidth_neurips", (3, 32, 32)
    out = {}
    for n in (int(v) for v in args.zero3_ranks.split(",")):
        ranks = run_ranks(zero3_worker, n, arch, shape, args.rule, 2, 2 if args.quick else 3, timeout_s=900)
        out[n] = {
            k: max(r[k] for r in ranks)
            for k in ("params", "fp32_master", "adam_state", "state_total", "rss", "peak_rss")
        }
        out[n]["model_params"] = ranks[0]["model_params"]
        out[n]["losses_rank0"] = ranks[0]["losses"]
    return {"arch": arch, "input_shape": list(shape), "per_rank_bytes": out}


def run(args: argparse.Namespace) -> dict:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.accuracy:
        return run_accuracy(args)
    thr = run_throughput(args)
    cores = os.cpu_count()
    load = os.getloadavg()[0]
    print(
        f"{args.arch}, rule {args.rule}, global batch {args.batch}, mode {args.mode}, 1 thread per rank, "
        f"{cores} CPU cores, load average {load:.1f} at the end:"
    )
    for name, r in thr.items():
        line = f"  {name:15s} {r['ranks']} ranks {r['images_per_sec']:8.0f} images/s"
        if "speedup" in r:
            line += (
                f"  speedup {r['speedup']:.2f}×  efficiency {100 * r['efficiency']:.0f}%  "
                f"CPU {r['cpu_ms_per_image']:.2f} ms/image (CPU efficiency {100 * r['cpu_efficiency']:.0f}%)"
            )
        print(line)
        if len(r["stages"]) > 1 and "compute_s" in r["stages"][0]:
            print(
                "      "
                + "  ".join(
                    f"stage {s['stage']} (layers {s['layers']}): compute {s['compute_s']:.2f} s "
                    f"wait {s['wait_s']:.2f} s"
                    for s in r["stages"]
                )
            )
    result = {
        "arch": args.arch,
        "rule": args.rule,
        "batch": args.batch,
        "mode": args.mode,
        "engine": "own" if getattr(args, "engine", "trainer") == "own" or args.mode == "decoupled" else "trainer",
        "cpu_cores": cores,
        "load_average": load,
        "configs": thr,
    }
    for key, name in (
        ("dp2_speedup", "dp2"),
        ("dp4_speedup", "dp4"),
        ("pipeline2_speedup", "pipeline2"),
        ("pipeline4_speedup", "pipeline4"),
    ):
        if name in thr and "speedup" in thr[name]:
            result[key] = round(thr[name]["speedup"], 3)
    if args.zero3:
        z = run_zero3(args)
        params = next(iter(z["per_rank_bytes"].values()))["model_params"]
        print(f"ZeRO-3, {z['arch']} at {z['input_shape']} ({params:,} params), per-rank bytes (max over ranks):")
        base = None
        for n, m in z["per_rank_bytes"].items():
            base = base or m["state_total"] * n
            print(
                f"  N={n}: params {m['params'] / 2**20:7.1f} MiB  fp32 master {m['fp32_master'] / 2**20:7.1f} MiB  "
                f"Adam {m['adam_state'] / 2**20:7.1f} MiB  total {m['state_total'] / 2**20:7.1f} MiB "
                f"({m['state_total'] * n / base:.2f}× 1/N)  peak RSS {m['peak_rss'] / 2**20:7.0f} MiB"
            )
        result["zero3"] = z
    if getattr(args, "pipeline_memory", False):
        from bioscale.bench.scale_engines import run_pipeline_memory

        pm = run_pipeline_memory(args.rule, [int(v) for v in args.zero3_ranks.split(",")])
        full = pm["layouts"]["1x1"]["max_state_bytes"] if "1x1" in pm["layouts"] else None
        print(f"pipeline engine, {pm['arch']} at {pm['input_shape']}: max per-rank weights + Adam state")
        for m in pm["layouts"].values():
            share = f" ({m['max_state_bytes'] / full:.2f} of one rank's, 1/N = {1 / m['ranks']:.2f})" if full else ""
            print(f"  N={m['ranks']} {m['stages']} stages × {m['replicas']} replicas: "
                  f"{m['max_state_bytes'] / 2**20:8.1f} MiB{share}")  # fmt: skip
        result["pipeline_memory"] = pm
    return result
