"""A whole dose comparison: run the study's measurements, aggregate, test, report.

The measurements come from the study runner (:mod:`ImagInfoExtension.study.runner`)
with the vessel and image-quality plugins; what is dose-specific (tables by
reconstruction and dose, the noise power law, the iso-metric dose) is here and in
:mod:`~ImagInfoExtension.dose.analysis`. Outputs flow one way: this module computes,
:mod:`~ImagInfoExtension.dose.report` writes.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ImagInfoExtension.dose.analysis import (
    aggregate,
    compare_reconstructions,
    fit_noise_power_law,
    iso_metric_dose,
    published_table,
    recon_order,
)
from ImagInfoExtension.dose.findings import key_findings
from ImagInfoExtension.dose.report import write_comparison_outputs
from ImagInfoExtension.dose.results import ComparisonParameters, ComparisonResult, iq_table
from ImagInfoExtension.metrics import tabulated_metrics
from ImagInfoExtension.progress import ProgressCallback
from ImagInfoExtension.study.runner import run_study
from ImagInfoExtension.study.table import DOSE_FACTORS, condition_factors, validate_study

#: The measurement plugins of a dose comparison, in run order (image quality uses the vessels).
DOSE_PLUGINS = ("vessels", "image_quality")
#: Exit code of ``imaginfo compare`` when the comparison was written but some series
#: failed (listed in failures.csv); 1 stays what Python gives an unexpected error.
EXIT_SOME_SERIES_FAILED = 3

__all__ = ["ComparisonParameters", "ComparisonResult", "EXIT_SOME_SERIES_FAILED", "compare_study"]


def _conditions_as_recon(table: pd.DataFrame, factors: list[str]) -> pd.DataFrame:
    """The table with any factor beyond reconstruction and dose folded into the ``recon`` label.

    The dose analysis compares reconstructions at each dose; a further factor (a kernel,
    a model) makes each of its values a reconstruction of its own ("IR · kernel=B").
    """
    extra = [f for f in condition_factors(factors) if f not in DOSE_FACTORS]
    if not extra:
        return table
    labelled = table.copy()
    labelled["recon"] = [
        " · ".join([str(row["recon"]), *(f"{f}={row[f]}" for f in extra)]) for row in labelled.to_dict("records")
    ]
    return labelled.drop(columns=extra)


def compare_study(
    study: pd.DataFrame,
    out_dir: str | Path,
    parameters: ComparisonParameters | None = None,
    truth: str | Path | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    progress: ProgressCallback | None = None,
    virtual: bool = False,
    threads_per_case: int | None = None,
    noise_roi: str | Path | None = None,
) -> ComparisonResult:
    """Measure every series of a study and write the comparison to ``out_dir``.

    Parameters
    ----------
    study : DataFrame
        A study table (:mod:`~ImagInfoExtension.study.table`) with the factors
        ``dose_mgy`` and ``recon`` (``repetition`` numbered when absent), and possibly more.
    out_dir : path
        Gets ``results_long.csv``, ``iq_metrics.csv``, ``table_<metric>.csv``,
        ``tables.xlsx``, ``statistics_*.csv``, ``warnings.csv`` and ``failures.csv``
        when there are any, the plots (PNG and SVG), ``provenance.json``,
        ``report.html``; ``cases/`` holds each series' record (the resume cache) and
        ``series/<name>/`` its vessel outputs.
    parameters : ComparisonParameters, optional
    truth : path, optional
        The phantom design (``truth.json``) for detection and radius accuracy.
    workers, scheduler, threads_per_case : see :func:`ImagInfoExtension.batch.run_batch`.
    progress : callable, optional
        May raise :class:`~ImagInfoExtension.progress.Cancelled`; finished series are kept.
    virtual : bool
        The series come from the digital phantom: the report says so and shows the
        published values beside ours.
    noise_roi : path, optional
        A label map or mask of the uniform region for noise SD and NPS, instead of
        automatic placement.
    """
    parameters = parameters or ComparisonParameters()
    study = validate_study(study, DOSE_FACTORS)
    out_dir = Path(out_dir)
    run = run_study(
        study,
        parameters.plugins,
        out_dir,
        parameters.plugin_settings(),
        truth=truth,
        noise_roi=noise_roi,
        workers=workers,
        scheduler=scheduler,
        progress=progress,
        threads_per_case=threads_per_case,
    )
    if run.long.empty:
        first = run.failures["error"].iloc[0] if not run.failures.empty else "-"
        raise ValueError(f"no series could be measured ({len(run.failures)} failed); first error: {first}")
    factors = run.factors
    curve_keys = _conditions_as_recon(pd.DataFrame([{f: r[f] for f in factors} for r in run.records.values()]), factors)
    curves = {
        name: {**keys, **record.get("image_quality", {}).get("curves", {})}
        for (name, record), keys in zip(run.records.items(), curve_keys.to_dict("records"), strict=True)
    }
    long = _conditions_as_recon(run.long, factors)
    summary = aggregate(long)
    recons = recon_order(_conditions_as_recon(study, factors)["recon"])
    tables = {
        m.key: published_table(summary, m.key, parameters.radius_mm if m.per_class else None, recons)
        for m in tabulated_metrics()
    }
    reference_dose = parameters.reference_dose_mgy or float(study["dose_mgy"].max())
    statistics = {
        "differences": compare_reconstructions(
            long, [m.key for m in tabulated_metrics()] + ["detection_rate"], parameters.test, parameters.alpha
        ),
        "noise_power_law": pd.concat(
            [fit_noise_power_law(long, "noise_sd_hu"), fit_noise_power_law(long, "iqr_hu", parameters.radius_mm)],
            ignore_index=True,
        ),
    }
    iso_radius = parameters.radius_mm if parameters.iso_metric in ("mpv_hu", "iqr_hu") else None
    try:
        statistics["iso_dose"] = iso_metric_dose(
            long, parameters.iso_metric, parameters.reference_recon, reference_dose, iso_radius
        )
    except ValueError as error:
        statistics["iso_dose"] = pd.DataFrame([{"note": str(error)}])
    result = ComparisonResult(
        long=run.long,
        iq=iq_table(run.long, factors),
        summary=summary,
        tables=tables,
        statistics=statistics,
        curves=curves,
        failures=run.failures,
        warnings=run.warnings,
        files={},
        batch=run.batch,
        parameters=parameters,
        factors=factors,
    )
    result.findings = key_findings(result, virtual)
    result.files = write_comparison_outputs(result, study, out_dir, truth, noise_roi, virtual, long)
    return result
