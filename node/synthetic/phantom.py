"""A synthetic chest CT phantom with known ground truth: lungs, vessels and nodules.

Tests measure sensitivity and nodule sizes against the truth it returns, `radnode demo`
sends one to a node without any download, and benchmarks use it as a realistic load.

The anatomy is drawn from simple shapes in patient millimetres (LPS: x to the patient's
left, y posterior, z up), centred on the isocentre, so it does not depend on the grid:
body with fat and muscle, a table, ribs, sternum, spine, a mediastinum with heart,
aorta, pulmonary arteries, trachea and main bronchi, two lungs with domed diaphragm and
apices, branching vessel trees and solid spherical nodules. A lung segmentation network
trained on real chest CTs finds its lungs. Identities are fictitious and marked so.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydicom.uid import CTImageStorage, generate_uid
from scipy import ndimage

from node.domain.volume import FloatArray, Volume
from node.synthetic.ct import SliceUIDs, SyntheticSeries, ct_slice_header

BoolArray = npt.NDArray[np.bool_]
Vectors = npt.NDArray[np.float64]
Point = tuple[float, float, float]

# Densities (HU).
HU_AIR = -1000.0
HU_MIN = -1024.0  # stored value 0: scanners clip air here
HU_MAX = 3071.0
HU_FAT = -100.0
HU_MEDIASTINAL_FAT = -70.0
HU_MUSCLE = 40.0
HU_BLOOD = 40.0
HU_LIVER = 55.0
HU_ABDOMEN = 35.0
HU_LUNG = -850.0
HU_VESSEL = 40.0
HU_RIB = 700.0
HU_MARROW = 250.0
HU_VERTEBRA = 400.0
HU_CORTEX = 650.0
HU_DISC = 90.0
HU_CSF = 15.0
HU_TABLE = 150.0
RESCALE_INTERCEPT = -1024

# Body and chest wall (mm). The body is a superellipse: flatter back and sides.
BODY_CENTER_Y = -10.0
BODY_SEMI = (165.0, 120.0)
BODY_EXPONENT = 2.4
FAT_MM = 12.0
CAVITY_CENTER_Y = -14.0
CAVITY_SEMI = (133.0, 90.0)  # the inner chest wall at mid chest, where the lungs end
CAVITY_TAPER_Z = (20.0, 125.0)  # above the first height the rib cage narrows to the inlet
CAVITY_INLET = (0.55, 0.75)  # the inlet's semi-axes as fractions of CAVITY_SEMI
CAVITY_BASE_WIDENING = 0.05  # and it widens this much towards the bases
RIB_OFFSET_MM = 6.0  # rib centres outside the cavity
RIB_SEMI = (5.5, 3.5)  # along and across the ring
RIB_STEP_DEG = 20.0
CHEST_Z = (-150.0, 125.0)  # where ribs are
STERNUM_Z = (-70.0, 100.0)
APEX_Z = (20.0, 118.0)  # the lungs round off from the first height to their apex at the second
APEX_CENTER = (60.0, -5.0)  # |x|, y of each apex
APEX_SEMI = (95.0, 130.0)  # at APEX_Z[0]: wider than the cavity, so the rounding is smooth
DIAPHRAGM_DOMES = ((-70.0, 0.0, -50.0), (70.0, 5.0, -62.0))  # top of each dome (x, y, z)
LIVER_MAX_X = 30.0
PLEURA_MM = 3.0  # the lungs keep this far from mediastinal structures
MEDIASTINUM_HALF_WIDTH_MM = 12.0
TRACHEA_WALL_MM = 2.0
VERTEBRA_CENTER = (0.0, 64.0)
VERTEBRA_RADIUS = 19.0
CANAL_Y = 93.0
DISC_PERIOD_MM = 28.0
DISC_MM = 5.0

# Vessels.
ROOT_RADIUS_MM = 5.0
MIN_VESSEL_RADIUS_MM = 1.0
VESSEL_CLEARANCE_MM = 2.0  # vessels stop this far from a nodule's surface


@dataclass(frozen=True, slots=True)
class PhantomNodule:
    """A solid spherical nodule: centre (x, y, z) in patient mm, diameter, density."""

    center_mm: Point
    diameter_mm: float
    hu: float = 30.0


DEFAULT_NODULES: tuple[PhantomNodule, ...] = (
    PhantomNodule((-85.0, 35.0, -19.0), 20.0),  # right lower lobe
    PhantomNodule((121.5, -20.0, 30.0), 12.0),  # left upper lobe, 3 mm from the chest wall
    PhantomNodule((-70.0, -35.0, 61.0), 8.0),  # right upper lobe
    PhantomNodule((100.0, -40.0, -40.0), 5.0),  # left lower lobe, anterior, clear of vessels
)


@dataclass(frozen=True, slots=True)
class PhantomSpec:
    """How to build a phantom: grid, nodules, vessels, noise and random seed.

    The grid is centred on the isocentre; slice thickness equals the slice step.

    Raises:
        ValueError: a bad grid value, a nodule centre outside the lungs or a nodule
            outside the volume, or two nodules that overlap.
    """

    rows: int = 512
    columns: int = 512
    slices: int = 120
    pixel_spacing_mm: float = 0.7
    slice_step_mm: float = 2.5
    nodules: tuple[PhantomNodule, ...] = DEFAULT_NODULES
    vessels: bool = True
    noise_hu: float = 15.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("rows", "columns", "slices"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"PhantomSpec.{name} must be a positive integer, got {value!r}")
        for name in ("pixel_spacing_mm", "slice_step_mm"):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"PhantomSpec.{name} must be positive, got {value!r}")
        if not self.noise_hu >= 0:
            raise ValueError(f"PhantomSpec.noise_hu must be >= 0, got {self.noise_hu!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"PhantomSpec.seed must be an integer >= 0, got {self.seed!r}")
        _validate_nodules(self)

    @property
    def origin(self) -> Point:
        """Patient position (x, y, z) of voxel (0, 0, 0)."""
        return (
            -(self.columns - 1) / 2 * self.pixel_spacing_mm,
            -(self.rows - 1) / 2 * self.pixel_spacing_mm,
            -(self.slices - 1) / 2 * self.slice_step_mm,
        )

    @property
    def spacing(self) -> Point:
        """(slice step, row spacing, column spacing) in mm, as Volume.spacing."""
        return (self.slice_step_mm, self.pixel_spacing_mm, self.pixel_spacing_mm)


@dataclass(frozen=True, slots=True)
class TubeSegment:
    """A tapered tube (capsule) from p0_mm (radius r0_mm) to p1_mm (radius r1_mm)."""

    p0_mm: Point
    p1_mm: Point
    r0_mm: float
    r1_mm: float

    def bounds(self, margin: float) -> tuple[Point, Point]:
        """Low and high corners of a box holding the tube grown by margin."""
        pad = max(self.r0_mm, self.r1_mm) + margin
        lo = [min(a, b) - pad for a, b in zip(self.p0_mm, self.p1_mm, strict=True)]
        hi = [max(a, b) + pad for a, b in zip(self.p0_mm, self.p1_mm, strict=True)]
        return (lo[0], lo[1], lo[2]), (hi[0], hi[1], hi[2])

    def depth(self, x: FloatArray, y: FloatArray, z: FloatArray | float) -> FloatArray:
        """How far inside the tube each point lies (mm; negative outside)."""
        ax, ay, az = (np.float32(v) for v in self.p0_mm)
        dx, dy, dz = (np.float32(b - a) for a, b in zip(self.p0_mm, self.p1_mm, strict=True))
        length2 = max(float(dx * dx + dy * dy + dz * dz), 1e-9)
        px, py, pz = x - ax, y - ay, z - az
        t = np.clip((px * dx + py * dy + pz * dz) / np.float32(length2), 0.0, 1.0)
        ex, ey, ez = px - t * dx, py - t * dy, pz - t * dz
        radius = np.float32(self.r0_mm) + t * np.float32(self.r1_mm - self.r0_mm)
        result: FloatArray = (radius - np.sqrt(ex * ex + ey * ey + ez * ez)).astype(
            np.float32, copy=False
        )
        return result

    def inside(
        self, x: FloatArray, y: FloatArray, z: FloatArray | float, margin: float
    ) -> BoolArray:
        """Points inside the tube grown by margin."""
        result: BoolArray = self.depth(x, y, z) >= -margin
        return result


@dataclass(frozen=True, slots=True)
class NoduleTruth:
    """A nodule as drawn.

    volume_mm3 counts the voxels whose centre lies inside the sphere, times the voxel
    volume; analytic_volume_mm3 is pi d^3 / 6. pleura_gap_mm is the distance from the
    sphere's surface to the nearest voxel outside the lungs (capped at 30 mm).
    """

    center_mm: Point
    center_voxel: Point  # (k, j, i), fractional
    diameter_mm: float
    hu: float
    voxel_count: int
    volume_mm3: float
    analytic_volume_mm3: float
    pleura_gap_mm: float


@dataclass(frozen=True, eq=False)
class PhantomTruth:
    """The ground truth of a phantom.

    lung_mask is indexed (k, j, i) like the Volume; it holds both lungs including their
    vessels and nodules, and excludes trachea, bronchi and the mediastinum. vessels are
    the pulmonary vessel segments as grown; they are drawn only inside the lungs and
    stop VESSEL_CLEARANCE_MM short of every nodule.
    """

    spec: PhantomSpec
    nodules: tuple[NoduleTruth, ...]
    lung_mask: BoolArray
    lung_volume_ml: float
    vessels: tuple[TubeSegment, ...]
    series: SyntheticSeries | None = field(default=None)


def make_chest_phantom(spec: PhantomSpec | None = None) -> tuple[Volume, PhantomTruth]:
    """Build the phantom in memory: a float32 HU volume and its ground truth.

    Deterministic for a given spec. Values are whole HU clipped to [-1024, 3071], so a
    series written from it reads back to exactly this volume.
    """
    spec = spec or PhantomSpec()
    grid = _Grid(spec)
    hu = np.empty((spec.slices, spec.rows, spec.columns), dtype=np.float32)
    lung = np.empty(hu.shape, dtype=bool)
    texture = _Texture(np.random.default_rng([spec.seed, 1]), grid)
    for k, z in enumerate(grid.zs):
        _paint_slice(hu[k], lung[k], grid, float(z), texture)
    vessels: list[TubeSegment] = []
    if spec.vessels:
        vessels = _grow_vessel_trees(np.random.default_rng([spec.seed, 2]))
        for segment in vessels:
            _paint_vessel(hu, lung, grid, segment, spec.nodules)
    nodules = tuple(_paint_nodule(hu, lung, grid, nodule) for nodule in spec.nodules)
    noise = np.random.default_rng([spec.seed, 3])
    sigma = np.float32(spec.noise_hu)
    for plane in hu:
        if spec.noise_hu > 0:
            plane += noise.standard_normal(plane.shape, dtype=np.float32) * sigma
        np.rint(plane, out=plane)
        np.clip(plane, HU_MIN, HU_MAX, out=plane)
    volume = Volume(
        hu=hu,
        origin=spec.origin,
        spacing=spec.spacing,
        row_direction=(1.0, 0.0, 0.0),
        column_direction=(0.0, 1.0, 0.0),
        modality="CT",
        slice_thickness_mm=spec.slice_step_mm,
        sop_class_uid=CTImageStorage,
    )
    truth = PhantomTruth(
        spec=spec,
        nodules=nodules,
        lung_mask=lung,
        lung_volume_ml=float(np.count_nonzero(lung)) * volume.voxel_volume_mm3 / 1000.0,
        vessels=tuple(vessels),
    )
    return volume, truth


def write_chest_phantom(
    folder: Path,
    spec: PhantomSpec | None = None,
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    patient_name: str = "SYNTHETIC^PATIENT",
    patient_id: str = "SYN-0001",
    accession_number: str = "SYNACC1",
    series_number: int = 1,
) -> PhantomTruth:
    """Build the phantom and write it to `folder` as a CT series, one file per slice.

    File ct-0001.dcm holds slice k = 0, the most inferior; geometry and pixels match
    make_chest_phantom's Volume exactly. The returned truth carries the series written.
    """
    volume, truth = make_chest_phantom(spec)
    series = write_volume_series(
        folder,
        volume,
        study_uid=study_uid,
        series_uid=series_uid,
        patient_name=patient_name,
        patient_id=patient_id,
        accession_number=accession_number,
        series_number=series_number,
    )
    return replace(truth, series=series)


def write_volume_series(
    folder: Path,
    volume: Volume,
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    patient_name: str = "SYNTHETIC^PATIENT",
    patient_id: str = "SYN-0001",
    accession_number: str = "SYNACC1",
    series_number: int = 1,
) -> SyntheticSeries:
    """Write an axial HU volume as a CT series, slice k to ct-{k+1:04d}.dcm.

    Stored values are int16 HU + 1024 (rescale intercept -1024); the volume's geometry
    becomes ImagePositionPatient, ImageOrientationPatient and PixelSpacing. UIDs not
    given come from the volume, else are new 2.25 UIDs.
    """
    folder.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or volume.study_uid or generate_uid(prefix=None)
    series_uid = series_uid or volume.series_uid or generate_uid(prefix=None)
    frame_uid = volume.frame_of_reference_uid or generate_uid(prefix=None)
    dz = volume.spacing[0]
    normal = np.asarray(volume.slice_direction)
    stored = np.empty(volume.shape[1:], dtype="<i2")
    uids: list[str] = []
    paths: list[Path] = []
    for k in range(volume.shape[0]):
        sop_uid = generate_uid(prefix=None)
        ds = ct_slice_header(
            SliceUIDs(study_uid, series_uid, frame_uid, sop_uid),
            patient_name=patient_name,
            patient_id=patient_id,
            accession_number=accession_number,
            series_number=series_number,
            instance_number=k + 1,
            rows=volume.shape[1],
            columns=volume.shape[2],
            study_description="SYNTHETIC CHEST PHANTOM",
            series_description="SYNTHETIC CHEST PHANTOM AXIAL",
        )
        ds.SeriesDate = "20260101"
        ds.SeriesTime = "120000"
        ds.PatientPosition = "HFS"
        position = np.asarray(volume.origin) + k * dz * normal
        ds.ImagePositionPatient = [_decimal(float(v)) for v in position]
        ds.ImageOrientationPatient = [
            _decimal(v) for v in (*volume.row_direction, *volume.column_direction)
        ]
        ds.PixelSpacing = [_decimal(volume.spacing[1]), _decimal(volume.spacing[2])]
        ds.SliceThickness = _decimal(volume.slice_thickness_mm or dz)
        ds.SpacingBetweenSlices = _decimal(dz)
        ds.SliceLocation = _decimal(float(np.dot(position, normal)))
        ds.RescaleIntercept = RESCALE_INTERCEPT
        ds.WindowCenter = -600
        ds.WindowWidth = 1500
        np.subtract(
            np.clip(np.rint(volume.hu[k]), HU_MIN, HU_MAX),
            RESCALE_INTERCEPT,
            out=stored,
            casting="unsafe",
        )
        ds.PixelData = stored.tobytes()
        path = folder / f"ct-{k + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        uids.append(sop_uid)
        paths.append(path)
    return SyntheticSeries(study_uid, series_uid, tuple(uids), tuple(paths))


def _decimal(value: float) -> str:
    """A DICOM decimal string (at most 16 characters) for a millimetre value."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


