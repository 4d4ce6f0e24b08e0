"""Lesions: the connected components of a segment, with their volume and centroid.

Per-lesion radiomics gives one row group per lesion. Lesions are numbered 1, 2, …
by decreasing volume (ties by their first voxel in array order), so the numbering is
reproducible and lesion 1 is the largest.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ImagInfoExtension.geometry import ImageGrid

#: Structuring elements by connectivity (voxels sharing a face, an edge or a corner).
CONNECTIVITY = {6: 1, 18: 2, 26: 3}


@dataclass(frozen=True)
class Lesion:
    """One connected component of a segment.

    Attributes
    ----------
    lesion_id : int
        1 for the largest, then by decreasing volume.
    mask : numpy.ndarray of bool
        The component on the segment's grid, (z, y, x).
    voxel_count : int
    volume_ml : float
    centroid_lps_mm, centroid_ras_mm : tuple of float
        Centre of the component's voxel centres, in patient LPS and in RAS (Slicer's
        world coordinates: x and y negated).
    """

    lesion_id: int
    mask: np.ndarray
    voxel_count: int
    volume_ml: float
    centroid_lps_mm: tuple[float, float, float]
    centroid_ras_mm: tuple[float, float, float]


def split_lesions(
    mask: np.ndarray, grid: ImageGrid, *, connectivity: int = 26, min_volume_ml: float = 0.0
) -> tuple[list[Lesion], int]:
    """Split a binary mask into lesions.

    Parameters
    ----------
    mask : numpy.ndarray of bool, (z, y, x)
    grid : ImageGrid
        The mask's geometry (spacing, origin and direction give volumes and centroids).
    connectivity : {6, 18, 26}
        Voxels sharing a face (6), also an edge (18), or also a corner (26).
    min_volume_ml : float
        Components smaller than this are left out and counted.

    Returns
    -------
    lesions : list of Lesion
    left_out : int
        Number of components below ``min_volume_ml``.
    """
    if connectivity not in CONNECTIVITY:
        raise ValueError(f"connectivity {connectivity} is not 6, 18 or 26")
    if min_volume_ml < 0:
        raise ValueError(f"min_volume_ml {min_volume_ml} must be ≥ 0")
    structure = ndimage.generate_binary_structure(3, CONNECTIVITY[connectivity])
    labels, count = ndimage.label(np.asarray(mask, dtype=bool), structure=structure)
    if count == 0:
        return [], 0
    voxel_ml = grid.voxel_volume_mm3 / 1000.0
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    first_voxel = ndimage.minimum(np.arange(labels.size).reshape(labels.shape), labels, np.arange(1, count + 1))
    order = sorted(range(count), key=lambda n: (-sizes[n], first_voxel[n]))
    centres_kji = ndimage.center_of_mass(np.ones(labels.shape), labels, np.arange(1, count + 1))
    lesions: list[Lesion] = []
    left_out = 0
    for n in order:
        volume_ml = float(sizes[n] * voxel_ml)
        if volume_ml < min_volume_ml:
            left_out += 1
            continue
        centre_ijk = np.asarray(centres_kji[n], dtype=float)[::-1]
        lps = grid.physical_from_index(centre_ijk[None, :])[0]
        lesions.append(
            Lesion(
                lesion_id=len(lesions) + 1,
                mask=labels == n + 1,
                voxel_count=int(sizes[n]),
                volume_ml=volume_ml,
                centroid_lps_mm=tuple(float(v) for v in lps),
                centroid_ras_mm=(float(-lps[0]), float(-lps[1]), float(lps[2])),
            )
        )
    return lesions, left_out


def lesion_mask_image(lesion: Lesion, reference: sitk.Image) -> sitk.Image:
    """A lesion's mask as a uint8 image on the reference grid."""
    image = sitk.GetImageFromArray(lesion.mask.astype(np.uint8))
    image.CopyInformation(reference)
    return image
