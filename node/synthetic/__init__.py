"""Synthetic DICOM data for tests, benchmarks and demos; no download needed."""

from node.synthetic.ct import SyntheticSeries, write_ct_series
from node.synthetic.phantom import (
    DEFAULT_NODULES,
    NoduleTruth,
    PhantomNodule,
    PhantomSpec,
    PhantomTruth,
    TubeSegment,
    make_chest_phantom,
    write_chest_phantom,
    write_volume_series,
)

__all__ = [
    "DEFAULT_NODULES",
    "NoduleTruth",
    "PhantomNodule",
    "PhantomSpec",
    "PhantomTruth",
    "SyntheticSeries",
    "TubeSegment",
    "make_chest_phantom",
    "write_chest_phantom",
    "write_ct_series",
    "write_volume_series",
]
