"""Build the two ONNX graphs of the reference lung-nodule model.

`lung-unet.onnx` is the lung-mask stage: UNet-Small by William Knottenbelt (MIT licence,
trained on LCTSC 2017), converted from its PyTorch state dict. The state dict is read
without PyTorch: the archive's pickle is loaded by an unpickler that can build nothing but
ordered dicts and tensors, so converting needs only numpy and onnx and never runs code
from the file. Each BatchNorm is folded into the convolution before it (inference uses the
running statistics, so BatchNorm is a fixed per-channel affine map): the graph is smaller,
faster and has no BatchNorm node whose epsilon or layout a runtime could read differently.
The network takes HU + 1024 as it is, with no other scaling: it was trained on the stored
pixel values of CTs whose rescale intercept was -1024, and its first (folded) BatchNorm
absorbs the range.

`blob-filter.onnx` holds the nodule stage's convolutions: Gaussian smoothing with kernels
the caller computes for one scale, the scale-normalised Hessian by central differences and
its eigenvalues in closed form, reduced to the dot and line filters of Li, Sone and Doi
(Med Phys 2003). Kernels, spacing and scale are inputs, so one graph serves every scale.

Run `python models/lung-nodules/build.py [--weights PATH] [--out-dir DIR]`; the output is
byte-for-byte the same on every run.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import io
import math
import os
import pickle
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8  # the IR that goes with opset 17; ONNX Runtime 1.31 accepts up to 13
PRODUCER = "radnode models/lung-nodules/build.py"
PRODUCER_VERSION = "1"
BN_EPS = 1e-5  # PyTorch's BatchNorm2d default; the state dict does not record it
UNET_FILE = "lung-unet.onnx"
BLOB_FILE = "blob-filter.onnx"
WEIGHTS_CREDIT = (
    "UNet-Small by William Knottenbelt (knottwill/UNet-Small), MIT licence; trained on LCTSC 2017"
)
HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
WEIGHTS_RELATIVE = Path("models/unet-small-lung/UNet_wdk24.pt")


# --- reading a PyTorch state dict without PyTorch --------------------------------------

_STORAGE_DTYPES: dict[str, str] = {
    "DoubleStorage": "f8",
    "FloatStorage": "f4",
    "HalfStorage": "f2",
    "LongStorage": "i8",
    "IntStorage": "i4",
    "ShortStorage": "i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
}


class _StorageType:
    """Stands in for `torch.<X>Storage`, which the pickle names only as a dtype tag."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.dtype = _STORAGE_DTYPES[name]


def _rebuild_tensor(
    storage: np.ndarray,
    offset: int,
    size: Sequence[int],
    stride: Sequence[int],
    *_ignored: Any,
) -> np.ndarray:
    """Replacement for `torch._utils._rebuild_tensor_v2`: a copy of the strided view."""
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if len(size) != len(stride) or offset < 0 or any(s < 0 for s in (*size, *stride)):
        raise pickle.UnpicklingError(f"bad tensor layout: {offset} {size} {stride}")
    if 0 in size:
        return np.zeros(size, dtype=storage.dtype.newbyteorder("="))
    last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
    if last >= storage.size:
        raise pickle.UnpicklingError("tensor reaches past the end of its storage")
    view = np.lib.stride_tricks.as_strided(
        storage[offset:],
        shape=size,
        strides=tuple(s * storage.itemsize for s in stride),
        writeable=False,
    )
    return np.array(view, dtype=storage.dtype.newbyteorder("="), order="C")


class _StateDictUnpickler(pickle.Unpickler):
    """Unpickles `data.pkl` of a torch zip archive into numpy arrays, and nothing else."""

    def __init__(self, archive: zipfile.ZipFile, prefix: str, byteorder: str) -> None:
        super().__init__(io.BytesIO(archive.read(f"{prefix}/data.pkl")))
        self._archive = archive
        self._prefix = prefix
        self._byteorder = byteorder
        self._storages: dict[str, np.ndarray] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")

    def persistent_load(self, pid: Any) -> np.ndarray:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"unexpected storage type {storage_type!r}")
        key = str(key)
        if key not in self._storages:
            dtype = np.dtype(self._byteorder + storage_type.dtype)
            raw = self._archive.read(f"{self._prefix}/data/{key}")
            if len(raw) < int(numel) * dtype.itemsize:
                raise pickle.UnpicklingError(f"storage {key} is shorter than {numel} items")
            self._storages[key] = np.frombuffer(raw, dtype=dtype, count=int(numel))
        return self._storages[key]


