"""Match a complete series against the configured routes.

Pure functions over plain facts: routing never reads files or the network, so the
same rules give the same answer in `radnode serve`, in tests and in a dry run.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from node.config import Route
from node.domain import RouteMatch, SeriesFacts


def explain_mismatch(route: Route, facts: SeriesFacts) -> str | None:
    """Why `route` does not apply to the series, in words; None when it applies."""
    if route.from_ and facts.source not in route.from_:
        return f"source {facts.source!r} is not in from {route.from_}"
    rules = route.when
    modality = facts.modality.strip().upper()
    if rules.modality and modality not in rules.modality:
        return f"Modality {modality or '(empty)'} is not in {rules.modality}"
    body_part = facts.body_part.strip().upper()
    if rules.body_part:
        if not body_part:
            if not rules.allow_missing_body_part:
                return "BodyPartExamined is empty and allow_missing_body_part is false"
        elif body_part not in rules.body_part:
            return f"BodyPartExamined {body_part} is not in {rules.body_part}"
    if facts.instance_count < rules.min_slices:
        return f"{facts.instance_count} instances, fewer than min_slices {rules.min_slices}"
    thickness = facts.slice_thickness_mm
    if rules.max_slice_thickness_mm is not None and (
        thickness is not None and thickness > rules.max_slice_thickness_mm
    ):
        return (
            f"SliceThickness {thickness:g} mm is over max_slice_thickness_mm "
            f"{rules.max_slice_thickness_mm:g}"
        )
    description = facts.series_description
    if rules.series_description is not None and not re.search(
        rules.series_description, description, re.IGNORECASE
    ):
        return f"SeriesDescription does not match {rules.series_description!r}"
    if rules.exclude_series_description is not None and re.search(
        rules.exclude_series_description, description, re.IGNORECASE
    ):
        pattern = rules.exclude_series_description
        return f"SeriesDescription matches exclude_series_description {pattern!r}"
    image_type = {value.strip().upper() for value in facts.image_type}
    missing = [value for value in rules.image_type if value not in image_type]
    if missing:
        return f"ImageType lacks {missing}"
    return None


def match_routes(routes: Sequence[Route], facts: SeriesFacts) -> list[RouteMatch]:
    """Every route that applies to the series, highest priority first.

    Two routes running the same model on the same series give one job: the one with
    the higher priority (then the first in the file), its destinations merged with
    the others' so that nobody loses a result.
    """
    chosen: dict[str, RouteMatch] = {}
    for route in sorted(routes, key=lambda r: -r.priority):
        if explain_mismatch(route, facts) is not None:
            continue
        earlier = chosen.get(route.model)
        if earlier is None:
            chosen[route.model] = RouteMatch(
                route.name, route.model, route.priority, tuple(route.send_to)
            )
        else:
            merged = earlier.send_to + tuple(d for d in route.send_to if d not in earlier.send_to)
            chosen[route.model] = RouteMatch(earlier.route, earlier.model, earlier.priority, merged)
    return list(chosen.values())
