"""Results benchmark: time to build every output kind for LIDC-IDRI-0001.

Runs the reference model once, then builds SEG, SR, key images, KOS and summary
from its result several times, and prints the time per kind (median of the runs)
against the target of 1.5 s in total. The source headers come with the volume (read
once, while loading the series), so they cost nothing here.

    .venv/bin/python bench/results.py [--data DIR] [--repeat 5] [--json OUT]

DIR defaults to $RADNODE_SHARED_DATA/data/lidc-idri-0001.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from node.cli.work import build_encoding_input
from node.inference.package import ModelRegistry
from node.inference.pipelines import RuntimeSettings, build_pipeline, requirements_of
from node.inference.volume import read_series_folder
from node.results.encode import encode

try:
    from bench import lidc
except ImportError:  # python bench/results.py: bench/ itself is on sys.path
    import lidc  # type: ignore[no-redef]

TARGET_SECONDS = 1.5
REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="the lidc-idri-0001 folder")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    try:
        data = lidc.case_folder(args.data)
    except lidc.DataMissing as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    package = ModelRegistry.load(REPO / "models").get("lung-nodules")
    volume, headers = read_series_folder(data / "ct", requirements_of(package))
    result = build_pipeline(package, RuntimeSettings()).run(volume)
    inp = build_encoding_input(
        job_id="bench-lidc-0001",
        model=package.info(),
        volume=volume,
        result=result,
        sources=headers,
        decision_support="fleischner-2017",
        segments=("Lung",),
        series_numbers_in_use=frozenset(),
    )
    runs: list[dict[str, float]] = []
    sizes: dict[str, int] = {}
    for _ in range(args.repeat):
        outputs, timings = encode(inp)
        runs.append(timings)
    for output in outputs:
        sizes[output.filename] = (
            len(output.dataset.PixelData) if "PixelData" in output.dataset else 0
        )
    kinds = list(runs[0])
    medians = {kind: statistics.median(run[kind] for run in runs) for kind in kinds}
    total = statistics.median(sum(run.values()) for run in runs)
    print(
        f"LIDC-IDRI-0001: {len(result.findings)} finding(s), {volume.shape[0]} slices; "
        f"{args.repeat} runs"
    )
    print("\n| output | median s |")
    print("|---|---|")
    for kind in kinds:
        print(f"| {kind} | {medians[kind]:.3f} |")
    print(f"| **all outputs** | **{total:.3f}** |")
    first = sum(runs[0].values())
    print(f"\nfirst run in this process (highdicom loads its tables once): {first:.3f} s")
    met = total < TARGET_SECONDS
    print(f"target: all outputs under {TARGET_SECONDS} s: {'met' if met else 'NOT met'}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "median_seconds": medians,
                    "total_seconds": total,
                    "runs": runs,
                    "met": met,
                },
                indent=2,
            )
        )
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
