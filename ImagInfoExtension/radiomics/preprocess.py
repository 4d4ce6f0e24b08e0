"""The IBSI-1 image-processing chain: from an image and its ROI mask to grey levels.

Steps (IBSI-1 reference manual, chapter 2), in order:

1. The image is cast to float64; CT is rounded to whole HU first (the IBSI CT phantom is
   stored as float and IBSI rounds it before processing).
2. Resampling to ``settings.resampled_spacing_mm`` on a grid aligned on centres: the new
   grid keeps the physical centre of the original one, has ``ceil(n s / s_new)`` voxels
   per axis and the original orientation (direction cosines), so it is computed in the
   original grid's index space and works for oblique images too. Spacing 0 keeps an axis
   (in-plane resampling of the 2D configurations). The image is interpolated (linear,
   cubic B-spline or nearest, edges extended by the nearest voxel as in IBSI's reference
   implementation) and rounded to whole numbers when ``settings.round_intensities``.
3. The mask's partial-volume fraction is interpolated linearly on the same grid, its
   edges extended by the nearest voxel as the image's are, and voxels at or above
   ``settings.mask_threshold`` form the morphological mask. (mirp pads the mask with 0
   instead, so where a ROI touches the image border and the new grid's outermost centres
   lie beyond the original ones, it drops those voxels and we keep them; IBSI-1 leaves
   the border open, and no IBSI-1 case has a ROI at the border.)
4. Resegmentation of the intensity mask: the range ``[lower, upper]`` (inclusive),
   then outliers beyond mean ± sigma SD of the range-resegmented ROI.
5. Discretisation (:func:`~ImagInfoExtension.radiomics.discretise.discretise`); fixed
   bins count from the resegmentation range's lower bound when there is one.

Because the new grid has the same orientation as the original one, the interpolation is
a tensor product: it is done one axis at a time (two taps per output voxel per axis for
linear, four for the cubic spline), which gives the same numbers as
``scipy.ndimage.map_coordinates(..., mode="nearest")`` at a fraction of its cost, and
lets any block of the new grid be computed on its own (the ROI's box, or slabs for the
whole-image diagnostics).

:func:`prepare_roi` also reports the IBSI diagnostic values (``img_dim_x_init_img`` …
``int_mask_max_int_reseg_roi``), which the IBSI-1 reference tables list for each CT
configuration.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from .discretise import discretise
from .settings import RadiomicsSettings

#: Least margin kept around the ROI's bounding box in the returned image (mm): local
#: intensity features look up to 6.2 mm (a 1 cm³ sphere) beyond the ROI.
MARGIN_MM = 10.0

#: Interpolators of the settings and their spline orders.
SPLINE_ORDERS = {"nearest": 0, "linear": 1, "bspline": 3}

# scipy.ndimage pads an image by 12 edge voxels before the cubic-spline prefilter in mode
# "nearest"; doing the same gives its numbers at the image border.
_SPLINE_PAD = 12
# The cubic-spline prefilter is recursive and a cut-off image changes the coefficients by
# 0.268^k at k voxels from the cut: 32 voxels of image beyond a block make that < 1e-18.
_PREFILTER_MARGIN = 32
# Whole-image diagnostics are interpolated in slabs of at most this many voxels.
_SLAB_VOXELS = 1 << 22
# Interpolated mask fractions are rounded before the threshold, so that a fraction of
# exactly 0.5 that floating point makes 0.49999999999999994 is kept.
_FRACTION_DECIMALS = 6


@dataclass(frozen=True, eq=False)
class PreparedRoi:
    """An ROI ready for feature extraction.

    Attributes
    ----------
    intensity : ndarray of float64, shape (z, y, x)
        The interpolated (and, when asked, rounded) image, cropped to the ROI's bounding
        box plus at least :data:`MARGIN_MM` on each side (less at the image border).
    morph_mask : ndarray of bool
        Morphological mask: the interpolated mask at or above the threshold.
    int_mask : ndarray of bool
        Intensity mask: the morphological mask after range and outlier resegmentation.
    levels : ndarray of int32
        Discretised grey levels 1..`n_levels` inside `int_mask`, 0 outside.
    n_levels : int
        Number of grey levels.
    spacing_mm : tuple of float
        Voxel spacing (z, y, x) in mm.
    origin_lps_mm : tuple of float
        Physical position (x, y, z, LPS, mm) of the centre of voxel ``[0, 0, 0]`` of the
        cropped arrays.
    direction : tuple of float
        Direction cosines (9 values, row-major, as SimpleITK gives them).
    diagnostics : dict of str to float
        IBSI-1 diagnostic values keyed by their reference tags.
    """

    intensity: np.ndarray
    morph_mask: np.ndarray
    int_mask: np.ndarray
    levels: np.ndarray
    n_levels: int
    spacing_mm: tuple[float, float, float]
    origin_lps_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    diagnostics: dict[str, float] = field(default_factory=dict)


def prepare_roi(
    image: sitk.Image, mask: sitk.Image, settings: RadiomicsSettings, *, whole_image_diagnostics: bool = True
) -> PreparedRoi:
    """Resample, resegment and discretise an ROI as IBSI-1 prescribes.

    Parameters
    ----------
    image : SimpleITK.Image
        Scalar 3D (or 2D) image; any pixel type, any direction cosines.
    mask : SimpleITK.Image
        ROI mask: non-zero voxels are the ROI. On the image's grid, or on another grid
        that lies within the image (it is then resampled onto the image's grid by
        nearest neighbour).
    settings : RadiomicsSettings
        The image-processing settings (``ibsi-C`` …).
    whole_image_diagnostics : bool
        Compute the ``*_interp_img`` diagnostics over the whole interpolated image (slab
        by slab); False leaves them NaN and spares the time on large scans.

    Returns
    -------
    PreparedRoi

    Raises
    ------
    ValueError
        An image that is not scalar, an empty mask, a mask that lies (partly) outside the
        image, NaN or infinite intensities inside the ROI, an ROI that vanishes at the new
        spacing or after resegmentation.
    """
    image = _as_3d(image, "image")
    mask = _as_3d(mask, "mask")
    values = _image_values(image, settings)
    roi = _mask_on_image_grid(image, mask)
    not_finite = int(np.count_nonzero(~np.isfinite(values[roi])))
    if not_finite:
        raise ValueError(
            f"the image has {not_finite} NaN or infinite voxel(s) inside the ROI; fill them (or cut them out of the "
            "mask) before computing features"
        )

    shape = values.shape
    spacing = np.array(image.GetSpacing()[::-1], dtype=np.float64)
    coords, new_spacing = resampling_grid(shape, spacing, settings.resampled_spacing_mm)
    new_shape = tuple(len(c) for c in coords)
    resampled = settings.resampled_spacing_mm is not None
    order = SPLINE_ORDERS[settings.interpolator]

    diagnostics: dict[str, float] = {}
    _describe_image(diagnostics, "init_img", shape, spacing, *_nan_statistics(values))
    _describe_roi(diagnostics, "init_roi", shape, values, roi, roi)

    roi_box = _bounding_box(roi)
    if resampled:
        # Only new voxels within one original voxel of the ROI's box can reach the threshold.
        block = [_index_range(c, low - 1.0, high + 1.0) for c, (low, high) in zip(coords, roi_box)]
        if all(b.stop > b.start for b in block):
            fraction = _sample(roi, [c[b] for c, b in zip(coords, block)], 1)
            morph_block = np.round(fraction, _FRACTION_DECIMALS) >= settings.mask_threshold
        else:
            morph_block = np.zeros(0, dtype=bool)
        if not morph_block.any():
            raise ValueError(
                f"the ROI ({int(roi.sum())} voxels) vanishes when resampled to "
                f"{_xyz(new_spacing[::-1])} mm (x, y, z): no new voxel is covered to {settings.mask_threshold}; "
                "use a finer resampled_spacing_mm or a larger ROI"
            )
        box = [(b.start + low, b.start + high) for b, (low, high) in zip(block, _bounding_box(morph_block))]
    else:
        box = roi_box

    margins = [math.ceil(MARGIN_MM / s - 1e-9) for s in new_spacing]
    crop = tuple(slice(max(low - m, 0), min(high + m + 1, n)) for (low, high), m, n in zip(box, margins, new_shape))
    if resampled:
        if whole_image_diagnostics and math.prod(new_shape) <= _SLAB_VOXELS:
            # Small enough to interpolate whole once: the ROI's block is cut from it.
            whole = _sample(values, coords, order)
            if settings.round_intensities:
                np.round(whole, out=whole)
            statistics = _nan_statistics(whole)
            intensity = whole[crop].copy()
        else:
            intensity = _sample(values, [c[s] for c, s in zip(coords, crop)], order)
            if settings.round_intensities:
                np.round(intensity, out=intensity)
            if whole_image_diagnostics:
                statistics = _resampled_statistics(values, coords, order, settings.round_intensities)
            else:
                statistics = (math.nan, math.nan, math.nan)
        morph_mask = np.zeros(intensity.shape, dtype=bool)
        _paste(morph_mask, crop, morph_block, block)
    else:
        intensity = values[crop].copy()
        morph_mask = roi[crop].copy()
        statistics = (
            diagnostics["mean_int_init_img"],
            diagnostics["min_int_init_img"],
            diagnostics["max_int_init_img"],
        )

    not_finite = int(np.count_nonzero(~np.isfinite(intensity[morph_mask])))
    if not_finite:
        raise ValueError(
            f"{not_finite} voxel(s) of the resampled ROI are NaN or infinite: NaN voxels next to the ROI spread into "
            "it through the interpolation; fill them before computing features"
        )

    _describe_image(diagnostics, "interp_img", new_shape, new_spacing, *statistics)
    _describe_roi(diagnostics, "interp_roi", new_shape, intensity, morph_mask, morph_mask)

    int_mask = resegment(intensity, morph_mask, settings.resegment_range, settings.resegment_outlier_sigma)
    _describe_roi(diagnostics, "reseg_roi", new_shape, intensity, int_mask, morph_mask)

    lower = settings.resegment_range[0] if settings.resegment_range is not None else None
    roi_levels, n_levels = discretise(
        intensity[int_mask],
        settings.discretisation,
        bin_width=settings.bin_width,
        n_bins=settings.n_bins,
        range_min=lower if settings.discretisation == "fixed_bin_size" else None,
    )
    levels = np.zeros(intensity.shape, dtype=np.int32)
    levels[int_mask] = roi_levels

    corner = [float(c[s.start]) for c, s in zip(coords, crop)]
    origin = image.TransformContinuousIndexToPhysicalPoint(corner[::-1])
    return PreparedRoi(
        intensity=intensity,
        morph_mask=morph_mask,
        int_mask=int_mask,
        levels=levels,
        n_levels=int(n_levels),
        spacing_mm=tuple(float(s) for s in new_spacing),
        origin_lps_mm=tuple(float(p) for p in origin),
        direction=tuple(float(d) for d in image.GetDirection()),
        diagnostics=diagnostics,
    )


def resampling_grid(
    shape: Sequence[int], spacing_mm: Sequence[float], resampled_spacing_mm: Sequence[float] | None
) -> tuple[list[np.ndarray], np.ndarray]:
    """The IBSI-1 centre-aligned resampling grid, in the original grid's index space.

    Parameters
    ----------
    shape : sequence of int
        Original grid size (z, y, x).
    spacing_mm : sequence of float
        Original spacing (z, y, x) in mm.
    resampled_spacing_mm : sequence of float or None
        New spacing (x, y, z) in mm, as the settings give it; 0 keeps an axis, None keeps
        the grid.

    Returns
    -------
    coords : list of ndarray
        For each axis (z, y, x), the positions of the new voxel centres in (fractional)
        voxel indices of the original grid: ``(n - 1) / 2 + (k - (n_new - 1) / 2) s_new / s``.
    spacing_mm : ndarray
        New spacing (z, y, x).
    """
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    if resampled_spacing_mm is None:
        return [np.arange(n, dtype=np.float64) for n in shape], spacing.copy()
    wanted = np.asarray(resampled_spacing_mm, dtype=np.float64)[::-1]
    new_spacing = np.where(wanted > 0, wanted, spacing)
    coords = []
    for n, old, new in zip(shape, spacing, new_spacing):
        if new == old:
            coords.append(np.arange(n, dtype=np.float64))
            continue
        # Rounded first: 60 slices of 3 mm at 2 mm are 90 voxels, not ceil(90.00000000001).
        n_new = max(math.ceil(round(n * old / new, 6)), 1)
        step = new / old
        coords.append(0.5 * (n - 1) + (np.arange(n_new) - 0.5 * (n_new - 1)) * step)
    return coords, new_spacing


def resegment(
    intensity: np.ndarray,
    morph_mask: np.ndarray,
    intensity_range: tuple[float | None, float | None] | None = None,
    outlier_sigma: float | None = None,
) -> np.ndarray:
    """The intensity mask: range resegmentation, then outlier removal.

    Parameters
    ----------
    intensity : ndarray of float
        Image (z, y, x).
    morph_mask : ndarray of bool
        Morphological mask, the same shape.
    intensity_range : (lower, upper) or None
        Intensities kept, bounds included; either may be None (open).
    outlier_sigma : float or None
        Remove intensities further than this many (population) standard deviations
        from the mean of the range-resegmented ROI.

    Returns
    -------
    ndarray of bool
        The intensity mask.

    Raises
    ------
    ValueError
        When no voxel is left.
    """
    values = intensity[morph_mask]
    keep = np.ones(values.shape, dtype=bool)
    lower, upper = intensity_range if intensity_range is not None else (None, None)
    if lower is not None:
        keep &= values >= lower
    if upper is not None:
        keep &= values <= upper
    if outlier_sigma is not None and keep.any():
        kept = values[keep]
        mean, sd = float(kept.mean()), float(kept.std())
        keep &= (values >= mean - outlier_sigma * sd) & (values <= mean + outlier_sigma * sd)
    if not keep.any():
        raise ValueError(
            f"no ROI voxel is left after resegmentation to [{lower}, {upper}]"
            f"{f' and {outlier_sigma} SD' if outlier_sigma else ''} (ROI intensities {values.min():g} to "
            f"{values.max():g}); widen resegment_range or check the image's units"
        )
    int_mask = morph_mask.copy()
    int_mask[morph_mask] = keep
    return int_mask


# --- interpolation -----------------------------------------------------------------------


def _sample(array: np.ndarray, coords: Sequence[np.ndarray], order: int) -> np.ndarray:
    """Interpolate `array` at the tensor grid ``coords`` (fractional indices per axis).

    The same values as ``map_coordinates(array, meshgrid(*coords), order, mode="nearest")``,
    computed one axis at a time, on the part of `array` that the grid reaches.
    """
    reach = 2 + (_PREFILTER_MARGIN if order > 1 else 0)
    window, local = [], []
    for c, n in zip(coords, array.shape):
        low = min(max(int(np.floor(c.min())) - reach, 0), n - 1)
        high = max(min(int(np.floor(c.max())) + reach + 1, n), low + 1)
        window.append(slice(low, high))
        local.append(c - low)
    result = array[tuple(window)]
    # Shrinking axes first keeps the intermediate arrays small.
    for axis in sorted(range(array.ndim), key=lambda a: len(local[a]) / result.shape[a]):
        c = local[axis]
        if len(c) == result.shape[axis] and np.array_equal(c, np.arange(len(c))):
            continue
        if order > 1:
            # Filtered in place of the axis, not moved first: lines along the last
            # (contiguous) axis filter several times faster.
            pad = [(0, 0)] * result.ndim
            pad[axis] = (_SPLINE_PAD, _SPLINE_PAD)
            result = ndi.spline_filter1d(
                np.pad(result, pad, mode="edge"), order, axis=axis, output=np.float64, mode="nearest"
            )
            c = c + _SPLINE_PAD
        moved = np.moveaxis(result, axis, 0)
        index, weight = _taps(c, moved.shape[0], order)
        flat = moved.reshape(moved.shape[0], -1)
        sampled = weight[:, 0, None] * flat[index[:, 0]]
        for k in range(1, index.shape[1]):
            sampled += weight[:, k, None] * flat[index[:, k]]
        result = np.moveaxis(sampled.reshape((len(c),) + moved.shape[1:]), 0, axis)
    return np.ascontiguousarray(result, dtype=np.float64)


def _taps(coords: np.ndarray, n: int, order: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and weights of the 1, 2 or 4 samples that interpolate at `coords`."""
    if order == 0:
        index = np.floor(coords + 0.5).astype(np.int64)[:, None]
        weight = np.ones(index.shape)
    elif order == 1:
        base = np.floor(coords)
        t = (coords - base)[:, None]
        index = base.astype(np.int64)[:, None] + np.arange(2)
        weight = np.hstack([1.0 - t, t])
    elif order == 3:
        base = np.floor(coords)
        t = (coords - base)[:, None]
        index = base.astype(np.int64)[:, None] + np.arange(-1, 3)
        # Cubic B-spline basis at distances 1 + t, t, 1 - t, 2 - t.
        weight = np.hstack(
            [(1 - t) ** 3 / 6, (3 * t**3 - 6 * t**2 + 4) / 6, (-3 * t**3 + 3 * t**2 + 3 * t + 1) / 6, t**3 / 6]
        )
    else:
        raise ValueError(f"spline order {order} is not supported; use 0, 1 or 3")
    return np.clip(index, 0, n - 1), weight


