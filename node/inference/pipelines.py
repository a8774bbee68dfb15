"""Pipelines: what runs between a volume and a result, named by a package's `pipeline`.

A model package picks one pipeline and configures it in model.yaml (networks,
preprocessing, parameters); sessions are created once when the pipeline is built
and reused for every series. Two pipelines ship:

- `slice-segmentation`: any 2D network that outputs a probability per pixel;
  thresholded, cleaned, each connected component of a finding segment a finding.
- `lung-nodules`: the reference model: lungs by a 2D network, then nodule
  candidates by the blob filter graph inside the lungs (node/inference/nodules.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from node.domain import Finding
from node.domain.volume import Volume
from node.errors import ModelError
from node.inference.measure import measure_finding
from node.inference.nodules import DetectorSettings, detect_nodules
from node.inference.package import ModelPackage
from node.inference.runtime import Network
from node.inference.segment import (
    Plan,
    clean_lung_mask,
    full_plan,
    plan_lung_crop,
    run_slices,
)
from node.inference.volume import SeriesRequirements

BoolArray = npt.NDArray[np.bool_]
UInt16Array = npt.NDArray[np.uint16]


@dataclass(frozen=True, slots=True)
class RuntimeSettings:
    """How sessions are made: provider order, threads, batch size."""

    providers: tuple[str, ...] = ("cuda", "cpu")
    intra_op_threads: int = 0
    batch_slices: int = 4


@dataclass(eq=False)
class InferenceResult:
    """What a model made of one series, ready for encoding.

    `segments` maps each non-finding segment label (e.g. Lung) to its mask;
    `findings_labels` numbers finding voxels 1..n in the order of `findings`.
    """

    model: str
    model_version: str
    findings: list[Finding]
    segments: dict[str, BoolArray]
    findings_labels: UInt16Array
    timings: dict[str, float] = field(default_factory=dict)
    provider: str = ""
    notes: dict[str, Any] = field(default_factory=dict)


def requirements_of(package: ModelPackage) -> SeriesRequirements:
    """The series checks a package asks for."""
    inputs = package.inputs
    return SeriesRequirements(
        modalities=tuple(m.upper() for m in inputs.modality),
        body_parts=tuple(b.upper() for b in inputs.body_part),
        min_slices=inputs.min_slices,
        max_slice_thickness_mm=inputs.max_slice_thickness_mm,
        min_matrix=inputs.min_matrix,
        max_matrix=inputs.max_matrix,
    )


class Pipeline:
    """Base: holds the package and its warm networks."""

    def __init__(self, package: ModelPackage, runtime: RuntimeSettings) -> None:
        self.package = package
        self.runtime = runtime
        self.networks = {
            key: Network(
                package.network_path(key),
                providers=runtime.providers,
                intra_op_threads=runtime.intra_op_threads,
                label=f"{package.name}/{key}",
            )
            for key in package.networks
        }

    @property
    def provider(self) -> str:
        """The provider the first network runs on."""
        return str(next(iter(self.networks.values())).provider)

    def run(self, volume: Volume) -> InferenceResult:
        """Run the model on one volume."""
        raise NotImplementedError

    def _slice_network(self, key: str) -> Callable[[npt.NDArray[np.float32]], Any]:
        network = self.networks[key]
        spec = self.package.networks[key]

        def infer(batch: npt.NDArray[np.float32]) -> Any:
            return network.run({spec.input: batch}, [spec.output])[0]

        return infer

    def _plan(self, volume: Volume) -> Plan:
        prep = self.package.preprocessing
        batch = self.runtime.batch_slices
        if prep.crop == "body" or prep.skip_slices == "no-lung-air":
            return plan_lung_crop(volume, batch=batch)
        return full_plan(volume, batch=batch)

    def _finding_segment_label(self) -> str:
        for segment in self.package.outputs.segments:
            if segment.finding:
                return segment.label
        raise ModelError(f"{self.package.name}: outputs.segments has no finding segment")


class SliceSegmentationPipeline(Pipeline):
    """A 2D network's mask; each component of it is a finding."""

    def run(self, volume: Volume) -> InferenceResult:
        timings: dict[str, float] = {}
        key = next(iter(self.package.networks))
        spec = self.package.networks[key]
        prep = self.package.preprocessing
        started = time.perf_counter()
        plan = self._plan(volume)
        probability = run_slices(
            volume,
            plan,
            self._slice_network(key),
            add=prep.add,
            scale=prep.scale,
            matrix=prep.matrix,
        )
        timings["model"] = time.perf_counter() - started
        started = time.perf_counter()
        mask = probability >= spec.threshold
        labels, _count = ndimage.label(mask)
        min_voxels = int(self.package.parameters.get("min_voxels", 10))
        label = self._finding_segment_label()
        findings: list[Finding] = []
        numbered = np.zeros(volume.shape, dtype=np.uint16)
        for index, box in enumerate(ndimage.find_objects(labels), start=1):
            if box is None:
                continue
            component = labels[box] == index  # inside the component's own box only
            if int(component.sum()) < min_voxels:
                continue
            score = float(probability[box][component].mean())
            finding = measure_finding(
                volume,
                component,
                label=label,
                tracking_id=f"{label.lower()}-{len(findings) + 1}",
                score=score,
                offset=(box[0].start, box[1].start, box[2].start),
            )
            if finding is not None:
                findings.append(finding)
                numbered[box][component] = len(findings)
        timings["postprocess"] = time.perf_counter() - started
        return InferenceResult(
            self.package.name,
            self.package.version,
            findings,
            {},
            numbered,
            timings,
            self.provider,
            {"slices_run": len(plan.slices), "pixels_run": plan.pixels()},
        )


