"""Image grids in physical LPS millimetres.

An :class:`ImageGrid` is the sampling lattice of a 3D image exactly as SimpleITK and
DICOM define it: voxel ``(i, j, k)`` has its centre at
``origin_mm + direction @ (spacing_mm * (i, j, k))``. Numpy arrays on a grid are
indexed ``[k, j, i]``, the order ``SimpleITK.GetArrayFromImage`` uses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage


def mask_bounding_box(mask: np.ndarray, margin_voxels: int | Sequence[int] = 0) -> tuple[slice, ...]:
    """Array slices around the non-zero voxels of ``mask``, widened by a margin and clipped.

    An empty mask gives empty slices.
    """
    margin = np.broadcast_to(np.asarray(margin_voxels, dtype=int), (mask.ndim,))
    found = ndimage.find_objects(mask.astype(np.uint8))
    if not found or found[0] is None:
        return tuple(slice(0, 0) for _ in mask.shape)
    return tuple(
        slice(max(0, s.start - int(m)), min(n, s.stop + int(m))) for s, m, n in zip(found[0], margin, mask.shape)
    )


@dataclass(frozen=True)
class ImageGrid:
    """Geometry of a 3D image in LPS millimetres.

    Parameters
    ----------
    size_ijk : tuple of int
        Number of voxels along i, j and k.
    spacing_mm : tuple of float
        Voxel spacing along i, j and k, in mm.
    origin_mm : tuple of float
        LPS position of the centre of voxel (0, 0, 0), in mm.
    direction : tuple of float
        Row-major 3x3 matrix whose columns are the LPS unit vectors of the i, j and
        k axes.
    """

    size_ijk: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    origin_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

    def __post_init__(self) -> None:
        if len(self.size_ijk) != 3 or min(self.size_ijk) < 1:
            raise ValueError(f"size_ijk must be three positive integers, got {self.size_ijk}")
        if len(self.spacing_mm) != 3 or min(self.spacing_mm) <= 0:
            raise ValueError(f"spacing_mm must be three positive numbers, got {self.spacing_mm}")
        matrix = np.asarray(self.direction, dtype=float)
        if matrix.size != 9:
            raise ValueError("direction must hold the 9 entries of a 3x3 matrix")
        matrix = matrix.reshape(3, 3)
        if not np.allclose(matrix.T @ matrix, np.eye(3), atol=1e-6):
            raise ValueError("direction must be orthonormal (a rotation, possibly with a reflection)")

    @property
    def direction_matrix(self) -> np.ndarray:
        """The 3x3 direction matrix (columns are the axes in LPS)."""
        return np.asarray(self.direction, dtype=float).reshape(3, 3)

    @property
    def shape_kji(self) -> tuple[int, int, int]:
        """Shape of a numpy array on this grid, ``(k, j, i)``."""
        return (self.size_ijk[2], self.size_ijk[1], self.size_ijk[0])

    @property
    def voxel_volume_mm3(self) -> float:
        return float(np.prod(self.spacing_mm))

    @property
    def index_to_physical_matrix(self) -> np.ndarray:
        """4x4 homogeneous matrix mapping (i, j, k, 1) to LPS (x, y, z, 1) in mm."""
        matrix = np.eye(4)
        matrix[:3, :3] = self.direction_matrix @ np.diag(self.spacing_mm)
        matrix[:3, 3] = self.origin_mm
        return matrix

    def physical_from_index(self, index_ijk: np.ndarray) -> np.ndarray:
        """LPS points (N, 3) in mm of continuous indices (N, 3) in i, j, k order."""
        index_ijk = np.asarray(index_ijk, dtype=float)
        scaled = index_ijk * np.asarray(self.spacing_mm)
        return scaled @ self.direction_matrix.T + np.asarray(self.origin_mm)

    def index_from_physical(self, points_mm: np.ndarray) -> np.ndarray:
        """Continuous indices (N, 3) in i, j, k order of LPS points (N, 3) in mm."""
        points_mm = np.asarray(points_mm, dtype=float)
        rotated = (points_mm - np.asarray(self.origin_mm)) @ self.direction_matrix
        return rotated / np.asarray(self.spacing_mm)

    def to_sitk(self, array_kji: np.ndarray) -> sitk.Image:
        """Wrap a ``[k, j, i]`` array as a SimpleITK image on this grid."""
        if array_kji.shape != self.shape_kji:
            raise ValueError(f"array shape {array_kji.shape} does not match grid shape {self.shape_kji}")
        image = sitk.GetImageFromArray(array_kji)
        image.SetSpacing(tuple(float(s) for s in self.spacing_mm))
        image.SetOrigin(tuple(float(o) for o in self.origin_mm))
        image.SetDirection(tuple(float(d) for d in self.direction))
        return image

    @classmethod
    def from_sitk(cls, image: sitk.Image) -> ImageGrid:
        """The grid of a 3D SimpleITK image."""
        if image.GetDimension() != 3:
            raise ValueError(f"expected a 3D image, got {image.GetDimension()}D")
        return cls(
            size_ijk=tuple(int(s) for s in image.GetSize()),
            spacing_mm=tuple(float(s) for s in image.GetSpacing()),
            origin_mm=tuple(float(o) for o in image.GetOrigin()),
            direction=tuple(float(d) for d in image.GetDirection()),
        )

    @classmethod
    def covering_box(
        cls,
        lower_mm: np.ndarray,
        upper_mm: np.ndarray,
        spacing_mm: tuple[float, float, float],
        direction: tuple[float, ...] | None = None,
    ) -> ImageGrid:
        """A grid whose voxel centres cover the LPS box [lower, upper].

        With ``direction`` (an oblique grid), the grid covers the box's eight corners.
        """
        lower = np.asarray(lower_mm, dtype=float)
        upper = np.asarray(upper_mm, dtype=float)
        spacing = np.asarray(spacing_mm, dtype=float)
        matrix = np.eye(3) if direction is None else np.asarray(direction, dtype=float).reshape(3, 3)
        corners = np.array([[(lower, upper)[b >> a & 1][a] for a in range(3)] for b in range(8)])
        local = corners @ matrix
        local_lower, local_upper = local.min(axis=0), local.max(axis=0)
        size = np.ceil((local_upper - local_lower) / spacing - 1e-9).astype(int) + 1
        centre = (local_lower + local_upper) / 2
        origin = matrix @ (centre - (size - 1) * spacing / 2)
        return cls(
            size_ijk=tuple(int(s) for s in size),
            spacing_mm=tuple(float(s) for s in spacing),
            origin_mm=tuple(float(o) for o in origin),
            direction=tuple(float(d) for d in matrix.ravel()),
        )

    def same_as(self, other: ImageGrid, tolerance_mm: float = 1e-4) -> bool:
        """Whether two grids sample the same points (to ``tolerance_mm``)."""
        return (
            self.size_ijk == other.size_ijk
            and np.allclose(self.spacing_mm, other.spacing_mm, atol=tolerance_mm)
            and np.allclose(self.origin_mm, other.origin_mm, atol=tolerance_mm)
            and np.allclose(self.direction, other.direction, atol=1e-6)
        )
