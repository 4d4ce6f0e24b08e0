"""Centrelines of a vessel segmentation and the local radius along them.

The skeleton is thinned from the segmentation, then points whose inscribed ball lies
inside another point's ball are dropped: they are spurs towards the wall, not medial
points. Where the inscribed radius spans at least ``edt_min_voxels`` voxels it is read
from the Euclidean distance transform. Thinner vessels are measured by integrating the
image: the excess over background in a short tube around the centreline equals
contrast × π r² × length whatever the blur, so r is recovered below the voxel size.
A vessel whose integral does not stand out of the noise, as sampled by the same tube
at random background places, is reported unresolved (radius NaN).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from ImagInfoExtension.geometry import mask_bounding_box

#: Radius methods, as stored in :attr:`Centerlines.method`.
METHOD_DISTANCE = 1
METHOD_INTEGRAL = 2
METHOD_UNRESOLVED = 0

#: Integration tube radii are rounded up to multiples of this.
TUBE_RADIUS_STEP_MM = 0.5


@dataclass(frozen=True)
class CenterlineParameters:
    """Skeleton pruning and radius estimation.

    Parameters
    ----------
    edt_min_voxels : float
        Inscribed radius (in mean voxel spacings) from which the distance transform
        is trusted; below it the intensity integral is used.
    integration_margin_mm : float
        The integration tube reaches this far beyond the vessel's inscribed radius,
        to hold its blurred tails.
    integration_half_length_mm : float
        Half-length of the integration tube along the centreline.
    resolvable_sigmas : float
        A thin vessel is resolved only if its integral exceeds this many standard
        deviations of the same integral over background.
    """

    edt_min_voxels: float = 3.0
    integration_margin_mm: float = 1.2
    integration_half_length_mm: float = 1.0
    resolvable_sigmas: float = 3.0


@dataclass(frozen=True)
class Centerlines:
    """Centreline points of a segmentation.

    Attributes
    ----------
    index_kji : ndarray of int (N, 3)
        Skeleton voxels, in array index order.
    radius_mm : ndarray of float (N,)
        Local radius; NaN where unresolved.
    method : ndarray of int8 (N,)
        ``METHOD_DISTANCE``, ``METHOD_INTEGRAL`` or ``METHOD_UNRESOLVED``.
    tangent_kji : ndarray (N, 3)
        Unit tangent in physical units, array axis order.
    depth_box : tuple of slice, optional
        Where ``depth_mm`` lies in the image array.
    depth_mm : ndarray, optional
        The segmentation's Euclidean distance transform (mm) inside ``depth_box``, a
        by-product the per-class statistics reuse.
    """

    index_kji: np.ndarray
    radius_mm: np.ndarray
    method: np.ndarray
    tangent_kji: np.ndarray
    depth_box: tuple[slice, ...] | None = None
    depth_mm: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.radius_mm)


def prune_contained_balls(points_mm: np.ndarray, radius_mm: np.ndarray, tolerance_mm: float) -> np.ndarray:
    """Mask of points whose ball is not inside another point's ball (medial points).

    Point p is dropped when some q has ``|p − q| + r_p ≤ r_q + tolerance``.
    """
    keep = np.ones(len(points_mm), dtype=bool)
    if len(points_mm) < 2:
        return keep
    tree = cKDTree(points_mm)
    pairs = tree.query_pairs(float(radius_mm.max()) + tolerance_mm, output_type="ndarray")
    if len(pairs) == 0:
        return keep
    a, b = pairs[:, 0], pairs[:, 1]
    distance = np.linalg.norm(points_mm[a] - points_mm[b], axis=1)
    for p, q in ((a, b), (b, a)):
        contained = distance + radius_mm[p] <= radius_mm[q] + tolerance_mm
        # Equal balls at the same place would drop each other; the larger index survives.
        contained &= (radius_mm[p] < radius_mm[q]) | (p < q)
        keep[p[contained]] = False
    return keep


def _tangents(points_mm: np.ndarray, reach_mm: np.ndarray) -> np.ndarray:
    """Principal direction of the skeleton points near each point."""
    tree = cKDTree(points_mm)
    tangents = np.zeros_like(points_mm)
    for number, neighbours in enumerate(tree.query_ball_point(points_mm, reach_mm)):
        local = points_mm[neighbours] - points_mm[neighbours].mean(axis=0)
        if len(neighbours) < 2:
            tangents[number] = (1.0, 0.0, 0.0)
            continue
        _, _, vt = np.linalg.svd(local, full_matrices=False)
        tangents[number] = vt[0]
    return tangents


def _tube_integrals(
    excess: np.ndarray,
    spacing: np.ndarray,
    centres_kji: np.ndarray,
    tangents: np.ndarray,
    radius_mm: np.ndarray,
    half_length_mm: float,
) -> np.ndarray:
    """Integral of ``excess`` (HU·mm³) over a tube of ``radius_mm[n]`` around each centre."""
    reach = np.ceil(np.maximum(float(radius_mm.max()), half_length_mm) / spacing).astype(int)
    offsets = np.stack(np.meshgrid(*(np.arange(-r, r + 1) for r in reach), indexing="ij"), axis=-1).reshape(-1, 3)
    offsets_mm = offsets * spacing
    voxel_volume = float(np.prod(spacing))
    integrals = np.zeros(len(centres_kji))
    shape = np.asarray(excess.shape)
    for start in range(0, len(centres_kji), 2048):
        centres = centres_kji[start : start + 2048]
        axis = tangents[start : start + 2048]
        tube = radius_mm[start : start + 2048]
        along = offsets_mm @ axis.T  # (offsets, points)
        across2 = (offsets_mm**2).sum(axis=1)[:, None] - along**2
        inside = (np.abs(along) <= half_length_mm) & (across2 <= tube[None, :] ** 2)
        index = centres[None, :, :] + offsets[:, None, :]
        valid = np.all((index >= 0) & (index < shape), axis=2)
        index = np.where(valid[..., None], index, 0)
        values = excess[index[..., 0], index[..., 1], index[..., 2]]
        integrals[start : start + 2048] = np.where(inside & valid, values, 0.0).sum(axis=0) * voxel_volume
    return integrals


def extract_centerlines(
    segmentation: np.ndarray,
    image: np.ndarray,
    spacing_kji: Sequence[float],
    background_hu: float,
    vessel_hu: float,
    region: np.ndarray | None = None,
    parameters: CenterlineParameters | None = None,
    seed: int = 0,
) -> Centerlines:
    """Skeletonise a segmentation and estimate the local radius at each centreline point.

    Parameters
    ----------
    segmentation : ndarray of bool, ``[k, j, i]``
    image : ndarray, ``[k, j, i]``
        HU, for the integral radius.
    spacing_kji : sequence of float
        Spacing along the array axes (mm).
    background_hu, vessel_hu : float
        Material levels; their difference is the contrast of the integral.
    region : ndarray of bool, optional
        Where background samples for the noise of the integral may be drawn.
    parameters : CenterlineParameters, optional
    seed : int
        Seed of the background sampling.
    """
    from skimage.morphology import skeletonize

    parameters = parameters or CenterlineParameters()
    spacing = np.asarray(spacing_kji, dtype=float)
    empty = Centerlines(np.zeros((0, 3), int), np.zeros(0), np.zeros(0, np.int8), np.zeros((0, 3)))
    if not segmentation.any():
        return empty
    box = mask_bounding_box(segmentation, 2)
    crop = segmentation[box]
    offset = np.array([s.start for s in box])
    # The box keeps background on every side, so the crop's distance transform equals
    # the whole image's there.
    distance = ndimage.distance_transform_edt(crop, sampling=spacing)
    index = np.argwhere(skeletonize(crop))
    if len(index) == 0:
        return replace(empty, depth_box=box, depth_mm=distance)
    depth = distance[tuple(index.T)]
    # A thinned skeleton may sit one voxel off the axis of an even-width vessel; the
    # deepest voxel next to it is the better centre.
    centre_depth = ndimage.maximum_filter(distance, size=3)[tuple(index.T)]
    points_mm = index * spacing
    mean_spacing = float(np.mean(spacing))
    keep = prune_contained_balls(points_mm, depth, 0.5 * mean_spacing)
    index, depth, centre_depth, points_mm = index[keep], depth[keep], centre_depth[keep], points_mm[keep]
    tangents = _tangents(points_mm, np.maximum(2.0 * depth, 2.0 * mean_spacing))
    index_full = index + offset

    radius = np.full(len(index), np.nan)
    method = np.full(len(index), METHOD_UNRESOLVED, dtype=np.int8)
    thick = centre_depth >= parameters.edt_min_voxels * mean_spacing
    radius[thick] = centre_depth[thick]
    method[thick] = METHOD_DISTANCE

    thin = np.flatnonzero(~thick)
    if len(thin):
        contrast = vessel_hu - background_hu
        half_length = parameters.integration_half_length_mm
        excess = image.astype(np.float32) - np.float32(background_hu)
        vessel_points_mm = np.argwhere(segmentation) * spacing
        rng = np.random.default_rng(seed)
        # Tubes come in a few widths so that each width's background is sampled once.
        tube_radius = np.ceil((depth[thin] + parameters.integration_margin_mm) / TUBE_RADIUS_STEP_MM)
        tube_radius *= TUBE_RADIUS_STEP_MM
        for width in np.unique(tube_radius):
            rows = thin[tube_radius == width]
            integrals = _tube_integrals(
                excess, spacing, index_full[rows], tangents[rows], np.full(len(rows), width), half_length
            )
            offset, noise = _background_integrals(
                excess, spacing, vessel_points_mm, region, float(width), half_length, rng
            )
            integrals -= offset
            resolved = integrals > parameters.resolvable_sigmas * noise
            estimate = np.sqrt(np.clip(integrals, 0.0, None) / (contrast * 2.0 * half_length * np.pi))
            radius[rows[resolved]] = estimate[resolved]
            method[rows[resolved]] = METHOD_INTEGRAL
    radius = _smooth_along_centerlines(points_mm, radius, np.maximum(np.nan_to_num(radius), 2.0 * mean_spacing))
    return Centerlines(index_full, radius, method, tangents, box, distance)


def _smooth_along_centerlines(points_mm: np.ndarray, radius_mm: np.ndarray, reach_mm: np.ndarray) -> np.ndarray:
    """Median of the resolved radii within ``reach_mm`` of each resolved point.

    One point's radius scatters by a fraction of a voxel (digitisation, noise);
    a vessel keeps its radius over a length comparable to it, so the median along
    that length is the better estimate. Unresolved points stay unresolved.
    """
    resolved = np.flatnonzero(np.isfinite(radius_mm))
    if len(resolved) < 2:
        return radius_mm
    tree = cKDTree(points_mm[resolved])
    smoothed = radius_mm.copy()
    for row, neighbours in zip(resolved, tree.query_ball_point(points_mm[resolved], reach_mm[resolved]), strict=True):
        smoothed[row] = np.median(radius_mm[resolved[neighbours]])
    return smoothed


def _background_integrals(
    excess: np.ndarray,
    spacing: np.ndarray,
    vessel_points_mm: np.ndarray,
    region: np.ndarray | None,
    tube_radius_mm: float,
    half_length_mm: float,
    rng: np.random.Generator,
    samples: int = 300,
) -> tuple[float, float]:
    """Median and robust SD of the tube integral at random places away from vessels.

    The median is the background's own contribution (non-zero where the noise is
    skewed, e.g. clipped at -1024 HU); the SD includes the noise correlation.
    """
    reach_voxels = np.ceil((tube_radius_mm + half_length_mm) / spacing).astype(int) + 1
    reach_mm = float(np.linalg.norm(reach_voxels * spacing))
    inner = tuple(slice(r, n - r) for r, n in zip(reach_voxels, excess.shape, strict=True))
    allowed = np.zeros(excess.shape, dtype=bool)
    allowed[inner] = True if region is None else region[inner]
    candidates = np.flatnonzero(allowed)
    if len(candidates) == 0:
        return 0.0, 0.0
    drawn = rng.choice(candidates, size=min(20 * samples, len(candidates)), replace=False)
    centres = np.stack(np.unravel_index(drawn, excess.shape), axis=1)
    if len(vessel_points_mm):
        distance, _ = cKDTree(vessel_points_mm).query(centres * spacing, distance_upper_bound=reach_mm)
        centres = centres[~np.isfinite(distance)]
    centres = centres[:samples]
    if len(centres) < 10:
        return 0.0, 0.0
    tangents = rng.normal(size=(len(centres), 3))
    tangents /= np.linalg.norm(tangents, axis=1, keepdims=True)
    radius = np.full(len(centres), tube_radius_mm)
    integrals = _tube_integrals(excess, spacing, centres, tangents, radius, half_length_mm)
    median = float(np.median(integrals))
    return median, 1.4826 * float(np.median(np.abs(integrals - median)))
