"""Aggregation and statistics of a dose study's long-format results.

The input is the study runner's long table, ``<factors>,radius_mm,metric,value``
(``radius_mm`` NaN for whole-image metrics), with the dose study's factors ``recon``,
``dose_mgy`` and ``repetition``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from ImagInfoExtension.metrics import metric as registered_metric

#: Conventional order of reconstructions in tables; others follow alphabetically.
RECON_ORDER = ("FBP", "IR", "DL")


def recon_order(recons) -> list[str]:
    return sorted(set(recons), key=lambda r: (RECON_ORDER.index(r) if r in RECON_ORDER else len(RECON_ORDER), r))


def rows_at_radius(table: pd.DataFrame, metric: str, radius_mm: float | None) -> pd.DataFrame:
    """Rows of ``metric`` at ``radius_mm`` (None: the whole-image rows, whose radius is empty).

    Works on ``results_long`` and on the aggregated summary alike.
    """
    rows = table[table["metric"] == metric]
    if radius_mm is None:
        return rows[rows["radius_mm"].isna()]
    return rows[np.isclose(rows["radius_mm"].astype(float), radius_mm)]


def aggregate(long: pd.DataFrame, conditions: Sequence[str] = ("recon", "dose_mgy")) -> pd.DataFrame:
    """Mean, SD and count over repetitions for every (condition, radius, metric).

    ``conditions`` are the study's factors but the repetition.
    """
    conditions = list(conditions)
    keyed = long.assign(radius_key=long["radius_mm"].fillna(-1.0))
    grouped = keyed.groupby([*conditions, "radius_key", "metric"])["value"]
    table = grouped.agg(mean="mean", sd="std", n="count").reset_index()
    table["radius_mm"] = table["radius_key"].where(table["radius_key"] >= 0)
    return table.drop(columns="radius_key")[[*conditions, "radius_mm", "metric", "mean", "sd", "n"]]


def published_table(
    summary: pd.DataFrame, metric: str, radius_mm: float | None, recons: Sequence[str] | None = None
) -> pd.DataFrame:
    """Rows are reconstructions, columns doses (mGy), cells "mean ± sd"."""
    rows = rows_at_radius(summary, metric, radius_mm)
    doses = sorted(rows["dose_mgy"].unique())
    recons = list(recons) if recons else sorted(rows["recon"].unique())
    table = pd.DataFrame(index=pd.Index(recons, name="recon"), columns=[f"{d:g} mGy" for d in doses], dtype=object)
    for row in rows.itertuples():
        if row.recon in table.index:
            table.loc[row.recon, f"{row.dose_mgy:g} mGy"] = registered_metric(metric).format_mean_sd(row.mean, row.sd)
    return table.fillna("")


def holm_correction(p_values: Sequence[float]) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values (NaN stays NaN)."""
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full(p.shape, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    order = finite[np.argsort(p[finite])]
    m = len(order)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[index]))
        adjusted[index] = running
    return adjusted


def compare_reconstructions(
    long: pd.DataFrame, metrics: Sequence[str], test: str = "welch", alpha: float = 0.05
) -> pd.DataFrame:
    """At each dose, radius and metric: do the reconstructions differ?

    ``welch``: Welch's one-way ANOVA (unequal variances) across reconstructions;
    ``kruskal``: Kruskal–Wallis. Holm's correction runs over all tests of a metric.
    Groups need at least 2 repetitions each.
    """
    rows = []
    subset = long[long["metric"].isin(metrics)].assign(radius_key=lambda t: t["radius_mm"].fillna(-1.0))
    for (metric, dose, radius), group in subset.groupby(["metric", "dose_mgy", "radius_key"]):
        samples = [g["value"].to_numpy() for _, g in group.groupby("recon")]
        recons = sorted(group["recon"].unique())
        statistic, p = np.nan, np.nan
        if len(samples) >= 2 and all(len(s) >= 2 for s in samples):
            if test == "kruskal":
                if np.ptp(np.concatenate(samples)) > 0:
                    statistic, p = stats.kruskal(*samples)
            else:
                statistic, p = welch_anova(samples)
        rows.append(
            {
                "metric": metric,
                "dose_mgy": dose,
                "radius_mm": None if radius < 0 else radius,
                "recons": ",".join(recons),
                "test": test,
                "statistic": statistic,
                "p_value": p,
            }
        )
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    table["p_holm"] = np.nan
    for _, index in table.groupby("metric").groups.items():
        table.loc[index, "p_holm"] = holm_correction(table.loc[index, "p_value"].to_numpy())
    table["significant"] = table["p_holm"] < alpha
    return table


