"""The phantom's design as a reference: centrelines with radii, and its rigid alignment."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ImagInfoExtension.geometry import ImageGrid
from ImagInfoExtension.phantom.design import DEFAULT_RADII_MM, PhantomDesign


@dataclass(frozen=True)
class VesselTruth:
    """True centrelines in LPS mm, each point with its segment's radius.

    Attributes
    ----------
    points_mm : ndarray (N, 3)
        Centreline sample points.
    radius_mm : ndarray (N,)
        True radius at each point.
    weight_mm : ndarray (N,)
        Centreline length each point stands for (its segment's length over its count).
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

        Each radius class becomes one segment with its points and their weights
        (``weights_mm``), so that the reading needs no segment lengths.
        """
        return {
            "coordinate_system": "LPS",
            "units": "mm",
            "segments": [
                {
                    "id": f"class-{radius:g}",
                    "radius_mm": float(radius),
                    "points": self.points_mm[self.radius_mm == radius].tolist(),
                    "weights_mm": self.weight_mm[self.radius_mm == radius].tolist(),
                }
                for radius in self.radii_mm
            ],
            "classes": [{"radius_mm": float(r), "true_volume_ml": float(v)} for r, v in self.class_volume_ml.items()],
            "source": self.source,
        }

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


def _from_segments(
    segments: Sequence[tuple[float, np.ndarray] | tuple[float, np.ndarray, Sequence[float]]], volumes: dict, source: str
) -> VesselTruth:
    """Truth from ``(radius, points)`` polylines, or ``(radius, points, weights)`` with each point's length."""
    points, radii, weights = [], [], []
    for radius, samples, *given in segments:
        samples = np.asarray(samples, dtype=float).reshape(-1, 3)
        if len(samples) == 0:
            continue
        if given and given[0] is not None:
            weight = np.asarray(given[0], dtype=float)
            if weight.shape != (len(samples),):
                raise ValueError(f"{source}: a segment has {len(samples)} points but {weight.size} weights_mm")
        else:
            length = float(np.linalg.norm(np.diff(samples, axis=0), axis=1).sum()) if len(samples) > 1 else 0.0
            weight = np.full(len(samples), length / len(samples))
        points.append(samples)
        radii.append(np.full(len(samples), float(radius)))
        weights.append(weight)
    if not points:
        raise ValueError(f"the truth {source} holds no centreline points")
    radius_mm = np.concatenate(radii)
    return VesselTruth(
        points_mm=np.concatenate(points),
        radius_mm=radius_mm,
        weight_mm=np.concatenate(weights),
        radii_mm=tuple(sorted({float(r) for r in radius_mm})),
        class_volume_ml=volumes,
        source=source,
    )


def truth_from_design(
    design: PhantomDesign, class_volume_ml: dict[float, float] | None = None, step_mm: float = 0.25
) -> VesselTruth:
    """Truth from an in-memory design (for example a cylinder phantom)."""
    segments = [(s.radius_mm, s.centerline_points(step_mm)) for s in design.segments]
    return _from_segments(segments, dict(class_volume_ml or {}), "design")


def truth_from_document(document: dict, source: str = "truth.json") -> VesselTruth:
    """Truth from the ImagInfo truth document (``truth.json``)."""
    if document.get("coordinate_system", "LPS") != "LPS":
        raise ValueError(f"{source}: coordinate_system must be LPS, got {document.get('coordinate_system')!r}")
    try:
        segments = [(float(s["radius_mm"]), s["points"], s.get("weights_mm")) for s in document["segments"]]
    except (KeyError, TypeError) as error:
        raise ValueError(
            f"{source} is not an ImagInfo truth document: each segment needs 'radius_mm' and 'points' ({error})"
        ) from None
    volumes = {float(c["radius_mm"]): float(c["true_volume_ml"]) for c in document.get("classes", [])}
    return _from_segments(segments, volumes, source)


def truth_from_label_map(
    labels: sitk.Image, radii_mm: Sequence[float] | None = None, source: str = "label map"
) -> VesselTruth:
    """Truth from a label map whose value k marks the k-th radius class.

    The centreline of each class is its 3D skeleton; each skeleton voxel stands for
    one voxel of length along the mean spacing.
    """
    from skimage.morphology import skeletonize

    radii = tuple(float(r) for r in (radii_mm if radii_mm is not None else DEFAULT_RADII_MM))
    array = sitk.GetArrayFromImage(labels)
    grid = ImageGrid.from_sitk(labels)
    step = float(np.mean(grid.spacing_mm))
    present = [int(v) for v in np.unique(array) if v > 0]
    if present and max(present) > len(radii):
        raise ValueError(
            f"{source} has label {max(present)} but only {len(radii)} radius classes are known; "
            "give the class radii (--radii) in label order"
        )
    points, radius, weight = [], [], []
    # The tree is skeletonised whole, then each skeleton voxel takes its own label:
    # a short, thick class thinned on its own can vanish entirely.
    skeleton = skeletonize(array > 0)
    for label in present:
        index_kji = np.argwhere(skeleton & (array == label))
        points.append(grid.physical_from_index(index_kji[:, ::-1]))
        radius.append(np.full(len(index_kji), radii[label - 1]))
        weight.append(np.full(len(index_kji), step))
    if not present:
        raise ValueError(f"{source} holds no labelled voxels")
    radius_mm = np.concatenate(radius)
    volumes = {radii[label - 1]: float((array == label).sum()) * grid.voxel_volume_mm3 / 1000.0 for label in present}
    return VesselTruth(
        np.concatenate(points), radius_mm, np.concatenate(weight), tuple(sorted(set(radius_mm))), volumes, source
    )


def load_truth(path: str | Path, radii_mm: Sequence[float] | None = None) -> VesselTruth:
    """Read a truth: ``truth.json`` (design document) or a label map image."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"truth file not found: {path}")
    if path.suffix.lower() == ".json":
        try:
            document = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{path.name} is not valid JSON ({error})") from None
        return truth_from_document(document, path.name)
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


def radius_from_segment_name(name: str) -> float | None:
    """The radius a segment's name states (``r = 1.5 mm``, ``vessel r=1.5 mm``), or None."""
    found = re.search(r"\br\s*=\s*([0-9]*\.?[0-9]+)", name)
    return float(found.group(1)) if found else None
