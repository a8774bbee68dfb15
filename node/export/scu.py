"""A DICOM SCU for IT's everyday checks: C-ECHO a peer, push files to it.

Failures are explained in the words an IT engineer needs at 2 a.m.: nothing
listening, wrong AE title on either side, a timeout, a status code with its name.
"""

from __future__ import annotations

import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_context
from pynetdicom import _config as pynetdicom_config
from pynetdicom.association import Association
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    Verification,
)

from node.config import Destination
from node.domain.status import (
    PENDING,
    PENDING_WARNING,
    REASON_CALLED_AE_NOT_RECOGNIZED,
    REASON_CALLING_AE_NOT_RECOGNIZED,
    SOURCE_SERVICE_USER,
    SUCCESS,
    describe_rejection,
    describe_status,
)
from node.errors import ConfigError, InvalidInput
from node.store.sealed import dicom_source
from node.tls import client_context

_TARGET = re.compile(
    r"^(?P<ae>[^@]{1,16})@(?P<host>\[[0-9a-fA-F:.]+\]|[^:@\s]+):(?P<port>\d{1,5})$"
)
MAX_CONTEXTS = 128


@dataclass(frozen=True, slots=True)
class Target:
    """A DICOM peer: AE title, host and port, and the TLS context when it speaks TLS."""

    ae_title: str
    host: str
    port: int
    tls: ssl.SSLContext | None = None
    server_name: str | None = None

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}" + (" (TLS)" if self.tls else "")

    def associate(self, ae: AE) -> Association:
        """Request an association with this peer, over TLS when it has a context."""
        tls_args = (self.tls, self.server_name or self.host) if self.tls is not None else None
        return ae.associate(self.host, self.port, ae_title=self.ae_title, tls_args=tls_args)


def target_of(destination: Destination) -> Target:
    """A C-STORE destination as a Target (ConfigError for a STOW-RS one)."""
    if destination.ae_title is None or destination.host is None or destination.port is None:
        raise ConfigError(
            f"destination {destination.name!r} is a STOW-RS destination ({destination.url}); "
            "DICOM needs a C-STORE destination or AET@host:port"
        )
    tls = destination.tls
    return Target(
        destination.ae_title,
        destination.host,
        destination.port,
        client_context(tls) if tls is not None else None,
        tls.server_name if tls is not None else None,
    )


def parse_target(text: str) -> Target:
    """Parse `AET@host:port`; raise ConfigError with the expected form otherwise."""
    match = _TARGET.match(text.strip())
    if not match or not 0 < int(match["port"]) < 65536:
        raise ConfigError(
            f"{text!r} is neither a configured destination nor of the form AET@host:port "
            "(for example PACS1@10.0.0.5:104)"
        )
    return Target(match["ae"].strip(), match["host"].strip("[]"), int(match["port"]))


@dataclass(frozen=True, slots=True)
class EchoResult:
    """The outcome of a C-ECHO: ok with timings, or what went wrong and what to check."""

    ok: bool
    message: str
    connect_ms: float | None = None
    associate_ms: float | None = None
    echo_ms: float | None = None


def check_tcp(target: Target, timeout: float) -> str | None:
    """None when a TCP connection opens, else the problem in words."""
    try:
        with socket.create_connection((target.host, target.port), timeout=timeout):
            return None
    except socket.gaierror:
        return f"the host name {target.host!r} cannot be resolved; check the spelling or use an IP"
    except ConnectionRefusedError:
        return (
            f"connection refused by {target.host}:{target.port}: nothing listens on that port. "
            "Check the port number and that the peer's DICOM service is running"
        )
    except TimeoutError:
        return (
            f"no answer from {target.host}:{target.port} within {timeout:g} s: a firewall may "
            "drop the traffic, or the host is down"
        )
    except OSError as exc:
        return f"cannot connect to {target.host}:{target.port}: {exc.strerror or exc}"


