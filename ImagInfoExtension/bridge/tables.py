"""Table nodes <-> DataFrames, and plot charts over table columns.

pandas is imported on first use: a fresh Slicer does not have it until a module's
requirements are installed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ImagInfoExtension.bridge.compat import import_slicer
from ImagInfoExtension.bridge.volumes import numpy_support, vtk_module
from ImagInfoExtension.metrics import registered

if TYPE_CHECKING:
    import pandas as pd

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


def unit_of(column: str) -> str:
    """A column's unit: the metric registry's for a metric (``cnr`` -> ``""``, ``ttf50_per_mm`` -> ``mm⁻¹``),
    else the one its suffix names (``dose_mgy`` -> ``mGy``), or ``""``."""
    known = registered().get(column)
    if known is not None:
        return known.unit
    for suffix in sorted(_UNIT_SUFFIXES, key=len, reverse=True):
        if column.lower().endswith(suffix):
            return _UNIT_SUFFIXES[suffix]
    return ""


def _vtk_column(series: pd.Series) -> Any:
    import pandas as pd

    vtk = vtk_module()
    name = str(series.name)
    values = series.to_numpy()
    if pd.api.types.is_bool_dtype(series):
        array = vtk.vtkBitArray()
        convert = lambda value: int(bool(value))  # noqa: E731
    elif pd.api.types.is_integer_dtype(series):
        array = vtk.vtkLongLongArray() if series.dtype.itemsize > 4 else vtk.vtkIntArray()
        convert = int
    elif pd.api.types.is_float_dtype(series):
        array = vtk.vtkDoubleArray() if series.dtype.itemsize > 4 else vtk.vtkFloatArray()
        convert = float
    else:
        array = vtk.vtkStringArray()

        def convert(value: Any) -> str:
            return "" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)

    array.SetNumberOfValues(len(values))
    for row, value in enumerate(values):
        array.SetValue(row, convert(value))
    array.SetName(name)
    return array


def table_node_from_dataframe(frame: pd.DataFrame, scene: Any, name: str, node: Any = None) -> Any:
    """Put a DataFrame into a (new or given) table node, keeping column types.

    Column types map to VTK arrays (bool → bit, int32 → int, int64 → long long,
    float32 → float, float64 → double, anything else → string). A unit read from the
    column name's suffix (``_mm``, ``_ml``, ``_hu``, ``_mgy``, ``_per_mm`` ...) is set
    as the column's unit label.
    """
    slicer = import_slicer()
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
        unit = unit_of(str(column))
        if unit:
            node.SetColumnUnitLabel(str(column), unit)
    node.EndModify(was_modifying)
    return node


def dataframe_from_table_node(node: Any) -> pd.DataFrame:
    """A DataFrame with the columns and types of a table node."""
    import pandas as pd

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
            data[name] = numpy_support().vtk_to_numpy(column).copy()
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
    node: Any = None,
) -> Any:
    """A plot chart with one scatter-line series per y column of a table node.

    A given chart ``node`` is reused: its old series are removed from the scene and
    replaced.
    """
    slicer = import_slicer()
    frame_columns = [table_node.GetTable().GetColumn(i).GetName() for i in range(table_node.GetNumberOfColumns())]
    for column in (x_column, *y_columns):
        if column not in frame_columns:
            raise ValueError(f"table {table_node.GetName()} has no column {column!r}")
    chart = node
    if chart is None:
        chart = slicer.vtkMRMLPlotChartNode()
        chart.SetName(title)
    else:
        old_series = [chart.GetNthPlotSeriesNode(n) for n in range(chart.GetNumberOfPlotSeriesNodes())]
        chart.RemoveAllPlotSeriesNodeIDs()
        for series in old_series:
            if series is not None and series.GetScene() is scene:
                scene.RemoveNode(series)
    chart.SetTitle(title)
    chart.SetXAxisTitle(x_title or x_column)
    chart.SetYAxisTitle(y_title or ", ".join(y_columns))
    chart.SetXAxisLogScale(log_x)
    series_nodes = []
    for column in y_columns:
        series = slicer.vtkMRMLPlotSeriesNode()
        known = registered().get(column)
        series.SetName(known.title if known is not None else column)
        series.SetXColumnName(x_column)
        series.SetYColumnName(column)
        series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
        series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleCircle)
        series_nodes.append(series)
    if chart.GetScene() is None:
        scene.AddNode(chart)
    for series in series_nodes:
        scene.AddNode(series)
        series.SetAndObserveTableNodeID(table_node.GetID())
        chart.AddAndObservePlotSeriesNodeID(series.GetID())
    return chart
