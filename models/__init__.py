"""Models: locally-connected layers, blocks (forward f + inverse g), networks, architecture registry.

Knows nothing of data, distribution or learning rules."""

from bioscale.models import fullwidth  # noqa: F401,E402  (registers imagenet_lc_fullwidth_{iclr,neurips})
from bioscale.models.architectures import ARCHITECTURES, ArchSpec, build_network, get_arch
from bioscale.models.blocks import HiddenBlock, OutputBlock
from bioscale.models.locally_connected import LocallyConnected2d, LocallyConnectedTranspose2d
from bioscale.models.network import Network

__all__ = [
    "ARCHITECTURES",
    "ArchSpec",
    "HiddenBlock",
    "LocallyConnected2d",
    "LocallyConnectedTranspose2d",
    "Network",
    "OutputBlock",
    "build_network",
    "get_arch",
]
