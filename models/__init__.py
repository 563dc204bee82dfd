"""Models: locally-connected layers, blocks (forward f + inverse g), networks, architecture registry.

Knows nothing of data, distribution or learning rules."""

from models.locally_connected import LocallyConnected2d, LocallyConnectedTranspose2d

__all__ = ["LocallyConnected2d", "LocallyConnectedTranspose2d"]
