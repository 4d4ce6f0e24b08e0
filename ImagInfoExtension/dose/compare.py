"""A whole dose comparison: measure every series in parallel, aggregate, test, report."""

from __future__ import annotations

import json
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ImagInfoExtension.batch import BatchCase, BatchSummary, CaseOutcome, file_identity, run_batch
from ImagInfoExtension.dose.analysis import (
    LONG_COLUMNS,
    TABLE_METRICS,
    aggregate,
    compare_reconstructions,
    fit_noise_power_law,
    iso_metric_dose,
    published_table,
    recon_order,
)
from ImagInfoExtension.dose.measure import IQ_METRICS, ComparisonParameters, measure_series
from ImagInfoExtension.dose.study import validate_study
from ImagInfoExtension.io import write_atomically
from ImagInfoExtension.progress import ProgressCallback

IQ_COLUMNS = ["recon", "dose_mgy", "repetition", *IQ_METRICS]
#: Exit code of ``imaginfo compare`` when the comparison was written but some series
#: failed (listed in failures.csv); 1 stays what Python gives an unexpected error.
EXIT_SOME_SERIES_FAILED = 3


@dataclass
class ComparisonResult:
    """Everything a dose comparison produced.

    Attributes
    ----------
    long : DataFrame
        ``results_long.csv``.
    iq : DataFrame
        ``iq_metrics.csv``.
    summary : DataFrame
        Mean, SD and n per (recon, dose, radius, metric).
    tables : dict of str to DataFrame
        Published-style tables by metric.
    statistics : dict of str to DataFrame
        ``differences``, ``noise_power_law``, ``iso_dose``.
    curves : dict
        Per series: its NPS and TTF curves.
    failures : DataFrame
        Series that could not be measured, with the error.
    files : dict of str to Path
    batch : BatchSummary
    parameters : ComparisonParameters
    """

    long: pd.DataFrame
    iq: pd.DataFrame
    summary: pd.DataFrame
    tables: dict
    statistics: dict
    curves: dict
    failures: pd.DataFrame
    files: dict
    batch: BatchSummary
    parameters: ComparisonParameters


def series_name(row) -> str:
    return f"{row.recon}_{row.dose_mgy:g}mGy_rep{int(row.repetition)}"


