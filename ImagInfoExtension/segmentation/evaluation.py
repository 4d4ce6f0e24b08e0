"""Segmentation evaluation: overlap, surface and lesion-wise metrics of a prediction against a truth.

Conventions
-----------
**Arrays and spacing.** Numpy arrays are indexed ``[k, j, i]`` (SimpleITK's
``GetArrayFromImage`` order) and every ``spacing_mm`` argument is given in
``(i, j, k)`` order, as ``SimpleITK.Image.GetSpacing()`` returns it. Every function
that takes masks accepts either two ``SimpleITK.Image`` (the spacing is then the
images' own, and ``spacing_mm`` may be left out) or two arrays with ``spacing_mm``.
A mask is "inside" wherever it is non-zero.

**Surfaces.** The surface of a mask is the set of its voxels with at least one face
neighbour (6 in 3D, 4 in 2D) outside it; beyond the array counts as outside. This is
MONAI's ``get_mask_edges`` without subvoxels (``binary_erosion(mask) ^ mask`` with
scipy's default cross-shaped element and a zero border), so every surface metric here
equals MONAI 1.6.1's (``compute_hausdorff_distance``, ``compute_average_surface_distance``,
``compute_surface_dice`` with ``use_subvoxels=False``) up to MONAI's float32 rounding.
A surface distance is the Euclidean distance in mm between the centre of a surface
voxel and the nearest surface voxel centre of the other mask.

**Definitions** (``D_pt``: distances from each prediction surface voxel to the truth
surface; ``D_tp``: from each truth surface voxel to the prediction surface):

- Dice ``2|P ∩ T| / (|P| + |T|)``;
- HD95 ``max(q95(D_pt), q95(D_tp))``, ``q`` the linearly interpolated percentile
  (``numpy.percentile``'s default, as ``torch.quantile``);
- ASSD the mean of ``D_pt`` and ``D_tp`` pooled: ``(ΣD_pt + ΣD_tp) / (|D_pt| + |D_tp|)``;
- NSD at tolerance τ: ``(#{D_pt ≤ τ} + #{D_tp ≤ τ}) / (|D_pt| + |D_tp|)`` (Nikolov et
  al. 2021, arXiv:2111.05408, counting surface voxels). A distance equal to τ counts as
  within it (to 1e-9 relative, so that a tolerance of a whole number of voxel steps is
  not decided by the last bit of ``n × spacing``); MONAI decides such exact ties by its
  float32 rounding, which may put them either side.

**Empty masks** (every choice below is tested against MONAI on the same input):

============================  =========  ===============  =====
case                          Dice       HD, HD95, ASSD   NSD
============================  =========  ===============  =====
both empty                    nan        nan              nan
one empty, the other not      0.0        inf              0.0
============================  =========  ===============  =====

``nan`` means "absent in both: nothing to score" (not a perfect score), ``inf`` "a
structure missed or invented: no finite distance". MONAI agrees on ASSD, HD (its
``percentile=None``) and NSD. Where it differs: its HD95 is nan, not inf, when one mask is
empty (``torch.quantile`` of infinities interpolates ``inf - inf``); its ``compute_dice``
gives nan for an empty truth by default (``ignore_empty=True``) even when the prediction
is not empty, which would hide a false positive, and 1.0 when both are empty with
``ignore_empty=False``. The CSV writes these values as ``nan`` and ``inf``. One more
difference: MONAI takes ``percentile=0`` as "no percentile" (the maximum); here it is the
minimum.

**Label maps** (:func:`evaluate_label_maps`, :func:`align_truth`) are 3D scalar images
with integer labels ≥ 0, on one grid; each label is scored in its own union box.
**Lesions** (:func:`lesion_metrics`, :func:`aggregate_cases`) are connected components
matched by a stated overlap rule; false-positive and false-negative volumes are autoPET's.

**Speed.** Everything runs on the bounding box of the union of both masks; surfaces
come from shifted views; the distances are nearest-neighbour queries on a k-d tree of
surface voxel centres scaled by the spacing (exact Euclidean distances, as MONAI's CPU
path), surface voxels shared by both masks being at distance 0 without a query; and
:func:`surface_metrics` derives HD, HD95, ASSD and NSD from one pair of distance sets.
A dense Euclidean distance transform of the box (``scipy.ndimage.distance_transform_edt``)
gives the same distances but costs ~200 ns per box voxel, 40× the k-d tree's time on an
organ-sized box, so it is not used.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from scipy.spatial import cKDTree

from ImagInfoExtension.io import write_atomically
from ImagInfoExtension.radiomics.lesions import CONNECTIVITY

__all__ = [
    "EVALUATION_COLUMNS",
    "LabelEvaluation",
    "LesionEvaluation",
    "LesionMatch",
    "SurfaceDistances",
    "SurfaceMetrics",
    "aggregate_cases",
    "align_truth",
    "average_surface_distance_mm",
    "dice",
    "evaluate_label_maps",
    "hausdorff_distance_mm",
    "lesion_metrics",
    "normalised_surface_dice",
    "surface_distances",
    "surface_metrics",
    "surface_voxels",
    "write_evaluation_csv",
]

#: Columns of ``evaluation.csv``, in order.
EVALUATION_COLUMNS = ("label", "name", "dice", "hd95_mm", "assd_mm", "nsd", "volume_ml", "true_volume_ml")

#: Relative tolerance under which two grids are the same (spacing, origin, direction).
GRID_TOLERANCE = 1e-6

#: Relative slack of the NSD comparison ``d ≤ τ``, so that ties are decided by geometry, not rounding.
TIE_TOLERANCE = 1e-9

#: Label maps with larger values are scanned label by label instead of with one pass.
_MAX_LABEL_FOR_ONE_PASS = 1 << 20

MaskLike = np.ndarray | sitk.Image

_INTEGER_PIXEL_IDS = {
    sitk.sitkUInt8,
    sitk.sitkInt8,
    sitk.sitkUInt16,
    sitk.sitkInt16,
    sitk.sitkUInt32,
    sitk.sitkInt32,
    sitk.sitkUInt64,
    sitk.sitkInt64,
}


# --------------------------------------------------------------------------- inputs


def _spacing_kji(spacing_mm: Sequence[float], ndim: int) -> np.ndarray:
    """Spacing given in (i, j, k) order, returned in array-axis order [k, j, i], validated."""
    spacing = np.asarray(spacing_mm, dtype=float).ravel()
    if spacing.size == 1:
        spacing = np.repeat(spacing, ndim)
    if spacing.size != ndim:
        raise ValueError(
            f"spacing_mm {tuple(spacing_mm)} has {spacing.size} values for a {ndim}D mask: give one per axis"
        )
    if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise ValueError(f"spacing_mm {tuple(spacing_mm)} must be positive and finite")
    return spacing[::-1].copy()


def _as_mask(mask: MaskLike, name: str) -> np.ndarray:
    array = sitk.GetArrayViewFromImage(mask) if isinstance(mask, sitk.Image) else np.asarray(mask)
    if array.ndim not in (2, 3):
        raise ValueError(f"the {name} mask is {array.ndim}D ({array.shape}): give a 2D or 3D mask")
    if array.dtype == bool:
        return array
    if np.issubdtype(array.dtype, np.floating) and np.isnan(array).any():
        raise ValueError(
            f"the {name} mask holds NaNs: a mask is 0 outside and non-zero inside; fill or threshold it first"
        )
    return array != 0


def _masks(prediction: MaskLike, truth: MaskLike, spacing_mm: Sequence[float] | None, need_spacing: bool = True):
    """Boolean prediction and truth arrays of one shape, and the spacing in array-axis order (or None)."""
    images = [m for m in (prediction, truth) if isinstance(m, sitk.Image)]
    if len(images) == 2 and not _same_grid(prediction, truth):
        raise ValueError(
            f"the prediction ({_grid_summary(prediction)}) and the truth ({_grid_summary(truth)}) are on different "
            "grids: resample the truth with align_truth(truth, prediction) first"
        )
    if spacing_mm is None and need_spacing:
        if not images:
            raise ValueError(
                "spacing_mm is needed with numpy masks: give the voxel spacing in (i, j, k) order as "
                "SimpleITK's GetSpacing() returns it, or (1, 1, 1) for distances in voxels"
            )
        spacing_mm = images[0].GetSpacing()
    pred = _as_mask(prediction, "prediction")
    true = _as_mask(truth, "truth")
    if pred.shape != true.shape:
        raise ValueError(
            f"the prediction {pred.shape} and the truth {true.shape} differ in shape: put them on one grid"
        )
    return pred, true, (_spacing_kji(spacing_mm, pred.ndim) if spacing_mm is not None else None)


def _bounding_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """Slices around the True voxels of a boolean array; None when there is none.

    Reduces the first axis over contiguous rows first, then only the slab it found, which
    is ten times faster on a large volume than ``ndimage.find_objects``.
    """
    rows = np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1))
    if rows.size == 0:
        return None
    slab = mask[rows[0] : rows[-1] + 1]
    box = [slice(int(rows[0]), int(rows[-1]) + 1)]
    for axis in range(1, mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        found = np.flatnonzero(slab.any(axis=others))
        box.append(slice(int(found[0]), int(found[-1]) + 1))
    return tuple(box)


def _union_box(*boxes: tuple[slice, ...] | None) -> tuple[slice, ...] | None:
    present = [b for b in boxes if b is not None]
    if not present:
        return None
    return tuple(slice(min(s.start for s in axis), max(s.stop for s in axis)) for axis in zip(*present))


# --------------------------------------------------------------------------- surfaces


def surface_voxels(mask: MaskLike) -> np.ndarray:
    """The surface voxels of a mask: its voxels with a face neighbour outside it.

    Face neighbours are 6 in 3D (4 in 2D); beyond the array counts as outside, so a mask
    touching the array's border has its border voxels on its surface. This is MONAI's
    ``get_mask_edges`` without subvoxels and scipy's ``binary_erosion(mask) ^ mask``.

    Parameters
    ----------
    mask : numpy.ndarray or SimpleITK.Image
        2D or 3D; non-zero is inside. Arrays are indexed [k, j, i].

    Returns
    -------
    numpy.ndarray
        Boolean, the shape of ``mask``.
    """
    return _surface(_as_mask(mask, "input"))


def _surface(mask: np.ndarray) -> np.ndarray:
    padded = np.pad(mask, 1)
    interior = mask.copy()
    centre = [slice(1, -1)] * mask.ndim
    for axis in range(mask.ndim):
        for shifted in (slice(0, -2), slice(2, None)):
            view = list(centre)
            view[axis] = shifted
            np.logical_and(interior, padded[tuple(view)], out=interior)
    return mask & ~interior


@dataclass(frozen=True)
class SurfaceDistances:
    """Both directed sets of surface distances of a prediction and a truth.

    Attributes
    ----------
    prediction_to_truth_mm : numpy.ndarray
        For each prediction surface voxel (in C order of the voxels), the distance in mm
        to the nearest truth surface voxel. Empty when either mask is empty.
    truth_to_prediction_mm : numpy.ndarray
        For each truth surface voxel, the distance to the nearest prediction surface voxel.
        Empty when either mask is empty.
    prediction_surface_voxels, truth_surface_voxels : int
        Number of surface voxels of each mask (0 for an empty mask).
    """

    prediction_to_truth_mm: np.ndarray
    truth_to_prediction_mm: np.ndarray
    prediction_surface_voxels: int
    truth_surface_voxels: int

    @property
    def empty(self) -> str:
        """``"both"``, ``"prediction"``, ``"truth"`` or ``""``: which mask is empty."""
        pred, true = self.prediction_surface_voxels == 0, self.truth_surface_voxels == 0
        return "both" if pred and true else "prediction" if pred else "truth" if true else ""


def _nearest(points_mm: np.ndarray, shared: np.ndarray, others_mm: np.ndarray) -> np.ndarray:
    """Distance from each point to the nearest of ``others``; points ``shared`` with them are at 0."""
    distances = np.zeros(len(points_mm))
    away = ~shared
    if away.any():
        tree = cKDTree(others_mm, balanced_tree=False, compact_nodes=False)
        distances[away] = tree.query(points_mm[away], k=1, workers=-1)[0]
    return distances


def _distances_of_crops(pred: np.ndarray, true: np.ndarray, spacing_kji: np.ndarray) -> SurfaceDistances:
    pred_surface, true_surface = _surface(pred), _surface(true)
    # one scan of each surface: its voxels' flat indices (C order) give coordinates and membership
    pred_index, true_index = np.flatnonzero(pred_surface), np.flatnonzero(true_surface)
    if pred_index.size == 0 or true_index.size == 0:
        return SurfaceDistances(np.empty(0), np.empty(0), int(pred_index.size), int(true_index.size))
    pred_mm = np.column_stack(np.unravel_index(pred_index, pred.shape)) * spacing_kji
    true_mm = np.column_stack(np.unravel_index(true_index, true.shape)) * spacing_kji
    return SurfaceDistances(
        _nearest(pred_mm, true_surface.ravel()[pred_index], true_mm),
        _nearest(true_mm, pred_surface.ravel()[true_index], pred_mm),
        int(pred_index.size),
        int(true_index.size),
    )


def _crop(pred: np.ndarray, true: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    box = _union_box(_bounding_box(pred), _bounding_box(true))
    if box is None:
        empty = np.zeros((0,) * pred.ndim, dtype=bool)
        return empty, empty
    return pred[box], true[box]


def surface_distances(
    prediction: MaskLike, truth: MaskLike, spacing_mm: Sequence[float] | None = None
) -> SurfaceDistances:
    """Distances between the surfaces of a prediction and a truth, both directions.

    Parameters
    ----------
    prediction, truth : numpy.ndarray or SimpleITK.Image
        Masks on one grid (non-zero is inside), 2D or 3D; arrays indexed [k, j, i].
    spacing_mm : sequence of float, optional
        Voxel spacing in (i, j, k) order, as ``GetSpacing()`` gives it (one number for
        isotropic voxels; ``(1, 1, 1)`` for distances in voxels). Required with arrays;
        with images it defaults to theirs.

    Returns
    -------
    SurfaceDistances
    """
    pred, true, spacing = _masks(prediction, truth, spacing_mm)
    return _distances_of_crops(*_crop(pred, true), spacing)


def _percentile_hd(distances: SurfaceDistances, percentile: float | None) -> float:
    if distances.empty == "both":
        return math.nan
    if distances.empty:
        return math.inf
    if percentile is None:
        return float(max(distances.prediction_to_truth_mm.max(), distances.truth_to_prediction_mm.max()))
    return float(
        max(
            np.percentile(distances.prediction_to_truth_mm, percentile),
            np.percentile(distances.truth_to_prediction_mm, percentile),
        )
    )


def _assd(distances: SurfaceDistances, symmetric: bool = True) -> float:
    if distances.empty == "both":
        return math.nan
    if distances.empty:
        return math.inf
    if not symmetric:
        return float(distances.prediction_to_truth_mm.mean())
    total = distances.prediction_to_truth_mm.sum() + distances.truth_to_prediction_mm.sum()
    return float(total / (distances.prediction_to_truth_mm.size + distances.truth_to_prediction_mm.size))


def _nsd(distances: SurfaceDistances, tolerance_mm: float) -> float:
    if distances.empty == "both":
        return math.nan
    if distances.empty:
        return 0.0
    # A distance equal to the tolerance (a whole number of voxel steps) counts as within it,
    # whatever the last-bit rounding of the spacing products.
    limit = tolerance_mm * (1.0 + TIE_TOLERANCE)
    within = np.count_nonzero(distances.prediction_to_truth_mm <= limit) + np.count_nonzero(
        distances.truth_to_prediction_mm <= limit
    )
    return float(within / (distances.prediction_to_truth_mm.size + distances.truth_to_prediction_mm.size))


def _check_percentile(percentile: float | None) -> None:
    if percentile is not None and not 0 <= percentile <= 100:
        raise ValueError(f"percentile {percentile} must be between 0 and 100 (None for the maximum)")


def _check_tolerance(tolerance_mm: float) -> None:
    if not math.isfinite(tolerance_mm) or tolerance_mm < 0:
        raise ValueError(f"tolerance_mm {tolerance_mm} must be finite and ≥ 0")


def dice(prediction_mask: MaskLike, truth_mask: MaskLike) -> float:
    """Dice coefficient ``2|P ∩ T| / (|P| + |T|)`` of two masks on one grid.

    Parameters
    ----------
    prediction_mask, truth_mask : numpy.ndarray or SimpleITK.Image
        Non-zero is inside; same shape.

    Returns
    -------
    float
        nan when both are empty ("absent in both": MONAI's default ``ignore_empty=True``
        gives nan too, ``ignore_empty=False`` 1.0); 0.0 when exactly one is empty (MONAI's
        default gives nan for an empty truth, which would hide a false positive).
    """
    pred, true, _ = _masks(prediction_mask, truth_mask, None, need_spacing=False)
    return _dice_of(pred, true)


def _dice_of(pred: np.ndarray, true: np.ndarray) -> float:
    total = int(np.count_nonzero(pred)) + int(np.count_nonzero(true))
    if total == 0:
        return math.nan
    return 2.0 * int(np.count_nonzero(pred & true)) / total


def hausdorff_distance_mm(
    prediction: MaskLike,
    truth: MaskLike,
    spacing_mm: Sequence[float] | None = None,
    percentile: float | None = 95.0,
) -> float:
    """Symmetric (percentile) Hausdorff distance between two mask surfaces, in mm.

    ``max(q(D_pt), q(D_tp))`` with ``q`` the linearly interpolated ``percentile`` of each
    directed set of surface distances (MONAI's ``compute_hausdorff_distance``).

    Parameters
    ----------
    prediction, truth : numpy.ndarray or SimpleITK.Image
        Masks on one grid; arrays indexed [k, j, i].
    spacing_mm : sequence of float, optional
        Spacing in (i, j, k) order (``GetSpacing()``); required with arrays.
    percentile : float or None
        0–100; None or 100 gives the classical (maximum) Hausdorff distance, 0 the
        minimum (MONAI takes ``percentile=0`` as None: the maximum).

    Returns
    -------
    float
        nan when both masks are empty; inf when exactly one is (MONAI gives inf for the
        maximum but nan for a percentile there).
    """
    _check_percentile(percentile)
    return _percentile_hd(surface_distances(prediction, truth, spacing_mm), percentile)


def average_surface_distance_mm(
    prediction: MaskLike,
    truth: MaskLike,
    spacing_mm: Sequence[float] | None = None,
    symmetric: bool = True,
) -> float:
    """Average surface distance in mm; symmetric (ASSD) by default.

    Symmetric: the mean of both directed sets pooled, ``(ΣD_pt + ΣD_tp) / (|D_pt| + |D_tp|)``;
    otherwise the mean of ``D_pt`` (prediction to truth). This is MONAI's
    ``compute_average_surface_distance``.

    Parameters
    ----------
    prediction, truth : numpy.ndarray or SimpleITK.Image
        Masks on one grid; arrays indexed [k, j, i].
    spacing_mm : sequence of float, optional
        Spacing in (i, j, k) order (``GetSpacing()``); required with arrays.
    symmetric : bool
        Pool both directions (True) or measure prediction to truth only.

    Returns
    -------
    float
        nan when both masks are empty; inf when exactly one is (as MONAI).
    """
    return _assd(surface_distances(prediction, truth, spacing_mm), symmetric)


def normalised_surface_dice(
    prediction: MaskLike,
    truth: MaskLike,
    spacing_mm: Sequence[float] | None = None,
    tolerance_mm: float = 1.0,
) -> float:
    """Normalised surface Dice: the fraction of both surfaces within ``tolerance_mm`` of the other.

    ``(#{D_pt ≤ τ} + #{D_tp ≤ τ}) / (|D_pt| + |D_tp|)``, surfaces counted in voxels
    (MONAI's ``compute_surface_dice`` with ``use_subvoxels=False``).

    Parameters
    ----------
    prediction, truth : numpy.ndarray or SimpleITK.Image
        Masks on one grid; arrays indexed [k, j, i].
    spacing_mm : sequence of float, optional
        Spacing in (i, j, k) order (``GetSpacing()``); required with arrays.
    tolerance_mm : float
        Acceptable deviation τ in mm (≥ 0), inclusive.

    Returns
    -------
    float
        In [0, 1]; nan when both masks are empty, 0.0 when exactly one is (as MONAI).
    """
    _check_tolerance(tolerance_mm)
    return _nsd(surface_distances(prediction, truth, spacing_mm), tolerance_mm)


@dataclass(frozen=True)
class SurfaceMetrics:
    """All surface metrics of one prediction against one truth, from one pair of distance sets.

    Attributes
    ----------
    hd_mm : float
        Hausdorff distance (maximum of both directed sets).
    hd95_mm : float
        95th-percentile Hausdorff distance ``max(q95(D_pt), q95(D_tp))``.
    assd_mm : float
        Average symmetric surface distance (both directed sets pooled).
    nsd : float
        Normalised surface Dice at ``tolerance_mm``.
    tolerance_mm : float
        NSD tolerance.
    mean_prediction_to_truth_mm, mean_truth_to_prediction_mm : float
        Mean of each directed set.
    prediction_surface_voxels, truth_surface_voxels : int
        Surface sizes in voxels.

    Distances are nan when both masks are empty and inf when exactly one is; NSD is nan
    and 0.0 there.
    """

    hd_mm: float
    hd95_mm: float
    assd_mm: float
    nsd: float
    tolerance_mm: float
    mean_prediction_to_truth_mm: float
    mean_truth_to_prediction_mm: float
    prediction_surface_voxels: int
    truth_surface_voxels: int


def _metrics_of(distances: SurfaceDistances, tolerance_mm: float) -> SurfaceMetrics:
    directed = (math.nan, math.nan) if distances.empty == "both" else (math.inf, math.inf)
    if not distances.empty:
        directed = (float(distances.prediction_to_truth_mm.mean()), float(distances.truth_to_prediction_mm.mean()))
    return SurfaceMetrics(
        hd_mm=_percentile_hd(distances, None),
        hd95_mm=_percentile_hd(distances, 95.0),
        assd_mm=_assd(distances),
        nsd=_nsd(distances, tolerance_mm),
        tolerance_mm=float(tolerance_mm),
        mean_prediction_to_truth_mm=directed[0],
        mean_truth_to_prediction_mm=directed[1],
        prediction_surface_voxels=distances.prediction_surface_voxels,
        truth_surface_voxels=distances.truth_surface_voxels,
    )


def surface_metrics(
    prediction: MaskLike,
    truth: MaskLike,
    spacing_mm: Sequence[float] | None = None,
    tolerance_mm: float = 1.0,
) -> SurfaceMetrics:
    """HD, HD95, ASSD and NSD of a prediction against a truth, paying for the distances once.

    Parameters
    ----------
    prediction, truth : numpy.ndarray or SimpleITK.Image
        Masks on one grid (non-zero is inside), 2D or 3D; arrays indexed [k, j, i].
    spacing_mm : sequence of float, optional
        Spacing in (i, j, k) order (``GetSpacing()``); required with arrays, ``(1, 1, 1)``
        for voxel units.
    tolerance_mm : float
        NSD tolerance in mm.

    Returns
    -------
    SurfaceMetrics
        Equal to MONAI's metrics (see the module's docstring for the empty-mask conventions).
    """
    _check_tolerance(tolerance_mm)
    return _metrics_of(surface_distances(prediction, truth, spacing_mm), tolerance_mm)


# --------------------------------------------------------------------------- label maps


@dataclass(frozen=True)
class LabelEvaluation:
    """One row of ``evaluation.csv``: one label of a prediction against the truth.

    Attributes
    ----------
    label : int
        Label value.
    name : str
        Label name (``"label N"`` when none is given).
    dice : float
        Dice coefficient; nan when the label is absent from both maps, 0.0 when from one.
    hd95_mm, assd_mm : float
        95th-percentile Hausdorff and average symmetric surface distances in mm (in voxels
        when evaluated with ``spacing_aware=False``); nan when absent from both maps, inf
        when absent from one.
    nsd : float
        Normalised surface Dice at the evaluation's tolerance; nan when absent from both,
        0.0 when absent from one.
    volume_ml, true_volume_ml : float
        Volume of the label in the prediction and in the truth, in ml.
    """

    label: int
    name: str
    dice: float
    hd95_mm: float
    assd_mm: float
    nsd: float
    volume_ml: float
    true_volume_ml: float


def _label_array(image: sitk.Image, name: str) -> np.ndarray:
    """The voxels of a label map, validated: 3D, one component, integer values ≥ 0, no NaN."""
    if not isinstance(image, sitk.Image):
        raise TypeError(f"the {name} must be a SimpleITK.Image label map, got {type(image).__name__}")
    if image.GetDimension() != 3:
        raise ValueError(
            f"the {name} is a {image.GetDimension()}D image: label maps are evaluated in 3D; "
            "give the 3D label map (a single slice can be stored as a 3D image one voxel thick)"
        )
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(
            f"the {name} has {image.GetNumberOfComponentsPerPixel()} components per voxel: "
            "give a scalar label map (one integer label per voxel)"
        )
    array = sitk.GetArrayViewFromImage(image)
    if image.GetPixelID() not in _INTEGER_PIXEL_IDS:
        if not np.issubdtype(array.dtype, np.floating):
            raise ValueError(f"the {name} has pixel type {image.GetPixelIDTypeAsString()}: give an integer label map")
        if np.isnan(array).any():
            raise ValueError(f"the {name} holds NaNs: a label map holds integer labels; fill the NaNs (e.g. with 0)")
        if np.any(array != np.round(array)):
            example = array[array != np.round(array)].flat[0]
            raise ValueError(
                f"the {name} holds non-integer values (e.g. {example:g}): it is not a label map; "
                "round or threshold it into integer labels first"
            )
        if array.min() < 0 or array.max() > np.iinfo(np.int64).max:
            raise ValueError(f"the {name} holds labels outside 0…2⁶³: labels are non-negative integers")
        return array.astype(np.int64)
    if np.issubdtype(array.dtype, np.signedinteger) and array.min() < 0:
        raise ValueError(f"the {name} holds negative labels (e.g. {int(array.min())}): labels are integers ≥ 0")
    return array


def _label_boxes(array: np.ndarray) -> dict[int, tuple[slice, ...]]:
    """Bounding box of each non-zero label value of an integer array."""
    largest = int(array.max()) if array.size else 0
    if largest == 0:
        return {}
    if largest <= _MAX_LABEL_FOR_ONE_PASS:
        found = ndimage.find_objects(array)
        return {value + 1: box for value, box in enumerate(found) if box is not None}
    values = np.unique(array)
    return {int(v): _bounding_box(array == v) for v in values if v != 0}


def _grid_summary(image: sitk.Image) -> str:
    def numbers(values: Iterable[float]) -> str:
        return "(" + ", ".join(f"{v:g}" for v in values) + ")"

    return (
        f"size {numbers(image.GetSize())}, spacing {numbers(image.GetSpacing())} mm, "
        f"origin {numbers(image.GetOrigin())} mm, direction {numbers(round(v, 6) for v in image.GetDirection())}"
    )


def _same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    """Size equal; spacing within 1e-6 relative; origin within 1e-6 × max(1 mm, |origin|); direction within 1e-6."""
    if a.GetSize() != b.GetSize():
        return False
    spacing_a, spacing_b = np.asarray(a.GetSpacing()), np.asarray(b.GetSpacing())
    if np.any(np.abs(spacing_a - spacing_b) > GRID_TOLERANCE * np.abs(spacing_b)):
        return False
    origin_a, origin_b = np.asarray(a.GetOrigin()), np.asarray(b.GetOrigin())
    if np.any(np.abs(origin_a - origin_b) > GRID_TOLERANCE * np.maximum(1.0, np.abs(origin_b))):
        return False
    return bool(np.all(np.abs(np.asarray(a.GetDirection()) - np.asarray(b.GetDirection())) <= GRID_TOLERANCE))


def _physical_box(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """LPS extent (min, max corners, mm) of the image's voxels, their outer faces included."""
    size = image.GetSize()
    corners = [
        image.TransformContinuousIndexToPhysicalPoint([(-0.5 if c == 0 else n - 0.5) for c, n in zip(corner, size)])
        for corner in np.ndindex(*(2,) * image.GetDimension())
    ]
    points = np.asarray(corners)
    return points.min(axis=0), points.max(axis=0)


def _box_text(box: tuple[np.ndarray, np.ndarray]) -> str:
    return " × ".join(f"[{lo:.1f}, {hi:.1f}]" for lo, hi in zip(*box)) + " mm (LPS)"


def align_truth(truth: sitk.Image, reference: sitk.Image) -> tuple[sitk.Image, list[str]]:
    """The truth label map on the reference's grid, and the warnings that say what was done.

    Parameters
    ----------
    truth : SimpleITK.Image
        Reference label map (3D, integer labels).
    reference : SimpleITK.Image
        The image or prediction whose grid the truth must share.

    Returns
    -------
    SimpleITK.Image
        ``truth`` itself when the grids are the same (size equal; spacing within 1e-6
        relative; origin within 1e-6 × max(1 mm, |origin|); direction cosines within
        1e-6); otherwise the truth resampled onto the reference's grid by nearest neighbour
        through physical coordinates (labels and pixel type kept, 0 outside the truth).
    list of str
        Empty, or the warning that the truth was resampled (with both grids), and whether
        labelled voxels fell outside the reference's grid.

    Raises
    ------
    ValueError
        When the truth's physical box does not intersect the reference's (both boxes are
        named), or when either image is not a 3D scalar label map.
    """
    _label_array(truth, "truth")
    if not isinstance(reference, sitk.Image):
        raise TypeError(f"the reference must be a SimpleITK.Image, got {type(reference).__name__}")
    if reference.GetDimension() != 3:
        raise ValueError(f"the reference is a {reference.GetDimension()}D image: give the 3D image or prediction")
    if _same_grid(truth, reference):
        return truth, []
    truth_box, reference_box = _physical_box(truth), _physical_box(reference)
    if np.any(np.maximum(truth_box[0], reference_box[0]) >= np.minimum(truth_box[1], reference_box[1])):
        raise ValueError(
            f"the truth covers {_box_text(truth_box)} and the prediction's grid covers {_box_text(reference_box)}: "
            "they do not overlap, so the truth cannot be compared. Give the truth of this image (same patient "
            "coordinate system), or register it onto the image first."
        )
    resampled = sitk.Resample(truth, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, truth.GetPixelID())
    messages = [
        f"the truth's grid ({_grid_summary(truth)}) differs from the prediction's ({_grid_summary(reference)}): "
        "the truth was resampled onto the prediction's grid by nearest neighbour through physical coordinates"
    ]
    before = np.count_nonzero(sitk.GetArrayViewFromImage(truth))
    after = np.count_nonzero(sitk.GetArrayViewFromImage(resampled))
    if before and not after:
        messages.append(
            "none of the truth's labelled voxels fall on the prediction's grid: every label of the truth is empty there"
        )
    return resampled, messages


def evaluate_label_maps(
    prediction: sitk.Image,
    truth: sitk.Image,
    labels: Mapping[int, str] | None = None,
    spacing_aware: bool = True,
    nsd_tolerance_mm: float = 1.0,
) -> list[LabelEvaluation]:
    """Per-label Dice, HD95, ASSD, NSD and volumes of a predicted label map against the truth.

    Parameters
    ----------
    prediction, truth : SimpleITK.Image
        3D scalar label maps on the same grid (see :func:`align_truth`); integer labels
        ≥ 0 (a float image is accepted when every value is an integer), 0 the background.
    labels : mapping of int to str, optional
        The labels to evaluate and their names. By default the union of the non-zero
        values of both maps, named ``"label N"``. A label listed here but absent from both
        maps gets a row with nan metrics and zero volumes.
    spacing_aware : bool
        True: distances in mm from the voxel spacing. False: distances (and the NSD
        tolerance) in voxel units, every axis one voxel long; ``hd95_mm`` and ``assd_mm``
        then hold voxels. Volumes are in ml either way.
    nsd_tolerance_mm : float
        Normalised surface Dice tolerance (mm, or voxels when not ``spacing_aware``).

    Returns
    -------
    list of LabelEvaluation
        One per label, by increasing label value; fields are :data:`EVALUATION_COLUMNS`.
        Empty-label conventions are those of the module's docstring.

    Raises
    ------
    ValueError
        For 2D images, NaNs, non-integer or negative labels, or different grids.
    """
    _check_tolerance(nsd_tolerance_mm)
    pred_array = _label_array(prediction, "prediction")
    truth_array = _label_array(truth, "truth")
    if not _same_grid(prediction, truth):
        raise ValueError(
            f"the prediction ({_grid_summary(prediction)}) and the truth ({_grid_summary(truth)}) are on different "
            "grids: put the truth on the prediction's grid with align_truth(truth, prediction) first"
        )
    spacing_ijk = np.asarray(prediction.GetSpacing(), dtype=float)
    voxel_ml = float(np.prod(spacing_ijk)) / 1000.0
    spacing = spacing_ijk[::-1].copy() if spacing_aware else np.ones(3)
    pred_boxes, truth_boxes = _label_boxes(pred_array), _label_boxes(truth_array)
    if labels is None:
        names = {value: f"label {value}" for value in sorted(set(pred_boxes) | set(truth_boxes))}
    else:
        names = {}
        for value, name in labels.items():
            if isinstance(value, bool) or int(value) != value or int(value) < 1:
                raise ValueError(f"label {value!r} is not a positive integer: 0 is the background")
            names[int(value)] = str(name) if name is not None else f"label {int(value)}"
        names = dict(sorted(names.items()))
    rows = []
    for value, name in names.items():
        box = _union_box(pred_boxes.get(value), truth_boxes.get(value))
        if box is None:
            rows.append(LabelEvaluation(value, name, math.nan, math.nan, math.nan, math.nan, 0.0, 0.0))
            continue
        pred, true = pred_array[box] == value, truth_array[box] == value
        metrics = _metrics_of(_distances_of_crops(pred, true, spacing), nsd_tolerance_mm)
        rows.append(
            LabelEvaluation(
                label=value,
                name=name,
                dice=_dice_of(pred, true),
                hd95_mm=metrics.hd95_mm,
                assd_mm=metrics.assd_mm,
                nsd=metrics.nsd,
                volume_ml=int(np.count_nonzero(pred)) * voxel_ml,
                true_volume_ml=int(np.count_nonzero(true)) * voxel_ml,
            )
        )
    return rows


def _csv_cell(value: Any) -> str:
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return (
            "nan"
            if math.isnan(value)
            else "inf"
            if value == math.inf
            else "-inf"
            if value == -math.inf
            else repr(value)
        )
    return str(value)


def write_evaluation_csv(rows: Iterable[LabelEvaluation | Mapping[str, Any]], path: str | Path) -> Path:
    """Write evaluation rows to a CSV with the columns :data:`EVALUATION_COLUMNS`, atomically.

    Floats are written at full precision; a metric absent in both maps is written ``nan``
    and a distance to an empty mask ``inf`` (``pandas.read_csv`` reads both back).

    Parameters
    ----------
    rows : iterable of LabelEvaluation or mapping
        Rows from :func:`evaluate_label_maps` (mappings need at least the columns).
    path : str or pathlib.Path
        Output file; written whole or not at all.

    Returns
    -------
    pathlib.Path
    """
    import csv

    table = []
    for row in rows:
        values = asdict(row) if isinstance(row, LabelEvaluation) else dict(row)
        missing = [c for c in EVALUATION_COLUMNS if c not in values]
        if missing:
            raise ValueError(f"an evaluation row lacks the column(s) {', '.join(missing)}")
        table.append([_csv_cell(values[c]) for c in EVALUATION_COLUMNS])
    path = Path(path)

    def write(target: Path) -> None:
        with open(target, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(EVALUATION_COLUMNS)
            writer.writerows(table)

    write_atomically(path, write)
    return path


# --------------------------------------------------------------------------- lesions


@dataclass(frozen=True)
class LesionMatch:
    """One truth lesion (connected component of the truth) and how the prediction found it.

    Attributes
    ----------
    lesion : int
        Truth lesion number, 1, 2, … in the order of each lesion's first voxel in array
        ([k, j, i]) order within the masks' union bounding box.
    volume_ml : float
        Its volume.
    covered_fraction : float
        Fraction of its voxels that are predicted (by any predicted component).
    detected : bool
        ``covered_fraction ≥ min_overlap`` and at least one voxel covered.
    dice : float
        Dice of the lesion against the union of the predicted components that overlap it
        (0.0 when none does).
    predicted_components : int
        Number of predicted components overlapping it (> 1: split; a component shared with
        another truth lesion: merged).
    """

    lesion: int
    volume_ml: float
    covered_fraction: float
    detected: bool
    dice: float
    predicted_components: int


@dataclass(frozen=True)
class LesionEvaluation:
    """Lesion-wise detection metrics of one case (one prediction against one truth).

    Attributes
    ----------
    true_positives : int
        Detected truth lesions.
    false_negatives : int
        Truth lesions not detected.
    false_positives : int
        Predicted components that take part in no detection (share no voxel with a
        detected truth lesion).
    sensitivity : float
        ``TP / (TP + FN)``; nan without truth lesions.
    ppv : float
        ``TP / (TP + FP)``; nan when both are 0.
    f1 : float
        ``2TP / (2TP + FP + FN)``; nan when all are 0.
    dice : float
        Voxel-wise Dice of the whole masks (nan when both are empty).
    false_positive_volume_ml : float
        autoPET's false-positive volume: total volume of the predicted components that
        share no voxel with the truth.
    false_negative_volume_ml : float
        autoPET's false-negative volume: total volume of the truth components that share
        no voxel with the prediction.
    truth_lesions, predicted_lesions : int
        Numbers of connected components.
    truth_volume_ml, prediction_volume_ml, intersection_volume_ml : float
        Whole-mask volumes (for pooled Dice over cases).
    min_overlap : float
        The matching rule's fraction (0: any overlap).
    connectivity : int
        6, 18 or 26.
    lesions : tuple of LesionMatch
        Every truth lesion.
    """

    true_positives: int
    false_negatives: int
    false_positives: int
    sensitivity: float
    ppv: float
    f1: float
    dice: float
    false_positive_volume_ml: float
    false_negative_volume_ml: float
    truth_lesions: int
    predicted_lesions: int
    truth_volume_ml: float
    prediction_volume_ml: float
    intersection_volume_ml: float
    min_overlap: float
    connectivity: int
    lesions: tuple[LesionMatch, ...]


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else math.nan


def lesion_metrics(
    prediction: MaskLike,
    truth: MaskLike,
    spacing_mm: Sequence[float] | None = None,
    min_overlap: float = 0.5,
    connectivity: int = 18,
) -> LesionEvaluation:
    """Lesion-wise detection of a predicted lesion mask against the truth, and autoPET's volumes.

    Lesions are the connected components of each mask (``connectivity`` 6, 18 or 26; 18 by
    default, as autoPET). **Matching rule:** a truth lesion is detected (a true positive)
    when predicted voxels — of any predicted component — cover at least ``min_overlap`` of
    its volume, and at least one of its voxels; otherwise it is a false negative. With
    ``min_overlap=0`` this is the "any overlap" rule. A predicted component that shares no
    voxel with a detected truth lesion is a false positive (so under a fraction rule a
    component covering too little of a truth lesion counts against both sides).

    The false-positive and false-negative volumes are autoPET's (``false_pos_pix`` and
    ``false_neg_pix`` of the challenge's ``val_script.py``, github.com/lab-midas/autoPET,
    18-connected components): the total volume of the predicted components that overlap no
    truth voxel, and of the truth components that no predicted voxel overlaps. They do not
    depend on ``min_overlap``.

    Parameters
    ----------
    prediction, truth : numpy.ndarray or SimpleITK.Image
        3D binary masks on one grid (non-zero is lesion); arrays indexed [k, j, i].
    spacing_mm : sequence of float, optional
        Spacing in (i, j, k) order (``GetSpacing()``), for the volumes; required with arrays.
    min_overlap : float
        Fraction of a truth lesion's volume that must be predicted, in [0, 1].
    connectivity : int
        6 (faces), 18 (faces and edges) or 26 (and corners).

    Returns
    -------
    LesionEvaluation
    """
    if connectivity not in CONNECTIVITY:
        raise ValueError(f"connectivity {connectivity} is not 6, 18 or 26")
    if not 0.0 <= min_overlap <= 1.0:
        raise ValueError(f"min_overlap {min_overlap} must be a fraction in [0, 1] (0 for any overlap)")
    pred, true, spacing = _masks(prediction, truth, spacing_mm)
    if pred.ndim != 3:
        raise ValueError(f"lesion-wise metrics need 3D masks, got {pred.ndim}D")
    voxel_ml = float(np.prod(spacing)) / 1000.0
    pred, true = _crop(pred, true)
    structure = ndimage.generate_binary_structure(3, CONNECTIVITY[connectivity])
    truth_labels, n_truth = ndimage.label(true, structure=structure)
    pred_labels, n_pred = ndimage.label(pred, structure=structure)
    # counted over the lesion voxels only: the box is mostly background
    truth_sizes = np.bincount(truth_labels[true], minlength=n_truth + 1)
    pred_sizes = np.bincount(pred_labels[pred], minlength=n_pred + 1)
    overlap = true & pred
    pairs, pair_voxels = np.unique(
        truth_labels[overlap].astype(np.int64) * (n_pred + 1) + pred_labels[overlap], return_counts=True
    )
    pair_truth, pair_pred = pairs // (n_pred + 1), pairs % (n_pred + 1)
    covered = np.bincount(pair_truth, weights=pair_voxels, minlength=n_truth + 1)
    union_sizes = np.bincount(pair_truth, weights=pred_sizes[pair_pred], minlength=n_truth + 1)
    components = np.bincount(pair_truth, minlength=n_truth + 1)
    fraction = covered[1:] / truth_sizes[1:]
    detected = (covered[1:] > 0) & (fraction >= min_overlap)
    lesions = tuple(
        LesionMatch(
            lesion=n + 1,
            volume_ml=int(truth_sizes[n + 1]) * voxel_ml,
            covered_fraction=float(fraction[n]),
            detected=bool(detected[n]),
            dice=float(2.0 * covered[n + 1] / (truth_sizes[n + 1] + union_sizes[n + 1])),
            predicted_components=int(components[n + 1]),
        )
        for n in range(n_truth)
    )
    in_detection = np.unique(pair_pred[detected[pair_truth - 1]]) if pairs.size else np.empty(0, int)
    touches_truth = np.zeros(n_pred + 1, dtype=bool)
    touches_truth[pair_pred] = True
    tp = int(detected.sum())
    fn = n_truth - tp
    fp = n_pred - in_detection.size
    truth_voxels, pred_voxels = int(truth_sizes[1:].sum()), int(pred_sizes[1:].sum())
    intersection = int(np.count_nonzero(overlap))
    return LesionEvaluation(
        true_positives=tp,
        false_negatives=fn,
        false_positives=fp,
        sensitivity=_ratio(tp, tp + fn),
        ppv=_ratio(tp, tp + fp),
        f1=_ratio(2 * tp, 2 * tp + fp + fn),
        dice=_ratio(2.0 * intersection, truth_voxels + pred_voxels),
        false_positive_volume_ml=int(pred_sizes[1:][~touches_truth[1:]].sum()) * voxel_ml,
        false_negative_volume_ml=int(truth_sizes[1:][covered[1:] == 0].sum()) * voxel_ml,
        truth_lesions=n_truth,
        predicted_lesions=n_pred,
        truth_volume_ml=truth_voxels * voxel_ml,
        prediction_volume_ml=pred_voxels * voxel_ml,
        intersection_volume_ml=intersection * voxel_ml,
        min_overlap=float(min_overlap),
        connectivity=connectivity,
        lesions=lesions,
    )


def _mean(values: Iterable[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def aggregate_cases(cases: Iterable[LesionEvaluation]) -> dict[str, Any]:
    """Patient-wise against lesion-wise aggregation of lesion metrics over cases.

    Patient-wise: every case weighs the same (the mean of per-case values, nan values —
    e.g. the Dice of a case without lesions in either mask, the sensitivity of a case
    without truth lesions — left out). Lesion-wise: every lesion weighs the same (counts
    and volumes pooled over cases, then the ratios).

    Parameters
    ----------
    cases : iterable of LesionEvaluation
        One per case (patient or scan), from :func:`lesion_metrics`.

    Returns
    -------
    dict
        ``{"cases": n, "patient_wise": {...}, "lesion_wise": {...}}``. Patient-wise keys:
        ``dice_mean``, ``sensitivity_mean``, ``ppv_mean``, ``f1_mean``,
        ``false_positive_volume_ml_mean``, ``false_negative_volume_ml_mean``,
        ``cases_with_lesions``, ``detection_rate`` (fraction of cases with truth lesions in
        which at least one is detected), ``cases_without_lesions`` and
        ``false_alarm_rate`` (fraction of cases without truth lesions with at least one
        predicted lesion). Lesion-wise keys: ``true_positives``, ``false_positives``,
        ``false_negatives``, ``sensitivity``, ``ppv``, ``f1``, ``dice_pooled`` (voxels
        pooled over cases), ``lesion_dice_mean`` (mean per-lesion Dice over all truth
        lesions), ``false_positive_volume_ml``, ``false_negative_volume_ml`` (totals).
    """
    cases = list(cases)
    if not cases:
        raise ValueError("no cases to aggregate")
    positive = [c for c in cases if c.truth_lesions > 0]
    negative = [c for c in cases if c.truth_lesions == 0]
    tp = sum(c.true_positives for c in cases)
    fp = sum(c.false_positives for c in cases)
    fn = sum(c.false_negatives for c in cases)
    lesion_dice = [lesion.dice for c in cases for lesion in c.lesions]
    return {
        "cases": len(cases),
        "patient_wise": {
            "dice_mean": _mean(c.dice for c in cases),
            "sensitivity_mean": _mean(c.sensitivity for c in cases),
            "ppv_mean": _mean(c.ppv for c in cases),
            "f1_mean": _mean(c.f1 for c in cases),
            "false_positive_volume_ml_mean": float(np.mean([c.false_positive_volume_ml for c in cases])),
            "false_negative_volume_ml_mean": float(np.mean([c.false_negative_volume_ml for c in cases])),
            "cases_with_lesions": len(positive),
            "detection_rate": _ratio(sum(c.true_positives > 0 for c in positive), len(positive)),
            "cases_without_lesions": len(negative),
            "false_alarm_rate": _ratio(sum(c.predicted_lesions > 0 for c in negative), len(negative)),
        },
        "lesion_wise": {
            "true_positives": tp,
            "false_positives": fp,
            "false_negatives": fn,
            "sensitivity": _ratio(tp, tp + fn),
            "ppv": _ratio(tp, tp + fp),
            "f1": _ratio(2 * tp, 2 * tp + fp + fn),
            "dice_pooled": _ratio(
                2.0 * sum(c.intersection_volume_ml for c in cases),
                sum(c.truth_volume_ml + c.prediction_volume_ml for c in cases),
            ),
            "lesion_dice_mean": float(np.mean(lesion_dice)) if lesion_dice else math.nan,
            "false_positive_volume_ml": float(sum(c.false_positive_volume_ml for c in cases)),
            "false_negative_volume_ml": float(sum(c.false_negative_volume_ml for c in cases)),
        },
    }
