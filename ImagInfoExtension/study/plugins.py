"""Measurement plugins: what the study runner measures on each series.

A plugin is a class with a ``name``, the ``metrics`` it reports (keys of
:mod:`ImagInfoExtension.metrics`) and two methods::

    class MyPlugin:
        name = "my_measure"
        metrics = ("my_metric_hu",)

        def settings(self, given: dict) -> dict:
            # Check and complete the plugin's settings; they become part of each
            # series' cache key, so a change re-measures.
            ...

        def measure(self, series: SeriesContext, settings: dict) -> Measurement:
            ...

Plugins run in the order given, on a worker process, one series at a time; a plugin
reads what an earlier one found on the same series from ``series.earlier`` (the
image-quality plugin uses the vessels' segmentation for its edge and contrast). The
runner finds a plugin by its registered name (:data:`BUILTIN_PLUGINS`) or by an
import path ``package.module:ClassName``, so that workers on other machines can load
it too.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

#: Built-in plugins by name: ``module:ClassName``, imported only when used.
BUILTIN_PLUGINS = {
    "vessels": "ImagInfoExtension.study.measurements:VesselPlugin",
    "image_quality": "ImagInfoExtension.study.measurements:ImageQualityPlugin",
    "radiomics": "ImagInfoExtension.radiomics.plugin:RadiomicsPlugin",
    "segmentation": "ImagInfoExtension.segmentation.plugin:SegmentationPlugin",
}


@dataclass
class Measurement:
    """What a plugin measured on one series.

    Attributes
    ----------
    rows : list of dict
        ``{"radius_mm": float or None, "metric": key, "value": float}``; ``radius_mm``
        is the class (None for a per-image metric). Only finite values.
    warnings : list of dict
        ``{"metric": key, "reason": text}`` for each metric the plugin could not
        measure: nothing is left out silently.
    record : dict
        JSON-serialisable details kept in the series' record (curves, ROI placement).
    shared : object
        Anything later plugins on the same series may use (not kept).
    """

    rows: list[dict] = field(default_factory=list)
    warnings: list[dict] = field(default_factory=list)
    record: dict = field(default_factory=dict)
    shared: Any = None

    def add(self, metric: str, value: float | None, radius_mm: float | None = None, missing: str | None = None) -> bool:
        """Add a finite value and return True; None, NaN and infinities are not rows.

        With ``missing``, a value that is not finite becomes a warning with that reason,
        so that nothing is left out silently.
        """
        finite = value is not None and float(value) == float(value) and abs(float(value)) != float("inf")
        if finite:
            self.rows.append(
                {"radius_mm": None if radius_mm is None else float(radius_mm), "metric": metric, "value": float(value)}
            )
        elif missing is not None:
            where = "" if radius_mm is None else f" (r = {float(radius_mm):g} mm)"
            self.warn(metric, f"{missing}{where}")
        return finite

    def warn(self, metric: str, reason: str) -> None:
        self.warnings.append({"metric": metric, "reason": reason})


@dataclass
class SeriesContext:
    """One series, as plugins see it.

    Attributes
    ----------
    image : SimpleITK.Image
    payload : dict
        The series' study row and files: ``path``, ``series_uid``, ``out_dir`` (the
        series' own output folder), ``truth`` and ``noise_roi`` (paths or None).
    earlier : dict of str to Measurement
        What the plugins before this one measured on this series.
    """

    image: Any
    payload: dict
    earlier: dict[str, Measurement] = field(default_factory=dict)


@runtime_checkable
class MeasurementPlugin(Protocol):
    name: str
    metrics: tuple[str, ...]

    def settings(self, given: dict) -> dict: ...

    def measure(self, series: SeriesContext, settings: dict) -> Measurement: ...


def load_plugin(spec: str) -> MeasurementPlugin:
    """A plugin from its registered name or its ``package.module:ClassName`` import path."""
    path = BUILTIN_PLUGINS.get(spec, spec)
    if ":" not in path:
        raise ValueError(
            f"unknown measurement plugin {spec!r}; use one of {', '.join(BUILTIN_PLUGINS)} "
            "or an import path package.module:ClassName"
        )
    module_name, _, class_name = path.partition(":")
    try:
        plugin_class = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"measurement plugin {spec!r} cannot be loaded from {path} ({error})") from None
    plugin = plugin_class()
    if not isinstance(plugin, MeasurementPlugin):
        raise ValueError(f"{path} is not a measurement plugin: it needs name, metrics, settings() and measure()")
    return plugin
