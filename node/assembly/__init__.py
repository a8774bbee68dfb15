"""Completeness: decide when a series and a study have all their instances."""

from node.assembly.completion import CompletionSweeper

__all__ = ["CompletionSweeper"]
