"""Model packages: `models/<name>/model.yaml` beside its ONNX files and model card.

The package says what the model is (name, version, Device UID, intended use and
limits, licence and origin of the weights), what series it accepts, how its input
is prepared, which pipeline runs it and what it outputs (segments with SNOMED CT
codes, finding types, measurements). The registry validates every package when the
node starts, so a broken package is reported before any study arrives.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from node.domain import CodedConcept, ModelInfo, SegmentSpec
from node.errors import ConfigError

MODEL_FILE = "model.yaml"
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Code(_Strict):
    """A coded concept, as DICOM writes it (value, scheme, meaning)."""

    value: str = Field(min_length=1)
    scheme: str = Field("SCT", min_length=1, description="SCT for SNOMED CT, DCM for DICOM")
    meaning: str = Field(min_length=1)


class Licence(_Strict):
    """Whose weights these are and on what terms."""

    weights: str = Field(min_length=1, description="the weights' licence, such as MIT")
    origin: str = Field(min_length=1, description="where the weights come from, with credit")
    file: str | None = Field(None, description="the licence text beside model.yaml")


class InputRequirements(_Strict):
    """The series a model accepts; others are rejected with a reason, not retried."""

    modality: list[str] = Field(min_length=1)
    body_part: list[str] = Field(default_factory=list)
    min_slices: int = Field(1, ge=1)
    max_slice_thickness_mm: float | None = Field(None, gt=0)
    min_matrix: int | None = Field(None, ge=1)
    max_matrix: int | None = Field(None, ge=1)


class Preprocessing(_Strict):
    """How a slice becomes the network's input."""

    add: float = Field(0.0, description="added to HU before the network (e.g. 1024)")
    scale: float = Field(1.0, description="the sum is multiplied by this")
    matrix: int | None = Field(None, ge=8, description="slices are resampled to this square size")
    crop: Literal["none", "body"] = Field(
        "none", description="body: run the network only on the body's bounding box"
    )
    skip_slices: Literal["none", "no-lung-air"] = Field(
        "none", description="no-lung-air: skip slices without air inside the body"
    )


class Network(_Strict):
    """One ONNX graph in the package."""

    file: str = Field(min_length=1, description="a file name inside the package folder")
    sha256: str | None = Field(None, description="checked at start when given")
    input: str = Field(min_length=1)
    output: str = Field(min_length=1)
    threshold: float = Field(0.5, gt=0, lt=1)


class Segment(_Strict):
    """A segment the model outputs, coded for SEG."""

    label: str = Field(min_length=1)
    category: Code
    type: Code
    anatomic_region: Code | None = None
    color_rgb: tuple[int, int, int] = (255, 0, 0)
    finding: bool = Field(False, description="true for findings (one segment each)")


class Outputs(_Strict):
    """What the model gives back."""

    segments: list[Segment] = Field(min_length=1)
    finding_types: list[Code] = Field(default_factory=list)
    measurements: list[str] = Field(default_factory=list)


