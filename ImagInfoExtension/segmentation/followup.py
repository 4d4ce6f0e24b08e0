"""Follow-up: rigid registration of a follow-up scan to its baseline, lesion matching and change.

The follow-up is registered to the baseline with a rigid (Euler 3D) transform:
SimpleITK's registration with Mattes mutual information (or mean squares),
centred initialisation, a three-level multi-resolution pyramid and a seeded random
sampling of the metric, so the same pair gives the same transform every time.

The registration's transform ``T`` maps a baseline point to the follow-up point
that shows the same anatomy (SimpleITK's fixed-to-moving convention): when the
patient lies 4 mm further left in the follow-up, ``T`` translates by +4 mm along x.

Lesions (connected components of each label, numbered as
:func:`ImagInfoExtension.radiomics.lesions.split_lesions` numbers them) are matched
one to one per label:

1. the follow-up label map is brought into baseline space (nearest neighbour through
   ``T``) and pairs are taken by decreasing overlap (in voxels), a pair counting when
   its overlap is at least ``min_overlap_fraction`` of the smaller lesion;
2. lesions left over are paired by the distance between their centroids (the follow-up
   centroid mapped into baseline space by ``T``'s inverse), nearest first, up to
   ``max_centroid_distance_mm``;
3. baseline lesions still alone have *vanished*, follow-up lesions still alone are *new*.

Volumes are those of each scan on its own grid (resampling would change them), so a
volume change compares two voxel counts, not a count and its interpolation.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ImagInfoExtension.geometry import ImageGrid
from ImagInfoExtension.io import write_atomically
from ImagInfoExtension.segmentation.biomarkers import label_array, label_boxes, label_lesions
from ImagInfoExtension.segmentation.rules import check_image, check_same_grid

METRICS = ("mattes", "mean_squares")
STATUSES = ("matched", "new", "vanished")

#: Columns of the per-lesion follow-up table (``FollowupResult.table``, ``write_followup_csv``).
FOLLOWUP_COLUMNS: tuple[str, ...] = (
    "label",
    "baseline_lesion_id",
    "followup_lesion_id",
    "status",
    "matched_by",
    "overlap_voxels",
    "baseline_volume_ml",
    "followup_volume_ml",
    "volume_change_ml",
    "volume_change_percent",
    "centroid_shift_mm",
    "baseline_centroid_lps_x_mm",
    "baseline_centroid_lps_y_mm",
    "baseline_centroid_lps_z_mm",
    "followup_centroid_lps_x_mm",
    "followup_centroid_lps_y_mm",
    "followup_centroid_lps_z_mm",
)


@dataclass(frozen=True)
class RigidRegistration:
    """A rigid registration of a moving image to a fixed one.

    Attributes
    ----------
    transform : SimpleITK.Euler3DTransform
        Maps fixed (baseline) points to moving (follow-up) points, in LPS mm.
    final_metric : float
        The metric at the end (Mattes: negative mutual information; lower is better).
    translation_mm : tuple of float
        ``T``'s translation (LPS), with the rotation about ``center_mm``.
    rotation_deg : tuple of float
        Euler angles about x, y and z (LPS), in degrees.
    center_mm : tuple of float
        The centre of rotation.
    metric : str
    iterations : int
        Optimiser iterations at the finest level.
    stop_condition : str
    """

    transform: sitk.Euler3DTransform
    final_metric: float
    translation_mm: tuple[float, float, float]
    rotation_deg: tuple[float, float, float]
    center_mm: tuple[float, float, float]
    metric: str
    iterations: int
    stop_condition: str

    def map_to_moving(self, points_lps_mm: np.ndarray) -> np.ndarray:
        """Fixed (baseline) points ``(N, 3)`` to moving (follow-up) space."""
        points = np.atleast_2d(points_lps_mm)
        return np.array([self.transform.TransformPoint(tuple(float(v) for v in p)) for p in points]).reshape(-1, 3)

    def map_to_fixed(self, points_lps_mm: np.ndarray) -> np.ndarray:
        """Moving (follow-up) points ``(N, 3)`` to fixed (baseline) space."""
        inverse = self.transform.GetInverse()
        points = np.atleast_2d(points_lps_mm)
        return np.array([inverse.TransformPoint(tuple(float(v) for v in p)) for p in points]).reshape(-1, 3)


def physical_box_mm(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """The LPS box (min, max corners, mm) that holds the image's voxels, outer faces included."""
    grid = ImageGrid.from_sitk(image)
    size = np.asarray(grid.size_ijk, dtype=float)
    corners = np.array([[(-0.5, size[a] - 0.5)[b >> a & 1] for a in range(3)] for b in range(8)])
    points = grid.physical_from_index(corners)
    return points.min(axis=0), points.max(axis=0)


