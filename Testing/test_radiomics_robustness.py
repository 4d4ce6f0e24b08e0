"""Feature reproducibility statistics: ICC(2,1), ICC(3,1), Lin's CCC and the features-table summary.

Known answers: Shrout & Fleiss (1979) Table 2, whose ICCs they publish (0.29 and 0.71) and whose intervals
R's psych::ICC documents for the same data (ICC2 0.019-0.76, ICC3 0.342-0.95, F = 11.0, p = 0.00013; pingouin
0.7.0 gives the same to its two printed decimals). The intervals are also recomputed here from the formulas
as Shrout & Fleiss print them (their v written with F_J = MS_J / MS_E), which McGraw & Wong rewrote with
their a and b, the form the module uses. Lin's CCC is checked against sums written out by hand, against the
closed form of an offset copy, and against Lin's variance written on the rho_c scale, as DescTools does.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from ImagInfoExtension.radiomics.robustness import (
    SUMMARY_COLUMNS,
    feature_ccc,
    feature_robustness,
    icc,
    lins_ccc,
)

# Shrout & Fleiss (1979), Table 2: 6 targets (rows) x 4 judges (columns).
SHROUT_FLEISS = np.array(
    [[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]], dtype=float
)


def _mean_squares(x: np.ndarray) -> tuple[float, float, float]:
    """Between-targets, between-judges and residual mean squares, from the sums of squares' textbook form."""
    n, k = x.shape
    sst = ((x - x.mean()) ** 2).sum()
    ssr = (x.sum(axis=1) ** 2).sum() / k - x.sum() ** 2 / (n * k)
    ssc = (x.sum(axis=0) ** 2).sum() / n - x.sum() ** 2 / (n * k)
    return ssr / (n - 1), ssc / (k - 1), (sst - ssr - ssc) / ((n - 1) * (k - 1))


def _shrout_fleiss_interval(x: np.ndarray, alpha: float = 0.05) -> tuple[tuple[float, float], tuple[float, float]]:
    """ICC(2,1) and ICC(3,1) 1-alpha intervals as Shrout & Fleiss (1979) write them."""
    n, k = x.shape
    bms, jms, ems = _mean_squares(x)
    f0 = bms / ems
    fl, fu = (
        f0 / stats.f.ppf(1 - alpha / 2, n - 1, (n - 1) * (k - 1)),
        f0 * stats.f.ppf(1 - alpha / 2, (n - 1) * (k - 1), n - 1),
    )
    icc3 = ((fl - 1) / (fl + k - 1), (fu - 1) / (fu + k - 1))
    rho = (bms - ems) / (bms + (k - 1) * ems + k * (jms - ems) / n)
    fj = jms / ems
    c = n * (1 + (k - 1) * rho) - k * rho
    v = (k - 1) * (n - 1) * (k * rho * fj + c) ** 2 / ((n - 1) * k**2 * rho**2 * fj**2 + c**2)
    f_up, f_down = stats.f.ppf(1 - alpha / 2, n - 1, v), stats.f.ppf(1 - alpha / 2, v, n - 1)
    low = n * (bms - f_up * ems) / (f_up * (k * jms + (k * n - k - n) * ems) + n * bms)
    high = n * (f_down * bms - ems) / (k * jms + (k * n - k - n) * ems + n * f_down * bms)
    return (low, high), icc3


def test_icc_shrout_fleiss_table_2():
    icc21, icc31 = icc(SHROUT_FLEISS, "ICC(2,1)"), icc(SHROUT_FLEISS, "ICC(3,1)")
    assert round(icc21.value, 2) == 0.29 and round(icc31.value, 2) == 0.71  # published
    (low2, high2), (low3, high3) = _shrout_fleiss_interval(SHROUT_FLEISS)
    assert icc21.ci_low == pytest.approx(low2, rel=1e-10) and icc21.ci_high == pytest.approx(high2, rel=1e-10)
    assert icc31.ci_low == pytest.approx(low3, rel=1e-10) and icc31.ci_high == pytest.approx(high3, rel=1e-10)
    # psych::ICC(sf) as its manual prints it.
    assert (round(icc21.ci_low, 3), round(icc21.ci_high, 2)) == (0.019, 0.76)
    assert (round(icc31.ci_low, 3), round(icc31.ci_high, 2)) == (0.342, 0.95)
    for result in (icc21, icc31):
        assert round(result.f_value, 1) == 11.0 and (result.df1, result.df2) == (5, 15)
        assert round(result.p_value, 5) == 0.00013
    assert icc(SHROUT_FLEISS, "ICC(A,1)") == icc21 and icc(SHROUT_FLEISS, "ICC(C,1)") == icc31
    # A wider interval at a higher confidence, around the same estimate.
    wide = icc(SHROUT_FLEISS, "ICC(3,1)", confidence=0.99)
    assert wide.value == icc31.value and wide.ci_low < icc31.ci_low and wide.ci_high > icc31.ci_high


