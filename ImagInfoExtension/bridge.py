"""The MRML bridge: the only place where ImagInfo touches Slicer.

It converts between MRML nodes and the core's types, exactly to the voxel and to the
millimetre, and installs the extension's Python requirements inside Slicer. It
works in the Slicer application and headless with the ``slicer-core`` wheel.
``slicer`` and ``vtk`` are imported on first use, so the rest of the core never
needs them.

Coordinates: MRML uses RAS, SimpleITK and DICOM use LPS; the two differ by a flip of
the first two axes, ``diag(-1, -1, 1)``.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import SimpleITK as sitk

from ImagInfoExtension.geometry import ImageGrid

logger = logging.getLogger(__name__)

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

# numpy dtype -> VTK scalar type constant (values from vtkType.h).
_VTK_TYPES = {
    np.dtype(np.int8): 15,
    np.dtype(np.uint8): 3,
    np.dtype(np.int16): 4,
    np.dtype(np.uint16): 5,
    np.dtype(np.int32): 6,
    np.dtype(np.uint32): 7,
    np.dtype(np.int64): 16,
    np.dtype(np.uint64): 17,
    np.dtype(np.float32): 10,
    np.dtype(np.float64): 11,
}


def _slicer() -> Any:
    try:
        import slicer
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the MRML bridge needs Slicer: run inside 3D Slicer, or install the headless "
            "wheel with `pip install imaginfo[slicer-core]`"
        ) from error
    return slicer


def _vtk() -> Any:
    import vtk

    return vtk


def _numpy_support() -> Any:
    from vtk.util import numpy_support

    return numpy_support


# --------------------------------------------------------------------------------------
# Geometry


def _matrix_to_numpy(matrix: Any) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def _numpy_to_matrix(array: np.ndarray) -> Any:
    matrix = _vtk().vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r, c]))
    return matrix


def ijk_to_ras_from_grid(grid: ImageGrid) -> np.ndarray:
    """The 4x4 IJK-to-RAS matrix MRML uses for a grid defined in LPS."""
    return _LPS_TO_RAS @ grid.index_to_physical_matrix


def grid_from_ijk_to_ras(ijk_to_ras: np.ndarray, size_ijk: Sequence[int]) -> ImageGrid:
    """The LPS grid of an IJK-to-RAS matrix (which holds spacing, direction, origin)."""
    ijk_to_lps = _LPS_TO_RAS @ ijk_to_ras
    axes = ijk_to_lps[:3, :3]
    spacing = np.linalg.norm(axes, axis=0)
    if np.any(spacing <= 0):
        raise ValueError("the volume's IJK-to-RAS matrix has a zero-length axis")
    direction = axes / spacing
    return ImageGrid(
        size_ijk=tuple(int(s) for s in size_ijk),
        spacing_mm=tuple(float(s) for s in spacing),
        origin_mm=tuple(float(o) for o in ijk_to_lps[:3, 3]),
        direction=tuple(float(d) for d in direction.ravel()),
    )


def _world_matrix(node: Any) -> np.ndarray:
    """4x4 transform from the node's local RAS to world RAS (identity if untransformed)."""
    parent = node.GetParentTransformNode()
    if parent is None:
        return np.eye(4)
    if not parent.IsTransformToWorldLinear():
        raise ValueError(
            f"{node.GetName()} is under a non-linear transform; harden it first "
            "(Transforms module > Harden transform) so its voxels have a fixed geometry"
        )
    matrix = _vtk().vtkMatrix4x4()
    parent.GetMatrixTransformToWorld(matrix)
    return _matrix_to_numpy(matrix)


# --------------------------------------------------------------------------------------
# Volumes


def _image_data_to_array(image_data: Any, what: str) -> np.ndarray:
    scalars = image_data.GetPointData().GetScalars()
    if scalars is None:
        raise ValueError(f"{what} has no voxel data")
    if scalars.GetNumberOfComponents() != 1:
        raise ValueError(
            f"{what} has {scalars.GetNumberOfComponents()} components per voxel; ImagInfo needs a scalar "
            "volume (convert a colour or vector volume with the Vector to Scalar Volume module)"
        )
    nx, ny, nz = image_data.GetDimensions()
    return _numpy_support().vtk_to_numpy(scalars).reshape(nz, ny, nx).copy()


