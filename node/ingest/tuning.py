"""Tune pynetdicom's acceptor for throughput: prompt wake-ups, large socket reads,
and data sets written to disk while they arrive.

Each change was measured with storescu pushing 512x512 CT slices (bench/ingest.py,
and a per-image timeline of PDUs and handler); each keeps pynetdicom's behaviour
and contracts. They rely on pynetdicom 3.0's internals, hence the pin in
pyproject.toml; `install()` checks for them and changes nothing if they differ.

1. Wake-ups.
pynetdicom runs two polling loops per association. The association reactor sleeps
1 ms, then looks for a complete DIMSE message; the DUL reactor, when idle, sleeps
1 ms, then looks for a primitive to send and for incoming data. A sender such as
storescu waits for each C-STORE response before it sends the next image, so each
image pays those naps: measured on one association, about 0.5 ms from the last PDU
to the handler and 1.1 ms from our response on the wire to reading the next request
(0.25 ms with the change).

`install()` replaces the `time` module those two pynetdicom modules see with one
whose `sleep` ends early: the association reactor's when a DIMSE message is queued,
the DUL reactor's when data arrives on the socket or a primitive is queued to send.
(The DUL is woken for outgoing primitives through `wake_on_send`.) Every wait stays
bounded by the original delay, so the loops' other checks keep their cadence.
Sleeps of other lengths, and sleeps in other threads, are untouched.

2. Reads. pynetdicom reads a PDU from the socket 4096 bytes per `recv` call and
appends each piece to a bytearray: about 130 calls, each holding the GIL, for one
512 KiB slice. `install()` makes `AssociationSocket.recv` read straight into a
buffer of the PDU's size with `recv_into`, as few calls as the kernel allows. The
contract is the same: all `nr_bytes`, or what arrived before the peer closed.

3. Streaming to disk. With `receive_into(folder)`, pynetdicom writes each C-STORE
data set, as a Part 10 file, to a temporary file in `folder` fragment by fragment
while the PDUs arrive (its documented STORE_RECV_CHUNKED_DATASET mode), instead of
collecting it in memory. The handler then only has to fsync and rename it, so the
write overlaps the network transfer. The temporary files carry the store's
partial-file mark, so a crash leaves nothing the start-up scan does not remove.

4. Responses. pynetdicom builds each C-STORE response as a pydicom Dataset and
encodes it through pydicom; that was about a sixth of the node's Python time per
image. A plain response (a status, no error comment) is encoded here directly, byte
for byte as pynetdicom would (a unit test compares them); anything else still goes
through pynetdicom. EVT_DIMSE_SENT is not fired for these; the node binds no
handler to it.
"""

from __future__ import annotations

import contextlib
import queue
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from tempfile import NamedTemporaryFile
from types import ModuleType
from typing import Any

import pynetdicom.association
import pynetdicom.dimse_messages
import pynetdicom.dul
import structlog
from pynetdicom import _config as pynetdicom_config
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.transport import AssociationSocket

from node.store.filemeta import encode_meta_group
from node.store.files import TEMP_MARK

log = structlog.get_logger("radnode.ingest")

LOOP_DELAY_SECONDS = 0.001  # what pynetdicom 3.0's loops sleep
STORE_RESPONSE_COMMAND = 0x8001
NO_DATA_SET = 0x0101
_PYNETDICOM_SEND_MSG = DIMSEServiceProvider.send_msg


class WakingQueue(queue.Queue[Any]):
    """A queue that also writes a byte to a socket pair on each put, so a thread can
    wait with select() for either this queue or its network socket."""

    def __init__(self) -> None:
        super().__init__()
        self.reader, self._writer = socket.socketpair()
        self.reader.setblocking(False)
        self._writer.setblocking(False)

    def _put(self, item: Any) -> None:
        super()._put(item)
        with contextlib.suppress(OSError):  # full (a wake-up is pending) or closed
            self._writer.send(b"\0")

    def drain(self) -> None:
        """Consume pending wake-up bytes."""
        with contextlib.suppress(OSError):
            while self.reader.recv(4096):
                pass

    def close(self) -> None:
        """Close the socket pair."""
        self.reader.close()
        self._writer.close()


def wake_on_send(assoc: Association) -> WakingQueue:
    """Give an association's DUL a queue that wakes it when a primitive is queued.

    Call before the association is accepted (its queue is still empty then); close
    the returned queue once the association has ended.
    """
    waking = WakingQueue()
    assoc.dul.to_provider_queue = waking
    return waking


def _wait_for_message(items: queue.Queue[Any], seconds: float) -> None:
    """Sleep up to `seconds`, returning as soon as `items` is not empty."""
    with items.not_empty:
        if not items.queue:
            items.not_empty.wait(seconds)


def _wait_for_traffic(dul: DULServiceProvider, seconds: float) -> None:
    """Sleep up to `seconds`, returning when data arrives or a primitive is queued."""
    outgoing = dul.to_provider_queue
    sock = getattr(dul.socket, "socket", None)
    if outgoing.queue:
        return
    if sock is None:
        time.sleep(seconds)
        return
    pending = getattr(sock, "pending", None)
    if pending is not None and pending():  # TLS: decrypted bytes wait in the SSL layer,
        return  # which select() cannot see
    waking = outgoing if isinstance(outgoing, WakingQueue) else None
    try:
        readable, _, _ = select.select([sock, waking.reader] if waking else [sock], [], [], seconds)
    except (OSError, ValueError):  # closed under us: let the loop notice
        return
    if waking is not None and waking.reader in readable:
        waking.drain()


