"""Segmentation nodes <-> label maps on a reference grid."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk

from ImagInfoExtension.bridge.compat import import_slicer
from ImagInfoExtension.bridge.volumes import (
    array_to_image_data,
    grid_from_ijk_to_ras,
    ijk_to_ras_from_grid,
    image_data_to_array,
    matrix_to_numpy,
    numpy_to_matrix,
    sitk_from_volume_node,
    vtk_module,
    world_matrix,
)
from ImagInfoExtension.geometry import ImageGrid

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SegmentDescription:
    """One segment of a segmentation, as carried through a label map."""

    label: int
    name: str
    color: tuple[float, float, float] = (1.0, 1.0, 0.0)
    segment_id: str = ""
    voxel_count: int = 0


@dataclass
class LabelMapConversion:
    """A label map on a reference grid plus the segments it holds."""

    image: sitk.Image
    segments: list[SegmentDescription]
    empty_segments: list[str] = field(default_factory=list)
    overlapping_voxels: int = 0


def _binary_representation_name() -> str:
    return import_slicer().vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()


def _oriented_image_to_sitk(oriented_image: Any) -> sitk.Image:
    array = image_data_to_array(oriented_image, "segment")
    matrix = vtk_module().vtkMatrix4x4()
    oriented_image.GetImageToWorldMatrix(matrix)
    image_to_world = matrix_to_numpy(matrix)
    extent = oriented_image.GetExtent()
    # Voxel (0, 0, 0) of the array is voxel (extent[0], extent[2], extent[4]) of the frame.
    shift = np.eye(4)
    shift[:3, 3] = [extent[0], extent[2], extent[4]]
    grid = grid_from_ijk_to_ras(image_to_world @ shift, oriented_image.GetDimensions())
    return grid.to_sitk(array)


def label_map_from_segmentation_node(
    segmentation_node: Any,
    reference: sitk.Image | Any,
    segment_ids: Sequence[str] | None = None,
) -> LabelMapConversion:
    """Rasterise a segmentation onto the grid of a reference volume.

    Segment k (in the segmentation's order, or ``segment_ids`` order) becomes label
    k+1. Each segment's binary label map is resampled onto the reference grid with
    nearest-neighbour interpolation, which is exact when the grids coincide.
    Empty segments keep their label and are reported in ``empty_segments``; where
    segments overlap, the later one wins and ``overlapping_voxels`` counts the
    conflicts.

    Parameters
    ----------
    segmentation_node : vtkMRMLSegmentationNode
    reference : SimpleITK.Image or vtkMRMLScalarVolumeNode
        The grid to rasterise onto.
    """
    slicer = import_slicer()
    if segmentation_node is None or not segmentation_node.IsA("vtkMRMLSegmentationNode"):
        raise ValueError("expected a segmentation node")
    if not isinstance(reference, sitk.Image):
        reference = sitk_from_volume_node(reference)
    segmentation = segmentation_node.GetSegmentation()
    if segment_ids is None:
        segment_ids = [segmentation.GetNthSegmentID(n) for n in range(segmentation.GetNumberOfSegments())]
    if not segmentation.ContainsRepresentation(_binary_representation_name()):
        segmentation_node.CreateBinaryLabelmapRepresentation()
    world = world_matrix(segmentation_node)

    labels = np.zeros(reference.GetSize()[::-1], dtype=np.uint16 if len(segment_ids) > 255 else np.uint8)
    segments: list[SegmentDescription] = []
    empty: list[str] = []
    overlapping = 0
    for number, segment_id in enumerate(segment_ids, start=1):
        segment = segmentation.GetSegment(segment_id)
        if segment is None:
            raise ValueError(f"segment {segment_id!r} is not in {segmentation_node.GetName()}")
        oriented = slicer.vtkOrientedImageData()
        segmentation_node.GetBinaryLabelmapRepresentation(segment_id, oriented)
        mask = np.zeros(labels.shape, dtype=bool)
        if oriented.GetPointData().GetScalars() is not None and oriented.GetNumberOfPoints() > 0:
            if not np.allclose(world, np.eye(4)):
                matrix = vtk_module().vtkMatrix4x4()
                oriented.GetImageToWorldMatrix(matrix)
                oriented.SetImageToWorldMatrix(numpy_to_matrix(world @ matrix_to_numpy(matrix)))
            segment_image = _oriented_image_to_sitk(oriented)
            segment_image = sitk.Cast(segment_image != 0, sitk.sitkUInt8)
            resampled = sitk.Resample(segment_image, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
            mask = sitk.GetArrayViewFromImage(resampled) != 0
        count = int(mask.sum())
        overlapping += int(np.count_nonzero(labels[mask]))
        labels[mask] = number
        if count == 0:
            empty.append(segment.GetName())
            logger.warning("segment %r is empty on the reference grid", segment.GetName())
        segments.append(
            SegmentDescription(
                label=number,
                name=segment.GetName(),
                color=tuple(float(c) for c in segment.GetColor()),
                segment_id=segment_id,
                voxel_count=count,
            )
        )
    image = sitk.GetImageFromArray(labels)
    image.CopyInformation(reference)
    return LabelMapConversion(image=image, segments=segments, empty_segments=empty, overlapping_voxels=overlapping)


def segmentation_node_from_label_map(
    label_image: sitk.Image,
    scene: Any,
    segments: Sequence[SegmentDescription],
    name: str,
    reference_volume_node: Any = None,
    node: Any = None,
) -> Any:
    """A segmentation node with one segment per described label.

    Segments keep their names and colours. A label with no voxels still becomes a
    (reported) empty segment, so the segment list always matches ``segments``.
    A new node is added to the scene only once it is complete; a given ``node`` has
    its segments replaced.
    """
    if label_image.GetDimension() != 3 or label_image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError("a label map must be a 3D scalar image")
    slicer = import_slicer()
    labels = sitk.GetArrayViewFromImage(label_image)
    unknown = set(np.unique(labels)) - {0} - {s.label for s in segments}
    if unknown:
        raise ValueError(f"label map holds labels {sorted(int(u) for u in unknown)} that no segment describes")
    grid = ImageGrid.from_sitk(label_image)
    ijk_to_ras = numpy_to_matrix(ijk_to_ras_from_grid(grid))
    representation = _binary_representation_name()
    built = []
    for description in segments:
        mask = labels == description.label
        oriented = array_to_image_data(mask.astype(np.uint8), slicer.vtkOrientedImageData)
        oriented.SetImageToWorldMatrix(ijk_to_ras)
        segment = slicer.vtkSegment()
        segment.SetName(description.name)
        segment.SetColor(*description.color)
        segment.AddRepresentation(representation, oriented)
        built.append((description.segment_id or description.name, segment))
        if not mask.any():
            logger.warning("segment %r has no voxels", description.name)
    is_new = node is None
    if is_new:
        node = slicer.vtkMRMLSegmentationNode()
        node.SetName(name)
    segmentation = node.GetSegmentation()
    segmentation.RemoveAllSegments()
    segmentation.SetSourceRepresentationName(representation)
    for segment_id, segment in built:
        segmentation.AddSegment(segment, segment_id)
    if is_new:
        scene.AddNode(node)
    if reference_volume_node is not None:
        node.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume_node)
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    return node
