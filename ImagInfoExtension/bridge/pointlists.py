"""Markups point lists (``vtkMRMLMarkupsFiducialNode``) as seed points in patient coordinates.

Also re-exports the node class, so that a module's parameter node can name it without
importing ``slicer`` itself.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from slicer import vtkMRMLMarkupsFiducialNode

from ImagInfoExtension.bridge.volumes import LPS_TO_RAS

__all__ = ["points_lps_from_point_list", "vtkMRMLMarkupsFiducialNode"]


def points_lps_from_point_list(point_list: Any) -> np.ndarray:
    """The world positions of a point list's control points in LPS mm, ``(N, 3)``.

    World positions include the node's parent transform. Points the user left
    undefined or still being placed (a preview) are skipped.

    Raises
    ------
    ValueError
        When no point is placed.
    """
    points = []
    for index in range(point_list.GetNumberOfControlPoints()):
        if point_list.GetNthControlPointPositionStatus(index) != point_list.PositionDefined:
            continue
        position = [0.0, 0.0, 0.0]
        point_list.GetNthControlPointPositionWorld(index, position)
        points.append(position)
    if not points:
        raise ValueError(
            f"the point list {point_list.GetName()} has no placed point; place a seed inside the structure "
            "(Markups > point list, or the toolbar's point placement)"
        )
    return np.asarray(points, dtype=float) @ LPS_TO_RAS[:3, :3]
