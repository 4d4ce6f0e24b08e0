"""The metric registry: what every number ImagInfo reports is, in one place.

Every measurement plugin declares its metrics here, and everything that shows a
metric reads it from here: the published-style tables (decimals), the plots and the
report (titles and units), Slicer's table nodes (column units) and chart titles. A
metric not registered still works; it is shown by its key, without a unit.

This module imports nothing outside the standard library, so that a Slicer module can
read it before any optional package is installed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: A DICOM code: (CodeValue, CodingSchemeDesignator, CodeMeaning).
DicomCode = tuple[str, str, str]

PER_CLASS = "class"
PER_IMAGE = "image"


@dataclass(frozen=True)
class Metric:
    """What one metric is.

    Parameters
    ----------
    key : str
        The name in ``results_long.csv``; ends with its unit (``_hu``, ``_mm``, ``_ml``, ``_per_mm``).
    title : str
        Words for people, without the unit.
    unit : str
        Unit as printed (UCUM-like: ``HU``, ``mm``, ``ml``, ``mm⁻¹``); empty for ratios and counts.
    scope : {'class', 'image'}
        Measured per class (a vessel radius, a segment) or once per image.
    decimals : int
        Decimals shown in tables (the raw CSV keeps six significant digits).
    dicom_code : tuple, optional
        The quantity's DICOM code, as Slicer's Segment Statistics gives them.
    tabulated : bool
        Shown as a published-style table (reconstruction × dose) and in the report.
    higher_is_better : bool, optional
        For findings: whether a higher value means better image quality; None when neither.
    """

    key: str
    title: str
    unit: str = ""
    scope: str = PER_IMAGE
    decimals: int = 2
    dicom_code: DicomCode | None = None
    tabulated: bool = False
    higher_is_better: bool | None = None

    def __post_init__(self) -> None:
        if self.scope not in (PER_CLASS, PER_IMAGE):
            raise ValueError(f"metric {self.key}: scope must be {PER_CLASS!r} or {PER_IMAGE!r}, got {self.scope!r}")

    @property
    def per_class(self) -> bool:
        return self.scope == PER_CLASS

    @property
    def label(self) -> str:
        """``title (unit)``, as axis labels and table headings show it."""
        return f"{self.title} ({self.unit})" if self.unit else self.title

    def format(self, value: float) -> str:
        return "" if value is None or not math.isfinite(value) else f"{value:.{self.decimals}f}"

    def format_mean_sd(self, mean: float, sd: float) -> str:
        """``mean ± sd`` at this metric's decimals (empty for a missing mean, ``–`` for a missing SD)."""
        if mean is None or not math.isfinite(mean):
            return ""
        spread = "–" if sd is None or not math.isfinite(sd) else f"{sd:.{self.decimals}f}"
        return f"{mean:.{self.decimals}f} ± {spread}"


_REGISTRY: dict[str, Metric] = {}


def register(*metrics: Metric) -> None:
    """Add metrics; a key registered twice must describe the same metric."""
    for metric in metrics:
        known = _REGISTRY.get(metric.key)
        if known is not None and known != metric:
            raise ValueError(f"metric {metric.key!r} is already registered differently: {known}")
        _REGISTRY[metric.key] = metric


def metric(key: str) -> Metric:
    """The registered metric, or a plain one named by its key."""
    return _REGISTRY.get(key) or Metric(key, key.replace("_", " "))


def registered() -> dict[str, Metric]:
    return dict(_REGISTRY)


def tabulated_metrics() -> list[Metric]:
    return [m for m in _REGISTRY.values() if m.tabulated]


_VOLUME = ("118565006", "SCT", "Volume")
_MEDIAN = ("373099004", "SCT", "Median")
_STANDARD_DEVIATION = ("386136009", "SCT", "Standard Deviation")

