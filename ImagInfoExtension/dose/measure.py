"""Per-series measurements of a dose study: vessels per radius and TG-233 image quality."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ImagInfoExtension.imagequality import (
    ObserverParameters,
    contrast_to_noise_ratio,
    detectability_index,
    fit_disk_centres,
    noise_power_spectrum,
    noise_sd_hu,
    place_square_rois,
    task_transfer_function,
)
from ImagInfoExtension.io import read_dicom_series, read_image
from ImagInfoExtension.vessels.quantify import VesselParameters, VesselQuantification, quantify_vessels, write_results
from ImagInfoExtension.vessels.region import find_holder_wall
from ImagInfoExtension.vessels.truth import load_truth

#: Whole-image metrics, in the column order of ``iq_metrics.csv``.
IQ_METRICS = [
    "noise_sd_hu",
    "nps_fpeak_per_mm",
    "nps_favg_per_mm",
    "ttf50_per_mm",
    "ttf10_per_mm",
    "cnr",
    "dprime_npw",
    "dprime_npwe",
]
#: Per-radius vessel metrics carried into ``results_long.csv``.
VESSEL_METRICS = [
    "mpv_hu",
    "iqr_hu",
    "volume_ml",
    "n_voxels",
    "detection_rate",
    "correct_radius_rate",
    "est_radius_mm",
    "radius_bias_mm",
]


@dataclass(frozen=True)
class ComparisonParameters:
    """Everything that shapes the numbers of a dose comparison (hashed into the cache keys).

    Parameters
    ----------
    radius_mm : float
        The vessel radius tabulated (MPV, IQR) and the d' task's radius.
    vessels : dict
        :class:`~ImagInfoExtension.vessels.quantify.VesselParameters` fields.
    wall_edge_margin_mm : float
        Noise ROIs keep this far from the edges of the holder's PMMA (3 mm: closer,
        the edges' blur and ringing add low-frequency power to the NPS).
    max_roi_px : int
        Largest NPS ROI side (TG-233: up to 64).
    observer : dict
        :class:`~ImagInfoExtension.imagequality.ObserverParameters` fields.
    reference_recon : str
        The reconstruction others are compared with (iso-metric dose).
    reference_dose_mgy : float, optional
        Its dose; the study's highest by default.
    iso_metric : str
        The metric matched for the iso-metric dose.
    test : {'welch', 'kruskal'}
        Test of differences between reconstructions at each dose and radius.
    alpha : float
    """

    radius_mm: float = 3.0
    vessels: dict = field(default_factory=dict)
    wall_edge_margin_mm: float = 3.0
    max_roi_px: int = 64
    observer: dict = field(default_factory=dict)
    reference_recon: str = "FBP"
    reference_dose_mgy: float | None = None
    iso_metric: str = "noise_sd_hu"
    test: str = "welch"
    alpha: float = 0.05

    def __post_init__(self) -> None:
        if self.radius_mm <= 0:
            raise ValueError(f"radius must be positive mm, got {self.radius_mm}")
        if self.test not in ("welch", "kruskal"):
            raise ValueError(f"unknown test {self.test!r}; choose welch or kruskal")
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must lie between 0 and 1, got {self.alpha}")

    def measurement_dict(self) -> dict:
        """The fields that change per-series numbers (the statistics ones do not)."""
        document = asdict(self)
        for key in ("reference_recon", "reference_dose_mgy", "iso_metric", "test", "alpha"):
            document.pop(key)
        return document


def _row_at(result: VesselQuantification, radius_mm: float) -> dict | None:
    table = result.per_radius
    rows = table[np.isclose(table["radius_mm"].astype(float), radius_mm)]
    return None if rows.empty else rows.iloc[0].to_dict()


def _largest_vessel_edge(labels: np.ndarray, class_count: int, spacing: np.ndarray) -> tuple[np.ndarray, float] | None:
    """Centres and radius of the thickest vessel class where it crosses the slices squarely.

    Slices qualify where the thickest class's largest 3D component shows exactly one
    round section (equal extents, area of its extents' circle within 15%).
    """
    for label in range(class_count, 0, -1):
        mask = labels == label
        if not mask.any():
            continue
        components, count = ndimage.label(mask)
        sizes = np.bincount(components.ravel())[1:]
        mask = components == int(np.argmax(sizes)) + 1
        disk = np.zeros_like(mask)
        radii = []
        for k in np.flatnonzero(mask.any(axis=(1, 2))):
            section, pieces = ndimage.label(mask[k])
            if pieces != 1:
                continue
            jj, ii = np.nonzero(section)
            extent_j = (jj.max() - jj.min() + 1) * spacing[1]
            extent_i = (ii.max() - ii.min() + 1) * spacing[2]
            area = len(jj) * spacing[1] * spacing[2]
            radius = np.sqrt(area / np.pi)
            if abs(extent_j - extent_i) > 0.15 * max(extent_j, extent_i):
                continue
            if abs(np.pi * (0.25 * (extent_j + extent_i)) ** 2 - area) > 0.15 * area + 2 * spacing[1] * spacing[2]:
                continue
            disk[k] = section > 0
            radii.append(radius)
        if len(radii) >= 3 and np.median(radii) >= 3 * max(spacing[1:]):
            return fit_disk_centres(disk, spacing), float(np.median(radii))
    return None


def measure_image_quality(
    image: sitk.Image, vessels: VesselQuantification, parameters: ComparisonParameters
) -> tuple[dict, dict]:
    """TG-233 metrics on the phantom, with automatic ROIs.

    Noise SD and NPS come from square ROIs in the holder's PMMA (solid, away from its
    edges, free of air clipping); the TTF from the thickest vessel where it crosses the
    slices squarely (a circular edge); CNR and d' use the vessel class at
    ``parameters.radius_mm`` against the cavity background.

    Returns
    -------
    metrics : dict
        :data:`IQ_METRICS` (NaN where a metric cannot be measured) plus ROI details.
    curves : dict
        ``nps`` and ``ttf`` as frequency/value lists.
    """
    array = sitk.GetArrayViewFromImage(image)
    spacing = np.asarray(image.GetSpacing(), dtype=float)[::-1]
    metrics: dict = dict.fromkeys(IQ_METRICS, float("nan"))
    curves: dict = {}
    notes = []
    nps = None
    uniform = find_holder_wall(array, spacing, parameters.wall_edge_margin_mm)
    try:
        rois = place_square_rois(uniform, max_size_px=parameters.max_roi_px)
        metrics["noise_sd_hu"] = noise_sd_hu(array, rois)
        nps = noise_power_spectrum(array, spacing[1:], rois)
        metrics["nps_fpeak_per_mm"] = nps.peak_frequency_per_mm
        metrics["nps_favg_per_mm"] = nps.average_frequency_per_mm
        metrics["nps_roi_px"] = rois.size_px
        metrics["nps_rois"] = len(rois)
        curves["nps"] = {"frequency_per_mm": nps.frequency_per_mm.tolist(), "value": nps.nps_hu2_mm2.tolist()}
    except ValueError as error:
        notes.append(f"noise: {error}")
    ttf = None
    edge = _largest_vessel_edge(vessels.labels, len(vessels.radii_mm), spacing)
    if edge is None:
        notes.append("TTF: no vessel crosses the slices squarely; give an edge ROI")
    else:
        centres, radius = edge
        try:
            ttf = task_transfer_function(array, spacing, centres, radius)
            metrics["ttf50_per_mm"] = ttf.ttf50_per_mm
            metrics["ttf10_per_mm"] = ttf.ttf10_per_mm
            metrics["ttf_edge_radius_mm"] = ttf.edge_radius_mm
            metrics["ttf_contrast_hu"] = ttf.contrast_hu
            curves["ttf"] = {"frequency_per_mm": ttf.frequency_per_mm.tolist(), "value": ttf.ttf.tolist()}
        except ValueError as error:
            notes.append(f"TTF: {error}")
    row = _row_at(vessels, parameters.radius_mm)
    background = float(vessels.summary["levels_hu"]["background"])
    if row is not None and np.isfinite(row["mpv_hu"]) and np.isfinite(metrics["noise_sd_hu"]):
        contrast = float(row["mpv_hu"]) - background
        metrics["cnr"] = contrast_to_noise_ratio(float(row["mpv_hu"]), background, metrics["noise_sd_hu"])
        if nps is not None and ttf is not None:
            d = detectability_index(ttf, nps, parameters.radius_mm, contrast, ObserverParameters(**parameters.observer))
            metrics["dprime_npw"] = d.npw
            metrics["dprime_npwe"] = d.npwe
    metrics["notes"] = "; ".join(notes)
    return metrics, curves


def measure_series(payload: dict, parameters: dict) -> dict:
    """The batch job of a dose comparison: one series, all its measurements.

    ``payload``: ``path`` (image file or DICOM folder), ``series_uid`` (optional),
    ``truth`` (path, optional), ``out_dir`` (where the vessel outputs go).
    """
    comparison = ComparisonParameters(**parameters)
    path = Path(payload["path"])
    if path.is_dir() and payload.get("series_uid"):
        image = read_dicom_series(path, payload["series_uid"])
    else:
        image = read_image(path)
    truth = load_truth(payload["truth"]) if payload.get("truth") else None
    vessels = quantify_vessels(image, truth=truth, parameters=VesselParameters(**comparison.vessels))
    if payload.get("out_dir"):
        write_results(vessels, payload["out_dir"])
    rows = []
    table = vessels.per_radius.dropna(subset=["radius_mm"])
    for record in table.to_dict("records"):
        for metric in VESSEL_METRICS:
            if metric in record and record[metric] is not None and np.isfinite(float(record[metric])):
                rows.append({"radius_mm": float(record["radius_mm"]), "metric": metric, "value": float(record[metric])})
    rows.append({"radius_mm": None, "metric": "total_volume_ml", "value": vessels.total_volume_ml})
    metrics, curves = measure_image_quality(image, vessels, comparison)
    for metric in IQ_METRICS:
        if np.isfinite(metrics[metric]):
            rows.append({"radius_mm": None, "metric": metric, "value": float(metrics[metric])})
    return {
        "rows": rows,
        "iq": metrics,
        "curves": curves,
        "vessel_summary": {k: vessels.summary[k] for k in ("total_volume_ml", "levels_hu", "region", "timings_s")},
    }
