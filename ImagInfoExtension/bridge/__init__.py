"""The bridge: the only part of ImagInfo that imports ``slicer``, ``qt``, ``ctk`` or MRML.

One submodule per concern:

- :mod:`~ImagInfoExtension.bridge.volumes`: scalar volume nodes <-> SimpleITK images (LPS/RAS, exact geometry);
- :mod:`~ImagInfoExtension.bridge.segmentations`: segmentation nodes <-> label maps;
- :mod:`~ImagInfoExtension.bridge.tables`: table nodes <-> DataFrames, plot charts;
- :mod:`~ImagInfoExtension.bridge.markups`: markups ROIs as masks, centreline models;
- :mod:`~ImagInfoExtension.bridge.scenes`: scenes, scene bundles, output nodes reused or rolled back;
- :mod:`~ImagInfoExtension.bridge.dicom`: series of Slicer's DICOM database;
- :mod:`~ImagInfoExtension.bridge.requirements`: the Python packages each module installs on first use;
- :mod:`~ImagInfoExtension.bridge.process`: the child-process runner (``imaginfo`` with Slicer's Python);
- :mod:`~ImagInfoExtension.bridge.sampledata`: sample data generated when the user asks for it;
- :mod:`~ImagInfoExtension.bridge.scaffolding`: base classes of every ImagInfo scripted module;
- :mod:`~ImagInfoExtension.bridge.compat`: Slicer versions.

Importing this package imports nothing else: the conversion functions below are
loaded on first use (``bridge.volume_node_from_sitk``), and each submodule imports
``slicer`` only when called, so a fresh Slicer can load the modules before any
optional package is installed.

Coordinates: MRML uses RAS, SimpleITK and DICOM use LPS; the two differ by a flip of
the first two axes, ``diag(-1, -1, 1)``.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "volumes": (
        "LPS_TO_RAS",
        "grid_from_ijk_to_ras",
        "ijk_to_ras_from_grid",
        "sitk_from_volume_node",
        "volume_node_from_sitk",
    ),
    "segmentations": (
        "LabelMapConversion",
        "SegmentDescription",
        "label_map_from_segmentation_node",
        "segmentation_node_from_label_map",
    ),
    "tables": ("chart_node_from_table", "dataframe_from_table_node", "table_node_from_dataframe"),
    "markups": ("mask_from_roi_node", "model_node_from_centerlines"),
    "scenes": ("OutputNodes", "load_scene_bundle", "new_scene", "save_scene_bundle"),
}
_HOME = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_HOME)


def __getattr__(name: str) -> Any:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOME))
