"""The study runner: every measurement plugin over every series, on the batch engine."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ImagInfoExtension.batch import BatchCase, BatchSummary, file_identity, run_batch
from ImagInfoExtension.progress import ProgressCallback
from ImagInfoExtension.study.plugins import SeriesContext, load_plugin
from ImagInfoExtension.study.table import series_name, study_factors

log = logging.getLogger(__name__)

#: Columns that follow the factors in the long table.
MEASUREMENT_COLUMNS = ["radius_mm", "metric", "value"]


@dataclass
class StudyRun:
    """What the runner measured.

    Attributes
    ----------
    factors : list of str
        The study's factor columns.
    long : DataFrame
        ``<factors>,radius_mm,metric,value``: one row per series, class and metric
        (``radius_mm`` empty for per-image metrics).
    failures : DataFrame
        ``<factors>,path,error``: series that could not be measured.
    warnings : DataFrame
        ``<factors>,plugin,metric,reason``: metrics a plugin could not measure on a series.
    records : dict
        Per series name: the factors and each plugin's ``record``.
    batch : BatchSummary
    """

    factors: list[str]
    long: pd.DataFrame
    failures: pd.DataFrame
    warnings: pd.DataFrame
    records: dict
    batch: BatchSummary


def measure_series(payload: dict, parameters: dict) -> dict:
    """The batch job: read one series and run the plugins on it, in order.

    ``parameters``: ``{"plugins": [[spec, settings], ...]}``. A plugin that raises
    leaves each of its metrics out with the error as the reason, and the next plugin
    goes on (a user's phantom may have no vessels, yet its noise can be measured); the
    series fails only when it cannot be read or every plugin failed.
    """
    from ImagInfoExtension.io import read_dicom_series, read_image

    path = Path(payload["path"])
    if path.is_dir() and payload.get("series_uid"):
        image = read_dicom_series(path, payload["series_uid"])
    else:
        image = read_image(path)
    series = SeriesContext(image, payload)
    result = {"rows": [], "warnings": [], "records": {}}
    errors = []
    for spec, settings in parameters["plugins"]:
        plugin = load_plugin(spec)
        try:
            measurement = plugin.measure(series, settings)
        except Exception as error:  # noqa: BLE001 - one plugin's failure must not hide the others' metrics
            reason = f"the {plugin.name} plugin failed: {type(error).__name__}: {error}"
            errors.append(reason)
            result["warnings"] += [{"metric": key, "reason": reason, "plugin": plugin.name} for key in plugin.metrics]
            continue
        series.earlier[plugin.name] = measurement
        result["rows"] += measurement.rows
        result["warnings"] += [{**warning, "plugin": plugin.name} for warning in measurement.warnings]
        result["records"][plugin.name] = measurement.record
    if len(errors) == len(parameters["plugins"]):
        raise RuntimeError("; ".join(errors))
    return result


def plugin_parameters(plugins: Sequence[str], settings: dict[str, dict] | None = None) -> list[list]:
    """``[[spec, checked settings], ...]``: each plugin's settings completed and checked by the plugin."""
    settings = dict(settings or {})
    chosen = []
    for spec in plugins:
        plugin = load_plugin(spec)
        chosen.append([spec, plugin.settings(dict(settings.pop(plugin.name, {})))])
    if settings:
        raise ValueError(f"settings for plugin(s) not run: {', '.join(sorted(settings))}")
    return chosen


def run_study(
    study: pd.DataFrame,
    plugins: Sequence[str],
    out_dir: str | Path,
    settings: dict[str, dict] | None = None,
    truth: str | Path | None = None,
    noise_roi: str | Path | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    progress: ProgressCallback | None = None,
    threads_per_case: int | None = None,
) -> StudyRun:
    """Run ``plugins`` on every series of ``study``.

    Parameters
    ----------
    study : DataFrame
        A validated study table (:func:`~ImagInfoExtension.study.table.validate_study`).
    plugins : sequence of str
        Plugin names (``vessels``, ``image_quality``) or ``package.module:Class`` paths, in run order.
    out_dir : path
        ``cases/`` gets each series' record (the resume cache), ``series/<name>/`` its own files.
    settings : dict, optional
        Per plugin name, its settings.
    truth, noise_roi : path, optional
        The design (truth document or label map), and a mask of uniform region for the noise ROIs.
    workers, scheduler, progress, threads_per_case
        See :func:`ImagInfoExtension.batch.run_batch`. Cancelling raises
        :class:`~ImagInfoExtension.progress.Cancelled`.

    Returns
    -------
    StudyRun
    """
    out_dir = Path(out_dir)
    factors = study_factors(study)
    parameters = {"plugins": plugin_parameters(plugins, settings)}
    shared_files = {"truth": truth, "noise_roi": noise_roi}
    resolved = {key: str(Path(value).resolve()) if value else None for key, value in shared_files.items()}
    cases = []
    for row in study.to_dict("records"):
        name = series_name(row, factors)
        identity = {"input": file_identity(row["path"]), "series_uid": row.get("series_uid") or ""}
        for key, value in resolved.items():
            if value:
                identity[key] = file_identity(value)
        payload = {
            "path": str(Path(row["path"]).resolve()),
            "series_uid": row.get("series_uid") or "",
            **resolved,
            "out_dir": str((out_dir / "series" / name).resolve()),
        }
        cases.append(BatchCase(name, identity, payload))
    batch = run_batch(
        measure_series,
        cases,
        parameters,
        out_dir / "cases",
        workers=workers,
        scheduler=scheduler,
        progress=progress,
        threads_per_case=threads_per_case,
    )
    long_rows, failures, warnings, records = [], [], [], {}
    for row, outcome in zip(study.to_dict("records"), batch.outcomes, strict=True):
        keys = {factor: row[factor] for factor in factors}
        if outcome.status != "ok":
            failures.append({**keys, "path": row["path"], "error": outcome.error})
            log.warning("%s failed: %s", outcome.name, outcome.error)
            continue
        long_rows += [{**keys, **measured} for measured in outcome.result["rows"]]
        for warning in outcome.result["warnings"]:
            warnings.append({**keys, **warning})
            log.warning("%s: %s not measured: %s", outcome.name, warning["metric"], warning["reason"])
        records[outcome.name] = {**keys, **outcome.result["records"]}
    long = pd.DataFrame(long_rows, columns=[*factors, *MEASUREMENT_COLUMNS])
    long["radius_mm"] = pd.to_numeric(long["radius_mm"])
    return StudyRun(
        factors=factors,
        long=long,
        failures=pd.DataFrame(failures, columns=[*factors, "path", "error"]),
        warnings=pd.DataFrame(warnings, columns=[*factors, "plugin", "metric", "reason"]),
        records=records,
        batch=batch,
    )
