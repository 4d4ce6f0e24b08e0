"""Radiomics as a measurement plugin of the study runner.

On the vessel phantom a study can add the radiomics of chosen segments to its
measurements: each vessel radius class of the truth label map (resampled onto the
series) and the holder's PMMA wall. Rows are ``radiomics_<ibsi tag>`` metrics; a
radius class has its ``radius_mm``, the PMMA wall none and its metric is
``radiomics_pmma_<ibsi tag>``. :func:`robustness_input` turns a study's long table
back into a tidy features table, so that the reproducibility analysis
(:mod:`ImagInfoExtension.radiomics.robustness`) runs on it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ImagInfoExtension.study.plugins import Measurement, SeriesContext

METRIC_PREFIX = "radiomics_"
PMMA_PREFIX = "radiomics_pmma_"
SEGMENT_CHOICES = ("classes", "pmma")
DEFAULT_SETTINGS = {
    "preset": "ct",
    "segments": ["classes", "pmma"],
    "radii_mm": None,
    "families": ["stat", "ih", "cm", "rlm", "szm", "ngt", "ngl"],
    "features": None,
    "pmma_slab_mm": 20.0,
}


def metric_key(tag: str, segment: str) -> str:
    """The long table's metric for an IBSI tag of a class (``radiomics_<tag>``) or the PMMA wall."""
    return f"{PMMA_PREFIX if segment == 'pmma' else METRIC_PREFIX}{tag}"


class RadiomicsPlugin:
    """IBSI radiomics of the phantom's radius classes and PMMA wall on each series.

    Settings
    --------
    preset : str
        Radiomics preset (``ct``; any of :data:`~ImagInfoExtension.radiomics.settings.PRESET_NAMES`).
    segments : list of {"classes", "pmma"}
        The truth's radius classes (needs ``--truth`` with its label map) and/or the
        holder's PMMA wall.
    radii_mm : list of float, optional
        Only these classes.
    families : list of str
        Feature families (shape features are left out by default: on a fixed truth
        mask they do not change with dose).
    features : list of str, optional
        Only these IBSI tags.
    pmma_slab_mm : float
        The PMMA wall is taken in an axial slab this thick around the image's centre
        (the whole wall holds millions of voxels and adds nothing a slab does not).
    """

    name = "radiomics"
    metrics: tuple[str, ...] = ()

    def settings(self, given: dict) -> dict:
        from ImagInfoExtension.radiomics.settings import FAMILIES, PRESET_NAMES

        unknown = sorted(set(given) - set(DEFAULT_SETTINGS))
        if unknown:
            raise ValueError(f"radiomics plugin: unknown setting(s) {unknown}; known: {', '.join(DEFAULT_SETTINGS)}")
        settings = {**DEFAULT_SETTINGS, **given}
        if settings["preset"] not in PRESET_NAMES:
            raise ValueError(f"radiomics plugin: preset {settings['preset']!r}; use one of {', '.join(PRESET_NAMES)}")
        bad = [s for s in settings["segments"] if s not in SEGMENT_CHOICES]
        if bad or not settings["segments"]:
            raise ValueError(f"radiomics plugin: segments {bad or '[]'}; use some of {', '.join(SEGMENT_CHOICES)}")
        bad = [f for f in settings["families"] if f not in FAMILIES]
        if bad:
            raise ValueError(f"radiomics plugin: families {bad}; use some of {', '.join(FAMILIES)}")
        if not float(settings["pmma_slab_mm"]) > 0:
            raise ValueError("radiomics plugin: pmma_slab_mm must be > 0 (mm)")
        settings["segments"] = list(settings["segments"])
        settings["families"] = list(settings["families"])
        return settings

    def measure(self, series: SeriesContext, settings: dict) -> Measurement:
        from ImagInfoExtension.radiomics.extract import extract_features
        from ImagInfoExtension.radiomics.settings import load_preset

        radiomics_settings = load_preset(settings["preset"]).with_changes(families=tuple(settings["families"]))
        labels, names, radius_of = self._segments(series, settings)
        measurement = Measurement()
        result = extract_features(series.image, labels, radiomics_settings, segment_names=names)
        wanted = set(settings["features"] or [])
        for row in result.rows:
            if row["image_type"] != "original" or (wanted and row["ibsi_tag"] not in wanted):
                continue
            segment = row["segment"]
            measurement.add(metric_key(row["ibsi_tag"], segment), row["value"], radius_of.get(segment))
        for failure in result.failures:
            measurement.warn(f"{METRIC_PREFIX}{failure['segment']}", failure["error"])
        measurement.record = {"preset": settings["preset"], "timings_s": result.timings_s, "warnings": result.warnings}
        return measurement

    @staticmethod
    def _segments(series: SeriesContext, settings: dict) -> tuple[sitk.Image, dict[int, str], dict[str, float]]:
        """A label map of the chosen segments on the series' grid, their names and radii."""
        from ImagInfoExtension.truth import read_mask_truth
        from ImagInfoExtension.vessels.region import find_holder_wall

        array = np.zeros(sitk.GetArrayViewFromImage(series.image).shape, dtype=np.uint16)
        names: dict[int, str] = {}
        radius_of: dict[str, float] = {}
        if "classes" in settings["segments"]:
            truth_path = series.payload.get("truth")
            if not truth_path:
                raise ValueError(
                    "the radiomics plugin's radius classes need the phantom's truth (--truth truth.json, with "
                    "truth_labels.nrrd beside it); or choose segments: [pmma]"
                )
            truth = read_mask_truth(Path(truth_path)).resampled_onto(series.image)
            truth_labels = truth.label_array()
            chosen = settings["radii_mm"]
            for truth_class in truth.classes:
                if chosen and not any(abs(truth_class.radius_mm - r) < 1e-6 for r in chosen):
                    continue
                array[truth_labels == truth_class.label] = truth_class.label
                names[truth_class.label] = truth_class.name
                radius_of[truth_class.name] = truth_class.radius_mm
        if "pmma" in settings["segments"]:
            spacing_kji = np.asarray(series.image.GetSpacing()[::-1])
            wall = find_holder_wall(sitk.GetArrayViewFromImage(series.image), spacing_kji)
            half_slab = int(round(settings["pmma_slab_mm"] / 2 / spacing_kji[0]))
            centre = wall.shape[0] // 2
            wall[: max(0, centre - half_slab)] = False
            wall[centre + half_slab + 1 :] = False
            if not wall.any():
                raise ValueError("no PMMA holder wall found in this series; choose segments: [classes]")
            label = int(array.max()) + 1 if names else 1
            label = max(label, 1000)
            array[wall & (array == 0)] = label
            names[label] = "pmma"
        labels = sitk.GetImageFromArray(array)
        labels.CopyInformation(series.image)
        return labels, names, radius_of


