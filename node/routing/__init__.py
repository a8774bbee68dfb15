"""Routing: declarative rules pick which model runs on which complete series."""

from node.routing.rules import explain_mismatch, match_routes

__all__ = ["explain_mismatch", "match_routes"]
