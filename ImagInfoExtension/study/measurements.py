"""The built-in measurement plugins: vessels per radius class, and TG-233 image quality."""

from __future__ import annotations

from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ImagInfoExtension.study.plugins import Measurement, SeriesContext

#: Per-radius vessel metrics.
VESSEL_CLASS_METRICS = (
    "mpv_hu",
    "iqr_hu",
    "volume_ml",
    "n_voxels",
    "detection_rate",
    "correct_radius_rate",
    "est_radius_mm",
    "radius_bias_mm",
)

#: Per-radius metrics that compare with a truth (absent without one).
TRUTH_METRICS = ("detection_rate", "correct_radius_rate", "est_radius_mm", "radius_bias_mm")

#: Whole-image metrics of the image-quality plugin, in the column order of ``iq_metrics.csv``.
IMAGE_QUALITY_METRICS = (
    "noise_sd_hu",
    "nps_fpeak_per_mm",
    "nps_favg_per_mm",
    "ttf50_per_mm",
    "ttf10_per_mm",
    "cnr",
    "dprime_npw",
    "dprime_npwe",
)


def _checked(given: dict, allowed: dict, plugin: str) -> dict:
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise ValueError(f"{plugin} plugin: unknown setting(s) {unknown}; known: {', '.join(sorted(allowed))}")
    return {**allowed, **given}


class VesselPlugin:
    """Vessel extraction and per-radius quantification (:func:`~ImagInfoExtension.vessels.quantify_vessels`).

    Settings are :class:`~ImagInfoExtension.vessels.quantify.VesselParameters` fields.
    With a truth (``payload["truth"]``), detection and radius accuracy too. Writes the
    vessel outputs to the series' folder.
    """

    name = "vessels"
    metrics = (*VESSEL_CLASS_METRICS, "total_volume_ml")

    def settings(self, given: dict) -> dict:
        from ImagInfoExtension.vessels.quantify import VesselParameters

        known = {f.name for f in fields(VesselParameters)}
        unknown = sorted(set(given) - known)
        if unknown:
            raise ValueError(f"vessels plugin: unknown setting(s) {unknown}; known: {', '.join(sorted(known))}")
        return asdict(VesselParameters(**given))

    def measure(self, series: SeriesContext, settings: dict) -> Measurement:
        from ImagInfoExtension.vessels.quantify import VesselParameters, quantify_vessels, write_results
        from ImagInfoExtension.vessels.truth import load_truth

        truth_path = series.payload.get("truth")
        truth = load_truth(truth_path) if truth_path else None
        vessels = quantify_vessels(series.image, truth=truth, parameters=VesselParameters(**settings))
        if series.payload.get("out_dir"):
            write_results(vessels, series.payload["out_dir"])
        measurement = Measurement(shared=vessels)
        table = vessels.per_radius.dropna(subset=["radius_mm"])
        for record in table.to_dict("records"):
            for key in VESSEL_CLASS_METRICS:
                if key in record:
                    # Accuracy metrics exist only with a truth; without one their columns are empty by design.
                    missing = (
                        None
                        if truth is None and key in TRUTH_METRICS
                        else "no value: the class was not found, or none of it lies deep enough for its core"
                    )
                    measurement.add(key, record[key], record["radius_mm"], missing)
        measurement.add("total_volume_ml", vessels.total_volume_ml)
        measurement.record = {k: vessels.summary[k] for k in ("total_volume_ml", "levels_hu", "region", "timings_s")}
        return measurement