# --- Shapes ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Ellipsoid:
    """An axis-aligned ellipsoid."""

    center: Point
    semi: Point

    def bounds(self, margin: float) -> tuple[Point, Point]:
        lo = [c - s - margin for c, s in zip(self.center, self.semi, strict=True)]
        hi = [c + s + margin for c, s in zip(self.center, self.semi, strict=True)]
        return (lo[0], lo[1], lo[2]), (hi[0], hi[1], hi[2])

    def inside(
        self, x: FloatArray, y: FloatArray, z: FloatArray | float, margin: float
    ) -> BoolArray:
        (cx, cy, cz), (sx, sy, sz) = self.center, self.semi
        value = (
            ((x - np.float32(cx)) / np.float32(sx + margin)) ** 2
            + ((y - np.float32(cy)) / np.float32(sy + margin)) ** 2
            + ((z - np.float32(cz)) / np.float32(sz + margin)) ** 2
        )
        result: BoolArray = value <= 1.0
        return result


_Shape = TubeSegment | _Ellipsoid


def _polyline(points: tuple[Point, ...], radius: float) -> tuple[TubeSegment, ...]:
    return tuple(TubeSegment(a, b, radius, radius) for a, b in itertools.pairwise(points))


def _ellipse(
    x: FloatArray, y: FloatArray, cx: float, cy: float, semi: tuple[float, float]
) -> FloatArray:
    """Elliptic radius squared: <= 1 inside the ellipse."""
    u = (x - np.float32(cx)) / np.float32(semi[0])
    v = (y - np.float32(cy)) / np.float32(semi[1])
    result: FloatArray = u * u + v * v
    return result