def check_overlap(fixed: sitk.Image, moving: sitk.Image, fixed_name: str = "baseline", moving_name: str = "follow-up"):
    """Refuse a pair whose physical boxes do not intersect: nothing could be registered or compared."""
    low_a, high_a = physical_box_mm(fixed)
    low_b, high_b = physical_box_mm(moving)
    if np.any(np.maximum(low_a, low_b) > np.minimum(high_a, high_b)):

        def show(low: np.ndarray, high: np.ndarray) -> str:
            return "[" + ", ".join(f"{lo:.1f}..{hi:.1f}" for lo, hi in zip(low, high)) + "] mm"

        raise ValueError(
            f"the {fixed_name} (LPS box {show(low_a, high_a)}) and the {moving_name} (LPS box "
            f"{show(low_b, high_b)}) do not overlap in physical space; check that both series are of the "
            f"same patient and body region, or bring the {moving_name} near the {fixed_name} first (e.g. an "
            "initial transform from landmarks, passed as initial_transform)"
        )


def register_rigid(
    fixed: sitk.Image,
    moving: sitk.Image,
    *,
    metric: str = "mattes",
    histogram_bins: int = 50,
    sampling_percentage: float = 0.2,
    max_samples: int = 50_000,
    shrink_factors: Sequence[int] = (4, 2, 1),
    smoothing_sigmas_mm: Sequence[float] = (2.0, 1.0, 0.0),
    iterations: int = 200,
    max_step_mm: float = 2.0,
    min_step_mm: float = 1e-4,
    initialisation: str = "geometry",
    initial_transform: sitk.Transform | None = None,
    fixed_mask: sitk.Image | None = None,
    seed: int = 0,
    number_of_threads: int | None = 1,
) -> RigidRegistration:
    """Register ``moving`` (the follow-up) rigidly to ``fixed`` (the baseline).

    Parameters
    ----------
    fixed, moving : SimpleITK.Image
        3D scalar images (any grids, overlapping in physical space).
    metric : {"mattes", "mean_squares"}
        Mattes mutual information (robust to contrast and scanner changes), or mean
        squares (same scanner and protocol).
    histogram_bins : int
        Mattes histogram bins.
    sampling_percentage : float
        Share of the fixed image's voxels sampled (randomly, with ``seed``) at each level,
    max_samples : int
        but at most this many voxels per level (a large CT needs no more for a rigid fit).
    shrink_factors, smoothing_sigmas_mm : sequences
        The multi-resolution pyramid, coarse to fine (smoothing in mm).
    iterations : int
        Maximum gradient-descent iterations per level.
    max_step_mm, min_step_mm : float
        First and smallest step of the regular-step gradient descent (parameters are
        scaled so that a unit step moves voxels by about 1 mm).
    initialisation : {"geometry", "moments"}
        Centre the transform on the images' geometric centres or on their centres of mass.
    initial_transform : SimpleITK.Transform, optional
        Start here instead (e.g. from landmarks); it must map fixed to moving points.
    fixed_mask : SimpleITK.Image, optional
        Only fixed voxels inside (non-zero) are sampled, on the fixed image's grid.
    seed : int
        Seeds the metric's sampling: the same pair and settings give the same transform.
    number_of_threads : int or None
        Threads of the registration and of SimpleITK's filters while it runs (SimpleITK's
        global default is set for the duration and restored). 1, the default, gives the
        same transform to the last bit on every run and machine: with several threads,
        sums in another order differ in the last bits and the optimiser carries that on.
        None keeps SimpleITK's default.

    Returns
    -------
    RigidRegistration

    Raises
    ------
    ValueError
        On a 2D image, NaNs, images that do not overlap physically or bad settings.
    """
    check_image(fixed, "baseline image")
    check_image(moving, "follow-up image")
    if metric not in METRICS:
        raise ValueError(f"metric {metric!r} is not one of {', '.join(METRICS)}")
    if initialisation not in ("geometry", "moments"):
        raise ValueError(f"initialisation {initialisation!r} is not 'geometry' or 'moments'")
    if len(shrink_factors) != len(smoothing_sigmas_mm) or not shrink_factors:
        raise ValueError("shrink_factors and smoothing_sigmas_mm must give one value per level (as many of each)")
    if not 0 < sampling_percentage <= 1:
        raise ValueError(f"sampling_percentage {sampling_percentage} must be in (0, 1]")
    if max_samples < 1000:
        raise ValueError(f"max_samples {max_samples} is too few for a registration; use at least 1000")
    if iterations < 1:
        raise ValueError(f"iterations {iterations} must be ≥ 1")
    if not 0 <= seed < 2**32 - 1:
        raise ValueError(f"seed {seed} must be an integer from 0 to 2**32 - 2")
    if not 0 < min_step_mm <= max_step_mm:
        raise ValueError(f"steps must satisfy 0 < min_step_mm ({min_step_mm}) ≤ max_step_mm ({max_step_mm})")
    if fixed_mask is not None:
        check_same_grid(fixed, fixed_mask, "fixed mask", reference="baseline image")
    check_overlap(fixed, moving)
    if number_of_threads is not None and number_of_threads < 1:
        raise ValueError(f"number_of_threads {number_of_threads} must be ≥ 1 (or None)")
    settings = dict(
        metric=metric,
        histogram_bins=int(histogram_bins),
        sampling_percentage=float(sampling_percentage),
        max_samples=int(max_samples),
        iterations=int(iterations),
        max_step_mm=float(max_step_mm),
        min_step_mm=float(min_step_mm),
        seed=int(seed),
    )
    previous_threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    if number_of_threads is not None:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(int(number_of_threads))
    try:
        fixed_float = sitk.Cast(fixed, sitk.sitkFloat32)
        moving_float = sitk.Cast(moving, sitk.sitkFloat32)
        if initial_transform is not None:
            transform = _as_euler(initial_transform, _centre_mm(fixed))
        else:
            mode = (
                sitk.CenteredTransformInitializerFilter.GEOMETRY
                if initialisation == "geometry"
                else sitk.CenteredTransformInitializerFilter.MOMENTS
            )
            transform = sitk.Euler3DTransform(
                sitk.CenteredTransformInitializer(fixed_float, moving_float, sitk.Euler3DTransform(), mode)
            )
        # The pyramid is built level by level, each from block averages of the full image
        # and then smoothed: smoothing the whole image at every level (what ImageRegistrationMethod's
        # own pyramid does) costs about 10 s per level and image on a 512 x 512 x 300 CT.
        for level, (factor, sigma_mm) in enumerate(zip(shrink_factors, smoothing_sigmas_mm)):
            fixed_level = _pyramid_level(fixed_float, int(factor), float(sigma_mm))
            moving_level = _pyramid_level(moving_float, int(factor), float(sigma_mm))
            mask_level = None
            if fixed_mask is not None:
                mask_level = sitk.Resample(
                    sitk.Cast(fixed_mask != 0, sitk.sitkUInt8), fixed_level, sitk.Transform(), sitk.sitkNearestNeighbor
                )
            method, result = _register_level(fixed_level, moving_level, mask_level, transform, level, settings)
            transform = _as_euler(result, transform.GetCenter())
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(previous_threads)
    return RigidRegistration(
        transform=transform,
        final_metric=float(method.GetMetricValue()),
        translation_mm=tuple(float(v) for v in transform.GetTranslation()),
        rotation_deg=(
            math.degrees(transform.GetAngleX()),
            math.degrees(transform.GetAngleY()),
            math.degrees(transform.GetAngleZ()),
        ),
        center_mm=tuple(float(v) for v in transform.GetCenter()),
        metric=metric,
        iterations=int(method.GetOptimizerIteration()),
        stop_condition=method.GetOptimizerStopConditionDescription(),
    )


