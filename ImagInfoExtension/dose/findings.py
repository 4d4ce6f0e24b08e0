"""Key findings of a dose comparison: a few sentences computed from its results.

They open the report. Every sentence is a computation over the comparison's tables,
so it changes when the numbers do; none is written by hand.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ImagInfoExtension.dose.analysis import recon_order, rows_at_radius
from ImagInfoExtension.metrics import metric

if TYPE_CHECKING:
    from ImagInfoExtension.dose.results import ComparisonResult

#: The published phantom study (Table 2 of the 2021 study, 3 mm vessels), shipped with the package.
PUBLISHED_TABLE = Path(__file__).resolve().parents[1] / "phantom" / "phantom_study_2021_calibration.csv"
#: The published metrics shown beside ours for the virtual study.
PUBLISHED_METRICS = ("mpv_hu", "iqr_hu", "total_volume_ml")


def published_values() -> pd.DataFrame:
    """``metric,recon,dose_mgy,mean,sd,radius_mm`` of the published phantom study."""
    return pd.read_csv(PUBLISHED_TABLE)


def published_at(published: pd.DataFrame, key: str, radius_mm: float) -> pd.DataFrame:
    """The published rows of a metric; for a per-class metric only at ``radius_mm`` (the study gave 3 mm)."""
    rows = published[published["metric"] == key]
    if metric(key).per_class:
        rows = rows[np.isclose(rows["radius_mm"].astype(float), radius_mm)]
    return rows


def published_agreement(summary: pd.DataFrame, radius_mm: float) -> pd.DataFrame:
    """Ours beside the published values, per metric, reconstruction and dose.

    ``agrees`` holds where the difference is within the larger of the two SDs (over
    repetitions) plus 10% of the published value: the spread that repeated scans of
    the real phantom showed.
    """
    published = published_values()
    published = pd.concat([published_at(published, key, radius_mm) for key in PUBLISHED_METRICS])
    rows = []
    for record in published.to_dict("records"):
        key = record["metric"]
        per_class = metric(key).per_class
        ours = rows_at_radius(summary, key, radius_mm if per_class else None)
        ours = ours[(ours["recon"] == record["recon"]) & np.isclose(ours["dose_mgy"], record["dose_mgy"])]
        if ours.empty:
            continue
        mean, sd = float(ours["mean"].iloc[0]), float(ours["sd"].iloc[0])
        allowed = max(record["sd"], sd if np.isfinite(sd) else 0.0) + 0.1 * abs(record["mean"])
        rows.append(
            {
                "metric": key,
                "recon": record["recon"],
                "dose_mgy": record["dose_mgy"],
                "ours": mean,
                "ours_sd": sd,
                "published": record["mean"],
                "published_sd": record["sd"],
                "difference": mean - record["mean"],
                "agrees": abs(mean - record["mean"]) <= allowed,
            }
        )
    return pd.DataFrame(rows)


def _dose_list(doses) -> str:
    return ", ".join(f"{d:g}" for d in sorted(doses)) + " mGy"


def _iso_dose_sentences(statistics: dict) -> list[str]:
    iso = statistics.get("iso_dose")
    if iso is None or iso.empty or "iso_dose_mgy" not in iso.columns:
        return []
    sentences = []
    reference = iso["reference"].iloc[0]
    title = metric(str(iso["metric"].iloc[0])).title
    order = recon_order(iso["recon"])
    for row in sorted(iso.itertuples(), key=lambda r: order.index(r.recon)):
        if row.reference.startswith(f"{row.recon} at") or not np.isfinite(row.iso_dose_mgy):
            continue
        saving = 1.0 - row.dose_fraction
        how = "" if row.method == "interpolated" else " (extrapolated by the power law)"
        if saving >= 0:
            sentences.append(
                f"{row.recon} matches the {title} of {reference} at {row.iso_dose_mgy:.2g} mGy{how}: "
                f"{100 * saving:.0f}% less dose."
            )
        else:
            sentences.append(
                f"{row.recon} needs {row.iso_dose_mgy:.2g} mGy{how} to match the {title} of {reference}: "
                f"{100 * -saving:.0f}% more dose."
            )
    return sentences


def _significance_sentences(differences: pd.DataFrame, radius_mm: float) -> list[str]:
    if differences is None or differences.empty or "significant" not in differences.columns:
        return []
    sentences = []
    tested = differences[differences["p_holm"].notna()]
    for key in ("noise_sd_hu", "iqr_hu", "mpv_hu", "total_volume_ml"):
        rows = tested[tested["metric"] == key]
        if metric(key).per_class:
            rows = rows[np.isclose(rows["radius_mm"].astype(float), radius_mm)]
        if rows.empty:
            continue
        significant = rows[rows["significant"].astype(bool)]
        where = f" (r = {radius_mm:g} mm)" if metric(key).per_class else ""
        if significant.empty:
            sentences.append(
                f"The reconstructions' {metric(key).title}{where} does not differ significantly at any dose."
            )
        else:
            sentences.append(
                f"The reconstructions differ significantly in {metric(key).title}{where} at "
                f"{len(significant)} of {len(rows)} doses ({_dose_list(significant['dose_mgy'])}; Holm-corrected)."
            )
    return sentences


def _trend_sentences(summary: pd.DataFrame, statistics: dict, radius_mm: float) -> list[str]:
    sentences = []
    law = statistics.get("noise_power_law")
    if law is not None and not law.empty:
        noise = law[law["metric"] == "noise_sd_hu"]
        if not noise.empty:
            order = recon_order(noise["recon"])
            fits = sorted(noise.itertuples(), key=lambda r: order.index(r.recon))
            parts = [f"{r.recon} dose^−{r.k:.2f} (R² {r.r_squared:.2f})" for r in fits]
            sentences.append("Noise SD falls with dose as " + "; ".join(parts) + " (quantum noise alone: dose^−0.5).")
    iqr = rows_at_radius(summary, "iqr_hu", radius_mm)
    if not iqr.empty:
        falling = [
            recon
            for recon in recon_order(iqr["recon"])
            if len(iqr[iqr["recon"] == recon]) >= 2
            and np.all(np.diff(iqr[iqr["recon"] == recon].sort_values("dose_mgy")["mean"]) < 0)
        ]
        recons = sorted(iqr["recon"].unique())
        if falling and iqr["dose_mgy"].nunique() >= 2:
            sentences.append(
                f"The IQR of the r = {radius_mm:g} mm vessels falls at every dose step for "
                f"{len(falling)} of {len(recons)} reconstructions ({', '.join(falling)})."
            )
    return sentences


def key_findings(result: ComparisonResult, virtual: bool) -> list[str]:
    """A few sentences computed from the results: iso-dose, significance, trends, agreement, gaps."""
    radius_mm = result.parameters.radius_mm
    sentences = _iso_dose_sentences(result.statistics)
    sentences += _significance_sentences(result.statistics.get("differences"), radius_mm)
    sentences += _trend_sentences(result.summary, result.statistics, radius_mm)
    if virtual:
        agreement = published_agreement(result.summary, radius_mm)
        if not agreement.empty:
            parts = []
            for key, rows in agreement.groupby("metric", sort=False):
                parts.append(f"{metric(key).title} in {int(rows['agrees'].sum())} of {len(rows)}")
            sentences.append(
                "Against the published study, ours agrees within the repeat scans' spread for "
                + "; ".join(parts)
                + " reconstruction–dose conditions."
            )
    if not result.failures.empty:
        sentences.append(f"{len(result.failures)} series could not be measured: see Failed series.")
    if not result.warnings.empty:
        counts = result.warnings.groupby("metric").size()
        listed = ", ".join(f"{metric(k).title} ({n})" for k, n in counts.items())
        sentences.append(f"Some metrics could not be measured on some series: {listed}; see Not measured.")
    return sentences