def explain_failed_association(
    assoc: Association, calling_ae: str, target: Target, waited: float, timeout: float
) -> str:
    if not assoc.is_rejected and waited >= timeout * 0.9:
        # pynetdicom aborts by itself when the ACSE timeout passes
        return (
            f"no association response in time ({timeout:g} s): the port accepts connections "
            "but does not answer as DICOM; check that it is the peer's DICOM port"
        )
    primitive = assoc.acceptor.primitive
    if assoc.is_rejected and primitive is not None:
        source = int(primitive.result_source or 0)
        reason = int(primitive.diagnostic or 0)
        text = describe_rejection(int(primitive.result or 0), source, reason)
        if source == SOURCE_SERVICE_USER and reason == REASON_CALLING_AE_NOT_RECOGNIZED:
            text += (
                f". The peer does not know this node as {calling_ae!r} from this host: add it "
                "to the peer's list of DICOM nodes, or use --calling-ae with a title it knows"
            )
        elif source == SOURCE_SERVICE_USER and reason == REASON_CALLED_AE_NOT_RECOGNIZED:
            text += f". The peer does not answer to {target.ae_title!r}: check its AE title"
        return f"association {text}"
    if assoc.is_aborted:
        return "the peer aborted the association (it may not accept these SOP classes)"
    return "the association failed for an unknown reason; see the peer's log"


def echo(target: Target, calling_ae: str, timeout: float = 10.0) -> EchoResult:
    """C-ECHO the target, timing the connection, the association and the echo."""
    start = time.perf_counter()
    problem = check_tcp(target, timeout)
    connect_ms = (time.perf_counter() - start) * 1000
    if problem:
        return EchoResult(False, problem)
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = timeout
    ae.network_timeout = timeout
    ae.dimse_timeout = timeout
    ae.add_requested_context(Verification)
    start = time.perf_counter()
    assoc = target.associate(ae)
    associate_ms = (time.perf_counter() - start) * 1000
    if not assoc.is_established:
        waited = associate_ms / 1000
        return EchoResult(
            False,
            explain_failed_association(assoc, calling_ae, target, waited, timeout),
            connect_ms,
        )
    try:
        start = time.perf_counter()
        status = assoc.send_c_echo()
        echo_ms = (time.perf_counter() - start) * 1000
    finally:
        assoc.release()
    if not status or "Status" not in status:
        return EchoResult(False, "no C-ECHO response in time", connect_ms, associate_ms)
    if status.Status != SUCCESS:
        return EchoResult(
            False, f"C-ECHO answered {describe_status(status.Status)}", connect_ms, associate_ms
        )
    return EchoResult(True, "C-ECHO success", connect_ms, associate_ms, echo_ms)


@dataclass(frozen=True, slots=True)
class _SendItem:
    path: Path
    sop_class_uid: str
    transfer_syntax_uid: str


@dataclass
class SendReport:
    """What a push did: per file, success, a warning or a failure with its reason."""

    sent: int = 0
    warnings: list[tuple[Path, str]] = field(default_factory=list)
    failures: list[tuple[Path, str]] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    seconds: float = 0.0


