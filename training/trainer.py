"""The training loop: one process, many processes (torchrun / SLURM / DeepSpeed launcher).

The trainer owns the loop, evaluation, logging, checkpoints and resume; the learning
rule (algorithms/) owns the update. Re-running the same command resumes from the
newest good checkpoint in the run directory, into the same TensorBoard directory."""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path
from typing import Any

import torch

from bioscale.algorithms import angles_to_bp, build_learner, feedback_angles
from bioscale.distributed import all_reduce_sum, read_environment
from bioscale.training.checkpoint import check_compatible, load_weights
from bioscale.training.config import ConfigError, ExperimentConfig
from bioscale.training.config_loader import upgraded_config
from bioscale.training.divergence import DivergenceMonitor
from bioscale.training.engines import make_engine
from bioscale.training.host_memory import keep_freed_memory
from bioscale.training.interrupts import InterruptLatch
from bioscale.training.metrics import MetricsLogger
from bioscale.training.preflight import check_config
from bioscale.training.progress import ProgressReporter
from bioscale.training.selection import select_epoch, write_result
from bioscale.training.weight_sharing import dynamic_sharing, share_weights, tie_weights

log = logging.getLogger("bioscale.train")
DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}


class Trainer:
    def __init__(self, cfg: ExperimentConfig, init_from: str | None = None):
        check_config(cfg)
        assert cfg.out is not None  # check_config requires a run directory
        self.cfg, self.run_dir = cfg, Path(cfg.out)
        keep_freed_memory()
        self.env = read_environment()
        # The engine owns distribution (process group, device, this rank's share of the
        # data, the step, its part of checkpoints); the trainer the loop and the records.
        self.engine = make_engine(cfg, self.env)
        self.device = self.engine.device
        self.is_main = self.env.rank == 0
        self.interrupts = InterruptLatch()
        self.autocast = torch.bfloat16 if cfg.distributed.precision == "bf16" else None
        self._build_data()
        self.learner = build_learner(
            cfg.model.arch,
            cfg.algorithm,
            seed=cfg.seed,
            device=self.device,
            dtype=DTYPES[cfg.model.dtype],
            input_shape=self.train_reader.image_shape,
            num_classes=self.num_classes,
        )
        if init_from:
            weights = load_weights(init_from)
            check_compatible(self.learner.state_dict(), weights, init_from)
            self.learner.load_state_dict(weights)
        elif cfg.model.weight_sharing != "none":
            tie_weights(self.learner)  # one filter per LC layer at the start (training/weight_sharing.py)
        self.engine.build(self.learner)
        self.step, self.epoch = 0, 0
        self.history: list[dict[str, Any]] = []
        # Errors, samples, summed loss this epoch: on the model's device, added to every step
        # without a host sync, and the tensor the epoch-end all-reduce needs there (NCCL).
        self.epoch_stats = self._new_epoch_stats()
        self.divergence = DivergenceMonitor()
        # Noise for inverse losses and data order differ per rank; weights were seeded identically.
        torch.manual_seed(cfg.seed * 7919 + self.env.rank)
        random.seed(cfg.seed * 7919 + self.env.rank)

    # ------------------------------------------------------------------ setup
    def _build_data(self):
        from bioscale.data_pipeline import build_reader, open_split

        assert self.cfg.data.path is not None  # check_config requires a data directory
        cfg, root = self.cfg, Path(self.cfg.data.path)
        common = dict(
            kind=cfg.data.reader,
            rank=self.engine.data_rank,
            world_size=self.engine.data_world,
            seed=cfg.seed,
            num_workers=cfg.data.num_workers,
            augment=cfg.data.augment,
            device="cpu" if self.device.type == "cpu" else str(self.device),
        )
        info = open_split(root / "train")
        self.num_classes = info.num_classes
        self.train_reader = build_reader(info, train=True, batch_size=cfg.data.batch_size_per_rank, **common)
        eval_batch = cfg.data.eval_batch_size_per_rank or cfg.data.batch_size_per_rank
        self.eval_readers = {
            split: build_reader(root / split, train=False, batch_size=eval_batch, **common)
            for split in cfg.train.eval_splits
        }
        if self.is_main:
            log.info(
                "data %s: %d training samples, %d classes, input %s, global batch %d (%d × %d ranks)",
                root,
                info.num_samples,
                info.num_classes,
                self.train_reader.image_shape,
                cfg.data.batch_size_per_rank * self.engine.data_world,
                cfg.data.batch_size_per_rank,
                self.engine.data_world,
            )

    # ------------------------------------------------------------- checkpoint
    def _state(self) -> dict:
        state = {
            "step": self.step,
            "epoch": self.epoch,
            "history": list(self.history),
            "reader": self.train_reader.state_dict(),
            # Summed over ranks (every rank saves at the same steps, so the all-reduce is
            # safe): rank 0 restores the sum and the others start from zero. A rank's own
            # sums would be lost for every rank but the one whose file is read (and a
            # pipeline stage without the output layer has none).
            "epoch_stats": all_reduce_sum(self.epoch_stats.clone()).to("cpu"),
            "epoch_stats_summed": True,
            "config": self.cfg.to_dict(),
            "rng": {"torch": torch.get_rng_state(), "python": random.getstate()},
            "rank": self.env.rank,  # whose RNG states these are
        }
        if self.device.type == "cuda":
            # This rank's GPU only (get_rng_state_all would create a context on every visible
            # GPU); it draws the inverse losses' noise on GPU runs.
            state["rng"]["cuda"] = torch.cuda.get_rng_state(self.device)
        return state  # the engine adds weights and optimizer state (or writes its shards)

    def save_checkpoint(self, out=None):
        # never save NaN weights (or the state after a non-finite loss) over the last good state
        self.divergence.check(self.step, out, self.learner)
        self.metrics.flush()
        self.engine.save(self.run_dir, self.step, self._state(), self.cfg.train.keep_checkpoints)

    def _check_same_run(self, state: dict) -> None:
        saved = upgraded_config(state["config"], f"{self.run_dir} checkpoint config")
        for section in ("model", "algorithm"):
            if saved[section] != self.cfg.to_dict()[section]:
                raise ConfigError(
                    f"{self.run_dir} holds a run with a different {section} config "
                    f"({saved[section]}); use another --out or the same config"
                )

    def _resume(self) -> int | None:
        state = self.engine.load(self.run_dir, check=self._check_same_run)
        if state is None:
            return None
        self.step, self.epoch, self.history = state["step"], state["epoch"], state["history"]
        self.train_reader.load_state_dict(state["reader"])
        self.epoch_stats = state["epoch_stats"].to(self.device, torch.float64)
        if state.get("epoch_stats_summed") and self.env.rank != 0:
            self.epoch_stats.zero_()  # rank 0 holds the sum over ranks (older files: per rank)
        # RNG states are per rank: the rank that saved them restores them (rank 0, or each
        # pipeline stage's first replica), others re-seed from step.
        if state.get("rank", 0) == self.env.rank:
            torch.set_rng_state(state["rng"]["torch"].cpu())
            random.setstate(state["rng"]["python"])
            # checkpoints of CPU runs (and older ones) have no CUDA state: the seed above stays
            if self.device.type == "cuda" and "cuda" in state["rng"]:
                torch.cuda.set_rng_state(state["rng"]["cuda"].cpu(), self.device)
        else:
            torch.manual_seed(self.cfg.seed * 7919 + self.env.rank + self.step)
        if self.is_main:
            log.info("resumed %s at step %d (epoch %d)", self.run_dir, self.step, self.epoch)
        return self.step

    # ------------------------------------------------------------------- loop
    def fit(self) -> dict:
        cfg = self.cfg
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            cfg.save_yaml(self.run_dir / "config.yaml")
        resume_step = self._resume()
        self.metrics = MetricsLogger(self.run_dir, enabled=self.is_main, resume_step=resume_step)
        try:
            with self.interrupts:
                while self.epoch < cfg.train.epochs:
                    self._train_epoch()
                    self._end_epoch()
                result = self._finish()
        finally:
            self.metrics.close()
        return result

    def _train_epoch(self):
        cfg, rule = self.cfg, self.learner.rule
        phase = rule.phase_for_epoch(self.epoch)
        self.train_reader.set_epoch(self.epoch)
        total = (
            len(self.train_reader)
            if cfg.train.max_steps_per_epoch is None
            else min(len(self.train_reader), cfg.train.max_steps_per_epoch)
        )
        done = self.train_reader.state_dict()["batch"]
        if done >= total:
            return
        progress = ProgressReporter(
            total - done,
            desc=f"epoch {self.epoch} ({phase})",
            enabled=self.is_main,
            every_steps=cfg.train.log_every_steps,
        )
        data_time = step_time = 0.0
        images_seen, t_last = 0, time.perf_counter()
        for x, y in self.train_reader:
            t0 = time.perf_counter()
            data_time += t0 - t_last
            x = x.to(self.device, DTYPES[cfg.model.dtype], non_blocking=True)
            y = y.to(self.device, non_blocking=True)
            with self.autocast_context():
                out = self._train_batch(x, y, phase)
            self.step += 1
            self.interrupts.check()  # a Ctrl-C swallowed during the step stops the run here
            if cfg.model.weight_sharing != "none" and self.step % cfg.model.sharing_every_steps() == 0:
                # after the step: training/weight_sharing.py (DeepSpeed: into its master copy too)
                share_weights(self.learner, self.engine.deepspeed_zero_stage, self._sharing())
            done += 1
            # No host sync until a log step: statistics and the divergence flag stay on the
            # device (on CUDA, .item() here would stall the launch queue every step).
            n, errors = self._record_step(out, y)
            images_seen += y.numel()
            t_last = time.perf_counter()
            step_time += t_last - t0
            if self.step % cfg.train.log_every_steps == 0:
                loss = self._log_train(out, n, errors, images_seen, data_time, step_time)
                progress.update(1, loss=loss)
                data_time = step_time = 0.0
                images_seen = 0
            else:
                progress.update(1)
            if (
                cfg.train.angle_every_steps
                and self.step % cfg.train.angle_every_steps == 0
                and self.is_main
                and self.engine.full_model
            ):  # not where rank 0 holds only a shard or a stage of the weights
                self.divergence.check(self.step, out, self.learner)
                with self.autocast_context():  # DeepSpeed bf16: the weights are bf16
                    angles = angles_to_bp(self.learner, x, y)
                self.metrics.log_scalars(self.step, {f"layer{l}/angle_to_bp_deg": a for l, a in angles.items()})
                fb = feedback_angles(self.learner)  # KP: angle(B_l, W_l) per layer; {} for other rules
                self.metrics.log_scalars(self.step, {f"angle/feedback_vs_forward/l{l}": a for l, a in fb.items()})
            if cfg.train.checkpoint_every_steps and self.step % cfg.train.checkpoint_every_steps == 0:
                self.save_checkpoint(out)
            if done >= total:
                break
        progress.close()

    def _sharing(self):
        """What a sharing event does to a layer: None (the exact average) or dynamic sharing."""
        m = self.cfg.model
        if m.weight_sharing != "dynamic":
            return None
        return dynamic_sharing(m.sharing_rate(), m.sharing_iterations(), self.cfg.seed, self.step)

    def _train_batch(self, x, y, phase: str):
        """The rule's engine steps for one batch (`Rule.step_phases`: one, or several inverse
        steps then a forward step). Reported: the last step that trained θ (its logits and
        task loss), with the last inverse step's inverse losses."""
        outs = [self.engine.step(x, y, p) for p in self.learner.rule.step_phases(phase)]
        out = outs[-1]
        if len(outs) > 1 and not out.inverse_losses:
            out.inverse_losses = next(o.inverse_losses for o in reversed(outs) if o.inverse_losses)
        return out

    def autocast_context(self):
        """bf16 autocast around the step (forward and backward) and the diagnostics that
        run the network, or nothing for fp32."""
        return torch.autocast(self.device.type, dtype=self.autocast, enabled=self.autocast is not None)

    def _new_epoch_stats(self) -> torch.Tensor:
        return torch.zeros(3, dtype=torch.float64, device=self.device)

    def _record_step(self, out, y) -> tuple[int, torch.Tensor]:
        """Add a step to the epoch's statistics and the divergence record, on the device
        (no host sync). Returns the batch size and the device tensor of its errors."""
        self.divergence.record(self.step, out)
        # The shape is known on the host. A pipeline stage without the output layer has
        # empty logits: it scores no samples (the last stage counts them).
        n = out.logits.shape[0]
        errors = (out.logits.argmax(1) != y[:n]).sum()
        self.epoch_stats += torch.stack(
            [errors.to(torch.float64), _scalar(n, self.device), out.task_loss.to(torch.float64)]
        )
        return n, errors

    def _log_train(self, out, n, errors, images_seen, data_time, step_time) -> float:
        """Log this step's train/* (per-sample means over the global batch), perf/* and opt/*
        scalars; the divergence check runs first. Returns train/loss (for the progress
        bar). The one host sync of a log step is here (and the weights' scan)."""
        # Every rank reaches the same log steps, so one small all-reduce of the sums is safe
        # here; they are built on the model's device (NCCL refuses CPU tensors).
        local = sorted(out.trace.local_losses.items())
        inverse = sorted(out.inverse_losses.items())
        values = [out.task_loss, errors, _scalar(n, self.device)] + [v for _, v in local + inverse]
        reduced = all_reduce_sum(torch.stack([v.detach().reshape(()).to(torch.float64) for v in values]))
        # one read-back for the sums and this rank's divergence record
        *sums, flag = torch.cat([reduced, self.divergence.flag(self.device).reshape(1)]).tolist()
        self.divergence.check(self.step, out, self.learner, flag=flag)
        total = max(sums[2], 1)
        scalars = {
            "train/loss": sums[0] / total,
            "train/top1_err": sums[1] / total,
            "perf/images_per_sec": images_seen * self.engine.data_world / max(data_time + step_time, 1e-9),
            "perf/data_time_pct": 100.0 * data_time / max(data_time + step_time, 1e-9),
        }
        for name, lr in self.engine.learning_rates().items():
            scalars[f"opt/lr_{name}"] = lr
        scalars.update(self.engine.extra_scalars())  # e.g. the decoupled pipeline's staleness
        for i, (l, _) in enumerate(local):
            scalars[f"layer{l}/local_loss"] = sums[3 + i] / total
        for i, (l, _) in enumerate(inverse):
            scalars[f"layer{l}/inverse_loss"] = sums[3 + len(local) + i] / total
        self.metrics.log_scalars(self.step, scalars)
        return scalars["train/loss"]

    def _end_epoch(self):
        stats = all_reduce_sum(self.epoch_stats.clone())
        errors, samples, loss, flag = torch.cat([stats, self.divergence.flag(self.device).reshape(1)]).tolist()
        self.divergence.check(self.step, None, self.learner, flag=flag)  # before evaluating NaN weights
        record: dict[str, float | None] = {
            "epoch": self.epoch,
            "train_top1_err": errors / max(samples, 1),
            "train_loss": loss / max(samples, 1),
        }
        for split, reader in self.eval_readers.items():
            res = self.engine.evaluate(reader, self.autocast)
            record[f"{split}_top1_err"] = res["top1_err"]
            record[f"{split}_top5_err"] = res.get("top5_err")
        scalars = {"epoch/train_top1_err": record["train_top1_err"]}
        for split in self.eval_readers:
            scalars[f"{split}/top1_err"] = record[f"{split}_top1_err"]
            if record[f"{split}_top5_err"] is not None:
                scalars[f"{split}/top5_err"] = record[f"{split}_top5_err"]
        self.metrics.log_scalars(self.step, scalars)
        if self.is_main:
            log.info(
                "epoch %d: %s", self.epoch, ", ".join(f"{k}={v:.4f}" for k, v in record.items() if isinstance(v, float))
            )
        self.history.append(record)
        self.epoch += 1
        self.epoch_stats.zero_()
        self.save_checkpoint()
        if self.is_main and "val" in self.eval_readers:
            write_result(
                self.run_dir, select_epoch(self.history, self.cfg.train.selection_window), self._result_extra()
            )

    def _result_extra(self) -> dict:
        return {
            "name": self.cfg.name,
            "arch": self.cfg.model.arch,
            "rule": self.cfg.algorithm.rule,
            "world_size": self.env.world_size,
            "steps": self.step,
            "history": self.history,
        }

    def _finish(self) -> dict:
        if "val" not in self.eval_readers:
            return {"history": self.history}
        selection = select_epoch(self.history, self.cfg.train.selection_window)
        if self.is_main:
            write_result(self.run_dir, selection, self._result_extra())
            self.metrics.log_hparams(_hparams(self.cfg), selection.hparam_metrics(), step=self.step)
        return {**selection.to_dict(), **self._result_extra()}


def _scalar(value: float, device: torch.device) -> torch.Tensor:
    """A float64 scalar on `device` made by a fill kernel: `torch.tensor(value, device=cuda)`
    would copy from pageable host memory, a synchronising transfer every step."""
    return torch.full((), value, dtype=torch.float64, device=device)


def _hparams(cfg: ExperimentConfig) -> dict:
    d = cfg.to_dict()
    keep = {
        "model": d["model"],
        "algorithm": d["algorithm"],
        "optim": d["optim"],
        "batch_size_per_rank": d["data"]["batch_size_per_rank"],
        "seed": d["seed"],
    }
    return keep
