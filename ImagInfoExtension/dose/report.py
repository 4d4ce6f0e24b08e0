"""The files of a dose comparison for people: plots and the self-contained HTML report.

Titles, units and decimals come from the metric registry (:mod:`ImagInfoExtension.metrics`).
This module only writes: it takes a computed
:class:`~ImagInfoExtension.dose.results.ComparisonResult` and imports nothing from
:mod:`~ImagInfoExtension.dose.compare`.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ImagInfoExtension.dose.analysis import recon_order, rows_at_radius
from ImagInfoExtension.dose.findings import PUBLISHED_METRICS, published_at, published_values
from ImagInfoExtension.dose.results import ComparisonResult, write_table_files
from ImagInfoExtension.io import json_default, write_atomically
from ImagInfoExtension.metrics import metric, tabulated_metrics
from ImagInfoExtension.provenance import provenance_document
from ImagInfoExtension.study.table import series_label

VIRTUAL_STUDY_NOTE = (
    "These images come from ImagInfo's digital replica of the vessel phantom. Their reconstructions are "
    "modelled noise and blur (a Gaussian PSF and a noise power spectrum per reconstruction, calibrated to a "
    "published study), not the vendors' FBP, iterative or deep-learning algorithms."
)

#: The same colour for a reconstruction in every plot; others take the next colours of the cycle.
RECON_COLOURS = {"FBP": "C0", "IR": "C1", "DL": "C2"}
#: Line styles by dose, thin to thick dash, so that colour stays free for the reconstruction.
DOSE_STYLES = ("-", "--", "-.", ":", (0, (1, 1)), (0, (5, 1, 1, 1)))
#: Log-axis tick labels keep at least this many decades apart, so that they never overlap.
MIN_LABEL_GAP_DECADES = 0.25


def recon_colours(recons: Sequence[str]) -> dict[str, str]:
    spare = iter(f"C{n}" for n in range(3, 10))
    return {recon: RECON_COLOURS.get(recon) or next(spare, "k") for recon in recons}


def readable_log_ticks(values: Sequence[float], min_gap_decades: float = MIN_LABEL_GAP_DECADES) -> list[float]:
    """The values to label on a log axis: the smallest, then each at least ``min_gap_decades`` past the last.

    The largest is kept too, replacing the last labelled one when they are too close.
    """
    ordered = sorted({float(v) for v in values if v > 0})
    if not ordered:
        return []
    labelled = [ordered[0]]
    for value in ordered[1:]:
        if np.log10(value / labelled[-1]) >= min_gap_decades:
            labelled.append(value)
    if labelled[-1] != ordered[-1]:
        if len(labelled) > 1 and np.log10(ordered[-1] / labelled[-2]) >= min_gap_decades:
            labelled[-1] = ordered[-1]
    return labelled


def log_axis(ax, values: Sequence[float], axis: str = "x") -> None:
    """A log axis with a tick at every value and labels only where they fit (:func:`readable_log_ticks`)."""
    from matplotlib.ticker import FixedFormatter, FixedLocator, NullFormatter

    values = sorted({float(v) for v in values if v > 0})
    labelled = readable_log_ticks(values)
    target = ax.xaxis if axis == "x" else ax.yaxis
    (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
    target.set_major_locator(FixedLocator(labelled))
    target.set_major_formatter(FixedFormatter([f"{v:g}" for v in labelled]))
    target.set_minor_locator(FixedLocator([v for v in values if v not in labelled]))
    target.set_minor_formatter(NullFormatter())


def _pyplot():
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


def figure_metrics_against_dose(summary: pd.DataFrame, radius_mm: float):
    """One panel per tabulated metric: mean ± SD against dose, a line per reconstruction; legend below."""
    plt = _pyplot()
    metrics = [*tabulated_metrics(), metric("dprime_npwe")]
    columns = 4
    rows = int(np.ceil(len(metrics) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(15, 3.4 * rows + 0.6), squeeze=False, layout="constrained")
    recons = recon_order(summary["recon"])
    colours = recon_colours(recons)
    doses = sorted(summary["dose_mgy"].unique())
    for ax, entry in zip(axes.ravel(), metrics, strict=False):
        data = rows_at_radius(summary, entry.key, radius_mm if entry.per_class else None)
        for recon in recons:
            group = data[data["recon"] == recon].sort_values("dose_mgy")
            if group.empty:
                continue
            ax.errorbar(
                group["dose_mgy"],
                group["mean"],
                yerr=group["sd"].fillna(0),
                marker="o",
                capsize=3,
                label=recon,
                color=colours[recon],
            )
        log_axis(ax, doses)
        ax.set_xlabel("CTDIvol (mGy)")
        ax.set_title(f"{entry.label}, r = {radius_mm:g} mm" if entry.per_class else entry.label, fontsize=10)
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[len(metrics) :]:
        ax.set_visible(False)
    legend = {}
    for ax in axes.ravel():
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(label, handle)
    if legend:
        fig.legend(
            list(legend.values()), list(legend), loc="outside lower center", ncols=len(legend), title="reconstruction"
        )
    return fig


def _dose_colour(cmap, index: int, count: int):
    # viridis stops short of its pale yellow end, which is hard to see on white.
    return cmap(0.85 * index / max(1, count - 1))


def figure_curves(curves: dict, kind: str):
    """Mean NPS or TTF curve per (reconstruction, dose), one panel per reconstruction; dose legend at the right."""
    plt = _pyplot()
    by_recon: dict[str, dict[float, list]] = {}
    for curve in curves.values():
        if kind in curve:
            by_recon.setdefault(curve["recon"], {}).setdefault(float(curve["dose_mgy"]), []).append(curve[kind])
    if not by_recon:
        return None
    recons = recon_order(by_recon)
    doses = sorted({d for per_dose in by_recon.values() for d in per_dose})
    fig, axes = plt.subplots(
        1, len(recons), figsize=(4.2 * len(recons) + 1.2, 3.6), squeeze=False, layout="constrained"
    )
    cmap = plt.get_cmap("viridis")
    for ax, recon in zip(axes[0], recons, strict=True):
        for dose in doses:
            found = by_recon[recon].get(dose)
            if not found:
                continue
            f = np.asarray(found[0]["frequency_per_mm"])
            values = np.mean([np.interp(f, c["frequency_per_mm"], c["value"]) for c in found], axis=0)
            ax.plot(f, values, color=_dose_colour(cmap, doses.index(dose), len(doses)), label=f"{dose:g} mGy")
        ax.set_title(recon)
        ax.set_xlabel("spatial frequency (mm⁻¹)")
        ax.set_ylabel("NPS (HU² mm²)" if kind == "nps" else "TTF")
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", title="CTDIvol")
    return fig


def figure_accuracy_against_radius(long: pd.DataFrame):
    """Detection rate and radius bias against the true radius: a column per reconstruction, a line per dose.

    Faceting by reconstruction keeps each panel to one line per dose, and the single
    dose legend sits outside the panels, so that nothing covers the data.
    """
    plt = _pyplot()
    keys = ("detection_rate", "radius_bias_mm")
    data = long[long["metric"].isin(keys)]
    if data.empty:
        return None
    means = data.groupby(["recon", "dose_mgy", "radius_mm", "metric"])["value"].mean().reset_index()
    recons = recon_order(means["recon"])
    doses = sorted(means["dose_mgy"].unique())
    radii = sorted(means["radius_mm"].dropna().unique())
    fig, axes = plt.subplots(
        2,
        len(recons),
        figsize=(3.6 * len(recons) + 1.4, 6.2),
        squeeze=False,
        sharex=True,
        sharey="row",
        layout="constrained",
    )
    cmap = plt.get_cmap("viridis")
    for column, recon in enumerate(recons):
        for row, key in enumerate(keys):
            ax = axes[row][column]
            for n, dose in enumerate(doses):
                group = means[(means["recon"] == recon) & (means["dose_mgy"] == dose) & (means["metric"] == key)]
                group = group.sort_values("radius_mm")
                ax.plot(
                    group["radius_mm"],
                    group["value"],
                    marker=".",
                    color=_dose_colour(cmap, n, len(doses)),
                    linestyle=DOSE_STYLES[n % len(DOSE_STYLES)],
                    label=f"{dose:g} mGy",
                )
            if key == "radius_bias_mm":
                ax.axhline(0, color="k", lw=0.8)
            log_axis(ax, radii)
            ax.grid(alpha=0.3)
            if row == 0:
                ax.set_title(recon)
            if row == 1:
                ax.set_xlabel("true radius (mm)")
            if column == 0:
                ax.set_ylabel(metric(key).label)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", title="CTDIvol")
    return fig


def write_plots(result: ComparisonResult, out_dir: Path, long: pd.DataFrame | None = None) -> dict[str, Path]:
    """The plots; ``long`` is the long table with the conditions folded into ``recon`` (default ``result.long``)."""
    plt = _pyplot()
    figures = {
        "metrics_vs_dose": figure_metrics_against_dose(result.summary, result.parameters.radius_mm),
        "nps_curves": figure_curves(result.curves, "nps"),
        "ttf_curves": figure_curves(result.curves, "ttf"),
        "accuracy_vs_radius": figure_accuracy_against_radius(result.long if long is None else long),
    }
    paths: dict[str, Path] = {}
    for name, fig in figures.items():
        if fig is not None:
            paths.update(_save(fig, out_dir, name))
            plt.close(fig)
    return paths


#: Lin's CCC at or above which a radiomics feature counts as robust in the report.
ROBUST_CCC = 0.90


def radiomics_robustness(result: ComparisonResult, long: pd.DataFrame) -> dict | None:
    """Which radiomics features of the phantom's segments stay robust across dose and reconstruction.

    Objects are the segments (radius classes and the PMMA wall), conditions the
    reconstruction × dose pairs (repetitions averaged), and the reference the
    comparison's reference reconstruction at its reference dose (default the highest).

    Returns
    -------
    dict or None
        ``summary`` (one row per feature: ICC(2,1), ICC(3,1) with CIs, worst CCC,
        robust), ``ccc`` (one row per feature and condition), ``reference`` (dict);
        None when the study has no radiomics rows. A study that cannot be assessed
        (e.g. one reconstruction at one dose) gives ``reason`` instead.
    """
    from ImagInfoExtension.radiomics.plugin import robustness_input
    from ImagInfoExtension.radiomics.robustness import feature_ccc, feature_robustness

    factors = [f for f in ("recon", "dose_mgy", "repetition") if f in long.columns]
    tidy = robustness_input(long, factors)
    if tidy.empty:
        return None
    parameters = result.parameters
    reference = {
        "recon": parameters.reference_recon,
        "dose_mgy": parameters.reference_dose_mgy or float(tidy["dose_mgy"].max()),
    }
    try:
        summary = feature_robustness(tidy, ["recon", "dose_mgy"], reference, ccc_threshold=ROBUST_CCC)
        ccc = feature_ccc(tidy, ["recon", "dose_mgy"], reference)
    except ValueError as error:
        return {"reason": str(error), "reference": reference}
    return {"summary": summary, "ccc": ccc, "reference": reference}


def figure_feature_robustness(robustness: dict):
    """Heat map of Lin's CCC against the reference condition: a row per feature, a column per condition."""
    plt = _pyplot()
    ccc = robustness["ccc"]
    if ccc.empty:
        return None
    table = ccc.pivot_table(index="feature", columns="condition", values="ccc", aggfunc="first", sort=False)
    order = robustness["summary"].set_index("feature")["ccc_min"].reindex(table.index)
    table = table.loc[order.sort_values(ascending=False, na_position="last").index]
    height = max(3.0, 0.16 * len(table) + 1.5)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.55 * table.shape[1] + 3.5), height))
    image = ax.imshow(table.to_numpy(dtype=float), aspect="auto", cmap="RdYlGn", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(table.shape[1]), [str(c) for c in table.columns], rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(table)), [str(i) for i in table.index], fontsize=6)
    reference = robustness["reference"]
    ax.set_title(f"Lin's CCC against {reference['recon']} at {reference['dose_mgy']:g} mGy", fontsize=9)
    bar = fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02)
    bar.ax.axhline(ROBUST_CCC, color="k", linewidth=1)
    bar.set_label(f"CCC (robust ≥ {ROBUST_CCC:g})", fontsize=8)
    return fig