def test_icc_offset_between_raters_costs_agreement_not_consistency():
    truth = np.array([1.0, 4.0, 2.0, 8.0, 5.0])
    same = icc(np.column_stack([truth, truth, truth]), "ICC(2,1)")
    assert (same.value, same.ci_low, same.ci_high, same.p_value) == (1.0, 1.0, 1.0, 0.0)
    shifted = np.column_stack([truth, truth + 3.0, truth])
    assert icc(shifted, "ICC(3,1)").value == pytest.approx(1.0)
    # ICC(2,1) by hand: MS_R = k var(truth), MS_E = 0, MS_C = n * sum((col mean - grand)^2) / (k - 1).
    n, k = 5, 3
    ms_r = k * truth.var(ddof=1)
    ms_c = n * ((np.array([0.0, 3.0, 0.0]) - 1.0) ** 2).sum() / (k - 1)
    assert icc(shifted, "ICC(2,1)").value == pytest.approx(ms_r / (ms_r + k * ms_c / n))


def test_icc_refuses_bad_arguments():
    with pytest.raises(ValueError, match="kind"):
        icc(SHROUT_FLEISS, "ICC(1,1)")
    with pytest.raises(ValueError, match="at least 2"):
        icc(SHROUT_FLEISS[:1])
    with pytest.raises(ValueError, match="2D"):
        icc(SHROUT_FLEISS.ravel())
    with pytest.raises(ValueError, match="NaN"):
        icc(np.where(SHROUT_FLEISS == 10, np.nan, SHROUT_FLEISS))
    with pytest.raises(ValueError, match="confidence"):
        icc(SHROUT_FLEISS, confidence=95)


def _lin_interval(x: np.ndarray, y: np.ndarray, confidence: float) -> tuple[float, float]:
    """Lin's interval with the variance on the rho_c scale, then divided by (1 - rho_c^2)^2 (as DescTools)."""
    n = x.size
    sx2, sy2 = x.var(), y.var()
    r = np.corrcoef(x, y)[0, 1]
    p = 2 * r * math.sqrt(sx2 * sy2) / (sx2 + sy2 + (y.mean() - x.mean()) ** 2)
    u = (y.mean() - x.mean()) / math.sqrt(math.sqrt(sx2 * sy2))
    var_p = ((1 - r**2) * p**2 * (1 - p**2) / r**2 + 2 * p**3 * (1 - p) * u**2 / r - 0.5 * p**4 * u**4 / r**2) / (n - 2)
    half = stats.norm.ppf(0.5 + confidence / 2) * math.sqrt(var_p) / (1 - p**2)
    t = 0.5 * math.log((1 + p) / (1 - p))
    return math.tanh(t - half), math.tanh(t + half)


def test_lins_ccc_by_hand():
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    y = np.array([1.5, 2.0, 3.5, 3.5, 6.0])
    # Means 3 and 3.3; sums of squares 10 and 12.3, of products 10.5 (deviations written out).
    sxx, syy, sxy = 10.0 / 5, 12.3 / 5, 10.5 / 5
    expected = 2 * sxy / (sxx + syy + 0.3**2)
    result = lins_ccc(x, y)
    assert result.value == pytest.approx(expected, rel=1e-12)
    assert result.pearson_r == pytest.approx(10.5 / math.sqrt(10.0 * 12.3), rel=1e-12)
    assert result.bias_correction == pytest.approx(expected / result.pearson_r, rel=1e-12)
    assert result.n == 5
    low, high = _lin_interval(x, y, 0.95)
    assert (result.ci_low, result.ci_high) == (pytest.approx(low, rel=1e-10), pytest.approx(high, rel=1e-10))
    assert result.ci_low < result.value < result.ci_high