def _array_to_image_data(array_kji: np.ndarray, image_data_class: Any) -> Any:
    dtype = array_kji.dtype
    if dtype == np.bool_:
        array_kji = array_kji.astype(np.uint8)
        dtype = array_kji.dtype
    if dtype not in _VTK_TYPES:
        raise ValueError(f"voxel type {dtype} has no VTK equivalent")
    image_data = image_data_class()
    nz, ny, nx = array_kji.shape
    image_data.SetDimensions(nx, ny, nz)
    flat = np.ascontiguousarray(array_kji).ravel()
    vtk_array = _numpy_support().numpy_to_vtk(flat, deep=True, array_type=_VTK_TYPES[dtype])
    image_data.GetPointData().SetScalars(vtk_array)
    return image_data


def sitk_from_volume_node(volume_node: Any) -> sitk.Image:
    """A SimpleITK image (LPS) with the voxels and geometry of a scalar volume node.

    Origin, spacing and the full direction matrix are kept, and a linear parent
    transform is applied. The voxel type is kept (int16, uint8, float32, ...).

    Raises
    ------
    ValueError
        For a vector, colour or tensor volume, a volume without voxels, or one under
        a non-linear transform.
    """
    if volume_node is None:
        raise ValueError("no volume given: select a scalar volume")
    vector_kinds = ("vtkMRMLVectorVolumeNode", "vtkMRMLTensorVolumeNode", "vtkMRMLDiffusionWeightedVolumeNode")
    if not volume_node.IsA("vtkMRMLScalarVolumeNode") or any(volume_node.IsA(kind) for kind in vector_kinds):
        raise ValueError(
            f"{volume_node.GetName()} is a {volume_node.GetClassName()}, not a scalar volume; "
            "ImagInfo needs a 3D scalar volume (split 4D sequences into single frames first)"
        )
    image_data = volume_node.GetImageData()
    if image_data is None:
        raise ValueError(f"{volume_node.GetName()} has no voxel data")
    array = _image_data_to_array(image_data, volume_node.GetName())
    ijk_to_ras = _vtk().vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(ijk_to_ras)
    matrix = _world_matrix(volume_node) @ _matrix_to_numpy(ijk_to_ras)
    grid = grid_from_ijk_to_ras(matrix, image_data.GetDimensions())
    return grid.to_sitk(array)


def volume_node_from_sitk(
    image: sitk.Image,
    scene: Any,
    name: str,
    node: Any = None,
    label_map: bool = False,
) -> Any:
    """Put a 3D scalar SimpleITK image into a (new or given) volume node.

    Parameters
    ----------
    image : SimpleITK.Image
        3D, one component per voxel.
    scene : vtkMRMLScene
    name : str
        Name of a new node (ignored when ``node`` is given).
    node : vtkMRMLScalarVolumeNode, optional
        Node to update in place.
    label_map : bool
        Create a vtkMRMLLabelMapVolumeNode.

    Raises
    ------
    ValueError
        For 4D or vector images. Nothing is added to the scene then.
    """
    if image.GetDimension() != 3:
        raise ValueError(f"expected a 3D image, got {image.GetDimension()}D; split 4D data into 3D frames")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(
            f"the image has {image.GetNumberOfComponentsPerPixel()} components per voxel; "
            "ImagInfo volumes are scalar (take one component with VectorIndexSelectionCast)"
        )
    slicer = _slicer()
    grid = ImageGrid.from_sitk(image)
    image_data = _array_to_image_data(sitk.GetArrayViewFromImage(image), _vtk().vtkImageData)
    if node is None:
        node = slicer.vtkMRMLLabelMapVolumeNode() if label_map else slicer.vtkMRMLScalarVolumeNode()
        node.SetName(name)
        scene.AddNode(node)
    node.SetIJKToRASMatrix(_numpy_to_matrix(ijk_to_ras_from_grid(grid)))
    node.SetAndObserveImageData(image_data)
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    return node


