"""Deliver a job's results to a DICOM peer with C-STORE, in one association.

One presentation context is proposed per (SOP class, transfer syntax), so the peer
says yes or no to each syntax on its own: the node then knows exactly which SOP
classes it refuses (SEG or SR on an older archive: the fallbacks go instead) and
which syntaxes it takes for the others (each object is sent in one of those,
transcoded losslessly when its own is not among them).
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import AE, build_context

from node.config import Destination
from node.domain.status import (
    DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
    SOP_CLASS_NOT_SUPPORTED,
    SUCCESS,
    describe_status,
)
from node.errors import ConfigError, DeliveryError
from node.export.deidentify import Deidentifier
from node.export.outbound import (
    NOT_FOR_DEIDENTIFIED,
    OutboundObject,
    kinds_to_send,
    objects_of,
    read_for_destination,
)
from node.export.scu import MAX_CONTEXTS, check_tcp, explain_failed_association, target_of
from node.export.transcode import CannotTranscode, choose_syntax, proposed_syntaxes, transcode

# Statuses that no retry can change: the peer refuses this object for good.
_REFUSALS = (SOP_CLASS_NOT_SUPPORTED,)
_REFUSAL_MASK = DATA_SET_DOES_NOT_MATCH_SOP_CLASS & 0xFF00
# What a destination may refuse and get its fallbacks for instead.
_REPLACEABLE = ("seg", "sr")


def _plan(
    destination: Destination, candidates: Sequence[OutboundObject], outcome: SendOutcome
) -> list[OutboundObject]:
    """The objects to send given what the destination refused so far; records the kinds
    it gets in `outcome`, and keeps only the refusals that matter to it."""
    kinds = kinds_to_send(destination, outcome.refused)
    relevant = set(destination.outputs)
    if outcome.refused.keys() & set(_REPLACEABLE):
        relevant.update(destination.fallback_outputs)
    outcome.refused = {k: v for k, v in outcome.refused.items() if k in relevant}
    to_send = objects_of(candidates, kinds)
    outcome.kinds = sorted({o.kind for o in to_send}, key=kinds.index)
    return to_send


class AttemptFailed(DeliveryError):
    """This attempt failed for a reason that may pass (peer down, timeout): retry."""


class DeliveryRefused(DeliveryError):
    """The destination refuses what it would be sent; retrying cannot help."""


@dataclass
class SendOutcome:
    """What one delivery attempt did."""

    sent: list[str] = field(default_factory=list)  # SOP instance UIDs confirmed now
    skipped: int = 0  # confirmed by an earlier attempt
    kinds: list[str] = field(default_factory=list)  # the kinds this destination received
    refused: dict[str, str] = field(default_factory=dict)  # kind -> why the peer refuses it
    transcoded: dict[str, str] = field(default_factory=dict)  # kind -> syntax name
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def detail(self) -> dict[str, object]:
        """The outcome for the job's timeline (UIDs counted, not listed)."""
        return {
            "objects": len(self.sent) + self.skipped,
            "kinds": self.kinds,
            **({"refused": self.refused} if self.refused else {}),
            **({"transcoded": self.transcoded} if self.transcoded else {}),
            **({"warnings": self.warnings} if self.warnings else {}),
            "seconds": round(self.seconds, 3),
        }


def _has_pixels(ds: Dataset) -> bool:
    return "PixelData" in ds


def _status_text(status: Dataset) -> str:
    code = int(status.Status)
    comment = str(status.get("ErrorComment", "")).strip()
    return describe_status(code) + (f": {comment}" if comment else "")