def load_state_dict(path: Path) -> dict[str, np.ndarray]:
    """Read a PyTorch zip-format state dict into numpy arrays, without importing torch."""
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise ValueError(f"{path}: expected one */data.pkl, found {pickles}")
        prefix = pickles[0][: -len("/data.pkl")]
        names = set(archive.namelist())
        order = "little"
        if f"{prefix}/byteorder" in names:
            order = archive.read(f"{prefix}/byteorder").decode().strip()
        if order not in ("little", "big"):
            raise ValueError(f"{path}: unknown byte order {order!r}")
        loaded = _StateDictUnpickler(archive, prefix, "<" if order == "little" else ">").load()
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: not a state dict")
    return {str(k): v for k, v in loaded.items() if isinstance(v, np.ndarray)}


# --- graph-building helpers ------------------------------------------------------------


class _Graph:
    """Collects nodes and initializers with unique, readable, deterministic names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def const(self, name: str, value: np.ndarray | float | Sequence[int]) -> str:
        array = value if isinstance(value, np.ndarray) else np.asarray(value)
        if array.dtype == np.float64:
            array = array.astype(np.float32)
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def op(self, op_type: str, inputs: Sequence[str], name: str = "", **attrs: Any) -> str:
        self._count += 1
        out = name or f"{op_type.lower()}_{self._count}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=out, **attrs))
        return out


def _finish(
    graph: _Graph,
    name: str,
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    doc: str,
    metadata: dict[str, str],
) -> onnx.ModelProto:
    """Wrap a graph in a checked model with the pinned opset and IR version."""
    model = helper.make_model(
        helper.make_graph(graph.nodes, name, inputs, outputs, graph.initializers),
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name=PRODUCER,
        producer_version=PRODUCER_VERSION,
        doc_string=doc,
    )
    model.ir_version = IR_VERSION
    helper.set_model_props(model, metadata)
    onnx.checker.check_model(model, full_check=True)
    return model


# --- graph 1: the lung U-Net ----------------------------------------------------------


def fold_batchnorm(
    weights: dict[str, np.ndarray], conv: str, bn: str, eps: float = BN_EPS
) -> tuple[np.ndarray, np.ndarray]:
    """Conv weight and bias with the eval-mode BatchNorm after it folded in (float64 math)."""
    w = weights[f"{conv}.weight"].astype(np.float64)
    b = weights[f"{conv}.bias"].astype(np.float64)
    gamma = weights[f"{bn}.weight"].astype(np.float64)
    beta = weights[f"{bn}.bias"].astype(np.float64)
    mean = weights[f"{bn}.running_mean"].astype(np.float64)
    var = weights[f"{bn}.running_var"].astype(np.float64)
    scale = gamma / np.sqrt(var + eps)
    return (
        (w * scale[:, None, None, None]).astype(np.float32),
        ((b - mean) * scale + beta).astype(np.float32),
    )


def build_unet(weights: dict[str, np.ndarray], weights_sha256: str) -> onnx.ModelProto:
    """The U-Net of the weights' README as an ONNX graph, input HU + 1024, output probability."""
    g = _Graph()

    def conv(x: str, w: np.ndarray, b: np.ndarray, name: str, pad: int) -> str:
        return g.op(
            "Conv",
            [x, g.const(f"{name}.weight", w), g.const(f"{name}.bias", b)],
            name=name,
            kernel_shape=list(w.shape[2:]),
            pads=[pad] * 4,
        )

    def block(x: str, prefix: str) -> str:
        """Double conv: (Conv 3x3 -> BatchNorm -> ReLU) twice, BatchNorm folded."""
        for conv_index, bn_index in ((0, 1), (3, 4)):
            w, b = fold_batchnorm(weights, f"{prefix}.{conv_index}", f"{prefix}.{bn_index}")
            x = conv(x, w, b, f"{prefix}.{conv_index}", pad=1)
            x = g.op("Relu", [x], name=f"{prefix}.{conv_index}.relu")
        return x

    def pool(x: str, name: str) -> str:
        return g.op("MaxPool", [x], name=name, kernel_shape=[2, 2], strides=[2, 2])

    def up(x: str, skip: str, level: int) -> str:
        """ConvTranspose2d(k3, s2, p1, output_padding 1), concat [up, skip], double conv."""
        name = f"upsample{level}"
        x = g.op(
            "ConvTranspose",
            [
                x,
                g.const(f"{name}.weight", weights[f"{name}.weight"]),
                g.const(f"{name}.bias", weights[f"{name}.bias"]),
            ],
            name=name,
            kernel_shape=[3, 3],
            strides=[2, 2],
            pads=[1, 1, 1, 1],
            output_padding=[1, 1],
        )
        x = g.op("Concat", [x, skip], name=f"concat{level}", axis=1)
        return block(x, f"upconv{level}")

    c1 = block("image", "conv1")
    c2 = block(pool(c1, "maxpool1"), "conv2")
    c3 = block(pool(c2, "maxpool2"), "conv3")
    mid = block(pool(c3, "maxpool3"), "middle")
    u = up(up(up(mid, c3, 3), c2, 2), c1, 1)
    logits = conv(u, weights["final.weight"], weights["final.bias"], "final", pad=0)
    g.op("Sigmoid", [logits], name="lung_probability")

    shape: list[str | int] = ["N", 1, "H", "W"]
    return _finish(
        g,
        "lung_unet",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("lung_probability", TensorProto.FLOAT, shape)],
        doc=(
            f"Lung segmentation U-Net. Weights: {WEIGHTS_CREDIT}. Input `image`: axial slices "
            "(N, 1, H, W) of HU + 1024, H and W multiples of 8, trained at 512x512. Output "
            "`lung_probability`: per-pixel lung probability (threshold 0.5). Not a clinical "
            "device. BatchNorm folded into the convolutions."
        ),
        metadata={
            "weights_file": "UNet_wdk24.pt",
            "weights_sha256": weights_sha256,
            "weights_source": "knottwill/UNet-Small",
            "weights_licence": "MIT",
            "input_scale": "HU + 1024",
        },
    )


