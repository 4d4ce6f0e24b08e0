"""The dose report's radiomics section: which features stay robust across dose and reconstruction."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("matplotlib")

from ImagInfoExtension.dose.report import (  # noqa: E402
    _robustness_html,
    figure_feature_robustness,
    radiomics_robustness,
)
from ImagInfoExtension.dose.results import ComparisonParameters  # noqa: E402
from ImagInfoExtension.phantom.design import DEFAULT_RADII_MM  # noqa: E402


def _study_long(seed: int = 3) -> pd.DataFrame:
    """Radiomics rows of 9 radius classes and the PMMA wall over 3 reconstructions × 2 doses × 2 repetitions.

    stat_mean is each segment's own value with a little noise (robust); cm_contrast_3D_avg
    grows with noise, which rises as dose falls and differs by reconstruction (not robust).
    """
    rng = np.random.default_rng(seed)
    truth = {r: 40.0 + 10.0 * n for n, r in enumerate(DEFAULT_RADII_MM)} | {None: 120.0}
    noise = {"FBP": 1.0, "IR": 0.5, "DL": 0.7}
    rows = []
    for recon in ("FBP", "IR", "DL"):
        for dose in (1.0, 4.0):
            for repetition in (1, 2):
                for radius, value in truth.items():
                    prefix = "radiomics_pmma_" if radius is None else "radiomics_"
                    sd = noise[recon] * 30.0 / np.sqrt(dose)
                    base = {"recon": recon, "dose_mgy": dose, "repetition": repetition, "radius_mm": radius}
                    rows.append(base | {"metric": f"{prefix}stat_mean", "value": value + rng.normal(0, 0.3)})
                    contrast = sd**2 * rng.uniform(0.5, 1.5)
                    rows.append(base | {"metric": f"{prefix}cm_contrast_3D_avg", "value": contrast})
    rows.append({"recon": "FBP", "dose_mgy": 4.0, "repetition": 1, "radius_mm": 3.0, "metric": "mpv_hu", "value": 1})
    return pd.DataFrame(rows)


def test_the_report_lists_the_robust_features_with_a_ccc_heat_map(tmp_path):
    result = SimpleNamespace(parameters=ComparisonParameters(reference_recon="FBP"))
    robustness = radiomics_robustness(result, _study_long())
    summary = robustness["summary"].set_index("feature")
    assert robustness["reference"] == {"recon": "FBP", "dose_mgy": 4.0}
    assert summary.loc["stat_mean", "n_objects"] == 10 and summary.loc["stat_mean", "n_conditions"] == 6
    assert bool(summary.loc["stat_mean", "robust"]) and summary.loc["stat_mean", "ccc_min"] > 0.99
    assert not bool(summary.loc["cm_contrast_3D_avg", "robust"]) and summary.loc["cm_contrast_3D_avg", "ccc_min"] < 0.5
    assert set(robustness["ccc"]["condition"]) == {
        f"recon={r}, dose_mgy={d:g}" for r in ("FBP", "IR", "DL") for d in (1.0, 4.0)
    } - {"recon=FBP, dose_mgy=4"}
    figure = figure_feature_robustness(robustness)
    figure.savefig(tmp_path / "heat.png")
    image = figure.axes[0].images[0].get_array()
    assert image.shape == (2, 5) and np.nanmin(image[0]) > 0.99  # robust feature first
    text = _robustness_html(robustness, {"feature_robustness_png": tmp_path / "heat.png"})
    assert "1 of 2 assessed features stay robust" in text and "<code>stat_mean</code>" in text
    assert "data:image/png;base64" in text and "FBP at 4 mGy" in text


def test_a_study_without_radiomics_has_no_section_and_one_condition_says_why():
    result = SimpleNamespace(parameters=ComparisonParameters())
    assert radiomics_robustness(result, _study_long().query("metric == 'mpv_hu'")) is None
    one = _study_long().query("recon == 'FBP' and dose_mgy == 4.0 and repetition == 1")
    robustness = radiomics_robustness(result, one)
    assert "reason" in robustness
    assert "Not assessed" in _robustness_html(robustness, {})
