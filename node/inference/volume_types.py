"""The Volume type lives in node.domain (results use it too); kept here for imports."""

from node.domain.volume import FloatArray, Volume

__all__ = ["FloatArray", "Volume"]
