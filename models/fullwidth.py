"""The paper's ImageNet LC networks at the channel widths it had to remove.

Reading of the sources (reference/paper-iclr2018.txt §3.3, neurips2018-facts.md Table 3):
the ImageNet LC net "was inspired by the ImageNet architecture used in (Springenberg et
al., 2014)" — All-CNN-B for ImageNet, whose layers are

    11×11 conv 96 /4, 1×1 96, 3×3 96 /2, 5×5 256, 1×1 256, 3×3 256 /2,
    3×3 384, 1×1 384, 3×3 384 /2, 3×3 1024, 1×1 1024, 1×1 1000, global 6×6 average

— and the paper "decreased number of output channels in the layers and also removed
layers with 1 × 1 filters ... slightly decreased filters in the first layer, from 11 × 11
to 9 × 9". Only the channel cut is undone here: the 9×9 first layer, the missing 1×1
layers and each paper's down-sampling (ICLR: 3×3 average pooling; NeurIPS: stride-2 LC
layers) stay, so each net is its paper's net with every width mapped back:

    ICLR     48 → 96, 64 → 256, 96 → 384, 128 → 1024          (one width per pooling level)
    NeurIPS  48 → 96, 96 → 256, 192 → 384, 384 → 1024          (a level = a stride-2 pair)

NeurIPS full-width is then exactly All-CNN-B without its 1×1 layers (kernels 9,3,5,3,3,3,3).
Forward weights at 224×224 (`python -m bioscale.models.fullwidth`, counted on the meta device):
ICLR 7.99·10⁸ (paper's net: 1.06·10⁸), NeurIPS 1.20·10⁹ (paper's: 2.60·10⁸); the
inverses of TP add 7.3·10⁸ / 1.13·10⁹. NeurIPS full-width at 32×32: 2.4·10⁷ forward.
The ICLR net needs ≥ 221 px inputs (VALID 3×3 pools then a 6×6 average); the NeurIPS
net runs at any size, e.g. 32×32 for CPU tests.

Import this module to register the names (`models/__init__.py` does not yet). `register`
also adds the weight-shared twins imagenet_conv_fullwidth_{iclr,neurips}.
"""

from __future__ import annotations

from bioscale.models.architectures import ARCHITECTURES, IMAGENET, ArchSpec, build_network, register

S = "same"
ICLR_WIDTHS = {48: 96, 64: 256, 96: 384, 128: 1024}
NEURIPS_WIDTHS = {48: 96, 96: 256, 192: 384, 384: 1024}


def _widen(source: str, name: str, widths: dict[int, int], note: str) -> ArchSpec:
    """The spec of `source` with every LC layer's channels mapped through `widths`."""
    base = ARCHITECTURES[source]
    layers = tuple(
        (kind, k, widths[c], *rest) if kind == "lc" else (kind, k, c, *rest) for kind, k, c, *rest in base.layers
    )
    return ArchSpec(name, IMAGENET, base.num_classes, layers, f"{base.source}; {note}")


register(
    _widen(
        "iclr_imagenet_lc",
        "imagenet_lc_fullwidth_iclr",
        ICLR_WIDTHS,
        "All-CNN-B widths 96/256/384/1024 restored (Springenberg et al. 2014)",
    )
)
register(
    _widen(
        "neurips_imagenet_lc",
        "imagenet_lc_fullwidth_neurips",
        NEURIPS_WIDTHS,
        "All-CNN-B widths 96/96/256/256/384/384/1024 restored (Springenberg et al. 2014)",
    )
)
FULLWIDTH = ("imagenet_lc_fullwidth_iclr", "imagenet_lc_fullwidth_neurips")


def parameter_counts(
    name: str, input_shape: tuple[int, ...] | None = None, with_inverses: bool = True
) -> dict[str, int]:
    """Forward / inverse parameter counts, built on the meta device (no memory)."""
    net = build_network(name, with_inverses=with_inverses, device="meta", input_shape=input_shape)
    return net.parameter_counts()


if __name__ == "__main__":
    for name in FULLWIDTH:
        for shape in (IMAGENET, (3, 32, 32)) if name.endswith("neurips") else (IMAGENET,):
            c = parameter_counts(name, shape)
            print(
                f"{name} @ {shape[1]}×{shape[2]}: forward weights {c['forward_weights']:,}, "
                f"forward params {c['forward_params']:,}, inverse params {c['inverse_params']:,}"
            )
