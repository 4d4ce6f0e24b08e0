"""Segmentation as a measurement plugin of the study runner: a model's accuracy, and the graph cut's, per class.

On each series the ``segmentation`` plugin runs a catalogue model
(:mod:`ImagInfoExtension.segmentation.inference`) and scores its label map against
the study's truth (``--truth``: ``truth.json`` with ``truth_labels.nrrd`` beside it,
or a label map), class by class (:mod:`ImagInfoExtension.segmentation.evaluation`):

- per class (``radius_mm`` the truth class's radius): ``seg_dice``, ``seg_hd95_mm``,
  ``seg_assd_mm``, ``seg_nsd``, ``seg_volume_ml`` and the truth's ``seg_true_volume_ml``;
- per image: ``seg_foreground_dice`` (every label against every truth label: the
  segmentation apart from its classification) and ``seg_runtime_s``.

With ``graph_cut`` (the default) it scores ImagInfo's own graph-cut vessel
segmentation of the same series against the same truth, with the same metrics
(``graphcut_*``): the label map of the vessel pipeline
(:func:`ImagInfoExtension.vessels.quantify_vessels`, classes by nearest centreline
radius; voxels whose radius could not be measured belong to no class but count for
``graphcut_foreground_dice``). When the ``vessels`` plugin ran before it on the series
(as in ``imaginfo compare``) its result is reused, not computed again.

A model label is compared with the truth class of the radius its name states
(``vessel r=1 mm``, as the phantom model's labels and the truth's classes are named),
else with the truth class of the same label value. The network is loaded once per
worker process and device (:func:`ImagInfoExtension.segmentation.run.segmenter_for`).
"""

from __future__ import annotations

import math
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from ImagInfoExtension.study.plugins import Measurement, SeriesContext

#: What the evaluation table's columns become, for the model (``seg_``) and the graph cut (``graphcut_``).
_CLASS_COLUMNS = ("dice", "hd95_mm", "assd_mm", "nsd", "volume_ml")
SEG_CLASS_METRICS = (*(f"seg_{c}" for c in _CLASS_COLUMNS), "seg_true_volume_ml")
GRAPHCUT_CLASS_METRICS = tuple(f"graphcut_{c}" for c in _CLASS_COLUMNS)
SEG_IMAGE_METRICS = ("seg_foreground_dice", "seg_runtime_s")
GRAPHCUT_IMAGE_METRICS = ("graphcut_foreground_dice",)
SEGMENTATION_METRICS = (*SEG_CLASS_METRICS, *SEG_IMAGE_METRICS, *GRAPHCUT_CLASS_METRICS, *GRAPHCUT_IMAGE_METRICS)
DEVICES = ("auto", "cpu", "cuda", "mps")
LABELS_FILE = "segmentation.nrrd"
DEFAULT_SETTINGS: dict[str, Any] = {
    "model": None,
    "entry": None,
    "device": "auto",
    "nsd_tolerance_mm": 1.0,
    "graph_cut": True,
    "radii_mm": None,
    "vessels": {},
}


def model_settings(model: object) -> dict:
    """The plugin's model settings for a catalogue id (``id`` or ``id@version``) or a :class:`ModelEntry`.

    An id stays an id (workers look it up in their catalogue); an entry travels whole
    as catalogue JSON, so that an entry no catalogue holds (an imported folder, a test
    model) runs on any worker.
    """
    from ImagInfoExtension.segmentation.catalogue import ModelEntry

    if isinstance(model, ModelEntry):
        return {"entry": model.to_json()}
    if isinstance(model, str) and model.strip():
        return {"model": model.strip()}
    raise ValueError(f"a model is a catalogue id (e.g. imaginfo-phantom-vessels) or a catalogue entry, got {model!r}")


def _entry(settings: dict):
    from ImagInfoExtension.segmentation.catalogue import entry_from_json
    from ImagInfoExtension.segmentation.run import resolve_model

    if settings.get("entry") is not None:
        return entry_from_json(settings["entry"], "the segmentation plugin's settings")
    return resolve_model(settings["model"])