def robustness_input(long, factors: list[str]):
    """A study's radiomics rows as a tidy features table (with the study's factors).

    Parameters
    ----------
    long : DataFrame
        ``results_long.csv`` rows: ``<factors>,radius_mm,metric,value``.
    factors : list of str
        The study's factor columns (e.g. ``recon``, ``dose_mgy``, ``repetition``).
    """
    import pandas as pd

    from ImagInfoExtension.radiomics.extract import FEATURE_CLASSES
    from ImagInfoExtension.truth import segment_name

    rows = long[long["metric"].astype(str).str.startswith(METRIC_PREFIX)].copy()
    if rows.empty:
        return pd.DataFrame()
    is_pmma = rows["metric"].str.startswith(PMMA_PREFIX)
    rows["ibsi_tag"] = np.where(
        is_pmma, rows["metric"].str.slice(len(PMMA_PREFIX)), rows["metric"].str.slice(len(METRIC_PREFIX))
    )
    rows["segment"] = [
        "pmma" if pmma else segment_name(float(radius)) for pmma, radius in zip(is_pmma, rows["radius_mm"])
    ]
    rows["case"] = "phantom"
    rows["lesion"] = ""
    rows["image_type"] = "original"
    rows["feature"] = rows["ibsi_tag"]
    rows["feature_class"] = [FEATURE_CLASSES.get(tag.split("_", 1)[0], "") for tag in rows["ibsi_tag"]]
    columns = ["case", *factors, "segment", "lesion", "image_type", "feature_class", "feature", "value", "ibsi_tag"]
    return rows[columns].reset_index(drop=True)
