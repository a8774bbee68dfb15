"""The committed ONNX graphs of models/lung-nodules: interfaces, numbers, reproducibility."""

from __future__ import annotations

import collections
import importlib.util
import io
import pickle
import sys
import types
import zipfile
from pathlib import Path
from types import ModuleType

import numpy as np
import onnxruntime as ort
import pytest
from scipy import ndimage

PACKAGE = Path(__file__).resolve().parents[2] / "models" / "lung-nodules"
UNET = PACKAGE / "lung-unet.onnx"
BLOB = PACKAGE / "blob-filter.onnx"


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def unet() -> ort.InferenceSession:
    return _session(UNET)


@pytest.fixture(scope="module")
def blob() -> ort.InferenceSession:
    return _session(BLOB)


def _load_build() -> ModuleType:
    """models/lung-nodules/build.py as a module (its folder name is no package name)."""
    spec = importlib.util.spec_from_file_location("lung_nodules_build", PACKAGE / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _gaussian(sigma_mm: float, spacing_mm: float) -> np.ndarray:
    sd = sigma_mm / spacing_mm
    x = np.arange(-int(np.ceil(3 * sd)), int(np.ceil(3 * sd)) + 1)
    k = np.exp(-0.5 * (x / sd) ** 2)
    return k / k.sum()


def _blob_feeds(
    volume: np.ndarray, kernels: list[np.ndarray], spacing: tuple[float, ...], sigma: float
) -> dict[str, np.ndarray]:
    kz, ky, kx = (k.astype(np.float32) for k in kernels)
    return {
        "volume": volume.astype(np.float32)[None, None],
        "kz": kz.reshape(1, 1, -1, 1, 1),
        "ky": ky.reshape(1, 1, 1, -1, 1),
        "kx": kx.reshape(1, 1, 1, 1, -1),
        "spacing": np.asarray(spacing, np.float32),
        "sigma": np.asarray([sigma], np.float32),
    }


def _reference_blob(
    volume: np.ndarray, kernels: list[np.ndarray], spacing: tuple[float, ...], sigma: float
) -> tuple[np.ndarray, np.ndarray]:
    """float64 numpy/scipy version of the blob filter: valid smoothing, central
    differences, eigvalsh, Li-Sone-Doi dot and line filters."""
    smooth = volume.astype(np.float64)
    for axis, k in enumerate(kernels):
        r = len(k) // 2
        smooth = ndimage.correlate1d(smooth, k, axis=axis, mode="constant")
        smooth = np.moveaxis(np.moveaxis(smooth, axis, 0)[r : smooth.shape[axis] - r], 0, axis)
    inner = (slice(1, -1),) * 3
    hessian = np.empty((*smooth[inner].shape, 3, 3))
    for a in range(3):
        pure = np.diff(smooth, 2, axis=a)
        keep = [slice(1, -1)] * 3
        keep[a] = slice(None)
        hessian[..., a, a] = pure[tuple(keep)] / spacing[a] ** 2
        for b in range(a + 1, 3):
            mixed = np.gradient(np.gradient(smooth, axis=a), axis=b)[inner]
            hessian[..., a, b] = hessian[..., b, a] = mixed / (spacing[a] * spacing[b])
    eig = np.linalg.eigvalsh(hessian * sigma**2)
    eig = np.take_along_axis(eig, np.argsort(-np.abs(eig), axis=-1), axis=-1)
    l1, l2, l3 = eig[..., 0], eig[..., 1], eig[..., 2]
    m1 = np.where(np.abs(l1) > 1e-6, np.abs(l1), np.inf)
    dot = np.where((l1 < 0) & (l2 < 0) & (l3 < 0), l3**2 / m1, 0.0)
    line = np.where((l1 < 0) & (l2 < 0), np.abs(l2) * (np.abs(l2) - np.abs(l3)) / m1, 0.0)
    return dot, line


def test_unet_interface_and_small_input(unet: ort.InferenceSession) -> None:
    (inp,) = unet.get_inputs()
    (out,) = unet.get_outputs()
    assert (inp.name, inp.type, inp.shape) == ("image", "tensor(float)", ["N", 1, "H", "W"])
    assert (out.name, out.type, out.shape) == (
        "lung_probability",
        "tensor(float)",
        ["N", 1, "H", "W"],
    )
    image = np.random.default_rng(0).uniform(0, 2000, (2, 1, 64, 96)).astype(np.float32)
    (prob,) = unet.run(None, {"image": image})
    assert prob.shape == (2, 1, 64, 96) and prob.dtype == np.float32
    assert np.all((prob >= 0) & (prob <= 1))


def test_unet_metadata_credits_the_weights(unet: ort.InferenceSession) -> None:
    meta = unet.get_modelmeta()
    assert "William Knottenbelt" in meta.description and "MIT" in meta.description
    assert len(meta.custom_metadata_map["weights_sha256"]) == 64


def test_unet_finds_dark_lungs_in_a_synthetic_slice(unet: ort.InferenceSession) -> None:
    yy, xx = np.mgrid[0:512, 0:512]

    def ellipse(cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
        return np.asarray(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1)

    hu = np.full((512, 512), -1000.0, np.float32)
    hu[ellipse(256, 256, 170, 220)] = 40.0
    hu[ellipse(250, 165, 110, 65) | ellipse(250, 347, 110, 65)] = -850.0
    (prob,) = unet.run(None, {"image": (hu + 1024)[None, None]})
    prob = prob[0, 0]
    lung_cores = ellipse(250, 165, 95, 50) | ellipse(250, 347, 95, 50)
    away = ~(ellipse(250, 165, 125, 80) | ellipse(250, 347, 125, 80))  # body and air
    assert prob[lung_cores].min() > 0.5
    assert prob[away].max() < 0.5


def test_blob_filter_interface_and_output_shape(blob: ort.InferenceSession) -> None:
    assert [i.name for i in blob.get_inputs()] == ["volume", "kz", "ky", "kx", "spacing", "sigma"]
    assert [o.name for o in blob.get_outputs()] == ["dot", "line"]
    kernels = [_gaussian(1.0, s) for s in (2.0, 1.0, 0.7)]
    assert [len(k) for k in kernels] == [5, 7, 11]
    volume = np.full((12, 13, 16), -800.0)
    dot, line = blob.run(None, _blob_feeds(volume, kernels, (2.0, 1.0, 0.7), 1.0))
    assert dot.shape == line.shape == (1, 1, 12 - 5 - 1, 13 - 7 - 1, 16 - 11 - 1)
    assert not dot.any() and not line.any(), "a flat volume has no curvature"


@pytest.mark.parametrize(
    ("shape", "spacing", "sigma"),
    [((12, 14, 16), (2.5, 0.7, 0.7), 1.5), ((16, 18, 17), (1.25, 0.8, 0.6), 2.0)],
)
def test_blob_filter_matches_numpy(
    blob: ort.InferenceSession,
    shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
    sigma: float,
) -> None:
    rng = np.random.default_rng(7)
    kernels = [_gaussian(sigma, s) for s in spacing]
    volume = ndimage.gaussian_filter(rng.normal(-500, 300, shape), 0.7)
    volume = np.pad(volume, [(len(k) // 2 + 1,) * 2 for k in kernels], mode="edge")
    dot, line = blob.run(None, _blob_feeds(volume, kernels, spacing, sigma))
    ref_dot, ref_line = _reference_blob(volume, kernels, spacing, sigma)
    assert dot[0, 0].shape == ref_dot.shape
    assert (ref_dot > 0).any() and (ref_line > 0).any(), "the volume should exercise both"
    assert np.abs(dot[0, 0] - ref_dot).max() <= 1e-3 * ref_dot.max()
    assert np.abs(line[0, 0] - ref_line).max() <= 1e-3 * ref_line.max()


def test_blob_filter_prefers_spheres_to_tubes(blob: ort.InferenceSession) -> None:
    spacing, radius, sigma = (1.0, 1.0, 1.0), 3.0, 3.0 / np.sqrt(3)
    kernels = [_gaussian(sigma, s) for s in spacing]
    r = len(kernels[0]) // 2 + 1
    grid = np.mgrid[-12:13, -12:13, -12:13].astype(float)
    sphere = np.where((grid**2).sum(0) <= radius**2, 0.0, -850.0)
    tube = np.where((grid[1:] ** 2).sum(0) <= radius**2, 0.0, -850.0)
    centre = (12, 12, 12)  # edge padding by the kernel radius + 1 keeps the grid
    responses = []
    for phantom in (sphere, tube):
        padded = np.pad(phantom, r, mode="edge")
        dot, line = blob.run(None, _blob_feeds(padded, kernels, spacing, sigma))
        responses.append((dot[0, 0][centre], line[0, 0][centre]))
    (sphere_dot, sphere_line), (tube_dot, tube_line) = responses
    assert sphere_dot > 100 and sphere_dot > 10 * tube_dot
    assert tube_line > 2 * sphere_line


def _fake_torch_modules(monkeypatch: pytest.MonkeyPatch) -> type:
    """Stand-ins for torch's pickled names, so a test can write a state dict without torch."""
    torch_mod = types.ModuleType("torch")
    utils_mod = types.ModuleType("torch._utils")

    class FloatStorage:
        __module__ = "torch"
        __qualname__ = "FloatStorage"

    def _rebuild_tensor_v2(*args: object) -> None:
        raise AssertionError("never called while pickling")

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    torch_mod.FloatStorage = FloatStorage  # type: ignore[attr-defined]
    utils_mod._rebuild_tensor_v2 = _rebuild_tensor_v2  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch", torch_mod)
    monkeypatch.setitem(sys.modules, "torch._utils", utils_mod)
    return FloatStorage


def test_state_dict_reader_handles_offset_and_stride(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    storage_cls = _fake_torch_modules(monkeypatch)
    rebuild = sys.modules["torch._utils"]._rebuild_tensor_v2
    storage = np.arange(20, dtype=np.float32)

    class Tensor:
        def __init__(self, offset: int, size: tuple[int, ...], stride: tuple[int, ...]) -> None:
            self.args = (offset, size, stride)

        def __reduce__(self) -> tuple[object, tuple[object, ...]]:
            return rebuild, ("STORAGE", *self.args, False, collections.OrderedDict())

    class Writer(pickle.Pickler):
        def persistent_id(self, obj: object) -> object:
            if obj == "STORAGE":
                return ("storage", storage_cls, "0", "cpu", storage.size)
            return None

    state = collections.OrderedDict(
        [("w", Tensor(2, (3, 4), (1, 3))), ("b", Tensor(5, (2,), (1,))), ("n", Tensor(0, (), ()))]
    )
    buffer = io.BytesIO()
    Writer(buffer, protocol=2).dump(state)
    path = tmp_path / "fake.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("fake/data.pkl", buffer.getvalue())
        archive.writestr("fake/byteorder", "little")
        archive.writestr("fake/data/0", storage.tobytes())

    loaded = _load_build().load_state_dict(path)
    expected_w = np.array([[2 + i + 3 * j for j in range(4)] for i in range(3)], np.float32)
    np.testing.assert_array_equal(loaded["w"], expected_w)
    np.testing.assert_array_equal(loaded["b"], [5.0, 6.0])
    assert loaded["n"].shape == () and loaded["n"] == 0.0


def test_state_dict_reader_refuses_other_globals(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("evil/data.pkl", pickle.dumps(collections.OrderedDict(x=eval), 2))
    with pytest.raises(pickle.UnpicklingError, match="refusing to load"):
        _load_build().load_state_dict(path)


def test_rebuild_from_shared_weights_is_byte_identical(shared_data: Path, tmp_path: Path) -> None:
    weights = shared_data / "models" / "unet-small-lung" / "UNet_wdk24.pt"
    written = _load_build().build(weights, tmp_path)
    assert [p.name for p in written] == [UNET.name, BLOB.name]
    for path in written:
        assert path.read_bytes() == (PACKAGE / path.name).read_bytes(), path.name