def compare_study(
    study: pd.DataFrame,
    out_dir: str | Path,
    parameters: ComparisonParameters | None = None,
    truth: str | Path | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    virtual: bool = False,
    threads_per_case: int | None = None,
) -> ComparisonResult:
    """Measure every series of a study and write the comparison to ``out_dir``.

    Parameters
    ----------
    study : DataFrame
        ``path,dose_mgy,recon,repetition[,series_uid]`` (see :mod:`~ImagInfoExtension.dose.study`).
    out_dir : path
        Gets ``results_long.csv``, ``iq_metrics.csv``, ``table_<metric>.csv``,
        ``tables.xlsx``, ``statistics_*.csv``, the plots (PNG and SVG), ``report.html``;
        ``cases/`` holds each series' record (the resume cache) and ``series/<name>/``
        its vessel outputs.
    parameters : ComparisonParameters, optional
    truth : path, optional
        The phantom design (``truth.json``) for detection and radius accuracy.
    workers, scheduler, threads_per_case : see :func:`ImagInfoExtension.batch.run_batch`.
    progress : callable, optional
    cancel : threading.Event, optional
    virtual : bool
        The series come from the digital phantom; the report says so.
    """
    parameters = parameters or ComparisonParameters()
    study = validate_study(study)
    out_dir = Path(out_dir)
    truth_path = str(Path(truth).resolve()) if truth else None
    cases = []
    for row in study.itertuples():
        name = series_name(row)
        identity = {"input": file_identity(row.path), "series_uid": row.series_uid or ""}
        if truth_path:
            identity["truth"] = file_identity(truth_path)
        payload = {
            "path": str(Path(row.path).resolve()),
            "series_uid": row.series_uid or "",
            "truth": truth_path,
            "out_dir": str((out_dir / "series" / name).resolve()),
        }
        cases.append(BatchCase(name, identity, payload))
    batch = run_batch(
        measure_series,
        cases,
        parameters.measurement_dict(),
        out_dir / "cases",
        workers=workers,
        scheduler=scheduler,
        progress=progress,
        cancel=cancel,
        threads_per_case=threads_per_case,
    )
    if batch.cancelled:
        raise InterruptedError(
            f"cancelled: {len(batch.succeeded)} of {len(cases)} series finished and are kept in {out_dir / 'cases'}; "
            "run again to go on"
        )
    long_rows, iq_rows, curves, failures = [], [], {}, []
    for row, outcome in zip(study.itertuples(), batch.outcomes, strict=True):
        keys = {"recon": row.recon, "dose_mgy": float(row.dose_mgy), "repetition": int(row.repetition)}
        if outcome.status != "ok":
            failures.append({**keys, "path": row.path, "error": outcome.error})
            continue
        for measured in outcome.result["rows"]:
            long_rows.append({**keys, **measured})
        iq_rows.append({**keys, **{m: outcome.result["iq"].get(m, np.nan) for m in IQ_METRICS}})
        curves[outcome.name] = {**keys, **outcome.result["curves"]}
    failure_table = pd.DataFrame(failures, columns=["recon", "dose_mgy", "repetition", "path", "error"])
    if not long_rows:
        raise ValueError(
            f"no series could be measured ({len(failures)} failed); "
            f"first error: {failures[0]['error'] if failures else '-'}"
        )
    long = pd.DataFrame(long_rows, columns=LONG_COLUMNS)
    long["radius_mm"] = pd.to_numeric(long["radius_mm"])
    iq = pd.DataFrame(iq_rows, columns=IQ_COLUMNS).sort_values(["recon", "dose_mgy", "repetition"])
    summary = aggregate(long)
    recons = recon_order(study["recon"])
    tables = {
        metric: published_table(summary, metric, parameters.radius_mm if per_radius else None, recons)
        for metric, per_radius in TABLE_METRICS
    }
    reference_dose = parameters.reference_dose_mgy or float(study["dose_mgy"].max())
    statistics = {
        "differences": compare_reconstructions(
            long, [m for m, _ in TABLE_METRICS] + ["detection_rate"], parameters.test, parameters.alpha
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
    from ImagInfoExtension.dose.report import write_comparison_outputs

    result = ComparisonResult(long, iq, summary, tables, statistics, curves, failure_table, {}, batch, parameters)
    result.files = write_comparison_outputs(result, study, parameters, out_dir, truth_path, virtual)
    return result


def provenance(
    study: pd.DataFrame, parameters: ComparisonParameters, truth: str | None, batch: BatchSummary | None = None
) -> dict:
    from ImagInfoExtension.vessels.quantify import software_versions

    document = {
        "software": software_versions(),
        "parameters": asdict(parameters),
        "truth": truth,
        "inputs": study[["path", "series_uid", "recon", "dose_mgy", "repetition"]].to_dict("records"),
    }
    if batch is not None:
        document["batch"] = {
            "workers": batch.workers,
            "wall_s": batch.wall_s,
            "outcomes": [{k: v for k, v in asdict(outcome).items() if k != "result"} for outcome in batch.outcomes],
        }
    return document


def _read_table(path: Path) -> pd.DataFrame:
    """A CSV the comparison wrote; one without rows or columns (no test could run) reads as empty."""
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()


def read_comparison(out_dir: str | Path) -> ComparisonResult:
    """Read back what :func:`compare_study` wrote (how a Slicer module gets the child process's result).

    ``curves`` stay empty (the NPS and TTF curves are in the per-series records and
    the plots); everything else is as :func:`compare_study` returned it.

    Raises
    ------
    FileNotFoundError
        When the comparison in ``out_dir`` did not finish.
    """
    out_dir = Path(out_dir)
    required = ["results_long.csv", "iq_metrics.csv", "summary.csv", "provenance.json", "report.html"]
    missing = [name for name in required if not (out_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{out_dir} lacks {', '.join(missing)}: the comparison did not finish")
    document = json.loads((out_dir / "provenance.json").read_text())
    parameters = ComparisonParameters(**document["parameters"])
    batch_record = document.get("batch", {})
    outcomes = [CaseOutcome(**{**o, "result": {}}) for o in batch_record.get("outcomes", [])]
    batch = BatchSummary(outcomes, int(batch_record.get("workers", 0)), float(batch_record.get("wall_s", 0.0)))
    long = pd.read_csv(out_dir / "results_long.csv")
    tables = {
        metric: pd.read_csv(out_dir / f"table_{metric}.csv", index_col="recon", dtype=str, keep_default_na=False)
        for metric, _ in TABLE_METRICS
        if (out_dir / f"table_{metric}.csv").is_file()
    }
    statistics = {
        path.stem.removeprefix("statistics_"): _read_table(path) for path in sorted(out_dir.glob("statistics_*.csv"))
    }
    failures_path = out_dir / "failures.csv"
    failures = (
        pd.read_csv(failures_path)
        if failures_path.is_file()
        else pd.DataFrame(columns=["recon", "dose_mgy", "repetition", "path", "error"])
    )
    files = {path.stem: path for path in sorted(out_dir.iterdir()) if path.is_file()}
    files["report"] = out_dir / "report.html"
    return ComparisonResult(
        long=long,
        iq=pd.read_csv(out_dir / "iq_metrics.csv"),
        summary=pd.read_csv(out_dir / "summary.csv"),
        tables=tables,
        statistics=statistics,
        curves={},
        failures=failures,
        files=files,
        batch=batch,
        parameters=parameters,
    )


def write_table_files(result: ComparisonResult, out_dir: Path) -> dict[str, Path]:
    """The CSV tables and one XLSX workbook holding them all."""
    files: dict[str, Path] = {}

    def csv(name: str, table: pd.DataFrame, index: bool = False) -> None:
        path = out_dir / f"{name}.csv"
        write_atomically(path, lambda p: table.to_csv(p, index=index, float_format="%.6g"))
        files[name] = path

    csv("results_long", result.long)
    csv("iq_metrics", result.iq)
    csv("summary", result.summary)
    for metric, table in result.tables.items():
        csv(f"table_{metric}", table, index=True)
    for name, table in result.statistics.items():
        csv(f"statistics_{name}", table)
    if not result.failures.empty:
        csv("failures", result.failures)
    else:
        # A failure list left by an earlier run would now be false.
        (out_dir / "failures.csv").unlink(missing_ok=True)
    try:
        import openpyxl  # noqa: F401
    except ImportError:
        return files

    def workbook(path: Path) -> None:
        with pd.ExcelWriter(path, engine="openpyxl") as writer:
            for metric, table in result.tables.items():
                table.to_excel(writer, sheet_name=metric[:31])
            result.summary.to_excel(writer, sheet_name="summary", index=False)
            result.iq.to_excel(writer, sheet_name="iq_metrics", index=False)
            for name, table in result.statistics.items():
                table.to_excel(writer, sheet_name=f"stat_{name}"[:31], index=False)

    path = out_dir / "tables.xlsx"
    write_atomically(path, workbook)
    files["tables_xlsx"] = path
    return files


def write_provenance(document: dict, out_dir: Path) -> Path:
    path = out_dir / "provenance.json"
    write_atomically(path, lambda p: p.write_text(json.dumps(document, indent=1, default=str)))
    return path
