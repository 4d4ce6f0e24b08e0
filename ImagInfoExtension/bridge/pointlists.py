"""Markups point lists (``vtkMRMLMarkupsFiducialNode``) as seed points in patient coordinates.

Also re-exports the node class, so that a module's parameter node can name it without
importing ``slicer`` itself. A module imports this file when Slicer loads it, so it
keeps to Python 3.9 syntax and imports nothing else at import time (an old Slicer must
still be able to load the module and say that it is too old).
"""

from __future__ import annotations

from typing import Any

from slicer import vtkMRMLMarkupsFiducialNode

__all__ = ["points_lps_from_point_list", "vtkMRMLMarkupsFiducialNode"]


def points_lps_from_point_list(point_list: Any) -> Any:
    """The world positions of a point list's control points in LPS mm, an ``(N, 3)`` array.

    World positions include the node's parent transform. Points the user left
    undefined or still being placed (a preview) are skipped.

    Raises
    ------
    ValueError
        When no point is placed.
    """
    import numpy as np

    from ImagInfoExtension.bridge.volumes import LPS_TO_RAS

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
