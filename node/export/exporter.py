"""The exporter: delivers encoded results to every destination, and keeps at it.

It runs in the supervisor: one thread opens deliveries for newly encoded jobs, and
one thread per destination sends that destination's deliveries, so a destination
that is down or slow never holds up the others. A failed attempt is retried with
exponential backoff and jitter until `delivery.max_age_hours`, then the delivery is
failed (the dead letter that `radnode jobs --state failed` lists and
`radnode retry` puts back). Refusals that no retry can change fail at once.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

import structlog

from node.audit import audit
from node.config import Destination, NodeConfig
from node.domain import Delivery, DeliveryState
from node.errors import DeliveryError
from node.export.deidentify import Deidentifier
from node.export.dimse import AttemptFailed, DeliveryRefused, SendOutcome, store_to_peer
from node.export.outbound import OutboundObject, load_outbound
from node.export.stow import stow_to_server
from node.store import InstanceIndex
from node.store.deliveries import DeliveryQueue
from node.store.owners import this_host

log = structlog.get_logger("radnode.export")

POLL_SECONDS = 0.2  # idle polls only read the index
MIN_LEASE_SECONDS = 300.0


def retry_delay(attempts: int, base: float, cap: float, rng: Callable[[], float]) -> float:
    """The wait before the next attempt: base * 2^(attempts-1), at most `cap`, with
    "equal jitter" (between half and all of it) so that deliveries failed together by
    an outage do not all come back in the same second."""
    delay = min(cap, base * 2 ** max(0, attempts - 1))
    return float(delay / 2 + rng() * delay / 2)


class Exporter:
    """Delivers results; `run` until stopped, or `deliver_next` one at a time."""

    def __init__(
        self,
        config: NodeConfig,
        index: InstanceIndex,
        root: Path,
        clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.config = config
        self.queue = DeliveryQueue(index)
        self.root = Path(root)
        self.host = this_host()
        # Fits deliveries.lease_owner; release_orphans reads the pid back from it.
        self.owner = f"{self.host}:{os.getpid()}:exporter"
        self._clock = clock
        self._rng = rng
        self._refusals_logged: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self._wake: dict[str, threading.Event] = {}
        deid = config.deidentification
        self.deidentifier = Deidentifier.from_file(deid.key_file) if deid else None

    # -- the loops -------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Deliver until `stop` is set."""
        released = self.queue.release_orphans(self.host, self._clock())
        if released:
            log.info("deliveries_resumed", count=released)
        self._wake = {d.name: threading.Event() for d in self.config.destinations}
        threads = [
            threading.Thread(
                target=self._destination_loop,
                args=(destination, stop),
                name=f"export-{destination.name}",
                daemon=True,
            )
            for destination in self.config.destinations
        ]
        for thread in threads:
            thread.start()
        while not stop.is_set():
            try:
                self.open_deliveries()
            except Exception:  # the index busy or the disk failing: try again
                log.exception("export_error")
            stop.wait(POLL_SECONDS)
        for event in self._wake.values():
            event.set()
        for thread in threads:
            thread.join(timeout=self._longest_timeout() + 5)

    def _longest_timeout(self) -> float:
        return max((d.timeout_seconds for d in self.config.destinations), default=0.0)

    def _destination_loop(self, destination: Destination, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                delivery = self.deliver_next(destination)
            except Exception:  # the index busy: log it and go on with the next
                log.exception("export_error", destination=destination.name)
                delivery = None
            if delivery is None:
                # Woken at once when deliveries open, else each poll (retries fall due).
                wake = self._wake[destination.name]
                wake.wait(POLL_SECONDS)
                wake.clear()

    def open_deliveries(self) -> int:
        """Open deliveries for encoded jobs; fail those to unconfigured destinations."""
        now = self._clock()
        opened = self.queue.open_deliveries(now)
        for job_id in opened:
            log.info("job_delivering", job_id=job_id)
        if opened:
            for event in self._wake.values():
                event.set()
        orphaned = self.queue.fail_unknown_destinations(
            [d.name for d in self.config.destinations], now
        )
        if orphaned:
            log.error(
                "delivery_destination_unknown",
                deliveries=orphaned,
                hint="a route sends to a destination that is no longer configured",
            )
        return len(opened)

    # -- one delivery ----------------------------------------------------------------

    def lease_seconds(self, destination: Destination) -> float:
        """How long a delivery stays leased without progress."""
        return max(MIN_LEASE_SECONDS, 4 * destination.timeout_seconds)

    def deliver_next(self, destination: Destination) -> Delivery | None:
        """Claim the next due delivery to `destination` and attempt it."""
        delivery = self.queue.claim(
            destination.name, self.owner, self.lease_seconds(destination), self._clock()
        )
        if delivery is None:
            return None
        self.deliver(destination, delivery)
        return delivery

    def deliver(self, destination: Destination, delivery: Delivery) -> DeliveryState | None:
        """One attempt; records the outcome and returns the delivery's new state."""
        fields = {
            "job_id": delivery.job_id,
            "destination": destination.name,
            "study_uid": delivery.study_uid,
            "attempt": delivery.attempts,
        }
        lease = self.lease_seconds(destination)

        def on_confirmed(sop_instance_uid: str) -> None:
            self.queue.confirm(delivery.id, self.owner, [sop_instance_uid], self._clock(), lease)

        try:
            if delivery.result_relpath is None:
                raise DeliveryError(
                    "the job has no result any more (purged or removed); send the series "
                    "again to run the model anew"
                )
            objects = load_outbound(self.root / delivery.result_relpath)
            outcome = self._send(destination, objects, delivery, on_confirmed)
        except DeliveryRefused as exc:
            return self._give_up(delivery, str(exc), fields)
        except AttemptFailed as exc:
            return self._retry(destination, delivery, str(exc), fields)
        except DeliveryError as exc:
            return self._give_up(delivery, str(exc), fields)
        except Exception as exc:  # a bug or a broken file: retried, with the traceback
            log.exception("delivery_error", **fields)
            return self._retry(destination, delivery, f"{type(exc).__name__}: {exc}", fields)
        self._log_refusals(destination, outcome)
        job_state = self.queue.succeed(delivery.id, self.owner, self._clock(), outcome.detail())
        if job_state is None:
            log.warning("delivery_lease_lost", **fields)
            return None
        log.info("delivered", **fields, **outcome.detail(), job_state=str(job_state))
        audit(
            "results_delivered",
            job_id=delivery.job_id,
            destination=destination.name,
            to=destination.describe(),
            study_uid=delivery.study_uid,
            objects=len(outcome.sent) + outcome.skipped,
            kinds=outcome.kinds,
        )
        return DeliveryState.DELIVERED

    def _send(
        self,
        destination: Destination,
        objects: list[OutboundObject],
        delivery: Delivery,
        on_confirmed: Callable[[str], None],
    ) -> SendOutcome:
        if destination.protocol == "stow-rs":
            return stow_to_server(
                destination, objects, delivery.confirmed, on_confirmed, self.deidentifier
            )
        calling = destination.calling_ae_title or self.config.node.ae_title
        return store_to_peer(
            destination, calling, objects, delivery.confirmed, on_confirmed, self.deidentifier
        )

    def _retry(
        self, destination: Destination, delivery: Delivery, reason: str, fields: dict[str, object]
    ) -> DeliveryState | None:
        settings = self.config.delivery
        delay = retry_delay(
            delivery.attempts, settings.retry_base_seconds, settings.retry_max_seconds, self._rng
        )
        state = self.queue.retry_later(
            delivery.id,
            self.owner,
            reason,
            self._clock(),
            delay,
            settings.max_age_hours * 3600,
        )
        if state == DeliveryState.FAILED:
            log.error("delivery_failed", reason=reason, gave_up=True, **fields)
        elif state == DeliveryState.PENDING:
            log.warning("delivery_retry", reason=reason, delay_seconds=round(delay, 1), **fields)
        return state

    def _give_up(
        self, delivery: Delivery, reason: str, fields: dict[str, object]
    ) -> DeliveryState | None:
        if self.queue.give_up(delivery.id, self.owner, reason, self._clock()):
            log.error("delivery_failed", reason=reason, gave_up=False, **fields)
            return DeliveryState.FAILED
        return None

    def _log_refusals(self, destination: Destination, outcome: SendOutcome) -> None:
        """Say once per destination and kind what it refuses and what goes instead."""
        for kind, why in outcome.refused.items():
            key = (destination.name, kind)
            with self._lock:
                if key in self._refusals_logged:
                    continue
                self._refusals_logged.add(key)
            instead = [k for k in outcome.kinds if k not in destination.outputs]
            log.warning(
                "destination_refuses_output",
                destination=destination.name,
                output=kind,
                reason=why,
                sent_instead=instead or "nothing",
                hint=f"to receive {kind}, ask the team running {destination.describe()} to "
                "accept this SOP class, or remove it from this destination's outputs",
            )