# --- Anatomy --------------------------------------------------------------------------

HEART = _Ellipsoid((20.0, -35.0, -40.0), (65.0, 55.0, 55.0))
AORTA = _polyline(
    (
        (-8.0, -35.0, 0.0),
        (-8.0, -30.0, 45.0),
        (5.0, 0.0, 62.0),
        (20.0, 32.0, 52.0),
        (24.0, 42.0, 30.0),
        (24.0, 42.0, -400.0),
    ),
    13.0,
)
SVC = _polyline(((-30.0, -28.0, 400.0), (-30.0, -30.0, 0.0)), 9.0)
ARCH_BRANCHES = (
    *_polyline(((-2.0, -15.0, 55.0), (-14.0, -20.0, 400.0)), 6.0),
    *_polyline(((8.0, 5.0, 60.0), (10.0, 0.0, 400.0)), 5.0),
    *_polyline(((16.0, 20.0, 58.0), (22.0, 15.0, 400.0)), 5.0),
)
PULMONARY_ARTERIES = (
    *_polyline(((14.0, -38.0, -10.0), (12.0, -15.0, 20.0)), 13.0),
    *_polyline(((12.0, -15.0, 20.0), (-38.0, 5.0, 14.0)), 11.0),
    *_polyline(((12.0, -15.0, 20.0), (38.0, 18.0, 18.0)), 10.0),
)
CARINA: Point = (0.0, 25.0, 30.0)
TRACHEA = _polyline(((0.0, 20.0, 400.0), CARINA), 10.0)
BRONCHI = (
    *_polyline((CARINA, (-38.0, 22.0, 12.0)), 8.0),
    *_polyline((CARINA, (38.0, 30.0, 6.0)), 7.0),
)
OESOPHAGUS = _polyline(((2.0, 40.0, 400.0), (2.0, 40.0, -400.0)), 7.0)
SPINE = _polyline(((*VERTEBRA_CENTER, 400.0), (*VERTEBRA_CENTER, -400.0)), VERTEBRA_RADIUS)
BLOOD_VESSELS: tuple[_Shape, ...] = (
    *AORTA,
    *SVC,
    *ARCH_BRANCHES,
    *PULMONARY_ARTERIES,
    *OESOPHAGUS,
)
AIRWAYS: tuple[TubeSegment, ...] = (*TRACHEA, *BRONCHI)
# What the lungs keep PLEURA_MM clear of.
MEDIASTINUM: tuple[_Shape, ...] = (HEART, *BLOOD_VESSELS, *AIRWAYS, *SPINE)
_MEDIASTINUM_BOUNDS = tuple((shape, shape.bounds(PLEURA_MM)) for shape in MEDIASTINUM)


