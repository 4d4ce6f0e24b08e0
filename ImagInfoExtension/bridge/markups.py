"""Markups ROIs as voxel masks, and centreline models."""

from __future__ import annotations

from typing import Any

import numpy as np

from ImagInfoExtension.bridge.compat import import_slicer
from ImagInfoExtension.bridge.volumes import LPS_TO_RAS, matrix_to_numpy, numpy_support, vtk_module
from ImagInfoExtension.geometry import ImageGrid


def mask_from_roi_node(roi_node: Any, grid: ImageGrid) -> np.ndarray:
    """Voxels of ``grid`` whose centres lie inside a markups ROI (any orientation), ``[k, j, i]`` bool."""
    size = [0.0, 0.0, 0.0]
    roi_node.GetSizeWorld(size)
    centre = [0.0, 0.0, 0.0]
    roi_node.GetCenterWorld(centre)
    axes_ras = matrix_to_numpy(roi_node.GetObjectToWorldMatrix())[:3, :3]
    k, j, i = np.indices(grid.shape_kji)
    points_lps = grid.physical_from_index(np.stack([i, j, k], axis=-1).reshape(-1, 3))
    offsets_ras = points_lps @ LPS_TO_RAS[:3, :3] - np.asarray(centre)
    local = offsets_ras @ axes_ras
    inside = np.all(np.abs(local) <= 0.5 * np.asarray(size), axis=1)
    return inside.reshape(grid.shape_kji)


def model_node_from_centerlines(
    points_lps_mm: np.ndarray, radius_mm: np.ndarray, scene: Any, name: str, node: Any = None
) -> Any:
    """A point-cloud model of centreline points with a ``Radius`` (mm) point scalar; NaN = unresolved.

    A given model ``node`` gets the new points (and a display node if it has none).
    """
    slicer, vtk = import_slicer(), vtk_module()
    points = vtk.vtkPoints()
    ras = np.asarray(points_lps_mm, dtype=float).reshape(-1, 3) @ LPS_TO_RAS[:3, :3]
    points.SetData(numpy_support().numpy_to_vtk(np.ascontiguousarray(ras), deep=True))
    vertices = vtk.vtkCellArray()
    for index in range(len(ras)):
        vertices.InsertNextCell(1)
        vertices.InsertCellPoint(index)
    polydata = vtk.vtkPolyData()
    polydata.SetPoints(points)
    polydata.SetVerts(vertices)
    radius = numpy_support().numpy_to_vtk(np.asarray(radius_mm, dtype=float), deep=True)
    radius.SetName("Radius")
    polydata.GetPointData().AddArray(radius)
    polydata.GetPointData().SetActiveScalars("Radius")
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLModelNode", name)
    node.SetAndObservePolyData(polydata)
    display = node.GetDisplayNode()
    if display is None:
        display = scene.AddNewNodeByClass("vtkMRMLModelDisplayNode")
        node.SetAndObserveDisplayNodeID(display.GetID())
    display.SetActiveScalarName("Radius")
    display.SetScalarVisibility(True)
    display.SetPointSize(4.0)
    finite = np.asarray(radius_mm, dtype=float)
    finite = finite[np.isfinite(finite)]
    if len(finite):
        display.SetScalarRangeFlag(slicer.vtkMRMLDisplayNode.UseManualScalarRange)
        display.SetScalarRange(float(finite.min()), float(finite.max()))
    return node
