"""The HTTP API of a running node: open health, tokens with scopes, metrics, studies,
jobs with retry, and STOW-RS ingest with the standard's answers for good and bad
input."""

from __future__ import annotations

import hashlib
import io
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests

from node.synthetic import write_ct_series
from tests.helpers import NodeProcess, dcmtk, run_tool, storescu_args

NodeFactory = Callable[..., NodeProcess]
TOKENS = {"reader": "r-" + "1" * 30, "sender": "s-" + "2" * 30, "admin": "a-" + "3" * 30}
PHI = ("SYNTHETIC^PATIENT", "SYN-0001", "SYNACC1")


def token_config() -> list[dict[str, Any]]:
    scopes = {"reader": ["read"], "sender": ["store"], "admin": ["admin"]}
    return [
        {"name": name, "sha256": hashlib.sha256(token.encode()).hexdigest(), "scopes": scopes[name]}
        for name, token in TOKENS.items()
    ]


def url(node: NodeProcess, path: str) -> str:
    return f"http://127.0.0.1:{node.config['api']['port']}{path}"


def get(node: NodeProcess, path: str, who: str | None = "reader") -> requests.Response:
    headers = {"Authorization": f"Bearer {TOKENS[who]}"} if who else {}
    return requests.get(url(node, path), headers=headers, timeout=30)


def multipart(parts: list[tuple[str, bytes]], boundary: str | None = None) -> tuple[str, bytes]:
    """A multipart/related body: (Content-Type, body)."""
    boundary = boundary or uuid.uuid4().hex
    body = io.BytesIO()
    for content_type, data in parts:
        body.write(f"--{boundary}\r\nContent-Type: {content_type}\r\n\r\n".encode())
        body.write(data + b"\r\n")
    body.write(f"--{boundary}--\r\n".encode())
    header = f'multipart/related; type="application/dicom"; boundary="{boundary}"'
    return header, body.getvalue()


def stow(
    node: NodeProcess,
    content_type: str,
    body: bytes,
    who: str = "sender",
    source: str = "web-pacs",
) -> requests.Response:
    return requests.post(
        url(node, f"/dicomweb/{source}/studies"),
        data=body,
        headers={"Content-Type": content_type, "Authorization": f"Bearer {TOKENS[who]}"},
        timeout=60,
    )


@pytest.fixture
def node(node_factory: NodeFactory) -> NodeProcess:
    return node_factory(
        api={"host": "127.0.0.1", "tokens": token_config(), "max_body_mb": 1},
        sources=[
            {"name": "web-pacs", "ae_title": "WEBPACS", "hosts": ["127.0.0.1"]},
            {"name": "dcmtk-store", "ae_title": "STORESCU", "hosts": ["127.0.0.1"]},
        ],
        completion={"series_quiet_seconds": 1, "study_quiet_seconds": 2},
        routes=[{"name": "chest", "when": {"modality": "CT"}, "model": "lung-nodules"}],
    )


def test_health_is_open_and_everything_else_needs_the_right_token(node: NodeProcess) -> None:
    # Given a running node
    # Then anyone may ask whether it is up
    assert get(node, "/healthz", who=None).json() == {"status": "ok"}
    # And the rest needs a known token
    missing = get(node, "/metrics", who=None)
    assert missing.status_code == 401 and missing.headers["WWW-Authenticate"] == "Bearer"
    wrong = requests.get(
        url(node, "/metrics"), headers={"Authorization": "Bearer nope"}, timeout=30
    )
    assert wrong.status_code == 401
    # And a token without the scope is refused with what to change
    refused = get(node, "/api/v1/jobs", who="sender")
    assert refused.status_code == 403 and "lacks the 'read' scope" in refused.json()["detail"]
    # And an admin token reads too
    assert get(node, "/api/v1/jobs", who="admin").status_code == 200
    # And the node is ready: store writable, models loaded, workers running, disk free
    ready = get(node, "/readyz")
    assert ready.status_code == 200 and ready.json() == {"ready": True, "problems": {}}


def test_stow_rs_stores_instances_for_the_named_source(node: NodeProcess, tmp_path: Path) -> None:
    # Given a 5-slice CT sent by STOW-RS as the source web-pacs
    series = write_ct_series(tmp_path, slices=5)
    content_type, body = multipart([("application/dicom", p.read_bytes()) for p in series.paths])
    # When it is posted
    answer = stow(node, content_type, body)
    # Then every instance is stored, as the standard's response says
    assert answer.status_code == 200, answer.text
    assert answer.headers["Content-Type"].startswith("application/dicom+json")
    stored = pydicom.Dataset.from_json(answer.json())
    assert {item.ReferencedSOPInstanceUID for item in stored.ReferencedSOPSequence} == set(
        series.sop_instance_uids
    )
    assert "FailedSOPSequence" not in stored
    # And the study is listed, by UID and counts, without patient data
    studies = get(node, "/api/v1/studies")
    [study] = studies.json()
    assert study["study_uid"] == series.study_uid and study["instances"] == 5
    assert study["source"] == "web-pacs"
    assert not any(value in studies.text for value in PHI)
    # And it goes on like a DIMSE series: routed, and rejected for too few slices
    job = node.wait_for_event("series_rejected", 120)
    jobs = get(node, "/api/v1/jobs?state=rejected").json()
    assert [j["series_uid"] for j in jobs] == [series.series_uid]
    [with_story] = get(node, "/api/v1/jobs?state=rejected&timelines=true").json()
    assert "series_complete" in [e["kind"] for e in with_story["timeline"]]
    assert "timeline" not in jobs[0]
    detail = get(node, f"/api/v1/jobs/{jobs[0]['id']}").json()
    assert [e["kind"] for e in detail["timeline"]][:2] == [
        "first_instance_received",
        "series_opened",
    ]
    assert job["reason"] in detail["reason"]
    # And retrying a rejected job is refused with why, and only admins may ask
    assert requests.post(url(node, f"/api/v1/jobs/{jobs[0]['id']}/retry"),
                         headers={"Authorization": f"Bearer {TOKENS['reader']}"},
                         timeout=30).status_code == 403  # fmt: skip
    retried = requests.post(
        url(node, f"/api/v1/jobs/{jobs[0]['id']}/retry"),
        headers={"Authorization": f"Bearer {TOKENS['admin']}"},
        timeout=30,
    )
    assert retried.status_code == 409 and "send it again" in retried.json()["detail"]
    # And the metrics count what happened
    metrics = get(node, "/metrics")
    assert metrics.status_code == 200
    assert 'radnode_instances_received_total{source="web-pacs"} 5.0' in metrics.text
    assert 'radnode_jobs{state="rejected"} 1.0' in metrics.text
    assert "radnode_storage_free_bytes" in metrics.text
    assert "radnode_associations_open 0.0" in metrics.text