#: The segmentation plugin's metrics the report compares, model against graph cut: (title, model key, graph-cut key).
SEGMENTATION_PAIRS = (
    ("Dice", "seg_dice", "graphcut_dice"),
    ("HD95", "seg_hd95_mm", "graphcut_hd95_mm"),
)


def segmentation_comparison(long: pd.DataFrame) -> dict | None:
    """The model's and the graph cut's Dice and HD95 per reconstruction, dose and radius class.

    Returns
    -------
    dict or None
        ``table``: one row per (recon, dose_mgy, radius_mm, metric) with ``model_mean``,
        ``model_sd``, ``graphcut_mean``, ``graphcut_sd`` and ``n`` (series with a model
        value); None when the study has no segmentation rows.
    """
    keys = [key for _, *pair in SEGMENTATION_PAIRS for key in pair]
    rows = long[long["metric"].isin(keys) & long["radius_mm"].notna()]
    if rows.empty or not rows["metric"].str.startswith("seg_").any():
        return None
    grouped = rows.groupby(["recon", "dose_mgy", "radius_mm", "metric"])["value"].agg(["mean", "std", "count"])
    grouped = grouped.reset_index()
    tables = []
    for title, model_key, graphcut_key in SEGMENTATION_PAIRS:
        model = grouped[grouped["metric"] == model_key].drop(columns="metric")
        model = model.rename(columns={"mean": "model_mean", "std": "model_sd", "count": "n"})
        graphcut = grouped[grouped["metric"] == graphcut_key].drop(columns=["metric", "count"])
        graphcut = graphcut.rename(columns={"mean": "graphcut_mean", "std": "graphcut_sd"})
        both = model.merge(graphcut, on=["recon", "dose_mgy", "radius_mm"], how="outer")
        both.insert(3, "metric", title)
        tables.append(both)
    table = pd.concat(tables, ignore_index=True)
    table["n"] = table["n"].fillna(0).astype(int)
    table = table[
        ["recon", "dose_mgy", "radius_mm", "metric", "model_mean", "model_sd", "graphcut_mean", "graphcut_sd", "n"]
    ]
    return {"table": table.sort_values(["metric", "recon", "dose_mgy", "radius_mm"]).reset_index(drop=True)}


