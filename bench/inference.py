"""Inference benchmark of the reference lung-nodule model on LIDC-IDRI-0001.

Times each stage of the production (cropped) pipeline, counts the lung network's
FLOPs from its ONNX graph, compares its speed with a dense float32 matrix product
measured in the same run, and runs the lung network full-frame as well, to show that
cropping does less work for the same lungs and findings.

    .venv/bin/python bench/inference.py [--data DIR] [--threads N] [--repeat R]
        [--json OUT] [--skip-full]

DIR defaults to $RADNODE_SHARED_DATA/data/lidc-idri-0001 (only its ct/ folder is read).
N defaults to the cores this process may use; it is ONNX Runtime's intra-op thread
count and the BLAS thread count of the matrix product. Stage times are medians of R
runs. Exit code 0 when every target is met, 1 when one is not, 2 when the data cannot
be found or read.

Targets: decode, volume, plan, post-processing and measuring together under 15 % of the
model time (both ONNX graphs); the lung network at >= 80 % of the matrix product's
GFLOP/s; the cropped lung network in at most half the full-frame time, with the same
findings (centroids within 1 mm) and a lung mask with Dice >= 0.99 against the
full-frame one; peak RSS of the production run under 2048 MiB.

FLOPs: Conv counts 2 x output elements x (input channels / group) x kernel area;
ConvTranspose 2 x input elements x (output channels / group) x kernel area (each input
element is multiplied by a whole kernel; read from the output side, that is output
elements x (input channels / group) x kernel area / stride area). Bias adds (one per
output element) are added; activations, pooling and concatenation are not counted.

The ceiling: numpy's float32 matmul of two 2048 x 2048 matrices, best of 10, run in a
subprocess started with OPENBLAS_NUM_THREADS, OMP_NUM_THREADS and MKL_NUM_THREADS set
to N (BLAS reads them when numpy is imported), before the model runs and after; the
higher of the two is the ceiling.
"""

from __future__ import annotations

import argparse
import ctypes
import glob
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
from scipy.optimize import linear_sum_assignment

from node.domain.types import Finding
from node.errors import RadnodeError
from node.inference.package import ModelRegistry
from node.inference.pipelines import (
    InferenceResult,
    LungNodulePipeline,
    RuntimeSettings,
    build_pipeline,
    requirements_of,
)
from node.inference.runtime import cpu_count, nvidia_gpu_present
from node.inference.segment import Plan, full_plan

try:
    from bench import lidc
except ImportError:  # python bench/inference.py: bench/ itself is on sys.path
    import lidc  # type: ignore[no-redef]
from node.domain.volume import Volume
from node.inference.volume import load_series_folder

BoolArray = npt.NDArray[np.bool_]
Shape = tuple[int, int, int, int]

REPO = Path(__file__).resolve().parents[1]
MODEL = "lung-nodules"
UNET = REPO / "models" / MODEL / "lung-unet.onnx"
MATMUL_SIZE = 2048
MATMUL_REPEAT = 10
GPU_PROVIDERS = {"CUDAExecutionProvider", "TensorrtExecutionProvider"}

# Targets.
MAX_OVERHEAD_FRACTION = 0.15
MIN_CEILING_FRACTION = 0.80
MAX_CROPPED_FRACTION = 0.5
MIN_LUNG_DICE = 0.99
MAX_CENTROID_SHIFT_MM = 1.0
MAX_PEAK_RSS_MIB = 2048.0


DataMissing = lidc.DataMissing


@dataclass
class Target:
    """One target: what was measured against its limit."""

    name: str
    value: float | None
    limit: str
    met: bool
    note: str = ""


# -- FLOPs -------------------------------------------------------------------------------


