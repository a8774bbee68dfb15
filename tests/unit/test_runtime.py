"""ONNX Runtime sessions: which providers are asked for, and what a session reports."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from node.errors import ModelError
from node.inference import runtime
from node.inference.runtime import Network, choose_providers, nvidia_gpu_present

REPO = Path(__file__).resolve().parents[2]
BLOB_FILTER = REPO / "models" / "lung-nodules" / "blob-filter.onnx"
GPU_PROVIDERS = {"TensorrtExecutionProvider", "CUDAExecutionProvider"}


@pytest.fixture
def no_gpu() -> None:
    if nvidia_gpu_present():
        pytest.skip("this machine has an NVIDIA GPU; these tests are about one without")


@pytest.mark.usefixtures("no_gpu")
def test_without_a_gpu_only_the_cpu_provider_is_asked_for() -> None:
    assert choose_providers(["tensorrt", "cuda", "cpu"]) == ["CPUExecutionProvider"]


@pytest.mark.parametrize("wanted", [["cuda"], ["tensorrt"], ["tensorrt", "cuda"], ["cpu"]])
def test_the_cpu_provider_is_always_last_even_when_not_asked_for(
    wanted: list[str],
) -> None:
    chosen = choose_providers(wanted)
    assert chosen[-1] == "CPUExecutionProvider"
    assert chosen.count("CPUExecutionProvider") == 1


def test_with_a_gpu_the_configured_order_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a GPU and an ONNX Runtime build with every provider
    monkeypatch.setattr(runtime, "nvidia_gpu_present", lambda: True)
    every = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: every)
    # Then the configured order is kept, duplicates dropped, the CPU added last
    assert choose_providers(["cuda", "tensorrt", "cuda"]) == every[1::-1] + every[2:]


def test_a_provider_the_build_lacks_is_not_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "nvidia_gpu_present", lambda: True)
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert choose_providers(["tensorrt", "cuda", "cpu"]) == ["CPUExecutionProvider"]


@pytest.mark.usefixtures("no_gpu")
def test_a_network_runs_on_the_cpu_and_reports_its_inputs() -> None:
    network = Network(BLOB_FILTER, providers=("tensorrt", "cuda", "cpu"), intra_op_threads=1)
    assert network.provider == "CPUExecutionProvider"
    assert network.on_gpu is False
    assert network.label == "blob-filter"
    assert network.input_names == ["volume", "kz", "ky", "kx", "spacing", "sigma"]
    assert network.output_names == ["dot", "line"]


def test_a_network_runs_a_batch() -> None:
    network = Network(REPO / "models" / "lung-nodules" / "lung-unet.onnx", intra_op_threads=1)
    batch = np.full((1, 1, 32, 32), 24.0, dtype=np.float32)  # air, as stored values
    [probability] = network.run({network.input_names[0]: batch})
    assert probability.shape == (1, 1, 32, 32)
    assert probability.dtype == np.float32
    assert float(probability.min()) >= 0.0 and float(probability.max()) <= 1.0


def test_a_corrupt_onnx_file_is_a_model_error_naming_the_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken-net.onnx"
    broken.write_bytes(b"this is not a protobuf" * 10)
    with pytest.raises(ModelError, match=r"cannot load broken-net\.onnx"):
        Network(broken, intra_op_threads=1)


def test_a_missing_onnx_file_is_a_model_error_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"cannot load absent\.onnx"):
        Network(tmp_path / "absent.onnx", intra_op_threads=1)


def test_on_a_gpu_host_a_corrupt_onnx_file_is_a_model_error_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a host where the GPU providers are asked for
    monkeypatch.setattr(runtime, "nvidia_gpu_present", lambda: True)
    every = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: every)
    broken = tmp_path / "broken-net.onnx"
    broken.write_bytes(b"this is not a protobuf" * 10)
    # When the file cannot be loaded at all, then the caller still gets a ModelError
    with pytest.raises(ModelError, match=r"cannot load broken-net\.onnx"):
        Network(broken, providers=("cuda", "cpu"), intra_op_threads=1)