def figure_segmentation_against_dose(comparison: dict):
    """Dice against dose: a column per reconstruction, the model above the graph cut, a line per radius class."""
    from ImagInfoExtension.report import radius_class_colours

    plt = _pyplot()
    table = comparison["table"]
    table = table[table["metric"] == "Dice"]
    if table.empty:
        return None
    recons = recon_order(table["recon"])
    radii = sorted(table["radius_mm"].unique())
    doses = sorted(table["dose_mgy"].unique())
    colours = dict(zip(radii, radius_class_colours(len(radii)), strict=True))
    fig, axes = plt.subplots(
        2,
        len(recons),
        figsize=(3.8 * len(recons) + 1.6, 6.4),
        squeeze=False,
        sharex=True,
        sharey=True,
        layout="constrained",
    )
    for column, recon in enumerate(recons):
        for row, (who, prefix) in enumerate((("model", "model"), ("graph cut", "graphcut"))):
            ax = axes[row][column]
            for radius in radii:
                group = table[(table["recon"] == recon) & np.isclose(table["radius_mm"], radius)]
                group = group.sort_values("dose_mgy")
                if group[f"{prefix}_mean"].notna().any():
                    ax.errorbar(
                        group["dose_mgy"],
                        group[f"{prefix}_mean"],
                        yerr=group[f"{prefix}_sd"].fillna(0),
                        marker=".",
                        capsize=2,
                        color=colours[radius],
                        label=f"{radius:g} mm",
                    )
            log_axis(ax, doses)
            ax.set_ylim(-0.02, 1.02)
            ax.grid(alpha=0.3)
            if row == 0:
                ax.set_title(recon)
            else:
                ax.set_xlabel("CTDIvol (mGy)")
            if column == 0:
                ax.set_ylabel(f"{who} Dice")
    legend = {}
    for ax in axes.ravel():
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(label, handle)
    if legend:
        fig.legend(list(legend.values()), list(legend), loc="outside right upper", title="true radius")
    return fig


