"""TLS everywhere the node talks: DICOM TLS for its listener (with client
certificates required) and for delivery to a DCMTK storescp over TLS, and HTTPS for
its API; certificates made by the test."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
import requests

from node.config import NodeConfig
from node.domain import DeliveryState
from node.export import Exporter
from node.synthetic import write_ct_series
from tests.delivery_helpers import encoded_job, make_store
from tests.helpers import NodeProcess, dcmtk, dcmtk_env, free_port, run_tool
from tests.tls_helpers import make_certificates

NodeFactory = Callable[..., NodeProcess]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_certificates(tmp_path_factory.mktemp("tls"))


def dcmtk_tls(certs: dict[str, Path]) -> list[str]:
    """DCMTK's options for TLS with the test client certificate."""
    return ["+tls", str(certs["client.key"]), str(certs["client.pem"]), "+cf", str(certs["ca.pem"])]


def test_the_listener_speaks_dicom_tls_and_requires_a_client_certificate(
    node_factory: NodeFactory, certs: dict[str, Path], tmp_path: Path
) -> None:
    # Given a node whose DICOM port speaks TLS and wants client certificates of the CA
    node = node_factory(
        node={
            "tls": {
                "certificate": str(certs["server.pem"]),
                "key": str(certs["server.key"]),
                "ca_certificates": str(certs["ca.pem"]),
            }
        }
    )
    target = ["-aec", "RADNODE", "127.0.0.1", str(node.port)]
    # When DCMTK echoes and stores over TLS with a certificate of the CA
    echo = run_tool([dcmtk("echoscu"), *dcmtk_tls(certs), *target])
    series = write_ct_series(tmp_path, slices=2)
    store = run_tool([dcmtk("storescu"), *dcmtk_tls(certs), *target, *map(str, series.paths)])
    # Then both succeed, and the instances are stored
    assert echo.returncode == 0, echo.stderr
    assert store.returncode == 0, store.stderr
    stored = sorted(p.name for p in (node.root / series.study_uid).rglob("*.dcm"))
    assert stored == sorted(f"{uid}.dcm" for uid in series.sop_instance_uids)
    # And a plain connection, or TLS without a client certificate, gets nothing
    assert run_tool([dcmtk("echoscu"), *target], timeout=30).returncode != 0
    anonymous = ["+tla", "+cf", str(certs["ca.pem"])]
    assert run_tool([dcmtk("echoscu"), *anonymous, *target], timeout=30).returncode != 0
    assert node.find_event("dicom_listener_started", tls=True) is not None


def test_results_are_delivered_over_dicom_tls(certs: dict[str, Path], tmp_path: Path) -> None:
    # Given a DCMTK storescp that speaks TLS only and requires client certificates
    port, received = free_port(), tmp_path / "received"
    received.mkdir()
    peer = subprocess.Popen(
        [dcmtk("storescp"), "+tls", str(certs["server.key"]), str(certs["server.pem"]),
         "+cf", str(certs["ca.pem"]), "-aet", "SECURE", "-od", str(received), str(port)],
        env=dcmtk_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while run_tool([dcmtk("echoscu"), *dcmtk_tls(certs), "-aec", "SECURE",
                        "127.0.0.1", str(port)]).returncode:  # fmt: skip
            assert time.monotonic() < deadline, "storescp with TLS did not start"
            time.sleep(0.2)
        # And a destination for it with the CA to trust and the node's client certificate
        config = NodeConfig.model_validate({
            "storage": {"root": str(tmp_path / "store"), "min_free_mb": 0},
            "destinations": [{
                "name": "secure", "ae_title": "SECURE", "host": "127.0.0.1", "port": port,
                "outputs": ["sr", "seg", "kos"],
                "tls": {"ca_certificates": str(certs["ca.pem"]),
                        "certificate": str(certs["client.pem"]), "key": str(certs["client.key"])},
            }],
        })  # fmt: skip
        store = make_store(config)
        job = encoded_job(store, tmp_path / "ct", ("secure",))
        exporter = Exporter(config, store.index, store.root)
        exporter.open_deliveries()
        destination = config.destinations[0]
        delivery = exporter.queue.claim("secure", exporter.owner, 300, time.time())
        assert delivery is not None
        # When the results are delivered
        state = exporter.deliver(destination, delivery)
        # Then they arrived over TLS
        assert state is DeliveryState.DELIVERED
        uids = {pydicom.dcmread(p).SOPInstanceUID for p in received.iterdir()}
        assert uids == job.sop_uids("seg", "sr", "kos")
        store.close()
    finally:
        peer.terminate()
        peer.wait(10)


def test_the_api_speaks_https(node_factory: NodeFactory, certs: dict[str, Path]) -> None:
    # Given a node whose HTTP API has a certificate
    node = node_factory(
        api={"host": "127.0.0.1", "port": free_port(),
             "tls": {"certificate": str(certs["server.pem"]), "key": str(certs["server.key"])}}
    )  # fmt: skip
    port = node.config["api"]["port"]
    # Then it answers over HTTPS with a certificate of the CA, and not in plain HTTP
    ok = requests.get(f"https://127.0.0.1:{port}/healthz", verify=certs["ca.pem"], timeout=10)
    assert ok.json() == {"status": "ok"}
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/healthz", timeout=10)