class ImageQualityPlugin:
    """AAPM TG-233 image quality: noise SD and NPS, TTF, CNR and d′.

    Noise SD and NPS come from square ROIs in a uniform region: the user's
    (``payload["noise_roi"]``, a label map or mask), else the holder's PMMA of our
    phantom, else uniform regions found automatically
    (:func:`~ImagInfoExtension.imagequality.find_uniform_regions`). The TTF comes from
    the thickest vessel found by the vessel plugin where it crosses the slices squarely
    (a circular edge); CNR and d′ use the vessel class at ``radius_mm`` against the
    background. What cannot be measured is left out with its reason.

    Settings
    --------
    radius_mm : float
        The vessel class of CNR and the d′ task's disk radius (3 mm).
    wall_edge_margin_mm : float
        Noise ROIs keep this far from edges (3 mm: closer, the edges' blur and ringing
        add low-frequency power to the NPS).
    max_roi_px : int
        Largest NPS ROI side (TG-233: up to 64).
    observer : dict
        :class:`~ImagInfoExtension.imagequality.ObserverParameters` fields.
    """

    name = "image_quality"
    metrics = IMAGE_QUALITY_METRICS
    DEFAULTS = {"radius_mm": 3.0, "wall_edge_margin_mm": 3.0, "max_roi_px": 64, "observer": {}}

    def settings(self, given: dict) -> dict:
        from ImagInfoExtension.imagequality import ObserverParameters

        settings = _checked(given, self.DEFAULTS, self.name)
        if settings["radius_mm"] <= 0 or settings["wall_edge_margin_mm"] < 0:
            raise ValueError("image_quality plugin: radius_mm must be positive and wall_edge_margin_mm not negative")
        settings["observer"] = asdict(ObserverParameters(**settings["observer"]))
        return settings

    def measure(self, series: SeriesContext, settings: dict) -> Measurement:
        from ImagInfoExtension.imagequality import (
            ObserverParameters,
            contrast_to_noise_ratio,
            detectability_index,
            noise_power_spectrum,
            noise_sd_hu,
            task_transfer_function,
        )

        image = series.image
        array = sitk.GetArrayViewFromImage(image)
        spacing = np.asarray(image.GetSpacing(), dtype=float)[::-1]
        measurement = Measurement()
        details: dict = {}
        curves: dict = {}
        nps = None
        noise_sd = float("nan")
        try:
            rois, source = noise_rois(series, spacing, settings)
            details["noise_roi_source"] = source
            noise_sd = noise_sd_hu(array, rois)
            nps = noise_power_spectrum(array, spacing[1:], rois)
            measurement.add("noise_sd_hu", noise_sd, missing="the noise ROIs gave no finite SD")
            measurement.add("nps_fpeak_per_mm", nps.peak_frequency_per_mm, missing="the NPS has no peak")
            measurement.add("nps_favg_per_mm", nps.average_frequency_per_mm, missing="the NPS has no average")
            details.update(nps_roi_px=rois.size_px, nps_rois=len(rois))
            curves["nps"] = {"frequency_per_mm": nps.frequency_per_mm.tolist(), "value": nps.nps_hu2_mm2.tolist()}
        except (ValueError, OSError) as error:
            for key in ("noise_sd_hu", "nps_fpeak_per_mm", "nps_favg_per_mm"):
                measurement.warn(key, f"noise ROI: {error}")
        vessels = series.earlier.get("vessels")
        vessels = vessels.shared if vessels is not None else None
        ttf = None
        edge = None if vessels is None else largest_vessel_edge(vessels.labels, len(vessels.radii_mm), spacing)
        if edge is None:
            reason = (
                "no vessel crosses the slices squarely to serve as a circular edge"
                if vessels is not None
                else "needs the vessel plugin's segmentation for a circular edge"
            )
            for key in ("ttf50_per_mm", "ttf10_per_mm"):
                measurement.warn(key, f"TTF: {reason}")
        else:
            centres, radius = edge
            try:
                ttf = task_transfer_function(array, spacing, centres, radius)
                measurement.add("ttf50_per_mm", ttf.ttf50_per_mm, missing="the TTF does not fall to 50%")
                measurement.add("ttf10_per_mm", ttf.ttf10_per_mm, missing="the TTF does not fall to 10%")
                details.update(ttf_edge_radius_mm=ttf.edge_radius_mm, ttf_contrast_hu=ttf.contrast_hu)
                curves["ttf"] = {"frequency_per_mm": ttf.frequency_per_mm.tolist(), "value": ttf.ttf.tolist()}
            except ValueError as error:
                for key in ("ttf50_per_mm", "ttf10_per_mm"):
                    measurement.warn(key, f"TTF: {error}")
        row = _row_at(vessels, settings["radius_mm"]) if vessels is not None else None
        if row is None or not np.isfinite(row["mpv_hu"]):
            reason = f"no vessel of radius {settings['radius_mm']:g} mm was found to give the contrast"
            for key in ("cnr", "dprime_npw", "dprime_npwe"):
                measurement.warn(key, reason)
        elif not np.isfinite(noise_sd):
            for key in ("cnr", "dprime_npw", "dprime_npwe"):
                measurement.warn(key, "needs the noise SD, which could not be measured")
        else:
            background = float(vessels.summary["levels_hu"]["background"])
            contrast = float(row["mpv_hu"]) - background
            cnr = contrast_to_noise_ratio(float(row["mpv_hu"]), background, noise_sd)
            measurement.add("cnr", cnr, missing="the contrast or the noise is not finite")
            if nps is not None and ttf is not None:
                observer = ObserverParameters(**settings["observer"])
                d = detectability_index(ttf, nps, settings["radius_mm"], contrast, observer)
                measurement.add("dprime_npw", d.npw, missing="the observer integral is not finite")
                measurement.add("dprime_npwe", d.npwe, missing="the observer integral is not finite")
            else:
                for key in ("dprime_npw", "dprime_npwe"):
                    measurement.warn(key, "needs both the NPS and the TTF")
        measurement.record = {"details": details, "curves": curves}
        return measurement