def _pyramid_level(image: sitk.Image, factor: int, sigma_mm: float) -> sitk.Image:
    """The image averaged over blocks of ``factor`` voxels per axis (no more than it has), then smoothed."""
    if factor < 1:
        raise ValueError(f"shrink factor {factor} must be ≥ 1")
    factors = [min(factor, size) for size in image.GetSize()]
    if max(factors) > 1:
        image = sitk.BinShrink(image, factors)
    if sigma_mm > 0:
        image = sitk.SmoothingRecursiveGaussian(image, sigma_mm)
    return image


def _register_level(
    fixed: sitk.Image,
    moving: sitk.Image,
    mask: sitk.Image | None,
    start: sitk.Euler3DTransform,
    level: int,
    settings: dict,
) -> tuple[sitk.ImageRegistrationMethod, sitk.Transform]:
    """One level of the pyramid, from ``start``: the registration method (for its metric) and the transform."""
    method = sitk.ImageRegistrationMethod()
    if settings["metric"] == "mattes":
        method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=settings["histogram_bins"])
    else:
        method.SetMetricAsMeanSquares()
    method.SetMetricSamplingStrategy(method.RANDOM)
    share = min(settings["sampling_percentage"], settings["max_samples"] / float(np.prod(fixed.GetSize())))
    # SimpleITK reads a seed of 0 as "seed from the wall clock": seed s goes in as s + 1 (+ the level).
    method.SetMetricSamplingPercentage(share, settings["seed"] + 1 + level)
    if mask is not None:
        method.SetMetricFixedMask(mask)
    # Gradients at the sampled points only: a gradient image of a whole CT costs seconds and gigabytes.
    method.SetMetricUseFixedImageGradientFilter(False)
    method.SetMetricUseMovingImageGradientFilter(False)
    method.SetInterpolator(sitk.sitkLinear)
    # Regular-step descent: with scales from a physical shift its step is in mm, so it
    # starts at ``max_step_mm`` and halves on each overshoot down to ``min_step_mm``.
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=settings["max_step_mm"],
        minStep=settings["min_step_mm"],
        numberOfIterations=settings["iterations"],
        relaxationFactor=0.5,
        gradientMagnitudeTolerance=1e-8,
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetInitialTransform(start, inPlace=False)
    try:
        result = method.Execute(fixed, moving)
    except RuntimeError as error:
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else "unknown"
        raise ValueError(
            f"the rigid registration failed at level {level + 1} ({reason}); the images may overlap too little: "
            "pass an initial_transform, a fixed_mask, or a larger sampling_percentage"
        ) from None
    return method, result


