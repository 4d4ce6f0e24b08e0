"""The DICOM modality of a volume node, where Slicer knows it.

A series loaded from DICOM becomes a subject hierarchy item whose ``DICOM.Modality``
attribute holds the series' Modality (CT, MR, PT, ...); a volume read from a NRRD or
NIfTI file has none. Models check the modality they were trained on against it.
"""

from __future__ import annotations

from typing import Any

from ImagInfoExtension.bridge.compat import import_slicer


def volume_modality(volume_node: Any) -> str | None:
    """The DICOM modality of the series a volume node was loaded from, or None when unknown."""
    slicer = import_slicer()
    scene = volume_node.GetScene() if volume_node is not None else None
    # Looked up, not made: GetSubjectHierarchyNode() would add one to a scene that has none.
    hierarchy = scene.GetFirstNodeByClass("vtkMRMLSubjectHierarchyNode") if scene is not None else None
    if hierarchy is None:
        return None
    item = hierarchy.GetItemByDataNode(volume_node)
    if not item:
        return None
    attribute = slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMSeriesModalityAttributeName()
    if attribute not in (hierarchy.GetItemAttributeNames(item) or ()):
        return None
    return hierarchy.GetItemAttribute(item, attribute).strip() or None