def _diaphragm_z(x: FloatArray, y: FloatArray) -> FloatArray:
    """Height of the diaphragm: a flat-topped dome per side, falling 50 mm to the
    recesses at the sides and 70 mm at the back."""
    heights = []
    for dx, dy, dz in DIAPHRAGM_DOMES:
        u = (x - np.float32(dx)) / np.float32(70.0)
        v = (y - np.float32(dy)) / np.float32(90.0)
        rho2 = np.minimum(u * u + v * v, 1.0)  # no deeper than the recesses
        back = np.clip(v, 0.0, 1.0)
        heights.append(np.float32(dz) - np.float32(50.0) * rho2**1.5 - 20.0 * back * back)
    result: FloatArray = np.where(x < 0, heights[0], heights[1]).astype(np.float32)
    return result


def _apex_inside(x: FloatArray, y: FloatArray, z: FloatArray | float) -> BoolArray:
    """Above APEX_Z[0] each lung rounds off to an apex at APEX_Z[1]."""
    zz = np.asarray(z, dtype=np.float32)
    s = np.clip((zz - APEX_Z[0]) / (APEX_Z[1] - APEX_Z[0]), 0, 1)
    scale = np.sqrt(np.maximum(1.0 - s * s, 0.0)).astype(np.float32) + np.float32(1e-6)
    u = (np.abs(x) - np.float32(APEX_CENTER[0])) / (np.float32(APEX_SEMI[0]) * scale)
    v = (y - np.float32(APEX_CENTER[1])) / (np.float32(APEX_SEMI[1]) * scale)
    result: BoolArray = (u * u + v * v <= 1.0) | (zz <= APEX_Z[0])
    return result


def _cavity_semi(z: FloatArray | float) -> tuple[FloatArray, FloatArray]:
    """Semi-axes of the inner chest wall at height z: wider at the bases, narrowing
    towards the thoracic inlet as the upper ribs do."""
    zz = np.asarray(z, dtype=np.float32)
    t = np.clip((zz - CAVITY_TAPER_Z[0]) / (CAVITY_TAPER_Z[1] - CAVITY_TAPER_Z[0]), 0, 1) ** 1.5
    base = CAVITY_BASE_WIDENING * np.clip((CAVITY_TAPER_Z[0] - zz) / 120.0, 0, 1)
    a = CAVITY_SEMI[0] * (1.0 + base - (1.0 - CAVITY_INLET[0]) * t)
    b = CAVITY_SEMI[1] * (1.0 + base - (1.0 - CAVITY_INLET[1]) * t)
    return a.astype(np.float32), b.astype(np.float32)


def _cavity(x: FloatArray, y: FloatArray, z: FloatArray | float) -> BoolArray:
    """Inside the inner chest wall (the pleural cavities and mediastinum)."""
    a, b = _cavity_semi(z)
    u, v = x / a, (y - np.float32(CAVITY_CENTER_Y)) / b
    result: BoolArray = u * u + v * v <= 1.0
    return result


def _lung_inside(x: FloatArray, y: FloatArray, z: FloatArray) -> BoolArray:
    """Whether points (same-shape arrays, mm) lie in the lungs, as the slices draw them."""
    inside = (
        _cavity(x, y, z)
        & (z > _diaphragm_z(x, y))
        & _apex_inside(x, y, z)
        & (np.abs(x) > MEDIASTINUM_HALF_WIDTH_MM)
    )
    if x.size == 0:
        return inside
    low = (float(x.min()), float(y.min()), float(z.min()))
    high = (float(x.max()), float(y.max()), float(z.max()))
    for shape, (lo, hi) in _MEDIASTINUM_BOUNDS:
        if all(lo[a] <= high[a] and low[a] <= hi[a] for a in range(3)):
            inside &= ~shape.inside(x, y, z, PLEURA_MM)
    return inside