register(
    # The vessel plugin, per radius class.
    Metric("mpv_hu", "vessel MPV", "HU", PER_CLASS, 0, _MEDIAN, tabulated=True),
    Metric("iqr_hu", "vessel IQR", "HU", PER_CLASS, 0, tabulated=True, higher_is_better=False),
    Metric("volume_ml", "vessel volume", "ml", PER_CLASS, 3, _VOLUME),
    Metric("n_voxels", "voxels", "", PER_CLASS, 0),
    Metric("detection_rate", "detection rate", "", PER_CLASS, 3, higher_is_better=True),
    Metric("correct_radius_rate", "correct radius class rate", "", PER_CLASS, 3, higher_is_better=True),
    Metric("est_radius_mm", "estimated radius", "mm", PER_CLASS, 2),
    Metric("radius_bias_mm", "radius bias", "mm", PER_CLASS, 2),
    Metric("total_volume_ml", "total vessel volume", "ml", PER_IMAGE, 2, _VOLUME, tabulated=True),
    # The image-quality plugin (AAPM TG-233), per image.
    Metric(
        "noise_sd_hu",
        "noise SD",
        "HU",
        PER_IMAGE,
        1,
        _STANDARD_DEVIATION,
        tabulated=True,
        higher_is_better=False,
    ),
    Metric("nps_fpeak_per_mm", "NPS peak frequency", "mm⁻¹", PER_IMAGE, 3, tabulated=True),
    Metric("nps_favg_per_mm", "NPS average frequency", "mm⁻¹", PER_IMAGE, 3),
    Metric("ttf50_per_mm", "TTF50", "mm⁻¹", PER_IMAGE, 3, tabulated=True, higher_is_better=True),
    Metric("ttf10_per_mm", "TTF10", "mm⁻¹", PER_IMAGE, 3, higher_is_better=True),
    Metric("cnr", "contrast-to-noise ratio", "", PER_IMAGE, 1, higher_is_better=True),
    Metric("dprime_npw", "d′ (NPW observer)", "", PER_IMAGE, 1, tabulated=True, higher_is_better=True),
    Metric("dprime_npwe", "d′ (NPWE observer)", "", PER_IMAGE, 1, higher_is_better=True),
    # The segmentation plugin: a model's label map and the vessel graph cut's, each against the truth.
    Metric("seg_dice", "model Dice", "", PER_CLASS, 3, higher_is_better=True),
    Metric("seg_hd95_mm", "model HD95", "mm", PER_CLASS, 2, higher_is_better=False),
    Metric("seg_assd_mm", "model ASSD", "mm", PER_CLASS, 2, higher_is_better=False),
    Metric("seg_nsd", "model normalised surface Dice", "", PER_CLASS, 3, higher_is_better=True),
    Metric("seg_volume_ml", "model volume", "ml", PER_CLASS, 3, _VOLUME),
    Metric("seg_true_volume_ml", "truth volume", "ml", PER_CLASS, 3, _VOLUME),
    Metric("seg_foreground_dice", "model foreground Dice", "", PER_IMAGE, 3, higher_is_better=True),
    Metric("seg_runtime_s", "model run time", "s", PER_IMAGE, 2),
    Metric("graphcut_dice", "graph-cut Dice", "", PER_CLASS, 3, higher_is_better=True),
    Metric("graphcut_hd95_mm", "graph-cut HD95", "mm", PER_CLASS, 2, higher_is_better=False),
    Metric("graphcut_assd_mm", "graph-cut ASSD", "mm", PER_CLASS, 2, higher_is_better=False),
    Metric("graphcut_nsd", "graph-cut normalised surface Dice", "", PER_CLASS, 3, higher_is_better=True),
    Metric("graphcut_volume_ml", "graph-cut volume", "ml", PER_CLASS, 3, _VOLUME),
    Metric("graphcut_foreground_dice", "graph-cut foreground Dice", "", PER_IMAGE, 3, higher_is_better=True),
)