def store_to_peer(
    destination: Destination,
    calling_ae: str,
    objects: Sequence[OutboundObject],
    confirmed: frozenset[str],
    on_confirmed: Callable[[str], None],
    deidentifier: Deidentifier | None = None,
) -> SendOutcome:
    """Send the objects the destination takes, in one association.

    Raises AttemptFailed (retry later) or DeliveryRefused (give up), each with a
    reason IT can act on. `on_confirmed` is called with each SOP instance UID right
    after the peer answered success, so a crash loses no progress.
    """
    try:
        target = target_of(destination)
    except ConfigError as exc:
        raise DeliveryRefused(str(exc)) from exc
    started = time.perf_counter()
    timeout = destination.timeout_seconds
    wanted = {*destination.outputs, *destination.fallback_outputs}
    if destination.deidentify:
        wanted -= set(NOT_FOR_DEIDENTIFIED)
    candidates = objects_of(objects, wanted)
    datasets = {
        o.sop_instance_uid: read_for_destination(o, destination, deidentifier) for o in candidates
    }
    contexts = []
    seen: set[tuple[str, str]] = set()
    for obj in candidates:
        ds = datasets[obj.sop_instance_uid]
        for syntax in proposed_syntaxes(str(ds.file_meta.TransferSyntaxUID), _has_pixels(ds)):
            if (obj.sop_class_uid, syntax) not in seen:
                seen.add((obj.sop_class_uid, syntax))
                contexts.append(build_context(obj.sop_class_uid, syntax))
    if len(contexts) > MAX_CONTEXTS:
        raise DeliveryRefused(f"{len(contexts)} presentation contexts exceed {MAX_CONTEXTS}")
    if not contexts:
        return SendOutcome(seconds=time.perf_counter() - started)

    problem = check_tcp(target, timeout)
    if problem is not None:
        raise AttemptFailed(problem)
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = timeout
    ae.connection_timeout = timeout
    ae.requested_contexts = contexts
    began = time.perf_counter()
    try:
        assoc = target.associate(ae)
    except ssl.SSLError as exc:
        raise AttemptFailed(
            f"TLS with {target} failed: {exc.reason or exc}; check "
            "destinations[].tls and the peer's certificate"
        ) from exc
    if not assoc.is_established:
        waited = time.perf_counter() - began
        raise AttemptFailed(explain_failed_association(assoc, calling_ae, target, waited, timeout))
    outcome = SendOutcome()
    try:
        accepted: dict[str, set[str]] = {}
        for cx in assoc.accepted_contexts:
            accepted.setdefault(str(cx.abstract_syntax), set()).add(str(cx.transfer_syntax[0]))
        chosen: dict[str, str] = {}
        for obj in candidates:
            ds = datasets[obj.sop_instance_uid]
            syntaxes = accepted.get(obj.sop_class_uid, set())
            if not syntaxes:
                outcome.refused.setdefault(
                    obj.kind, f"{UID(obj.sop_class_uid).name} is not accepted"
                )
                continue
            stored = str(ds.file_meta.TransferSyntaxUID)
            first = choose_syntax(stored, syntaxes)
            order = [first] if first else []
            order += [s for s in sorted(syntaxes) if s not in order]
            try:
                chosen[obj.sop_instance_uid] = transcode(ds, order)
            except CannotTranscode as exc:
                names = ", ".join(UID(s).name for s in sorted(syntaxes))
                outcome.refused.setdefault(
                    obj.kind,
                    f"{UID(obj.sop_class_uid).name} is accepted only as {names}, which "
                    f"cannot carry this object ({exc})",
                )
                continue
            if chosen[obj.sop_instance_uid] != stored:
                outcome.transcoded[obj.kind] = UID(chosen[obj.sop_instance_uid]).name
        queue = _plan(destination, candidates, outcome)
        if not queue and outcome.refused:
            raise DeliveryRefused(
                f"{target} accepts none of the results it should get ("
                + "; ".join(f"{k}: {why}" for k, why in outcome.refused.items())
                + "); enable those SOP classes on the destination or change its outputs"
            )
        done: set[str] = set()
        while queue:
            obj = queue.pop(0)
            done.add(obj.sop_instance_uid)
            if obj.sop_instance_uid in confirmed:
                outcome.skipped += 1
                continue
            if not assoc.is_established:
                raise AttemptFailed(
                    f"the association with {target} was lost after {len(outcome.sent)} objects"
                )
            status = assoc.send_c_store(datasets[obj.sop_instance_uid])
            if not status or "Status" not in status:
                raise AttemptFailed(
                    f"no C-STORE response from {target} within {timeout:g} s for the "
                    f"{obj.kind} object"
                )
            code = int(status.Status)
            if code == SUCCESS or code & 0xF000 == 0xB000:
                if code != SUCCESS:
                    outcome.warnings.append(f"{obj.kind}: {_status_text(status)}")
                on_confirmed(obj.sop_instance_uid)
                outcome.sent.append(obj.sop_instance_uid)
                continue
            text = f"{target} answered {_status_text(status)} to the {obj.kind} object"
            if code == SOP_CLASS_NOT_SUPPORTED and obj.kind in _REPLACEABLE:
                # Accepted at negotiation, refused at storage: the fallbacks go instead.
                outcome.refused[obj.kind] = text
                queue = [
                    o
                    for o in _plan(destination, candidates, outcome)
                    if o.sop_instance_uid not in done
                ]
                continue
            if code in _REFUSALS or code & 0xFF00 == _REFUSAL_MASK:
                raise DeliveryRefused(text)
            raise AttemptFailed(text)
    finally:
        if assoc.is_established:
            assoc.release()
    outcome.seconds = time.perf_counter() - started
    return outcome