def noise_rois(series: SeriesContext, spacing_kji: np.ndarray, settings: dict) -> tuple[object, str]:
    """The square noise ROIs of a series, and where their uniform region came from.

    The user's mask wins. On our phantom (the vessel plugin found its holder's cavity)
    the holder's solid PMMA wall is the calibrated place. Anywhere else, uniform
    regions are found automatically
    (:func:`~ImagInfoExtension.imagequality.find_uniform_regions`): the holder test
    alone would take any bright block with dark inserts for a wall.

    Raises
    ------
    ValueError
        When no uniform region holds a ROI; the message says how to give one.
    """
    from ImagInfoExtension.imagequality import find_uniform_regions, place_square_rois, read_noise_roi
    from ImagInfoExtension.vessels.region import find_holder_wall

    array = sitk.GetArrayViewFromImage(series.image)
    user = series.payload.get("noise_roi")
    if user:
        region = read_noise_roi(Path(user), series.image)
        return place_square_rois(region, max_size_px=settings["max_roi_px"]), f"user ({Path(user).name})"
    vessels = series.earlier.get("vessels")
    if vessels is not None and vessels.record.get("region", {}).get("source") == "holder cavity":
        wall = find_holder_wall(array, spacing_kji, settings["wall_edge_margin_mm"])
        try:
            return place_square_rois(wall, max_size_px=settings["max_roi_px"]), "holder wall"
        except ValueError:
            pass  # too little of the wall in this scan: look anywhere
    # Its margin counts from the detected edge band, whose own width already keeps the
    # default 1.5 mm about 3.3 mm from an air boundary (the holder wall's 3 mm).
    region = find_uniform_regions(array, spacing_kji)
    if not region.any():
        raise ValueError(
            "no uniform region found (flat, stable-noise areas away from edges and clipped air); "
            "give one with --noise-roi (a label map or mask)"
        )
    return place_square_rois(region, max_size_px=settings["max_roi_px"]), "automatic"


def _row_at(vessels, radius_mm: float) -> dict | None:
    table = vessels.per_radius
    rows = table[np.isclose(table["radius_mm"].astype(float), radius_mm)]
    return None if rows.empty else rows.iloc[0].to_dict()


def largest_vessel_edge(labels: np.ndarray, class_count: int, spacing: np.ndarray) -> tuple[np.ndarray, float] | None:
    """Centres and radius of the thickest vessel class where it crosses the slices squarely.

    Slices qualify where the thickest class's largest 3D component shows exactly one
    round section (equal extents, area of its extents' circle within 15%).
    """
    from ImagInfoExtension.imagequality import fit_disk_centres

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
