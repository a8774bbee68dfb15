"""`radnode models` and `radnode run`: model packages, and a model run without the server."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path

from node.config import NodeConfig
from node.domain import Finding
from node.errors import ConfigError
from node.inference.package import ModelRegistry
from node.inference.pipelines import InferenceResult, build_pipeline, requirements_of
from node.inference.volume import SeriesRejected, read_series_folder
from node.results.encode import OUTPUTS_DIR, encode, write_outputs
from node.store import job_id_for
from node.store.results import write_result

EXIT_OK = 0
EXIT_FAILED = 1


def models_dir(config: NodeConfig, override: Path | None) -> Path:
    """--models, else the configuration's inference.models_dir, else the shipped models/."""
    return override if override is not None else config.inference.resolved_models_dir()


def list_models(config: NodeConfig, override: Path | None) -> int:
    """Print every valid model package; a broken one stops with its error."""
    folder = models_dir(config, override)
    registry = ModelRegistry.load(folder)
    if not len(registry):
        print(f"no model packages in {folder}")
        return EXIT_OK
    for package in registry:
        inputs = package.inputs
        thickness = (
            f", slices <= {inputs.max_slice_thickness_mm:g} mm"
            if inputs.max_slice_thickness_mm
            else ""
        )
        print(f"{package.name} {package.version}  ({package.pipeline} pipeline)")
        print(f"    {package.description.strip()}")
        print(
            f"    accepts: {'/'.join(inputs.modality)} "
            f"{'/'.join(inputs.body_part) or 'any body part'}, at least {inputs.min_slices} "
            f"slices{thickness}"
        )
        segments = ", ".join(
            f"{s.label} ({s.type.scheme} {s.type.value})" for s in package.outputs.segments
        )
        print(f"    outputs: {segments}")
        print(f"    networks: {', '.join(n.file for n in package.networks.values())}")
        print(f"    weights: {package.licence.weights}; device UID {package.device_uid}")
        if package.not_for_clinical_use:
            print("    NOT FOR CLINICAL USE")
    return EXIT_OK


def findings_table(findings: Sequence[Finding]) -> str:
    """Findings as an aligned text table."""
    if not findings:
        return "no findings"
    header = (
        f"{'#':>2}  {'label':<8} {'score':>5}  {'x mm':>7} {'y mm':>7} {'z mm':>7}  "
        f"{'long':>5} {'short':>5}  {'volume mm3':>10}  {'HU':>5}  slice"
    )
    lines = [header, "-" * len(header)]
    for n, f in enumerate(findings, start=1):
        x, y, z = f.centroid_mm
        lines.append(
            f"{n:>2}  {f.label:<8} {f.score:>5.2f}  {x:>7.1f} {y:>7.1f} {z:>7.1f}  "
            f"{f.long_axis_mm:>5.1f} {f.short_axis_mm:>5.1f}  {f.volume_mm3:>10.0f}  "
            f"{f.mean_hu:>5.0f}  {f.key_slice + 1}"
        )
    return "\n".join(lines)


def run_model(
    config: NodeConfig,
    model: str,
    path: Path,
    out: Path,
    *,
    override: Path | None = None,
    threads: int | None = None,
) -> int:
    """Run one model on a folder of DICOM files; print findings, write them to `out`."""
    from node.cli.work import build_encoding_input, result_payload, runtime_settings

    registry = ModelRegistry.load(models_dir(config, override))
    package = registry.get(model)
    if not path.is_dir():
        raise ConfigError(f"{path} is not a folder; give the folder holding one DICOM series")
    started = time.perf_counter()
    try:
        volume, headers = read_series_folder(path, requirements_of(package))
    except SeriesRejected as exc:
        print(f"radnode: {model} cannot use this series: {exc.reason}", file=sys.stderr)
        return EXIT_FAILED
    load_seconds = time.perf_counter() - started
    settings = runtime_settings(config)
    if threads is not None:
        settings = type(settings)(settings.providers, threads, settings.batch_slices)
    pipeline = build_pipeline(package, settings)
    result: InferenceResult = pipeline.run(volume)
    result.timings["load"] = load_seconds
    out.mkdir(parents=True, exist_ok=True)
    findings_json = [f.as_json() for f in result.findings]
    # Every output kind, as a node would send them, so that they can be opened in a
    # viewer; the job id is the one the node would give this series and model.
    inp = build_encoding_input(
        job_id=job_id_for(volume.series_uid, 1, package.name),
        model=package.info(),
        volume=volume,
        result=result,
        sources=headers,
        decision_support="fleischner-2017",
        segments=("Lung",),
        series_numbers_in_use=frozenset(),
    )
    started = time.perf_counter()
    outputs, encode_timings = encode(inp)
    write_outputs(out / OUTPUTS_DIR, outputs)
    result.timings["encode"] = time.perf_counter() - started
    meta = result_payload(volume, result)
    meta["outputs"] = [o.describe() for o in outputs]
    meta["encode_timings"] = {k: round(v, 4) for k, v in encode_timings.items()}
    write_result(
        out,
        findings=findings_json,
        masks=result.segments,
        labels={"findings": result.findings_labels},
        meta=meta,
    )
    k, rows, cols = volume.shape
    print(
        f"{package.name} {package.version} on {k} slices of {rows}x{cols} "
        f"({volume.spacing[1]:.2f} x {volume.spacing[2]:.2f} x {volume.spacing[0]:.2f} mm), "
        f"provider {result.provider}"
    )
    print(findings_table(result.findings))
    timing = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in result.timings.items())
    print(f"\ntimes: {timing}")
    print(f"wrote {out / 'findings.json'}, result.json and arrays.npz (masks)")
    kinds = ", ".join(f"{o.kind} {o.filename}" for o in outputs)
    print(f"DICOM results in {out / OUTPUTS_DIR}: {kinds}")
    if package.not_for_clinical_use:
        print("AI-generated, unverified; not for clinical use.")
    return EXIT_OK