class FlopCounter:
    """FLOPs of a graph's Conv and ConvTranspose nodes for a concrete input shape."""

    def __init__(self, model: onnx.ModelProto | Path) -> None:
        self.model = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
        self._cache: dict[Shape, int] = {}

    def __call__(self, shape: Sequence[int]) -> int:
        """FLOPs of one run on an input of `shape` (N, C, H, W)."""
        key = (int(shape[0]), int(shape[1]), int(shape[2]), int(shape[3]))
        if key not in self._cache:
            self._cache[key] = self._count(key)
        return self._cache[key]

    def _count(self, shape: Shape) -> int:
        model = onnx.ModelProto()
        model.CopyFrom(self.model)
        graph_input = model.graph.input[0]
        for dim, value in zip(graph_input.type.tensor_type.shape.dim, shape, strict=True):
            dim.dim_value = value
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
        shapes: dict[str, list[int]] = {t.name: list(t.dims) for t in model.graph.initializer}
        for info in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output):
            dims = info.type.tensor_type.shape.dim
            shapes[info.name] = [d.dim_value if d.HasField("dim_value") else -1 for d in dims]
        total = 0
        for node in inferred.graph.node:
            if node.op_type not in ("Conv", "ConvTranspose"):
                continue
            names = (node.input[0], node.input[1], node.output[0])
            x, w, y = (shapes.get(name, [-1]) for name in names)
            if min(x + w + y) < 0:
                raise ValueError(f"{node.name or node.op_type}: shapes unknown for input {shape}")
            kernel_area = math.prod(w[2:])
            # Conv weights are (out, in / group, kh, kw); ConvTranspose (in, out / group, kh, kw).
            driving = math.prod(y) if node.op_type == "Conv" else math.prod(x)
            total += 2 * driving * w[1] * kernel_area
            if len(node.input) > 2 and node.input[2]:
                total += math.prod(y)
        return total