class LungNodulePipeline(Pipeline):
    """The reference model: lungs, then nodule candidates inside them."""

    def __init__(self, package: ModelPackage, runtime: RuntimeSettings) -> None:
        super().__init__(package, runtime)
        for key in ("lungs", "blob_filter"):
            if key not in package.networks:
                raise ModelError(f"{package.name}: networks.{key} is required by lung-nodules")
        params = dict(package.parameters)
        if "scales_mm" in params:
            params["scales_mm"] = tuple(float(s) for s in params["scales_mm"])
        try:
            self.detector = DetectorSettings(**params)
        except TypeError as exc:
            raise ModelError(f"{package.name}: parameters: {exc}") from exc

    def run(self, volume: Volume) -> InferenceResult:
        timings: dict[str, float] = {}
        prep = self.package.preprocessing
        spec = self.package.networks["lungs"]
        started = time.perf_counter()
        plan = self._plan(volume)
        timings["plan"] = time.perf_counter() - started
        started = time.perf_counter()
        raw = run_slices(
            volume,
            plan,
            self._slice_network("lungs"),
            add=prep.add,
            scale=prep.scale,
            matrix=prep.matrix,
            threshold=spec.threshold,
        )
        timings["lung_network"] = time.perf_counter() - started
        started = time.perf_counter()
        lungs = clean_lung_mask(raw)
        del raw
        timings["lung_postprocess"] = time.perf_counter() - started
        blob = self.networks["blob_filter"]
        filter_seconds = [0.0]

        def run_filter(inputs: dict[str, npt.NDArray[np.float32]]) -> tuple[Any, Any]:
            begun = time.perf_counter()
            dot, line = blob.run(inputs, ["dot", "line"])
            filter_seconds[0] += time.perf_counter() - begun
            return dot, line

        started = time.perf_counter()
        candidates, _region = detect_nodules(volume, lungs, run_filter, self.detector)
        timings["nodule_filter"] = filter_seconds[0]
        timings["nodule_postprocess"] = time.perf_counter() - started - filter_seconds[0]
        started = time.perf_counter()
        label = self._finding_segment_label()
        numbered = np.zeros(volume.shape, dtype=np.uint16)
        findings: list[Finding] = []
        for candidate in candidates:
            box = candidate.mask_box
            mask = candidate.mask & (numbered[box] == 0)
            finding = measure_finding(
                volume,
                mask,
                offset=(box[0].start, box[1].start, box[2].start),
                label=label,
                tracking_id=f"nodule-{len(findings) + 1}",
                score=candidate.score,
                attributes={
                    "equivalent_diameter_mm": candidate.diameter_mm,
                    "elongation": candidate.elongation,
                    "sphericity": candidate.sphericity,
                    "dot_response": candidate.dot,
                    "line_response": candidate.line,
                },
            )
            if finding is not None:
                findings.append(finding)
                numbered[box][mask] = len(findings)
        timings["measure"] = time.perf_counter() - started
        lung_label = next(s.label for s in self.package.outputs.segments if not s.finding)
        return InferenceResult(
            self.package.name,
            self.package.version,
            findings,
            {lung_label: lungs},
            numbered,
            timings,
            self.provider,
            {
                "slices_run": len(plan.slices),
                "pixels_run": plan.pixels(),
                "pixels_full": int(np.prod(volume.shape)),
                "lung_volume_ml": float(lungs.sum()) * volume.voxel_volume_mm3 / 1000,
                "candidates": len(candidates),
            },
        )


PIPELINES: dict[str, type[Pipeline]] = {
    "slice-segmentation": SliceSegmentationPipeline,
    "lung-nodules": LungNodulePipeline,
}


def build_pipeline(package: ModelPackage, runtime: RuntimeSettings) -> Pipeline:
    """The package's pipeline with its networks loaded and warm."""
    try:
        kind = PIPELINES[package.pipeline]
    except KeyError:
        raise ModelError(
            f"{package.name}: pipeline {package.pipeline!r} is unknown; use one of "
            f"{sorted(PIPELINES)}"
        ) from None
    return kind(package, runtime)
