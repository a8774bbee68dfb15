"""A limit on open associations shared by every listener process of one node."""

from __future__ import annotations

import multiprocessing
from multiprocessing.sharedctypes import Synchronized


class AssociationLimiter:
    """Counts open associations across processes; `try_acquire` refuses past the limit."""

    def __init__(self, limit: int, counter: Synchronized[int] | None = None) -> None:
        self.limit = limit
        # Made in the spawn context, the one listener processes are started in.
        self.counter: Synchronized[int] = counter or multiprocessing.get_context("spawn").Value(
            "i", 0
        )

    def try_acquire(self) -> bool:
        """Take a slot if one is free."""
        with self.counter.get_lock():
            if self.counter.value >= self.limit:
                return False
            self.counter.value += 1
            return True

    def release(self) -> None:
        """Give a slot back."""
        with self.counter.get_lock():
            self.counter.value = max(0, self.counter.value - 1)

    @property
    def in_use(self) -> int:
        """Slots taken now."""
        return int(self.counter.value)