# --------------------------------------------------------------------------------------
# Segmentations


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
    return _slicer().vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()


def _oriented_image_to_sitk(oriented_image: Any) -> sitk.Image:
    array = _image_data_to_array(oriented_image, "segment")
    matrix = _vtk().vtkMatrix4x4()
    oriented_image.GetImageToWorldMatrix(matrix)
    image_to_world = _matrix_to_numpy(matrix)
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
    if segmentation_node is None or not segmentation_node.IsA("vtkMRMLSegmentationNode"):
        raise ValueError("expected a segmentation node")
    if not isinstance(reference, sitk.Image):
        reference = sitk_from_volume_node(reference)
    segmentation = segmentation_node.GetSegmentation()
    if segment_ids is None:
        segment_ids = [segmentation.GetNthSegmentID(n) for n in range(segmentation.GetNumberOfSegments())]
    if not segmentation.ContainsRepresentation(_binary_representation_name()):
        segmentation_node.CreateBinaryLabelmapRepresentation()
    world = _world_matrix(segmentation_node)

    labels = np.zeros(reference.GetSize()[::-1], dtype=np.uint16 if len(segment_ids) > 255 else np.uint8)
    segments: list[SegmentDescription] = []
    empty: list[str] = []
    overlapping = 0
    for number, segment_id in enumerate(segment_ids, start=1):
        segment = segmentation.GetSegment(segment_id)
        if segment is None:
            raise ValueError(f"segment {segment_id!r} is not in {segmentation_node.GetName()}")
        oriented = _slicer().vtkOrientedImageData()
        segmentation_node.GetBinaryLabelmapRepresentation(segment_id, oriented)
        mask = np.zeros(labels.shape, dtype=bool)
        if oriented.GetPointData().GetScalars() is not None and oriented.GetNumberOfPoints() > 0:
            if not np.allclose(world, np.eye(4)):
                matrix = _vtk().vtkMatrix4x4()
                oriented.GetImageToWorldMatrix(matrix)
                oriented.SetImageToWorldMatrix(_numpy_to_matrix(world @ _matrix_to_numpy(matrix)))
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
) -> Any:
    """A new segmentation node with one segment per described label.

    Segments keep their names and colours. A label with no voxels still becomes a
    (reported) empty segment, so the segment list always matches ``segments``.
    The node is added to the scene only once it is complete.
    """
    if label_image.GetDimension() != 3 or label_image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError("a label map must be a 3D scalar image")
    slicer = _slicer()
    labels = sitk.GetArrayViewFromImage(label_image)
    unknown = set(np.unique(labels)) - {0} - {s.label for s in segments}
    if unknown:
        raise ValueError(f"label map holds labels {sorted(int(u) for u in unknown)} that no segment describes")
    grid = ImageGrid.from_sitk(label_image)
    ijk_to_ras = _numpy_to_matrix(ijk_to_ras_from_grid(grid))
    node = slicer.vtkMRMLSegmentationNode()
    node.SetName(name)
    segmentation = node.GetSegmentation()
    segmentation.SetSourceRepresentationName(_binary_representation_name())
    for description in segments:
        oriented = _array_to_image_data((labels == description.label).astype(np.uint8), slicer.vtkOrientedImageData)
        oriented.SetImageToWorldMatrix(ijk_to_ras)
        segment = slicer.vtkSegment()
        segment.SetName(description.name)
        segment.SetColor(*description.color)
        segment.AddRepresentation(_binary_representation_name(), oriented)
        segment_id = description.segment_id or description.name
        segmentation.AddSegment(segment, segment_id)
        if not np.any(labels == description.label):
            logger.warning("segment %r has no voxels", description.name)
    scene.AddNode(node)
    if reference_volume_node is not None:
        node.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume_node)
    node.CreateDefaultDisplayNodes()
    return node


# --------------------------------------------------------------------------------------
# Tables and plots

