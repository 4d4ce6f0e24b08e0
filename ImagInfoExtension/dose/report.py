"""Plots and the self-contained HTML report of a dose comparison."""

from __future__ import annotations

import base64
import datetime as dt
import html
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ImagInfoExtension.io import write_atomically

if TYPE_CHECKING:
    from ImagInfoExtension.dose.compare import ComparisonResult
    from ImagInfoExtension.dose.measure import ComparisonParameters

METRIC_LABELS = {
    "mpv_hu": "MPV (HU)",
    "iqr_hu": "IQR (HU)",
    "total_volume_ml": "total vessel volume (ml)",
    "noise_sd_hu": "noise SD (HU)",
    "nps_fpeak_per_mm": "NPS peak frequency (mm⁻¹)",
    "ttf50_per_mm": "TTF50 (mm⁻¹)",
    "dprime_npw": "d′ (NPW)",
    "dprime_npwe": "d′ (NPWE)",
    "detection_rate": "detection rate",
    "radius_bias_mm": "radius bias (mm)",
}

VIRTUAL_STUDY_NOTE = (
    "These images come from ImagInfo's digital replica of the vessel phantom. Their reconstructions are "
    "modelled noise and blur (a Gaussian PSF and a noise power spectrum per reconstruction, calibrated to a "
    "published study), not the vendors' FBP, iterative or deep-learning algorithms."
)


#: The same colour for a reconstruction in every plot.
RECON_COLOURS = {"FBP": "C0", "IR": "C1", "DL": "C2"}


def _dose_axis(ax, doses) -> None:
    from matplotlib.ticker import NullFormatter

    ax.set_xscale("log")
    ax.set_xticks(doses)
    ax.set_xticklabels([f"{d:g}" for d in doses])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("CTDIvol (mGy)")


def _figure():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out_dir: Path, name: str) -> dict[str, Path]:
    paths = {}
    for suffix in ("png", "svg"):
        path = out_dir / f"{name}.{suffix}"
        write_atomically(path, lambda p, s=suffix: fig.savefig(p, format=s, dpi=130, bbox_inches="tight"))
        paths[f"{name}_{suffix}"] = path
    return paths


def plot_metrics_against_dose(result: ComparisonResult, parameters: ComparisonParameters, out_dir: Path) -> dict:
    """One panel per tabulated metric: mean ± SD against dose (log axis), a line per reconstruction."""
    from ImagInfoExtension.dose.analysis import TABLE_METRICS, rows_at_radius

    plt = _figure()
    metrics = [*TABLE_METRICS, ("dprime_npwe", False)]
    fig, axes = plt.subplots(2, 4, figsize=(15, 7))
    summary = result.summary
    for ax, (metric, per_radius) in zip(axes.ravel(), metrics, strict=False):
        rows = rows_at_radius(summary, metric, parameters.radius_mm if per_radius else None)
        for recon, group in rows.groupby("recon"):
            group = group.sort_values("dose_mgy")
            colour = RECON_COLOURS.get(recon)
            ax.errorbar(
                group["dose_mgy"],
                group["mean"],
                yerr=group["sd"].fillna(0),
                marker="o",
                capsize=3,
                label=recon,
                color=colour,
            )
        _dose_axis(ax, sorted(summary["dose_mgy"].unique()))
        label = METRIC_LABELS.get(metric, metric)
        ax.set_title(f"{label}, r = {parameters.radius_mm:g} mm" if per_radius else label, fontsize=10)
        ax.grid(alpha=0.3)
    axes.ravel()[0].legend()
    fig.tight_layout()
    paths = _save(fig, out_dir, "metrics_vs_dose")
    plt.close(fig)
    return paths


def plot_curves(result: ComparisonResult, kind: str, out_dir: Path) -> dict:
    """Mean NPS or TTF curve per (reconstruction, dose), one panel per reconstruction."""
    plt = _figure()
    by_recon: dict[str, dict[float, list]] = {}
    for curve in result.curves.values():
        if kind in curve:
            by_recon.setdefault(curve["recon"], {}).setdefault(curve["dose_mgy"], []).append(curve[kind])
    if not by_recon:
        return {}
    fig, axes = plt.subplots(1, len(by_recon), figsize=(4.5 * len(by_recon), 3.6), squeeze=False)
    cmap = plt.get_cmap("viridis")
    for ax, recon in zip(axes[0], sorted(by_recon), strict=True):
        doses = sorted(by_recon[recon])
        for n, dose in enumerate(doses):
            curves = by_recon[recon][dose]
            f = np.asarray(curves[0]["frequency_per_mm"])
            values = np.mean([np.interp(f, c["frequency_per_mm"], c["value"]) for c in curves], axis=0)
            ax.plot(f, values, color=cmap(n / max(1, len(doses) - 1)), label=f"{dose:g} mGy")
        ax.set_title(recon)
        ax.set_xlabel("spatial frequency (mm⁻¹)")
        ax.set_ylabel("NPS (HU² mm²)" if kind == "nps" else "TTF")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    paths = _save(fig, out_dir, f"{kind}_curves")
    plt.close(fig)
    return paths


