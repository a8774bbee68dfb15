"""Model packages: the shipped one loads, and a broken one is explained before any
study arrives (which key, which file, which value, and what there is instead)."""

from __future__ import annotations

import hashlib
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydicom.sr.codedict import codes

from node.errors import ConfigError, ModelError
from node.inference.package import ModelRegistry, load_package
from node.inference.pipelines import PIPELINES, RuntimeSettings, build_pipeline

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "models" / "lung-nodules"
UID = r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$"

Edit = Callable[[dict[str, Any]], None]


def package_in(tmp_path: Path, edit: Edit, *, folder: str = "lung-nodules") -> Path:
    """A copy of the shipped model.yaml, edited, in tmp_path/<folder> (no ONNX files)."""
    target = tmp_path / folder
    target.mkdir()
    raw = yaml.safe_load((SHIPPED / "model.yaml").read_text())
    edit(raw)
    (target / "model.yaml").write_text(yaml.safe_dump(raw))
    return target


def with_networks(folder: Path) -> Path:
    """Copy the shipped ONNX files beside the package's model.yaml."""
    for name in ("lung-unet.onnx", "blob-filter.onnx"):
        shutil.copyfile(SHIPPED / name, folder / name)
    return folder


def nothing(_raw: dict[str, Any]) -> None:
    """Leave the copied model.yaml as it is."""


# -- the shipped package -----------------------------------------------------------


def test_the_shipped_lung_nodule_package_loads_with_its_networks_verified() -> None:
    registry = ModelRegistry.load(REPO / "models")
    assert "lung-nodules" in registry and len(registry) >= 1
    package = registry.get("lung-nodules")
    assert package.folder == SHIPPED
    assert package.pipeline in PIPELINES
    assert package.not_for_clinical_use is True
    for key, network in package.networks.items():
        assert network.sha256, f"networks.{key} is checked at start"
        data = package.network_path(key).read_bytes()
        assert hashlib.sha256(data).hexdigest() == network.sha256
    assert package.licence.file and (SHIPPED / package.licence.file).is_file()


def test_the_shipped_device_uid_is_a_valid_uid() -> None:
    package = load_package(SHIPPED)
    assert len(package.device_uid) <= 64
    assert package.device_uid.startswith("2.25."), "a UUID-derived UID"
    assert int(package.device_uid.removeprefix("2.25.")) < 2**128
    assert re.match(UID, package.device_uid)


def test_the_shipped_segments_carry_the_snomed_codes_dicom_defines() -> None:
    outputs = load_package(SHIPPED).outputs
    by_label = {s.label: s for s in outputs.segments}
    assert set(by_label) == {"Lung", "Nodule"}
    expected = {
        ("Lung", "category"): codes.SCT.AnatomicalStructure,
        ("Lung", "type"): codes.SCT.Lung,
        ("Nodule", "category"): codes.SCT.MorphologicallyAbnormalStructure,
        ("Nodule", "type"): codes.SCT.Nodule,
        ("Nodule", "anatomic_region"): codes.SCT.Lung,
    }
    for (label, attribute), code in expected.items():
        coded = getattr(by_label[label], attribute)
        assert (coded.value, coded.scheme) == (code.value, code.scheme_designator), (
            label,
            attribute,
        )
        assert coded.meaning.lower() == code.meaning.lower()
    assert [s.label for s in outputs.segments if s.finding] == ["Nodule"]
    assert [(c.value, c.scheme) for c in outputs.finding_types] == [("27925004", "SCT")]


# -- what a broken package says ----------------------------------------------------


@pytest.mark.parametrize("key", ["version", "device_uid", "pipeline", "networks", "outputs"])
def test_a_missing_key_is_named(tmp_path: Path, key: str) -> None:
    folder = package_in(tmp_path, lambda raw: raw.pop(key))
    with pytest.raises(ConfigError) as err:
        load_package(folder)
    text = str(err.value)
    assert str(folder / "model.yaml") in text
    assert f"{key}: Field required" in text


def test_a_missing_nested_key_is_named_with_its_path(tmp_path: Path) -> None:
    folder = package_in(tmp_path, lambda raw: raw["networks"]["lungs"].pop("input"))
    with pytest.raises(ConfigError, match=r"networks\.lungs\.input: Field required"):
        load_package(folder)


