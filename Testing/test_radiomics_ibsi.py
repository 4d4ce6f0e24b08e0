"""IBSI-1 compliance of the whole engine, as `imaginfo radiomics --ibsi-check` reports it."""

from __future__ import annotations

import pandas as pd
import pytest
from conftest import SHARED_REFERENCE

from ImagInfoExtension.cli import main

IBSI_DATA = SHARED_REFERENCE / "ibsi"


@pytest.fixture(scope="module")
def compliance(tmp_path_factory):
    if not (IBSI_DATA / "MANIFEST.txt").is_file():
        pytest.skip(f"{IBSI_DATA} is absent: the IBSI-1 data live in ../shared/reference/ibsi")
    out = tmp_path_factory.mktemp("ibsi")
    code = main(["radiomics", "--ibsi-check", "--ibsi-data", str(IBSI_DATA), "--out", str(out), "--progress", "none"])
    return code, pd.read_csv(out / "ibsi_compliance.csv"), pd.read_csv(out / "ibsi_summary.csv")


def test_every_ibsi_1_reference_value_passes_on_all_six_cases(compliance):
    code, table, summary = compliance
    assert list(table.columns) == ["config", "tag", "reference", "tolerance", "value", "pass"]
    failing = table[~table["pass"]]
    assert failing.empty, failing.to_string()
    assert code == 0
    features = summary[summary["kind"] == "features"].set_index("config")["total"].to_dict()
    # Every reference value with a number: 482 for the phantom; the 2D configurations hold
    # 2D and 2.5D texture, the 3D ones 3D texture (the MANIFEST's row counts, less 5 without value).
    assert features == {"phantom": 482, "A": 346, "B": 346, "C": 210, "D": 210, "E": 210}
    diagnostics = summary[summary["kind"] == "diagnostics"].set_index("config")["total"].to_dict()
    assert diagnostics == {config: 60 for config in "ABCDE"}


def test_the_check_applies_the_manifest_rule_to_our_values(compliance):
    from ImagInfoExtension.radiomics.ibsi import within_tolerance

    _, table, _ = compliance
    moran = table[(table["config"] == "C") & (table["tag"] == "morph_moran_i")].iloc[0]
    # Exact Moran's I (no approximation): within the tight tolerance mirp only meets in its slow exact mode.
    assert moran["tolerance"] <= 0.0003 and within_tolerance(moran["value"], moran["reference"], moran["tolerance"])
    # The rule rounds to 3 significant digits before comparing.
    assert within_tolerance(0.05964, 0.0596, 0.0) and not within_tolerance(0.05966, 0.0596, 0.0)