class _PacedTime:
    """Stands in for the `time` module inside one pynetdicom module."""

    def __init__(self, real: ModuleType) -> None:
        self._real = real

    def sleep(self, seconds: float) -> None:
        if seconds <= LOOP_DELAY_SECONDS:
            thread = threading.current_thread()
            if isinstance(thread, Association) and thread.is_acceptor:
                _wait_for_message(thread.dimse.msg_queue, seconds)
                return
            if isinstance(thread, DULServiceProvider) and thread.assoc.is_acceptor:
                _wait_for_traffic(thread, seconds)
                return
        self._real.sleep(seconds)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def _recv_exactly(self: AssociationSocket, nr_bytes: int) -> bytearray:
    """Read `nr_bytes` from the socket, or what arrived before the peer closed."""
    sock = self.socket
    if sock is None:
        raise OSError("the association's socket is closed")
    buffer = bytearray(nr_bytes)
    view = memoryview(buffer)
    received = 0
    while received < nr_bytes:
        count = sock.recv_into(view[received:], nr_bytes - received)
        if count == 0:
            del view
            del buffer[received:]
            return buffer
        received += count
    return buffer


@dataclass(frozen=True, slots=True)
class _FileMeta:
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str


def _create_file_meta(
    *, sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str, **_: Any
) -> _FileMeta:
    return _FileMeta(str(sop_class_uid), str(sop_instance_uid), str(transfer_syntax))


def _write_file_meta_info(fp: Any, meta: _FileMeta, *_args: Any, **_kwargs: Any) -> None:
    fp.write(encode_meta_group(meta.sop_class_uid, meta.sop_instance_uid, meta.transfer_syntax))


def _element(element: int, value: bytes) -> bytes:
    """A command element of group 0000, implicit VR little endian (PS3.7 6.3.1)."""
    return struct.pack("<HHI", 0x0000, element, len(value)) + value


def _uid_value(uid: Any) -> bytes:
    raw = str(uid).encode("ascii")
    return raw + b"\0" if len(raw) % 2 else raw


def encode_store_response(primitive: C_STORE) -> bytes | None:
    """The command set of a plain C-STORE-RSP, or None when it carries more than a status.

    Elements in tag order, as pynetdicom would write them, with the group length first.
    """
    if primitive.OffendingElement is not None or primitive.ErrorComment is not None:
        return None
    if primitive.MessageIDBeingRespondedTo is None or primitive.Status is None:
        return None
    body = b"".join(
        (
            _element(0x0002, _uid_value(primitive.AffectedSOPClassUID))
            if primitive.AffectedSOPClassUID
            else b"",
            _element(0x0100, struct.pack("<H", STORE_RESPONSE_COMMAND)),
            _element(0x0120, struct.pack("<H", int(primitive.MessageIDBeingRespondedTo))),
            _element(0x0800, struct.pack("<H", NO_DATA_SET)),
            _element(0x0900, struct.pack("<H", int(primitive.Status))),
            _element(0x1000, _uid_value(primitive.AffectedSOPInstanceUID))
            if primitive.AffectedSOPInstanceUID
            else b"",
        )
    )
    return _element(0x0000, struct.pack("<I", len(body))) + body


def _send_msg(self: DIMSEServiceProvider, primitive: Any, context_id: int) -> None:
    """pynetdicom's send_msg, with plain C-STORE responses encoded directly."""
    if isinstance(primitive, C_STORE) and primitive.MessageIDBeingRespondedTo is not None:
        command = encode_store_response(primitive)
        limit = self.maximum_pdu_size
        if command is not None and (limit == 0 or len(command) + 7 <= limit):
            pdata = P_DATA()
            # message control header 0x03: a command, and its last fragment
            pdata.presentation_data_value_list.append((context_id, b"\x03" + command))
            self.dul.send_pdu(pdata)
            return
    _PYNETDICOM_SEND_MSG(self, primitive, context_id)


def receive_into(folder: Path) -> None:
    """Have pynetdicom write received data sets to files in `folder` as they arrive.

    One folder per process: the setting is pynetdicom's, for the whole process.
    """
    module = vars(pynetdicom.dimse_messages)
    if not {"NamedTemporaryFile", "create_file_meta", "write_file_meta_info"} <= set(module):
        # Without the redirect pynetdicom would write to the system's temporary
        # folder, possibly another file system, where no rename can place the file.
        raise RuntimeError(
            "this pynetdicom no longer writes received data sets the way Radnode "
            "expects; install the pynetdicom version pyproject.toml names"
        )
    folder.mkdir(parents=True, exist_ok=True)
    pynetdicom_config.STORE_RECV_CHUNKED_DATASET = True
    module["NamedTemporaryFile"] = partial(NamedTemporaryFile, dir=folder, prefix=f"{TEMP_MARK}rx-")
    # The file meta of each received file, encoded directly rather than through a
    # pydicom Dataset; it names Radnode as the implementation that wrote the file.
    module["create_file_meta"] = _create_file_meta
    module["write_file_meta_info"] = _write_file_meta_info


def install() -> bool:
    """Tune pynetdicom as above; idempotent. False, changing nothing, if it differs."""
    if isinstance(vars(pynetdicom.association).get("time"), _PacedTime):
        return True
    probe = DULServiceProvider.__init__.__code__.co_names
    if (
        "_run_loop_delay" not in probe
        or vars(pynetdicom.dul).get("time") is not time
        or vars(pynetdicom.association).get("time") is not time
        or not callable(getattr(AssociationSocket, "recv", None))
    ):
        log.warning("pynetdicom_tuning_skipped", reason="pynetdicom's internals have changed")
        return False
    vars(pynetdicom.association)["time"] = _PacedTime(time)
    vars(pynetdicom.dul)["time"] = _PacedTime(time)
    AssociationSocket.recv = _recv_exactly  # type: ignore[method-assign]
    DIMSEServiceProvider.send_msg = _send_msg  # type: ignore[method-assign]
    return True
