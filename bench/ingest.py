"""Ingest benchmark: a 300-slice 512x512 CT pushed with DCMTK storescu to the node,
to DCMTK storescp and to Orthanc, with one and with four associations, in one run.

Prints images per second per receiver and the node's ratio to storescp and to
Orthanc. Ratios measured in one run are what to compare; absolute rates drift.

    .venv/bin/python bench/ingest.py [--slices 300] [--repeat 3]

Needs DCMTK (/usr/bin/storescu, /usr/bin/storescp) and Orthanc (/usr/sbin/Orthanc).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import yaml

from node.synthetic import write_ct_series

STORESCU = "/usr/bin/storescu"
STORESCP = "/usr/bin/storescp"
ECHOSCU = "/usr/bin/echoscu"
ORTHANC = "/usr/sbin/Orthanc"
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_echo(ae: str, port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = subprocess.run(
            [ECHOSCU, "-aet", "STORESCU", "-aec", ae, "127.0.0.1", str(port)],
            capture_output=True,
            env=DCMTK_ENV,
            check=False,
        )
        if done.returncode == 0:
            return
        time.sleep(0.2)
    raise RuntimeError(f"{ae} on port {port} did not answer C-ECHO within {timeout} s")


@contextmanager
def serving(
    command: list[str], ae: str, port: int, env: dict[str, str] | None = None
) -> Iterator[tuple[str, int]]:
    """Run a receiver until the block ends; ready once it answers C-ECHO."""
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_echo(ae, port)
        yield ae, port
    finally:
        proc.terminate()
        proc.wait(30)


Receiver = Callable[[Path], AbstractContextManager[tuple[str, int]]]


def run_storescp(work: Path) -> AbstractContextManager[tuple[str, int]]:
    port = free_port()
    out = work / "storescp"
    out.mkdir()
    command = [STORESCP, "--fork", "-aet", "STORESCP", "-od", str(out), str(port)]
    return serving(command, "STORESCP", port, DCMTK_ENV)


def run_orthanc(work: Path) -> AbstractContextManager[tuple[str, int]]:
    port = free_port()
    storage = work / "orthanc"
    storage.mkdir()
    config = {
        "Name": "bench",
        "DicomAet": "ORTHANC",
        "DicomPort": port,
        "HttpPort": free_port(),
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomCheckCalledAet": False,
        "Plugins": [],
    }
    config_path = work / "orthanc.json"
    config_path.write_text(json.dumps(config))
    return serving([ORTHANC, str(config_path)], "ORTHANC", port, DCMTK_ENV)


def node_runner(processes: int, encrypted: bool = False) -> Receiver:
    def run_node(work: Path) -> AbstractContextManager[tuple[str, int]]:
        port = free_port()
        storage: dict[str, object] = {"root": str(work / "radnode"), "min_free_mb": 64}
        if encrypted:  # encryption at rest: data sets kept in memory, sealed, then written
            key = work / "at-rest.key"
            key.write_bytes(os.urandom(32))
            storage["encryption_key_file"] = str(key)
        config = {
            "node": {"ae_title": "RADNODE", "port": port, "listener_processes": processes},
            "api": {"port": free_port()},  # as deployed: the HTTP server runs beside
            "storage": storage,
            "sources": [{"name": "bench", "ae_title": "STORESCU", "hosts": ["127.0.0.1"]}],
            "completion": {"series_quiet_seconds": 60, "study_quiet_seconds": 120},
            "logging": {"level": "warning", "format": "json"},
        }
        config_path = work / "radnode.yaml"
        config_path.write_text(yaml.safe_dump(config))
        command = [sys.executable, "-m", "node", "serve", "--config", str(config_path)]
        return serving(command, "RADNODE", port)

    return run_node


def push(files: list[Path], ae: str, port: int, associations: int) -> float:
    """Send `files` over N parallel storescu processes; return images per second."""
    chunks = [files[i::associations] for i in range(associations)]
    start = time.perf_counter()
    procs = [
        subprocess.Popen(
            [STORESCU, "-aet", "STORESCU", "-aec", ae, "127.0.0.1", str(port), *map(str, chunk)],
            env=DCMTK_ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for chunk in chunks
    ]
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"storescu to {ae} failed: {err.decode(errors='replace')[-500:]}")
    return len(files) / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    for tool in (STORESCU, STORESCP, ECHOSCU, ORTHANC):
        if not Path(tool).exists():
            print(f"missing {tool}: install the Debian packages dcmtk and orthanc", file=sys.stderr)
            return 2

    receivers: dict[str, Receiver] = {
        "DCMTK storescp": run_storescp,
        "Orthanc": run_orthanc,
        "radnode, 1 listener": node_runner(1),
        "radnode, 2 listeners": node_runner(2),
        "radnode, 2 listeners, encrypted at rest": node_runner(2, encrypted=True),
    }
    # rates[name][associations] holds one rate per round; every round measures all
    # receivers back to back, so a slow spell of the machine hits them alike and the
    # ratios are taken within a round before their median is reported.
    rates: dict[str, dict[int, list[float]]] = {n: {1: [], 4: []} for n in receivers}
    with tempfile.TemporaryDirectory(prefix="radnode-bench-") as tmp:
        root = Path(tmp)
        series = write_ct_series(root / "ct", args.slices, args.size, args.size, seed=1)
        files = list(series.paths)
        size_mb = sum(p.stat().st_size for p in files) / 1e6
        print(f"series: {len(files)} slices of {args.size}x{args.size}, {size_mb:.1f} MB")
        for rep in range(args.repeat):
            for associations in (1, 4):
                for index, (name, runner) in enumerate(receivers.items()):
                    work = root / f"run-{rep}-{associations}-{index}"
                    work.mkdir()
                    with runner(work) as (ae, port):
                        rates[name][associations].append(push(files, ae, port, associations))
                    shutil.rmtree(work, ignore_errors=True)

    def ratio(name: str, reference: str, n: int) -> float:
        pairs = zip(rates[name][n], rates[reference][n], strict=True)
        return statistics.median(rate / ref for rate, ref in pairs)

    print()
    print("| receiver | 1 association | 4 associations |")
    print("|---|---|---|")
    for name in receivers:
        cells = []
        for n in (1, 4):
            cell = f"{statistics.median(rates[name][n]):.0f} img/s"
            if name != "DCMTK storescp":
                cell += f" ({ratio(name, 'DCMTK storescp', n):.2f}x storescp"
                if name.startswith("radnode"):
                    cell += f", {ratio(name, 'Orthanc', n):.2f}x Orthanc"
                cell += ")"
            cells.append(cell)
        print(f"| {name} | {cells[0]} | {cells[1]} |")
    print(
        f"\nmedians of {args.repeat} rounds; ratios are medians of the ratios within each "
        f"round; storescu with TCP_NODELAY=1; {len(files)} images per run"
    )
    if args.json:
        args.json.write_text(json.dumps(rates, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
