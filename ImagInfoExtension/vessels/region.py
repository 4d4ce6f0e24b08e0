"""The measurement region: the air (lung) cavity inside the phantom holder."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
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
    parts = _holder_parts(image, spacing, smoothing_mm)
    if parts is None:
        return PhantomRegion(np.ones(image.shape, dtype=bool), "whole image", 0.0)
    outside, wall = parts
    cavity = ~outside & ~wall
    del outside
    if wall_margin_mm > 0 and wall.any():
        cavity &= distance_from_mask_mm(wall, spacing) > wall_margin_mm
    return PhantomRegion(cavity, "holder cavity", wall_margin_mm)


def find_holder_wall(
    image: np.ndarray, spacing_kji: Sequence[float], edge_margin_mm: float = 1.5, smoothing_mm: float = 0.7
) -> np.ndarray:
    """The uniform interior of the holder's wall: PMMA at least ``edge_margin_mm`` from its edges.

    This is where TG-233 noise measurements belong on the phantom: solid material,
    away from the blurred edges, with no air clipped at -1024 HU.

    Returns
    -------
    ndarray of bool, ``[k, j, i]``
        Empty when the image has no holder.
    """
    spacing = np.asarray(spacing_kji, dtype=float)
    parts = _holder_parts(image, spacing, smoothing_mm)
    if parts is None:
        return np.zeros(image.shape, dtype=bool)
    _, wall = parts
    if not wall.any() or wall.all():
        return wall
    return wall & (distance_from_mask_mm(~wall, spacing) > edge_margin_mm)


def _holder_parts(image: np.ndarray, spacing: np.ndarray, smoothing_mm: float) -> tuple[np.ndarray, np.ndarray] | None:
    """Outside air and the holder wall, or None when no air is enclosed."""
    # Full-volume temporaries are bool or one int32 label image at a time, so that a
    # 512x512x400 CT stays within a few times its own size.
    smoothed = ndimage.gaussian_filter(np.asarray(image, dtype=np.float32), smoothing_mm / spacing, truncate=3.0)
    air = smoothed < AIR_THRESHOLD_HU
    del smoothed
    labels, count = ndimage.label(air)
    border = np.zeros(count + 1, dtype=bool)
    for face in (labels[:, 0, :], labels[:, -1, :], labels[:, :, 0], labels[:, :, -1]):
        border[np.unique(face)] = True
    border[0] = False
    outside = border[labels]
    del labels
    if not (air & ~outside).any():
        return None
    bright = ~air
    del air
    bright_labels, bright_count = ndimage.label(bright)
    touching = np.zeros(bright_count + 1, dtype=bool)
    touching[bright_labels[ndimage.binary_dilation(outside) & bright]] = True
    touching[0] = False
    wall = touching[bright_labels]
    return outside, wall


def distance_from_mask_mm(mask: np.ndarray, spacing_kji: Sequence[float]) -> np.ndarray:
    """Euclidean distance (mm) of every voxel from the nearest voxel of ``mask``.

    SimpleITK's Maurer transform gives the exact distance that
    ``scipy.ndimage.distance_transform_edt(~mask, sampling=spacing_kji)`` gives, in
    float32, multithreaded and without scipy's int32 feature-transform arrays, which
    take 20 bytes per voxel on a full CT.

    Parameters
    ----------
    mask : ndarray of bool, ``[k, j, i]``
        Must contain at least one voxel.
    spacing_kji : sequence of float
        Voxel spacing along the array axes (mm).

    Returns
    -------
    ndarray of float32, ``[k, j, i]``
        0 inside ``mask``.
    """
    if not mask.any():
        raise ValueError("the distance from an empty mask is undefined; pass a mask with at least one voxel")
    source = sitk.GetImageFromArray(np.ascontiguousarray(mask).view(np.uint8))
    source.SetSpacing([float(s) for s in spacing_kji[::-1]])
    squared = sitk.SignedMaurerDistanceMap(
        source, insideIsPositive=False, squaredDistance=True, useImageSpacing=True, backgroundValue=0
    )
    del source
    distance = sitk.GetArrayFromImage(squared)
    del squared
    np.maximum(distance, 0, out=distance)
    return np.sqrt(distance, out=distance)
