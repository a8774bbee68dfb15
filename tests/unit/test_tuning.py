"""The pynetdicom tuning stays in place on the pinned pynetdicom, and keeps its contracts."""

from __future__ import annotations

import socket
import threading

import pynetdicom.association
import pynetdicom.dul
from pynetdicom.transport import AssociationSocket

from node.ingest import tuning


def test_install_takes_hold_on_the_pinned_pynetdicom() -> None:
    assert tuning.install() is True
    assert isinstance(vars(pynetdicom.association)["time"], tuning._PacedTime)
    assert isinstance(vars(pynetdicom.dul)["time"], tuning._PacedTime)
    assert AssociationSocket.recv is tuning._recv_exactly
    assert tuning.install() is True, "a second install changes nothing"


class _Holder:
    def __init__(self, sock: socket.socket) -> None:
        self.socket = sock


def test_recv_reads_exactly_the_bytes_asked_across_many_segments() -> None:
    left, right = socket.socketpair()
    payload = bytes(range(256)) * 4096  # 1 MiB, more than one kernel buffer

    def send() -> None:
        for i in range(0, len(payload), 10_000):
            right.sendall(payload[i : i + 10_000])

    sender = threading.Thread(target=send)
    sender.start()
    got = tuning._recv_exactly(_Holder(left), len(payload))  # type: ignore[arg-type]
    sender.join()
    assert got == payload
    left.close()
    right.close()


def test_recv_returns_what_arrived_when_the_peer_closes() -> None:
    left, right = socket.socketpair()
    right.sendall(b"partial")
    right.close()
    got = tuning._recv_exactly(_Holder(left), 100)  # type: ignore[arg-type]
    assert got == bytearray(b"partial")
    left.close()


def test_waking_queue_wakes_a_select_on_put() -> None:
    waking = tuning.WakingQueue()
    try:
        waking.put("primitive")
        import select

        readable, _, _ = select.select([waking.reader], [], [], 1.0)
        assert readable == [waking.reader]
        waking.drain()
        assert select.select([waking.reader], [], [], 0)[0] == []
        assert waking.get_nowait() == "primitive"
    finally:
        waking.close()


def test_store_responses_are_encoded_byte_for_byte_as_pynetdicom_would() -> None:
    from pynetdicom.dimse_messages import C_STORE_RSP
    from pynetdicom.dimse_primitives import C_STORE

    for status in (0x0000, 0xA700, 0xC210, 0xB000):
        rsp = C_STORE()
        rsp.MessageIDBeingRespondedTo = 7
        rsp.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        rsp.AffectedSOPInstanceUID = "1.2.3.4.5"  # odd length: padded
        rsp.Status = status
        message = C_STORE_RSP()
        message.primitive_to_message(rsp)
        [pdata] = list(message.encode_msg(1, 16384))
        [(context_id, value)] = pdata.presentation_data_value_list
        assert context_id == 1 and value[:1] == b"\x03"
        assert tuning.encode_store_response(rsp) == value[1:]


def test_a_response_with_an_error_comment_is_left_to_pynetdicom() -> None:
    from pynetdicom.dimse_primitives import C_STORE

    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = 1
    rsp.Status = 0xC210
    rsp.ErrorComment = "cannot understand"
    assert tuning.encode_store_response(rsp) is None
