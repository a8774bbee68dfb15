"""The `radnode` command as IT uses it: serve, echo, send, studies, check-config."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from node.synthetic import write_ct_series
from tests.helpers import NodeProcess, free_port

NodeFactory = Callable[..., NodeProcess]
PHI = ("SYNTHETIC^PATIENT", "SYN-0001", "SYNACC1", "19500101")


def radnode(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "node", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def target(node: NodeProcess) -> str:
    return f"{node.ae_title}@127.0.0.1:{node.port}"


def test_echo_prints_the_round_trip_time(node_factory: NodeFactory) -> None:
    node = node_factory()
    done = radnode("echo", target(node), "--calling-ae", "ECHOSCU")
    assert done.returncode == 0, done.stderr
    assert "C-ECHO success as ECHOSCU: round trip" in done.stdout
    assert " ms" in done.stdout


def test_echo_by_destination_name_from_the_config(node_factory: NodeFactory) -> None:
    node = node_factory(start=False)
    node.config["destinations"] = [
        {"name": "self", "ae_title": "RADNODE", "host": "127.0.0.1", "port": node.port}
    ]
    node.config["sources"].append({"name": "node-itself", "ae_title": "RADNODE"})
    node.__post_init__()
    node.start()
    done = radnode("echo", "self", "--config", str(node.config_path))
    assert done.returncode == 0, done.stderr
    unknown = radnode("echo", "nowhere", "--config", str(node.config_path))
    assert unknown.returncode == 2
    assert "'nowhere' is not a configured destination (known: self)" in unknown.stderr


def test_echo_explains_a_rejected_calling_ae(node_factory: NodeFactory) -> None:
    node = node_factory()
    done = radnode("echo", target(node), "--calling-ae", "UNKNOWN")
    assert done.returncode == 1
    assert "calling AE title not recognized" in done.stderr
    assert "add it to the peer's list of DICOM nodes" in done.stderr


def test_echo_explains_a_refused_connection() -> None:
    done = radnode("echo", f"PACS@127.0.0.1:{free_port()}")
    assert done.returncode == 1
    assert "connection refused" in done.stderr
    assert "nothing listens on that port" in done.stderr


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP port that accepts connections and never says a word."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield int(server.getsockname()[1])
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


def test_echo_explains_a_peer_that_does_not_answer(silent_server: int) -> None:
    started = time.monotonic()
    done = radnode("echo", f"PACS@127.0.0.1:{silent_server}", "--timeout", "1")
    assert done.returncode == 1
    assert "no association response in time" in done.stderr
    assert time.monotonic() - started < 30


def test_echo_refuses_a_malformed_target() -> None:
    done = radnode("echo", "PACS@nowhere")
    assert done.returncode == 2
    assert "AET@host:port" in done.stderr


def test_send_then_studies_shows_the_study_without_phi_unless_asked(
    node_factory: NodeFactory, tmp_path: Path
) -> None:
    # Given a node and a folder with a CT series and a stray text file
    node = node_factory(completion={"series_quiet_seconds": 0.5, "study_quiet_seconds": 1})
    series = write_ct_series(tmp_path / "in" / "ct", slices=12, rows=32, cols=32)
    (tmp_path / "in" / "notes.txt").write_text("not an image")
    # When IT pushes the folder over two associations
    done = radnode(
        "send",
        str(tmp_path / "in"),
        "--to",
        target(node),
        "--associations",
        "2",
        "--calling-ae",
        "TESTSCU",
    )
    # Then every image is sent and the text file is listed as skipped
    assert done.returncode == 0, done.stdout + done.stderr
    assert "12 sent, 0 with warnings, 0 failed, 1 skipped" in done.stdout
    assert "notes.txt: not a DICOM file" in done.stdout
    # And once quiet, `studies` shows one complete study with its one series
    deadline = time.monotonic() + 15
    while True:
        listing = radnode("studies", "--config", str(node.config_path))
        if f"study {series.study_uid}  complete" in listing.stdout:
            break
        assert time.monotonic() < deadline, listing.stdout
        time.sleep(0.3)
    assert "12 instances in 1 series" in listing.stdout
    assert "SYNTHETIC AXIAL" in listing.stdout
    assert not any(value in listing.stdout for value in PHI)
    with_phi = radnode("studies", "--config", str(node.config_path), "--show-phi")
    assert "patient 'SYNTHETIC^PATIENT' id 'SYN-0001'" in with_phi.stdout
    # And the node's log never carried the patient's identity
    assert not any(value in node.log_text() for value in PHI)
    kinds = [e["event"] for e in node.log_events()]
    assert "series_complete" in kinds and "study_complete" in kinds


def test_send_lists_each_failure_with_its_status(node_factory: NodeFactory, tmp_path: Path) -> None:
    node = node_factory(storage={"min_free_mb": 1_000_000_000})
    series = write_ct_series(tmp_path / "ct", slices=2, rows=16, cols=16)
    done = radnode("send", str(tmp_path / "ct"), "--to", target(node), "--calling-ae", "TESTSCU")
    assert done.returncode == 1
    assert "0 sent, 0 with warnings, 2 failed" in done.stdout
    for path in series.paths:
        assert f"failed: {path}: failed 0xA700 (out of resources)" in done.stdout


def test_a_series_received_across_a_restart_is_one_series(
    node_factory: NodeFactory, tmp_path: Path
) -> None:
    # Given half a series received, then the node restarted
    node = node_factory(completion={"series_quiet_seconds": 2, "study_quiet_seconds": 2})
    series = write_ct_series(tmp_path / "ct", slices=6, rows=16, cols=16)
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    for i, path in enumerate(series.paths):
        path.rename((first if i < 3 else second) / path.name)
    assert (
        radnode("send", str(first), "--to", target(node), "--calling-ae", "TESTSCU").returncode == 0
    )
    node.stop()
    node.start()
    # When the rest arrives
    assert (
        radnode("send", str(second), "--to", target(node), "--calling-ae", "TESTSCU").returncode
        == 0
    )
    # Then it completes as one series of six
    deadline = time.monotonic() + 20
    while True:
        listing = radnode("studies", "--config", str(node.config_path)).stdout
        if "complete" in listing and "series" in listing and "6 inst" in listing:
            break
        assert time.monotonic() < deadline, listing
        time.sleep(0.3)
    assert listing.count("    series ") == 1


def test_serve_on_a_busy_port_says_what_to_change(
    node_factory: NodeFactory,
) -> None:
    first = node_factory()
    second = node_factory(start=False, node={"port": first.port})
    done = subprocess.run(
        [sys.executable, "-m", "node", "serve", "--config", str(second.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert "dicom_listener_failed" in done.stderr
    assert "change node.port or node.host" in done.stderr