def truth_radii(settings: dict) -> list[float] | None:
    """The radius each model label names (``vessel r=1 mm``), in label order; None unless every label names one."""
    entry = _entry(settings)
    radii = [_radius_of(label.name) for label in sorted(entry.labels, key=lambda label: label.value)]
    if (
        not radii
        or any(r is None for r in radii)
        or [label.value for label in entry.labels] != list(range(1, len(radii) + 1))
    ):
        return None
    return radii


def _radius_of(name: str) -> float | None:
    from ImagInfoExtension.truth import radius_from_segment_name

    return radius_from_segment_name(name)


class SegmentationPlugin:
    """A segmentation model (and the graph cut) scored against the truth, per class.

    Settings
    --------
    model : str
        Catalogue ``id`` or ``id@version`` (or ``entry``: a whole catalogue entry as JSON).
    device : {'auto', 'cpu', 'cuda', 'mps'}
    nsd_tolerance_mm : float
        Tolerance of the normalised surface Dice (1 mm).
    graph_cut : bool
        Also score the vessel graph cut (reused from the ``vessels`` plugin when it ran first).
    radii_mm : list of float, optional
        For a truth given as a bare label map: the radius of label k (default the phantom's classes).
    vessels : dict
        :class:`~ImagInfoExtension.vessels.quantify.VesselParameters` fields for a graph cut this
        plugin runs itself (without the ``vessels`` plugin).
    """

    name = "segmentation"
    metrics = SEGMENTATION_METRICS

    def settings(self, given: dict) -> dict:
        unknown = sorted(set(given) - set(DEFAULT_SETTINGS))
        if unknown:
            raise ValueError(f"segmentation plugin: unknown setting(s) {unknown}; known: {', '.join(DEFAULT_SETTINGS)}")
        settings = {**DEFAULT_SETTINGS, **given}
        if (settings["model"] is None) == (settings["entry"] is None):
            raise ValueError(
                "segmentation plugin: name the model (model: imaginfo-phantom-vessels, or id@version); "
                "'imaginfo models list' shows the catalogue"
            )
        if settings["model"] is not None and not isinstance(settings["model"], str):
            raise ValueError(f"segmentation plugin: model must be a catalogue id, got {settings['model']!r}")
        entry = _entry(settings)  # an unknown id or a bad entry fails here, before any series runs
        if settings["model"] is not None:
            settings["model"] = entry.key
        # The weights' hash keys each series' cache: new weights re-measure.
        settings["sha256"] = entry.weights.sha256
        device = str(settings["device"])
        if device not in DEVICES and not device.startswith("cuda:"):
            raise ValueError(f"segmentation plugin: device {device!r}; use one of {', '.join(DEVICES)} (or cuda:N)")
        tolerance = settings["nsd_tolerance_mm"]
        if isinstance(tolerance, bool) or not isinstance(tolerance, int | float) or not tolerance > 0:
            raise ValueError(
                f"segmentation plugin: nsd_tolerance_mm must be a positive number of mm, got {tolerance!r}"
            )
        if not isinstance(settings["graph_cut"], bool):
            raise ValueError(f"segmentation plugin: graph_cut must be true or false, got {settings['graph_cut']!r}")
        radii = settings["radii_mm"]
        if radii is not None:
            try:
                radii = [float(r) for r in radii]
            except (TypeError, ValueError):
                raise ValueError(f"segmentation plugin: radii_mm must be a list of mm, got {radii!r}") from None
            if not radii or not all(r > 0 and math.isfinite(r) for r in radii):
                raise ValueError(f"segmentation plugin: radii_mm must be positive mm, got {radii}")
            settings["radii_mm"] = radii
        from ImagInfoExtension.vessels.quantify import VesselParameters

        known = {f.name for f in fields(VesselParameters)}
        bad = sorted(set(settings["vessels"]) - known)
        if bad:
            raise ValueError(
                f"segmentation plugin: unknown vessels setting(s) {bad}; known: {', '.join(sorted(known))}"
            )
        settings["vessels"] = dict(settings["vessels"])
        return settings

    def measure(self, series: SeriesContext, settings: dict) -> Measurement:
        from ImagInfoExtension.io import write_atomically, write_image
        from ImagInfoExtension.segmentation.run import segmenter_for

        entry = _entry(settings)
        truth, truth_warnings = series_truth(series, settings.get("radii_mm"))
        result = segmenter_for(entry, settings["device"])(series.image)
        measurement = Measurement()
        pairs, unmatched = class_pairs(entry, truth)
        for truth_class in unmatched:
            for key in SEG_CLASS_METRICS:
                measurement.warn(key, f"the model has no label for the truth class {truth_class.name}")
        prediction = relabel(result.labels, pairs)
        paired = [c for c in truth.classes if c.label in pairs.values()]
        add_class_metrics(measurement, "seg", prediction, truth, paired, settings["nsd_tolerance_mm"], true_volume=True)
        measurement.add(
            "seg_foreground_dice",
            foreground_dice(sitk.GetArrayViewFromImage(result.labels), truth.label_array()),
            missing="neither the model nor the truth has any voxel here",
        )
        measurement.add("seg_runtime_s", result.runtime_s)
        out_dir = series.payload.get("out_dir")
        if out_dir:
            write_atomically(Path(out_dir) / LABELS_FILE, lambda p: write_image(result.labels, p))
        record = {
            "model": entry.id,
            "version": entry.version,
            "sha256": entry.weights.sha256,
            "device": result.device,
            "runtime_s": round(float(result.runtime_s), 3),
            "label_pairs": {str(k): v for k, v in pairs.items()},
            "warnings": [*truth_warnings, *map(str, result.warnings)],
        }
        if settings["graph_cut"]:
            record["graph_cut"] = self._graph_cut(series, settings, truth, measurement)
        measurement.record = record
        measurement.shared = result
        return measurement

    @staticmethod
    def _graph_cut(series: SeriesContext, settings: dict, truth, measurement: Measurement) -> dict:
        """Score the vessel graph cut of this series (the vessel plugin's, or one run here)."""
        earlier = series.earlier.get("vessels")
        vessels = earlier.shared if earlier is not None else None
        source = "vessels plugin"
        if vessels is None:
            from ImagInfoExtension.vessels.quantify import VesselParameters, quantify_vessels

            source = "run by the segmentation plugin"
            try:
                vessels = quantify_vessels(
                    series.image, radii_mm=truth.radii_mm, parameters=VesselParameters(**settings["vessels"])
                )
            except ValueError as error:
                for key in (*GRAPHCUT_CLASS_METRICS, *GRAPHCUT_IMAGE_METRICS):
                    measurement.warn(key, f"graph cut: {error}")
                return {"source": source, "error": str(error)}
        labels = vessels.grid.to_sitk(vessels.labels)
        pairs = {}
        for number, radius in enumerate(vessels.radii_mm, start=1):
            matches = [c.label for c in truth.classes if math.isclose(c.radius_mm, radius, rel_tol=1e-6)]
            if matches:
                pairs[number] = matches[0]
        missing = [c for c in truth.classes if c.label not in pairs.values()]
        for truth_class in missing:
            for key in GRAPHCUT_CLASS_METRICS:
                measurement.warn(key, f"the graph cut has no class of radius {truth_class.radius_mm:g} mm")
        paired = [c for c in truth.classes if c.label in pairs.values()]
        add_class_metrics(measurement, "graphcut", relabel(labels, pairs), truth, paired, settings["nsd_tolerance_mm"])
        measurement.add(
            "graphcut_foreground_dice",
            foreground_dice(vessels.labels, truth.label_array()),
            missing="neither the graph cut nor the truth has any voxel here",
        )
        unresolved = int(np.count_nonzero(vessels.labels == len(vessels.radii_mm) + 1))
        return {"source": source, "unresolved_voxels": unresolved}