def _segmentation_html(comparison: dict, plots: dict[str, Path], model: str) -> str:
    table = comparison["table"]
    parts = [
        "<h2 id='segmentation'>Segmentation: model against graph cut</h2>",
        f"<p>The deep-learning model <code>{html.escape(model)}</code> and ImagInfo's graph-cut vessel "
        "segmentation, each scored against the truth class by class on the same series (Dice: overlap, 1 is "
        "perfect; HD95: 95th percentile of the surface distance, mm). Cells: mean over repetitions, model / "
        "graph cut.</p>",
    ]
    if "segmentation_vs_dose_png" in plots:
        parts.append(_embed(plots["segmentation_vs_dose_png"], "Dice of the model and of the graph cut against dose."))
    for title in ("Dice", "HD95"):
        rows = table[table["metric"] == title]
        if rows.empty:
            continue
        decimals = metric("seg_dice" if title == "Dice" else "seg_hd95_mm").decimals
        for recon in recon_order(rows["recon"]):
            chosen = rows[rows["recon"] == recon]
            cells = chosen.assign(
                cell=[
                    f"{'–' if pd.isna(m) else f'{m:.{decimals}f}'} / {'–' if pd.isna(g) else f'{g:.{decimals}f}'}"
                    for m, g in zip(chosen["model_mean"], chosen["graphcut_mean"], strict=True)
                ]
            )
            wide = cells.pivot_table(index="radius_mm", columns="dose_mgy", values="cell", aggfunc="first")
            wide.columns = [f"{d:g} mGy" for d in wide.columns]
            wide.insert(0, "radius", [f"{r:g} mm" for r in wide.index])
            parts.append(f"<h3>{html.escape(title)}, {html.escape(str(recon))} (model / graph cut)</h3>")
            parts.append(_table_html(wide))
    parts.append("<p><a href='segmentation_comparison.csv'>segmentation_comparison.csv</a></p>")
    return "".join(parts)


#: Metrics a robustness plot shows (with the graph cut's beside the model's when measured).
ROBUSTNESS_METRICS = ("seg_dice", "seg_hd95_mm", "seg_assd_mm", "seg_nsd", "seg_volume_ml", "seg_foreground_dice")
_PERTURBATION_LABELS = {
    "noise_sd_hu": "inserted noise SD (HU)",
    "blur_fwhm_mm": "blur FWHM (mm)",
    "dose_mgy": "simulated CTDIvol (mGy)",
}


def _neutral_rows(summary: pd.DataFrame, factor: str, varied: Sequence[str]) -> pd.DataFrame:
    """The summary's rows where every perturbation but ``factor`` leaves the image as it is."""
    rows = summary
    for other in varied:
        if other == factor or other not in rows.columns:
            continue
        neutral = rows[other].max() if other == "dose_mgy" else 0.0
        rows = rows[np.isclose(rows[other].astype(float), neutral)]
    return rows


