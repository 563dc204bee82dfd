"""Evaluation: top-1 / top-5 error over a split read exactly once across all ranks.

Each rank counts correct predictions over the samples it was given (never padding),
then the counts are summed over ranks: the error is over exactly the split's samples."""

from __future__ import annotations

import torch

from bioscale.distributed import all_reduce_sum


@torch.no_grad()
def evaluate(net, reader, device: torch.device, autocast_dtype: torch.dtype | None = None) -> dict[str, float]:
    was_training = net.training
    net.eval()
    counts = torch.zeros(4, dtype=torch.float64)  # top1 correct, top5 correct, samples, summed loss
    for images, labels in reader:
        # A rank's final batch may be empty; it still runs the forward: under ZeRO-3 every
        # forward gathers parameters collectively, and a rank that skipped would hang the others.
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = net(images.to(next(net.parameters()).dtype)).float()
        if labels.numel() == 0:
            continue
        k = min(5, logits.shape[1])
        topk = logits.topk(k, dim=1).indices
        hit = topk == labels[:, None]
        counts[0] += hit[:, 0].sum().item()
        counts[1] += hit.any(dim=1).sum().item()
        counts[2] += labels.numel()
        counts[3] += torch.nn.functional.cross_entropy(logits, labels, reduction="sum").item()
    net.train(was_training)
    counts = all_reduce_sum(counts)
    n = counts[2].item()
    if n == 0:
        raise RuntimeError(f"evaluation read no samples from {getattr(reader.info, 'path', 'the split')}")
    out = {"top1_err": 1 - counts[0].item() / n, "loss": counts[3].item() / n, "samples": int(n)}
    if net.num_classes > 5:
        out["top5_err"] = 1 - counts[1].item() / n
    return out