def welch_anova(samples: Sequence[np.ndarray]) -> tuple[float, float]:
    """Welch's heteroscedastic one-way ANOVA: (F, p)."""
    n = np.array([len(s) for s in samples], dtype=float)
    means = np.array([np.mean(s) for s in samples])
    variances = np.array([np.var(s, ddof=1) for s in samples])
    if np.any(variances <= 0):
        return np.nan, np.nan
    weights = n / variances
    grand = np.sum(weights * means) / np.sum(weights)
    k = len(samples)
    numerator = np.sum(weights * (means - grand) ** 2) / (k - 1)
    tail = np.sum((1 - weights / np.sum(weights)) ** 2 / (n - 1))
    denominator = 1 + 2 * (k - 2) / (k**2 - 1) * tail
    f = numerator / denominator
    df2 = (k**2 - 1) / (3 * tail)
    return float(f), float(stats.f.sf(f, k - 1, df2))


def fit_noise_power_law(
    long: pd.DataFrame, metric: str = "noise_sd_hu", radius_mm: float | None = None
) -> pd.DataFrame:
    """Fit ``metric = A * dose^(-k)`` per reconstruction (least squares in log–log).

    Returns k with its standard error and 95% interval, A and R².
    """
    rows = []
    values = rows_at_radius(long, metric, radius_mm)
    for recon, group in values.groupby("recon"):
        group = group[group["value"] > 0]
        if group["dose_mgy"].nunique() < 2:
            continue
        fit = stats.linregress(np.log(group["dose_mgy"]), np.log(group["value"]))
        dof = len(group) - 2
        half = stats.t.ppf(0.975, dof) * fit.stderr if dof > 0 else np.nan
        rows.append(
            {
                "recon": recon,
                "metric": metric,
                "radius_mm": radius_mm,
                "k": -fit.slope,
                "k_se": fit.stderr,
                "k_ci_low": -fit.slope - half,
                "k_ci_high": -fit.slope + half,
                "amplitude": float(np.exp(fit.intercept)),
                "r_squared": fit.rvalue**2,
                "points": len(group),
            }
        )
    return pd.DataFrame(rows)


def iso_metric_dose(
    long: pd.DataFrame,
    metric: str,
    reference_recon: str,
    reference_dose_mgy: float,
    radius_mm: float | None = None,
) -> pd.DataFrame:
    """The dose at which each reconstruction matches the reference's metric.

    The reference value is the mean over repetitions of ``reference_recon`` at
    ``reference_dose_mgy``. Each reconstruction's mean is interpolated linearly in
    log(dose) and, for positive metrics, in log(value) (a power law is then exact);
    outside the measured doses the power-law fit extrapolates and the row says so.
    """
    values = rows_at_radius(long, metric, radius_mm)
    means = values.groupby(["recon", "dose_mgy"])["value"].mean().reset_index()
    reference = means[(means["recon"] == reference_recon) & np.isclose(means["dose_mgy"], reference_dose_mgy)]
    if reference.empty:
        raise ValueError(
            f"no {metric} for {reference_recon} at {reference_dose_mgy:g} mGy; choose a reference that was scanned"
        )
    target = float(reference["value"].iloc[0])
    rows = []
    for recon, group in means.groupby("recon"):
        group = group.sort_values("dose_mgy")
        log_dose = np.log(group["dose_mgy"].to_numpy())
        value = group["value"].to_numpy()
        dose, method = np.nan, "no crossing"
        # Positive metrics are interpolated in log-log, where a power law is a straight line.
        positive = bool(np.all(value > 0) and target > 0)
        scale = np.log if positive else (lambda v: v)
        for n in range(len(value) - 1):
            a, b = value[n], value[n + 1]
            if (a - target) * (b - target) <= 0 and a != b:
                t = (scale(target) - scale(a)) / (scale(b) - scale(a))
                dose, method = float(np.exp(log_dose[n] + t * (log_dose[n + 1] - log_dose[n]))), "interpolated"
                break
        if not np.isfinite(dose) and len(value) >= 2 and np.all(value > 0) and target > 0:
            slope, intercept = np.polyfit(log_dose, np.log(value), 1)
            if slope != 0:
                dose, method = float(np.exp((np.log(target) - intercept) / slope)), "extrapolated (power law)"
        rows.append(
            {
                "recon": recon,
                "metric": metric,
                "radius_mm": radius_mm,
                "reference": f"{reference_recon} at {reference_dose_mgy:g} mGy",
                "reference_value": target,
                "iso_dose_mgy": dose,
                "dose_fraction": dose / reference_dose_mgy if np.isfinite(dose) else np.nan,
                "method": method,
            }
        )
    return pd.DataFrame(rows)