class _Grid:
    """Voxel centres of a spec, mm ranges as index ranges, and the layers that do not
    change from slice to slice."""

    def __init__(self, spec: PhantomSpec) -> None:
        x0, y0, z0 = spec.origin
        self.spec = spec
        self.start = (z0, y0, x0)
        self.xs = (x0 + np.arange(spec.columns) * spec.pixel_spacing_mm).astype(np.float32)
        self.ys = (y0 + np.arange(spec.rows) * spec.pixel_spacing_mm).astype(np.float32)
        self.zs = (z0 + np.arange(spec.slices) * spec.slice_step_mm).astype(np.float32)
        x, y = self.xs[None, :], self.ys[:, None]
        body_y = y - np.float32(BODY_CENTER_Y)
        base = np.full((spec.rows, spec.columns), HU_AIR, dtype=np.float32)
        table_top = BODY_CENTER_Y + BODY_SEMI[1] + 14.0 + 0.0006 * x * x
        base[(y >= table_top) & (y <= table_top + 5.0) & (np.abs(x) < 210.0)] = HU_TABLE
        for thickness, value in ((0.0, HU_FAT), (FAT_MM, HU_MUSCLE)):
            a, b = BODY_SEMI[0] - thickness, BODY_SEMI[1] - thickness
            body = (
                np.abs(x / np.float32(a)) ** BODY_EXPONENT
                + np.abs(body_y / np.float32(b)) ** BODY_EXPONENT
            )
            base[body <= 1.0] = value
        self.base = base
        self.diaphragm = _diaphragm_z(x, y)
        self.liver_side = np.broadcast_to(x < LIVER_MAX_X, base.shape)
        self.beside_midline = np.broadcast_to(np.abs(x) > MEDIASTINUM_HALF_WIDTH_MM, base.shape)
        # Parenchyma is denser towards the back (gravity).
        self.gradient = np.broadcast_to(
            np.float32(25.0) * np.clip((y - np.float32(CAVITY_CENTER_Y)) / 90.0, -1, 1),
            base.shape,
        )

    def index_range(self, axis: int, lo: float, hi: float) -> slice:
        """Indices along axis (0 k, 1 j, 2 i) whose centres may lie in [lo, hi] mm."""
        step = self.spec.spacing[axis]
        size = (self.spec.slices, self.spec.rows, self.spec.columns)[axis]
        first = max(0, math.floor((lo - self.start[axis]) / step))
        last = min(size, math.ceil((hi - self.start[axis]) / step) + 1)
        return slice(first, max(first, last))

    def box(self, lo: Point, hi: Point) -> tuple[slice, slice, slice] | None:
        """Index ranges (k, j, i) covering the mm box lo..hi (x, y, z); None if empty."""
        ranges = (
            self.index_range(0, lo[2], hi[2]),
            self.index_range(1, lo[1], hi[1]),
            self.index_range(2, lo[0], hi[0]),
        )
        if any(r.start >= r.stop for r in ranges):
            return None
        return ranges


class _Texture:
    """A smooth random field (unit variance, about 12 mm grain) for lung parenchyma."""

    STEP_MM = 12.0
    EXTENT_MM = 216.0

    def __init__(self, rng: np.random.Generator, grid: _Grid) -> None:
        n = int(2 * self.EXTENT_MM / self.STEP_MM) + 1
        self.knots = (-self.EXTENT_MM + np.arange(n) * self.STEP_MM).astype(np.float32)
        self.values = rng.standard_normal((n, n, n)).astype(np.float32)  # (z, y, x)
        self.rows = self._weights(grid.ys)
        self.columns_t = np.ascontiguousarray(self._weights(grid.xs).T)

    def _weights(self, positions: FloatArray) -> FloatArray:
        """Gaussian interpolation weights (positions x knots), normalised so the field
        keeps unit variance; tiny weights are dropped (denormals are slow)."""
        d = (positions[:, None] - self.knots[None, :]) / np.float32(self.STEP_MM)
        w = np.exp(-0.5 * d * d).astype(np.float32)
        w[w < 1e-4] = 0.0
        w /= np.sqrt((w * w).sum(axis=1, keepdims=True)) + np.float32(1e-12)
        return w

    def plane(self, z: float) -> FloatArray:
        wz = self._weights(np.asarray([z], dtype=np.float32))[0]
        coarse = np.tensordot(wz, self.values, axes=1)
        result: FloatArray = self.rows @ coarse @ self.columns_t
        return result


def _shape_mask(
    grid: _Grid, z: float, shape: _Shape, margin: float
) -> tuple[slice, slice, BoolArray] | None:
    """Where a shape grown by margin meets slice z, as a mask over its box."""
    lo, hi = shape.bounds(margin)
    if not lo[2] <= z <= hi[2]:
        return None
    rows, cols = grid.index_range(1, lo[1], hi[1]), grid.index_range(2, lo[0], hi[0])
    if rows.start >= rows.stop or cols.start >= cols.stop:
        return None
    return rows, cols, shape.inside(grid.xs[None, cols], grid.ys[rows, None], z, margin)


def _paint_shape(
    plane: FloatArray,
    grid: _Grid,
    z: float,
    shape: _Shape,
    value: float,
    where: BoolArray,
    margin: float = 0.0,
) -> None:
    found = _shape_mask(grid, z, shape, margin)
    if found is not None:
        rows, cols, mask = found
        plane[rows, cols][mask & where[rows, cols]] = value


def _paint_slice(
    plane: FloatArray, lung: BoolArray, grid: _Grid, z: float, texture: _Texture
) -> None:
    """Draw one axial slice of the anatomy (no vessels, nodules or noise) and its lungs."""
    plane[...] = grid.base
    if CHEST_Z[0] <= z <= CHEST_Z[1]:
        _paint_ribs(plane, grid, z)
    cavity = _cavity(grid.xs[None, :], grid.ys[:, None], z)
    # Above the lungs the thoracic inlet is mostly muscle; below them, the abdomen.
    plane[cavity] = HU_MEDIASTINAL_FAT if z < APEX_Z[1] - 10.0 else HU_MUSCLE
    abdomen = cavity & (grid.diaphragm >= z)
    plane[abdomen & grid.liver_side] = HU_LIVER
    plane[abdomen & ~grid.liver_side] = HU_ABDOMEN
    lung[...] = cavity & ~abdomen & grid.beside_midline
    if z > APEX_Z[0]:
        lung &= _apex_inside(grid.xs[None, :], grid.ys[:, None], z)
    for shape in MEDIASTINUM:
        found = _shape_mask(grid, z, shape, PLEURA_MM)
        if found is not None:
            rows, cols, mask = found
            lung[rows, cols] &= ~mask
    parenchyma = texture.plane(z)
    parenchyma *= np.float32(20.0)
    parenchyma += grid.gradient
    parenchyma += np.float32(HU_LUNG)
    plane[lung] = parenchyma[lung]
    # The mediastinum, drawn over what is not lung; the heart sits on the diaphragm.
    soft = ~lung
    thorax = soft & ~abdomen
    _paint_shape(plane, grid, z, HEART, HU_MEDIASTINAL_FAT, thorax, margin=4.0)
    _paint_shape(plane, grid, z, HEART, HU_BLOOD, thorax)
    for shape in BLOOD_VESSELS:
        _paint_shape(plane, grid, z, shape, HU_BLOOD, soft)
    for shape in AIRWAYS:
        _paint_shape(plane, grid, z, shape, HU_MUSCLE, soft)
    for shape in AIRWAYS:
        _paint_shape(plane, grid, z, shape, HU_AIR, soft, margin=-TRACHEA_WALL_MM)
    _paint_spine(plane, grid, z)
    if STERNUM_Z[0] <= z <= STERNUM_Z[1]:
        _paint_sternum(plane, grid, z)


