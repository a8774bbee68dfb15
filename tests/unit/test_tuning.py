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
