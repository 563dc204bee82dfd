"""Models: locally-connected layers, blocks (forward f + inverse g), networks, architecture registry.

Knows nothing of data, distribution or learning rules."""

from models.architectures import ARCHITECTURES, ArchSpec, build_network, get_arch
from models.blocks import HiddenBlock, OutputBlock
from models.locally_connected import LocallyConnected2d, LocallyConnectedTranspose2d
from models.network import Network

__all__ = ["ARCHITECTURES", "ArchSpec", "HiddenBlock", "LocallyConnected2d", "LocallyConnectedTranspose2d",
           "Network", "OutputBlock", "build_network", "get_arch"]
