"""The status page as IT sees it: signed in with a token, jobs per state, a
destination that cannot be reached, the failed job with its reason and a retry
button for admins, recent jobs with timelines and key image thumbnails; rendered in
headless Chromium (Debian `chromium`), which takes a screenshot."""

from __future__ import annotations

import hashlib
import html
import io
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import requests
from PIL import Image

from node.synthetic.phantom import write_chest_phantom
from tests.helpers import NodeProcess, free_port, require_tool, run_tool, storescu_args
from tests.results_helpers import SMALL

NodeFactory = Callable[..., NodeProcess]
READER, ADMIN = "reader-" + "r" * 24, "admin-" + "a" * 24
CHROMIUM = "/usr/bin/chromium"
PHI = ("SYNTHETIC^PATIENT", "SYN-0001", "SYNACC1", "19500101")


def hashed(name: str, token: str, scopes: list[str]) -> dict[str, object]:
    return {"name": name, "sha256": hashlib.sha256(token.encode()).hexdigest(), "scopes": scopes}


def node_with_a_failed_delivery(node_factory: NodeFactory, tmp_path: Path) -> NodeProcess:
    """A node whose one job was encoded and then failed to reach an offline PACS."""
    node = node_factory(
        api={"host": "127.0.0.1", "port": free_port(),
             "tokens": [hashed("reader", READER, ["read"]), hashed("admin", ADMIN, ["admin"])]},
        destinations=[{"name": "offline-pacs", "ae_title": "GONE", "host": "127.0.0.1",
                       "port": free_port(), "timeout_seconds": 2}],
        routes=[{"name": "chest", "from": ["dcmtk-store"], "when": {"modality": "CT"},
                 "model": "lung-nodules", "send_to": ["offline-pacs"]}],
        completion={"series_quiet_seconds": 1, "study_quiet_seconds": 2},
        delivery={"retry_base_seconds": 1, "retry_max_seconds": 1, "max_age_hours": 0.0005},
    )  # fmt: skip
    phantom = write_chest_phantom(tmp_path / "ct", SMALL)
    assert phantom.series is not None
    sent = run_tool(storescu_args(node, list(phantom.series.paths)), timeout=120)
    assert sent.returncode == 0, sent.stderr
    node.wait_for_event("delivery_failed", 240)
    return node


def base(node: NodeProcess) -> str:
    return f"http://127.0.0.1:{node.config['api']['port']}"


def test_the_status_page_shows_failures_and_lets_admins_retry(
    node_factory: NodeFactory, tmp_path: Path
) -> None:
    # Given a node with a job that could not be delivered
    node = node_with_a_failed_delivery(node_factory, tmp_path)
    # When someone opens the page without a token, they get the sign-in form
    anonymous = requests.get(f"{base(node)}/status", timeout=30)
    assert anonymous.status_code == 401 and "name=token" in anonymous.text
    wrong = requests.post(f"{base(node)}/status/login", data={"token": "nope"}, timeout=30)
    assert wrong.status_code == 401 and "not valid" in wrong.text
    # When a reader signs in
    session = requests.Session()
    page = session.post(f"{base(node)}/status/login", data={"token": READER}, timeout=30)
    # Then the page shows the job counts, the destination and the failure with its reason,
    # but no retry button for a reader
    assert page.status_code == 200, page.text
    assert "radnode_token" in session.cookies
    text = html.unescape(page.text)
    assert "id=job-counts" in text and "id=destinations" in text and "id=recent-jobs" in text
    assert "offline-pacs" in text and "GONE@127.0.0.1" in text
    assert "not delivered to offline-pacs: gave up after" in text
    assert "admins can retry" in text and "Retry</button>" not in text
    # And the result's key image is there as a thumbnail, and no patient data anywhere
    assert text.count("<img class=thumb") == 1
    assert not any(value in text for value in PHI)
    # And the session cookie keeps the reader signed in
    again = session.get(f"{base(node)}/status", timeout=30)
    assert again.status_code == 200 and "id=failures" in again.text
    # And a reader may not retry
    job_id = node.wait_for_event("delivery_failed", 5)["job_id"]
    refused = session.post(f"{base(node)}/status/jobs/{job_id}/retry", timeout=30)
    assert refused.status_code == 403
    # When an admin signs in and presses Retry
    admin = requests.Session()
    admin_page = admin.post(f"{base(node)}/status/login", data={"token": ADMIN}, timeout=30)
    assert f"action='/status/jobs/{job_id}/retry'" in admin_page.text
    retried = admin.post(f"{base(node)}/status/jobs/{job_id}/retry", timeout=30)
    # Then the page says the job was put back
    assert retried.status_code == 200
    assert f"job {job_id[:8]}: put back to be delivered again" in retried.text


def test_chromium_renders_the_status_page(node_factory: NodeFactory, tmp_path: Path) -> None:
    require_tool(CHROMIUM)
    # Given a node with a failed job, and a page that signs in with the reader token
    node = node_with_a_failed_delivery(node_factory, tmp_path)
    sign_in = tmp_path / "sign-in.html"
    sign_in.write_text(
        f"<form method=post action='{base(node)}/status/login'>"
        f"<input name=token value='{READER}'></form><script>document.forms[0].submit()</script>"
    )
    browser = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
               "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}",
               "--window-size=1280,1600", "--virtual-time-budget=10000"]  # fmt: skip
    # When headless Chromium loads it and takes a screenshot
    shot = tmp_path / "status.png"
    done = subprocess.run(
        [*browser, f"--screenshot={shot}", sign_in.as_uri()],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    dom = subprocess.run(
        [*browser, "--dump-dom", sign_in.as_uri()],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    # Then the rendered page has its sections, the failure and the key image
    assert dom.returncode == 0, dom.stderr[-2000:]
    rendered = html.unescape(dom.stdout)
    for element in ('id="job-counts"', 'id="destinations"', 'id="failures"', 'id="recent-jobs"'):
        assert element in rendered, rendered[:2000]
    assert "not delivered to offline-pacs" in rendered
    assert 'class="thumb"' in rendered
    # And the screenshot is a real rendering: the page's size, not blank
    image = np.asarray(Image.open(io.BytesIO(shot.read_bytes())).convert("L"))
    assert image.shape == (1600, 1280)
    assert (image < 128).mean() > 0.005  # text and the thumbnail are dark on white