def robustness_figure(summary: pd.DataFrame, varied: Sequence[str], factors: Sequence[str]):
    """Each metric against each perturbation's severity: a row per metric, a column per perturbation.

    A line per radius class (mean ± SD over noise realisations), the model's solid and
    the graph cut's, when measured, dashed; the other perturbations at their neutral level.
    Volumes show the truth's as dotted lines.
    """
    from ImagInfoExtension.report import radius_class_colours

    plt = _pyplot()
    varied = [f for f in varied if f in summary.columns]
    metrics = [key for key in ROBUSTNESS_METRICS if (summary["metric"] == key).any()]
    if not varied or not metrics:
        return None
    radii = sorted(summary["radius_mm"].dropna().unique())
    colours = dict(zip(radii, radius_class_colours(len(radii)), strict=True))
    fig, axes = plt.subplots(
        len(metrics),
        len(varied),
        figsize=(4.2 * len(varied) + 1.6, 2.9 * len(metrics) + 0.4),
        squeeze=False,
        sharex="col",
        layout="constrained",
    )
    for column, factor in enumerate(varied):
        rows = _neutral_rows(summary, factor, varied)
        for row, key in enumerate(metrics):
            ax = axes[row][column]
            for prefix, style in (("seg_", "-"), ("graphcut_", "--")):
                data = rows[rows["metric"] == prefix + key.removeprefix("seg_")]
                classes = [None] if data["radius_mm"].isna().all() else radii
                for radius in classes:
                    group = (
                        data[data["radius_mm"].isna()]
                        if radius is None
                        else data[np.isclose(data["radius_mm"].astype(float), radius)]
                    )
                    group = group.sort_values(factor)
                    if group.empty:
                        continue
                    label = "image" if radius is None else f"{radius:g} mm"
                    ax.errorbar(
                        group[factor],
                        group["mean"],
                        yerr=group["sd"].fillna(0),
                        marker=".",
                        capsize=2,
                        linestyle=style,
                        color="k" if radius is None else colours[radius],
                        label=label if prefix == "seg_" else None,
                    )
            if key == "seg_volume_ml":
                truth = rows[rows["metric"] == "seg_true_volume_ml"]
                for radius in radii:
                    volume = truth[np.isclose(truth["radius_mm"].astype(float), radius)]["mean"]
                    if len(volume):
                        ax.axhline(float(volume.iloc[0]), color=colours[radius], linestyle=":", linewidth=1)
            ax.grid(alpha=0.3)
            if factor == "dose_mgy":
                ax.invert_xaxis()
            if row == len(metrics) - 1:
                ax.set_xlabel(_PERTURBATION_LABELS.get(factor, factor))
            if column == 0:
                ax.set_ylabel(metric(key).label.replace("model ", ""), fontsize=9)
    legend = {}
    for ax in axes.ravel():
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(label, handle)
    if legend:
        title = "true radius" + (" (dashed: graph cut)" if summary["metric"].str.startswith("graphcut_").any() else "")
        fig.legend(list(legend.values()), list(legend), loc="outside right upper", title=title)
    return fig


def robustness_section_html(
    summary: pd.DataFrame, varied: Sequence[str], plots: dict[str, Path], model: dict, description: str = ""
) -> str:
    """The report section of a robustness study: the plot and, per perturbation, Dice and HD95 by class and level."""
    name = " ".join(str(model.get(k, "")) for k in ("model", "version") if model.get(k)) or "the model"
    parts = [
        "<h2 id='robustness'>Segmentation robustness</h2>",
        f"<p>How <code>{html.escape(name)}</code> holds up as image quality falls: the image degraded step by step "
        f"({html.escape(', '.join(_PERTURBATION_LABELS.get(f, f) for f in varied))}), each level segmented and scored "
        f"against the truth class by class. {html.escape(description)} Each perturbation is shown with the others at "
        "their neutral level (no noise, no blur, the image's own dose).</p>",
    ]
    if summary.empty:
        return "".join(parts) + "<p>No level could be segmented: see failures.csv.</p>"
    if "robustness_png" in plots:
        parts.append(_embed(plots["robustness_png"], "Each metric against the severity of each perturbation."))
    for key in ("seg_dice", "seg_hd95_mm"):
        entry = metric(key)
        for factor in varied:
            rows = _neutral_rows(summary, factor, varied)
            rows = rows[(rows["metric"] == key) & rows["radius_mm"].notna()]
            if rows.empty:
                continue
            cells = rows.assign(
                cell=[
                    entry.format(m) if n < 2 else entry.format_mean_sd(m, s)
                    for m, s, n in zip(rows["mean"], rows["sd"], rows["n"], strict=True)
                ]
            )
            wide = cells.pivot_table(index="radius_mm", columns=factor, values="cell", aggfunc="first")
            wide.columns = [f"{v:g}" for v in wide.columns]
            wide.insert(0, "radius", [f"{r:g} mm" for r in wide.index])
            parts.append(
                f"<h3>{html.escape(entry.label)} against {html.escape(_PERTURBATION_LABELS.get(factor, factor))}</h3>"
                + _table_html(wide)
            )
    parts.append(
        "<p><a href='results_long.csv'>results_long.csv</a>, <a href='robustness_summary.csv'>"
        "robustness_summary.csv</a></p>"
    )
    return "".join(parts)


def robustness_page(section: str, failures: pd.DataFrame, warnings: pd.DataFrame, factors: list[str]) -> str:
    """A self-contained HTML page around a robustness section (images embedded)."""
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>ImagInfo segmentation robustness</title>",
        _STYLE + "</head><body>",
        f"<p>Generated {dt.datetime.now():%Y-%m-%d %H:%M} by ImagInfo.</p>",
        section,
    ]
    if not failures.empty:
        parts.append(
            "<h2 id='failed'>Failed levels</h2><p>Also in <a href='failures.csv'>failures.csv</a>.</p>"
            + _table_html(failures)
        )
    parts.append(_warnings_html(warnings, factors))
    parts.append(_SCRIPT + "</body></html>")
    return "\n".join(p for p in parts if p)


PLOT_CAPTIONS = {
    "metrics_vs_dose": "Tabulated metrics against CTDIvol (mean ± SD over repetitions).",
    "nps_curves": "Noise power spectra, mean over repetitions.",
    "ttf_curves": "Task transfer functions from the thickest vessel's circular edge.",
    "accuracy_vs_radius": "Detection rate and radius bias against the true vessel radius.",
}


