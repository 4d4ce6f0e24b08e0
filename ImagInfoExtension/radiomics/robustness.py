"""Feature reproducibility: intraclass correlation and Lin's concordance across acquisition conditions.

A feature is reproducible when it ranks and measures the same objects alike whatever the scan: the
reconstruction, the dose, a repeated acquisition. Three statistics answer that here:

* :func:`icc` -- the intraclass correlation of an objects x raters matrix, ICC(2,1) (two-way random,
  absolute agreement, single rating) and ICC(3,1) (two-way mixed, consistency, single rating) of
  Shrout & Fleiss (1979), with the F-distribution confidence intervals of McGraw & Wong (1996), Table 7
  (cases 2A and 3): ICC(2,1)'s interval uses their Satterthwaite-type degrees of freedom ``v``.
* :func:`lins_ccc` -- Lin's concordance correlation coefficient (Lin 1989) between two raters, with its
  interval from Fisher's z transform and Lin's asymptotic variance (Lin 1989, corrected in Lin 2000).
* :func:`feature_robustness` and :func:`feature_ccc` -- both over a tidy features table, one row per
  feature and one row per feature and compared condition.

The design read from a features table
-------------------------------------
The table has the columns ``case, segment, lesion, image_type, feature_class, feature, value, ibsi_tag``
plus factor columns (``recon``, ``dose_mgy``, ``repetition``, a phantom or patient id ...). Columns that
name files or describe DICOM series (``path``, ``series_uid``, ``*_dir`` ...) are not factors, as in
:func:`ImagInfoExtension.study.table.study_factors`.

* A **feature** is one ``(image_type, feature_class, feature, ibsi_tag)``.
* The **conditions** (the raters of the ICC) are the combinations of the ``group_by`` columns present in
  the table (e.g. recon x dose_mgy).
* An **object** (a target of the ICC) is an ROI told apart by ``segment``, ``lesion`` and every factor
  column that is neither in ``group_by`` nor ``repetition`` (a phantom or patient id). ``case`` is *not*
  part of it: each condition is its own case (series), and the same ROI is followed across them. Put
  the subject's id in a factor column; two rows that would be the same object, condition and
  repetition are refused, naming their cases.
* **Repetitions** (``repetition``, repeated scans of one condition):

  - with two or more conditions, the repetitions of each object and condition are averaged first (a
    NaN in any of them makes the mean NaN), so that the ICC and the CCC compare conditions, not scans;
  - with a single condition (``group_by`` empty, or its columns holding one value each) the repetitions
    are the raters: a test-retest study. The reference is then the lowest repetition number;
  - ``repetition`` may also be named in ``group_by`` to make every (condition, repetition) a rater.

Every feature is kept. A feature whose design is incomplete (an object without a value under some
condition), that holds NaN, or that has no variance, is reported with NaN statistics, ``robust``
False and a ``reason``: the ICC needs the same objects under every condition, and leaving objects out
per feature would make features' ICCs incomparable, so drop such ROIs from the table on purpose when
that is the intent.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import special, stats

from ImagInfoExtension.study.table import REPETITION, study_factors

__all__ = [
    "ICC_KINDS",
    "CccResult",
    "IccResult",
    "feature_ccc",
    "feature_robustness",
    "icc",
    "lins_ccc",
    "parse_reference",
    "read_features_csv",
]

#: ICC forms computed, by their Shrout & Fleiss names; McGraw & Wong's names are accepted as aliases.
ICC_KINDS = ("ICC(2,1)", "ICC(3,1)")
_KIND_ALIASES = {"ICC(2,1)": "ICC(2,1)", "ICC(A,1)": "ICC(2,1)", "ICC(3,1)": "ICC(3,1)", "ICC(C,1)": "ICC(3,1)"}

#: What names one feature in a tidy features table.
FEATURE_KEY = ("image_type", "feature_class", "feature", "ibsi_tag")
#: The columns every features table has; the others are factors (or file and DICOM descriptors).
TABLE_COLUMNS = ("case", "segment", "lesion", *FEATURE_KEY, "value")
_OBJECT_COLUMNS = ("segment", "lesion")

#: Summary columns of :func:`feature_robustness`, after the feature key.
SUMMARY_COLUMNS = (
    "n_objects",
    "n_conditions",
    "icc21",
    "icc21_low",
    "icc21_high",
    "icc31",
    "icc31_low",
    "icc31_high",
    "ccc_min",
    "ccc_min_condition",
    "robust",
    "reason",
)

# A spread this small relative to the values is rounding, not variation between objects.
_RELATIVE_ZERO = 1e-12


@dataclass(frozen=True)
class IccResult:
    """An intraclass correlation with its confidence interval and F test of ICC = 0.

    Attributes
    ----------
    value : float
    ci_low, ci_high : float
        Bounds of the two-sided interval at the requested confidence.
    f_value : float
        MS_objects / MS_error.
    df1, df2 : float
        Degrees of freedom of the F test: n - 1 and (n - 1)(k - 1).
    p_value : float
        One-sided p of H0: ICC = 0 (McGraw & Wong's test, the same F for both forms).
    """

    value: float
    ci_low: float
    ci_high: float
    f_value: float
    df1: float
    df2: float
    p_value: float


@dataclass(frozen=True)
class CccResult:
    """Lin's concordance correlation coefficient with its confidence interval.

    Attributes
    ----------
    value : float
        rho_c = 2 s_xy / (s_x^2 + s_y^2 + (mean_x - mean_y)^2), moments with divisor n.
    ci_low, ci_high : float
        Two-sided interval from Fisher's z with Lin's asymptotic variance; NaN with fewer than 3 pairs or
        when Pearson's r is 0 or undefined; equal to ``value`` when it is exactly +-1.
    pearson_r : float
        Precision: Pearson's correlation.
    bias_correction : float
        Accuracy: C_b = rho_c / r, 1 when the two raters agree in mean and spread.
    n : int
        Number of pairs.
    """

    value: float
    ci_low: float
    ci_high: float
    pearson_r: float
    bias_correction: float
    n: int


def _check_confidence(confidence: float) -> float:
    confidence = float(confidence)
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence {confidence} is not between 0 and 1; give e.g. 0.95 for a 95 % interval")
    return confidence


def _icc_batch(ratings: np.ndarray, confidence: float) -> dict[str, np.ndarray]:
    """Both ICC forms for a stack of (objects, raters) matrices, shape (m, n, k): arrays of length m."""
    _, n, k = ratings.shape
    grand = ratings.mean(axis=(1, 2), keepdims=True)
    rows = ratings.mean(axis=2, keepdims=True)
    columns = ratings.mean(axis=1, keepdims=True)
    # The residual summed directly rather than SST - SSR - SSC, which cancels badly for near-perfect ratings.
    ss_rows = k * ((rows - grand) ** 2).sum(axis=(1, 2))
    ss_columns = n * ((columns - grand) ** 2).sum(axis=(1, 2))
    ss_error = ((ratings - rows - columns + grand) ** 2).sum(axis=(1, 2))
    df1, df2 = n - 1.0, (n - 1.0) * (k - 1.0)
    ms_r, ms_c, ms_e = ss_rows / df1, ss_columns / (k - 1.0), ss_error / df2
    alpha = 1.0 - confidence
    exact = ms_e == 0  # no interaction: every object's profile parallels the others

    with np.errstate(divide="ignore", invalid="ignore"):
        f_value = np.where(exact & (ms_r > 0), np.inf, ms_r / ms_e)
        p_value = np.where(exact & (ms_r > 0), 0.0, stats.f.sf(f_value, df1, df2))

        icc31 = (ms_r - ms_e) / (ms_r + (k - 1.0) * ms_e)
        f_low = f_value / stats.f.ppf(1.0 - alpha / 2.0, df1, df2)
        f_high = f_value * stats.f.ppf(1.0 - alpha / 2.0, df2, df1)
        # An estimate of 1 (no error variance, or so little that 1 - rho rounds to 0) has the interval [1, 1];
        # the formulas would divide infinities there.
        perfect = icc31 >= 1.0
        icc31_low = np.where(perfect, 1.0, (f_low - 1.0) / (f_low + k - 1.0))
        icc31_high = np.where(perfect, 1.0, (f_high - 1.0) / (f_high + k - 1.0))

        icc21 = (ms_r - ms_e) / (ms_r + (k - 1.0) * ms_e + k * (ms_c - ms_e) / n)
        # McGraw & Wong (1996) Table 7, ICC(A,1): v from a and b at the estimate rho.
        rho = icc21
        a = k * rho / (n * (1.0 - rho))
        b = 1.0 + k * rho * (n - 1.0) / (n * (1.0 - rho))
        v = (a * ms_c + b * ms_e) ** 2 / ((a * ms_c) ** 2 / (k - 1.0) + (b * ms_e) ** 2 / df2)
        v = np.where(v > 0, v, np.nan)
        f_star_low = stats.f.ppf(1.0 - alpha / 2.0, df1, v)
        f_star_high = stats.f.ppf(1.0 - alpha / 2.0, v, df1)
        spread = k * ms_c + (k * n - k - n) * ms_e
        icc21_low = n * (ms_r - f_star_low * ms_e) / (f_star_low * spread + n * ms_r)
        icc21_high = n * (f_star_high * ms_r - ms_e) / (spread + n * f_star_high * ms_r)
        perfect = icc21 >= 1.0
        icc21_low = np.where(perfect, 1.0, icc21_low)
        icc21_high = np.where(perfect, 1.0, icc21_high)

    return {
        "icc21": icc21,
        "icc21_low": icc21_low,
        "icc21_high": icc21_high,
        "icc31": icc31,
        "icc31_low": icc31_low,
        "icc31_high": icc31_high,
        "f_value": f_value,
        "df1": np.full_like(icc21, df1),
        "df2": np.full_like(icc21, df2),
        "p_value": p_value,
    }


def icc(ratings: np.ndarray, kind: str = "ICC(2,1)", confidence: float = 0.95) -> IccResult:
    """Intraclass correlation of single ratings, after Shrout & Fleiss (1979) and McGraw & Wong (1996).

    From the two-way ANOVA without replication of the ratings (mean squares of objects MS_R, of raters
    MS_C and of error MS_E, n objects, k raters):

    * ICC(2,1) = (MS_R - MS_E) / (MS_R + (k-1) MS_E + k (MS_C - MS_E) / n): two-way random effects,
      absolute agreement (McGraw & Wong's ICC(A,1)). A rater that reads every object higher lowers it.
    * ICC(3,1) = (MS_R - MS_E) / (MS_R + (k-1) MS_E): two-way mixed effects, consistency (ICC(C,1)).
      A constant offset between raters does not lower it.

    The intervals are McGraw & Wong's (1996, Table 7): ICC(3,1)'s from F = MS_R / MS_E with n-1 and
    (n-1)(k-1) degrees of freedom; ICC(2,1)'s from F quantiles with n-1 and Satterthwaite's ``v``
    degrees of freedom, evaluated at the ICC(2,1) estimate.

    Parameters
    ----------
    ratings : (n_objects, k_raters) array_like of float
        One row per object (target), one column per rater (condition); no NaN.
    kind : {"ICC(2,1)", "ICC(3,1)"}
        McGraw & Wong's names "ICC(A,1)" and "ICC(C,1)" are accepted too.
    confidence : float
        Coverage of the two-sided interval.

    Returns
    -------
    IccResult
        The value, its interval, and the F test of ICC = 0. When every rater gives every object the same
        value the ICC is 1 and so are both bounds; with no variance at all the ICC is NaN.

    Raises
    ------
    ValueError
        Ratings that are not 2D, fewer than 2 objects or 2 raters, NaN or infinite ratings, an unknown
        kind, a confidence outside (0, 1).
    """
    if kind not in _KIND_ALIASES:
        raise ValueError(f"kind {kind!r} is not one of {', '.join(ICC_KINDS)} (or ICC(A,1), ICC(C,1))")
    confidence = _check_confidence(confidence)
    ratings = np.asarray(ratings, dtype=np.float64)
    if ratings.ndim != 2:
        raise ValueError(f"ratings has shape {ratings.shape}; pass a 2D array, one row per object and column per rater")
    n, k = ratings.shape
    if n < 2 or k < 2:
        raise ValueError(f"ratings has {n} object(s) and {k} rater(s); the ICC needs at least 2 of each")
    if not np.all(np.isfinite(ratings)):
        raise ValueError("ratings hold NaN or infinite values; remove the objects without a value for every rater")
    batch = _icc_batch(ratings[np.newaxis], confidence)
    prefix = "icc21" if _KIND_ALIASES[kind] == "ICC(2,1)" else "icc31"
    return IccResult(
        value=float(batch[prefix][0]),
        ci_low=float(batch[f"{prefix}_low"][0]),
        ci_high=float(batch[f"{prefix}_high"][0]),
        f_value=float(batch["f_value"][0]),
        df1=float(batch["df1"][0]),
        df2=float(batch["df2"][0]),
        p_value=float(batch["p_value"][0]),
    )


def _ccc_batch(x: np.ndarray, y: np.ndarray, confidence: float) -> dict[str, np.ndarray]:
    """Lin's CCC of the rows of x against the rows of y, shape (m, n): arrays of length m."""
    n = x.shape[1]
    mean_x, mean_y = x.mean(axis=1), y.mean(axis=1)
    dx, dy = x - mean_x[:, np.newaxis], y - mean_y[:, np.newaxis]
    s_xx, s_yy, s_xy = (dx * dx).mean(axis=1), (dy * dy).mean(axis=1), (dx * dy).mean(axis=1)
    shift = mean_x - mean_y
    with np.errstate(divide="ignore", invalid="ignore"):
        ccc = np.clip(2.0 * s_xy / (s_xx + s_yy + shift**2), -1.0, 1.0)
        r = np.clip(s_xy / np.sqrt(s_xx * s_yy), -1.0, 1.0)
        u2 = shift**2 / np.sqrt(s_xx * s_yy)  # Lin's u squared: location shift over the geometric mean SD
        one_minus = 1.0 - ccc**2
        # Lin (1989) eq. for var(z), with the last term as corrected in Lin (2000).
        var_z = (
            (1.0 - r**2) * ccc**2 / (one_minus * r**2)
            + 2.0 * ccc**3 * (1.0 - ccc) * u2 / (r * one_minus**2)
            - ccc**4 * u2**2 / (2.0 * r**2 * one_minus**2)
        ) / (n - 2.0)
        half = special.ndtri(0.5 + confidence / 2.0) * np.sqrt(np.where(var_z >= 0, var_z, np.nan))
        z = np.arctanh(ccc)
        low, high = np.tanh(z - half), np.tanh(z + half)
        bias_correction = ccc / r
    exact = np.abs(ccc) == 1.0
    low, high = np.where(exact, ccc, low), np.where(exact, ccc, high)
    if n < 3:
        low, high = np.full_like(ccc, np.nan), np.full_like(ccc, np.nan)
    return {"ccc": ccc, "ccc_low": low, "ccc_high": high, "pearson_r": r, "bias_correction": bias_correction}


def lins_ccc(x: np.ndarray, y: np.ndarray, confidence: float = 0.95) -> CccResult:
    """Lin's concordance correlation coefficient between two raters (Lin 1989).

    rho_c = 2 s_xy / (s_x^2 + s_y^2 + (mean_x - mean_y)^2), with the moments' divisor n (Lin's estimator).
    It is Pearson's r times the bias correction C_b, so an offset or a scale change between the raters
    lowers it below r: y = x + c gives 2 s^2 / (2 s^2 + c^2) although r = 1.

    The interval back-transforms z = artanh(rho_c) +- z_(1-alpha/2) sigma_z with Lin's asymptotic variance::

        sigma_z^2 = [ (1-r^2) rho_c^2 / ((1-rho_c^2) r^2)
                      + 2 rho_c^3 (1-rho_c) u^2 / (r (1-rho_c^2)^2)
                      - rho_c^4 u^4 / (2 r^2 (1-rho_c^2)^2) ] / (n-2),   u = (mean_x - mean_y) / sqrt(s_x s_y)

    (Lin 1989, with the correction of Lin 2000).

    Parameters
    ----------
    x, y : (n,) array_like of float
        Paired values, e.g. a feature of n objects under the reference and under another condition.
    confidence : float
        Coverage of the two-sided interval.

    Returns
    -------
    CccResult
        NaN value when both raters are constant and equal (0/0); NaN interval with fewer than 3 pairs or
        an undefined or zero Pearson's r.

    Raises
    ------
    ValueError
        x and y of different lengths, not 1D, fewer than 2 pairs, NaN or infinite values, a confidence
        outside (0, 1).
    """
    confidence = _check_confidence(confidence)
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape:
        raise ValueError(f"x has shape {x.shape} and y {y.shape}; pass two 1D arrays of paired values")
    if x.size < 2:
        raise ValueError(f"{x.size} pair(s); the concordance needs at least 2 (3 for its interval)")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("x or y holds NaN or infinite values; keep only the pairs with both values")
    batch = _ccc_batch(x[np.newaxis], y[np.newaxis], confidence)
    return CccResult(
        value=float(batch["ccc"][0]),
        ci_low=float(batch["ccc_low"][0]),
        ci_high=float(batch["ccc_high"][0]),
        pearson_r=float(batch["pearson_r"][0]),
        bias_correction=float(batch["bias_correction"][0]),
        n=int(x.size),
    )


# --- features tables -------------------------------------------------------------------------------


def _shown(value: object) -> str:
    if isinstance(value, float | np.floating):
        return f"{float(value):g}"
    return str(value)


def _label(columns: Sequence[str], values: Sequence[object]) -> str:
    """A condition or object for people: ``recon=IR, dose_mgy=1``."""
    return ", ".join(f"{c}={_shown(v)}" for c, v in zip(columns, values))


def _same_value(present: object, wanted: object) -> bool:
    """Whether a value in the table is the one the user named; "4.0", "4" and 4.0 are the same dose."""
    if isinstance(present, str) == isinstance(wanted, str) and present == wanted:
        return True
    try:
        return math.isclose(float(present), float(wanted), rel_tol=1e-9, abs_tol=0.0)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return str(present).strip() == str(wanted).strip()


@dataclass(frozen=True)
class _Design:
    """A features table as a (features, objects, conditions) array, the reference condition first."""

    values: np.ndarray  # (m, n, k) float, NaN where missing or NaN
    present: np.ndarray  # (m, n, k) bool: the table has a row for this cell
    features: pd.DataFrame  # m rows, FEATURE_KEY columns
    objects: pd.DataFrame  # n rows, the object columns
    conditions: pd.DataFrame  # k rows, the rater columns
    rater_columns: list[str]
    labels: list[str]  # k condition labels


def _design(features: pd.DataFrame, group_by: Sequence[str], reference: Mapping[str, object]) -> _Design:
    if not isinstance(features, pd.DataFrame):
        raise ValueError(f"features is a {type(features).__name__}; pass the tidy features table as a DataFrame")
    missing = [c for c in TABLE_COLUMNS if c not in features.columns]
    if missing:
        raise ValueError(
            f"the features table lacks the column(s) {', '.join(missing)}; a tidy features table has "
            f"{', '.join(TABLE_COLUMNS)} plus one column per factor"
        )
    if isinstance(group_by, str):
        group_by = [group_by]
    group_by = list(group_by)
    factors = study_factors(features.drop(columns=list(TABLE_COLUMNS)))
    for column in group_by:
        if column not in features.columns:
            raise ValueError(
                f"group_by names {column!r}, which is not a column of the features table; "
                f"pick among its factor columns: {', '.join(factors) or '(none)'}"
            )
        if column not in factors:
            raise ValueError(
                f"group_by names {column!r}, which is not a factor column; group by the columns that tell "
                f"the conditions apart: {', '.join(factors) or '(none)'}"
            )
    if len(set(group_by)) != len(group_by):
        raise ValueError(f"group_by {group_by} names a column twice; name each factor once")
    if not isinstance(reference, Mapping):
        raise ValueError(f"reference is a {type(reference).__name__}; pass a mapping such as {{'recon': 'FBP'}}")
    lacking = [c for c in group_by if c not in reference]
    if lacking:
        raise ValueError(
            f"reference lacks {', '.join(lacking)}; name the reference condition's value of every group_by "
            f"column, e.g. reference={{{', '.join(f'{c!r}: ...' for c in group_by)}}}"
        )
    extra = [str(c) for c in reference if c not in group_by]
    if extra:
        raise ValueError(
            f"reference names {', '.join(extra)}, not in group_by {group_by}; add it to group_by or drop it "
            "from the reference"
        )

    table = features.reset_index(drop=True)
    reference_values = {}
    for column in group_by:
        present = pd.unique(table[column].dropna())
        try:
            present = sorted(present)
        except TypeError:  # mixed types: the table's order
            pass
        matches = [v for v in present if _same_value(v, reference[column])]
        if not matches:
            raise ValueError(
                f"reference {column}={reference[column]!r} is not in the table, whose {column} values are "
                f"{', '.join(_shown(v) for v in present)}; name one of them"
            )
        if len(matches) > 1:
            raise ValueError(
                f"reference {column}={reference[column]!r} matches several values of {column} "
                f"({', '.join(map(repr, matches))}); write the column's values one way"
            )
        reference_values[column] = matches[0]
    for column in group_by:
        if table[column].isna().any():
            row = int(np.flatnonzero(table[column].isna())[0])
            raise ValueError(f"row {row + 1}: {column} is empty; every row needs a value of every group_by column")

    raters = list(group_by)
    has_repetition = REPETITION in table.columns and REPETITION not in raters
    single = len(table.drop_duplicates(raters)) == 1 if raters else True
    if single:
        repetitions = pd.unique(table[REPETITION].dropna()) if has_repetition else []
        if len(repetitions) < 2:
            shown = _label(raters, [reference_values[c] for c in raters])
            raise ValueError(
                f"the table holds a single condition{f' ({shown})' if shown else ''} and no repeated scans: "
                "nothing to compare; "
                "group_by the factor columns that vary (e.g. recon, dose_mgy) or add a repetition column"
            )
        raters.append(REPETITION)
        reference_values[REPETITION] = sorted(repetitions)[0]
        has_repetition = False  # the repetitions are the raters, not averaged
    object_columns = [*_OBJECT_COLUMNS, *(f for f in factors if f not in raters and f != REPETITION)]

    # Each key factorised once over the table; cells and scans are then combined integer codes.
    feature_code = _codes(table, list(FEATURE_KEY))
    object_code = _codes(table, object_columns)
    condition_code = _codes(table, raters)
    repetition_code = _codes(table, [REPETITION]) if has_repetition else np.zeros(len(table), dtype=np.int64)
    feature_table = table.loc[_first_rows(feature_code), list(FEATURE_KEY)].reset_index(drop=True)
    object_table = table.loc[_first_rows(object_code), object_columns].reset_index(drop=True)
    condition_table = table.loc[_first_rows(condition_code), raters].reset_index(drop=True)
    m, n, k = len(feature_table), len(object_table), len(condition_table)
    cell = (feature_code * n + object_code) * k + condition_code
    scan = cell * (int(repetition_code.max()) + 1) + repetition_code
    _, inverse, counts = np.unique(scan, return_inverse=True, return_counts=True)
    if (counts > 1).any():
        same = table.loc[counts[inverse] > 1]
        same = same.loc[scan[counts[inverse] > 1] == scan[int(np.flatnonzero(counts[inverse] > 1)[0])]]
        first = same.iloc[0]
        shown = [*raters, *([REPETITION] if has_repetition else [])]
        cases = ", ".join(map(str, pd.unique(same["case"])))
        raise ValueError(
            f"{len(same)} rows give feature {first['feature']!r} of the same object "
            f"({_label(object_columns, first[object_columns])}) under the same condition "
            f"({_label(shown, first[shown]) or 'the only one'}), from cases {cases}; "
            "add the factor column that tells them apart (a patient or phantom id, a repetition number)"
        )

    # Reference first, then the conditions in the factors' order where the values sort.
    is_reference = np.ones(k, dtype=bool)
    for column in raters:
        is_reference &= [_same_value(v, reference_values[column]) for v in condition_table[column]]
    if not is_reference.any():
        raise ValueError(
            f"no row has the reference condition {_label(raters, [reference_values[c] for c in raters])}, "
            "although each value occurs; name a combination the table holds"
        )
    try:
        order = condition_table.sort_values(raters, kind="stable").index.to_numpy()
    except TypeError:  # mixed types in a factor: keep the table's order
        order = condition_table.index.to_numpy()
    order = np.concatenate([order[is_reference[order]], order[~is_reference[order]]])
    rank = np.empty_like(order)
    rank[order] = np.arange(k)
    condition_table = condition_table.loc[order].reset_index(drop=True)
    cell = (feature_code * n + object_code) * k + rank[condition_code]

    value = pd.to_numeric(table["value"], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    # Text, NaN and inf all count as no value: a mean that skipped them would hide a failed repetition.
    bad = ~np.isfinite(value)
    size = m * n * k
    count = np.bincount(cell, minlength=size)
    total = np.bincount(cell, weights=np.where(bad, 0.0, value), minlength=size)
    has_bad = np.bincount(cell, weights=bad, minlength=size) > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        values = np.where(has_bad | (count == 0), np.nan, total / count).reshape(m, n, k)
    present = (count > 0).reshape(m, n, k)
    labels = [_label(raters, row) for row in condition_table.itertuples(index=False)]
    return _Design(values, present, feature_table, object_table, condition_table, raters, labels)


def _codes(table: pd.DataFrame, columns: list[str]) -> np.ndarray:
    """Group numbers 0, 1, ... of the rows by these columns, in order of first appearance (NaN is a value)."""
    if not columns:
        return np.zeros(len(table), dtype=np.int64)
    return table.groupby(columns, dropna=False, sort=False).ngroup().to_numpy(dtype=np.int64)


def _first_rows(codes: np.ndarray) -> np.ndarray:
    """The first row of each group code 0..max, in code order."""
    _, first = np.unique(codes, return_index=True)
    return first


def _reasons(design: _Design) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Why each feature cannot be assessed ("" when it can), before any statistic is computed.

    Also whether its ICCs are defined (m,), and which of its CCCs are 0/0 (m, k - 1): a condition and the
    reference that both give every object the same value. Spreads within a rounding error of the
    values count as zero, so that no statistic is computed from rounding noise.
    """
    values, present = design.values, design.present
    m, n, k = values.shape
    reasons = []
    icc_defined = np.zeros(m, dtype=bool)
    ccc_undefined = np.zeros((m, k - 1), dtype=bool)
    for f in range(values.shape[0]):
        cells, seen = values[f], present[f]
        n_objects = int(seen.any(axis=1).sum())
        if n_objects < 2:
            reasons.append(f"fewer than 2 objects ({n_objects}): the ICC compares objects")
            continue
        if not seen.all():
            o, c = np.argwhere(~seen)[0]
            reasons.append(
                f"incomplete: no value for {(~seen).sum()} of {n * k} object-condition cells, e.g. "
                f"{_label(list(design.objects.columns), design.objects.iloc[o])} under {design.labels[c]}"
            )
            continue
        nan = ~np.isfinite(cells)
        if nan.any():
            o, c = np.argwhere(nan)[0]
            reasons.append(
                f"NaN for {nan.sum()} of {n * k} object-condition cells, e.g. "
                f"{_label(list(design.objects.columns), design.objects.iloc[o])} under {design.labels[c]}"
            )
            continue
        tolerance = _RELATIVE_ZERO * np.abs(cells).max()
        if np.ptp(cells) <= tolerance:
            reasons.append(f"zero variance: {cells.flat[0]:g} for every object under every condition")
            continue
        if np.all(np.ptp(cells, axis=0) <= tolerance):
            reasons.append("zero variance between objects: under each condition every object has the same value")
            continue
        icc_defined[f] = True
        flat = np.ptp(cells, axis=0) <= tolerance
        alike = flat[0] & flat[1:] & (np.abs(cells[0, 1:] - cells[0, 0]) <= tolerance)
        ccc_undefined[f] = alike
        if alike.any():
            c = int(np.flatnonzero(alike)[0]) + 1
            reasons.append(
                f"CCC undefined against {design.labels[c]}: it and the reference {design.labels[0]} give every "
                f"object the same value ({cells[0, 0]:g})"
            )
            continue
        reasons.append("")
    return reasons, icc_defined, ccc_undefined


def _assess(
    features: pd.DataFrame, group_by: Sequence[str], reference: Mapping[str, object], confidence: float
) -> tuple[_Design, list[str], dict[str, np.ndarray], dict[str, np.ndarray]]:
    confidence = _check_confidence(confidence)
    design = _design(features, group_by, reference)
    if len(design.objects) < 2:
        only = _label(list(design.objects.columns), design.objects.iloc[0])
        raise ValueError(
            f"the table holds {len(design.objects)} object ({only}); "
            "the ICC needs at least 2 ROIs (segments, lesions or phantoms) measured under every condition"
        )
    reasons, ok, ccc_undefined = _reasons(design)
    m, n, k = design.values.shape
    iccs = {
        name: np.full(m, np.nan) for name in ("icc21", "icc21_low", "icc21_high", "icc31", "icc31_low", "icc31_high")
    }
    cccs = {name: np.full((m, k - 1), np.nan) for name in ("ccc", "ccc_low", "ccc_high", "pearson_r")}
    if ok.any():
        batch = _icc_batch(design.values[ok], confidence)
        for name in iccs:
            iccs[name][ok] = batch[name]
        reference_values = design.values[ok][:, :, 0]
        for c in range(1, k):
            pairs = _ccc_batch(reference_values, design.values[ok][:, :, c], confidence)
            for name in cccs:
                cccs[name][ok, c - 1] = pairs[name]
        for name in cccs:
            cccs[name][ccc_undefined] = np.nan
    return design, reasons, iccs, cccs


def feature_robustness(
    features: pd.DataFrame,
    group_by: Sequence[str],
    reference: Mapping[str, object],
    *,
    ccc_threshold: float = 0.90,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Reproducibility of every feature across conditions: ICC(2,1), ICC(3,1) and the worst CCC.

    See the module docstring for how objects, conditions and repetitions are read from the table.

    Parameters
    ----------
    features : DataFrame
        Tidy features table: ``case, segment, lesion, image_type, feature_class, feature, value,
        ibsi_tag`` plus factor columns.
    group_by : sequence of str
        Factor columns whose combinations are the conditions (raters), e.g. ``["recon", "dose_mgy"]``.
    reference : mapping
        The reference condition, one value per ``group_by`` column, e.g. ``{"recon": "FBP",
        "dose_mgy": 4.0}``. Values are matched to the table's as numbers when both read as numbers, so
        the command line's ``"4"`` or ``"4.0"`` names the dose 4.0.
    ccc_threshold : float
        A feature is robust when its CCC against the reference is at least this under every other
        condition.
    confidence : float
        Coverage of the two-sided intervals.

    Returns
    -------
    DataFrame
        One row per feature, in the table's order, with the columns ``image_type, feature_class, feature,
        ibsi_tag`` and:

        - ``n_objects``, ``n_conditions``: the ICC's n and k (objects with a value, raters);
        - ``icc21, icc21_low, icc21_high``, ``icc31, icc31_low, icc31_high``: the ICCs and their intervals;
        - ``ccc_min``: the lowest CCC against the reference over the other conditions, and
          ``ccc_min_condition`` the condition that gives it (``recon=IR, dose_mgy=1``); every condition's
          CCC with its interval is in :func:`feature_ccc`'s long table;
        - ``robust``: True when the feature was assessed and ``ccc_min >= ccc_threshold``;
        - ``reason``: "" when assessed, else why not (fewer than 2 objects, missing cells, NaN values, zero
          variance, a CCC that is 0/0); ``robust`` is then False and ``ccc_min`` NaN, and the ICCs are NaN
          unless they could still be computed (a CCC of 0/0 leaves them).

    Raises
    ------
    ValueError
        A missing table column, a ``group_by`` column absent or not a factor, a reference that lacks a
        ``group_by`` column, names another column, or names a value (or combination) the table does not
        hold, fewer than 2 objects, a single condition without repetitions, two rows for the same object,
        condition and repetition.
    """
    design, reasons, iccs, cccs = _assess(features, group_by, reference, confidence)
    m, _, k = design.values.shape
    ccc = cccs["ccc"]
    with np.errstate(invalid="ignore"):
        assessed = np.array([not r for r in reasons], dtype=bool)
        worst = np.where(assessed[:, np.newaxis], ccc, np.inf).argmin(axis=1)
        ccc_min = np.where(assessed, ccc[np.arange(m), worst], np.nan)
    summary = design.features.copy()
    summary["n_objects"] = design.present.any(axis=2).sum(axis=1)
    summary["n_conditions"] = k
    for name, column in iccs.items():
        summary[name] = column
    summary["ccc_min"] = ccc_min
    summary["ccc_min_condition"] = [design.labels[w + 1] if a else "" for w, a in zip(worst, assessed)]
    summary["robust"] = assessed & (np.nan_to_num(ccc_min, nan=-np.inf) >= ccc_threshold)
    summary["reason"] = reasons
    return summary[[*FEATURE_KEY, *SUMMARY_COLUMNS]]


def feature_ccc(
    features: pd.DataFrame,
    group_by: Sequence[str],
    reference: Mapping[str, object],
    *,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Lin's CCC of every feature under every condition against the reference: the long companion table.

    Same arguments, design and errors as :func:`feature_robustness`.

    Returns
    -------
    DataFrame
        One row per feature and non-reference condition (features in the table's order, conditions
        sorted by their factors), with the columns ``image_type, feature_class, feature, ibsi_tag``, the
        rater columns holding the compared condition's values (the ``group_by`` columns, plus
        ``repetition`` in a test-retest study), then ``condition`` and ``reference`` (both as labels such
        as ``recon=IR, dose_mgy=1``), ``n_objects``, ``ccc, ccc_low, ccc_high``, ``pearson_r`` and
        ``reason`` ("" when the feature was assessed, as in :func:`feature_robustness`).
    """
    design, reasons, _, cccs = _assess(features, group_by, reference, confidence)
    m, _, k = design.values.shape
    feature_rows = np.repeat(np.arange(m), k - 1)
    condition_rows = np.tile(np.arange(1, k), m)
    table = design.features.iloc[feature_rows].reset_index(drop=True)
    conditions = design.conditions.iloc[condition_rows].reset_index(drop=True)
    for column in design.rater_columns:
        table[column] = conditions[column]
    table["condition"] = [design.labels[c] for c in condition_rows]
    table["reference"] = design.labels[0]
    table["n_objects"] = design.present.any(axis=2).sum(axis=1)[feature_rows]
    for name in ("ccc", "ccc_low", "ccc_high", "pearson_r"):
        table[name] = cccs[name].ravel()
    table["reason"] = [reasons[f] for f in feature_rows]
    return table


def read_features_csv(path: str | Path) -> pd.DataFrame:
    """A tidy features CSV as the reproducibility analysis reads it: an empty ``lesion``
    stays empty text, only ``value`` turns empty or "nan" into NaN.

    Raises
    ------
    ValueError
        When the file does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"the features file {path} does not exist; choose a features CSV")
    return pd.read_csv(path, keep_default_na=False, na_values={"value": ["", "nan", "NaN"]})


def parse_reference(text: str) -> dict[str, str]:
    """``"recon=FBP, dose_mgy=4.0"`` → ``{"recon": "FBP", "dose_mgy": "4.0"}``; empty → ``{}``.

    Commas or semicolons separate the pairs. Values stay text: the analysis matches
    ``"4.0"`` to a dose of 4.0 in the table.
    """
    reference: dict[str, str] = {}
    for part in re.split(r"[,;]", text or ""):
        if not part.strip():
            continue
        column, _equals, value = part.partition("=")
        if not column.strip() or not value.strip():
            raise ValueError(
                f"reference {text!r}: write column=value pairs separated by commas, e.g. recon=FBP, dose_mgy=4.0"
            )
        reference[column.strip()] = value.strip()
    return reference
