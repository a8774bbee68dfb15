"""Shared test helpers: DCMTK tools, free ports, and the node as a subprocess."""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require_tool(path: str) -> str:
    """Return the path of an external tool; skip locally, fail in CI, when missing."""
    if Path(path).exists():
        return path
    message = f"{path} is not installed (Debian packages dcmtk, orthanc, dicom3tools)"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def dcmtk(name: str) -> str:
    """A DCMTK tool by absolute path: pynetdicom's scripts of the same name shadow it."""
    return require_tool(f"/usr/bin/{name}")


def dicom3tools(name: str) -> str:
    """A dicom3tools validator (dciodvfy, dcentvfy) by absolute path; skip locally, fail
    in CI, when it is missing."""
    return require_tool(f"/usr/bin/{name}")


def dcmtk_env() -> dict[str, str]:
    """Environment for DCMTK processes: Nagle off, as in the field notes."""
    return {**os.environ, "TCP_NODELAY": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def dataset_bytes(path: Path) -> bytes:
    """The bytes of a Part 10 file after its file meta group (what C-STORE carries)."""
    data = path.read_bytes()
    assert data[128:132] == b"DICM", f"{path} is not a Part 10 file"
    # (0002,0000) UL group length: tag 4 bytes, VR 2, length 2, value 4
    (group_length,) = struct.unpack("<I", data[140:144])
    return data[144 + group_length :]


@dataclass
class NodeProcess:
    """A `radnode serve` subprocess with its own config, storage and log."""

    workdir: Path
    config: dict[str, Any]
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)
    config_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.workdir / "node.log"
        self.config_path = self.workdir / "node.yaml"
        self.config_path.write_text(yaml.safe_dump(self.config))

    @property
    def port(self) -> int:
        return int(self.config["node"]["port"])

    @property
    def ae_title(self) -> str:
        return str(self.config["node"].get("ae_title", "RADNODE"))

    @property
    def root(self) -> Path:
        return Path(self.config["storage"]["root"])

    def start(self, timeout: float = 30.0) -> NodeProcess:
        offset = len(self.log_text())
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "node", "serve", "--config", str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"node exited early:\n{self.log_text()[-3000:]}")
            if '"node_started"' in self.log_text()[offset:]:
                return self
            time.sleep(0.05)
        raise RuntimeError(f"node did not start in {timeout} s:\n{self.log_text()[-3000:]}")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_events(self) -> list[dict[str, Any]]:
        import json

        events = []
        for line in self.log_text().splitlines():
            line = line.strip()
            if line.startswith("{"):
                try:
                    events.append(json.loads(line))
                except ValueError:
                    continue
        return events

    def find_event(self, name: str, **fields: Any) -> dict[str, Any] | None:
        """The first logged event called `name` whose fields have the given values."""
        for event in self.log_events():
            if event.get("event") == name and all(event.get(k) == v for k, v in fields.items()):
                return event
        return None

    def wait_for_event(self, name: str, timeout: float, **fields: Any) -> dict[str, Any]:
        """Wait for `find_event`; fail with the log's tail if the node exits or time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.find_event(name, **fields)
            if found is not None:
                return found
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"node exited:\n{self.log_text()[-3000:]}")
            time.sleep(0.2)
        raise AssertionError(f"no {name} {fields} in {timeout} s:\n{self.log_text()[-4000:]}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill9()
        self.proc = None

    def kill9(self) -> None:
        """kill -9 the supervisor, as a crash would; its listeners die with it."""
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        wait_port_free(self.port)
        self.proc = None

    def index_db(self) -> Path:
        return self.root / "index.sqlite3"


def wait_port_free(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) != 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"port {port} still accepts connections after {timeout} s")


def node_config(workdir: Path, **overrides: Any) -> dict[str, Any]:
    """A test configuration: loopback sources for DCMTK and pynetdicom test clients."""
    config: dict[str, Any] = {
        "node": {"ae_title": "RADNODE", "host": "127.0.0.1", "port": free_port()},
        "api": {"host": "127.0.0.1", "port": free_port()},
        "storage": {"root": str(workdir / "store"), "min_free_mb": 16},
        "sources": [
            {"name": "dcmtk-store", "ae_title": "STORESCU", "hosts": ["127.0.0.1"]},
            {"name": "dcmtk-echo", "ae_title": "ECHOSCU", "hosts": ["127.0.0.1"]},
            {"name": "test-client", "ae_title": "TESTSCU", "hosts": ["127.0.0.0/8"]},
        ],
        "completion": {"series_quiet_seconds": 60, "study_quiet_seconds": 120},
        "logging": {"level": "debug", "format": "json"},
    }
    for section, values in overrides.items():
        if isinstance(values, dict) and isinstance(config.get(section), dict):
            config[section] = {**config[section], **values}
        else:
            config[section] = values
    return config


def run_tool(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, capture_output=True, text=True, env=dcmtk_env(), timeout=timeout, check=False
    )


def iter_stored_files(root: Path) -> Iterator[Path]:
    yield from (p for p in root.rglob("*.dcm") if not p.name.startswith(".partial-"))


def storescu_args(node: NodeProcess, files: list[Path], *options: str) -> list[str]:
    """DCMTK storescu sending `files` to the node as STORESCU."""
    return [
        dcmtk("storescu"), "-aet", "STORESCU", "-aec", node.ae_title, *options,
        "127.0.0.1", str(node.port), *map(str, files),
    ]  # fmt: skip


def push_in_parallel(node: NodeProcess, files: list[Path], associations: int) -> None:
    """Send `files` over N storescu processes at once; each must succeed."""
    procs = [
        subprocess.Popen(
            storescu_args(node, files[i::associations]), env=dcmtk_env(), stderr=subprocess.PIPE
        )
        for i in range(associations)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err


PIXELMED_JAR = "/usr/share/java/pixelmed.jar"


def pixelmed_sr_validator(path: Path, *options: str) -> list[str]:
    """PixelMed's DicomSRValidator on one file (Debian pixelmed-apps). Unlike dciodvfy
    it checks the SR templates; JDK 17 needs its XPath limits lifted for PixelMed's
    large stylesheet. Skip locally, fail in CI, when Java or PixelMed is missing."""
    return [
        require_tool("/usr/bin/java"),
        "-Djdk.xml.xpathExprOpLimit=0",
        "-Djdk.xml.xpathExprGrpLimit=0",
        "-Djdk.xml.xpathTotalOpLimit=0",
        "-cp",
        require_tool(PIXELMED_JAR),
        "com.pixelmed.validate.DicomSRValidator",
        *options,
        str(path),
    ]
