"""The status page: one server-rendered HTML page, no JavaScript, for IT.

Jobs per state; destinations with their last connectivity check and deliveries;
failures with their reasons and, for admins, a retry button (a plain form); recent
jobs with their timelines and a thumbnail of the result's key image. Everything is
escaped; nothing on it identifies a patient (UIDs, states, times, counts).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from html import escape
from pathlib import Path
from typing import Any

import pydicom
from PIL import Image

from node.domain import Delivery, Job
from node.store.sealed import dicom_source

THUMBNAIL_PIXELS = 160
_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.1em;margin:1.4em 0 .4em}
table{border-collapse:collapse;width:100%}td,th{border-bottom:1px solid #ddd;
padding:.3em .5em;text-align:left;vertical-align:top}th{background:#f4f4f4}
.ok{color:#176b2c}.bad{color:#a11}.muted{color:#666;font-size:.9em}
.state{font-weight:600}.timeline{font-size:.85em;color:#444}
img.thumb{width:120px;height:auto;border:1px solid #ccc}
form{display:inline}button{padding:.2em .8em}
.banner{background:#fff4d6;border:1px solid #e0c060;padding:.4em .8em;margin:.6em 0}
"""


@dataclass(frozen=True, slots=True)
class DestinationView:
    """A destination as the page shows it."""

    name: str
    where: str
    check_ok: bool | None  # None: not checked yet
    check_message: str
    checked_at: float | None
    deliveries: Mapping[str, int]  # state -> count


@dataclass(frozen=True, slots=True)
class JobView:
    """A job with what the page shows beside it."""

    job: Job
    deliveries: Sequence[Delivery]
    timeline: Sequence[Mapping[str, Any]]
    thumbnail: str | None  # a data: URI


def _when(at: float | None) -> str:
    return datetime.fromtimestamp(at).strftime("%Y-%m-%d %H:%M:%S") if at else "-"


def key_image_thumbnail(folder: Path) -> str | None:
    """The first key image of a result as a small PNG data URI, or None."""
    for path in sorted(folder.glob("sc-*.dcm")):
        try:
            pixels = pydicom.dcmread(dicom_source(path)).pixel_array
        except Exception:  # noqa: BLE001 - a thumbnail is optional: none beats a failed page
            return None
        image = Image.fromarray(pixels)
        image.thumbnail((THUMBNAIL_PIXELS, THUMBNAIL_PIXELS))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    return None


def _timeline(events: Sequence[Mapping[str, Any]]) -> str:
    if not events:
        return ""
    start = float(events[0]["at"])
    steps = [f"{escape(str(e['kind']))} +{float(e['at']) - start:.1f} s" for e in events]
    return " &rarr; ".join(steps)


def render_status(
    *,
    node_title: str,
    version: str,
    now: float,
    counts: Mapping[str, int],
    destinations: Sequence[DestinationView],
    failed: Sequence[JobView],
    recent: Sequence[JobView],
    can_retry: bool,
    message: str | None = None,
) -> str:
    """The whole page."""
    out: list[str] = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>Radnode {escape(node_title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>Radnode {escape(node_title)}</h1>",
        f"<div class=muted>version {escape(version)} &middot; {_when(now)} &middot; "
        "AI results are decision support, unverified until a radiologist reviews them</div>",
    ]
    if message:
        out.append(f"<div class=banner id=message>{escape(message)}</div>")
    out.append("<h2>Jobs</h2><table id=job-counts><tr>")
    out.extend(f"<th>{escape(state)}</th>" for state in counts)
    out.append("</tr><tr>")
    out.extend(f"<td class=state>{n}</td>" for n in counts.values())
    out.append("</tr></table>")

    out.append("<h2>Destinations</h2><table id=destinations>")
    out.append("<tr><th>name</th><th>where</th><th>last check</th><th>deliveries</th></tr>")
    for d in destinations:
        if d.check_ok is None:
            check = "<span class=muted>not checked yet</span>"
        else:
            css = "ok" if d.check_ok else "bad"
            check = (
                f"<span class={css}>{'OK' if d.check_ok else 'FAILED'}</span> "
                f"{escape(d.check_message)} <span class=muted>{_when(d.checked_at)}</span>"
            )
        deliveries = ", ".join(f"{escape(s)} {n}" for s, n in sorted(d.deliveries.items()))
        out.append(
            f"<tr class=destination><td>{escape(d.name)}</td><td>{escape(d.where)}</td>"
            f"<td>{check}</td><td>{deliveries or '-'}</td></tr>"
        )
    out.append("</table>")

    out.append("<h2>Failures</h2>")
    if not failed:
        out.append("<p class=muted id=no-failures>No failed jobs.</p>")
    else:
        out.append("<table id=failures><tr><th>job</th><th>model</th><th>reason</th><th></th></tr>")
        for view in failed:
            job = view.job
            button = (
                f"<form method=post action='/status/jobs/{escape(job.id)}/retry'>"
                "<button type=submit>Retry</button></form>"
                if can_retry
                else "<span class=muted>admins can retry</span>"
            )
            out.append(
                f"<tr class=failure><td title='{escape(job.id)}'>{escape(job.id[:8])}</td>"
                f"<td>{escape(job.model)}</td><td class=bad>{escape(job.reason or '')}</td>"
                f"<td>{button}</td></tr>"
            )
        out.append("</table>")

    out.append("<h2>Recent jobs</h2><table id=recent-jobs>")
    out.append(
        "<tr><th>job</th><th>state</th><th>model</th><th>updated</th><th>key image</th>"
        "<th>timeline</th></tr>"
    )
    for view in recent:
        job = view.job
        image = (
            f"<img class=thumb alt='key image of job {escape(job.id[:8])}' src='{view.thumbnail}'>"
            if view.thumbnail
            else "<span class=muted>-</span>"
        )
        sent = "".join(
            f"<div class=muted>to {escape(d.destination)}: {escape(d.state.value)}</div>"
            for d in view.deliveries
        )
        out.append(
            f"<tr class=job><td title='{escape(job.id)}'>{escape(job.id[:8])}</td>"
            f"<td class=state>{escape(job.state.value)}{sent}</td><td>{escape(job.model)}</td>"
            f"<td>{_when(job.updated_at)}</td><td>{image}</td>"
            f"<td class=timeline>{_timeline(view.timeline)}</td></tr>"
        )
    out.append("</table></body></html>")
    return "".join(out)


def render_login(problem: str | None = None) -> str:
    """The sign-in form: a token, kept in a cookie for this browser."""
    note = f"<p class=bad id=problem>{escape(problem)}</p>" if problem else ""
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>Radnode sign in</title>"
        f"<style>{_STYLE}</style></head><body><h1>Radnode</h1>{note}"
        "<form method=post action='/status/login'><label>Token "
        "<input type=password name=token autocomplete=off></label> "
        "<button type=submit>Sign in</button></form></body></html>"
    )