def _centre_mm(image: sitk.Image) -> tuple[float, float, float]:
    low, high = physical_box_mm(image)
    return tuple(float(v) for v in (low + high) / 2)


def _as_euler(transform: sitk.Transform, centre_mm: Sequence[float]) -> sitk.Euler3DTransform:
    """An Euler 3D transform equal to ``transform`` (rigid, possibly composite)."""
    if isinstance(transform, sitk.CompositeTransform) and transform.GetNumberOfTransforms() == 1:
        transform = transform.GetNthTransform(0)
    if transform.GetName() == "Euler3DTransform":
        return sitk.Euler3DTransform(transform)
    # Rebuild from how it moves points: its affine part must be a rotation.
    origin = np.asarray(transform.TransformPoint((0.0, 0.0, 0.0)))
    matrix = np.column_stack([np.asarray(transform.TransformPoint(tuple(np.eye(3)[n]))) - origin for n in range(3)])
    if not np.allclose(matrix.T @ matrix, np.eye(3), atol=1e-6) or np.linalg.det(matrix) < 0:
        raise ValueError("initial_transform must be rigid (a rotation and a translation)")
    euler = sitk.Euler3DTransform()
    euler.SetCenter(tuple(float(v) for v in centre_mm))
    euler.SetMatrix(tuple(float(v) for v in matrix.ravel()))
    centre = np.asarray(centre_mm, dtype=float)
    euler.SetTranslation(tuple(float(v) for v in origin + matrix @ centre - centre))
    return euler