def plot_accuracy_against_radius(result: ComparisonResult, out_dir: Path) -> dict:
    """Detection rate and radius bias against radius, per reconstruction, at each dose."""
    plt = _figure()
    long = result.long
    if not long["metric"].isin(["detection_rate"]).any():
        return {}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    doses = sorted(long["dose_mgy"].unique())
    styles = ["-", "--", ":", "-.", (0, (1, 1))]
    for ax, metric in zip(axes, ("detection_rate", "radius_bias_mm"), strict=True):
        rows = long[long["metric"] == metric].groupby(["recon", "dose_mgy", "radius_mm"])["value"].mean().reset_index()
        for (recon, dose), group in rows.groupby(["recon", "dose_mgy"]):
            colour = RECON_COLOURS.get(recon)
            ax.plot(
                group["radius_mm"],
                group["value"],
                marker=".",
                color=colour,
                linestyle=styles[doses.index(dose) % len(styles)],
                label=f"{recon} {dose:g} mGy",
            )
        ax.set_xscale("log")
        ax.set_xlabel("true radius (mm)")
        ax.set_title(METRIC_LABELS[metric])
        ax.grid(alpha=0.3)
    axes[1].axhline(0, color="k", lw=0.8)
    axes[0].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    paths = _save(fig, out_dir, "accuracy_vs_radius")
    plt.close(fig)
    return paths


def _embed(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" style="max-width:100%">'


def _table_html(table: pd.DataFrame, index: bool = False) -> str:
    return table.to_html(index=index, float_format=lambda v: f"{v:.4g}", na_rep="", border=0, classes="t")


def write_report(
    result: ComparisonResult,
    study: pd.DataFrame,
    parameters: ComparisonParameters,
    plots: dict[str, Path],
    out_dir: Path,
    source: dict,
    virtual: bool,
) -> Path:
    """``report.html``: tables, plots, statistics and provenance (``source``), images embedded."""
    truth = source["truth"]
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>ImagInfo dose comparison</title>",
        "<style>body{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em}"
        "table.t{border-collapse:collapse;margin:0.5em 0}table.t td,table.t th{border:1px solid #ccc;"
        "padding:2px 8px;text-align:right}.note{background:#fff4d6;padding:0.6em;border-left:4px solid #e0a800}"
        "</style></head><body>",
        "<h1>Dose and reconstruction comparison</h1>",
        f"<p>{len(study)} series: reconstructions {', '.join(sorted(study['recon'].unique()))}; "
        f"CTDIvol {', '.join(f'{d:g}' for d in sorted(study['dose_mgy'].unique()))} mGy; "
        f"up to {int(study['repetition'].max())} repetitions. Generated {dt.datetime.now():%Y-%m-%d %H:%M} by "
        f"ImagInfo {html.escape(source['software'].get('imaginfo', ''))}.</p>",
    ]
    if virtual:
        parts.append(f"<p class='note'><b>Virtual study.</b> {html.escape(VIRTUAL_STUDY_NOTE)}</p>")
    if not result.failures.empty:
        parts.append("<h2>Failed series</h2>" + _table_html(result.failures))
    parts.append(
        f"<h2>Tables (mean ± SD over repetitions)</h2><p>MPV and IQR of the r = {parameters.radius_mm:g} mm "
        "vessels; the other metrics are per image. Noise SD and NPS come from square ROIs in the holder's PMMA, "
        "the TTF from the thickest vessel's circular edge (AAPM TG-233).</p>"
    )
    for metric, table in result.tables.items():
        parts.append(f"<h3>{html.escape(METRIC_LABELS.get(metric, metric))}</h3>" + _table_html(table, index=True))
    parts.append("<h2>Plots</h2>")
    for name in ("metrics_vs_dose", "nps_curves", "ttf_curves", "accuracy_vs_radius"):
        if f"{name}_png" in plots:
            parts.append(_embed(plots[f"{name}_png"]))
    stats = result.statistics
    parts.append(
        f"<h2>Statistics</h2><h3>Do reconstructions differ? ({html.escape(parameters.test)}, Holm-corrected per "
        f"metric, α = {parameters.alpha:g})</h3>" + _table_html(stats["differences"])
    )
    parts.append("<h3>Noise against dose: metric = A · dose<sup>−k</sup></h3>" + _table_html(stats["noise_power_law"]))
    parts.append(
        f"<h3>Iso-{html.escape(parameters.iso_metric)} dose: where each reconstruction matches the reference</h3>"
        + _table_html(stats["iso_dose"])
    )
    inputs = pd.DataFrame(source["inputs"])
    parts.append(
        "<h2>Provenance</h2><h3>Software</h3>"
        + _table_html(pd.DataFrame(sorted(source["software"].items()), columns=["package", "version"]))
        + "<h3>Parameters</h3><pre>"
        + html.escape(pd.Series(source["parameters"]).to_string())
        + "</pre>"
        + (f"<p>Design (truth): {html.escape(truth)}</p>" if truth else "")
        + "<h3>Inputs</h3>"
        + _table_html(inputs)
    )
    parts.append("</body></html>")
    path = out_dir / "report.html"
    text = "\n".join(parts)
    write_atomically(path, lambda p: p.write_text(text, encoding="utf-8"))
    return path


def write_comparison_outputs(
    result: ComparisonResult,
    study: pd.DataFrame,
    parameters: ComparisonParameters,
    out_dir: Path,
    truth: str | None,
    virtual: bool,
) -> dict[str, Path]:
    from ImagInfoExtension.dose.compare import provenance, write_provenance, write_table_files

    out_dir.mkdir(parents=True, exist_ok=True)
    files = write_table_files(result, out_dir)
    plots: dict[str, Path] = {}
    plots.update(plot_metrics_against_dose(result, parameters, out_dir))
    plots.update(plot_curves(result, "nps", out_dir))
    plots.update(plot_curves(result, "ttf", out_dir))
    plots.update(plot_accuracy_against_radius(result, out_dir))
    files.update(plots)
    source = provenance(study, parameters, truth, result.batch)
    files["provenance"] = write_provenance(source, out_dir)
    files["report"] = write_report(result, study, parameters, plots, out_dir, source, virtual)
    return files
