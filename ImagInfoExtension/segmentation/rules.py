"""Rule-based segmentation: an intensity window within a mask, and threshold region growing from seeds.

Both give a label map on the image's own grid (no resampling), so what they segment
overlays the image exactly. The window is inclusive at both ends: a voxel belongs
when ``lower_hu <= value <= upper_hu``. Connected components follow the usual 3D
neighbourhoods: voxels sharing a face (6), also an edge (18), or also a corner (26),
exactly as :data:`ImagInfoExtension.radiomics.lesions.CONNECTIVITY` defines them.

Examples
--------
Acute blood in a head CT (the hematoma studies): 40–90 HU inside the brain, components
of at least 0.1 ml::

    result = window_segmentation(ct, 40, 90, mask=brain, min_volume_ml=0.1)

A vessel grown from a point clicked in Slicer (markups are RAS)::

    result = region_growing(ct, lps_from_ras([[12.0, -30.5, 41.0]]), 150, 600)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ImagInfoExtension.geometry import ImageGrid, mask_bounding_box
from ImagInfoExtension.radiomics.lesions import CONNECTIVITY


@dataclass(frozen=True)
class RuleResult:
    """What a rule segmented.

    Attributes
    ----------
    labels : SimpleITK.Image
        The label map on the image's grid: ``label`` where segmented, 0 elsewhere
        (uint8 for labels up to 255, else uint16).
    label : int
        The value the segmented voxels carry.
    component_count : int
        Connected components kept.
    removed_count : int
        Components left out because they were smaller than the minimum volume.
    voxel_count : int
        Voxels segmented.
    volume_ml : float
        Their volume.
    component_volumes_ml : tuple of float
        Volume of each kept component, largest first.
    """

    labels: sitk.Image
    label: int
    component_count: int
    removed_count: int
    voxel_count: int
    volume_ml: float
    component_volumes_ml: tuple[float, ...]


def check_image(image: sitk.Image, what: str = "image") -> ImageGrid:
    """The grid of a 3D scalar image free of NaNs; otherwise a ValueError saying what is wrong.

    Parameters
    ----------
    image : SimpleITK.Image
    what : str
        How the message names the image ("image", "follow-up image", …).
    """
    if not isinstance(image, sitk.Image):
        raise TypeError(f"the {what} must be a SimpleITK.Image, got {type(image).__name__}")
    if image.GetDimension() != 3:
        raise ValueError(
            f"the {what} is {image.GetDimension()}D ({'×'.join(map(str, image.GetSize()))} voxels); "
            "segmentation needs a 3D volume: load the whole series, not one slice"
        )
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(
            f"the {what} has {image.GetNumberOfComponentsPerPixel()} components per voxel; "
            "segmentation needs a scalar (grey-level) image"
        )
    array = sitk.GetArrayViewFromImage(image)
    if np.issubdtype(array.dtype, np.floating):
        nans = int(np.count_nonzero(np.isnan(array)))
        if nans:
            raise ValueError(
                f"the {what} holds {nans} NaN voxel(s) of {array.size}; replace them (e.g. with the image's "
                "minimum or -1024 HU) before segmenting"
            )
    return ImageGrid.from_sitk(image)


def check_same_grid(image: sitk.Image, other: sitk.Image, what: str, reference: str = "image") -> None:
    """Refuse ``other`` unless it samples exactly the points of ``image`` (to 1e-4 mm)."""
    if other.GetDimension() != 3:
        raise ValueError(f"the {what} is {other.GetDimension()}D; it must be a 3D image on the {reference}'s grid")
    grid, other_grid = ImageGrid.from_sitk(image), ImageGrid.from_sitk(other)
    if not grid.same_as(other_grid):
        raise ValueError(
            f"the {what} is on another grid than the {reference} (size {other_grid.size_ijk} vs {grid.size_ijk}, "
            f"spacing {_rounded(other_grid.spacing_mm)} vs {_rounded(grid.spacing_mm)} mm, origin "
            f"{_rounded(other_grid.origin_mm)} vs {_rounded(grid.origin_mm)} mm, direction "
            f"{_rounded(other_grid.direction)} vs {_rounded(grid.direction)}); resample the {what} onto the "
            f"{reference} with nearest-neighbour interpolation first, e.g. "
            "sitk.Resample(mask, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0)"
        )


def _rounded(values: Sequence[float]) -> tuple[float, ...]:
    return tuple(round(float(v), 4) for v in values)


def _check_window(lower_hu: float, upper_hu: float) -> None:
    if not (math.isfinite(lower_hu) and math.isfinite(upper_hu)):
        raise ValueError(f"the window [{lower_hu}, {upper_hu}] must have finite bounds")
    if lower_hu > upper_hu:
        raise ValueError(
            f"the window's lower bound {lower_hu} is above its upper bound {upper_hu}; swap them "
            f"(window [{upper_hu}, {lower_hu}])"
        )


def _structure(connectivity: int) -> np.ndarray:
    if connectivity not in CONNECTIVITY:
        raise ValueError(f"connectivity {connectivity} is not 6, 18 or 26 (voxels sharing a face, an edge, a corner)")
    return ndimage.generate_binary_structure(3, CONNECTIVITY[connectivity])


def _label_dtype(label: int) -> type:
    if isinstance(label, bool) or not isinstance(label, int | np.integer) or not 1 <= int(label) <= 65535:
        raise ValueError(f"label {label!r} must be an integer from 1 to 65535")
    return np.uint8 if label <= 255 else np.uint16


def _in_window(image: sitk.Image, lower_hu: float, upper_hu: float, mask: sitk.Image | None) -> np.ndarray:
    array = sitk.GetArrayViewFromImage(image)
    selected = (array >= lower_hu) & (array <= upper_hu)
    if mask is not None:
        check_same_grid(image, mask, "mask")
        selected &= sitk.GetArrayViewFromImage(mask) != 0
    return selected


def _components(selected: np.ndarray, structure: np.ndarray) -> tuple[tuple[slice, ...], np.ndarray, np.ndarray]:
    """Connected components of ``selected`` within its bounding box: (box, numbered components, sizes)."""
    box = mask_bounding_box(selected)
    components, count = ndimage.label(selected[box], structure=structure)
    sizes = np.bincount(components.ravel(), minlength=count + 1)[1:]
    return box, components, sizes


def _result(
    image: sitk.Image,
    box: tuple[slice, ...],
    components: np.ndarray,
    sizes: np.ndarray,
    kept: np.ndarray,
    removed: int,
    label: int,
) -> RuleResult:
    """The label map of the components numbered ``kept`` (1-based, indexing ``sizes``) in ``box``."""
    dtype = _label_dtype(label)
    kept = np.asarray(kept, dtype=np.int64)
    lookup = np.zeros(sizes.size + 1, dtype=dtype)
    lookup[kept] = label
    array = np.zeros(sitk.GetArrayViewFromImage(image).shape, dtype=dtype)
    array[box] = lookup[components]
    labels = sitk.GetImageFromArray(array)
    labels.CopyInformation(image)
    voxel_ml = float(np.prod(image.GetSpacing())) / 1000.0
    kept_sizes = np.sort(sizes[kept - 1])[::-1]
    return RuleResult(
        labels=labels,
        label=int(label),
        component_count=int(kept_sizes.size),
        removed_count=int(removed),
        voxel_count=int(kept_sizes.sum()),
        volume_ml=float(kept_sizes.sum() * voxel_ml),
        component_volumes_ml=tuple(float(n * voxel_ml) for n in kept_sizes),
    )


def window_segmentation(
    image: sitk.Image,
    lower_hu: float,
    upper_hu: float,
    mask: sitk.Image | None = None,
    connectivity: int = 26,
    min_volume_ml: float = 0.0,
    label: int = 1,
) -> RuleResult:
    """Voxels whose value lies in ``[lower_hu, upper_hu]`` (inside ``mask``), by connected component.

    Parameters
    ----------
    image : SimpleITK.Image
        A 3D scalar image (HU for CT).
    lower_hu, upper_hu : float
        The inclusive window.
    mask : SimpleITK.Image, optional
        Where to look (non-zero voxels), on the image's grid, e.g. the brain.
    connectivity : {6, 18, 26}
        Which neighbours join a component.
    min_volume_ml : float
        Components smaller than this are removed (and counted in ``removed_count``).
    label : int
        The value segmented voxels carry.

    Returns
    -------
    RuleResult

    Raises
    ------
    ValueError
        On a 2D or vector image, NaNs, an inverted window, a mask on another grid, an
        unknown connectivity or a negative minimum volume.
    """
    check_image(image)
    _check_window(lower_hu, upper_hu)
    structure = _structure(connectivity)
    _label_dtype(label)
    if not min_volume_ml >= 0:
        raise ValueError(f"min_volume_ml {min_volume_ml} must be ≥ 0")
    selected = _in_window(image, lower_hu, upper_hu, mask)
    box, components, sizes = _components(selected, structure)
    voxel_ml = float(np.prod(image.GetSpacing())) / 1000.0
    # A relative tolerance keeps a component of exactly the minimum volume despite rounding.
    kept = np.flatnonzero(sizes * voxel_ml >= min_volume_ml * (1 - 1e-9)) + 1
    return _result(image, box, components, sizes, kept, sizes.size - kept.size, label)


def lps_from_ras(points_ras_mm: Sequence[float] | np.ndarray) -> np.ndarray:
    """LPS points of RAS points (Slicer's world coordinates): x and y change sign.

    Accepts one point ``(3,)`` or several ``(N, 3)``; returns the same shape.
    """
    points = np.array(points_ras_mm, dtype=float)
    if points.shape[-1:] != (3,) or points.ndim > 2:
        raise ValueError(f"expected points of 3 coordinates, (3,) or (N, 3), got shape {points.shape}")
    points[..., :2] *= -1
    return points


def region_growing(
    image: sitk.Image,
    seeds_lps_mm: Sequence[float] | Sequence[Sequence[float]] | np.ndarray,
    lower_hu: float,
    upper_hu: float,
    connectivity: int = 26,
    mask: sitk.Image | None = None,
    label: int = 1,
) -> RuleResult:
    """The connected region of in-window voxels that holds each seed.

    A voxel joins when its value lies in ``[lower_hu, upper_hu]`` (and it is inside
    ``mask``) and it touches the region through the chosen neighbourhood; the result
    is the union of the components of the seeds' voxels. Each seed lies in the voxel
    whose centre is nearest.

    Parameters
    ----------
    image : SimpleITK.Image
        A 3D scalar image (HU for CT).
    seeds_lps_mm : array-like
        One point ``(x, y, z)`` or several ``(N, 3)``, in patient LPS mm. Slicer's
        markups give RAS: convert them with :func:`lps_from_ras`.
    lower_hu, upper_hu : float
        The inclusive window.
    connectivity : {6, 18, 26}
    mask : SimpleITK.Image, optional
        Where growth may go (non-zero voxels), on the image's grid.
    label : int

    Returns
    -------
    RuleResult
        ``component_count`` is the number of distinct regions the seeds grew
        (seeds in one region count once).

    Raises
    ------
    ValueError
        On a seed outside the image or the mask, a seed whose own value is outside
        the window, and everything :func:`window_segmentation` refuses.
    """
    grid = check_image(image)
    _check_window(lower_hu, upper_hu)
    structure = _structure(connectivity)
    _label_dtype(label)
    seeds = np.array(seeds_lps_mm, dtype=float)
    if seeds.ndim == 1:
        seeds = seeds[None, :]
    if seeds.ndim != 2 or seeds.shape[1] != 3 or seeds.shape[0] == 0:
        raise ValueError(f"seeds must be one LPS point (x, y, z) or an (N, 3) array, got shape {seeds.shape}")
    if not np.isfinite(seeds).all():
        raise ValueError("seed coordinates must be finite numbers")
    index_ijk = np.floor(grid.index_from_physical(seeds) + 0.5).astype(np.int64)
    array = sitk.GetArrayViewFromImage(image)
    mask_array = None
    if mask is not None:
        check_same_grid(image, mask, "mask")
        mask_array = sitk.GetArrayViewFromImage(mask)
    size = np.asarray(grid.size_ijk)
    lower_mm = grid.physical_from_index(np.full((1, 3), -0.5))[0]
    upper_mm = grid.physical_from_index((size - 0.5)[None, :])[0]
    for n, (point, (i, j, k)) in enumerate(zip(seeds, index_ijk)):
        where = f"seed {n + 1} at LPS {_rounded(point)} mm"
        if np.any(index_ijk[n] < 0) or np.any(index_ijk[n] >= size):
            raise ValueError(
                f"{where} is outside the image (which spans LPS {_rounded(np.minimum(lower_mm, upper_mm))} to "
                f"{_rounded(np.maximum(lower_mm, upper_mm))} mm); place the seed inside the volume — Slicer "
                "markups are RAS: convert them with lps_from_ras"
            )
        value = float(array[k, j, i])
        if not lower_hu <= value <= upper_hu:
            raise ValueError(
                f"{where} (voxel i={i}, j={j}, k={k}) has value {value:g}, outside the window "
                f"[{lower_hu:g}, {upper_hu:g}]; move the seed into the structure or widen the window"
            )
        if mask_array is not None and mask_array[k, j, i] == 0:
            raise ValueError(f"{where} (voxel i={i}, j={j}, k={k}) is outside the mask; move the seed into the mask")
    selected = (array >= lower_hu) & (array <= upper_hu)
    if mask_array is not None:
        selected &= mask_array != 0
    box, components, sizes = _components(selected, structure)
    # Every seed is in ``selected``, hence inside the box.
    start = np.array([box[0].start, box[1].start, box[2].start])
    seeds_kji = index_ijk[:, ::-1] - start
    kept = np.unique(components[seeds_kji[:, 0], seeds_kji[:, 1], seeds_kji[:, 2]])
    return _result(image, box, components, sizes, kept, 0, label)
