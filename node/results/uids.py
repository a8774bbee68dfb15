"""Deterministic result UIDs: the same job, model version and output kind always give
the same series and SOP instance UIDs, so a job run or delivered again produces the
same objects (the PACS sees the same instance again, never a second result)."""

from __future__ import annotations

import uuid

# A fixed namespace for Radnode's result UIDs (a random UUID drawn once).
_NAMESPACE = uuid.UUID("6f1c2b8e-5d7a-4e0b-9a43-2c1f8d9e7b05")


def result_uid(job_id: str, model_version: str, kind: str, index: int = 0) -> str:
    """A `2.25.` UID (UUID-derived, PS3.5 B.2) for one output of one job.

    `kind` names the object and the level, such as "seg-series" or "sc-instance";
    `index` tells several instances of one kind apart.
    """
    name = f"{job_id}/{model_version}/{kind}/{index}"
    return f"2.25.{uuid.uuid5(_NAMESPACE, name).int}"
