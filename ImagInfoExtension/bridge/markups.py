"""Markups ROIs as voxel masks, and centreline models."""

from __future__ import annotations

from typing import Any

import numpy as np

from ImagInfoExtension.bridge.compat import import_slicer
from ImagInfoExtension.bridge.volumes import LPS_TO_RAS, matrix_to_numpy, numpy_support, vtk_module
from ImagInfoExtension.geometry import ImageGrid


def mask_from_roi_node(roi_node: Any, grid: ImageGrid) -> np.ndarray:
    """Voxels of ``grid`` whose centres lie inside a markups ROI (any orientation), ``[k, j, i]`` bool.

    Only the voxels within the ROI's bounding box on the grid are tested, so a small ROI
    on a large CT costs little memory.
    """
    size = np.zeros(3)
    roi_node.GetSizeWorld(size)
    centre = np.zeros(3)
    roi_node.GetCenterWorld(centre)
    axes_ras = matrix_to_numpy(roi_node.GetObjectToWorldMatrix())[:3, :3]
    half = 0.5 * np.asarray(size)
    signs = np.array([[a, b, c] for a in (-1, 1) for b in (-1, 1) for c in (-1, 1)], dtype=float)
    corners_ras = centre + (signs * half) @ axes_ras.T
    corners_ijk = grid.index_from_physical(corners_ras @ LPS_TO_RAS[:3, :3])
    low = np.clip(np.floor(corners_ijk.min(axis=0)).astype(int) - 1, 0, np.asarray(grid.size_ijk))
    high = np.clip(np.ceil(corners_ijk.max(axis=0)).astype(int) + 2, 0, np.asarray(grid.size_ijk))
    mask = np.zeros(grid.shape_kji, dtype=bool)
    if np.any(high <= low):
        return mask
    k, j, i = np.mgrid[low[2] : high[2], low[1] : high[1], low[0] : high[0]]
    points_lps = grid.physical_from_index(np.stack([i, j, k], axis=-1).reshape(-1, 3))
    local = (points_lps @ LPS_TO_RAS[:3, :3] - centre) @ axes_ras
    inside = np.all(np.abs(local) <= half, axis=1).reshape(k.shape)
    mask[low[2] : high[2], low[1] : high[1], low[0] : high[0]] = inside
    return mask


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
