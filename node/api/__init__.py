"""HTTP: health, readiness, metrics, jobs, studies and STOW-RS ingest; reads the store."""

from node.api.app import ApiContext, StowHandler, build_app
from node.api.server import ApiServer

__all__ = ["ApiContext", "ApiServer", "StowHandler", "build_app"]
