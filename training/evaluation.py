"""Evaluation: top-1 / top-5 error over a split read exactly once across all ranks.

Each rank counts correct predictions over the samples it was given (never padding),
then the counts are summed over ranks: the error is over exactly the split's samples.
The counts stay on the model's device (the all-reduce needs them there under NCCL) and
are read back once, at the end: no host sync per batch."""

from __future__ import annotations

import contextlib

import torch

from bioscale.distributed import all_reduce_sum


def add_batch_counts(counts: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
    """Add one batch to `counts` = [top-1 correct, top-5 correct, samples, summed loss], on
    the device (no host sync). The one definition, also for the pipeline's last stage."""
    logits = logits.float()
    k = min(5, logits.shape[1])
    hit = logits.topk(k, dim=1).indices == labels[:, None]
    counts[0] += hit[:, 0].sum()
    counts[1] += hit.any(dim=1).sum()
    counts[2] += labels.numel()  # known on the host
    counts[3] += torch.nn.functional.cross_entropy(logits, labels, reduction="sum")


def summarize(counts: torch.Tensor, num_classes: int, reader) -> dict[str, float]:
    """Sum every rank's counts (the one host sync) and turn them into the split's errors."""
    top1, top5, n, loss_sum = all_reduce_sum(counts).tolist()
    if n == 0:
        raise RuntimeError(f"evaluation read no samples from {getattr(reader.info, 'path', 'the split')}")
    out = {"top1_err": 1 - top1 / n, "loss": loss_sum / n, "samples": int(n)}
    if num_classes > 5:
        out["top5_err"] = 1 - top5 / n
    return out


@torch.no_grad()
def evaluate(net, reader, device: torch.device, autocast_dtype: torch.dtype | None = None) -> dict[str, float]:
    was_training = net.training
    net.eval()
    # top1 correct, top5 correct, samples, summed loss
    counts = torch.zeros(4, dtype=torch.float64, device=device)
    for images, labels in reader:
        # A rank's final batch may be empty; it still runs the forward: under ZeRO-3 every
        # forward gathers parameters collectively, and a rank that skipped would hang the others.
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        autocast = (
            contextlib.nullcontext() if autocast_dtype is None else torch.autocast(device.type, dtype=autocast_dtype)
        )
        with autocast:
            logits = net(images.to(next(net.parameters()).dtype))
        if labels.numel() == 0:
            continue
        add_batch_counts(counts, logits, labels)
    net.train(was_training)
    return summarize(counts, net.num_classes, reader)
