"""CT image-quality metrics following AAPM TG-233.

Noise SD, the 2D noise power spectrum (NPS) and its radial average, the task transfer
function (TTF) from a circular edge, the contrast-to-noise ratio (CNR) and the
detectability index d' of the non-prewhitening (NPW) and non-prewhitening-with-eye-
filter (NPWE) observers. Every function takes arrays ``[k, j, i]`` with their
spacing in mm and works on axial slices (the ``j, i`` plane); frequencies are in
cycles per mm.

References: Samei E. et al., "Performance evaluation of computed tomography systems:
The report of AAPM Task Group 233", Med Phys 46 (2019) e735; Richard S., Husarik D.,
Yadava G., Murphy S., Samei E., "Towards task-based assessment of CT performance",
Med Phys 39 (2012) 4115.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage, special
from scipy.integrate import trapezoid

from ImagInfoExtension.geometry import ImageGrid, mask_bounding_box
from ImagInfoExtension.io import read_image

#: TG-233's largest recommended NPS ROI (pixels per side).
MAX_NPS_ROI_PX = 64
#: Below this side (pixels) an NPS is too coarse to report.
MIN_NPS_ROI_PX = 8
#: Enough ROIs for a stable ensemble NPS; more only cost time.
MAX_NPS_ROIS = 600


@dataclass(frozen=True)
class SquareRois:
    """Square ROIs on axial slices: slice ``k`` and top-left corner ``(j, i)``."""

    size_px: int
    corners_kji: np.ndarray

    def __len__(self) -> int:
        return len(self.corners_kji)

    def mask(self, shape_kji: Sequence[int]) -> np.ndarray:
        """The ROIs as a boolean image (for display)."""
        mask = np.zeros(shape_kji, dtype=bool)
        for k, j, i in self.corners_kji:
            mask[k, j : j + self.size_px, i : i + self.size_px] = True
        return mask


def place_square_rois(
    region: np.ndarray,
    max_size_px: int = MAX_NPS_ROI_PX,
    min_size_px: int = MIN_NPS_ROI_PX,
    min_count: int = 30,
    max_count: int = MAX_NPS_ROIS,
) -> SquareRois:
    """Tile a uniform region with non-overlapping square ROIs, as large as it allows.

    The side is the largest (from ``max_size_px`` down to ``min_size_px``, even
    numbers) that gives at least ``min_count`` ROIs over all slices; ROIs lie wholly
    inside ``region``.

    Parameters
    ----------
    region : ndarray of bool, ``[k, j, i]``
        The uniform material (e.g. the PMMA wall, eroded from its edges).

    Raises
    ------
    ValueError
        When not even ``min_count`` ROIs of ``min_size_px`` fit.
    """
    region = np.asarray(region, dtype=bool)
    # The region's summed-area table says where a square fits; it serves every size.
    inside = np.pad(region, ((0, 0), (1, 0), (1, 0))).astype(np.int32).cumsum(1).cumsum(2)
    sizes = list(range(max_size_px - max_size_px % 2, min_size_px - 1, -2))
    # Sizes that fit nowhere hold no ROI: start from the largest that fits somewhere
    # (fitting is monotone in the size, so a bisection finds it).
    low, high = 0, len(sizes)
    while low < high:
        middle = (low + high) // 2
        if _fitting_corners(inside, sizes[middle]).any():
            high = middle
        else:
            low = middle + 1
    best: SquareRois | None = None
    for size in sizes[low:]:
        corners = _greedy_squares(region, _fitting_corners(inside, size), size, max_count)
        if len(corners) >= min_count:
            return SquareRois(size, corners)
        if best is None or len(corners) > len(best):
            best = SquareRois(size, corners)
    found = 0 if best is None else len(best)
    raise ValueError(
        f"the uniform region holds only {found} square ROI(s) of {min_size_px} pixels, fewer than {min_count}; "
        "give a larger uniform region (a water or PMMA section) for the noise power spectrum"
    )


def _fitting_corners(inside: np.ndarray, size: int) -> np.ndarray:
    """Top-left corners ``[k, j, i]`` where a ``size`` square lies wholly in the region (from its summed-area table)."""
    return (
        inside[:, size:, size:] - inside[:, :-size, size:] - inside[:, size:, :-size] + inside[:, :-size, :-size]
    ) == size * size


def _greedy_squares(region: np.ndarray, full: np.ndarray, size: int, max_count: int) -> np.ndarray:
    slices = np.flatnonzero(full.any(axis=(1, 2)))
    corners: list[tuple[int, int, int]] = []
    # Spread the ROIs over the slices when there are more than needed.
    per_slice = max(1, int(np.ceil(max_count / max(1, len(slices)))))
    for k in slices:
        taken = np.zeros(region.shape[1:], dtype=bool)
        count = 0
        for j, i in np.argwhere(full[k]):
            if taken[j, i]:
                continue
            corners.append((int(k), int(j), int(i)))
            taken[max(0, j - size + 1) : j + size, max(0, i - size + 1) : i + size] = True
            count += 1
            if count >= per_slice:
                break
    return np.array(corners, dtype=int).reshape(-1, 3)


#: Rayleigh quantiles: the ``q``-quantile of ``|g|`` for an isotropic 2D Gaussian ``g`` of
#: per-component SD ``s`` is ``s * sqrt(-2 ln(1 - q))``.
_RAYLEIGH_LOWER_QUARTILE = float(np.sqrt(-2.0 * np.log(0.75)))
#: Upper over lower quartile of ``|g|`` for a Gaussian ``g`` (half-normal): 3.61, whatever its SD.
HALF_NORMAL_QUARTILE_RATIO = float(special.erfinv(0.75) / special.erfinv(0.25))
#: Pixels finer than this (mm) are block-averaged before the search: edges and noise
#: statistics are still resolved, and a 512 x 512 slice costs a quarter.
_SEARCH_PIXEL_MM = 0.8


def find_uniform_regions(
    array: np.ndarray,
    spacing_kji: Sequence[float],
    margin_mm: float = 1.5,
    window_mm: float = 8.0,
    edge_scale_mm: float = 0.7,
    edge_threshold: float = 6.0,
    flatness: float = 2.0,
    sd_tolerance: float = 1.5,
    max_gradient_quartile_ratio: float = 4.5,
    air_below_hu: float = -900.0,
    clip_hu: float = -1024.0,
    min_roi_px: int = MIN_NPS_ROI_PX,
    min_volume_fraction: float = 0.1,
) -> np.ndarray:
    """Uniform regions of any CT scan, for noise ROIs: flat, stable noise, away from edges.

    For the noise SD and NPS on any phantom (a water cylinder, a Catphan or ACR
    uniformity module, a slab) as well as on ImagInfo's own. A voxel belongs to the
    result when some ``window_mm`` × ``window_mm`` in-plane window on its slice that
    contains it passes tests 1-4, and it lies more than ``margin_mm`` from any edge or
    air voxel. The region is then cut into in-plane pieces, which must pass test 5;
    of the connected 3D regions left (face connectivity), those that can hold a
    ``min_roi_px`` square ROI on some slice are kept, the largest and every one with
    at least ``min_volume_fraction`` of its volume.

    1. **No air, no clipping.** The window holds no voxel at or below ``clip_hu`` (the
       scanner's lower clip, which cuts the noise off and so makes it artificially
       low) and no voxel whose smoothed value (Gaussian of SD ``edge_scale_mm``) is
       below ``air_below_hu``.
    2. **No edge.** The window holds no edge voxel: one whose in-plane gradient, after
       that smoothing, exceeds ``edge_threshold`` times the gradient's noise scale.
       On noise alone the gradient magnitude is Rayleigh distributed; its scale is
       estimated per slice from the lower quartile over the non-air voxels, which
       edges (they only raise the gradient) cannot inflate unless they cover three
       quarters of the material. At the default 6, noise alone makes an edge voxel
       with probability ``exp(-18)``, 2e-8.
    3. **Flat local mean.** The local mean (over the window, large compared with the
       1-3 mm noise correlation length of clinical kernels) changes across one
       window width by at most ``flatness`` times the slice's reference noise SD:
       ``|in-plane gradient of the mean| * window_mm``. This catches edges too weak
       for test 2, and ramps. Pure noise exceeds the default 2 in under 1 % of
       windows even for blotchy (NPS peak 0.15 mm⁻¹) textures. The ROIs are 2D, so
       the mean may change along z; edges on neighbouring slices are kept away by
       the 3D margin.
    4. **Stable local SD.** The window's SD lies within a factor ``sd_tolerance`` of
       the slice's reference noise SD, the median window SD over the windows that
       pass tests 1 and 2. Windows with streaks or another noise level fail.
    5. **Noise, not texture.** In each in-plane piece of the region, for each
       component of the smoothed gradient, the upper over lower quartile of its
       magnitude is at most ``max_gradient_quartile_ratio``. Gaussian noise gives the
       half-normal 3.61 whatever its level and anisotropy (3.6-3.9 measured on
       streaky low-dose CT noise); edges and texture give heavy tails (6 in a
       lattice of thin rods). Tests 2-4 measure against the image's own statistics,
       so on a slice structured everywhere they would take the structure for noise;
       this test does not depend on them. Pieces too small to hold an ROI are not
       judged.

    The union of the passing windows reaches up to the edges, so the margin is
    measured from the edges themselves (rather than from window centres) and thin
    uniform parts (an 18 mm PMMA base) keep most of their width. Slices are searched
    independently with separable box and Gaussian filters, after block-averaging
    pixels finer than 0.8 mm (the margin is then widened by half a block so that it
    holds at full resolution): a 512 × 512 × 100 volume takes about 2 s with 0.45 mm
    pixels and 5 s with 0.9 mm pixels on two cores.

    Parameters
    ----------
    array : ndarray, ``[k, j, i]``
        CT in HU (any real dtype).
    spacing_kji : sequence of float
        Voxel spacing along the array axes (mm).
    margin_mm : float
        Distance kept from every edge and air voxel, in 3D (so along z too). Edge
        voxels extend as far as an edge's blur stands out from the noise, so the
        distance from the object boundary itself is larger: 3.3-3.5 mm at the default
        for a material-air edge.
    window_mm : float
        Side of the in-plane window of tests 1-4.
    edge_scale_mm : float
        Gaussian SD of the smoothing before the gradient (tests 2 and 5) and the air
        test.
    edge_threshold : float
        Test 2's threshold, in units of the gradient's Rayleigh scale.
    flatness : float
        Test 3's bound on the change of the local mean across a window, in units of
        the reference noise SD.
    sd_tolerance : float
        Test 4's factor (> 1).
    max_gradient_quartile_ratio : float
        Test 5's bound (> 3.61).
    air_below_hu : float
        Smoothed values below this are air (or lung), never a noise region.
    clip_hu : float
        The scanner's lowest stored value; voxels at or below it are clipped.
    min_roi_px : int
        Side (pixels, at full resolution) of the smallest square ROI a region must
        hold (:data:`MIN_NPS_ROI_PX`).
    min_volume_fraction : float
        Regions smaller than this fraction of the largest are dropped (the inside
        of a small insert beside a large uniform section).

    Returns
    -------
    ndarray of bool, ``[k, j, i]``
        For :func:`place_square_rois`. Empty (all False) when the scan has no uniform
        region, such as pure air or structure everywhere: this function does not
        raise for it, the caller says why.
    """
    image = np.asarray(array)
    if image.ndim != 3:
        raise ValueError(f"expected a 3D array [k, j, i], got {image.ndim} dimensions")
    if sd_tolerance <= 1:
        raise ValueError(f"sd_tolerance must exceed 1, got {sd_tolerance}")
    if max_gradient_quartile_ratio <= HALF_NORMAL_QUARTILE_RATIO:
        raise ValueError(
            f"max_gradient_quartile_ratio must exceed Gaussian noise's {HALF_NORMAL_QUARTILE_RATIO:.2f}, "
            f"got {max_gradient_quartile_ratio}"
        )
    dz, dy, dx = (float(v) for v in spacing_kji)
    block = (max(1, int(round(_SEARCH_PIXEL_MM / dy))), max(1, int(round(_SEARCH_PIXEL_MM / dx))))
    search = _Search(
        block=block,
        spacing_kji=(dz, dy * block[0], dx * block[1]),
        window_mm=window_mm,
        edge_scale_mm=edge_scale_mm,
        edge_threshold=edge_threshold,
        flatness=flatness,
        sd_tolerance=sd_tolerance,
        air_below_hu=air_below_hu,
        clip_hu=clip_hu,
    )
    empty = np.zeros(image.shape, dtype=bool)
    coarse_shape = (image.shape[0], -(-image.shape[1] // block[0]), -(-image.shape[2] // block[1]))
    if min(coarse_shape[1:]) < 3:
        return empty
    # Tests 1-4 and 5 work slice by slice: chunks of slices keep the float temporaries
    # small, so that only boolean volumes span a whole CT.
    region = np.zeros(coarse_shape, dtype=bool)
    bad = np.zeros(coarse_shape, dtype=bool)
    for chunk in _slice_chunks(image.shape[0]):
        region[chunk], bad[chunk] = search.passing_windows(image[chunk])
    if not region.any():
        return empty
    # A fine pixel lies up to (block - 1) / 2 pixels from its block's centre.
    widening_mm = 0.5 * float(np.hypot((block[0] - 1) * dy, (block[1] - 1) * dx))
    if bad.any() and margin_mm + widening_mm > 0:
        region &= ~_within_mm(bad, region, search.spacing_kji, margin_mm + widening_mm)
    del bad
    min_roi_blocks = (-(-min_roi_px // block[0]), -(-min_roi_px // block[1]))
    for chunk in _slice_chunks(image.shape[0]):
        if region[chunk].any():
            gradient_ji = search.gradient(search.smoothed(search.reduce(image[chunk])[0]))
            region[chunk] = _drop_textured_pieces(
                region[chunk], gradient_ji, min_roi_blocks[0] * min_roi_blocks[1], max_gradient_quartile_ratio
            )
    region = _largest_regions(region, min_roi_blocks, min_volume_fraction)
    if block != (1, 1):
        region = np.repeat(np.repeat(region, block[0], axis=1), block[1], axis=2)
    return region[:, : image.shape[1], : image.shape[2]]


def _slice_chunks(slices: int, size: int = 16) -> list[slice]:
    return [slice(k, min(slices, k + size)) for k in range(0, slices, size)]


@dataclass(frozen=True)
class _Search:
    """Tests 1-4 of :func:`find_uniform_regions` on a stack of slices (see there)."""

    block: tuple[int, int]
    spacing_kji: tuple[float, float, float]
    window_mm: float
    edge_scale_mm: float
    edge_threshold: float
    flatness: float
    sd_tolerance: float
    air_below_hu: float
    clip_hu: float

    def reduce(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Block means (float32) and whether each block holds a clipped voxel."""
        clipped = image <= self.clip_hu
        if self.block == (1, 1):
            return image.astype(np.float32), clipped
        bj, bi = self.block
        pad = ((0, 0), (0, -image.shape[1] % bj), (0, -image.shape[2] % bi))
        padded = np.pad(image.astype(np.float32), pad, mode="edge")
        clipped = np.pad(clipped, pad, mode="edge")
        # One strided view per position in the block: far faster than reducing short axes.
        coarse = np.zeros((image.shape[0], padded.shape[1] // bj, padded.shape[2] // bi), dtype=np.float32)
        any_clipped = np.zeros(coarse.shape, dtype=bool)
        for oj in range(bj):
            for oi in range(bi):
                coarse += padded[:, oj::bj, oi::bi]
                any_clipped |= clipped[:, oj::bj, oi::bi]
        coarse /= np.float32(bj * bi)
        return coarse, any_clipped

    def smoothed(self, image: np.ndarray) -> np.ndarray:
        """In-plane Gaussian smoothing at ``edge_scale_mm``."""
        _, dy, dx = self.spacing_kji
        return ndimage.gaussian_filter(image, (0.0, self.edge_scale_mm / dy, self.edge_scale_mm / dx), truncate=3.0)

    def gradient(self, smoothed: np.ndarray) -> list[np.ndarray]:
        """In-plane gradient (HU/mm), ``[d/dj, d/di]``."""
        _, dy, dx = self.spacing_kji
        return list(np.gradient(smoothed, dy, dx, axis=(1, 2)))

    def passing_windows(self, fine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The union of the windows that pass tests 1-4, and the edge and air voxels (on the block grid)."""
        _, dy, dx = self.spacing_kji
        image, clipped = self.reduce(fine)
        window = (1, _odd_pixels(self.window_mm, dy), _odd_pixels(self.window_mm, dx))
        smoothed = self.smoothed(image)
        bad = clipped | (smoothed < self.air_below_hu)
        gradient = np.hypot(*self.gradient(smoothed))
        del smoothed
        scale = _per_slice_statistic(gradient, ~bad, lambda v: np.percentile(v, 25) / _RAYLEIGH_LOWER_QUARTILE)
        bad |= gradient > self.edge_threshold * scale[:, None, None]
        del gradient
        # A slice with too little material for a noise estimate cannot be judged.
        bad[~np.isfinite(scale)] = True
        usable = ~ndimage.maximum_filter(bad, size=window)

        mean = ndimage.uniform_filter(image, window)
        deviation = image - mean
        deviation *= deviation
        local_sd = np.sqrt(ndimage.uniform_filter(deviation, window))
        del deviation
        reference_sd = _per_slice_statistic(local_sd, usable, np.median)[:, None, None]
        accepted = usable & (local_sd <= self.sd_tolerance * reference_sd)
        accepted &= local_sd >= reference_sd / self.sd_tolerance
        del local_sd, usable
        slope_j, slope_i = np.gradient(mean, dy, dx, axis=(1, 2))
        del mean
        slope_j *= slope_j
        slope_i *= slope_i
        slope_j += slope_i
        del slope_i
        accepted &= slope_j <= (self.flatness * reference_sd / self.window_mm) ** 2
        del slope_j
        # The union of the passing windows reaches up to the edges; the margin is then
        # measured from the edges themselves rather than from the windows' centres.
        region = ndimage.maximum_filter(accepted, size=window)
        region &= ~bad
        return region, bad


def _odd_pixels(length_mm: float, spacing_mm: float) -> int:
    pixels = max(3, int(round(length_mm / spacing_mm)))
    return pixels + 1 - pixels % 2


def _per_slice_statistic(values: np.ndarray, where: np.ndarray, statistic, min_count: int = 64) -> np.ndarray:
    """``statistic`` of ``values[k][where[k]]`` for each slice; NaN where fewer than ``min_count`` voxels.

    Every other pixel is enough for a quantile when the slice is large, and halves the time.
    """
    step = 2 if values.shape[1] * values.shape[2] > 128 * 128 else 1
    result = np.full(values.shape[0], np.nan, dtype=np.float32)
    for k in range(values.shape[0]):
        sample = values[k, ::step, ::step][where[k, ::step, ::step]]
        if sample.size >= min_count:
            result[k] = statistic(sample)
    return result


def _within_mm(source: np.ndarray, where: np.ndarray, spacing_kji: Sequence[float], distance_mm: float) -> np.ndarray:
    """Voxels within ``distance_mm`` (Euclidean, 3D) of ``source``, evaluated around ``where`` only."""
    reach = [int(np.ceil(distance_mm / s)) + 1 for s in spacing_kji]
    box = mask_bounding_box(where, reach)
    result = np.zeros(source.shape, dtype=bool)
    part = source[box]
    if part.any():
        result[box] = _within_distance(part, spacing_kji, distance_mm)
    return result


def _within_distance(mask: np.ndarray, spacing_kji: Sequence[float], distance_mm: float) -> np.ndarray:
    """Voxels whose Euclidean distance from ``mask`` is at most ``distance_mm`` (exact Maurer transform)."""
    source = sitk.GetImageFromArray(np.ascontiguousarray(mask).view(np.uint8))
    source.SetSpacing([float(s) for s in spacing_kji[::-1]])
    squared = sitk.SignedMaurerDistanceMap(
        source, insideIsPositive=False, squaredDistance=True, useImageSpacing=True, backgroundValue=0
    )
    # The view is read while ``squared`` is alive; inside the mask the distance is negative.
    return sitk.GetArrayViewFromImage(squared) <= distance_mm**2


def _largest_regions(region: np.ndarray, min_roi_px: tuple[int, int], min_volume_fraction: float) -> np.ndarray:
    """The connected regions that hold a ``min_roi_px`` square: the largest and those near its size."""
    result = np.zeros(region.shape, dtype=bool)
    box = mask_bounding_box(region)
    part = region[box]
    labels, count = ndimage.label(part)
    if count == 0:
        return result
    # A square fits where the minimum over the square's footprint is still inside.
    fits = ndimage.minimum_filter(part, size=(1, *min_roi_px), mode="constant", cval=0)
    holds = np.bincount(labels[fits], minlength=count + 1) > 0
    holds[0] = False
    volumes = np.bincount(labels.ravel(), minlength=count + 1)
    volumes[~holds] = 0
    if volumes.max() == 0:
        return result
    keep = volumes >= max(1.0, min_volume_fraction * volumes.max())
    keep[0] = False
    result[box] = keep[labels]
    return result


def _drop_textured_pieces(
    region: np.ndarray, gradient_ji: Sequence[np.ndarray], min_pixels: int, max_quartile_ratio: float
) -> np.ndarray:
    """Remove the in-plane connected pieces of ``region`` whose gradient is not Gaussian noise's.

    Pieces are judged slice by slice, so that structured slices (another module of a
    QA phantom) do not take the uniform slices beside them down with them. Pieces of
    fewer than ``min_pixels`` pixels give too noisy a quartile ratio to judge; they
    cannot hold an ROI anyway.
    """
    in_plane = np.zeros((3, 3, 3), dtype=bool)
    in_plane[1] = ndimage.generate_binary_structure(2, 1)
    labels, count = ndimage.label(region, in_plane)
    if count == 0:
        return region
    piece = labels[region]
    order = np.argsort(piece, kind="stable")
    bounds = np.searchsorted(piece[order], np.arange(1, count + 2))
    textured = np.zeros(count + 1, dtype=bool)
    for component in gradient_ji:
        magnitude = np.abs(component[region])[order]
        for label in range(1, count + 1):
            values = magnitude[bounds[label - 1] : bounds[label]]
            if len(values) >= min_pixels:
                lower, upper = np.percentile(values, [25, 75])
                textured[label] |= not upper <= max_quartile_ratio * lower
    if not textured.any():
        return region
    return region & ~textured[labels]


def read_noise_roi(path_or_image: str | Path | sitk.Image, reference_image: sitk.Image) -> np.ndarray:
    """A user's uniform region for the noise ROIs, from a label map or mask, on the image's grid.

    Any nonzero voxel is uniform (every label of a label map counts). When the mask's
    grid differs from the reference image's, it is resampled onto it by nearest
    neighbour through physical (LPS) coordinates, so a mask drawn on another
    reconstruction of the same scan, or cropped, still lands where it was drawn.

    Parameters
    ----------
    path_or_image : str, Path or SimpleITK.Image
        A 3D label map or mask file (NRRD, NIfTI, MHA, a DICOM folder) or image.
    reference_image : SimpleITK.Image
        The 3D scan the noise is measured on.

    Returns
    -------
    ndarray of bool, ``[k, j, i]``
        On the reference image's grid; pass it to :func:`place_square_rois`.

    Raises
    ------
    FileNotFoundError
        When the path does not exist.
    ValueError
        When the file cannot be read or is not 3D, when the mask has no nonzero voxel,
        or when none of its voxels falls on the image (each message says what to fix).
    """
    if isinstance(path_or_image, sitk.Image):
        roi, name = path_or_image, "the noise ROI"
    else:
        roi, name = read_image(path_or_image), f"the noise ROI {path_or_image}"
    if roi.GetDimension() != 3 or reference_image.GetDimension() != 3:
        raise ValueError(
            f"{name} is {roi.GetDimension()}D and the image {reference_image.GetDimension()}D; "
            "both must be 3D volumes: save the label map as a volume over the scan"
        )
    values = sitk.GetArrayViewFromImage(roi)
    mask = values != 0
    if mask.ndim == 4:  # a multi-component image: a voxel is in the ROI when any component is nonzero
        mask = mask.any(axis=-1)
    if not mask.any():
        raise ValueError(
            f"{name} has no nonzero voxel: paint the uniform region (any label value but 0) and save it again"
        )
    roi_grid, image_grid = ImageGrid.from_sitk(roi), ImageGrid.from_sitk(reference_image)
    if roi_grid.same_as(image_grid):
        return mask
    source = sitk.GetImageFromArray(mask.astype(np.uint8))
    # Geometry only: CopyInformation refuses a multi-component source.
    source.SetOrigin(roi.GetOrigin())
    source.SetSpacing(roi.GetSpacing())
    source.SetDirection(roi.GetDirection())
    resampled = sitk.Resample(source, reference_image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    result = sitk.GetArrayFromImage(resampled) > 0
    if result.any():
        return result
    if _boxes_overlap(roi_grid, mask, image_grid):
        raise ValueError(
            f"{name} lies within the image but is too thin to hit any of its voxel centres "
            f"(image spacing {tuple(round(s, 3) for s in image_grid.spacing_mm)} mm); "
            "draw the region over at least one whole voxel of the scan, or on the scan itself"
        )
    raise ValueError(
        f"{name} does not overlap the image: its nonzero voxels lie outside the scan's extent. "
        "Draw the label map on this scan (or a series of the same acquisition, same patient "
        "coordinates), and check its origin and direction"
    )


def _boxes_overlap(roi_grid: ImageGrid, mask: np.ndarray, image_grid: ImageGrid) -> bool:
    """Whether the mask's nonzero voxels and the image overlap in space (voxel extents, LPS bounding boxes)."""
    box = mask_bounding_box(mask)
    corners_ijk = np.array(
        [[(s.start - 0.5, s.stop - 0.5)[b >> a & 1] for a, s in enumerate(box[::-1])] for b in range(8)]
    )
    points = roi_grid.physical_from_index(corners_ijk)
    inside = image_grid.index_from_physical(points)
    lower, upper = inside.min(axis=0), inside.max(axis=0)
    size = np.asarray(image_grid.size_ijk)
    return bool(np.all(upper >= -0.5) and np.all(lower <= size - 0.5))


def _roi_stack(image: np.ndarray, rois: SquareRois) -> np.ndarray:
    s = rois.size_px
    return np.stack([image[k, j : j + s, i : i + s] for k, j, i in rois.corners_kji]).astype(np.float64)


def _detrend(stack: np.ndarray) -> np.ndarray:
    """Remove a plane fitted to each ROI (TG-233: first-order detrending)."""
    s = stack.shape[-1]
    y, x = np.mgrid[:s, :s].astype(float)
    design = np.stack([np.ones(s * s), y.ravel(), x.ravel()], axis=1)
    flat = stack.reshape(len(stack), -1)
    coefficients, *_ = np.linalg.lstsq(design, flat.T, rcond=None)
    return (flat - (design @ coefficients).T).reshape(stack.shape)


def noise_sd_hu(image: np.ndarray, rois: SquareRois) -> float:
    """Pooled noise SD (HU) over the ROIs, each first detrended by a plane.

    The plane takes 3 degrees of freedom per ROI; the pooled variance is corrected
    for them.
    """
    residual = _detrend(_roi_stack(image, rois))
    pixels = rois.size_px**2
    return float(np.sqrt(np.sum(residual**2) / (len(residual) * (pixels - 3))))


@dataclass(frozen=True)
class NoisePowerSpectrum:
    """A 2D NPS and its radial average.

    Attributes
    ----------
    frequency_per_mm : ndarray
        Radial bin centres (cycles/mm).
    nps_hu2_mm2 : ndarray
        Radially averaged NPS (HU² mm²).
    nps_2d_hu2_mm2 : ndarray
        The 2D NPS, zero frequency at the centre (``fftshift`` order).
    fy_per_mm, fx_per_mm : ndarray
        Frequencies along the 2D NPS axes (``j`` and ``i``).
    roi_size_px, roi_count : int
    """

    frequency_per_mm: np.ndarray
    nps_hu2_mm2: np.ndarray
    nps_2d_hu2_mm2: np.ndarray
    fy_per_mm: np.ndarray
    fx_per_mm: np.ndarray
    roi_size_px: int
    roi_count: int

    @property
    def variance_hu2(self) -> float:
        """The integral of the 2D NPS, which equals the pixel variance."""
        df = (self.fy_per_mm[1] - self.fy_per_mm[0]) * (self.fx_per_mm[1] - self.fx_per_mm[0])
        return float(self.nps_2d_hu2_mm2.sum() * df)

    @property
    def peak_frequency_per_mm(self) -> float:
        """Frequency of the radial NPS maximum, refined by a parabola.

        On a coarse spectrum (small ROIs: fewer than 5 bins within 25 % of the
        maximum's frequency) the parabola passes through the maximum and its two
        neighbours. On a finer one the maximum is looked for on the profile averaged
        over 3 bins, and the parabola is fitted by least squares to the bins within
        25 % of its frequency: the peak of a ramp-times-Gaussian NPS is so flat (1.5 %
        lower one bin away from it with 64-pixel ROIs) that a parabola through three
        bins follows their noise. That fit's bias is under 1 % for such shapes.
        """
        values, f = self.nps_hu2_mm2, self.frequency_per_mm
        n = int(np.argmax(values))
        if not 0 < n < len(values) - 1:
            return float(f[n])
        step = float(np.min(np.diff(f)))
        if 0.25 * f[n] < 2 * step:
            left, centre, right = values[n - 1 : n + 2]
            curvature = left - 2 * centre + right
            if curvature < 0:
                return float(f[n] + 0.5 * (left - right) / curvature * step)
            return float(f[n])
        n = int(np.argmax(ndimage.uniform_filter1d(values, 3, mode="nearest")))
        half = 0.25 * float(f[n])
        near = np.abs(f - f[n]) <= half
        if near.sum() < 3:
            return float(f[n])
        curvature, slope, _ = np.polyfit(f[near], values[near], 2)
        if curvature >= 0:
            return float(f[n])
        return float(np.clip(-slope / (2 * curvature), f[n] - half, f[n] + half))

    @property
    def average_frequency_per_mm(self) -> float:
        """NPS-weighted mean radial frequency over the 2D spectrum (TG-233's f_av)."""
        fy, fx = np.meshgrid(self.fy_per_mm, self.fx_per_mm, indexing="ij")
        radius = np.hypot(fy, fx)
        return float(np.sum(radius * self.nps_2d_hu2_mm2) / np.sum(self.nps_2d_hu2_mm2))

    def at(self, frequency_per_mm: np.ndarray) -> np.ndarray:
        """The radial NPS interpolated at the given frequencies (held flat beyond its ends)."""
        return np.interp(frequency_per_mm, self.frequency_per_mm, self.nps_hu2_mm2)


def noise_power_spectrum(
    image: np.ndarray, pixel_spacing_ji_mm: Sequence[float], rois: SquareRois
) -> NoisePowerSpectrum:
    """Ensemble 2D NPS over square ROIs, and its radial average.

    ``NPS(fy, fx) = dy dx / (Ny Nx) <|DFT(ROI - fitted plane)|²>``; its integral is the
    variance of the detrended pixels.

    Parameters
    ----------
    image : ndarray, ``[k, j, i]``
    pixel_spacing_ji_mm : (float, float)
        Pixel spacing along ``j`` and ``i`` (mm).
    rois : SquareRois
    """
    dy, dx = (float(v) for v in pixel_spacing_ji_mm)
    s = rois.size_px
    residual = _detrend(_roi_stack(image, rois))
    power = np.mean(np.abs(np.fft.fft2(residual)) ** 2, axis=0) * dy * dx / (s * s)
    # The plane fit removed 3 of s² degrees of freedom from each ROI's power.
    power *= s * s / (s * s - 3)
    nps_2d = np.fft.fftshift(power)
    fy = np.fft.fftshift(np.fft.fftfreq(s, dy))
    fx = np.fft.fftshift(np.fft.fftfreq(s, dx))
    grid_y, grid_x = np.meshgrid(fy, fx, indexing="ij")
    radius = np.hypot(grid_y, grid_x)
    step = max(fy[1] - fy[0], fx[1] - fx[0])
    bins = np.rint(radius / step).astype(int)
    keep = (bins > 0) & (radius <= min(abs(fy[0]), abs(fx[0])))
    counts = np.bincount(bins[keep])
    sums = np.bincount(bins[keep], weights=nps_2d[keep])
    filled = counts > 0
    return NoisePowerSpectrum(
        frequency_per_mm=np.arange(len(counts))[filled] * step,
        nps_hu2_mm2=sums[filled] / counts[filled],
        nps_2d_hu2_mm2=nps_2d,
        fy_per_mm=fy,
        fx_per_mm=fx,
        roi_size_px=s,
        roi_count=len(rois),
    )


@dataclass(frozen=True)
class TaskTransferFunction:
    """The TTF of a circular edge.

    Attributes
    ----------
    frequency_per_mm, ttf : ndarray
    esf_radius_mm, esf_hu : ndarray
        The radial edge-spread function (median of each radial bin).
    contrast_hu : float
        Inside minus outside plateau.
    edge_radius_mm : float
        Where the ESF crosses half-way.
    slices : int
        Slices averaged.
    """

    frequency_per_mm: np.ndarray
    ttf: np.ndarray
    esf_radius_mm: np.ndarray
    esf_hu: np.ndarray
    contrast_hu: float
    edge_radius_mm: float
    slices: int

    def frequency_at(self, level: float) -> float:
        """First frequency (cycles/mm) where the TTF falls to ``level``; NaN if it never does."""
        below = np.flatnonzero(self.ttf < level)
        if len(below) == 0 or below[0] == 0:
            return float("nan")
        n = below[0]
        f0, f1, t0, t1 = self.frequency_per_mm[n - 1], self.frequency_per_mm[n], self.ttf[n - 1], self.ttf[n]
        return float(f0 + (t0 - level) * (f1 - f0) / (t0 - t1))

    @property
    def ttf50_per_mm(self) -> float:
        return self.frequency_at(0.5)

    @property
    def ttf10_per_mm(self) -> float:
        return self.frequency_at(0.1)

    def at(self, frequency_per_mm: np.ndarray) -> np.ndarray:
        return np.interp(frequency_per_mm, self.frequency_per_mm, self.ttf, right=0.0)


def fit_disk_centres(disk: np.ndarray, spacing_kji: Sequence[float]) -> np.ndarray:
    """Centre ``(j, i)`` (pixels) of a disk on each slice, from a straight-axis fit.

    ``disk`` marks the object on each slice (e.g. thresholded half-way); the
    per-slice centroids are fitted with a straight line along ``k`` so that noise on
    one slice does not move its centre.

    Returns
    -------
    ndarray (K, 2)
        NaN on slices without the disk.
    """
    slices = np.flatnonzero(disk.any(axis=(1, 2)))
    if len(slices) == 0:
        raise ValueError("no circular object found for the TTF; place the edge ROI on a round insert")
    centroids = np.array([ndimage.center_of_mass(disk[k]) for k in slices])
    centres = np.full((disk.shape[0], 2), np.nan)
    if len(slices) >= 3:
        z = slices * float(spacing_kji[0])
        design = np.stack([np.ones_like(z), z], axis=1)
        coefficients, *_ = np.linalg.lstsq(design, centroids, rcond=None)
        centres[slices] = design @ coefficients
    else:
        centres[slices] = centroids
    return centres


def task_transfer_function(
    image: np.ndarray,
    spacing_kji: Sequence[float],
    centres_ji: np.ndarray,
    radius_mm: float,
    bin_fraction: float = 0.1,
) -> TaskTransferFunction:
    """TTF of a bright (or dark) disk seen on axial slices (Richard et al. 2012).

    Pixels within ``radius_mm`` on either side of the edge are binned by their
    distance from the disk centre, in bins of ``bin_fraction`` pixel; each bin's
    median forms the edge-spread function (the median is robust to the -1024 HU
    clipping of air). Its derivative, Hann-windowed, is Fourier transformed and
    normalised at zero frequency.

    Parameters
    ----------
    image : ndarray, ``[k, j, i]``
    spacing_kji : sequence of float
    centres_ji : ndarray (K, 2)
        Disk centre per slice in pixels; NaN rows are skipped (see :func:`fit_disk_centres`).
    radius_mm : float
        Nominal disk radius.
    """
    dy, dx = float(spacing_kji[1]), float(spacing_kji[2])
    pixel = float(np.sqrt(dy * dx))
    reach = 2.0 * radius_mm
    distances, values = [], []
    used = 0
    for k in np.flatnonzero(np.isfinite(centres_ji[:, 0])):
        cj, ci = centres_ji[k]
        j0, j1 = max(0, int(cj - reach / dy) - 1), min(image.shape[1], int(cj + reach / dy) + 2)
        i0, i1 = max(0, int(ci - reach / dx) - 1), min(image.shape[2], int(ci + reach / dx) + 2)
        jj, ii = np.mgrid[j0:j1, i0:i1]
        r = np.hypot((jj - cj) * dy, (ii - ci) * dx)
        near = r <= reach
        distances.append(r[near])
        values.append(image[k, j0:j1, i0:i1][near].astype(np.float64))
        used += 1
    if used == 0:
        raise ValueError("no slice holds the edge; check the disk centre and radius")
    r = np.concatenate(distances)
    v = np.concatenate(values)
    step = bin_fraction * pixel
    bins = np.floor(r / step).astype(int)
    order = np.argsort(bins, kind="stable")
    bins, v = bins[order], v[order]
    starts = np.flatnonzero(np.r_[True, np.diff(bins) > 0])
    ends = np.r_[starts[1:], len(bins)]
    filled_r = (bins[starts] + 0.5) * step
    filled = np.array([np.median(v[a:b]) for a, b in zip(starts, ends, strict=True)])
    # A small disk centred on the pixel lattice offers few distinct distances, leaving
    # bins empty; they are filled linearly so that the ESF is uniformly sampled.
    esf_r = (np.arange(bins[0], bins[-1] + 1) + 0.5) * step
    esf = np.interp(esf_r, filled_r, filled)
    # Bins near the centre hold few pixels; start where the ring is well sampled.
    start = esf_r >= max(0.25 * radius_mm, 2 * pixel)
    esf_r, esf = esf_r[start], esf[start]
    # A running mean over half a pixel tames the noise of single bins; its own transfer
    # (a sinc) is divided out of the TTF below.
    smoothing_bins = max(1, int(round(0.5 / bin_fraction)))
    esf = ndimage.uniform_filter1d(esf, smoothing_bins, mode="nearest")
    inside = float(np.median(esf[esf_r < radius_mm - 0.5 * radius_mm]))
    outside = float(np.median(esf[esf_r > radius_mm + 0.5 * radius_mm]))
    contrast = inside - outside
    if abs(contrast) <= 0:
        raise ValueError("the disk has no contrast against its surroundings; pick another edge")
    normalised = (esf - outside) / contrast
    crossing = np.flatnonzero(np.diff(np.sign(normalised - 0.5)) != 0)
    edge = float(esf_r[crossing[0]]) if len(crossing) else radius_mm
    lsf = -np.gradient(normalised, esf_r)
    window = np.hanning(len(lsf))
    # Centre the window on the edge rather than on the sampled range.
    shift = np.interp(esf_r, esf_r - (edge - 0.5 * (esf_r[0] + esf_r[-1])), window, left=0.0, right=0.0)
    lsf = lsf * shift
    size = 1 << int(np.ceil(np.log2(max(4 * len(lsf), 1024))))
    spectrum = np.abs(np.fft.rfft(lsf, size))
    frequency = np.fft.rfftfreq(size, step)
    # The radial ESF is oversampled (bins of a tenth of a pixel), so the TTF is known
    # beyond the pixel Nyquist frequency; TG-233 reports it up to the sampling frequency.
    keep = frequency <= 1.0 / pixel
    ttf = spectrum / spectrum[0] / np.abs(np.sinc(frequency * smoothing_bins * step))
    return TaskTransferFunction(
        frequency_per_mm=frequency[keep],
        ttf=ttf[keep],
        esf_radius_mm=esf_r,
        esf_hu=esf,
        contrast_hu=contrast,
        edge_radius_mm=edge,
        slices=used,
    )


@dataclass(frozen=True)
class ObserverParameters:
    """The NPWE observer's eye filter ``E(rho) = rho^n exp(-c rho^2)`` (rho in cycles/degree).

    ``c`` puts the filter's peak at ``eye_peak_cycles_per_degree`` (Burgess 1994).
    An image frequency ``f`` (cycles/mm) reaches the eye at
    ``rho = f * viewing_distance_mm * pi / 180 / display_zoom``.
    """

    eye_exponent: float = 1.3
    eye_peak_cycles_per_degree: float = 4.0
    viewing_distance_mm: float = 500.0
    display_zoom: float = 1.0
    internal_noise_fraction: float = 0.0

    def eye_filter(self, frequency_per_mm: np.ndarray) -> np.ndarray:
        rho = frequency_per_mm * self.viewing_distance_mm * np.pi / 180.0 / self.display_zoom
        c = self.eye_exponent / (2.0 * self.eye_peak_cycles_per_degree**2)
        return rho**self.eye_exponent * np.exp(-c * rho**2)


def disk_task_spectrum(frequency_per_mm: np.ndarray, radius_mm: float, contrast_hu: float) -> np.ndarray:
    """Fourier transform (HU mm²) of a disk of the given radius and contrast."""
    f = np.asarray(frequency_per_mm, dtype=float)
    x = 2.0 * np.pi * radius_mm * f
    with np.errstate(invalid="ignore", divide="ignore"):
        shape = np.where(x > 1e-9, 2.0 * special.j1(x) / np.where(x > 1e-9, x, 1.0), 1.0)
    return contrast_hu * np.pi * radius_mm**2 * shape


@dataclass(frozen=True)
class Detectability:
    npw: float
    npwe: float
    task_radius_mm: float
    task_contrast_hu: float
    observer: ObserverParameters = field(default_factory=ObserverParameters)


def detectability_index(
    ttf: TaskTransferFunction | None,
    nps: NoisePowerSpectrum,
    task_radius_mm: float,
    task_contrast_hu: float,
    observer: ObserverParameters | None = None,
    ttf_values: np.ndarray | None = None,
    frequency_per_mm: np.ndarray | None = None,
) -> Detectability:
    """d' of the NPW and NPWE observers for a disk task (TG-233 eq. for radial symmetry).

    ``d'²_NPW = [∫ |W|² TTF² d²f]² / ∫ |W|² TTF² NPS d²f`` and
    ``d'²_NPWE = [∫ |W|² TTF² E² d²f]² / ∫ (|W|² TTF² NPS E⁴ + |W|² TTF² N_i E²) d²f``,
    integrated radially (``d²f = 2 pi f df``) up to the NPS's highest frequency.

    Parameters
    ----------
    ttf : TaskTransferFunction, optional
        Or ``ttf_values`` on ``frequency_per_mm``.
    nps : NoisePowerSpectrum
    task_radius_mm, task_contrast_hu : float
        The disk to detect.
    observer : ObserverParameters, optional
    """
    observer = observer or ObserverParameters()
    top = float(nps.frequency_per_mm[-1])
    f = np.linspace(0.0, top, 2048) if frequency_per_mm is None else np.asarray(frequency_per_mm)
    t = ttf.at(f) if ttf is not None else np.asarray(ttf_values)
    w2t2 = disk_task_spectrum(f, task_radius_mm, task_contrast_hu) ** 2 * t**2
    noise = nps.at(f)
    ring = 2.0 * np.pi * f
    npw = trapezoid(w2t2 * ring, f) ** 2 / trapezoid(w2t2 * noise * ring, f)
    eye = observer.eye_filter(f)
    internal = observer.internal_noise_fraction * float(np.max(noise))
    npwe_num = trapezoid(w2t2 * eye**2 * ring, f) ** 2
    npwe_den = trapezoid((w2t2 * noise * eye**4 + w2t2 * internal * eye**2) * ring, f)
    return Detectability(
        npw=float(np.sqrt(npw)),
        npwe=float(np.sqrt(npwe_num / npwe_den)),
        task_radius_mm=task_radius_mm,
        task_contrast_hu=task_contrast_hu,
        observer=observer,
    )


def contrast_to_noise_ratio(signal_hu: float, background_hu: float, noise_sd: float) -> float:
    """``(signal - background) / noise SD``."""
    if not noise_sd > 0:
        raise ValueError(f"noise SD must be positive to form a CNR, got {noise_sd}")
    return float((signal_hu - background_hu) / noise_sd)