def _paint_ribs(plane: FloatArray, grid: _Grid, z: float) -> None:
    """Rib sections on a ring just outside the pleura, bright cortex around marrow.
    Their angles drift with z, as sloping ribs do, so slices differ."""
    semi = _cavity_semi(z)
    ax, ay = float(semi[0]) + RIB_OFFSET_MM, float(semi[1]) + RIB_OFFSET_MM
    reach = max(RIB_SEMI) + 1.0
    angle = -60.0 + 8.0 * math.sin(z / 17.0)  # anterior is -y: start beside the sternum
    while angle < 240.0:
        if abs(angle - 90.0) >= 28.0:  # leave the spine's place free
            theta = math.radians(angle)
            cx, cy = ax * math.cos(theta), CAVITY_CENTER_Y + ay * math.sin(theta)
            tx, ty = -ax * math.sin(theta), ay * math.cos(theta)  # tangent of the ring
            norm = math.hypot(tx, ty)
            tx, ty = tx / norm, ty / norm
            rows = grid.index_range(1, cy - reach, cy + reach)
            cols = grid.index_range(2, cx - reach, cx + reach)
            if rows.start < rows.stop and cols.start < cols.stop:
                dx = grid.xs[None, cols] - np.float32(cx)
                dy = grid.ys[rows, None] - np.float32(cy)
                along = dx * np.float32(tx) + dy * np.float32(ty)
                across = dy * np.float32(tx) - dx * np.float32(ty)
                region = plane[rows, cols]
                region[(along / RIB_SEMI[0]) ** 2 + (across / RIB_SEMI[1]) ** 2 <= 1.0] = HU_RIB
                marrow = (along / (RIB_SEMI[0] - 1.5)) ** 2 + (across / (RIB_SEMI[1] - 1.5)) ** 2
                region[marrow <= 1.0] = HU_MARROW
        angle += RIB_STEP_DEG


def _paint_spine(plane: FloatArray, grid: _Grid, z: float) -> None:
    """Vertebral body (or disc), canal, lamina, spinous and transverse processes."""
    vx, vy = VERTEBRA_CENTER
    rows = grid.index_range(1, vy - 45.0, vy + 45.0)
    cols = grid.index_range(2, vx - 45.0, vx + 45.0)
    if rows.start >= rows.stop or cols.start >= cols.stop:
        return
    x, y = grid.xs[None, cols], grid.ys[rows, None]
    region = plane[rows, cols]
    arch = _ellipse(x, y, 0.0, CANAL_Y, (11.0, 11.0)) <= 1.0
    arch |= _ellipse(x, y, 0.0, CANAL_Y + 10.0, (4.0, 7.0)) <= 1.0
    arch |= _ellipse(x, y, -20.0, CANAL_Y - 4.0, (11.0, 4.0)) <= 1.0
    arch |= _ellipse(x, y, 20.0, CANAL_Y - 4.0, (11.0, 4.0)) <= 1.0
    region[arch] = HU_CORTEX
    region[_ellipse(x, y, 0.0, CANAL_Y, (7.0, 7.0)) <= 1.0] = HU_CSF
    r = VERTEBRA_RADIUS
    if z % DISC_PERIOD_MM < DISC_MM:
        region[_ellipse(x, y, vx, vy, (r, r)) <= 1.0] = HU_DISC
    else:
        region[_ellipse(x, y, vx, vy, (r, r)) <= 1.0] = HU_CORTEX
        region[_ellipse(x, y, vx, vy, (r - 2.0, r - 2.0)) <= 1.0] = HU_VERTEBRA


def _paint_sternum(plane: FloatArray, grid: _Grid, z: float) -> None:
    """A flat bone in front of the mediastinum: cortex around marrow."""
    cy = CAVITY_CENTER_Y - float(_cavity_semi(z)[1]) - 7.0
    rows = grid.index_range(1, cy - 10.0, cy + 10.0)
    cols = grid.index_range(2, -20.0, 20.0)
    if rows.start >= rows.stop or cols.start >= cols.stop:
        return
    x, y = grid.xs[None, cols], grid.ys[rows, None]
    region = plane[rows, cols]
    region[_ellipse(x, y, 0.0, cy, (18.0, 8.0)) <= 1.0] = HU_CORTEX
    region[_ellipse(x, y, 0.0, cy, (16.0, 6.0)) <= 1.0] = HU_MARROW


# --- Vessels --------------------------------------------------------------------------

# Where each lobar artery or vein leaves the hilum: point, direction (x, y, z).
VESSEL_ROOTS: tuple[tuple[Point, Point], ...] = (
    ((-38.0, 5.0, 16.0), (-0.4, -0.1, 1.0)),  # right upper
    ((-38.0, 0.0, 18.0), (-0.5, -0.8, 0.6)),  # right upper anterior
    ((-38.0, 15.0, 16.0), (-0.5, 0.8, 0.6)),  # right upper posterior
    ((-38.0, 15.0, 0.0), (-1.0, 0.3, -0.6)),  # right lateral basal
    ((-38.0, 0.0, 12.0), (-0.9, -0.7, 0.2)),  # right anterior
    ((-38.0, 10.0, 10.0), (-1.0, 0.2, 0.0)),  # right lateral
    ((-38.0, 15.0, 6.0), (-0.4, 0.5, -1.0)),  # right lower
    ((-36.0, 25.0, 2.0), (-0.3, 1.0, -0.3)),  # right posterior (vein)
    ((-36.0, -5.0, -5.0), (-0.6, -0.6, -0.7)),  # right anterior basal (vein)
    ((38.0, 18.0, 20.0), (0.4, -0.1, 1.0)),  # left upper
    ((38.0, 12.0, 22.0), (0.5, -0.8, 0.6)),  # left upper anterior
    ((38.0, 25.0, 18.0), (0.5, 0.8, 0.6)),  # left upper posterior
    ((38.0, 22.0, 0.0), (1.0, 0.3, -0.6)),  # left lateral basal
    ((38.0, 10.0, 14.0), (0.9, -0.7, 0.2)),  # lingula
    ((38.0, 18.0, 10.0), (1.0, 0.2, 0.0)),  # left lateral
    ((38.0, 22.0, 6.0), (0.4, 0.5, -1.0)),  # left lower
    ((36.0, 30.0, 2.0), (0.3, 1.0, -0.3)),  # left posterior (vein)
    ((40.0, 10.0, -8.0), (0.6, -0.3, -0.8)),  # left basal (vein)
)
_PROBES = np.array(
    [[0, 0, 0], [1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]],
    dtype=np.float64,
)