# --- graph 2: the multi-scale Hessian blob and line filter -----------------------------

# Below this magnitude (HU, after scale normalisation) an eigenvalue counts as zero.
_TINY_EIGENVALUE = 1e-6


def build_blob_filter() -> onnx.ModelProto:
    """Gaussian smoothing, scale-normalised Hessian, eigenvalues, dot and line responses."""
    g = _Graph()
    axes = {"z": 2, "y": 3, "x": 4}

    def conv(x: str, kernel: str, name: str) -> str:
        """Valid cross-correlation of a (1, 1, Z, Y, X) tensor with a 1-channel kernel."""
        return g.op("Conv", [x, kernel], name=name)

    def along(axis: str, taps: Sequence[float], name: str) -> str:
        """A constant 3-tap kernel lying along one axis, shaped for Conv."""
        shape = [1, 1, 1, 1, 1]
        shape[axes[axis]] = len(taps)
        return g.const(name, np.asarray(taps, dtype=np.float32).reshape(shape))

    def crop(x: str, crop_axes: str, name: str) -> str:
        """Drop one voxel at both ends of each named axis (those a 3-tap conv did not touch)."""
        idx = [axes[a] for a in crop_axes]
        return g.op(
            "Slice",
            [
                x,
                g.const(f"{name}.starts", np.ones(len(idx), np.int64)),
                g.const(f"{name}.ends", np.full(len(idx), -1, np.int64)),
                g.const(f"{name}.axes", np.asarray(idx, np.int64)),
            ],
            name=name,
        )

    # Separable Gaussian smoothing, valid mode: (Z-Kz+1, Y-Ky+1, X-Kx+1).
    smooth = conv(conv(conv("volume", "kz", "smooth_z"), "ky", "smooth_y"), "kx", "smooth_x")

    # Second differences; every component ends up on (Z-Kz-1, Y-Ky-1, X-Kx-1).
    second = [1.0, -2.0, 1.0]
    first = [-0.5, 0.0, 0.5]
    d2 = {
        a: crop(
            conv(smooth, along(a, second, f"d2{a}.k"), f"d2{a}"), "zyx".replace(a, ""), f"d{a}{a}"
        )
        for a in "zyx"
    }
    d1 = {a: conv(smooth, along(a, first, f"d1{a}.k"), f"d1{a}") for a in "zy"}
    mixed = {
        ab: crop(
            conv(d1[ab[0]], along(ab[1], first, f"d{ab}.k"), f"d{ab}.conv"),
            "zyx".replace(ab[0], "").replace(ab[1], ""),
            f"d{ab}",
        )
        for ab in ("zy", "zx", "yx")
    }

    # Per-voxel units: divide by spacing products (HU/mm^2), times sigma^2 (scale norm.).
    def index(i: int) -> np.ndarray:
        return np.asarray([i], np.int64)

    sp = {
        a: g.op(
            "Slice",
            [
                "spacing",
                g.const(f"spacing.{a}.start", index(i)),
                g.const(f"spacing.{a}.end", index(i + 1)),
            ],
            name=f"spacing_{a}",
        )
        for i, a in enumerate("zyx")
    }
    sigma2 = g.op("Mul", ["sigma", "sigma"], name="sigma2")

    def normalise(x: str, a: str, b: str) -> str:
        factor = g.op("Div", [sigma2, g.op("Mul", [sp[a], sp[b]])], name=f"scale_{a}{b}")
        return g.op("Mul", [x, factor], name=f"H{a}{b}")

    hzz, hyy, hxx = (normalise(d2[a], a, a) for a in "zyx")
    hzy, hzx, hyx = (normalise(mixed[ab], ab[0], ab[1]) for ab in ("zy", "zx", "yx"))

    l1, l2, l3 = _eigenvalues_by_magnitude(g, hzz, hyy, hxx, hzy, hzx, hyx)

    mag1, mag2, mag3 = (g.op("Abs", [v], name=f"abs_{n}") for v, n in ((l1, 1), (l2, 2), (l3, 3)))
    zero = g.const("zero", np.float32(0.0))
    tiny = g.const("tiny", np.float32(_TINY_EIGENVALUE))
    neg1, neg2, neg3 = (
        g.op("Less", [v, zero], name=f"neg{n}") for v, n in ((l1, 1), (l2, 2), (l3, 3))
    )
    big = g.op("Greater", [mag1, tiny], name="l1_not_tiny")
    inv1 = g.op("Reciprocal", [g.op("Max", [mag1, tiny], name="l1_guarded")], name="inv_l1")

    line_ok = g.op("And", [g.op("And", [neg1, neg2], name="neg12"), big], name="line_ok")
    dot_ok = g.op("And", [line_ok, neg3], name="dot_ok")
    dot_value = g.op("Mul", [g.op("Mul", [mag3, mag3], name="l3_sq"), inv1], name="dot_value")
    line_value = g.op(
        "Mul",
        [g.op("Mul", [mag2, g.op("Sub", [mag2, mag3], name="l2_minus_l3")], name="line_num"), inv1],
        name="line_value",
    )
    g.op("Where", [dot_ok, dot_value, zero], name="dot")
    g.op("Where", [line_ok, line_value, zero], name="line")

    def vol(name: str, dims: Sequence[str | int]) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(dims))

    out_dims = [1, 1, "Zout", "Yout", "Xout"]
    return _finish(
        g,
        "hessian_blob_filter",
        [
            vol("volume", [1, 1, "Z", "Y", "X"]),
            vol("kz", [1, 1, "Kz", 1, 1]),
            vol("ky", [1, 1, 1, "Ky", 1]),
            vol("kx", [1, 1, 1, 1, "Kx"]),
            vol("spacing", [3]),
            vol("sigma", [1]),
        ],
        [vol("dot", out_dims), vol("line", out_dims)],
        doc=(
            "Hessian dot and line filters (Li, Sone and Doi, Med Phys 2003) at one scale. "
            "Inputs: `volume` HU (1,1,Z,Y,X), edge-padded by the caller; normalised odd-length "
            "Gaussian kernels `kz`, `ky`, `kx` (applied as cross-correlation, valid mode); "
            "`spacing` (dz, dy, dx) mm; `sigma` mm. The Hessian is taken by central "
            "differences in HU/mm^2 times sigma^2. Outputs cover (Z-Kz-1, Y-Ky-1, X-Kx-1): "
            "`dot` = |l3|^2/|l1| where l1, l2, l3 < 0, `line` = |l2|(|l2|-|l3|)/|l1| where "
            "l1, l2 < 0, else 0, eigenvalues ordered |l1| >= |l2| >= |l3|."
        ),
        metadata={"reference": "Li Q, Sone S, Doi K. Med Phys 2003;30(8):2040-2051"},
    )


