"""Routing: each rule of a route, the reasons it gives when a series does not match,
and the order and merging of the routes that do."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from node.config import NodeConfig, Route, load_config
from node.domain import RouteMatch, SeriesFacts
from node.errors import ConfigError
from node.routing import explain_mismatch, match_routes

CHEST_CT = SeriesFacts(
    study_uid="1.2.3",
    series_uid="1.2.3.4",
    generation=1,
    source="pacs",
    modality="CT",
    body_part="CHEST",
    series_description="Thorax 1.0 B70f lung",
    instance_count=120,
    slice_thickness_mm=1.0,
    image_type=("ORIGINAL", "PRIMARY", "AXIAL"),
)


def config_with(*routes: dict[str, Any]) -> NodeConfig:
    """A configuration with two sources, two destinations and the given routes."""
    return NodeConfig.model_validate(
        {
            "sources": [
                {"name": "pacs", "ae_title": "PACS1"},
                {"name": "modality", "ae_title": "CT01"},
            ],
            "destinations": [
                {"name": "pacs-a", "ae_title": "PACSA", "host": "10.0.0.1", "port": 104},
                {"name": "pacs-b", "ae_title": "PACSB", "host": "10.0.0.2", "port": 104},
            ],
            "routes": list(routes),
        }
    )


def route(when: dict[str, Any] | None = None, **fields: Any) -> Route:
    """One route called r1 running lung-nodules, with the given conditions."""
    spec: dict[str, Any] = {"name": "r1", "model": "lung-nodules", **fields}
    if when is not None:
        spec["when"] = when
    [built] = config_with(spec).routes
    return built


# -- each rule ---------------------------------------------------------------------


def test_a_route_without_conditions_takes_every_series() -> None:
    assert explain_mismatch(route(), CHEST_CT) is None
    assert explain_mismatch(route(), replace(CHEST_CT, modality="", source=None)) is None


def test_from_takes_only_the_named_sources() -> None:
    only_modality = route(**{"from": ["modality"]})
    assert explain_mismatch(only_modality, replace(CHEST_CT, source="modality")) is None
    reason = explain_mismatch(only_modality, CHEST_CT)
    assert reason == "source 'pacs' is not in from ['modality']"
    assert explain_mismatch(only_modality, replace(CHEST_CT, source=None)) is not None


def test_modality_accepts_a_list_or_one_string_in_any_case() -> None:
    as_list = route({"modality": ["ct", "PT"]})
    as_string = route({"modality": "ct"})
    assert as_list.when.modality == ["CT", "PT"]
    assert as_string.when.modality == ["CT"]
    for rule in (as_list, as_string):
        assert explain_mismatch(rule, replace(CHEST_CT, modality=" ct ")) is None
    reason = explain_mismatch(as_string, replace(CHEST_CT, modality="MR"))
    assert reason is not None and "Modality MR" in reason and "['CT']" in reason


def test_an_empty_modality_is_named_as_empty() -> None:
    reason = explain_mismatch(route({"modality": "CT"}), replace(CHEST_CT, modality=""))
    assert reason is not None and "Modality (empty)" in reason


def test_body_part_must_be_listed() -> None:
    rule = route({"body_part": ["chest", "lung"]})
    assert explain_mismatch(rule, replace(CHEST_CT, body_part="lung")) is None
    reason = explain_mismatch(rule, replace(CHEST_CT, body_part="ABDOMEN"))
    assert reason is not None
    assert "BodyPartExamined ABDOMEN" in reason and "['CHEST', 'LUNG']" in reason


def test_a_missing_body_part_passes_unless_allow_missing_body_part_is_false() -> None:
    no_body_part = replace(CHEST_CT, body_part="  ")
    lenient = route({"body_part": "CHEST"})
    strict = route({"body_part": "CHEST", "allow_missing_body_part": False})
    assert lenient.when.allow_missing_body_part is True, "the documented default"
    assert explain_mismatch(lenient, no_body_part) is None
    reason = explain_mismatch(strict, no_body_part)
    assert reason is not None
    assert "BodyPartExamined is empty" in reason and "allow_missing_body_part" in reason


def test_min_slices_counts_instances() -> None:
    rule = route({"min_slices": 50})
    assert explain_mismatch(rule, replace(CHEST_CT, instance_count=50)) is None
    reason = explain_mismatch(rule, replace(CHEST_CT, instance_count=49))
    assert reason == "49 instances, fewer than min_slices 50"


def test_max_slice_thickness_refuses_thicker_slices_and_passes_unknown_thickness() -> None:
    rule = route({"max_slice_thickness_mm": 3})
    assert explain_mismatch(rule, replace(CHEST_CT, slice_thickness_mm=3.0)) is None
    assert explain_mismatch(rule, replace(CHEST_CT, slice_thickness_mm=None)) is None
    reason = explain_mismatch(rule, replace(CHEST_CT, slice_thickness_mm=5.0))
    assert reason is not None
    assert "SliceThickness 5 mm" in reason and "max_slice_thickness_mm 3" in reason


def test_series_description_is_a_case_insensitive_search() -> None:
    rule = route({"series_description": "LUNG|chest"})
    assert explain_mismatch(rule, replace(CHEST_CT, series_description="Thorax lung")) is None
    assert explain_mismatch(rule, replace(CHEST_CT, series_description="CHEST w/o")) is None
    reason = explain_mismatch(rule, replace(CHEST_CT, series_description="Abdomen"))
    assert reason is not None
    assert "SeriesDescription does not match" in reason and "'LUNG|chest'" in reason


def test_exclude_series_description_drops_matching_series() -> None:
    rule = route({"exclude_series_description": "scout|topogram|dose"})
    assert explain_mismatch(rule, CHEST_CT) is None
    reason = explain_mismatch(rule, replace(CHEST_CT, series_description="TOPOGRAM 0.6 T20f"))
    assert reason is not None
    assert "exclude_series_description" in reason and "'scout|topogram|dose'" in reason


def test_image_type_values_must_all_be_present() -> None:
    rule = route({"image_type": ["original", "AXIAL"]})
    assert rule.when.image_type == ["ORIGINAL", "AXIAL"]
    assert explain_mismatch(rule, replace(CHEST_CT, image_type=("original", " axial"))) is None
    reason = explain_mismatch(rule, replace(CHEST_CT, image_type=("DERIVED", "AXIAL")))
    assert reason == "ImageType lacks ['ORIGINAL']"
    assert explain_mismatch(rule, replace(CHEST_CT, image_type=())) is not None


# -- matching several routes -------------------------------------------------------


def test_matches_come_highest_priority_first_and_skip_routes_that_do_not_apply() -> None:
    config = config_with(
        {"name": "low", "model": "model-low", "priority": 1},
        {"name": "mr-only", "model": "model-mr", "priority": 50, "when": {"modality": "MR"}},
        {"name": "high", "model": "model-high", "priority": 10},
        {"name": "middle", "model": "model-middle", "priority": 5},
    )
    matches = match_routes(config.routes, CHEST_CT)
    assert [m.route for m in matches] == ["high", "middle", "low"]
    assert [m.priority for m in matches] == [10, 5, 1]


def test_two_routes_with_one_model_give_one_match_with_both_destinations() -> None:
    # Given two routes that run the same model for different destinations
    config = config_with(
        {"name": "for-b", "model": "lung-nodules", "priority": 1, "send_to": ["pacs-b"]},
        {
            "name": "for-a",
            "model": "lung-nodules",
            "priority": 9,
            "send_to": ["pacs-a", "pacs-b"],
        },
    )
    # When a series matches both
    matches = match_routes(config.routes, CHEST_CT)
    # Then there is one job's worth: the higher priority's route, every destination once
    assert matches == [RouteMatch("for-a", "lung-nodules", 9, ("pacs-a", "pacs-b"))]


def test_routes_of_equal_priority_keep_the_file_order_when_merged() -> None:
    config = config_with(
        {"name": "first", "model": "lung-nodules", "send_to": ["pacs-b"]},
        {"name": "second", "model": "lung-nodules", "send_to": ["pacs-a"]},
    )
    assert match_routes(config.routes, CHEST_CT) == [
        RouteMatch("first", "lung-nodules", 0, ("pacs-b", "pacs-a"))
    ]


def test_a_route_that_does_not_apply_adds_no_destination() -> None:
    config = config_with(
        {"name": "main", "model": "lung-nodules", "priority": 5, "send_to": ["pacs-a"]},
        {
            "name": "mr",
            "model": "lung-nodules",
            "send_to": ["pacs-b"],
            "when": {"modality": "MR"},
        },
    )
    assert match_routes(config.routes, CHEST_CT) == [
        RouteMatch("main", "lung-nodules", 5, ("pacs-a",))
    ]


# -- configuration errors ----------------------------------------------------------


def write_config(tmp_path: Path, routes: list[dict[str, Any]]) -> Path:
    path = tmp_path / "node.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "sources": [{"name": "pacs", "ae_title": "PACS1"}],
                "destinations": [
                    {"name": "pacs-a", "ae_title": "PACSA", "host": "10.0.0.1", "port": 104}
                ],
                "routes": routes,
            }
        )
    )
    return path


def test_a_bad_regular_expression_names_the_key_and_the_pattern(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        [{"name": "r1", "model": "lung-nodules", "when": {"series_description": "lung(["}}],
    )
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={})
    text = str(err.value)
    assert "routes[0].when.series_description = 'lung(['" in text
    assert "not a valid regular expression" in text


def test_a_bad_exclude_pattern_is_refused_too(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        [{"name": "r1", "model": "lung-nodules", "when": {"exclude_series_description": "*"}}],
    )
    with pytest.raises(ConfigError, match=r"routes\[0\]\.when\.exclude_series_description = '\*'"):
        load_config(path, environ={})


def test_an_unknown_destination_names_the_route_the_value_and_the_choices(
    tmp_path: Path,
) -> None:
    path = write_config(
        tmp_path,
        [
            {"name": "ok", "model": "lung-nodules", "send_to": ["pacs-a"]},
            {"name": "r2", "model": "lung-nodules", "send_to": ["viewer"]},
        ],
    )
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={})
    text = str(err.value)
    assert "routes[1].send_to names destination 'viewer'" in text
    assert "['pacs-a']" in text


def test_an_unknown_source_names_the_route_and_the_value(tmp_path: Path) -> None:
    path = write_config(tmp_path, [{"name": "r1", "from": ["ct-scanner"], "model": "m"}])
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={})
    assert "routes[0].from names source 'ct-scanner'" in str(err.value)
    assert "['pacs']" in str(err.value)