def _unit(v: Vectors) -> Vectors:
    result: Vectors = v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)
    return result


def _cross(a: Vectors, b: Vectors) -> Vectors:
    """a x b for two 3-vectors (np.cross's generality costs more than the product here)."""
    return np.array(
        [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]
    )


def _clear_run(start: Vectors, directions: Vectors, steps: Vectors, margin: float) -> Vectors:
    """How far (mm) from start each direction stays inside the lungs with margin to
    spare, sampling at the given steps."""
    points = start[None, None, :] + directions[:, None, :] * steps[None, :, None]
    probes = (points[:, :, None, :] + margin * _PROBES[None, None, :, :]).astype(np.float32)
    ok = np.all(_lung_inside(probes[..., 0], probes[..., 1], probes[..., 2]), axis=2)
    # The last step before the first failure; 0 when the first step already fails.
    first_bad = np.where(ok.all(axis=1), steps.size, np.argmin(ok, axis=1))
    padded = np.concatenate([[0.0], steps])
    result: Vectors = padded[first_bad]
    return result


def _grow_vessel_trees(rng: np.random.Generator) -> list[TubeSegment]:
    """Branching vessel trees from each hilum, from ROOT_RADIUS_MM down to 1 mm.

    Each branch looks ahead along a few candidate directions and takes the one with the
    most lung ahead, so the trees fill the lungs without leaving them; children split
    the parent's r^3 (Murray's law) as 0.9 and 0.65 of its radius: a trunk that goes on
    and gives off side branches, as pulmonary vessels do.
    """
    segments: list[TubeSegment] = []
    stack: list[tuple[Vectors, Vectors, float]] = []
    for hilum, heading in VESSEL_ROOTS:
        root, d = np.asarray(hilum, dtype=np.float64), _unit(np.asarray(heading))
        # The trunk crosses the hilum: it begins where the lung does.
        offset = _first_inside(root, d, ROOT_RADIUS_MM)
        if offset is None:
            continue
        inner = root + offset * d
        segments.append(TubeSegment(hilum, _point(inner), ROOT_RADIUS_MM, ROOT_RADIUS_MM))
        stack.append((inner, d, ROOT_RADIUS_MM))
    while stack:
        start, direction, radius = stack.pop()
        wanted = radius * rng.uniform(3.0, 5.0) + 5.0
        end_radius = max(radius * 0.98, MIN_VESSEL_RADIUS_MM)
        candidates = [direction]
        for _ in range(7):
            side = _unit(_cross(direction, rng.standard_normal(3)))
            angle = rng.uniform(0.1, 0.6)
            candidates.append(math.cos(angle) * direction + math.sin(angle) * side)
        directions = _unit(np.asarray(candidates))
        steps = np.arange(2.0, wanted + 2.0 * radius + 4.0, 2.0)
        clear = _clear_run(start, directions, steps, end_radius + 1.0)
        score = np.minimum(clear, wanted) * (0.7 + 0.3 * directions @ direction)
        best = int(np.argmax(score))
        length = min(wanted, float(clear[best]) - end_radius - 1.0)
        if length < 3.0:
            continue
        chosen = directions[best]
        end = start + chosen * length
        segments.append(TubeSegment(_point(start), _point(end), radius, end_radius))
        major, minor = end_radius * 0.9, end_radius * 0.65
        if major < MIN_VESSEL_RADIUS_MM:
            continue
        if minor >= 0.8 * MIN_VESSEL_RADIUS_MM:  # the last side branches, at the limit
            minor = max(minor, MIN_VESSEL_RADIUS_MM)
        side = _unit(_cross(chosen, rng.standard_normal(3)))
        a1, a2 = rng.uniform(0.1, 0.3), rng.uniform(0.6, 1.1)
        stack.append((end, math.cos(a1) * chosen + math.sin(a1) * side, major))
        if minor >= MIN_VESSEL_RADIUS_MM:
            stack.append((end, math.cos(a2) * chosen - math.sin(a2) * side, minor))
    return segments


def _first_inside(start: Vectors, direction: Vectors, margin: float) -> float | None:
    """Distance along direction to the first point inside the lungs with margin."""
    steps = np.arange(0.0, 40.0, 1.0)
    points = start[None, :] + steps[:, None] * direction[None, :]
    probes = (points[:, None, :] + margin * _PROBES[None, :, :]).astype(np.float32)
    ok = _lung_inside(probes[..., 0], probes[..., 1], probes[..., 2]).all(axis=1)
    return float(steps[int(np.argmax(ok))]) if ok.any() else None


def _point(v: Vectors) -> Point:
    return (float(v[0]), float(v[1]), float(v[2]))


def _paint_vessel(
    hu: FloatArray,
    lung: BoolArray,
    grid: _Grid,
    segment: TubeSegment,
    nodules: tuple[PhantomNodule, ...],
) -> None:
    """Blend one vessel segment into the lungs with a one-pixel partial-volume edge;
    vessels stop VESSEL_CLEARANCE_MM short of any nodule."""
    ramp = grid.spec.pixel_spacing_mm
    lo, hi = segment.bounds(ramp)
    box = grid.box(lo, hi)
    if box is None:
        return
    ks, js, is_ = box
    z, y, x = grid.zs[ks, None, None], grid.ys[None, js, None], grid.xs[None, None, is_]
    fraction = np.clip(segment.depth(x, y, z) / np.float32(ramp) + 0.5, 0.0, 1.0)
    fraction *= lung[ks, js, is_]
    for nodule in nodules:
        reach = nodule.diameter_mm / 2 + VESSEL_CLEARANCE_MM
        cx, cy, cz = nodule.center_mm
        if all(lo[a] - reach <= c <= hi[a] + reach for a, c in enumerate((cx, cy, cz))):
            d2 = (x - np.float32(cx)) ** 2 + (y - np.float32(cy)) ** 2 + (z - np.float32(cz)) ** 2
            fraction *= d2 > np.float32(reach * reach)
    block = hu[ks, js, is_]
    block += fraction * (np.float32(HU_VESSEL) - block)