def _eigenvalues_by_magnitude(
    g: _Graph, a: str, b: str, c: str, d: str, e: str, f: str
) -> tuple[str, str, str]:
    """Eigenvalues of [[a, d, e], [d, b, f], [e, f, c]] per voxel, |l1| >= |l2| >= |l3|.

    Trigonometric (Smith 1961) closed form: with q = tr/3 and p = sqrt(tr((A - qI)^2)/6),
    B = (A - qI)/p has eigenvalues 2cos(phi + 2k pi/3), phi = acos(det(B)/2)/3. When A is
    (nearly) qI, p is guarded away from zero and the clamped acos keeps every value finite;
    the eigenvalues then come out as q, which is right.
    """
    op = g.op
    third = g.const("eig.third", np.float32(1.0 / 3.0))
    two = g.const("eig.two", np.float32(2.0))
    half = g.const("eig.half", np.float32(0.5))
    one = g.const("eig.one", np.float32(1.0))
    minus_one = g.const("eig.minus_one", np.float32(-1.0))
    p_floor = g.const("eig.p_floor", np.float32(1e-30))

    def add(*xs: str) -> str:
        out = xs[0]
        for x in xs[1:]:
            out = op("Add", [out, x])
        return out

    def sq(x: str) -> str:
        return op("Mul", [x, x])

    q = op("Mul", [add(a, b, c), third], name="eig.q")
    aq, bq, cq = (op("Sub", [v, q]) for v in (a, b, c))
    off = add(sq(d), sq(e), sq(f))
    p2 = add(sq(aq), sq(bq), sq(cq), op("Mul", [off, two]))
    p = op("Sqrt", [op("Mul", [p2, g.const("eig.sixth", np.float32(1.0 / 6.0))])], name="eig.p")
    inv_p = op("Reciprocal", [op("Max", [p, p_floor])], name="eig.inv_p")
    ba, bb, bc, bd, be, bf = (op("Mul", [v, inv_p]) for v in (aq, bq, cq, d, e, f))
    # det(B) = a(bc - f^2) - d(dc - fe) + e(df - be), with B's entries.
    det = op(
        "Add",
        [
            op(
                "Sub",
                [
                    op("Mul", [ba, op("Sub", [op("Mul", [bb, bc]), sq(bf)])]),
                    op("Mul", [bd, op("Sub", [op("Mul", [bd, bc]), op("Mul", [bf, be])])]),
                ],
            ),
            op("Mul", [be, op("Sub", [op("Mul", [bd, bf]), op("Mul", [bb, be])])]),
        ],
        name="eig.det",
    )
    r = op("Clip", [op("Mul", [det, half]), minus_one, one], name="eig.r")
    phi = op("Mul", [op("Acos", [r]), third], name="eig.phi")
    two_p = op("Mul", [p, two], name="eig.two_p")
    shift = g.const("eig.shift", np.float32(2.0 * math.pi / 3.0))
    top = op("Add", [q, op("Mul", [two_p, op("Cos", [phi])])], name="eig.top")
    bottom = op(
        "Add", [q, op("Mul", [two_p, op("Cos", [op("Add", [phi, shift])])])], name="eig.bottom"
    )
    trace = add(a, b, c)
    middle = op("Sub", [op("Sub", [trace, top]), bottom], name="eig.middle")

    # A three-comparator sorting network on magnitude.
    swaps = 0

    def order(x: str, y: str) -> tuple[str, str]:
        """(x, y) reordered so that |first| >= |second|."""
        nonlocal swaps
        swaps += 1
        swap = op("Less", [op("Abs", [x]), op("Abs", [y])], name=f"eig.swap{swaps}")
        return op("Where", [swap, y, x]), op("Where", [swap, x, y])

    top, bottom = order(top, bottom)
    top, middle = order(top, middle)
    middle, bottom = order(middle, bottom)
    return top, middle, bottom


