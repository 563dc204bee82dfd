"""`bioscale bench precision`: how much of each rule's boundary signals survives bf16.

For each rule and architecture: one network in float64 and its float32 copy (same
weights), one batch; the signal c·δ_l arriving at every hidden h_l is computed in float64
(the baseline), in float32, and in float32 under bf16 autocast (`torch.autocast` on the
chosen device: CPU autocast on a CPU). Printed per rule: the lowest per-layer cosine with
the float64 signal, and 1 − that cosine. A g(h) − g(h − δ) formed in bf16 loses a
small δ entirely (target propagation's differences at the ImageNet configs' α).
"""

from __future__ import annotations

import argparse
import copy

import torch

RULES_DEFAULT = ("dtp", "sdtp", "aosdtp", "fa", "dfa", "bp")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--archs", default="iclr_mnist_fc,iclr_mnist_lc", help="comma-separated architectures")
    parser.add_argument("--rules", default=",".join(RULES_DEFAULT), help="comma-separated rules")
    parser.add_argument("--alpha", type=float, default=1.273e-3, help="DTP's α (default: the ImageNet configs')")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")


def _signals(learner, x, y, autocast: bool) -> list[torch.Tensor]:
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
        out = learner(x, y, phase="forward" if learner.rule.target_propagation else "both")
        hidden = [h for h in out.hidden if h.requires_grad]
        grads = torch.autograd.grad(out.loss, hidden)
    return [g.detach().double().flatten().cpu() for g in grads]


def _min_cos(got: list[torch.Tensor], ref: list[torch.Tensor]) -> float:
    return min(float(torch.nn.functional.cosine_similarity(a, b, dim=0)) for a, b in zip(got, ref))


def run(args: argparse.Namespace) -> dict:
    from bioscale.algorithms import RuleConfig, build_learner
    from bioscale.models import get_arch

    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    results: dict[str, dict] = {}
    for arch in args.archs.split(","):
        spec = get_arch(arch)
        g = torch.Generator().manual_seed(0)
        x = torch.rand(args.batch, *spec.input_shape, generator=g, dtype=torch.float64)
        y = torch.randint(0, spec.num_classes, (args.batch,), generator=g)
        for rule in args.rules.split(","):
            cfg = RuleConfig(rule=rule, alpha=args.alpha if rule == "dtp" else None)
            ref_learner = build_learner(arch, cfg, seed=1, dtype=torch.float64)
            learner = copy.deepcopy(ref_learner).float().to(device)
            ref = _signals(ref_learner, x, y, autocast=False)
            xf, yd = x.float().to(device), y.to(device)
            fp32 = _min_cos(_signals(learner, xf, yd, autocast=False), ref)
            bf16 = _min_cos(_signals(learner, xf, yd, autocast=True), ref)
            results.setdefault(arch, {})[rule] = {
                "fp32_min_cos": round(fp32, 6),
                "bf16_min_cos": round(bf16, 6),
                "bf16_one_minus_cos": float(f"{1 - bf16:.2e}"),
            }
            print(
                f"{arch:16s} {rule:8s} lowest per-layer cosine with float64: "
                f"fp32 {fp32:.6f}, bf16 {bf16:.6f} (1 − cos {1 - bf16:.1e})",
                flush=True,
            )
    return {"device": str(device), "alpha": args.alpha, "batch": args.batch, "signals": results}