# --- Nodules --------------------------------------------------------------------------


def _paint_nodule(
    hu: FloatArray, lung: BoolArray, grid: _Grid, nodule: PhantomNodule
) -> NoduleTruth:
    """Blend a sphere in with its exact partial volume (5 x 3 x 3 samples per voxel) and
    measure it as drawn."""
    spec = grid.spec
    cx, cy, cz = nodule.center_mm
    radius = nodule.diameter_mm / 2
    pad = (radius + spec.pixel_spacing_mm, radius + spec.pixel_spacing_mm)
    box = grid.box(
        (cx - pad[0], cy - pad[1], cz - radius - spec.slice_step_mm),
        (cx + pad[0], cy + pad[1], cz + radius + spec.slice_step_mm),
    )
    voxel_mm3 = float(np.prod(spec.spacing))
    x0, y0, z0 = spec.origin
    count = 0
    if box is not None:
        ks, js, is_ = box
        # Exact (float64) voxel centres, so the count matches the Volume's own geometry.
        z = z0 + np.arange(ks.start, ks.stop) * spec.slice_step_mm - cz
        y = y0 + np.arange(js.start, js.stop) * spec.pixel_spacing_mm - cy
        x = x0 + np.arange(is_.start, is_.stop) * spec.pixel_spacing_mm - cx
        zz = (z[:, None] + _subsamples(5, spec.slice_step_mm)[None, :]) ** 2
        yy = (y[:, None] + _subsamples(3, spec.pixel_spacing_mm)[None, :]) ** 2
        xx = (x[:, None] + _subsamples(3, spec.pixel_spacing_mm)[None, :]) ** 2
        d2 = (
            zz[:, None, None, :, None, None]
            + yy[None, :, None, None, :, None]
            + xx[None, None, :, None, None, :]
        )
        fraction = (d2 <= radius * radius).mean(axis=(3, 4, 5)).astype(np.float32)
        block = hu[ks, js, is_]
        block += fraction * (np.float32(nodule.hu) - block)
        centres = z[:, None, None] ** 2 + y[None, :, None] ** 2 + x[None, None, :] ** 2
        count = int(np.count_nonzero(centres <= radius * radius))
    return NoduleTruth(
        center_mm=nodule.center_mm,
        center_voxel=(
            (cz - z0) / spec.slice_step_mm,
            (cy - y0) / spec.pixel_spacing_mm,
            (cx - x0) / spec.pixel_spacing_mm,
        ),
        diameter_mm=nodule.diameter_mm,
        hu=nodule.hu,
        voxel_count=count,
        volume_mm3=count * voxel_mm3,
        analytic_volume_mm3=math.pi * nodule.diameter_mm**3 / 6,
        pleura_gap_mm=_pleura_gap(lung, grid, nodule),
    )


def _subsamples(n: int, step: float) -> Vectors:
    """Offsets of n evenly spread sample points across a voxel of width step."""
    result: Vectors = (np.arange(n) + 0.5) / n * step - step / 2
    return result


def _pleura_gap(lung: BoolArray, grid: _Grid, nodule: PhantomNodule, cap: float = 30.0) -> float:
    """Distance from the nodule's surface to the nearest voxel outside the lungs."""
    cx, cy, cz = nodule.center_mm
    reach = nodule.diameter_mm / 2 + cap
    box = grid.box((cx - reach, cy - reach, cz - reach), (cx + reach, cy + reach, cz + reach))
    if box is None:
        return 0.0
    block = lung[box]
    if block.all():
        return cap
    distance = ndimage.distance_transform_edt(block, sampling=grid.spec.spacing)
    centre = tuple(
        round((c - grid.start[a]) / grid.spec.spacing[a]) - box[a].start
        for a, c in enumerate((cz, cy, cx))
    )
    return float(np.clip(float(distance[centre]) - nodule.diameter_mm / 2, 0.0, cap))


def _validate_nodules(spec: PhantomSpec) -> None:
    """Each nodule: positive size, inside the volume, centre in the lungs, no overlap."""
    origin = spec.origin
    steps = (spec.pixel_spacing_mm, spec.pixel_spacing_mm, spec.slice_step_mm)
    counts = (spec.columns, spec.rows, spec.slices)
    for n, nodule in enumerate(spec.nodules):
        name = f"PhantomSpec.nodules[{n}]"
        if not nodule.diameter_mm > 0:
            raise ValueError(f"{name}.diameter_mm must be positive, got {nodule.diameter_mm!r}")
        if len(nodule.center_mm) != 3:
            raise ValueError(f"{name}.center_mm must be (x, y, z) in mm, got {nodule.center_mm!r}")
        radius = nodule.diameter_mm / 2
        for axis in range(3):
            lo = origin[axis] + radius
            hi = origin[axis] + (counts[axis] - 1) * steps[axis] - radius
            if not lo <= nodule.center_mm[axis] <= hi:
                raise ValueError(
                    f"{name}.center_mm {nodule.center_mm!r} does not fit in the volume: "
                    f"{'xyz'[axis]} must lie in [{lo:.1f}, {hi:.1f}] mm"
                )
        point = np.asarray(nodule.center_mm, dtype=np.float32).reshape(3, 1)
        if not _lung_inside(point[0], point[1], point[2])[0]:
            raise ValueError(
                f"{name}.center_mm {nodule.center_mm!r} is outside the lungs "
                "(DEFAULT_NODULES shows positions inside them)"
            )
        for m, other in enumerate(spec.nodules[:n]):
            gap = math.dist(nodule.center_mm, other.center_mm) - radius - other.diameter_mm / 2
            if gap < 0:
                raise ValueError(
                    f"{name} at {nodule.center_mm!r} overlaps PhantomSpec.nodules[{m}] at "
                    f"{other.center_mm!r} by {-gap:.1f} mm"
                )
