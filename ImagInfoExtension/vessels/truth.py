"""The phantom's design as a reference for vessels: centrelines with radii, and its rigid alignment.

:class:`VesselTruth` is a view of the truth document (:mod:`ImagInfoExtension.truth`),
or of a label map's skeleton; this module reads no document format of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy.spatial import cKDTree

from ImagInfoExtension.geometry import ImageGrid
from ImagInfoExtension.phantom.design import PhantomDesign
from ImagInfoExtension.truth import (
    TRUTH_FILE,
    TRUTH_STEP_MM,
    MaskTruth,
    TruthDocument,
    TruthSegment,
    document_from_design,
    radius_classes,
    read_truth,
)

# Re-exported: callers imported it from here before the truth module held it.
from ImagInfoExtension.truth import radius_from_segment_name as radius_from_segment_name


@dataclass(frozen=True)
class VesselTruth:
    """True centrelines in LPS mm, each point with its segment's radius.

    Attributes
    ----------
    points_mm : ndarray (N, 3)
        Centreline sample points, at most ``TRUTH_STEP_MM`` apart along a polyline.
    radius_mm : ndarray (N,)
        True radius at each point.
    weight_mm : ndarray (N,)
        Centreline length each point stands for (half of each step beside it).
    radii_mm : tuple of float
        The distinct radius classes, ascending.
    class_volume_ml : dict
        True volume per class, when known.
    source : str
        Where the truth came from (file name or 'design').
    """

    points_mm: np.ndarray
    radius_mm: np.ndarray
    weight_mm: np.ndarray
    radii_mm: tuple[float, ...]
    class_volume_ml: dict[float, float] = field(default_factory=dict)
    source: str = "design"

    def length_mm(self, radius_mm: float) -> float:
        return float(self.weight_mm[self.radius_mm == radius_mm].sum())

    def to_document(self) -> dict:
        """This truth as a truth document (``truth.json``) that :func:`truth_from_document` reads back exactly.

        Each run of points of one radius becomes a segment with its points and their
        weights (``weights_mm``), so that the reading keeps the points, in their order.
        """
        breaks = np.flatnonzero(np.diff(self.radius_mm)) + 1
        runs = zip(np.r_[0, breaks], np.r_[breaks, len(self.radius_mm)], strict=True)
        segments = tuple(
            TruthSegment(
                id=number,
                radius_mm=float(self.radius_mm[first]),
                points_mm=self.points_mm[first:last],
                weights_mm=self.weight_mm[first:last],
            )
            for number, (first, last) in enumerate(runs)
        )
        classes = radius_classes(self.radii_mm, self.class_volume_ml)
        return TruthDocument(segments, classes, source=self.source).to_json()

    def transformed(self, transform: sitk.Transform) -> VesselTruth:
        """The truth with its points mapped by ``transform`` (design frame to image frame)."""
        points = np.array([transform.TransformPoint(tuple(float(v) for v in p)) for p in self.points_mm])
        return VesselTruth(
            points.reshape(-1, 3),
            self.radius_mm,
            self.weight_mm,
            self.radii_mm,
            self.class_volume_ml,
            self.source,
        )

    def detected_in(self, segmentation: np.ndarray, grid: ImageGrid) -> np.ndarray:
        """Which points a segmentation detects.

        A point is detected when the voxel holding it is segmented, or when a segmented
        voxel's centre lies within the point's true radius of it (at least half the
        largest voxel spacing). The second clause keeps points that lie where partial
        volume may leave their own voxel out although the vessel around them is
        segmented: an end point on a flat end cap sits on the boundary, and a thin
        vessel's point may sit between voxels. It adds nothing elsewhere: a ball of the
        true radius about a centreline point lies inside the vessel, so a voxel found
        there belongs to it (or to a vessel joining it).

        Parameters
        ----------
        segmentation : ndarray of bool, ``[k, j, i]``
        grid : ImageGrid
            The segmentation's grid.

        Returns
        -------
        ndarray of bool (N,)
        """
        size = np.asarray(grid.size_ijk)
        continuous = grid.index_from_physical(self.points_mm)
        index = np.rint(continuous).astype(int)
        inside = np.all((index >= 0) & (index < size), axis=1)
        detected = np.zeros(len(index), dtype=bool)
        rows = np.flatnonzero(inside)
        i, j, k = index[rows].T
        detected[rows] = segmentation[k, j, i]
        missed = np.flatnonzero(~detected)
        if not len(missed):
            return detected
        reach = np.maximum(self.radius_mm[missed], 0.5 * max(grid.spacing_mm))
        # Only segmented voxels in the index box around the missed points can be in reach;
        # the grid is orthonormal, so a reach r spans r / spacing voxels along each axis.
        margin = reach[:, None] / np.asarray(grid.spacing_mm)
        low = np.clip(np.floor((continuous[missed] - margin).min(axis=0)).astype(int), 0, size)
        high = np.clip(np.ceil((continuous[missed] + margin).max(axis=0)).astype(int) + 1, 0, size)
        box = segmentation[low[2] : high[2], low[1] : high[1], low[0] : high[0]]
        voxels = np.argwhere(box)
        if not len(voxels):
            return detected
        centres = grid.physical_from_index(voxels[:, ::-1] + low)
        distance, _ = cKDTree(centres).query(self.points_mm[missed], distance_upper_bound=float(reach.max()))
        detected[missed] = distance <= reach
        return detected


def truth_from_document(
    document: TruthDocument | dict, source: str | None = None, max_step_mm: float = TRUTH_STEP_MM
) -> VesselTruth:
    """The vessel view of a truth document (``truth.json``, read or in memory).

    Each segment's polyline is resampled to ``max_step_mm``, each point standing for its
    share of length, so that detection is measured as finely whatever the document's
    vertices; segments with ``weights_mm`` keep their points.

    Parameters
    ----------
    document : TruthDocument or dict
        A dict is checked as :meth:`TruthDocument.from_json` does.
    source : str, optional
        Where it came from; by default the document's own source.
    max_step_mm : float
    """
    if not isinstance(document, TruthDocument):
        document = TruthDocument.from_json(document, source or "truth.json")
    source = source or document.source
    points, radii, weights = [], [], []
    for segment in document.segments:
        samples, weight = segment.samples(max_step_mm)
        points.append(samples)
        radii.append(np.full(len(samples), segment.radius_mm))
        weights.append(weight)
    radius_mm = np.concatenate(radii)
    return VesselTruth(
        points_mm=np.concatenate(points),
        radius_mm=radius_mm,
        weight_mm=np.concatenate(weights),
        radii_mm=tuple(sorted({float(r) for r in radius_mm})),
        class_volume_ml=document.class_volume_ml,
        source=source,
    )


def truth_from_design(
    design: PhantomDesign, class_volume_ml: dict[float, float] | None = None, step_mm: float = TRUTH_STEP_MM
) -> VesselTruth:
    """The vessel view of an in-memory design (for example a cylinder phantom), sampled every ``step_mm`` at most."""
    document = document_from_design(design, class_volume_ml, centerline_step_mm=None, describe_holder=False)
    return truth_from_document(document, "design", step_mm)


def truth_from_mask(mask: MaskTruth) -> VesselTruth:
    """The vessel view of a label map: each class's centreline is its 3D skeleton.

    Each skeleton voxel stands for one voxel of length along the mean spacing.
    """
    from skimage.morphology import skeletonize

    array = mask.label_array()
    grid = mask.grid
    step = float(np.mean(grid.spacing_mm))
    present = [int(v) for v in np.unique(array) if v > 0]
    if not present:
        raise ValueError(f"{mask.source} holds no labelled voxels")
    points, radius, weight, volumes = [], [], [], {}
    # The tree is skeletonised whole, then each skeleton voxel takes its own label:
    # a short, thick class thinned on its own can vanish entirely.
    skeleton = skeletonize(array > 0)
    for label in present:
        class_radius = mask.class_of_label(label).radius_mm
        index_kji = np.argwhere(skeleton & (array == label))
        points.append(grid.physical_from_index(index_kji[:, ::-1]))
        radius.append(np.full(len(index_kji), class_radius))
        weight.append(np.full(len(index_kji), step))
        volumes[class_radius] = float((array == label).sum()) * grid.voxel_volume_mm3 / 1000.0
    radius_mm = np.concatenate(radius)
    return VesselTruth(
        np.concatenate(points), radius_mm, np.concatenate(weight), tuple(sorted(set(radius_mm))), volumes, mask.source
    )


def truth_from_label_map(
    labels: sitk.Image, radii_mm: Sequence[float] | None = None, source: str = "label map"
) -> VesselTruth:
    """Truth from a label map whose value k marks the k-th radius class (``radii_mm``, default the phantom's)."""
    return truth_from_mask(MaskTruth.from_label_map(labels, radii_mm, source))


def load_truth(path: str | Path, radii_mm: Sequence[float] | None = None) -> VesselTruth:
    """Read a truth: ``truth.json`` (the truth document, or a folder holding one) or a label map image."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"truth file not found: {path}")
    if path.suffix.lower() == ".json" or (path / TRUTH_FILE).is_file():
        return truth_from_document(read_truth(path))
    from ImagInfoExtension.io import read_image

    return truth_from_label_map(read_image(path), radii_mm, path.name)


def register_truth_to_image(
    truth: VesselTruth, image: sitk.Image, segmentation: np.ndarray | None = None, iterations: int = 200
) -> sitk.Euler3DTransform:
    """Rigidly align the design to the image (design frame → image frame).

    The design's centreline points, rendered on a grid of the image's spacing, are
    matched to the image's vessels (or ``segmentation``) by correlation of the two
    smoothed masks, starting from aligned centres of mass.

    Returns
    -------
    SimpleITK.Euler3DTransform
        Maps design points to image points. Its inverse is the registration's
        fixed-to-moving transform.
    """
    grid = ImageGrid.from_sitk(image)
    if segmentation is None:
        array = sitk.GetArrayFromImage(image).astype(np.float32)
        low, high = np.percentile(array, [50, 99.9])
        segmentation = array > 0.5 * (low + high)
    fixed = sitk.SmoothingRecursiveGaussian(grid.to_sitk(segmentation.astype(np.float32)), 1.0)
    moving_points = truth.points_mm
    fixed_centre = grid.physical_from_index(np.argwhere(segmentation)[:, ::-1].mean(axis=0, keepdims=True))[0]
    moving_centre = moving_points.mean(axis=0)
    # Render the design on a grid around its own centroid, same spacing as the image.
    design_grid = ImageGrid.covering_box(
        moving_points.min(axis=0) - 6.0, moving_points.max(axis=0) + 6.0, grid.spacing_mm
    )
    design_mask = np.zeros(design_grid.shape_kji, dtype=np.float32)
    index = np.rint(design_grid.index_from_physical(moving_points)).astype(int)
    design_mask[index[:, 2], index[:, 1], index[:, 0]] = 1.0
    moving = sitk.SmoothingRecursiveGaussian(design_grid.to_sitk(design_mask), 1.0)

    initial = sitk.Euler3DTransform()
    initial.SetCenter(tuple(float(v) for v in fixed_centre))
    initial.SetTranslation(tuple(float(v) for v in moving_centre - fixed_centre))
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsCorrelation()
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(0.2, seed=1)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(1.0, 1e-3, iterations, relaxationFactor=0.7)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel([2, 1])
    method.SetSmoothingSigmasPerLevel([1.0, 0.0])
    method.SetInitialTransform(initial, inPlace=False)
    fixed_to_moving = method.Execute(fixed, moving)
    euler = sitk.Euler3DTransform(sitk.CompositeTransform(fixed_to_moving).GetNthTransform(0))
    return euler.GetInverse()