@dataclass(frozen=True)
class LesionChange:
    """One row of the follow-up table: a matched pair, a new lesion or a vanished one.

    Attributes
    ----------
    label : int
    baseline_lesion_id, followup_lesion_id : int or None
        Lesion numbers in each scan (1 = the label's largest lesion there); None on the
        side where the lesion is absent.
    status : {"matched", "new", "vanished"}
    matched_by : {"overlap", "distance"} or None
    overlap_voxels : int
        Baseline voxels the two lesions share once the follow-up is in baseline space.
    baseline_volume_ml, followup_volume_ml : float
        Each on its own scan's grid; 0 where the lesion is absent.
    volume_change_ml : float
        Follow-up minus baseline.
    volume_change_percent : float or None
        Relative to the baseline; None for a new lesion.
    centroid_shift_mm : float or None
        Distance from the baseline centroid to the follow-up centroid mapped into
        baseline space (the lesion's own displacement once the patient's is undone).
    baseline_centroid_lps_mm : tuple of float or None
    followup_centroid_lps_mm : tuple of float or None
        The follow-up centroid in baseline space (LPS).
    """

    label: int
    baseline_lesion_id: int | None
    followup_lesion_id: int | None
    status: str
    matched_by: str | None
    overlap_voxels: int
    baseline_volume_ml: float
    followup_volume_ml: float
    volume_change_ml: float
    volume_change_percent: float | None
    centroid_shift_mm: float | None
    baseline_centroid_lps_mm: tuple[float, float, float] | None
    followup_centroid_lps_mm: tuple[float, float, float] | None

    def as_dict(self) -> dict[str, object]:
        """The row under :data:`FOLLOWUP_COLUMNS`."""
        row: dict[str, object] = {
            key: getattr(self, key) for key in FOLLOWUP_COLUMNS[: FOLLOWUP_COLUMNS.index("centroid_shift_mm") + 1]
        }
        for prefix, value in (
            ("baseline_centroid_lps", self.baseline_centroid_lps_mm),
            ("followup_centroid_lps", self.followup_centroid_lps_mm),
        ):
            for n, axis in enumerate("xyz"):
                row[f"{prefix}_{axis}_mm"] = None if value is None else value[n]
        return row


@dataclass(frozen=True)
class FollowupResult:
    """A follow-up compared with its baseline.

    Attributes
    ----------
    registration : RigidRegistration
        Follow-up registered to baseline.
    lesions : tuple of LesionChange
        By label; baseline lesions in order (matched or vanished), then new lesions.
    followup_labels_in_baseline : SimpleITK.Image
        The follow-up label map on the baseline grid (nearest neighbour through the
        registration), for display.
    """

    registration: RigidRegistration
    lesions: tuple[LesionChange, ...]
    followup_labels_in_baseline: sitk.Image

    def table(self) -> list[dict[str, object]]:
        """The per-lesion rows under :data:`FOLLOWUP_COLUMNS`."""
        return [lesion.as_dict() for lesion in self.lesions]

    def summary(self) -> dict[int, dict[str, float | int]]:
        """Per label: lesion counts by status, and total volumes (ml) at baseline and follow-up."""
        totals: dict[int, dict[str, float | int]] = {}
        for lesion in self.lesions:
            entry = totals.setdefault(
                lesion.label,
                {"matched": 0, "new": 0, "vanished": 0, "baseline_volume_ml": 0.0, "followup_volume_ml": 0.0},
            )
            entry[lesion.status] += 1
            entry["baseline_volume_ml"] += lesion.baseline_volume_ml
            entry["followup_volume_ml"] += lesion.followup_volume_ml
        return totals


@dataclass(frozen=True)
class _Found:
    """The lesions of one label in one scan."""

    ids: list[int]
    volumes_ml: list[float]
    centroids_lps_mm: np.ndarray  # (N, 3)
    masks: list[tuple[tuple[slice, ...], np.ndarray]]  # (box in the full array, mask in the box)


def _lesions(
    array: np.ndarray,
    grid: ImageGrid,
    label: int,
    boxes: dict[int, tuple[slice, ...]],
    connectivity: int,
    min_volume_ml: float,
) -> _Found:
    if label not in boxes:
        return _Found([], [], np.zeros((0, 3)), [])
    found = label_lesions(array, grid, label, boxes[label], connectivity=connectivity, min_volume_ml=min_volume_ml)
    return _Found(
        ids=[lesion.lesion_id for lesion in found.lesions],
        volumes_ml=[lesion.volume_ml for lesion in found.lesions],
        centroids_lps_mm=np.array([lesion.centroid_lps_mm for lesion in found.lesions]).reshape(-1, 3),
        masks=[(lesion.box, lesion.mask) for lesion in found.lesions],
    )