_UNIT_SUFFIXES = {
    "_mm": "mm",
    "_ml": "ml",
    "_hu": "HU",
    "_mgy": "mGy",
    "_s": "s",
    "_per_mm": "1/mm",
    "_mm2": "mm2",
    "_mm3": "mm3",
}


def _unit_of(column: str) -> str:
    for suffix in sorted(_UNIT_SUFFIXES, key=len, reverse=True):
        if column.lower().endswith(suffix):
            return _UNIT_SUFFIXES[suffix]
    return ""


def _vtk_column(series: pd.Series) -> Any:
    vtk = _vtk()
    name = str(series.name)
    values = series.to_numpy()
    if pd.api.types.is_bool_dtype(series):
        array = vtk.vtkBitArray()
        array.SetNumberOfValues(len(values))
        for row, value in enumerate(values):
            array.SetValue(row, int(bool(value)))
    elif pd.api.types.is_integer_dtype(series):
        array = vtk.vtkLongLongArray() if series.dtype.itemsize > 4 else vtk.vtkIntArray()
        array.SetNumberOfValues(len(values))
        for row, value in enumerate(values):
            array.SetValue(row, int(value))
    elif pd.api.types.is_float_dtype(series):
        array = vtk.vtkDoubleArray() if series.dtype.itemsize > 4 else vtk.vtkFloatArray()
        array.SetNumberOfValues(len(values))
        for row, value in enumerate(values):
            array.SetValue(row, float(value))
    else:
        array = vtk.vtkStringArray()
        array.SetNumberOfValues(len(values))
        for row, value in enumerate(values):
            array.SetValue(row, "" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value))
    array.SetName(name)
    return array


def table_node_from_dataframe(frame: pd.DataFrame, scene: Any, name: str, node: Any = None) -> Any:
    """Put a DataFrame into a (new or given) table node, keeping column types.

    Column types map to VTK arrays (bool → bit, int32 → int, int64 → long long,
    float32 → float, float64 → double, anything else → string). A unit read from the
    column name's suffix (``_mm``, ``_ml``, ``_hu``, ``_mgy``, ``_per_mm`` ...) is set
    as the column's unit label.
    """
    slicer = _slicer()
    columns = [_vtk_column(frame[column]) for column in frame.columns]
    if node is None:
        node = slicer.vtkMRMLTableNode()
        node.SetName(name)
        scene.AddNode(node)
    table = node.GetTable()
    was_modifying = node.StartModify()
    table.Initialize()
    for column in columns:
        table.AddColumn(column)
    for column in frame.columns:
        unit = _unit_of(str(column))
        if unit:
            node.SetColumnUnitLabel(str(column), unit)
    node.EndModify(was_modifying)
    return node


def dataframe_from_table_node(node: Any) -> pd.DataFrame:
    """A DataFrame with the columns and types of a table node."""
    table = node.GetTable()
    data: dict[str, Any] = {}
    for index in range(table.GetNumberOfColumns()):
        column = table.GetColumn(index)
        count = column.GetNumberOfValues()
        name = column.GetName()
        kind = column.GetClassName()
        if kind == "vtkStringArray":
            # The default string dtype of the running pandas (object before 3.0).
            data[name] = pd.Series([column.GetValue(r) for r in range(count)])
        elif kind == "vtkBitArray":
            data[name] = np.array([bool(column.GetValue(r)) for r in range(count)], dtype=bool)
        else:
            data[name] = _numpy_support().vtk_to_numpy(column).copy()
    return pd.DataFrame(data)


