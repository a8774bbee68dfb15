"""Synthetic DICOM data for tests, benchmarks and demos; no download needed."""

from node.synthetic.ct import SyntheticSeries, write_ct_series

__all__ = ["SyntheticSeries", "write_ct_series"]
