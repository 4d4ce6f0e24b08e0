"""The measurement region: the air (lung) cavity inside the phantom holder."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

#: Below this value (HU) a voxel counts as air when looking for the holder.
AIR_THRESHOLD_HU = -500.0


@dataclass(frozen=True)
class PhantomRegion:
    """Where vessels are looked for.

    Attributes
    ----------
    mask : ndarray of bool, ``[k, j, i]``
    source : str
        ``'holder cavity'``, ``'whole image'`` (no enclosed air found) or ``'user mask'``.
    wall_margin_mm : float
        Distance kept from the holder wall.
    """

    mask: np.ndarray
    source: str
    wall_margin_mm: float

    @property
    def voxel_count(self) -> int:
        return int(self.mask.sum())


def find_holder_cavity(
    image: np.ndarray,
    spacing_kji: Sequence[float],
    wall_margin_mm: float = 2.0,
    smoothing_mm: float = 0.7,
) -> PhantomRegion:
    """Find the air cavity inside the phantom holder, vessels included, wall excluded.

    Air connected to the in-plane faces of the image (first and second array axes'
    ends excluded: the holder is open along its axis) is outside air. Bright voxels
    touching outside air form the holder wall. The region is everything else: the
    enclosed air and whatever lies in it, less ``wall_margin_mm`` around the wall so
    that its blurred edge is never taken for a vessel. When no enclosed air exists
    (an image without a holder), the whole image is the region.

    Parameters
    ----------
    image : ndarray, ``[k, j, i]``
        CT in HU.
    spacing_kji : sequence of float
        Voxel spacing along the array axes (mm).
    wall_margin_mm : float
        Margin removed around the wall.
    smoothing_mm : float
        Gaussian smoothing before thresholding, against noise at low dose.
    """
    spacing = np.asarray(spacing_kji, dtype=float)
    smoothed = ndimage.gaussian_filter(image.astype(np.float32), smoothing_mm / spacing, truncate=3.0)
    air = smoothed < AIR_THRESHOLD_HU
    labels, count = ndimage.label(air)
    border = np.zeros(count + 1, dtype=bool)
    for face in (labels[:, 0, :], labels[:, -1, :], labels[:, :, 0], labels[:, :, -1]):
        border[np.unique(face)] = True
    border[0] = False
    outside = border[labels]
    enclosed = air & ~outside
    del labels
    if not enclosed.any():
        return PhantomRegion(np.ones(image.shape, dtype=bool), "whole image", 0.0)
    bright = ~air
    bright_labels, _ = ndimage.label(bright)
    touching = np.unique(bright_labels[ndimage.binary_dilation(outside) & bright])
    touching = touching[touching > 0]
    wall = np.isin(bright_labels, touching)
    del bright_labels
    cavity = ~outside & ~wall
    if wall_margin_mm > 0 and wall.any():
        distance = ndimage.distance_transform_edt(~wall, sampling=spacing)
        cavity &= distance > wall_margin_mm
    return PhantomRegion(cavity, "holder cavity", wall_margin_mm)