def chart_node_from_table(
    table_node: Any,
    scene: Any,
    x_column: str,
    y_columns: Sequence[str],
    title: str,
    x_title: str = "",
    y_title: str = "",
    log_x: bool = False,
) -> Any:
    """A plot chart with one scatter-line series per y column of a table node."""
    slicer = _slicer()
    frame_columns = [table_node.GetTable().GetColumn(i).GetName() for i in range(table_node.GetNumberOfColumns())]
    for column in (x_column, *y_columns):
        if column not in frame_columns:
            raise ValueError(f"table {table_node.GetName()} has no column {column!r}")
    chart = slicer.vtkMRMLPlotChartNode()
    chart.SetName(title)
    chart.SetTitle(title)
    chart.SetXAxisTitle(x_title or x_column)
    chart.SetYAxisTitle(y_title or ", ".join(y_columns))
    chart.SetXAxisLogScale(log_x)
    series_nodes = []
    for column in y_columns:
        series = slicer.vtkMRMLPlotSeriesNode()
        series.SetName(column)
        series.SetXColumnName(x_column)
        series.SetYColumnName(column)
        series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
        series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleCircle)
        series_nodes.append(series)
    scene.AddNode(chart)
    for series in series_nodes:
        scene.AddNode(series)
        series.SetAndObserveTableNodeID(table_node.GetID())
        chart.AddAndObservePlotSeriesNodeID(series.GetID())
    return chart


# --------------------------------------------------------------------------------------
# Markups and models


def mask_from_roi_node(roi_node: Any, grid: ImageGrid) -> np.ndarray:
    """Voxels of ``grid`` whose centres lie inside a markups ROI (any orientation), ``[k, j, i]`` bool."""
    size = [0.0, 0.0, 0.0]
    roi_node.GetSizeWorld(size)
    centre = [0.0, 0.0, 0.0]
    roi_node.GetCenterWorld(centre)
    axes_ras = _matrix_to_numpy(roi_node.GetObjectToWorldMatrix())[:3, :3]
    k, j, i = np.indices(grid.shape_kji)
    points_lps = grid.physical_from_index(np.stack([i, j, k], axis=-1).reshape(-1, 3))
    offsets_ras = points_lps @ _LPS_TO_RAS[:3, :3] - np.asarray(centre)
    local = offsets_ras @ axes_ras
    inside = np.all(np.abs(local) <= 0.5 * np.asarray(size), axis=1)
    return inside.reshape(grid.shape_kji)


def model_node_from_centerlines(points_lps_mm: np.ndarray, radius_mm: np.ndarray, scene: Any, name: str) -> Any:
    """A point-cloud model of centreline points with a ``Radius`` (mm) point scalar; NaN = unresolved."""
    slicer, vtk = _slicer(), _vtk()
    numpy_support = _numpy_support()
    points = vtk.vtkPoints()
    ras = np.asarray(points_lps_mm, dtype=float).reshape(-1, 3) @ _LPS_TO_RAS[:3, :3]
    points.SetData(numpy_support.numpy_to_vtk(np.ascontiguousarray(ras), deep=True))
    vertices = vtk.vtkCellArray()
    for index in range(len(ras)):
        vertices.InsertNextCell(1)
        vertices.InsertCellPoint(index)
    polydata = vtk.vtkPolyData()
    polydata.SetPoints(points)
    polydata.SetVerts(vertices)
    radius = numpy_support.numpy_to_vtk(np.asarray(radius_mm, dtype=float), deep=True)
    radius.SetName("Radius")
    polydata.GetPointData().AddArray(radius)
    polydata.GetPointData().SetActiveScalars("Radius")
    node = scene.AddNewNodeByClass("vtkMRMLModelNode", name)
    node.SetAndObservePolyData(polydata)
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


# --------------------------------------------------------------------------------------
# Scenes


def new_scene() -> Any:
    """An empty MRML scene (headless)."""
    return _slicer().vtkMRMLScene()