def test_an_unknown_key_is_refused(tmp_path: Path) -> None:
    folder = package_in(tmp_path, lambda raw: raw.update(pipline="x"))
    with pytest.raises(ConfigError, match="pipline: Extra inputs are not permitted"):
        load_package(folder)


def test_a_name_that_differs_from_its_folder_is_refused(tmp_path: Path) -> None:
    folder = package_in(tmp_path, nothing, folder="lung-nodules-v2")
    with pytest.raises(ConfigError) as err:
        load_package(folder)
    assert "name 'lung-nodules' differs from its folder 'lung-nodules-v2'" in str(err.value)


def test_a_missing_network_file_is_named(tmp_path: Path) -> None:
    folder = package_in(tmp_path, nothing)
    shutil.copyfile(SHIPPED / "lung-unet.onnx", folder / "lung-unet.onnx")
    with pytest.raises(ConfigError) as err:
        load_package(folder)
    assert "networks.blob_filter.file 'blob-filter.onnx' is missing" in str(err.value)
    assert load_package(folder, verify_files=False).name == "lung-nodules"


def test_a_network_file_that_changed_fails_its_sha256(tmp_path: Path) -> None:
    folder = with_networks(package_in(tmp_path, nothing))
    with (folder / "lung-unet.onnx").open("ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ConfigError) as err:
        load_package(folder)
    assert "networks.lungs.file 'lung-unet.onnx' does not match its sha256" in str(err.value)


def test_the_copied_package_with_its_networks_loads(tmp_path: Path) -> None:
    folder = with_networks(package_in(tmp_path, nothing))
    assert load_package(folder).folder == folder


@pytest.mark.parametrize("uid", ["2.25.0123", "1.2.abc", "1..2", "1." + "2" * 63, ""])
def test_a_bad_device_uid_is_named_with_its_value(tmp_path: Path, uid: str) -> None:
    folder = package_in(tmp_path, lambda raw: raw.update(device_uid=uid))
    with pytest.raises(ConfigError) as err:
        load_package(folder)
    text = str(err.value)
    assert "device_uid:" in text
    assert f"{uid!r} is not a DICOM UID" in text


def test_a_broken_package_stops_the_registry_from_loading(tmp_path: Path) -> None:
    package_in(tmp_path, lambda raw: raw.update(device_uid="x"))
    with pytest.raises(ConfigError, match="device_uid"):
        ModelRegistry.load(tmp_path)


def test_a_models_dir_that_is_not_a_folder_is_explained(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"inference\.models_dir '.*absent' is not a folder"):
        ModelRegistry.load(tmp_path / "absent")


def test_an_unknown_pipeline_is_refused_when_built_naming_the_known_ones(
    tmp_path: Path,
) -> None:
    # Given a package, valid on disk, that names a pipeline Radnode does not have
    def edit(raw: dict[str, Any]) -> None:
        raw["pipeline"] = "lung-nodules-3d"
        raw["networks"] = {
            "lungs": {"file": "copy.onnx", "input": "image", "output": "lung_probability"}
        }

    folder = package_in(tmp_path, edit)
    shutil.copyfile(SHIPPED / "lung-unet.onnx", folder / "copy.onnx")
    package = load_package(folder)
    # When a worker builds it
    with pytest.raises(ModelError) as err:
        build_pipeline(package, RuntimeSettings(providers=("cpu",), intra_op_threads=1))
    # Then the message names the pipeline and the ones there are
    text = str(err.value)
    assert "pipeline 'lung-nodules-3d' is unknown" in text
    assert str(sorted(PIPELINES)) in text and "'slice-segmentation'" in text


def test_asking_for_an_unknown_model_lists_the_available_ones() -> None:
    registry = ModelRegistry.load(REPO / "models")
    with pytest.raises(ConfigError) as err:
        registry.get("nope")
    text = str(err.value)
    assert "no model package named 'nope'" in text
    assert f"(available: {', '.join(p.name for p in registry)})" in text
    assert "lung-nodules" in text
    with pytest.raises(ConfigError, match=r"\(available: none\)"):
        ModelRegistry({}).get("nope")
