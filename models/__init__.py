"""Models: locally-connected layers, blocks (forward f + inverse g), networks, architecture registry.

Knows nothing of data, distribution or learning rules."""

from models.architectures import ARCHITECTURES, ArchSpec, build_network, get_arch
from models import fullwidth  # noqa: F401,E402  (registers imagenet_lc_fullwidth_{iclr,neurips})
from models.blocks import HiddenBlock, OutputBlock
from models.locally_connected import LocallyConnected2d, LocallyConnectedTranspose2d
from models.network import Network

__all__ = ["ARCHITECTURES", "ArchSpec", "HiddenBlock", "LocallyConnected2d", "LocallyConnectedTranspose2d",
           "Network", "OutputBlock", "build_network", "get_arch"]
