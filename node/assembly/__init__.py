"""Completeness: decide when a series and a study have all their instances."""

from node.assembly.completion import CompletionSweeper
from node.assembly.counted import CountedCompletion, InstanceCounter

__all__ = ["CompletionSweeper", "CountedCompletion", "InstanceCounter"]
