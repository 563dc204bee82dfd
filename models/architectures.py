"""Every architecture of both paper versions, by name, plus the weight-shared (conv) twin
of each LC net. `build_network(name, ...)` is the only way tests and the trainer build one.

Layer specs: ("fc", units) or ("lc", kernel, channels, stride, padding[, pool]) with pool
= (kernel, stride) average pooling after the nonlinearity. Twins replace "lc" by "conv".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bioscale.models.blocks import OutputBlock, dense_block, spatial_block
from bioscale.models.network import Network

MNIST, CIFAR, IMAGENET = (1, 28, 28), (3, 32, 32), (3, 224, 224)


@dataclass(frozen=True)
class ArchSpec:
    name: str
    input_shape: tuple[int, ...]
    num_classes: int
    layers: tuple[tuple, ...]
    source: str
    """Where the architecture comes from (paper version, table/section)."""


ARCHITECTURES: dict[str, ArchSpec] = {}


def register(spec: ArchSpec, twin: bool = True) -> None:
    ARCHITECTURES[spec.name] = spec
    if twin and any(layer[0] == "lc" for layer in spec.layers):
        conv_layers = tuple(("conv", *layer[1:]) if layer[0] == "lc" else layer for layer in spec.layers)
        name = spec.name.replace("_lc", "_conv")
        ARCHITECTURES[name] = ArchSpec(
            name, spec.input_shape, spec.num_classes, conv_layers, f"weight-shared twin of {spec.name}"
        )


S, V = "same", "valid"
# --- ICLR 2018 (paper-iclr2018.txt, section 3) ---
register(ArchSpec("iclr_mnist_fc", MNIST, 10, (("fc", 240),) * 7, "ICLR §3.1: 7 × FC240 (Lee et al.)"))
register(
    ArchSpec(
        "iclr_mnist_lc",
        MNIST,
        10,
        (("lc", 3, 32, 2, S), ("lc", 3, 16, 1, S), ("lc", 3, 16, 1, S), ("lc", 3, 10, 1, V)),
        "ICLR §3.1: 4 LC layers",
    )
)
register(ArchSpec("iclr_cifar_fc", CIFAR, 10, (("fc", 1024),) * 3, "ICLR §3.2: 3 × FC1024"))
register(
    ArchSpec(
        "iclr_cifar_lc",
        CIFAR,
        10,
        (("lc", 3, 32, 2, S), ("lc", 3, 32, 2, S), ("lc", 3, 16, 1, S), ("lc", 3, 16, 2, S), ("lc", 1, 10, 1, S)),
        "ICLR §3.2: 5 LC layers",
    )
)
# 3×3 average pooling, stride 2, VALID: 56→27→13→6, then the 6×6 spatial average.
register(
    ArchSpec(
        "iclr_imagenet_lc",
        IMAGENET,
        1000,
        (
            ("lc", 9, 48, 4, S, (3, 2)),
            ("lc", 5, 64, 1, S, (3, 2)),
            ("lc", 3, 96, 1, S, (3, 2)),
            ("lc", 3, 128, 1, S, (6, 6)),
        ),
        "ICLR §3.3: 4 LC layers with 3×3 average pooling and a final 6×6 average",
    )
)
# --- NeurIPS 2018 (neurips2018-facts.md, Table 3); padding unstated there: SAME ---
register(ArchSpec("neurips_mnist_fc", MNIST, 10, (("fc", 256),) * 5, "NeurIPS Table 3: 5 × FC256"))
register(
    ArchSpec("neurips_mnist_lc", MNIST, 10, (("lc", 3, 32, 2, S), ("lc", 3, 64, 2, S), ("fc", 1024)), "NeurIPS Table 3")
)
register(ArchSpec("neurips_cifar_fc", CIFAR, 10, (("fc", 1024),) * 3, "NeurIPS Table 3: 3 × FC1024"))
register(
    ArchSpec(
        "neurips_cifar_lc",
        CIFAR,
        10,
        (("lc", 5, 64, 2, S), ("lc", 5, 128, 2, S), ("lc", 3, 256, 1, S), ("fc", 1024)),
        "NeurIPS Table 3",
    )
)
register(
    ArchSpec(
        "neurips_imagenet_lc",
        IMAGENET,
        1000,
        (
            ("lc", 9, 48, 4, S),
            ("lc", 3, 48, 2, S),
            ("lc", 5, 96, 1, S),
            ("lc", 3, 96, 2, S),
            ("lc", 3, 192, 1, S),
            ("lc", 3, 192, 2, S),
            ("lc", 3, 384, 1, S),
        ),
        "NeurIPS Table 3: strided LC layers instead of pooling, no final average",
    )
)


def get_arch(name: str) -> ArchSpec:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ValueError(f"unknown architecture {name!r}; known: {', '.join(sorted(ARCHITECTURES))}") from None


def build_network(
    name: str,
    with_inverses: bool = False,
    output_inverse: bool | None = None,
    aux_dim: int = 0,
    aux_seed: int = 0,
    device=None,
    dtype: torch.dtype | None = None,
    input_shape: tuple[int, ...] | None = None,
    num_classes: int | None = None,
) -> Network:
    """Build architecture `name`. Inverses g_l are built for blocks 2..L when `with_inverses`
    (the output block's too unless `output_inverse=False`: DTP never uses g_L).
    `input_shape` / `num_classes` override the spec's (e.g. Fashion-MNIST on an MNIST net is the same;
    a 3-channel dataset on an MNIST net is not)."""
    spec = get_arch(name)
    in_shape = tuple(int(s) for s in (input_shape or spec.input_shape))
    shape = in_shape
    classes = int(num_classes or spec.num_classes)
    hidden = []
    for i, layer in enumerate(spec.layers):
        inv = with_inverses and i > 0  # the first block never needs an inverse
        if layer[0] == "fc":
            block = dense_block(shape, layer[1], inv, device, dtype)
        else:
            kind, kernel, channels, stride, padding, *pool = layer
            block = spatial_block(
                kind, shape, channels, kernel, stride, padding, pool[0] if pool else None, inv, device, dtype
            )
        hidden.append(block)
        shape = block.out_shape
    if output_inverse is None:
        output_inverse = with_inverses
    output = OutputBlock(shape, classes, output_inverse, aux_dim, aux_seed, device, dtype)
    return Network(name, in_shape, hidden, output)