def _embed(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    alt = html.escape(caption)
    return (
        f"<figure><img src='data:image/png;base64,{data}' alt='{alt}' style='max-width:100%'>"
        f"<figcaption>{alt}</figcaption></figure>"
    )


def _table_html(table: pd.DataFrame, index: bool = False) -> str:
    return table.to_html(index=index, float_format=lambda v: f"{v:.4g}", na_rep="", border=0, classes="t")


def _significance(result: ComparisonResult, key: str) -> dict[float, float]:
    """Holm-adjusted p of the reconstructions' difference at each dose, for this table's metric and radius."""
    differences = result.statistics.get("differences")
    if differences is None or differences.empty or "p_holm" not in differences.columns:
        return {}
    rows = differences[(differences["metric"] == key) & differences["p_holm"].notna()]
    if metric(key).per_class:
        rows = rows[np.isclose(rows["radius_mm"].astype(float), result.parameters.radius_mm)]
    else:
        rows = rows[rows["radius_mm"].isna()]
    return {float(r.dose_mgy): float(r.p_holm) for r in rows.itertuples()}


def table_with_marks(result: ComparisonResult, key: str, published: pd.DataFrame | None) -> str:
    """A published-style table as HTML: ours, the published value beside it, and the significance marks.

    A dose column is marked * when the reconstructions differ there (Holm-adjusted p
    below α); its p is in the last row.
    """
    table = result.tables[key]
    alpha = result.parameters.alpha
    tested = _significance(result, key)
    # The columns name doses at 6 significant digits; the tests keep them whole.
    doses = [float(column.split()[0]) for column in table.columns]
    p_by_dose = {}
    for dose in doses:
        found = [p for tested_dose, p in tested.items() if np.isclose(tested_dose, dose, rtol=1e-5)]
        if found:
            p_by_dose[dose] = found[0]
    head = "".join(
        f"<th>{html.escape(column)}{'*' if p_by_dose.get(dose, 1.0) < alpha else ''}</th>"
        for column, dose in zip(table.columns, doses, strict=True)
    )
    lines = [f"<table class='t'><thead><tr><th>reconstruction</th>{head}</tr></thead><tbody>"]
    for recon, row in table.iterrows():
        cells = []
        for column, dose in zip(table.columns, doses, strict=True):
            text = html.escape(str(row[column]))
            if published is not None:
                match = published[(published["recon"] == recon) & np.isclose(published["dose_mgy"], dose, rtol=1e-5)]
                if not match.empty:
                    entry = metric(key)
                    text += (
                        f"<br><span class='pub'>published "
                        f"{html.escape(entry.format_mean_sd(match['mean'].iloc[0], match['sd'].iloc[0]))}</span>"
                    )
            cells.append(f"<td>{text}</td>")
        lines.append(f"<tr><th>{html.escape(str(recon))}</th>{''.join(cells)}</tr>")
    if p_by_dose:
        cells = "".join(f"<td>{p_by_dose[d]:.2g}</td>" if d in p_by_dose else "<td>–</td>" for d in doses)
        lines.append(f"<tr class='p'><th>p (Holm)</th>{cells}</tr>")
    lines.append("</tbody></table>")
    return "".join(lines)


def _warnings_html(warnings: pd.DataFrame, factors: list[str]) -> str:
    """Each (metric, reason) once, with the series it concerns."""
    if warnings.empty:
        return ""
    rows = []
    for (key, reason), group in warnings.groupby(["metric", "reason"], sort=False):
        series = [series_label(r, factors) for r in group.to_dict("records")]
        rows.append(
            {
                "metric": metric(key).label,
                "reason": reason,
                "series": len(series),
                "which": ", ".join(series[:6]) + (" …" if len(series) > 6 else ""),
            }
        )
    return (
        "<h2 id='not-measured'>Not measured</h2><p>These metrics were left out, with the reason "
        "(also in <a href='warnings.csv'>warnings.csv</a>):</p>" + _table_html(pd.DataFrame(rows))
    )


_SCRIPT = """<script>
// Marks the page once every image has loaded (read by the headless-browser test).
window.addEventListener('load', function () {
  var images = Array.prototype.slice.call(document.images);
  var loaded = images.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute('data-images-loaded', loaded + '/' + images.length);
});
</script>"""

_STYLE = (
    "<style>body{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em;color:#222}"
    "table.t{border-collapse:collapse;margin:0.5em 0}table.t td,table.t th{border:1px solid #ccc;"
    "padding:2px 8px;text-align:right;vertical-align:top}.note{background:#fff4d6;padding:0.6em;"
    "border-left:4px solid #e0a800}.findings{background:#eef6ee;padding:0.6em 0.6em 0.6em 2em;"
    "border-left:4px solid #3a7d44}.pub{color:#666;font-size:85%}tr.p td,tr.p th{color:#555;font-size:85%}"
    "figure{margin:1em 0}figcaption{color:#555;font-size:90%}details{margin:1em 0}summary{cursor:pointer;"
    "font-weight:bold}</style>"
)


def _robustness_html(robustness: dict, plots: dict[str, Path]) -> str:
    reference = robustness["reference"]
    where = f"{html.escape(str(reference['recon']))} at {reference['dose_mgy']:g} mGy"
    heading = "<h2 id='radiomics'>Radiomics feature robustness</h2>"
    if "reason" in robustness:
        return heading + f"<p>Not assessed: {html.escape(robustness['reason'])}</p>"
    summary = robustness["summary"]
    robust = summary[summary["robust"].astype(bool)]
    assessed = summary[summary["reason"].fillna("") == ""]
    names = ", ".join(f"<code>{html.escape(str(tag))}</code>" for tag in robust["feature"])
    left = len(summary) - len(assessed)
    unassessed = f" ({left} could not be assessed, see the table)" if left else ""
    columns = ["feature", "icc21", "icc21_low", "icc21_high", "icc31", "ccc_min", "ccc_min_condition", "robust"]
    text = (
        heading + f"<p>IBSI features of the phantom's segments (the radius classes of the truth and the holder's PMMA "
        f"wall), each condition (reconstruction × dose, repetitions averaged) against {where}. A feature is "
        f"robust when Lin's CCC is at least {ROBUST_CCC:g} in every condition; ICC(2,1) is the absolute "
        f"agreement across all conditions. <b>{len(robust)} of {len(assessed)} assessed features stay robust"
        f"</b>{unassessed}{': ' + names if names else ''}.</p>"
    )
    if "feature_robustness_png" in plots:
        text += _embed(plots["feature_robustness_png"], f"Lin's CCC of each feature against {where}.")
    table = summary[columns].sort_values("ccc_min", ascending=False).round(3)
    return (
        text
        + "<details><summary>Every feature's ICC and worst CCC</summary>"
        + _table_html(table)
        + "</details><p><a href='radiomics_robustness.csv'>radiomics_robustness.csv</a>, "
        "<a href='radiomics_ccc.csv'>radiomics_ccc.csv</a></p>"
    )


def write_report(
    result: ComparisonResult,
    study: pd.DataFrame,
    plots: dict[str, Path],
    out_dir: Path,
    source: dict,
    virtual: bool,
    robustness: dict | None = None,
    segmentation: dict | None = None,
) -> Path:
    """``report.html``: findings, tables, plots, segmentation, radiomics robustness, statistics, provenance.

    Images are embedded.
    """
    parameters = result.parameters
    factors = result.factors
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>ImagInfo dose comparison</title>",
        _STYLE + "</head><body>",
        "<h1>Dose and reconstruction comparison</h1>",
        f"<p>{len(study)} series: reconstructions {html.escape(', '.join(recon_order(study['recon'])))}; "
        f"CTDIvol {', '.join(f'{d:g}' for d in sorted(study['dose_mgy'].unique()))} mGy; "
        f"up to {int(study['repetition'].max())} repetitions. Generated {dt.datetime.now():%Y-%m-%d %H:%M} by "
        f"ImagInfo {html.escape(source['software'].get('imaginfo', ''))}.</p>",
    ]
    if virtual:
        parts.append(f"<p class='note'><b>Virtual study.</b> {html.escape(VIRTUAL_STUDY_NOTE)}</p>")
    if result.findings:
        items = "".join(f"<li>{html.escape(sentence)}</li>" for sentence in result.findings)
        parts.append(f"<h2 id='findings'>Key findings</h2><ul class='findings'>{items}</ul>")
    if not result.failures.empty:
        parts.append(
            "<h2 id='failed'>Failed series</h2><p>Also in <a href='failures.csv'>failures.csv</a>.</p>"
            + _table_html(result.failures)
        )
    parts.append(_warnings_html(result.warnings, factors))
    published = published_values() if virtual else None
    parts.append(
        f"<h2 id='tables'>Tables (mean ± SD over repetitions)</h2><p>MPV and IQR of the r = "
        f"{parameters.radius_mm:g} mm vessels; the other metrics are per image. Noise SD and NPS come from square "
        "ROIs in a uniform region, the TTF from the thickest vessel's circular edge (AAPM TG-233). A dose marked * "
        f"is one where the reconstructions differ significantly ({html.escape(parameters.test)} test, "
        f"Holm-corrected per metric, α = {parameters.alpha:g}); the last row gives p."
        + (" Grey: the published study's value at the same condition." if virtual else "")
        + "</p>"
    )
    for entry in tabulated_metrics():
        if entry.key not in result.tables:
            continue
        reference = None
        if published is not None and entry.key in PUBLISHED_METRICS:
            reference = published_at(published, entry.key, parameters.radius_mm)
        parts.append(
            f"<h3>{html.escape(entry.label)}</h3>"
            + table_with_marks(result, entry.key, reference)
            + f"<p class='pub'><a href='table_{entry.key}.csv'>table_{entry.key}.csv</a></p>"
        )
    parts.append("<h2 id='plots'>Plots</h2>")
    for name, caption in PLOT_CAPTIONS.items():
        if f"{name}_png" in plots:
            parts.append(_embed(plots[f"{name}_png"], caption))
    if segmentation is not None:
        settings = getattr(parameters, "segmentation", None) or {}
        model = settings.get("model") or (settings.get("entry") or {}).get("id", "")
        parts.append(_segmentation_html(segmentation, plots, str(model)))
    if robustness is not None:
        parts.append(_robustness_html(robustness, plots))
    stats = result.statistics
    differences = stats["differences"]
    if not differences.empty and "p_value" in differences.columns:
        differences = differences[differences["p_value"].notna()]
    parts.append(
        "<h2 id='statistics'>Statistics</h2><details><summary>Full statistics (tests, power-law fits, iso-dose)"
        "</summary>"
        f"<h3>Do reconstructions differ? ({html.escape(parameters.test)}, Holm-corrected per metric, "
        f"α = {parameters.alpha:g})</h3>"
        + (
            _table_html(differences)
            if not differences.empty
            else "<p>No test could run (each needs ≥ 2 repetitions of ≥ 2 reconstructions).</p>"
        )
        + "<p><a href='statistics_differences.csv'>statistics_differences.csv</a></p>"
        + "<h3>Noise against dose: metric = A · dose<sup>−k</sup></h3>"
        + _table_html(stats["noise_power_law"])
        + "<p><a href='statistics_noise_power_law.csv'>statistics_noise_power_law.csv</a></p>"
        + f"<h3>Iso-{html.escape(metric(parameters.iso_metric).title)} dose: where each reconstruction matches "
        "the reference</h3>"
        + _table_html(stats["iso_dose"])
        + "<p><a href='statistics_iso_dose.csv'>statistics_iso_dose.csv</a></p></details>"
    )
    inputs = pd.DataFrame(source["inputs"])
    parts.append(
        "<h2 id='provenance'>Provenance</h2><details><summary>Software, parameters and inputs</summary>"
        "<h3>Software</h3>"
        + _table_html(pd.DataFrame(sorted(source["software"].items()), columns=["package", "version"]))
        + "<h3>Parameters</h3><pre>"
        + html.escape(json.dumps(source["parameters"], indent=1, default=json_default))
        + "</pre>"
        + (f"<p>Design (truth): {html.escape(str(source['truth']))}</p>" if source.get("truth") else "")
        + (f"<p>Noise ROI: {html.escape(str(source['noise_roi']))}</p>" if source.get("noise_roi") else "")
        + "<h3>Inputs</h3>"
        + _table_html(inputs)
        + "</details>"
    )
    parts.append(_SCRIPT + "</body></html>")
    path = out_dir / "report.html"
    text = "\n".join(p for p in parts if p)
    write_atomically(path, lambda p: p.write_text(text, encoding="utf-8"))
    return path


