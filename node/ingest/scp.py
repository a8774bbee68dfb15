"""The DIMSE listener: C-ECHO and C-STORE for configured sources, one thread per association.

The C-STORE handler writes the bytes as received (no pixel decoding), durably, and
indexes them before it answers Success. Every other outcome gets a named failure
status and a log event with the reason; the association goes on.
"""

from __future__ import annotations

import socket
import socketserver
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import structlog
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from node.audit import audit
from node.config import NodeConfig
from node.domain import AssociationInfo, InstanceHeader, StoreOutcome
from node.domain import status as st
from node.errors import InvalidInput, StorageFull
from node.ingest import tuning
from node.ingest.limiter import AssociationLimiter
from node.ingest.syntaxes import ACCEPTED_TRANSFER_SYNTAXES
from node.store import InstanceStore, check_uid, read_header
from node.store.sealed import sealing
from node.tls import server_context

log = structlog.get_logger("radnode.ingest")

ACCEPT_DEFERRAL_SECONDS = 0.01


@dataclass
class _Session:
    """What the listener tracks about one open association."""

    info: AssociationInfo
    holds_slot: bool
    log: Any
    wake: tuning.WakingQueue | None = None
    outcomes: Counter[str] = field(default_factory=Counter)
    studies: set[str] = field(default_factory=set)
    per_study: Counter[str] = field(default_factory=Counter)  # instances kept, by study


class _SupportedContexts(list[PresentationContext]):
    """The server's supported contexts, cheap to deep-copy.

    pynetdicom deep-copies them for every association it accepts; with every storage
    SOP class in 15 transfer syntaxes that took about 11 ms, a cost that modalities
    sending one image per association pay per image. Copying each context and its
    lists gives each association the same independent copy in about 0.4 ms.
    """

    def __deepcopy__(self, memo: dict[int, Any]) -> list[PresentationContext]:
        copies = []
        for context in self:
            duplicate = PresentationContext.__new__(PresentationContext)
            duplicate.__dict__.update(
                {k: list(v) if isinstance(v, list) else v for k, v in vars(context).items()}
            )
            copies.append(duplicate)
        return copies


class _Server(ThreadedAssociationServer):
    """pynetdicom's threaded server with the socket options the node needs."""

    daemon_threads = True
    shared_socket: socket.socket | None = None
    busier_than_peers: Callable[[], bool] = staticmethod(lambda: False)

    @property
    def contexts(self) -> list[PresentationContext]:
        return self._supported

    @contexts.setter
    def contexts(self, value: list[PresentationContext]) -> None:
        self._supported = _SupportedContexts(value)

    def server_bind(self) -> None:
        if self.shared_socket is None:
            super().server_bind()
            return
        # Listener processes share one listening socket made by the supervisor. Each
        # accepts when it is free to, so an idle process takes the next association
        # rather than a busy one (SO_REUSEPORT would assign it by a hash instead).
        if self.socket is not None:
            self.socket.close()
        self.socket = self.shared_socket
        self.server_address = self.socket.getsockname()

    def server_activate(self) -> None:
        if self.shared_socket is None:
            super().server_activate()

    def shutdown(self) -> None:
        # pynetdicom's shutdown expects servers made by AE.start_server; this one was
        # made by AE.make_server, so stop it the plain socketserver way.
        socketserver.BaseServer.shutdown(self)
        self.server_close()

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        if self.busier_than_peers():
            # Every listener process wakes for a new connection; one that already
            # serves more than its share steps back briefly so an idler one takes it.
            # If none does, this one accepts after the pause.
            time.sleep(ACCEPT_DEFERRAL_SECONDS)
        client, address = super().get_request()
        # Small PDUs (C-STORE responses) must not wait for Nagle's algorithm.
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return client, address


def _reject(assoc: Association, result: int, source: int, reason: int) -> None:
    """Send an A-ASSOCIATE-RJ and wait until it is on the wire before the socket closes."""
    assoc.acse.send_reject(result, source, reason)
    assoc.kill()


