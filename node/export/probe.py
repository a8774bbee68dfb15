"""Connectivity checks of every destination, for the status page: C-ECHO for a
DICOM destination, a QIDO-RS query for a STOW-RS one, at start and every few
minutes, so IT sees a broken link before a result waits on it."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import structlog

from node.config import NodeConfig
from node.errors import ConfigError
from node.export.scu import echo, target_of
from node.export.stow import check_stow

log = structlog.get_logger("radnode.export")

PROBE_SECONDS = 300.0


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The last check of one destination."""

    ok: bool
    message: str
    at: float


class DestinationProbe:
    """Checks each destination in turn; `results()` gives the latest of each."""

    def __init__(self, config: NodeConfig, interval: float = PROBE_SECONDS) -> None:
        self.config = config
        self.interval = interval
        self._results: dict[str, CheckResult] = {}
        self._lock = threading.Lock()

    def check_all(self) -> None:
        """Check every destination once, now."""
        for destination in self.config.destinations:
            if destination.protocol == "stow-rs":
                ok, message = check_stow(destination)
            else:
                try:
                    calling = destination.calling_ae_title or self.config.node.ae_title
                    result = echo(target_of(destination), calling, destination.timeout_seconds)
                except ConfigError as exc:
                    ok, message = False, str(exc)
                else:
                    ok, message = result.ok, result.message
                    if result.ok and result.echo_ms is not None:
                        message = f"C-ECHO {result.echo_ms:.0f} ms"
            with self._lock:
                self._results[destination.name] = CheckResult(ok, message, time.time())
            if not ok:
                log.warning(
                    "destination_check_failed", destination=destination.name, reason=message
                )

    def results(self) -> dict[str, CheckResult]:
        """The latest check of each destination checked so far."""
        with self._lock:
            return dict(self._results)

    def run(self, stop: threading.Event) -> None:
        """Check at start, then every `interval` seconds, until stopped."""
        while not stop.is_set():
            try:
                self.check_all()
            except Exception:  # a check must never stop the node
                log.exception("destination_check_error")
            stop.wait(self.interval)
