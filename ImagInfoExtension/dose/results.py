"""What a dose comparison produced, and its files: written once, read back by the Slicer module."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from ImagInfoExtension.batch import BatchSummary, CaseOutcome
from ImagInfoExtension.io import write_atomically
from ImagInfoExtension.metrics import tabulated_metrics
from ImagInfoExtension.study.measurements import IMAGE_QUALITY_METRICS
from ImagInfoExtension.study.table import DOSE_FACTORS


@dataclass(frozen=True)
class ComparisonParameters:
    """Everything that shapes the numbers of a dose comparison.

    Parameters
    ----------
    radius_mm : float
        The vessel radius tabulated (MPV, IQR); also the image-quality plugin's ``radius_mm``.
    vessels : dict
        The vessel plugin's settings (:class:`~ImagInfoExtension.vessels.quantify.VesselParameters` fields).
    wall_edge_margin_mm, max_roi_px, observer
        The image-quality plugin's settings
        (:class:`~ImagInfoExtension.study.measurements.ImageQualityPlugin`).
    reference_recon : str
        The reconstruction others are compared with (iso-metric dose).
    reference_dose_mgy : float, optional
        Its dose; the study's highest by default.
    iso_metric : str
        The metric matched for the iso-metric dose.
    test : {'welch', 'kruskal'}
        Test of differences between reconstructions at each dose and radius.
    radiomics : dict, optional
        Add the radiomics plugin with these settings (preset, segments, families,
        features; :class:`~ImagInfoExtension.radiomics.plugin.RadiomicsPlugin`), and the
        report's feature-robustness section.
    segmentation : dict, optional
        Add the segmentation plugin with these settings (``model``: a catalogue id, device,
        nsd_tolerance_mm, graph_cut; :class:`~ImagInfoExtension.segmentation.plugin.SegmentationPlugin`),
        and the report's section comparing the model with the graph cut.
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
    radiomics: dict | None = None
    segmentation: dict | None = None

    def __post_init__(self) -> None:
        if self.radius_mm <= 0:
            raise ValueError(f"radius must be positive mm, got {self.radius_mm}")
        if self.test not in ("welch", "kruskal"):
            raise ValueError(f"unknown test {self.test!r}; choose welch or kruskal")
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must lie between 0 and 1, got {self.alpha}")

    @property
    def plugins(self) -> tuple[str, ...]:
        """The measurement plugins a dose comparison runs, in order."""
        # Segmentation after the vessels: it reuses their graph cut instead of running it again.
        return (
            ("vessels", "image_quality")
            + (("radiomics",) if self.radiomics is not None else ())
            + (("segmentation",) if self.segmentation is not None else ())
        )

    def plugin_settings(self) -> dict[str, dict]:
        """The settings of the measurement plugins a dose comparison runs (the statistics' are not among them)."""
        extra = {"radiomics": dict(self.radiomics)} if self.radiomics is not None else {}
        if self.segmentation is not None:
            extra["segmentation"] = dict(self.segmentation)
        return extra | {
            "vessels": dict(self.vessels),
            "image_quality": {
                "radius_mm": self.radius_mm,
                "wall_edge_margin_mm": self.wall_edge_margin_mm,
                "max_roi_px": self.max_roi_px,
                "observer": dict(self.observer),
            },
        }

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ComparisonResult:
    """Everything a dose comparison produced.

    Attributes
    ----------
    long : DataFrame
        ``results_long.csv``: ``<factors>,radius_mm,metric,value``.
    iq : DataFrame
        ``iq_metrics.csv``: the factors and one column per image-quality metric.
    summary : DataFrame
        Mean, SD and n per (condition, radius, metric).
    tables : dict of str to DataFrame
        Published-style tables by metric.
    statistics : dict of str to DataFrame
        ``differences``, ``noise_power_law``, ``iso_dose``.
    curves : dict
        Per series: its NPS and TTF curves.
    failures : DataFrame
        Series that could not be measured, with the error.
    warnings : DataFrame
        Metrics that could not be measured on a series, with the reason.
    files : dict of str to Path
    batch : BatchSummary
    parameters : ComparisonParameters
    factors : list of str
    findings : list of str
        The report's key findings.
    """

    long: pd.DataFrame
    iq: pd.DataFrame
    summary: pd.DataFrame
    tables: dict
    statistics: dict
    curves: dict
    failures: pd.DataFrame
    warnings: pd.DataFrame
    files: dict
    batch: BatchSummary
    parameters: object
    factors: list[str] = field(default_factory=lambda: list(DOSE_FACTORS))
    findings: list[str] = field(default_factory=list)


