"""Deliver a job's results to a DICOMweb server with STOW-RS (dicomweb-client).

All objects go in one multipart POST to `<url>/studies`. The response lists what
was stored and what failed, with a reason per instance (PS3.18 10.5.3): instances
refused because the server does not support their SOP class (SEG or SR on an older
server) are replaced by the destination's fallbacks in a second POST.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence

import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset

from node.config import Destination
from node.domain.status import SOP_CLASS_NOT_SUPPORTED, describe_status
from node.export.deidentify import Deidentifier
from node.export.dimse import AttemptFailed, DeliveryRefused, SendOutcome
from node.export.outbound import (
    OutboundObject,
    kinds_to_send,
    objects_of,
    read_for_destination,
)

_HTTP_HINTS = {
    401: "the server wants credentials: check destinations[].auth",
    403: "the server refused these credentials: check destinations[].auth and the "
    "account's rights to store",
    404: "no STOW-RS service at this URL: check destinations[].url (it ends before /studies)",
    413: "the server refused the request size: raise its upload limit",
    415: "the server does not take application/dicom parts",
}


def make_session(destination: Destination) -> requests.Session:
    """An HTTP session with the destination's authentication."""
    session = requests.Session()
    auth = destination.auth
    if auth is not None and auth.type == "basic":
        password = auth.password.get_secret_value() if auth.password else ""
        session.auth = (auth.username or "", password)
    elif auth is not None and auth.token is not None:
        session.headers["Authorization"] = f"Bearer {auth.token.get_secret_value()}"
    return session


def _client(destination: Destination) -> DICOMwebClient:
    client = DICOMwebClient(
        str(destination.url),
        session=make_session(destination),
        timeout=destination.timeout_seconds,
    )
    client.set_http_retry_params(retry=False)  # the exporter's backoff does the retrying
    return client


def _response_dataset(response: requests.Response | None) -> Dataset | None:
    """The STOW-RS response body as a data set, when it carries one."""
    if response is None or not response.content:
        return None
    try:
        return Dataset.from_json(json.loads(response.content))
    except (ValueError, TypeError, KeyError):
        return None


def _failures(response: Dataset | None) -> dict[str, int]:
    """SOP instance UID -> failure reason, from FailedSOPSequence."""
    if response is None:
        return {}
    return {
        str(item.get("ReferencedSOPInstanceUID", "")): int(item.get("FailureReason", 0x0110))
        for item in response.get("FailedSOPSequence", [])
    }


def _stored(response: Dataset | None) -> dict[str, str]:
    """SOP instance UID -> warning text ('' when none), from ReferencedSOPSequence."""
    if response is None:
        return {}
    stored: dict[str, str] = {}
    for item in response.get("ReferencedSOPSequence", []):
        warning = item.get("WarningReason")
        stored[str(item.get("ReferencedSOPInstanceUID", ""))] = (
            describe_status(int(warning)) if warning is not None else ""
        )
    return stored


def _post(
    client: DICOMwebClient, destination: Destination, datasets: list[Dataset]
) -> Dataset | None:
    """POST the data sets; return the response data set (failures inside it), or raise
    AttemptFailed / DeliveryRefused for errors of the whole request."""
    url = f"{destination.url}/studies"
    try:
        return client.store_instances(datasets)
    except requests.HTTPError as exc:
        response = exc.response
        code = response.status_code if response is not None else 0
        body = _response_dataset(response)
        if code == 409 and body is not None and "FailedSOPSequence" in body:
            return body  # some or all instances failed: the caller reads why
        hint = _HTTP_HINTS.get(code, "see the server's log")
        text = f"STOW-RS to {url} answered HTTP {code}: {hint}"
        if code in (400, 415):
            raise DeliveryRefused(text) from exc
        raise AttemptFailed(text) from exc
    except requests.Timeout as exc:
        raise AttemptFailed(
            f"no answer from {url} within {destination.timeout_seconds:g} s"
        ) from exc
    except requests.ConnectionError as exc:
        raise AttemptFailed(
            f"cannot connect to {url}: the server is down, or the host or port is wrong"
        ) from exc
    except requests.RequestException as exc:
        raise AttemptFailed(f"STOW-RS to {url} failed: {type(exc).__name__}") from exc