def open_shared_socket(host: str, port: int, backlog: int = 128) -> socket.socket:
    """A listening socket for several listener processes; non-blocking, so a process
    that loses the race for a connection returns to waiting instead of hanging."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, backlog=backlog)
    sock.setblocking(False)
    return sock


class DicomListener:
    """Accepts associations from configured sources and stores what they send."""

    def __init__(
        self,
        config: NodeConfig,
        store: InstanceStore,
        limiter: AssociationLimiter,
        *,
        listen_socket: socket.socket | None = None,
        number: int = 0,
    ) -> None:
        self.config = config
        self.number = number
        self.store = store
        self.limiter = limiter
        self.listen_socket = listen_socket
        self._sessions: dict[Association, _Session] = {}
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self.ae = self._build_ae()

    def _build_ae(self) -> AE:
        self._tuned = tuning.install()
        if not sealing():
            # Stream each data set to a staging file as it arrives. With encryption at
            # rest, data sets stay in memory instead and are sealed before they are
            # written, so nothing received is ever on disk in the clear.
            tuning.receive_into(self.store.staging_dir)
        node = self.config.node
        ae = AE(ae_title=node.ae_title)
        ae.maximum_pdu_size = node.max_pdu_bytes
        # The shared limiter decides; pynetdicom's own per-process limit only backs it up.
        ae.maximum_associations = node.max_associations
        ae.network_timeout = node.network_timeout_seconds
        ae.acse_timeout = 30
        ae.dimse_timeout = node.network_timeout_seconds
        ae.add_supported_context(Verification, ACCEPTED_TRANSFER_SYNTAXES)
        for context in AllStoragePresentationContexts:
            if context.abstract_syntax is not None:
                ae.add_supported_context(context.abstract_syntax, ACCEPTED_TRANSFER_SYNTAXES)
        return ae

    @property
    def port(self) -> int:
        """The port actually bound (useful when configured as 0)."""
        if self._server is None:
            raise RuntimeError("the listener is not started")
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Bind the port (or use the shared socket) and serve associations in threads."""
        node = self.config.node
        handlers: list[Any] = [
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_C_ECHO, self._on_c_echo),
            (evt.EVT_C_STORE, self._on_c_store),
            (evt.EVT_RELEASED, self._on_end),
            (evt.EVT_ABORTED, self._on_end),
            (evt.EVT_CONN_CLOSE, self._on_connection_closed),
        ]
        _Server.shared_socket = self.listen_socket
        _Server.busier_than_peers = staticmethod(self._busier_than_peers)
        server = cast(
            _Server,
            self.ae.make_server(
                (node.host, node.port),
                ae_title=node.ae_title,
                evt_handlers=handlers,
                server_class=_Server,
                ssl_context=server_context(node.tls) if node.tls else None,
            ),
        )
        self._server = server
        thread = threading.Thread(target=server.serve_forever, name="dicom-listener", daemon=True)
        thread.start()
        log.info(
            "dicom_listener_started",
            ae_title=node.ae_title,
            host=node.host,
            port=self.port,
            max_pdu=node.max_pdu_bytes,
            max_associations=node.max_associations,
            tls=node.tls is not None,
        )

    def stop(self) -> None:
        """Stop accepting and close the listening socket."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # -- association control ---------------------------------------------------------

    def _on_requested(self, event: evt.Event) -> None:
        assoc = event.assoc
        primitive = assoc.requestor.primitive
        if primitive is None:  # pynetdicom only fires EVT_REQUESTED with a request
            return
        calling = str(primitive.calling_ae_title).strip()
        called = str(primitive.called_ae_title).strip()
        address, port = str(assoc.requestor.address), int(assoc.requestor.port)
        source = self.config.source_for(calling)
        info = AssociationInfo(
            id=uuid.uuid4().hex[:12],
            calling_ae=calling,
            called_ae=called,
            address=address,
            port=port,
            source=source.name if source else None,
        )
        bound = log.bind(**info.log_fields(), listener=self.number)
        self._prune_dead()

        if called != self.config.node.ae_title:
            bound.warning(
                "association_rejected",
                reason="called AE title not recognized",
                called_ae=called,
                expected_called_ae=self.config.node.ae_title,
            )
            _reject(
                assoc,
                st.REJECTED_PERMANENT,
                st.SOURCE_SERVICE_USER,
                st.REASON_CALLED_AE_NOT_RECOGNIZED,
            )
            _audit_association(info, "rejected", "called AE title not recognized")
            return
        if source is None or not source.allows_address(address):
            reason = (
                f"calling AE title {calling!r} is not a configured source"
                if source is None
                else f"source {source.name!r} may not call from {address}"
            )
            bound.warning(
                "association_rejected", reason="calling AE title not recognized", detail=reason
            )
            _reject(
                assoc,
                st.REJECTED_PERMANENT,
                st.SOURCE_SERVICE_USER,
                st.REASON_CALLING_AE_NOT_RECOGNIZED,
            )
            _audit_association(info, "rejected", f"calling AE title not recognized: {reason}")
            return
        if not self.limiter.try_acquire():
            bound.warning(
                "association_rejected",
                reason="local limit exceeded",
                open_associations=self.limiter.in_use,
                max_associations=self.limiter.limit,
            )
            _reject(
                assoc,
                st.REJECTED_TRANSIENT,
                st.SOURCE_SERVICE_PROVIDER_PRESENTATION,
                st.REASON_LOCAL_LIMIT_EXCEEDED,
            )
            _audit_association(info, "rejected", "local limit exceeded")
            return
        wake = tuning.wake_on_send(assoc) if self._tuned else None
        with self._lock:
            self._sessions[assoc] = _Session(info=info, holds_slot=True, log=bound, wake=wake)
        bound.info("association_accepted", called_ae=called)
        _audit_association(info, "accepted", None)

    def _on_connection_closed(self, event: evt.Event) -> None:
        """Free the slot at once; the release or abort event that follows logs the end."""
        with self._lock:
            session = self._sessions.get(event.assoc)
        if session is not None:
            self._give_back(session)

    def _on_end(self, event: evt.Event) -> None:
        with self._lock:
            session = self._sessions.pop(event.assoc, None)
        if session is not None:
            how = "released" if event.event == evt.EVT_RELEASED else "aborted"
            self._close_session(session, how)

    def _close_session(self, session: _Session, how: str) -> None:
        self._give_back(session)
        session.log.info(
            "association_closed",
            how=how,
            studies=sorted(session.studies),
            **dict(session.outcomes),
        )
        for study_uid, count in sorted(session.per_study.items()):
            audit(
                "instances_received",
                via="dimse",
                assoc_id=session.info.id,
                source=session.info.source,
                calling_ae=session.info.calling_ae,
                peer=session.info.address,
                study_uid=study_uid,
                instances=count,
            )

    def _give_back(self, session: _Session) -> None:
        """Return the association slot and close the wake-up pair (once)."""
        with self._lock:
            holds, session.holds_slot = session.holds_slot, False
            wake, session.wake = session.wake, None
        if holds:
            self.limiter.release()
        if wake is not None:
            wake.close()

    def _busier_than_peers(self) -> bool:
        """True when this process holds more associations than the others' average."""
        peers = self.config.node.listener_processes - 1
        if self.listen_socket is None or peers < 1:
            return False
        with self._lock:
            mine = len(self._sessions)
        return mine > 0 and mine * peers > self.limiter.in_use - mine

    def _prune_dead(self) -> None:
        """Release slots of associations whose threads ended without a close event."""
        with self._lock:
            dead = [a for a in self._sessions if not a.is_alive()]
            stale = [self._sessions.pop(a) for a in dead]
        for session in stale:
            self._close_session(session, "connection closed")

    def _session(self, assoc: Association) -> _Session:
        with self._lock:
            session = self._sessions.get(assoc)
        if session is None:  # cannot happen for an accepted association; stay safe
            info = AssociationInfo("unknown", "", "", "", 0)
            session = _Session(info=info, holds_slot=False, log=log.bind(**info.log_fields()))
        return session

    # -- services --------------------------------------------------------------------

    def _on_c_echo(self, event: evt.Event) -> int:
        self._session(event.assoc).log.info("echo_received")
        return st.SUCCESS

    def _on_c_store(self, event: evt.Event) -> int:
        session = self._session(event.assoc)
        request = cast(C_STORE, event.request)
        sop_uid = str(request.AffectedSOPInstanceUID)
        sop_class = str(request.AffectedSOPClassUID)
        bound = session.log.bind(sop_instance_uid=sop_uid)

        def matches_request(header: InstanceHeader) -> None:
            if header.sop_instance_uid != sop_uid or header.sop_class_uid != sop_class:
                raise DataSetMismatch(
                    f"the data set is SOP instance {header.sop_instance_uid} of class "
                    f"{header.sop_class_uid}; the request announced {sop_uid} of {sop_class}"
                )

        try:
            check_uid("Affected SOP Class UID", sop_class)
            check_uid("Affected SOP Instance UID", sop_uid)
            if not sealing():  # streamed to a staging file as it arrived
                header, result = self.store.receive_file(
                    event.dataset_path,
                    check=matches_request,
                    source=session.info.source,
                    calling_ae=session.info.calling_ae,
                )
            else:  # in memory (encryption at rest)
                data = bytes(event.encoded_dataset(include_meta=True))
                header = read_header(data)
                matches_request(header)
                result = self.store.store_instance(
                    header, data, source=session.info.source, calling_ae=session.info.calling_ae
                )
        except DataSetMismatch as exc:
            return _refuse(session, bound, st.DATA_SET_DOES_NOT_MATCH_SOP_CLASS, str(exc))
        except InvalidInput as exc:
            return _refuse(session, bound, st.CANNOT_UNDERSTAND, str(exc))
        except StorageFull as exc:
            return _refuse(session, bound, st.OUT_OF_RESOURCES, str(exc))
        except OSError as exc:
            reason = f"storage error: {exc.strerror or exc}"
            return _refuse(session, bound, st.OUT_OF_RESOURCES, reason)
        except Exception:  # noqa: BLE001 - any bug: answer a failure, log the traceback
            session.outcomes["failed"] += 1
            bound.exception("instance_not_stored", status=st.describe_status(st.PROCESSING_FAILURE))
            return st.PROCESSING_FAILURE
        bound = bound.bind(study_uid=header.study_uid, series_uid=header.series_uid)
        session.outcomes[result.outcome.value] += 1
        session.studies.add(header.study_uid)
        session.per_study[header.study_uid] += 1
        if result.outcome is StoreOutcome.NEW_VERSION:
            bound.info("instance_new_version", version=result.version, bytes=result.size)
        elif result.outcome is StoreOutcome.DUPLICATE:
            bound.info("instance_duplicate_ignored", version=result.version)
        else:
            bound.debug("instance_stored", bytes=result.size)
        if result.reopened_series:
            bound.info("series_reopened", reason="instance arrived after the series was complete")
        return st.SUCCESS


def _audit_association(info: AssociationInfo, outcome: str, reason: str | None) -> None:
    audit(
        f"association_{outcome}",
        assoc_id=info.id,
        calling_ae=info.calling_ae,
        called_ae=info.called_ae,
        peer=f"{info.address}:{info.port}",
        source=info.source,
        **({"reason": reason} if reason else {}),
    )


class DataSetMismatch(InvalidInput):
    """The data set is not the instance the C-STORE request announced."""


def _refuse(session: _Session, bound: Any, status: int, reason: str) -> int:
    """Count and log a refused instance; return the status to answer with."""
    session.outcomes["failed"] += 1
    if status == st.OUT_OF_RESOURCES:
        bound.error("instance_not_stored", status=st.describe_status(status), reason=reason)
    else:
        bound.warning("instance_rejected", status=st.describe_status(status), reason=reason)
    return status
