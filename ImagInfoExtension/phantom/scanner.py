"""The virtual scanner: phantom truth and acquisitions on one grid."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import SimpleITK as sitk

from ImagInfoExtension.geometry import ImageGrid
from ImagInfoExtension.phantom.acquisition import (
    AcquisitionModel,
    AcquisitionSettings,
    FourierObject,
)
from ImagInfoExtension.phantom.design import (
    PhantomDesign,
    VesselRendering,
    default_design,
    render_holder_fraction,
    render_vessels,
)
from ImagInfoExtension.truth import (
    TRUTH_STEP_MM,
    TruthClass,
    TruthDocument,
    document_from_design,
    radius_classes,
    segment_table,
)

#: Voxel spacing (i, j, k) in mm of each phantom size.
PHANTOM_SIZES: dict[str, tuple[float, float, float]] = {
    "default": (0.7, 0.7, 1.0),
    "small": (0.9, 0.9, 1.25),
}

#: Lattice points per axis used to integrate the true class volumes.
TRUTH_SUBSAMPLES = 8


@dataclass(frozen=True)
class RadiusClassTruth:
    label: int
    radius_mm: float
    true_volume_ml: float
    centerline_length_mm: float


@dataclass(frozen=True)
class PhantomTruth:
    """Ground truth of the phantom on a grid.

    Attributes
    ----------
    labels : ndarray of uint8, ``[k, j, i]``
        0 is background; label k is the k-th radius class in ascending order. A voxel
        is labelled when at least half of it lies in the tree, or when a centreline
        passes through it (so that sub-voxel vessels stay visible). The label
        volume of thin classes is therefore larger than their true volume.
    classes : tuple of RadiusClassTruth
        The true volume of each class, integrated with ``TRUTH_SUBSAMPLES``³
        subsamples per boundary voxel.
    """

    grid: ImageGrid
    labels: np.ndarray
    classes: tuple[RadiusClassTruth, ...]
    design: PhantomDesign

    @property
    def total_volume_ml(self) -> float:
        return float(sum(c.true_volume_ml for c in self.classes))

    def label_image(self) -> sitk.Image:
        return self.grid.to_sitk(self.labels)

    def truth_classes(self) -> tuple[TruthClass, ...]:
        """The class table: label, name (``vessel r=1.5 mm``), colour, true volume and centreline length."""
        return radius_classes(
            [c.radius_mm for c in self.classes],
            {c.radius_mm: c.true_volume_ml for c in self.classes},
            {c.radius_mm: c.centerline_length_mm for c in self.classes},
        )

    def segment_table(self) -> list[dict]:
        """Label, name (``vessel r=1.5 mm``, which the vessel module reads back) and RGB colour of each class."""
        return segment_table(self.truth_classes())

    def document(self, centerline_step_mm: float = TRUTH_STEP_MM) -> TruthDocument:
        """The truth document (:mod:`ImagInfoExtension.truth`) of this phantom, naming its label map."""
        return document_from_design(
            self.design,
            {c.radius_mm: c.true_volume_ml for c in self.classes},
            grid=self.grid,
            centerline_step_mm=centerline_step_mm,
            source="virtual scanner",
        )

    def to_json(self, centerline_step_mm: float = TRUTH_STEP_MM) -> dict:
        """The truth document as JSON data (``truth.json``)."""
        return self.document(centerline_step_mm).to_json()


class VirtualScanner:
    """Renders the phantom once on a grid, then acquires any number of scans.

    Parameters
    ----------
    design : PhantomDesign, optional
        Defaults to the built-in phantom.
    size : {'default', 'small'}
        Grid spacing preset; ignored when ``grid`` is given.
    grid : ImageGrid, optional
        Any grid (oblique and anisotropic included).
    model : AcquisitionModel, optional
        Reconstruction models and calibration.
    subsamples : int
        Partial-volume lattice points per axis in boundary voxels.
    """

    def __init__(
        self,
        design: PhantomDesign | None = None,
        size: str = "default",
        grid: ImageGrid | None = None,
        model: AcquisitionModel | None = None,
        subsamples: int = 4,
    ) -> None:
        self.design = design or default_design()
        if grid is None:
            if size not in PHANTOM_SIZES:
                raise ValueError(f"unknown phantom size {size!r}; choose one of {', '.join(PHANTOM_SIZES)}")
            grid = self.design.default_grid(PHANTOM_SIZES[size])
        self.grid = grid
        self.model = model or AcquisitionModel()
        self.subsamples = subsamples

    @cached_property
    def rendering(self) -> VesselRendering:
        return render_vessels(self.design, self.grid, self.subsamples)

    @cached_property
    def object_hu(self) -> np.ndarray:
        """Noise-free, unblurred partial-volume image in HU, ``[k, j, i]`` float32."""
        design = self.design
        holder = render_holder_fraction(design.holder, self.grid, self.subsamples)
        image = np.full(self.grid.shape_kji, design.background_hu, dtype=np.float32)
        image += holder * np.float32(design.holder_hu - design.background_hu)
        image += self.rendering.fraction * np.float32(design.vessel_hu - design.background_hu)
        return image

    @cached_property
    def _fourier_object(self) -> FourierObject:
        return FourierObject(self.object_hu, self.grid)

    def acquire(self, settings: AcquisitionSettings) -> sitk.Image:
        """One reconstructed acquisition as an int16 HU image."""
        return self.grid.to_sitk(self._fourier_object.acquire(self.model, settings))

    @cached_property
    def truth(self) -> PhantomTruth:
        design = self.design
        rendering = self.rendering
        labels = np.where(rendering.fraction >= 0.5, rendering.nearest_class, 0).astype(np.uint8)
        for segment in design.segments:
            step = 0.25 * min(self.grid.spacing_mm)
            index = np.rint(self.grid.index_from_physical(segment.centerline_points(step))).astype(int)
            inside = np.all((index >= 0) & (index < np.asarray(self.grid.size_ijk)), axis=1)
            i, j, k = index[inside].T
            unlabelled = labels[k, j, i] == 0
            labels[k[unlabelled], j[unlabelled], i[unlabelled]] = design.class_label(segment.radius_mm)
        if self.subsamples >= TRUTH_SUBSAMPLES:
            volumes = rendering.class_volume_mm3
        else:
            volumes = render_vessels(design, self.grid, TRUTH_SUBSAMPLES).class_volume_mm3
        lengths = design.centerline_length_mm()
        classes = tuple(
            RadiusClassTruth(
                label=design.class_label(radius),
                radius_mm=radius,
                true_volume_ml=volumes[radius] / 1000.0,
                centerline_length_mm=lengths[radius],
            )
            for radius in design.radius_classes_mm
        )
        return PhantomTruth(grid=self.grid, labels=labels, classes=classes, design=design)

    def vessel_core_mask(self, radius_mm: float, depth_mm: float = 1.0) -> np.ndarray:
        """Voxels of one true radius class lying at least ``depth_mm`` inside the wall."""
        label = self.design.class_label(radius_mm)
        rendering = self.rendering
        return (rendering.nearest_class == label) & (rendering.signed_distance_mm <= -depth_mm)