def iq_table(long: pd.DataFrame, factors: list[str]) -> pd.DataFrame:
    """One row per series, one column per image-quality metric (empty where not measured)."""
    rows = long[long["metric"].isin(IMAGE_QUALITY_METRICS) & long["radius_mm"].isna()]
    series = long[factors].drop_duplicates()
    wide = rows.pivot_table(index=factors, columns="metric", values="value", aggfunc="first").reset_index()
    table = series.merge(wide, on=factors, how="left") if not wide.empty else series.copy()
    for key in IMAGE_QUALITY_METRICS:
        if key not in table.columns:
            table[key] = float("nan")
    return table[[*factors, *IMAGE_QUALITY_METRICS]].sort_values(factors).reset_index(drop=True)


def _read_table(path: Path) -> pd.DataFrame:
    """A CSV the comparison wrote; one without rows or columns (no test could run) reads as empty."""
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()


def read_comparison(out_dir: str | Path) -> ComparisonResult:
    """Read back what :func:`~ImagInfoExtension.dose.compare.compare_study` wrote.

    This is how a Slicer module gets the child process's result. ``curves`` stay
    empty (the NPS and TTF curves are in the per-series records and the plots);
    everything else is as the comparison returned it.

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
    factors = list(document.get("factors", DOSE_FACTORS))
    tables = {
        m.key: pd.read_csv(out_dir / f"table_{m.key}.csv", index_col=0, dtype=str, keep_default_na=False)
        for m in tabulated_metrics()
        if (out_dir / f"table_{m.key}.csv").is_file()
    }
    statistics = {
        path.stem.removeprefix("statistics_"): _read_table(path) for path in sorted(out_dir.glob("statistics_*.csv"))
    }

    def optional(name: str, columns: list[str]) -> pd.DataFrame:
        path = out_dir / f"{name}.csv"
        return pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=columns)

    files = {path.stem: path for path in sorted(out_dir.iterdir()) if path.is_file()}
    files["report"] = out_dir / "report.html"
    return ComparisonResult(
        long=pd.read_csv(out_dir / "results_long.csv"),
        iq=pd.read_csv(out_dir / "iq_metrics.csv"),
        summary=pd.read_csv(out_dir / "summary.csv"),
        tables=tables,
        statistics=statistics,
        curves={},
        failures=optional("failures", [*factors, "path", "error"]),
        warnings=optional("warnings", [*factors, "plugin", "metric", "reason"]),
        files=files,
        batch=batch,
        parameters=parameters,
        factors=factors,
        findings=list(document.get("findings", [])),
    )


def write_table_files(result: ComparisonResult, out_dir: Path) -> dict[str, Path]:
    """The CSV tables and one XLSX workbook holding them all.

    ``failures.csv`` and ``warnings.csv`` exist only when there is something in them;
    one left by an earlier run is removed, since it would now be false.
    """
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
    for name, table in (("failures", result.failures), ("warnings", result.warnings)):
        if not table.empty:
            csv(name, table)
        else:
            (out_dir / f"{name}.csv").unlink(missing_ok=True)
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
            if not result.warnings.empty:
                result.warnings.to_excel(writer, sheet_name="warnings", index=False)

    path = out_dir / "tables.xlsx"
    write_atomically(path, workbook)
    files["tables_xlsx"] = path
    return files