def _resampled_statistics(
    values: np.ndarray, coords: Sequence[np.ndarray], order: int, round_intensities: bool
) -> tuple[float, float, float]:
    """Mean, minimum and maximum of the whole interpolated image, slab by slab."""
    plane = len(coords[1]) * len(coords[2])
    rows = max(_SLAB_VOXELS // max(plane, 1), 1)
    total, count, low, high = 0.0, 0, math.inf, -math.inf
    for start in range(0, len(coords[0]), rows):
        slab = _sample(values, [coords[0][start : start + rows], coords[1], coords[2]], order)
        if round_intensities:
            np.round(slab, out=slab)
        slab_total, slab_count, slab_low, slab_high = _finite_sums(slab)
        total, count = total + slab_total, count + slab_count
        low, high = min(low, slab_low), max(high, slab_high)
    if not count:
        return math.nan, math.nan, math.nan
    return total / count, low, high


# --- inputs ----------------------------------------------------------------------------


def _as_3d(image: sitk.Image, what: str) -> sitk.Image:
    if not isinstance(image, sitk.Image):
        raise ValueError(f"the {what} must be a SimpleITK image, not {type(image).__name__}")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(
            f"the {what} has {image.GetNumberOfComponentsPerPixel()} components per voxel; radiomics needs a scalar "
            "image (extract one channel first)"
        )
    if image.GetDimension() == 2:
        return sitk.JoinSeries(image)
    if image.GetDimension() != 3:
        raise ValueError(f"the {what} is {image.GetDimension()}D; radiomics needs a 2D or 3D image")
    return image


def _image_values(image: sitk.Image, settings: RadiomicsSettings) -> np.ndarray:
    raw = sitk.GetArrayViewFromImage(image)
    values = raw.astype(np.float64)
    if settings.modality == "CT" and not np.issubdtype(raw.dtype, np.integer):
        # IBSI: CT intensities are whole HU; a float-stored CT is rounded before processing.
        np.round(values, out=values)
    return values


def _same_grid(image: sitk.Image, mask: sitk.Image) -> bool:
    spacing = np.array(image.GetSpacing())
    return (
        image.GetSize() == mask.GetSize()
        and np.allclose(spacing, mask.GetSpacing(), rtol=1e-5, atol=0)
        and np.allclose(image.GetOrigin(), mask.GetOrigin(), rtol=0, atol=1e-3 * spacing.min())
        and np.allclose(image.GetDirection(), mask.GetDirection(), rtol=0, atol=1e-5)
    )


def _index_to_physical(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """Matrix and offset mapping (x, y, z) indices to physical points."""
    direction = np.array(image.GetDirection()).reshape(3, 3)
    return direction * np.array(image.GetSpacing()), np.array(image.GetOrigin())


def _mask_on_image_grid(image: sitk.Image, mask: sitk.Image) -> np.ndarray:
    """The ROI as a bool array on the image's grid."""
    roi = sitk.GetArrayFromImage(mask) != 0
    if not roi.any():
        raise ValueError("the mask is empty (no non-zero voxel): draw or select an ROI first")
    if _same_grid(image, mask):
        return roi
    # Where the mask's ROI voxels fall in the image, to tell an ROI off the image from one
    # that overlaps it.
    mask_matrix, mask_origin = _index_to_physical(mask)
    image_matrix, image_origin = _index_to_physical(image)
    points = np.argwhere(roi)[:, ::-1] @ mask_matrix.T + mask_origin
    index = np.linalg.solve(image_matrix, (points - image_origin).T).T
    size = np.array(image.GetSize())
    inside = np.all((index >= -0.5) & (index <= size - 0.5), axis=1)
    if not inside.any():
        raise ValueError(
            "the mask does not overlap the image: none of its ROI voxels lies within the image "
            f"(image origin {_xyz(image.GetOrigin())} mm, size {tuple(image.GetSize())}; mask origin "
            f"{_xyz(mask.GetOrigin())} mm, size {tuple(mask.GetSize())}); use the mask drawn on this image"
        )
    if not inside.all():
        raise ValueError(
            f"the ROI lies partly outside the image ({int((~inside).sum())} of {inside.size} mask voxels are off the "
            "image); crop the mask to the image or use the mask drawn on this image"
        )
    binary = sitk.Cast(mask != 0, sitk.sitkUInt8)
    on_grid = sitk.Resample(binary, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    roi = sitk.GetArrayFromImage(on_grid) != 0
    if not roi.any():
        raise ValueError(
            "the ROI covers no image voxel centre once put on the image's grid (it is smaller than an image voxel); "
            "draw the ROI on this image"
        )
    return roi


# --- boxes and diagnostics -------------------------------------------------------------


def _bounding_box(mask: np.ndarray) -> list[tuple[int, int]]:
    """Inclusive (first, last) index of the mask's voxels along each axis."""
    box = []
    for axis in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        box.append((int(hit[0]), int(hit[-1])) if hit.size else (0, -1))
    return box


def _index_range(coords: np.ndarray, low: float, high: float) -> slice:
    """The new-grid indices whose (increasing) original-grid positions lie in [low, high]."""
    start = int(np.searchsorted(coords, low, side="left"))
    stop = int(np.searchsorted(coords, high, side="right"))
    return slice(start, max(stop, start))


def _paste(target: np.ndarray, target_box: Sequence[slice], source: np.ndarray, source_box: Sequence[slice]) -> None:
    """Copy the overlap of two blocks of the same grid, given where each block lies."""
    into, out_of = [], []
    for t, s in zip(target_box, source_box):
        start, stop = max(t.start, s.start), min(t.stop, s.stop)
        if stop <= start:
            return
        into.append(slice(start - t.start, stop - t.start))
        out_of.append(slice(start - s.start, stop - s.start))
    target[tuple(into)] = source[tuple(out_of)]


def _finite_sums(values: np.ndarray) -> tuple[float, int, float, float]:
    """Sum, count, minimum and maximum of the finite values."""
    low = float(values.min()) if values.size else math.nan
    if not math.isfinite(low):
        # Rare (NaN or infinite voxels): only then pay for selecting the finite ones.
        values = values[np.isfinite(values)]
        if not values.size:
            return 0.0, 0, math.inf, -math.inf
        low = float(values.min())
    return float(values.sum(dtype=np.float64)), int(values.size), low, float(values.max())


def _nan_statistics(values: np.ndarray) -> tuple[float, float, float]:
    """Mean, minimum and maximum of the finite values (NaN when there are none)."""
    total, count, low, high = _finite_sums(values)
    return (total / count, low, high) if count else (math.nan, math.nan, math.nan)


def _describe_image(
    diagnostics: dict[str, float],
    stage: str,
    shape: Sequence[int],
    spacing: Sequence[float],
    mean: float,
    low: float,
    high: float,
) -> None:
    for axis, name in zip((2, 1, 0), "xyz"):
        diagnostics[f"img_dim_{name}_{stage}"] = float(shape[axis])
    for axis, name in zip((2, 1, 0), "xyz"):
        diagnostics[f"vox_dim_{name}_{stage}"] = float(spacing[axis])
    diagnostics[f"mean_int_{stage}"] = float(mean)
    diagnostics[f"min_int_{stage}"] = float(low)
    diagnostics[f"max_int_{stage}"] = float(high)


def _describe_roi(
    diagnostics: dict[str, float],
    stage: str,
    grid_shape: Sequence[int],
    intensity: np.ndarray,
    int_mask: np.ndarray,
    morph_mask: np.ndarray,
) -> None:
    for axis, name in zip((2, 1, 0), "xyz"):
        diagnostics[f"int_mask_dim_{name}_{stage}"] = float(grid_shape[axis])
    for which, mask in (("int", int_mask), ("morph", morph_mask)):
        box = _bounding_box(mask)
        for axis, name in zip((2, 1, 0), "xyz"):
            diagnostics[f"{which}_mask_bb_dim_{name}_{stage}"] = float(box[axis][1] - box[axis][0] + 1)
    diagnostics[f"int_mask_vox_count_{stage}"] = float(np.count_nonzero(int_mask))
    diagnostics[f"morph_mask_vox_count_{stage}"] = float(np.count_nonzero(morph_mask))
    values = intensity[int_mask]
    diagnostics[f"int_mask_mean_int_{stage}"] = float(values.mean()) if values.size else math.nan
    diagnostics[f"int_mask_min_int_{stage}"] = float(values.min()) if values.size else math.nan
    diagnostics[f"int_mask_max_int_{stage}"] = float(values.max()) if values.size else math.nan


def _xyz(values: Sequence[float]) -> str:
    """A (z, y, x) or (x, y, z) triple written plainly for messages."""
    return "(" + ", ".join(f"{float(v):g}" for v in values) + ")"