def series_truth(series: SeriesContext, radii_mm=None):
    """The study's truth on this series' grid, and the warnings of putting it there.

    Returns
    -------
    truth : MaskTruth
    warnings : list of str
    """
    from ImagInfoExtension.segmentation.evaluation import align_truth
    from ImagInfoExtension.truth import MaskTruth, read_mask_truth

    truth_path = series.payload.get("truth")
    if not truth_path:
        raise ValueError(
            "the segmentation plugin scores against a truth: give --truth (truth.json with truth_labels.nrrd "
            "beside it, or a label map labelled as the model)"
        )
    truth = read_mask_truth(Path(truth_path), radii_mm)
    labels, warnings = align_truth(truth.labels, series.image)
    return MaskTruth(labels, truth.classes, truth.source), [str(w) for w in warnings]


def class_pairs(entry, truth) -> tuple[dict[int, int], list]:
    """Model label value → truth label, and the truth classes no model label covers.

    A model label is paired with the truth class of the radius its name states when
    every label names one (``vessel r=1 mm``), else with the truth class of its value.
    """
    radii = {label.value: _radius_of(label.name) for label in entry.labels}
    by_radius = all(r is not None for r in radii.values())
    pairs: dict[int, int] = {}
    for value, radius in radii.items():
        for truth_class in truth.classes:
            same = (
                math.isclose(truth_class.radius_mm, radius, rel_tol=1e-6) if by_radius else truth_class.label == value
            )
            if same:
                pairs[value] = truth_class.label
                break
    unmatched = [c for c in truth.classes if c.label not in pairs.values()]
    return pairs, unmatched


