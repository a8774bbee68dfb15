"""Inference: series to volume, model packages, ONNX Runtime sessions, pipelines."""