def test_lins_ccc_known_cases():
    rng = np.random.default_rng(7)
    x = rng.normal(10.0, 2.0, 20)
    perfect = lins_ccc(x, x)
    assert (perfect.value, perfect.ci_low, perfect.ci_high, perfect.pearson_r) == (1.0, 1.0, 1.0, 1.0)
    # An offset c: r stays 1 and rho_c = 2 s^2 / (2 s^2 + c^2) with the divisor-n variance s^2.
    offset = lins_ccc(x, x + 1.5)
    assert offset.pearson_r == pytest.approx(1.0)
    assert offset.value == pytest.approx(2 * x.var() / (2 * x.var() + 1.5**2), rel=1e-12) and offset.value < 1
    low, high = _lin_interval(x, x + 1.5, 0.90)
    result = lins_ccc(x, x + 1.5, confidence=0.90)
    assert (result.ci_low, result.ci_high) == (pytest.approx(low, rel=1e-9), pytest.approx(high, rel=1e-9))
    # A scale change: y = 2x has r = 1 but rho_c = 2 * 2 s^2 / (s^2 + 4 s^2 + m^2).
    scaled = lins_ccc(x, 2 * x)
    assert scaled.value == pytest.approx(4 * x.var() / (5 * x.var() + x.mean() ** 2), rel=1e-12)
    assert math.isnan(lins_ccc([1.0, 2.0], [1.0, 3.0]).ci_low)  # the interval needs n >= 3
    assert math.isnan(lins_ccc([2.0, 2.0, 2.0], [2.0, 2.0, 2.0]).value)  # 0 / 0
    with pytest.raises(ValueError, match="shape"):
        lins_ccc(x, x[:-1])
    with pytest.raises(ValueError, match="NaN"):
        lins_ccc(x, np.where(x > 10, np.nan, x))


CONDITIONS = [("FBP", 4.0), ("IR", 4.0), ("IR", 1.0)]


def _features_table(seed: int = 3) -> tuple[pd.DataFrame, np.ndarray]:
    """10 objects x 3 conditions x 2 repetitions; 'stable' is truth + tiny noise, 'noise' pure noise."""
    rng = np.random.default_rng(seed)
    truth = rng.uniform(50.0, 150.0, 10)
    rows = []
    for recon, dose in CONDITIONS:
        for repetition in (1, 2):
            case = f"{recon}_{dose:g}mGy_rep{repetition}"
            for obj in range(10):
                segment, lesion = ("Tumour", obj + 1) if obj < 6 else ("Node", obj - 5)
                values = {
                    "stable": truth[obj] + rng.normal(0.0, 0.05),
                    "noise": rng.normal(0.0, 1.0),
                    "constant": 3.0,
                    "broken": np.nan if (obj == 2 and recon == "IR" and dose == 1.0) else truth[obj],
                }
                for feature, value in values.items():
                    rows.append(
                        {
                            "case": case,
                            "segment": segment,
                            "lesion": lesion,
                            "image_type": "original",
                            "feature_class": "stat",
                            "feature": feature,
                            "value": value,
                            "ibsi_tag": f"stat_{feature}",
                            "recon": recon,
                            "dose_mgy": dose,
                            "repetition": repetition,
                            "path": f"/data/{case}.nrrd",  # a file column, not a factor
                        }
                    )
    return pd.DataFrame(rows), truth


@pytest.fixture(scope="module")
def features_table() -> pd.DataFrame:
    return _features_table()[0]


