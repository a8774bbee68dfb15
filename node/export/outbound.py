"""What a delivery sends: a job's encoded objects, chosen for one destination.

The encoder wrote every object a job's destinations want (their outputs and their
fallbacks) under `<root>/results/<job>/dicom/` and listed them in result.json. A
delivery picks the destination's outputs; when the destination refuses SEG or SR,
its fallbacks stand in for them.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset

from node.config import Destination
from node.errors import DeliveryError, InvalidInput
from node.export.deidentify import Deidentifier
from node.store.files import OUTPUTS_DIR, RESULT_META
from node.store.sealed import dicom_source, read_text

# The summary PDF names the patient on its page: no de-identified destination gets it.
NOT_FOR_DEIDENTIFIED = ("pdf",)
# The SR's measurements point at the SEG's segments: without the SEG it dangles.
_NEEDS = {"sr": "seg"}


@dataclass(frozen=True, slots=True)
class OutboundObject:
    """One encoded result object on disk, with what the delivery needs to know."""

    kind: str
    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    series_uid: str


def load_outbound(result_folder: Path) -> list[OutboundObject]:
    """The objects a job's result holds, as result.json lists them.

    Raises DeliveryError when the result is missing or unreadable: the job must be
    run again (`radnode retry`), since the node cannot send what it does not have.
    """
    try:
        meta = json.loads(read_text(result_folder / RESULT_META))
    except (OSError, ValueError, InvalidInput) as exc:
        raise DeliveryError(
            f"the result in {result_folder} cannot be read ({exc}); it was removed or "
            "damaged, so it cannot be delivered: send the series again to run the model anew"
        ) from exc
    objects: list[OutboundObject] = []
    for item in meta.get("outputs", []):
        path = result_folder / OUTPUTS_DIR / str(item["file"])
        if not path.is_file():
            raise DeliveryError(
                f"the result file {path} is missing (removed or damaged); send the series "
                "again to run the model anew"
            )
        objects.append(
            OutboundObject(
                kind=str(item["kind"]),
                path=path,
                sop_class_uid=str(item["sop_class_uid"]),
                sop_instance_uid=str(item["sop_instance_uid"]),
                series_uid=str(item["series_uid"]),
            )
        )
    return objects


def kinds_to_send(destination: Destination, refused: Collection[str] = ()) -> list[str]:
    """The kinds of objects the destination gets, given the kinds it refuses.

    A refused SEG or SR is replaced by the destination's fallbacks; an SR whose SEG
    is refused goes too (its references would point at nothing).
    """
    refused_set = set(refused)
    for kind, needed in _NEEDS.items():
        if needed in refused_set:
            refused_set.add(kind)
    if destination.deidentify:  # identity inside the content: never de-identified
        refused_set.update(NOT_FOR_DEIDENTIFIED)
    kinds = [k for k in destination.outputs if k not in refused_set]
    if refused_set & {"seg", "sr"}:
        kinds.extend(k for k in destination.fallback_outputs if k not in kinds)
    return [k for k in kinds if k not in refused_set]


def objects_of(objects: Sequence[OutboundObject], kinds: Collection[str]) -> list[OutboundObject]:
    """The objects of the given kinds, in the encoder's order (SEG before SR)."""
    return [o for o in objects if o.kind in kinds]


def read_for_destination(
    obj: OutboundObject, destination: Destination, deidentifier: Deidentifier | None
) -> Dataset:
    """The object as this destination gets it: de-identified when it asks for that."""
    ds = dcmread(dicom_source(obj.path))
    if destination.deidentify:
        if deidentifier is None:
            raise DeliveryError(
                f"destination {destination.name!r} wants de-identified objects and no key is "
                "configured; set deidentification.key_file"
            )
        deidentifier.apply(ds)
    return ds