def collect_files(paths: Sequence[Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Expand folders into their files, sorted; report paths that do not exist."""
    files: list[Path] = []
    missing: list[tuple[Path, str]] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.is_file()))
        elif path.is_file():
            files.append(path)
        else:
            missing.append((path, "no such file or folder"))
    return files, missing


def _scan(files: Sequence[Path], report: SendReport) -> list[_SendItem]:
    items: list[_SendItem] = []
    for path in files:
        try:
            source = dicom_source(path)  # a file the node keeps may be sealed
            ds = dcmread(source, stop_before_pixels=True, specific_tags=["SOPClassUID"])
            sop_class = str(ds.get("SOPClassUID") or ds.file_meta.MediaStorageSOPClassUID)
            syntax = str(ds.file_meta.TransferSyntaxUID)
        except (InvalidDicomError, AttributeError, OSError, ValueError, InvalidInput) as exc:
            report.skipped.append((path, f"not a DICOM file ({type(exc).__name__})"))
            continue
        items.append(_SendItem(path, sop_class, syntax))
    return items


def send_files(
    paths: Sequence[Path],
    target: Target,
    calling_ae: str,
    *,
    associations: int = 1,
    timeout: float = 30.0,
    progress: Callable[[int], object] | None = None,
) -> SendReport:
    """C-STORE every DICOM file under `paths` to the target over N associations.

    Files are sent as they are on disk, without decoding, in their own transfer
    syntax (which is proposed for their SOP class).
    """
    pynetdicom_config.STORE_SEND_CHUNKED_DATASET = True
    report = SendReport()
    files, missing = collect_files(paths)
    report.skipped.extend(missing)
    items = _scan(files, report)
    if not items:
        return report
    syntaxes: dict[str, set[str]] = {}
    for item in items:
        syntaxes.setdefault(item.sop_class_uid, {ExplicitVRLittleEndian, ImplicitVRLittleEndian})
        syntaxes[item.sop_class_uid].add(item.transfer_syntax_uid)
    if len(syntaxes) > MAX_CONTEXTS:
        raise ConfigError(
            f"the files use {len(syntaxes)} SOP classes, more than the {MAX_CONTEXTS} one "
            "association can carry; send them in smaller groups"
        )
    contexts = [build_context(cls, sorted(ts)) for cls, ts in syntaxes.items()]
    lock = threading.Lock()
    count = max(1, min(associations, len(items)))
    chunks = [items[i::count] for i in range(count)]
    start = time.perf_counter()

    def push(chunk: list[_SendItem]) -> None:
        ae = AE(ae_title=calling_ae)
        ae.acse_timeout = timeout
        ae.network_timeout = timeout
        ae.dimse_timeout = timeout
        ae.requested_contexts = contexts
        problem = check_tcp(target, timeout)
        if problem is None:
            began = time.perf_counter()
            assoc = target.associate(ae)
            if not assoc.is_established:
                waited = time.perf_counter() - began
                problem = explain_failed_association(assoc, calling_ae, target, waited, timeout)
        if problem is not None:
            with lock:
                report.failures.extend((item.path, problem) for item in chunk)
            return
        try:
            for item in chunk:
                outcome = _store_one(assoc, item)
                with lock:
                    if outcome is None:
                        report.sent += 1
                    elif outcome.startswith("warning"):
                        report.sent += 1
                        report.warnings.append((item.path, outcome))
                    else:
                        report.failures.append((item.path, outcome))
                if progress:
                    progress(1)
                if not assoc.is_established:
                    rest = chunk[chunk.index(item) + 1 :]
                    with lock:
                        report.failures.extend(
                            (p.path, "association lost before this file was sent") for p in rest
                        )
                    return
        finally:
            if assoc.is_established:
                assoc.release()

    threads = [threading.Thread(target=push, args=(chunk,)) for chunk in chunks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    report.seconds = time.perf_counter() - start
    return report


def _store_one(assoc: Association, item: _SendItem) -> str | None:
    """Send one file; None on success, else the outcome in words."""
    try:
        source = dicom_source(item.path)
        # A sealed file is opened in memory and sent as its data set.
        status = assoc.send_c_store(item.path if isinstance(source, Path) else dcmread(source))
    except ValueError as exc:  # no accepted context for this SOP class / syntax
        return f"not sent: {exc}"
    if not status or "Status" not in status:
        return "no response (timeout or association aborted)"
    code = int(status.Status)
    if code == SUCCESS:
        return None
    comment = str(status.get("ErrorComment", "")).strip()
    text = describe_status(code) + (f": {comment}" if comment else "")
    if code & 0xF000 == 0xB000:
        return f"warning {text}"
    return f"failed {text}"


def count_series_instances(
    target: Target, calling_ae: str, study_uid: str, series_uid: str, timeout: float = 10.0
) -> int | None:
    """Ask a PACS (C-FIND, study root, SERIES level) how many instances a series has.

    Returns NumberOfSeriesRelatedInstances, or None when the peer cannot say (not
    reachable, association refused, no match, no count in the answer): the caller
    then falls back to its quiet timer. Raises nothing for network trouble.
    """
    if check_tcp(target, timeout) is not None:
        return None
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = timeout
    ae.connection_timeout = timeout
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = target.associate(ae)
    if not assoc.is_established:
        return None
    query = Dataset()
    query.QueryRetrieveLevel = "SERIES"
    query.StudyInstanceUID = study_uid
    query.SeriesInstanceUID = series_uid
    query.NumberOfSeriesRelatedInstances = ""
    counts: list[int] = []
    try:
        for status, identifier in assoc.send_c_find(
            query, StudyRootQueryRetrieveInformationModelFind
        ):
            if not status or int(status.Status) not in (PENDING, PENDING_WARNING):
                continue
            value = identifier.get("NumberOfSeriesRelatedInstances") if identifier else None
            if value not in (None, ""):
                counts.append(int(value))
    except (ValueError, TypeError):  # a malformed count: no answer
        return None
    finally:
        if assoc.is_established:
            assoc.release()
    return max(counts) if counts else None