def network_input_shapes(plan: Plan, rows: int, matrix: int | None) -> list[Shape]:
    """The (N, 1, H, W) batches `run_slices` feeds the network under `plan`."""
    zoom = 1.0 if matrix is None or matrix == rows else matrix / rows
    shapes: list[Shape] = []
    for ks, (j0, j1, i0, i1) in plan.groups:
        height, width = j1 - j0, i1 - i0
        if zoom != 1.0:  # resampled as scipy's zoom does, then padded to a multiple of 8
            height = -(-round(height * zoom) // 8) * 8
            width = -(-round(width * zoom) // 8) * 8
        shapes.append((len(ks), 1, height, width))
    return shapes


# -- the FLOP ceiling ----------------------------------------------------------------------


def _blas_threads() -> int | None:
    """The thread count numpy's BLAS will use, where it can be asked."""
    try:
        from threadpoolctl import threadpool_info  # type: ignore[import-not-found]

        counts = [int(p["num_threads"]) for p in threadpool_info() if p["user_api"] == "blas"]
        return counts[0] if counts else None
    except ImportError:
        pass
    libs = Path(np.__file__).parent.parent / "numpy.libs"
    for path in glob.glob(str(libs / "libscipy_openblas*.so")):
        lib = ctypes.CDLL(path)
        for name in ("scipy_openblas_get_num_threads64_", "openblas_get_num_threads"):
            if hasattr(lib, name):
                return int(getattr(lib, name)())
    return None


def ceiling_worker(size: int, repeat: int) -> dict[str, Any]:
    """Best single float32 matmul of two size x size matrices, in this process."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    c = np.empty_like(a)
    np.matmul(a, b, out=c)  # warm-up: threads started, pages touched
    best = math.inf
    for _ in range(repeat):
        started = time.perf_counter()
        np.matmul(a, b, out=c)
        best = min(best, time.perf_counter() - started)
    flops = 2 * size**3
    return {
        "size": size,
        "repeat": repeat,
        "best_seconds": best,
        "gflop_per_s": flops / best / 1e9,
        "blas_threads": _blas_threads(),
    }


def measure_ceiling(threads: int) -> dict[str, Any]:
    """Run `ceiling_worker` in a subprocess whose BLAS uses `threads` threads."""
    env = {**os.environ}
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[name] = str(threads)
    command = [sys.executable, str(Path(__file__).resolve()), "--ceiling-worker"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"matmul subprocess failed: {done.stderr[-500:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# -- pipelines, comparisons ---------------------------------------------------------------


class FullFramePipeline(LungNodulePipeline):
    """The production pipeline with the lung network run on every slice, whole."""

    def _plan(self, volume: Volume) -> Plan:
        return full_plan(volume, batch=self.runtime.batch_slices)


def data_folder(argument: str | None) -> Path:
    """The case folder from --data or $RADNODE_SHARED_DATA; DataMissing says what is wrong."""
    return lidc.case_folder(argument, ("ct",))


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def dice(a: BoolArray, b: BoolArray) -> float:
    """Dice overlap of two masks (1 when both are empty)."""
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2 * int(np.count_nonzero(a & b)) / total


def match_findings(ours: list[Finding], theirs: list[Finding]) -> dict[str, Any]:
    """Pair findings one to one by centroid; the largest distance of a pair in mm."""
    if not ours or not theirs:
        return {"pairs": 0, "max_distance_mm": 0.0 if ours == theirs else None}
    a = np.array([f.centroid_mm for f in ours])
    b = np.array([f.centroid_mm for f in theirs])
    distances = np.linalg.norm(a[:, None] - b[None], axis=2)
    rows, cols = linear_sum_assignment(distances)
    return {"pairs": len(rows), "max_distance_mm": float(distances[rows, cols].max())}


def median_timings(runs: list[dict[str, float]]) -> dict[str, float]:
    """Each stage's median over runs."""
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def best_timings(runs: list[dict[str, float]]) -> dict[str, float]:
    """Each stage's best over runs."""
    return {key: min(run[key] for run in runs) for key in runs[0]}


def run_pipeline(
    pipeline: LungNodulePipeline, volume: Volume, repeat: int
) -> tuple[InferenceResult, list[dict[str, float]]]:
    """Run `repeat` times; the last result and every run's timings (seconds)."""
    runs: list[dict[str, float]] = []
    result: InferenceResult | None = None
    for _ in range(repeat):
        result = None  # the previous result is not held while the next one is made
        started = time.perf_counter()
        result = pipeline.run(volume)
        runs.append({**result.timings, "total": time.perf_counter() - started})
    assert result is not None
    return result, runs


def _findings_json(findings: list[Finding]) -> list[dict[str, Any]]:
    keys = ("tracking_id", "centroid_mm", "volume_mm3", "long_axis_mm", "score")
    return [{k: v for k, v in f.as_json().items() if k in keys} for f in findings]


# -- the benchmark -----------------------------------------------------------------------


def benchmark(folder: Path, threads: int, repeat: int, skip_full: bool) -> dict[str, Any]:
    """Every number the report prints."""
    report: dict[str, Any] = {"data": str(folder), "threads": threads, "repeat": repeat}
    report["ceiling_before"] = measure_ceiling(threads)
    package = ModelRegistry.load(REPO / "models").get(MODEL)
    requirements = requirements_of(package)
    load_seconds: list[float] = []
    volume: Volume | None = None
    for _ in range(repeat):
        volume = None  # one volume in memory at a time
        started = time.perf_counter()
        volume = load_series_folder(folder / "ct", requirements)
        load_seconds.append(time.perf_counter() - started)
    assert volume is not None
    report["peak_rss_after_load_mib"] = peak_rss_mib()
    runtime = RuntimeSettings(intra_op_threads=threads)
    pipeline = build_pipeline(package, runtime)
    if not isinstance(pipeline, LungNodulePipeline):
        raise RuntimeError(f"{MODEL} is expected to use the lung-nodules pipeline")
    result, runs = run_pipeline(pipeline, volume, repeat)
    report["peak_rss_mib"] = peak_rss_mib()  # read before anything else is run
    lung_network = pipeline.networks["lungs"]
    report["provider"] = lung_network.provider
    report["providers_available"] = ort.get_available_providers()
    report["nvidia_gpu_present"] = nvidia_gpu_present()
    report["volume"] = {
        "shape": list(volume.shape),
        "spacing_mm": [round(s, 4) for s in volume.spacing],
        "hu_mib": volume.hu.nbytes / 2**20,
    }
    counter = FlopCounter(UNET)
    prep = package.preprocessing
    report["gflop_per_512_slice"] = counter((1, 1, 512, 512)) / 1e9
    plan = pipeline._plan(volume)
    shapes = network_input_shapes(plan, volume.shape[1], prep.matrix)
    timings = median_timings(runs)
    lung_gflop = sum(counter(s) for s in shapes) / 1e9
    report["load_seconds"] = load_seconds
    report["cropped"] = {
        "runs": runs,
        "median_s": timings,
        "best_s": best_timings(runs),
        "notes": result.notes,
        "slices_run": len(plan.slices),
        "groups": len(plan.groups),
        "input_shapes": [list(s) for s in shapes],
        "lung_gflop": lung_gflop,
        "lung_gflop_per_s": lung_gflop / timings["lung_network"],
        "findings": _findings_json(result.findings),
    }
    if not skip_full:
        lungs = result.segments["Lung"]
        findings = result.findings
        del result
        full = FullFramePipeline(package, runtime)
        full_result, full_runs = run_pipeline(full, volume, repeat)
        full_plan_ = full._plan(volume)
        full_shapes = network_input_shapes(full_plan_, volume.shape[1], prep.matrix)
        full_timings = median_timings(full_runs)
        full_gflop = sum(counter(s) for s in full_shapes) / 1e9
        report["full_frame"] = {
            "runs": full_runs,
            "median_s": full_timings,
            "best_s": best_timings(full_runs),
            "notes": full_result.notes,
            "slices_run": len(full_plan_.slices),
            "lung_gflop": full_gflop,
            "lung_gflop_per_s": full_gflop / full_timings["lung_network"],
            "findings": _findings_json(full_result.findings),
        }
        report["comparison"] = {
            "lung_dice": dice(lungs, full_result.segments["Lung"]),
            "findings_cropped": len(findings),
            "findings_full": len(full_result.findings),
            **match_findings(findings, full_result.findings),
        }
        report["peak_rss_after_full_mib"] = peak_rss_mib()
    report["ceiling_after"] = measure_ceiling(threads)
    return report


def judge(report: dict[str, Any]) -> list[Target]:
    """The targets, from the numbers in `report`."""
    cropped = report["cropped"]["median_s"]
    load = statistics.median(report["load_seconds"])
    model = cropped["lung_network"] + cropped["nodule_filter"]
    overhead = load + sum(
        cropped[k] for k in ("plan", "lung_postprocess", "nodule_postprocess", "measure")
    )
    ceiling = max(report["ceiling_before"]["gflop_per_s"], report["ceiling_after"]["gflop_per_s"])
    achieved = report["cropped"]["lung_gflop_per_s"]
    on_gpu = report["provider"] in GPU_PROVIDERS
    targets = [
        Target(
            "decode+volume+plan+post-processing+measure / model time",
            overhead / model,
            f"< {MAX_OVERHEAD_FRACTION}",
            overhead / model < MAX_OVERHEAD_FRACTION,
        ),
        Target(
            "lung network GFLOP/s / CPU matmul GFLOP/s",
            achieved / ceiling,
            f">= {MIN_CEILING_FRACTION}",
            on_gpu or achieved / ceiling >= MIN_CEILING_FRACTION,
            "not judged: the network ran on a GPU, the ceiling is the CPU's" if on_gpu else "",
        ),
    ]
    if "full_frame" in report:
        full = report["full_frame"]["median_s"]
        comparison = report["comparison"]
        same = (
            comparison["findings_cropped"] == comparison["findings_full"]
            and comparison["max_distance_mm"] is not None
            and comparison["max_distance_mm"] <= MAX_CENTROID_SHIFT_MM
        )
        targets += [
            Target(
                "cropped / full-frame lung network time",
                cropped["lung_network"] / full["lung_network"],
                f"<= {MAX_CROPPED_FRACTION}",
                cropped["lung_network"] <= MAX_CROPPED_FRACTION * full["lung_network"],
            ),
            Target(
                "lung mask Dice, cropped vs full-frame",
                comparison["lung_dice"],
                f">= {MIN_LUNG_DICE}",
                comparison["lung_dice"] >= MIN_LUNG_DICE,
            ),
            Target(
                "same findings (count; largest centroid shift, mm)",
                comparison["max_distance_mm"],
                f"same count, <= {MAX_CENTROID_SHIFT_MM} mm",
                same,
                f"{comparison['findings_cropped']} cropped, {comparison['findings_full']} full",
            ),
        ]
    targets.append(
        Target(
            "peak RSS of the production run (MiB)",
            report["peak_rss_mib"],
            f"< {MAX_PEAK_RSS_MIB:.0f}",
            report["peak_rss_mib"] < MAX_PEAK_RSS_MIB,
        )
    )
    report["summary"] = {
        "model_s": model,
        "overhead_s": overhead,
        "ceiling_gflop_per_s": ceiling,
        "lung_gflop_per_s": achieved,
    }
    return targets


def print_report(report: dict[str, Any], targets: list[Target]) -> None:
    """The tables."""
    volume = report["volume"]
    cropped = report["cropped"]
    med, best = cropped["median_s"], cropped["best_s"]
    summary = report["summary"]
    model = summary["model_s"]
    loads = report["load_seconds"]
    print(
        f"volume: {volume['shape'][0]} x {volume['shape'][1]} x {volume['shape'][2]} voxels, "
        f"spacing {volume['spacing_mm']} mm, HU array {volume['hu_mib']:.1f} MiB"
    )
    print(f"provider: {report['provider']}, {report['threads']} threads")
    if report["provider"] in GPU_PROVIDERS:
        print(f"the networks ran on the GPU ({report['provider']})")
    else:
        print(
            f"no GPU was available (NVIDIA driver present: {report['nvidia_gpu_present']}; "
            f"providers in this ONNX Runtime build: {', '.join(report['providers_available'])})"
        )
    before, after = report["ceiling_before"], report["ceiling_after"]
    print(
        f"ceiling: float32 matmul {before['size']}^2, best of {before['repeat']}, BLAS threads "
        f"{before['blas_threads']}: {before['gflop_per_s']:.1f} GFLOP/s before the model, "
        f"{after['gflop_per_s']:.1f} after; ceiling {summary['ceiling_gflop_per_s']:.1f}"
    )
    print(f"U-Net: {report['gflop_per_512_slice']:.2f} GFLOP per 512 x 512 slice")
    print()
    print("| stage (cropped, production) | median s | best s | % of model |")
    print("|---|---|---|---|")
    rows = [("read + decode + volume", statistics.median(loads), min(loads))]
    names = {
        "plan": "plan",
        "lung_network": "lung network (ONNX)",
        "lung_postprocess": "lung post-processing",
        "nodule_filter": "nodule filter (ONNX)",
        "nodule_postprocess": "nodule post-processing",
        "measure": "measure",
        "total": "pipeline total (without reading)",
    }
    rows += [(label, med[key], best[key]) for key, label in names.items()]
    for label, m, b in rows:
        print(f"| {label} | {m:.3f} | {b:.3f} | {100 * m / model:.1f} |")
    print(
        f"\nmodel time (lung network + nodule filter) {model:.3f} s; decode, volume, plan, "
        f"post-processing and measure {summary['overhead_s']:.3f} s "
        f"({summary['overhead_s'] / model:.3f} of the model time)"
    )
    print(
        f"lung network: {cropped['slices_run']} slices in {cropped['groups']} groups, "
        f"{cropped['lung_gflop']:.1f} GFLOP, {cropped['lung_gflop_per_s']:.1f} GFLOP/s "
        f"({cropped['lung_gflop_per_s'] / summary['ceiling_gflop_per_s']:.2f} of the ceiling)"
    )
    print(
        f"peak RSS (production run): {report['peak_rss_mib']:.0f} MiB "
        f"({report['peak_rss_after_load_mib']:.0f} MiB once the volume was read)"
    )
    if "full_frame" in report:
        full = report["full_frame"]
        fmed = full["median_s"]
        comparison = report["comparison"]
        print()
        print("| lung network | cropped | full frame | cropped / full |")
        print("|---|---|---|---|")
        pairs = [
            ("slices run", cropped["slices_run"], full["slices_run"], "{:.0f}"),
            ("pixels run (M)", cropped["notes"]["pixels_run"] / 1e6,
             full["notes"]["pixels_run"] / 1e6, "{:.1f}"),
            ("GFLOP", cropped["lung_gflop"], full["lung_gflop"], "{:.1f}"),
            ("lung network s", med["lung_network"], fmed["lung_network"], "{:.3f}"),
            ("GFLOP/s", cropped["lung_gflop_per_s"], full["lung_gflop_per_s"], "{:.1f}"),
            ("nodule filter s", med["nodule_filter"], fmed["nodule_filter"], "{:.3f}"),
            ("model total s", model, fmed["lung_network"] + fmed["nodule_filter"], "{:.3f}"),
            ("pipeline total s", med["total"], fmed["total"], "{:.3f}"),
            ("findings", comparison["findings_cropped"], comparison["findings_full"], "{:.0f}"),
        ]  # fmt: skip
        for label, a, b, fmt in pairs:
            ratio = a / b if b else float("nan")
            print(f"| {label} | {fmt.format(a)} | {fmt.format(b)} | {ratio:.3f} |")
        shift = comparison["max_distance_mm"]
        print(
            f"\nlung mask Dice {comparison['lung_dice']:.4f}; findings paired by centroid: "
            f"{comparison['pairs']}, largest shift "
            f"{'n/a' if shift is None else f'{shift:.3f} mm'}; peak RSS after the full-frame "
            f"runs {report['peak_rss_after_full_mib']:.0f} MiB"
        )
    print()
    print("| target | value | limit | met |")
    print("|---|---|---|---|")
    for t in targets:
        value = "n/a" if t.value is None else f"{t.value:.3f}"
        note = f" ({t.note})" if t.note else ""
        print(f"| {t.name} | {value} | {t.limit} | {'yes' if t.met else 'NO'}{note} |")
    print(f"\nstage times are medians of {report['repeat']} runs")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="the lidc-idri-0001 folder (its ct/ is read)")
    parser.add_argument("--threads", type=int, default=cpu_count(), help="default: cores")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement")
    parser.add_argument("--json", type=Path, help="write every number to this file")
    parser.add_argument("--skip-full", action="store_true", help="no full-frame comparison")
    parser.add_argument("--ceiling-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.ceiling_worker:
        print(json.dumps(ceiling_worker(MATMUL_SIZE, MATMUL_REPEAT)))
        return 0
    if args.repeat < 1 or args.threads < 1:
        parser.error("--repeat and --threads must be at least 1")
    try:
        folder = data_folder(args.data)
        report = benchmark(folder, args.threads, args.repeat, args.skip_full)
    except (DataMissing, RadnodeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    targets = judge(report)
    report["targets"] = [asdict(t) for t in targets]
    report["passed"] = all(t.met for t in targets)
    print_report(report, targets)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
