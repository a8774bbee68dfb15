"""ONNX Runtime sessions: providers tried in the configured order, created once, kept warm.

`onnxruntime-gpu` lists the CUDA and TensorRT providers even on a machine without a
GPU, and asking for them there prints an error before it falls back to the CPU. So
GPU providers are only asked for when an NVIDIA device is present, and the provider
that actually runs is read back from the session and logged once per network.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import structlog

from node.errors import ModelError

log = structlog.get_logger("radnode.inference")

PROVIDERS = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
_GPU_PROVIDERS = {"TensorrtExecutionProvider", "CUDAExecutionProvider"}


def nvidia_gpu_present() -> bool:
    """True when the NVIDIA driver exposes a device to this process."""
    return Path("/dev/nvidiactl").exists() or Path("/proc/driver/nvidia/version").exists()


def cpu_count() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def choose_providers(wanted: Sequence[str]) -> list[str]:
    """ONNX Runtime provider names for the configured order, minus those that cannot run.

    The CPU provider is always among them (appended when not asked for), so a
    session can always be made.
    """
    available = set(ort.get_available_providers())
    gpu = nvidia_gpu_present()
    chosen: list[str] = []
    for name in wanted:
        provider = PROVIDERS[name]
        if provider in _GPU_PROVIDERS and not gpu:
            continue
        if provider in available and provider not in chosen:
            chosen.append(provider)
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


class Network:
    """One ONNX graph in one warm session; `run` feeds it a batch."""

    def __init__(
        self,
        path: Path,
        *,
        providers: Sequence[str] = ("cpu",),
        intra_op_threads: int = 0,
        label: str = "",
    ) -> None:
        self.path = path
        self.label = label or path.stem
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads or cpu_count()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only; fallbacks are logged here instead
        # Memory patterns are planned per input shape; crops differ from slice group to
        # slice group, and the plans piled up in the arena (peak RSS 2.1 GiB over three
        # LIDC runs, against 1.4 GiB without them, at the same speed: bench/inference.py).
        options.enable_mem_pattern = False
        requested = choose_providers(providers)
        started = time.perf_counter()
        try:
            self.session = ort.InferenceSession(str(path), options, providers=requested)
        except Exception as exc:  # ORT raises its own exception types, undocumented
            if requested == ["CPUExecutionProvider"]:
                raise ModelError(f"cannot load {path.name}: {exc}") from exc
            log.warning(
                "model_provider_failed",
                network=self.label,
                requested=requested,
                error=str(exc)[:300],
            )
            try:
                self.session = ort.InferenceSession(
                    str(path), options, providers=["CPUExecutionProvider"]
                )
            except Exception as cpu_exc:  # the file itself cannot be loaded
                raise ModelError(f"cannot load {path.name}: {cpu_exc}") from cpu_exc
        self.provider = self.session.get_providers()[0]
        self.on_gpu = self.provider in _GPU_PROVIDERS
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        log.info(
            "model_session_ready",
            network=self.label,
            provider=self.provider,
            requested=requested,
            threads=options.intra_op_num_threads,
            seconds=round(time.perf_counter() - started, 3),
        )

    def run(
        self, inputs: dict[str, npt.NDArray[np.float32]], outputs: Sequence[str] | None = None
    ) -> list[npt.NDArray[np.float32]]:
        """Run the graph; on a GPU the tensors go through IO binding (one copy each way)."""
        names = list(outputs or self.output_names)
        if not self.on_gpu:
            return [np.asarray(x) for x in self.session.run(names, inputs)]
        binding = self.session.io_binding()
        for name, array in inputs.items():
            value = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), "cuda", 0)
            binding.bind_ortvalue_input(name, value)
        for name in names:
            binding.bind_output(name, "cuda")
        self.session.run_with_iobinding(binding)
        return [np.asarray(x) for x in binding.copy_outputs_to_cpu()]