def compare_followup(
    baseline_image: sitk.Image,
    baseline_labels: sitk.Image,
    followup_image: sitk.Image,
    followup_labels: sitk.Image,
    *,
    labels: Sequence[int] | None = None,
    connectivity: int = 26,
    min_lesion_volume_ml: float = 0.0,
    min_overlap_fraction: float = 0.0,
    max_centroid_distance_mm: float = 10.0,
    registration: RigidRegistration | None = None,
    **registration_options,
) -> FollowupResult:
    """Register the follow-up to the baseline, match lesions and measure their change.

    Parameters
    ----------
    baseline_image, followup_image : SimpleITK.Image
        The two scans (3D, any grids that overlap physically).
    baseline_labels, followup_labels : SimpleITK.Image
        Label maps on their scan's grid; lesions are the connected components of each label.
    labels : sequence of int, optional
        Labels compared (default: every label present in either map).
    connectivity : {6, 18, 26}
    min_lesion_volume_ml : float
        Smaller components are not lesions, in either scan.
    min_overlap_fraction : float
        A pair matches by overlap when they share at least one voxel and at least this
        fraction of the smaller lesion's volume.
    max_centroid_distance_mm : float
        Lesions left unmatched pair by centroid distance up to this (0 turns it off).
    registration : RigidRegistration, optional
        A registration already made (follow-up to baseline); otherwise
        :func:`register_rigid` runs with ``registration_options``.

    Returns
    -------
    FollowupResult

    Raises
    ------
    ValueError
        On scans that do not overlap physically, label maps not on their scan's grid,
        2D images, NaNs or bad settings.
    """
    baseline_grid = check_image(baseline_image, "baseline image")
    followup_grid = check_image(followup_image, "follow-up image")
    baseline_array = label_array(baseline_labels, "baseline label map")
    followup_array = label_array(followup_labels, "follow-up label map")
    check_same_grid(baseline_image, baseline_labels, "baseline label map", reference="baseline image")
    check_same_grid(followup_image, followup_labels, "follow-up label map", reference="follow-up image")
    check_overlap(baseline_image, followup_image)
    if not 0 <= min_overlap_fraction <= 1:
        raise ValueError(f"min_overlap_fraction {min_overlap_fraction} must be in [0, 1]")
    if not max_centroid_distance_mm >= 0:
        raise ValueError(f"max_centroid_distance_mm {max_centroid_distance_mm} must be ≥ 0")
    if registration is None:
        registration = register_rigid(baseline_image, followup_image, **registration_options)
    elif registration_options:
        raise ValueError("pass either a registration or registration options, not both")
    baseline_boxes, followup_boxes = label_boxes(baseline_array), label_boxes(followup_array)
    chosen = sorted(set(labels) if labels is not None else set(baseline_boxes) | set(followup_boxes))

    baseline_found = {
        label: _lesions(baseline_array, baseline_grid, label, baseline_boxes, connectivity, min_lesion_volume_ml)
        for label in chosen
    }
    followup_found = {
        label: _lesions(followup_array, followup_grid, label, followup_boxes, connectivity, min_lesion_volume_ml)
        for label in chosen
    }
    # One number per follow-up lesion, carried into baseline space by nearest neighbour,
    # gives every overlap at once.
    codes = np.zeros(followup_array.shape, dtype=np.int32)
    code_of: dict[int, tuple[int, int]] = {}
    for label in chosen:
        for lesion_id, (box, mask) in zip(followup_found[label].ids, followup_found[label].masks):
            code = len(code_of) + 1
            codes[box][mask] = code
            code_of[code] = (label, lesion_id)
    codes_image = followup_grid.to_sitk(codes)
    moved_codes = sitk.GetArrayFromImage(
        sitk.Resample(codes_image, baseline_image, registration.transform, sitk.sitkNearestNeighbor, 0, sitk.sitkInt32)
    )
    moved_labels = sitk.Resample(
        followup_labels,
        baseline_image,
        registration.transform,
        sitk.sitkNearestNeighbor,
        0,
        followup_labels.GetPixelID(),
    )
    voxel_ml = baseline_grid.voxel_volume_mm3 / 1000.0

    rows: list[LesionChange] = []
    for label in chosen:
        base, follow = baseline_found[label], followup_found[label]
        follow_centroids = registration.map_to_fixed(follow.centroids_lps_mm) if follow.ids else np.zeros((0, 3))
        index_of_code = {
            code: follow.ids.index(lesion_id) for code, (lab, lesion_id) in code_of.items() if lab == label
        }
        candidates = []
        for b, (box, mask) in enumerate(base.masks):
            counts = np.bincount(moved_codes[box][mask], minlength=len(code_of) + 1)
            for code in np.flatnonzero(counts[1:]) + 1:
                f = index_of_code.get(int(code))
                if f is None:
                    continue
                overlap = int(counts[code])
                smaller_ml = min(base.volumes_ml[b], follow.volumes_ml[f])
                if overlap * voxel_ml >= min_overlap_fraction * smaller_ml:
                    candidates.append((-overlap, b, f))
        pairs: dict[int, tuple[int, str, int]] = {}
        taken: set[int] = set()
        for negative_overlap, b, f in sorted(candidates):
            if b not in pairs and f not in taken:
                pairs[b] = (f, "overlap", -negative_overlap)
                taken.add(f)
        if max_centroid_distance_mm > 0:
            by_distance = []
            for b in range(len(base.ids)):
                if b in pairs:
                    continue
                for f in range(len(follow.ids)):
                    if f in taken:
                        continue
                    distance = float(np.linalg.norm(follow_centroids[f] - base.centroids_lps_mm[b]))
                    if distance <= max_centroid_distance_mm:
                        by_distance.append((distance, b, f))
            for _, b, f in sorted(by_distance):
                if b not in pairs and f not in taken:
                    pairs[b] = (f, "distance", 0)
                    taken.add(f)
        for b, baseline_id in enumerate(base.ids):
            base_centroid = tuple(float(v) for v in base.centroids_lps_mm[b])
            if b in pairs:
                f, how, overlap = pairs[b]
                follow_centroid = tuple(float(v) for v in follow_centroids[f])
                change = follow.volumes_ml[f] - base.volumes_ml[b]
                rows.append(
                    LesionChange(
                        label=label,
                        baseline_lesion_id=baseline_id,
                        followup_lesion_id=follow.ids[f],
                        status="matched",
                        matched_by=how,
                        overlap_voxels=overlap,
                        baseline_volume_ml=base.volumes_ml[b],
                        followup_volume_ml=follow.volumes_ml[f],
                        volume_change_ml=change,
                        volume_change_percent=100.0 * change / base.volumes_ml[b],
                        centroid_shift_mm=float(np.linalg.norm(np.subtract(follow_centroid, base_centroid))),
                        baseline_centroid_lps_mm=base_centroid,
                        followup_centroid_lps_mm=follow_centroid,
                    )
                )
            else:
                rows.append(
                    LesionChange(
                        label=label,
                        baseline_lesion_id=baseline_id,
                        followup_lesion_id=None,
                        status="vanished",
                        matched_by=None,
                        overlap_voxels=0,
                        baseline_volume_ml=base.volumes_ml[b],
                        followup_volume_ml=0.0,
                        volume_change_ml=-base.volumes_ml[b],
                        volume_change_percent=-100.0,
                        centroid_shift_mm=None,
                        baseline_centroid_lps_mm=base_centroid,
                        followup_centroid_lps_mm=None,
                    )
                )
        for f, followup_id in enumerate(follow.ids):
            if f in taken:
                continue
            rows.append(
                LesionChange(
                    label=label,
                    baseline_lesion_id=None,
                    followup_lesion_id=followup_id,
                    status="new",
                    matched_by=None,
                    overlap_voxels=0,
                    baseline_volume_ml=0.0,
                    followup_volume_ml=follow.volumes_ml[f],
                    volume_change_ml=follow.volumes_ml[f],
                    volume_change_percent=None,
                    centroid_shift_mm=None,
                    baseline_centroid_lps_mm=None,
                    followup_centroid_lps_mm=tuple(float(v) for v in follow_centroids[f]),
                )
            )
    return FollowupResult(registration=registration, lesions=tuple(rows), followup_labels_in_baseline=moved_labels)


def write_followup_csv(result: FollowupResult, path: str | Path) -> Path:
    """Write the per-lesion table under :data:`FOLLOWUP_COLUMNS`, whole or not at all (empty cell: not applicable)."""
    path = Path(path)

    def cell(value: object) -> object:
        if value is None:
            return ""
        if isinstance(value, float):
            return repr(value) if math.isfinite(value) else ""
        return value

    def write(target: Path) -> None:
        with open(target, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(FOLLOWUP_COLUMNS)
            for row in result.table():
                writer.writerow([cell(row[column]) for column in FOLLOWUP_COLUMNS])

    write_atomically(path, write)
    return path