def write_comparison_outputs(
    result: ComparisonResult,
    study: pd.DataFrame,
    out_dir: Path,
    truth: str | Path | None,
    noise_roi: str | Path | None,
    virtual: bool,
    long: pd.DataFrame | None = None,
) -> dict[str, Path]:
    """Tables, plots, ``provenance.json`` and ``report.html``; returns every file by name.

    ``long``: the long table with any factor beyond reconstruction and dose folded into
    ``recon``, as the tables show the conditions (default ``result.long``).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    files = write_table_files(result, out_dir)
    plots = write_plots(result, out_dir, long)
    robustness = radiomics_robustness(result, result.long if long is None else long)
    if robustness is not None and "summary" in robustness:
        for name in ("summary", "ccc"):
            path = out_dir / ("radiomics_robustness.csv" if name == "summary" else "radiomics_ccc.csv")
            write_atomically(path, lambda p, t=robustness[name]: t.to_csv(p, index=False))
            files[f"radiomics_{name}"] = path
        figure = figure_feature_robustness(robustness)
        if figure is not None:
            plots.update(_save(figure, out_dir, "feature_robustness"))
            _pyplot().close(figure)
    segmentation = segmentation_comparison(result.long if long is None else long)
    if segmentation is not None:
        path = out_dir / "segmentation_comparison.csv"
        write_atomically(path, lambda p: segmentation["table"].to_csv(p, index=False))
        files["segmentation_comparison"] = path
        figure = figure_segmentation_against_dose(segmentation)
        if figure is not None:
            plots.update(_save(figure, out_dir, "segmentation_vs_dose"))
            _pyplot().close(figure)
    files.update(plots)
    batch = result.batch
    source = provenance_document(
        result.parameters.to_dict(),
        study[["path", "series_uid", *result.factors]].to_dict("records"),
        factors=result.factors,
        truth=str(Path(truth).resolve()) if truth else None,
        noise_roi=str(Path(noise_roi).resolve()) if noise_roi else None,
        findings=result.findings,
        batch={
            "workers": batch.workers,
            "wall_s": batch.wall_s,
            "outcomes": [
                {
                    "name": o.name,
                    "status": o.status,
                    "error": o.error,
                    "runtime_s": o.runtime_s,
                    "from_cache": o.from_cache,
                }
                for o in batch.outcomes
            ],
        },
    )
    path = out_dir / "provenance.json"
    write_atomically(path, lambda p: p.write_text(json.dumps(source, indent=1, default=json_default)))
    files["provenance"] = path
    files["report"] = write_report(result, study, plots, out_dir, source, virtual, robustness, segmentation)
    return files