def save_scene_bundle(scene: Any, path: str | Path) -> Path:
    """Save a scene and all its data as a Slicer data bundle (``.mrb``).

    The bundle is written to a temporary folder and zipped in place only once it is
    complete, so a failure leaves no partial file.
    """
    slicer = _slicer()
    path = Path(path).resolve()  # Slicer's bundle writer needs absolute paths
    if path.suffix.lower() != ".mrb":
        raise ValueError(f"a scene bundle needs the .mrb suffix, got {path.name}")
    path.parent.mkdir(parents=True, exist_ok=True)
    for index in range(scene.GetNumberOfNodes()):
        node = scene.GetNthNode(index)
        if node.IsA("vtkMRMLStorableNode") and node.GetStorageNode() is None:
            node.AddDefaultStorageNode()
    logic = slicer.vtkMRMLApplicationLogic()
    logic.SetMRMLScene(scene)
    work = Path(tempfile.mkdtemp(prefix=".mrb-", dir=path.parent))
    try:
        bundle = work / path.stem
        bundle.mkdir()
        if not logic.SaveSceneToSlicerDataBundleDirectory(str(bundle)):
            raise OSError(f"Slicer could not save the scene to {bundle}")
        partial = work / path.name
        if not logic.Zip(str(partial), str(bundle)):
            raise OSError(f"could not zip the scene bundle {partial}")
        partial.replace(path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return path


def load_scene_bundle(path: str | Path) -> Any:
    """Open a ``.mrb`` into a new scene (for checks and headless batch work)."""
    slicer = _slicer()
    scene = slicer.vtkMRMLScene()
    logic = slicer.vtkMRMLApplicationLogic()
    logic.SetMRMLScene(scene)
    work = tempfile.mkdtemp(prefix="imaginfo-mrb-")
    try:
        if not logic.OpenSlicerDataBundle(str(Path(path).resolve()), work):
            raise OSError(f"Slicer could not open the scene bundle {path}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return scene


# --------------------------------------------------------------------------------------
# Python requirements inside Slicer


def requirements_file() -> Path:
    """The extension's requirements list (installed inside Slicer on first use)."""
    return Path(__file__).resolve().parent.parent / "Resources" / "requirements.txt"


def read_requirements(path: str | Path) -> list[str]:
    lines = Path(path).read_text().splitlines()
    return [line.split("#", 1)[0].strip() for line in lines if line.split("#", 1)[0].strip()]


def missing_requirements(requirements: Sequence[str]) -> list[str]:
    """Requirements not satisfied by the running Python."""
    from importlib.metadata import PackageNotFoundError, version

    from packaging.requirements import Requirement

    missing = []
    for text in requirements:
        requirement = Requirement(text)
        try:
            installed = version(requirement.name)
        except PackageNotFoundError:
            missing.append(text)
            continue
        if requirement.specifier and not requirement.specifier.contains(installed, prereleases=True):
            missing.append(text)
    return missing


def ensure_python_requirements(
    requirements: Sequence[str] | None = None,
    requester: str = "ImagInfo",
    confirm: Callable[[str], bool] | None = None,
    need_torch: bool = False,
) -> bool:
    """Install what ImagInfo needs inside Slicer, on first use (never at import).

    Uses ``pip_ensure`` (``slicer.packaging`` or ``slicer.pydeps``, Slicer >= 5.11)
    where it exists; otherwise asks once for confirmation and calls
    ``slicer.util.pip_install``. torch comes from the PyTorch extension's
    ``PyTorchUtils`` so that it matches the machine's GPU.

    Returns
    -------
    bool
        True when everything is available; False when the user declined.
    """
    slicer = _slicer()
    if requirements is None:
        requirements = read_requirements(requirements_file())
    requirements = [r for r in requirements if not r.lower().startswith("torch")]
    missing = missing_requirements(requirements)
    if missing:
        pip_ensure = None
        for module_name in ("packaging", "pydeps"):
            module = getattr(slicer, module_name, None)
            pip_ensure = getattr(module, "pip_ensure", None) if module is not None else None
            if pip_ensure is not None:
                break
        if pip_ensure is not None:
            from packaging.requirements import Requirement

            pip_ensure([Requirement(r) for r in missing], requester=requester)
        else:
            message = f"{requester} needs these Python packages, which will now be installed:\n" + "\n".join(missing)
            ask = confirm or slicer.util.confirmOkCancelDisplay
            if not ask(message):
                return False
            slicer.util.pip_install(missing)
    if need_torch:
        try:
            import PyTorchUtils
        except ImportError as error:
            raise ImportError(
                "ImagInfo's deep-learning tools need the PyTorch extension: install it from the Extensions Manager"
            ) from error
        torch_logic = PyTorchUtils.PyTorchUtilsLogic()
        if not torch_logic.torchInstalled():
            if torch_logic.installTorch(askConfirmation=True) is None:
                return False
    return True
