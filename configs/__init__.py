"""The experiment YAMLs (the papers' rows, our Fashion-MNIST stand-ins, the base files they
inherit from), shipped as package data so an installed `bioscale` finds them without a
source checkout: `CONFIG_DIR / "fashion_mnist/lc_sdtp.yaml"`. Ground floor of the import
ladder: plain files, no code."""

from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent
"""Root of the shipped experiment YAMLs (the repository's `configs/` in a checkout)."""