def test_feature_robustness_synthetic(features_table):
    summary = feature_robustness(features_table, ["recon", "dose_mgy"], {"recon": "FBP", "dose_mgy": "4.0"})
    assert list(summary.columns) == ["image_type", "feature_class", "feature", "ibsi_tag", *SUMMARY_COLUMNS]
    assert summary["feature"].tolist() == ["stable", "noise", "constant", "broken"]  # none dropped
    rows = summary.set_index("feature")
    assert (rows["n_objects"] == 10).all() and (rows["n_conditions"] == 3).all()

    stable = rows.loc["stable"]
    assert stable["robust"] and stable["reason"] == "" and stable["ccc_min"] > 0.99
    assert stable["icc21"] > 0.99 and stable["icc31"] > 0.99
    assert stable["icc21_low"] < stable["icc21"] < stable["icc21_high"] <= 1.0
    noise = rows.loc["noise"]
    assert not noise["robust"] and noise["reason"] == "" and noise["ccc_min"] < 0.9 and noise["icc21"] < 0.5
    assert noise["ccc_min_condition"] in ("recon=IR, dose_mgy=4", "recon=IR, dose_mgy=1")
    assert not rows.loc["constant", "robust"] and rows.loc["constant", "reason"].startswith("zero variance")
    broken = rows.loc["broken"]
    assert not broken["robust"] and math.isnan(broken["icc21"]) and math.isnan(broken["ccc_min"])
    assert broken["reason"].startswith("NaN for 1 of 30") and "lesion=3" in broken["reason"]
    assert "recon=IR, dose_mgy=1" in broken["reason"]

    # The repetitions are averaged per object and condition, then compared with the reference.
    stable_rows = features_table[features_table["feature"] == "stable"]
    means = stable_rows.groupby(["recon", "dose_mgy", "segment", "lesion"])["value"].mean()
    expected = lins_ccc(means.loc[("FBP", 4.0)].to_numpy(), means.loc[("IR", 1.0)].to_numpy())
    long = feature_ccc(features_table, ["recon", "dose_mgy"], {"recon": "FBP", "dose_mgy": 4})
    assert len(long) == 4 * 2
    assert list(long.columns[4:]) == [
        "recon",
        "dose_mgy",
        "condition",
        "reference",
        "n_objects",
        "ccc",
        "ccc_low",
        "ccc_high",
        "pearson_r",
        "reason",
    ]
    row = long[(long["feature"] == "stable") & (long["recon"] == "IR") & (long["dose_mgy"] == 1.0)].iloc[0]
    assert row["condition"] == "recon=IR, dose_mgy=1" and row["reference"] == "recon=FBP, dose_mgy=4"
    assert row["ccc"] == pytest.approx(expected.value, rel=1e-12)
    assert (row["ccc_low"], row["ccc_high"]) == (pytest.approx(expected.ci_low), pytest.approx(expected.ci_high))
    matrix = means.unstack(["recon", "dose_mgy"])[[("FBP", 4.0), ("IR", 1.0), ("IR", 4.0)]].to_numpy()
    assert stable["icc21"] == pytest.approx(icc(matrix, "ICC(2,1)").value, rel=1e-12)
    assert stable["icc31_high"] == pytest.approx(icc(matrix, "ICC(3,1)").ci_high, rel=1e-12)


def test_feature_robustness_test_retest_and_object_factors(features_table):
    # One condition: the two repetitions are the raters, the first one the reference.
    fbp = features_table[features_table["recon"] == "FBP"]
    summary = feature_robustness(fbp, ["recon"], {"recon": "FBP"}).set_index("feature")
    assert summary.loc["stable", "n_conditions"] == 2 and summary.loc["stable", "robust"]
    assert summary.loc["stable", "ccc_min_condition"] == "recon=FBP, repetition=2"
    # A factor outside group_by tells objects apart: two phantoms double the objects.
    twice = pd.concat([fbp.assign(phantom="A"), fbp.assign(phantom="B")])
    summary = feature_robustness(twice, [], {}).set_index("feature")
    assert summary.loc["stable", "n_objects"] == 20
    # Repetition named in group_by: every (condition, repetition) is a rater.
    summary = feature_robustness(
        features_table, ["recon", "dose_mgy", "repetition"], {"recon": "FBP", "dose_mgy": 4.0, "repetition": "1"}
    )
    assert (summary["n_conditions"] == 6).all()


def test_feature_robustness_incomplete_design(features_table):
    missing = features_table.drop(
        features_table.index[(features_table["feature"] == "stable") & (features_table["case"] == "IR_4mGy_rep1")]
    )
    summary = feature_robustness(missing, ["recon", "dose_mgy"], {"recon": "FBP", "dose_mgy": 4.0})
    # The other repetition of IR 4 mGy still gives every cell a value: averaged over what was scanned.
    assert summary.set_index("feature").loc["stable", "robust"]
    gone = features_table.drop(
        features_table.index[
            (features_table["feature"] == "stable")
            & (features_table["recon"] == "IR")
            & (features_table["lesion"] == 1)
            & (features_table["segment"] == "Node")
        ]
    )
    summary = feature_robustness(gone, ["recon", "dose_mgy"], {"recon": "FBP", "dose_mgy": 4.0}).set_index("feature")
    assert not summary.loc["stable", "robust"] and summary.loc["stable", "reason"].startswith("incomplete")
    assert summary.loc["noise", "reason"] == ""