class ModelPackage(_Strict):
    """The validated content of model.yaml, plus where it was found."""

    name: str
    version: str = Field(min_length=1)
    device_uid: str = Field(description="identifies this model version in results (a UID)")
    description: str = Field(min_length=1)
    intended_use: str = Field(min_length=1)
    limitations: list[str] = Field(min_length=1)
    not_for_clinical_use: bool = True
    licence: Licence
    inputs: InputRequirements
    pipeline: str = Field(min_length=1, description="the pipeline in node.inference that runs it")
    preprocessing: Preprocessing = Field(default_factory=Preprocessing)
    networks: dict[str, Network] = Field(min_length=1)
    parameters: dict[str, Any] = Field(default_factory=dict)
    outputs: Outputs
    folder: Path = Field(Path("."), exclude=True)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError("lower-case letters, digits, '-' and '_' only")
        return value

    @field_validator("device_uid")
    @classmethod
    def _uid(cls, value: str) -> str:
        if len(value) > 64 or not _UID.match(value):
            raise ValueError(f"{value!r} is not a DICOM UID (digits and dots, at most 64)")
        return value

    @field_validator("networks")
    @classmethod
    def _inside(cls, value: dict[str, Network]) -> dict[str, Network]:
        for key, network in value.items():
            name = Path(network.file)
            if name.is_absolute() or ".." in name.parts:
                raise ValueError(
                    f"networks.{key}.file {network.file!r} must name a file inside the "
                    "package folder"
                )
        return value

    def info(self) -> ModelInfo:
        """What results need to know of this model, as a plain domain type."""

        def coded(code: Code | None) -> CodedConcept | None:
            return None if code is None else CodedConcept(code.value, code.scheme, code.meaning)

        segments = tuple(
            SegmentSpec(
                label=s.label,
                category=CodedConcept(s.category.value, s.category.scheme, s.category.meaning),
                type=CodedConcept(s.type.value, s.type.scheme, s.type.meaning),
                anatomic_region=coded(s.anatomic_region),
                color_rgb=s.color_rgb,
                finding=s.finding,
            )
            for s in self.outputs.segments
        )
        finding_type = coded(self.outputs.finding_types[0]) if self.outputs.finding_types else None
        return ModelInfo(
            name=self.name,
            version=self.version,
            device_uid=self.device_uid,
            description=self.description.strip(),
            segments=segments,
            finding_type=finding_type,
            not_for_clinical_use=self.not_for_clinical_use,
        )

    def network_path(self, key: str) -> Path:
        """The ONNX file of network `key`."""
        return self.folder / self.networks[key].file


def load_package(folder: Path, *, verify_files: bool = True) -> ModelPackage:
    """Read and validate one package; ConfigError says what to fix and where."""
    path = folder / MODEL_FILE
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of keys (name, version, ...)")
    try:
        package = ModelPackage.model_validate({**raw, "folder": folder})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"{path}: {problems}") from exc
    if package.name != folder.name:
        raise ConfigError(
            f"{path}: name {package.name!r} differs from its folder {folder.name!r}; "
            "rename one so that they match"
        )
    if verify_files:
        for key, network in package.networks.items():
            onnx_path = folder / network.file
            if not onnx_path.is_file():
                raise ConfigError(
                    f"{path}: networks.{key}.file {network.file!r} is missing; build it "
                    f"(see {folder / 'README.md'}) or fix the name"
                )
            if network.sha256 and _sha256(onnx_path) != network.sha256:
                raise ConfigError(
                    f"{path}: networks.{key}.file {network.file!r} does not match its sha256; "
                    "the file changed since model.yaml was written"
                )
    return package


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class ModelRegistry:
    """Every valid package under the models folder, by name."""

    def __init__(self, packages: dict[str, ModelPackage]) -> None:
        self._packages = dict(sorted(packages.items()))

    @classmethod
    def load(cls, models_dir: Path) -> ModelRegistry:
        """Load every `<models_dir>/*/model.yaml`; the first broken one raises ConfigError."""
        if not models_dir.is_dir():
            raise ConfigError(
                f"inference.models_dir {str(models_dir)!r} is not a folder; point it at the "
                "folder that holds the model packages (such as models/)"
            )
        packages: dict[str, ModelPackage] = {}
        for folder in sorted(p for p in models_dir.iterdir() if (p / MODEL_FILE).is_file()):
            package = load_package(folder)
            packages[package.name] = package
        return cls(packages)

    def __iter__(self) -> Iterator[ModelPackage]:
        return iter(self._packages.values())

    def __len__(self) -> int:
        return len(self._packages)

    def __contains__(self, name: object) -> bool:
        return name in self._packages

    def get(self, name: str) -> ModelPackage:
        """The package called `name`; ConfigError lists the ones there are."""
        try:
            return self._packages[name]
        except KeyError:
            known = ", ".join(self._packages) or "none"
            raise ConfigError(
                f"no model package named {name!r} (available: {known}); check the route's "
                "model or inference.models_dir"
            ) from None