def test_bad_stow_requests_get_precise_answers_and_store_nothing(
    node: NodeProcess, tmp_path: Path
) -> None:
    [good] = write_ct_series(tmp_path, slices=1).paths
    # A good instance beside a part that is not DICOM: 202, the bad one failed with why
    content_type, body = multipart(
        [("application/dicom", good.read_bytes()), ("application/dicom", b"not dicom")]
    )
    answer = stow(node, content_type, body)
    assert answer.status_code == 202, answer.text
    result = pydicom.Dataset.from_json(answer.json())
    assert len(result.ReferencedSOPSequence) == 1
    assert [int(i.FailureReason) for i in result.FailedSOPSequence] == [0xC210]
    # Only bad parts: 409
    content_type, body = multipart([("application/dicom", b"nothing")])
    assert stow(node, content_type, body).status_code == 409
    # The wrong media type, a part of another type, an unknown source, the wrong scope
    assert stow(node, "application/json", b"{}").status_code == 415
    content_type, body = multipart([("application/dicom+json", b"{}")])
    assert stow(node, content_type, body).status_code == 409
    unknown = stow(node, content_type, body, source="elsewhere")
    assert unknown.status_code == 404 and "web-pacs" in unknown.json()["detail"]
    assert stow(node, content_type, body, who="reader").status_code == 403
    # A body cut short, or over api.max_body_mb (1 MiB): 400, 413
    content_type, body = multipart([("application/dicom", good.read_bytes())])
    assert stow(node, content_type, body[:-20]).status_code == 400
    big_type, big = multipart([("application/dicom", b"\0" * (2 * 2**20))])
    too_big = stow(node, big_type, big)
    assert too_big.status_code == 413 and "api.max_body_mb" in too_big.json()["detail"]
    # An unknown path or method: 404 and 405, each saying what there is
    lost = get(node, "/api/v2/nothing")
    assert lost.status_code == 404 and "/api/v1/jobs" in lost.json()["detail"]
    wrong_method = requests.delete(url(node, "/api/v1/studies"), timeout=30)
    assert wrong_method.status_code == 405
    assert "DELETE is not allowed" in wrong_method.json()["detail"]
    # And nothing but the one good instance was stored
    [study] = get(node, "/api/v1/studies").json()
    assert study["instances"] == 1


def audit_events(node: NodeProcess) -> list[dict[str, Any]]:
    path = node.root / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_audit_trail_records_who_connected_what_they_sent_and_who_asked(
    node: NodeProcess, tmp_path: Path
) -> None:
    series = write_ct_series(tmp_path, slices=3)
    # Given a sender the node does not know, one it knows (DIMSE), and STOW-RS and API use
    unknown = run_tool([dcmtk("storescu"), "-aet", "STRANGER", "-aec", "RADNODE",
                        "127.0.0.1", str(node.port), str(series.paths[0])])  # fmt: skip
    assert unknown.returncode != 0
    known = run_tool(storescu_args(node, list(series.paths)))
    assert known.returncode == 0, known.stderr
    content_type, body = multipart([("application/dicom", series.paths[0].read_bytes())])
    assert stow(node, content_type, body).status_code == 200
    assert get(node, "/api/v1/studies", who=None).status_code == 401
    assert get(node, "/api/v1/studies").status_code == 200
    # Then the trail has each of them, with AE titles, addresses, counts and token names
    events = audit_events(node)
    rejected = [e for e in events if e["event"] == "association_rejected"]
    assert rejected[0]["calling_ae"] == "STRANGER" and rejected[0]["peer"].startswith("127.0.0.1")
    assert "calling AE title not recognized" in rejected[0]["reason"]
    accepted = [e for e in events if e["event"] == "association_accepted"]
    assert [e["calling_ae"] for e in accepted] == ["STORESCU"]
    received = [e for e in events if e["event"] == "instances_received"]
    assert {(e["via"], e["study_uid"], e["instances"]) for e in received} == {
        ("dimse", series.study_uid, 3),
        ("stow-rs", series.study_uid, 1),
    }
    calls = [(e["token"], e["method"], e["path"], e["status"]) for e in events
             if e["event"] == "api_call"]  # fmt: skip
    assert ("sender", "POST", "/dicomweb/web-pacs/studies", 200) in calls
    assert (None, "GET", "/api/v1/studies", 401) in calls
    assert ("reader", "GET", "/api/v1/studies", 200) in calls
    # And neither the trail nor the log holds a patient's name, ID or accession number
    trail = (node.root / "audit.jsonl").read_text()
    for value in PHI:
        assert value not in trail and value not in node.log_text()