def test_feature_robustness_refuses_bad_input(features_table):
    group_by = ["recon", "dose_mgy"]
    with pytest.raises(ValueError, match="'kernel', which is not a column"):
        feature_robustness(features_table, ["recon", "kernel"], {"recon": "FBP", "kernel": "B30"})
    with pytest.raises(ValueError, match="reference lacks dose_mgy"):
        feature_robustness(features_table, group_by, {"recon": "FBP"})
    with pytest.raises(ValueError, match=r"dose_mgy='5' is not in the table.*1, 4"):
        feature_robustness(features_table, group_by, {"recon": "FBP", "dose_mgy": "5"})
    with pytest.raises(ValueError, match="no row has the reference condition"):
        feature_robustness(features_table, group_by, {"recon": "FBP", "dose_mgy": 1.0})
    with pytest.raises(ValueError, match="not in group_by"):
        feature_robustness(features_table, ["recon"], {"recon": "FBP", "dose_mgy": 4.0})
    with pytest.raises(ValueError, match="not a factor column"):
        feature_robustness(features_table, ["path"], {"path": "x"})
    one_object = features_table[(features_table["segment"] == "Node") & (features_table["lesion"] == 1)]
    with pytest.raises(ValueError, match="at least 2 ROIs"):
        feature_robustness(one_object, group_by, {"recon": "FBP", "dose_mgy": 4.0})
    with pytest.raises(ValueError, match="from cases FBP_4mGy_rep1, FBP_4mGy_rep2"):
        feature_robustness(features_table.drop(columns="repetition"), group_by, {"recon": "FBP", "dose_mgy": 4.0})
    with pytest.raises(ValueError, match="single condition"):
        feature_robustness(features_table[features_table["repetition"] == 1], [], {})
    with pytest.raises(ValueError, match="lacks the column"):
        feature_robustness(features_table.drop(columns="ibsi_tag"), group_by, {"recon": "FBP", "dose_mgy": 4.0})


def _table_from_matrices(matrices: dict[str, np.ndarray]) -> pd.DataFrame:
    """One row per feature, object (a whole segment: no lesion number) and condition of CONDITIONS."""
    rows = []
    for feature, matrix in matrices.items():
        for obj, ratings in enumerate(matrix):
            for (recon, dose), value in zip(CONDITIONS, ratings):
                rows.append(
                    {
                        "case": f"{recon}_{dose:g}",
                        "segment": f"Sphere {obj + 1}",
                        "lesion": np.nan,
                        "image_type": "original",
                        "feature_class": "stat",
                        "feature": feature,
                        "value": value,
                        "ibsi_tag": None if feature == "no_tag" else f"stat_{feature}",
                        "recon": recon,
                        "dose_mgy": dose,
                    }
                )
    return pd.DataFrame(rows)


def test_feature_robustness_undefined_statistics_are_reasons():
    truth = np.array([1.0, 3.0, 2.0, 5.0])
    table = _table_from_matrices(
        {
            "no_tag": np.column_stack([truth, truth + 0.01, truth - 0.01]),
            # Every object alike within each condition: ICC(3,1) is 0/0.
            "flat_per_condition": np.tile([1.0, 2.0, 3.0], (4, 1)),
            # Constant and equal under the reference and IR 4 mGy: that CCC is 0/0; the ICCs stay.
            "flat_in_two": np.column_stack([np.full(4, 5.0), np.full(4, 5.0), truth]),
        }
    )
    summary = feature_robustness(table, ["recon", "dose_mgy"], {"recon": "FBP", "dose_mgy": 4}).set_index("feature")
    assert summary.loc["no_tag", "robust"] and pd.isna(summary.loc["no_tag", "ibsi_tag"])
    assert summary.loc["no_tag", "n_objects"] == 4
    flat = summary.loc["flat_per_condition"]
    assert not flat["robust"] and flat["reason"].startswith("zero variance between objects")
    two = summary.loc["flat_in_two"]
    assert not two["robust"] and two["reason"].startswith("CCC undefined against recon=IR, dose_mgy=4")
    assert math.isfinite(two["icc21"]) and math.isnan(two["ccc_min"])
    # Lin's CCC of an exact offset copy drops with the offset while ICC(3,1) stays 1.
    shifted = _table_from_matrices({"shifted": np.column_stack([truth, truth + 2.0, truth])})
    row = feature_robustness(shifted, ["recon", "dose_mgy"], {"recon": "FBP", "dose_mgy": 4}).iloc[0]
    assert row["icc31"] == pytest.approx(1.0) and row["icc21"] < 1.0
    assert row["ccc_min"] == pytest.approx(2 * truth.var() / (2 * truth.var() + 4.0))
    assert row["ccc_min_condition"] == "recon=IR, dose_mgy=4" and not row["robust"]