# --- entry point ----------------------------------------------------------------------


def default_weights() -> Path:
    """The shared weights: under $RADNODE_SHARED_DATA, else ../shared beside the repository."""
    shared = os.environ.get("RADNODE_SHARED_DATA")
    if shared:
        return Path(shared) / WEIGHTS_RELATIVE
    return REPO_ROOT.parent / "shared" / WEIGHTS_RELATIVE


def build(weights_path: Path, out_dir: Path) -> list[Path]:
    """Write both graphs into out_dir and return their paths."""
    raw = weights_path.read_bytes()
    weights = load_state_dict(weights_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    makers: list[tuple[str, Callable[[], onnx.ModelProto]]] = [
        (UNET_FILE, lambda: build_unet(weights, hashlib.sha256(raw).hexdigest())),
        (BLOB_FILE, build_blob_filter),
    ]
    for name, make in makers:
        path = out_dir / name
        path.write_bytes(make().SerializeToString(deterministic=True))
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: build both graphs."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=None, help="UNet_wdk24.pt")
    parser.add_argument("--out-dir", type=Path, default=HERE, help="where to write the graphs")
    args = parser.parse_args(argv)
    for path in build(args.weights or default_weights(), args.out_dir):
        print(f"wrote {path} ({path.stat().st_size} bytes)")  # noqa: T201
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
