"""The volume a model sees: voxels in HU on a regular grid, with its patient geometry.

A plain type: inference builds it from a series, results encode against its
geometry, tests and the phantom build one without reading DICOM.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True, eq=False)
class Volume:
    """A series as a 3D array indexed (slice k, row j, column i), in HU.

    Geometry follows DICOM patient coordinates (LPS, millimetres):
    the voxel (k, j, i) sits at
        origin + i * spacing[2] * row_direction
               + j * spacing[1] * column_direction
               + k * spacing[0] * slice_direction
    where row_direction and column_direction are ImageOrientationPatient's two
    vectors and slice_direction is their cross product; slices are sorted so that
    k grows along slice_direction. spacing is (slice step, row spacing, column
    spacing), i.e. (dz, PixelSpacing[0], PixelSpacing[1]).
    """

    hu: FloatArray
    origin: tuple[float, float, float]
    spacing: tuple[float, float, float]
    row_direction: tuple[float, float, float]
    column_direction: tuple[float, float, float]
    study_uid: str = ""
    series_uid: str = ""
    frame_of_reference_uid: str = ""
    modality: str = ""
    slice_thickness_mm: float | None = None
    # One entry per slice k: the source instance it came from.
    sop_instance_uids: tuple[str, ...] = field(default=())
    sop_class_uid: str = ""

    @property
    def shape(self) -> tuple[int, int, int]:
        """(slices, rows, columns)."""
        k, j, i = self.hu.shape
        return int(k), int(j), int(i)

    @property
    def slice_direction(self) -> tuple[float, float, float]:
        """The unit normal of the slices, the direction k grows in."""
        normal = np.cross(np.asarray(self.row_direction), np.asarray(self.column_direction))
        return (float(normal[0]), float(normal[1]), float(normal[2]))

    @property
    def affine(self) -> npt.NDArray[np.float64]:
        """4x4 matrix from (k, j, i, 1) to (x, y, z, 1) in patient coordinates."""
        matrix = np.eye(4)
        matrix[:3, 0] = np.asarray(self.slice_direction) * self.spacing[0]
        matrix[:3, 1] = np.asarray(self.column_direction) * self.spacing[1]
        matrix[:3, 2] = np.asarray(self.row_direction) * self.spacing[2]
        matrix[:3, 3] = self.origin
        return matrix

    def to_patient(self, kji: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Patient coordinates (mm) of voxel indices (..., 3) given as (k, j, i)."""
        points = np.asarray(kji, dtype=np.float64)
        affine = self.affine
        result: npt.NDArray[np.float64] = points @ affine[:3, :3].T + affine[:3, 3]
        return result

    @property
    def voxel_volume_mm3(self) -> float:
        """The volume of one voxel."""
        return float(np.prod(self.spacing))