def relabel(labels: sitk.Image, pairs: dict[int, int]) -> sitk.Image:
    """``labels`` with each value renumbered by ``pairs``; values not in ``pairs`` become 0."""
    array = sitk.GetArrayViewFromImage(labels)
    top = max([int(array.max()) if array.size else 0, *pairs.keys()])
    lookup = np.zeros(top + 1, dtype=np.uint16)
    for source, target in pairs.items():
        lookup[source] = target
    out = sitk.GetImageFromArray(lookup[array])
    out.CopyInformation(labels)
    return out


def foreground_dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Dice of any label against any truth label (NaN when both are empty)."""
    found, expected = np.asarray(prediction) > 0, np.asarray(truth) > 0
    total = int(found.sum()) + int(expected.sum())
    return 2.0 * int(np.count_nonzero(found & expected)) / total if total else float("nan")


def _row(row: object) -> dict:
    return row if isinstance(row, dict) else dict(vars(row))


def add_class_metrics(
    measurement: Measurement,
    prefix: str,
    prediction: sitk.Image,
    truth,
    classes,
    nsd_tolerance_mm: float,
    true_volume: bool = False,
) -> None:
    """Evaluate ``prediction`` (labelled as the truth) on the truth ``classes`` and add ``<prefix>_<metric>`` rows."""
    from ImagInfoExtension.segmentation.evaluation import evaluate_label_maps

    names = {c.label: c.name for c in classes}
    if not names:
        return
    rows = evaluate_label_maps(
        prediction, truth.labels, labels=names, spacing_aware=True, nsd_tolerance_mm=nsd_tolerance_mm
    )
    for row in map(_row, rows):
        radius = truth.class_of_label(int(row["label"])).radius_mm
        if not row.get("true_volume_ml"):
            reason = "the truth has no voxel of this class on this series' grid"
        elif not row.get("volume_ml"):
            reason = "nothing of this class was segmented, so no surface distance exists"
        else:
            reason = "the evaluation gave no finite value"
        for column in _CLASS_COLUMNS:
            measurement.add(f"{prefix}_{column}", row.get(column), radius, reason)
        if true_volume:
            measurement.add(f"{prefix}_true_volume_ml", row.get("true_volume_ml"), radius, reason)