def _with_original_uids(response: Dataset | None, pseudonyms: dict[str, str]) -> Dataset | None:
    """The response with each pseudonymous SOP instance UID put back to the node's own."""
    if response is None:
        return None
    original = {str(v): k for k, v in pseudonyms.items()}
    for keyword in ("ReferencedSOPSequence", "FailedSOPSequence"):
        for item in response.get(keyword, []):
            uid = str(item.get("ReferencedSOPInstanceUID", ""))
            if uid in original:
                item.ReferencedSOPInstanceUID = original[uid]
    return response


def stow_to_server(
    destination: Destination,
    objects: Sequence[OutboundObject],
    confirmed: frozenset[str],
    on_confirmed: Callable[[str], None],
    deidentifier: Deidentifier | None = None,
) -> SendOutcome:
    """Send the objects the destination takes; raise AttemptFailed or DeliveryRefused."""
    started = time.perf_counter()
    client = _client(destination)
    outcome = SendOutcome()
    refused: dict[str, str] = {}
    for _round in range(2):  # the second round sends the fallbacks of refused objects
        kinds = kinds_to_send(destination, refused)
        batch = [o for o in objects_of(objects, kinds) if o.sop_instance_uid not in confirmed]
        batch = [o for o in batch if o.sop_instance_uid not in outcome.sent]
        outcome.kinds = [k for k in kinds if any(o.kind == k for o in objects)]
        if not batch:
            break
        datasets = [read_for_destination(o, destination, deidentifier) for o in batch]
        response = _post(client, destination, datasets)
        if destination.deidentify:  # the server answers with the pseudonymous UIDs
            pseudonyms = {
                o.sop_instance_uid: str(ds.SOPInstanceUID)
                for o, ds in zip(batch, datasets, strict=True)
            }
            response = _with_original_uids(response, pseudonyms)
        failures = _failures(response)
        stored = _stored(response)
        newly_refused = False
        problems: list[str] = []
        for obj in batch:
            reason = failures.get(obj.sop_instance_uid)
            if reason is None and obj.sop_instance_uid in stored:
                on_confirmed(obj.sop_instance_uid)
                outcome.sent.append(obj.sop_instance_uid)
                if stored.get(obj.sop_instance_uid):
                    outcome.warnings.append(f"{obj.kind}: {stored[obj.sop_instance_uid]}")
            elif reason == SOP_CLASS_NOT_SUPPORTED and obj.kind in ("seg", "sr"):
                refused.setdefault(obj.kind, f"{describe_status(reason)}")
                newly_refused = True
            else:  # failed, or not listed as stored: not confirmed, so sent again
                why = (
                    describe_status(reason)
                    if reason is not None
                    else "not listed as stored in the server's answer"
                )
                problems.append(f"{obj.kind}: {why}")
        if problems:
            raise AttemptFailed(f"STOW-RS to {destination.url}: " + "; ".join(problems))
        if not newly_refused:
            break
    outcome.refused = refused
    outcome.skipped = sum(
        1 for o in objects_of(objects, outcome.kinds) if o.sop_instance_uid in confirmed
    )
    outcome.seconds = time.perf_counter() - started
    return outcome


def check_stow(destination: Destination) -> tuple[bool, str]:
    """Ask the DICOMweb server for one study (QIDO-RS): reachable and authorised?"""
    url = f"{destination.url}/studies"
    session = make_session(destination)
    try:
        response = session.get(
            url,
            params={"limit": "1"},
            timeout=destination.timeout_seconds,
            headers={"Accept": "application/dicom+json"},
        )
    except requests.RequestException as exc:
        return False, f"cannot reach {url}: {type(exc).__name__}"
    if response.status_code in (200, 204):
        return True, f"{url} answered HTTP {response.status_code}"
    hint = _HTTP_HINTS.get(response.status_code, "see the server's log")
    return False, f"{url} answered HTTP {response.status_code}: {hint}"
