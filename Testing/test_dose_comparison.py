"""The dose comparison: study grouping, batch engine, statistics, the command and the virtual study."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from ImagInfoExtension.batch import STATUS_FAILED, STATUS_OK, BatchCase, run_batch
from ImagInfoExtension.cli import main
from ImagInfoExtension.dose.analysis import (
    fit_noise_power_law,
    holm_correction,
    iso_metric_dose,
    welch_anova,
)
from ImagInfoExtension.study.dicom import (
    ReconstructionRule,
    classify_reconstruction,
    rules_to_json,
    study_from_dicom,
)
from ImagInfoExtension.study.measurements import IMAGE_QUALITY_METRICS
from ImagInfoExtension.study.table import DOSE_FACTORS, read_manifest

IQ_COLUMNS = [*DOSE_FACTORS, *IMAGE_QUALITY_METRICS]

REPOSITORY = Path(__file__).resolve().parents[1]


# --- statistics against known answers -------------------------------------------------


def test_holm_matches_its_definition():
    adjusted = holm_correction([0.01, 0.04, 0.03, np.nan, 0.005])
    # Sorted: 0.005*4, 0.01*3, 0.03*2, 0.04*1 with running maximum.
    np.testing.assert_allclose(adjusted[[4, 0, 2, 1]], [0.02, 0.03, 0.06, 0.06])
    assert np.isnan(adjusted[3])


def test_welch_anova_of_two_groups_is_welchs_t_test():
    rng = np.random.default_rng(1)
    a, b = rng.normal(0, 1, 7), rng.normal(1.2, 3, 9)
    f, p = welch_anova([a, b])
    t = stats.ttest_ind(a, b, equal_var=False)
    assert f == pytest.approx(t.statistic**2)
    assert p == pytest.approx(t.pvalue)


def _synthetic_long(k_by_recon: dict[str, tuple[float, float]], doses=(0.2, 0.5, 1.0, 2.0, 4.0), reps=3, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for recon, (amplitude, k) in k_by_recon.items():
        for dose in doses:
            for rep in range(1, reps + 1):
                value = amplitude * dose**-k * (1 + 0.01 * rng.standard_normal())
                rows.append([recon, dose, rep, np.nan, "noise_sd_hu", value])
    return pd.DataFrame(rows, columns=["recon", "dose_mgy", "repetition", "radius_mm", "metric", "value"])


def test_power_law_fit_and_iso_noise_dose():
    long = _synthetic_long({"FBP": (30.0, 0.5), "IR": (20.0, 0.5), "DL": (25.0, 0.3)})
    fit = fit_noise_power_law(long).set_index("recon")
    assert fit.loc["FBP", "k"] == pytest.approx(0.5, abs=0.01)
    assert fit.loc["DL", "k"] == pytest.approx(0.3, abs=0.01)
    assert fit.loc["IR", "k_ci_low"] < 0.5 < fit.loc["IR", "k_ci_high"]
    iso = iso_metric_dose(long, "noise_sd_hu", "FBP", 4.0).set_index("recon")
    # IR matches FBP's 15 HU at (20/15)^2 mGy.
    assert iso.loc["IR", "iso_dose_mgy"] == pytest.approx((20 / 15) ** 2, rel=0.03)
    assert iso.loc["FBP", "iso_dose_mgy"] == pytest.approx(4.0, rel=1e-6)
    with pytest.raises(ValueError, match="choose a reference that was scanned"):
        iso_metric_dose(long, "noise_sd_hu", "FBP", 3.0)


# --- study definition -------------------------------------------------------------------


def test_rules_classify_vendor_names():
    rules = (
        ReconstructionRule("DL", r"AiCE|TrueFidelity"),
        ReconstructionRule("IR", r"AIDR|ASIR|ITERATIVE"),
        ReconstructionRule("FBP", r"FBP|FILTER_BACK_PROJ"),
    )
    assert classify_reconstruction({"series_description": "Lung AiCE 1mm"}, rules) == "DL"
    assert (
        classify_reconstruction({"reconstruction_algorithm": "ITERATIVE", "series_description": "AIDR 3D"}, rules)
        == "IR"
    )
    assert classify_reconstruction({"series_description": "Scout"}, rules) is None
    with pytest.raises(ValueError, match="not a regular expression"):
        ReconstructionRule("X", "(")
    with pytest.raises(ValueError, match="unknown rule field"):
        ReconstructionRule("X", "x", ("kernel",))


def test_manifest_errors_name_the_fix(tmp_path):
    path = tmp_path / "m.csv"
    pd.DataFrame({"path": ["a.nrrd"], "dose_mgy": [1.0]}).to_csv(path, index=False)
    with pytest.raises(ValueError, match="lacks the column.*recon"):
        read_manifest(path, DOSE_FACTORS)
    pd.DataFrame({"path": ["a", "b"], "dose_mgy": [1, 1], "recon": ["FBP", "FBP"], "repetition": [1, 1]}).to_csv(
        path, index=False
    )
    with pytest.raises(ValueError, match="number the repetitions apart"):
        read_manifest(path)
    pd.DataFrame({"path": ["a"], "dose_mgy": [-1], "recon": ["FBP"], "repetition": [1]}).to_csv(path, index=False)
    with pytest.raises(ValueError, match="dose_mgy -1 is not a positive number"):
        read_manifest(path)


def test_dicom_grouping_from_tags_alone_matches_the_manifest(tiny_study, tmp_path):
    dicom = tiny_study / "dicom"
    # A series no rule knows is listed, not dropped silently.
    import shutil

    import pydicom

    stray = tmp_path / "dicom"
    shutil.copytree(dicom, stray)
    for path in (stray / "DL_2.1mGy_rep2").iterdir():
        dataset = pydicom.dcmread(path)
        dataset.SeriesDescription = "Localizer"
        dataset.ConvolutionKernel = "UNKNOWN"
        dataset.save_as(path)
    study, unmatched = study_from_dicom(stray)
    manifest = read_manifest(tiny_study / "manifest.csv")
    expected = manifest[~((manifest["recon"] == "DL") & (manifest["repetition"] == 2))]
    assert (
        study[["recon", "dose_mgy", "repetition", "series_uid"]].values.tolist()
        == expected[["recon", "dose_mgy", "repetition", "series_uid"]].values.tolist()
    )
    assert unmatched["reason"].tolist() == ["no reconstruction rule matched"]
    # Editable rules: a rule for the localizer takes it in.
    rules_file = tmp_path / "rules.json"
    from ImagInfoExtension.study.dicom import DEFAULT_RULES, rules_from_json

    rules_file.write_text(rules_to_json((ReconstructionRule("DL", "Localizer"), *DEFAULT_RULES)))
    study, unmatched = study_from_dicom(stray, rules_from_json(rules_file))
    assert len(study) == 6 and unmatched.empty


# --- batch engine -----------------------------------------------------------------------


def _square_or_fail(payload: dict, parameters: dict) -> dict:
    if payload["x"] < 0:
        raise ValueError("negative input")
    return {"y": payload["x"] ** 2 * parameters["scale"]}


def test_batch_records_failures_and_skips_finished_cases(tmp_path):
    cases = [BatchCase(f"case{x}", {"x": x}, {"x": x}) for x in (2, -1, 3)]
    first = run_batch(_square_or_fail, cases, {"scale": 1}, tmp_path, workers=0)
    assert [o.status for o in first.outcomes] == [STATUS_OK, STATUS_FAILED, STATUS_OK]
    assert first.outcomes[1].error == "ValueError: negative input"
    assert [o.result.get("y") for o in first.outcomes] == [4, None, 9]
    again = run_batch(_square_or_fail, cases, {"scale": 1}, tmp_path, workers=0)
    assert [o.from_cache for o in again.outcomes] == [True, False, True], "failed cases are retried"
    changed = run_batch(_square_or_fail, cases, {"scale": 2}, tmp_path, workers=0)
    assert not any(o.from_cache for o in changed.outcomes), "new parameters, new results"
    assert changed.outcomes[2].result["y"] == 18


def test_resumed_compare_after_a_kill_skips_finished_series(tiny_study, tmp_path):
    manifest = pd.read_csv(tiny_study / "manifest.csv").query("repetition == 1")
    manifest = manifest.assign(path=[str(tiny_study / p) for p in manifest["path"]])
    manifest.to_csv(tmp_path / "three.csv", index=False)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "ImagInfoExtension.cli", "compare", "--manifest", str(tmp_path / "three.csv")]
    command += ["--out", str(out), "--workers", "0"]
    process = subprocess.Popen(command, cwd=REPOSITORY, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and len(list((out / "cases").glob("*.json"))) < 1:
            time.sleep(0.2)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    finished = {p: p.stat().st_mtime_ns for p in (out / "cases").glob("*.json")}
    assert 1 <= len(finished) < 3, "killed part-way"
    assert not (out / "report.html").exists()
    arguments = ["compare", "--manifest", str(tmp_path / "three.csv"), "--out", str(out), "--workers", "2"]
    assert main(arguments) == 0
    for path, stamp in finished.items():
        assert path.stat().st_mtime_ns == stamp, f"{path.name} was computed again"
        assert json.loads(path.read_text())["status"] == "ok"
    assert len(list((out / "cases").glob("*.json"))) == 3
    iq = pd.read_csv(out / "iq_metrics.csv")
    assert len(iq) == 3 and iq["noise_sd_hu"].notna().all()
    assert len(list((out / "series").glob("*/per_radius.csv"))) == 3

    # A broken series is recorded, the others go on (here straight from the cache).
    (tmp_path / "broken.nrrd").write_text("not an image")
    broken = {"path": str(tmp_path / "broken.nrrd"), "dose_mgy": 4.0, "recon": "FBP", "repetition": 1}
    pd.concat([manifest, pd.DataFrame([broken])]).to_csv(tmp_path / "with_broken.csv", index=False)
    assert main(["compare", "--manifest", str(tmp_path / "with_broken.csv"), "--out", str(out), "--workers", "0"]) == 3
    failures = pd.read_csv(out / "failures.csv")
    assert failures["path"].tolist() == [broken["path"]] and "could not be read" in failures.loc[0, "error"]
    assert len(pd.read_csv(out / "iq_metrics.csv")) == 3


# --- the virtual study (make demo) -----------------------------------------------------


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    pytest.importorskip("slicer", reason="the demo's scene bundle needs slicer-core")
    out = tmp_path_factory.mktemp("demo") / "demo"
    assert main(["demo", "--out", str(out)]) == 0
    summary = pd.read_csv(out / "comparison" / "summary.csv")
    return out, summary


def _means(summary: pd.DataFrame, metric: str, radius_mm: float | None) -> pd.DataFrame:
    rows = summary[summary["metric"] == metric]
    rows = rows[rows["radius_mm"].isna()] if radius_mm is None else rows[np.isclose(rows["radius_mm"], radius_mm)]
    return rows.pivot(index="recon", columns="dose_mgy", values="mean")


def test_demo_writes_the_contract(demo):
    out, _ = demo
    comparison = out / "comparison"
    long = pd.read_csv(comparison / "results_long.csv")
    assert list(long.columns) == ["recon", "dose_mgy", "repetition", "radius_mm", "metric", "value"]
    assert long.loc[long["metric"] == "total_volume_ml", "radius_mm"].isna().all()
    iq = pd.read_csv(comparison / "iq_metrics.csv")
    assert list(iq.columns) == IQ_COLUMNS and len(iq) == 30
    assert (
        iq[["noise_sd_hu", "nps_fpeak_per_mm", "ttf50_per_mm", "cnr", "dprime_npw", "dprime_npwe"]].notna().all().all()
    )
    for metric in ("mpv_hu", "iqr_hu", "total_volume_ml", "noise_sd_hu", "nps_fpeak_per_mm", "ttf50_per_mm"):
        table = pd.read_csv(comparison / f"table_{metric}.csv", index_col=0)
        assert table.index.tolist() == ["FBP", "IR", "DL"] and table.shape[1] == 5
        assert all("±" in cell for cell in table.to_numpy().ravel())
    for plot in ("metrics_vs_dose", "nps_curves", "ttf_curves", "accuracy_vs_radius"):
        assert (comparison / f"{plot}.png").stat().st_size > 10_000 and (comparison / f"{plot}.svg").exists()
    assert (comparison / "tables.xlsx").stat().st_size > 5_000
    report = (comparison / "report.html").read_text()
    assert "reconstructions are modelled noise and blur" in report and "not the vendors" in report
    assert report.count("data:image/png;base64") == 4 and "Holm" in report and "series_uid" in report
    if (comparison / "warnings.csv").exists():
        left_out = pd.read_csv(comparison / "warnings.csv")
        # On our phantom only TTF10 may be missing (a sharp edge's TTF can stay above 10% up to Nyquist), and says why.
        quality = left_out[left_out["metric"].isin(IQ_COLUMNS)]
        assert set(quality["metric"]) <= {"ttf10_per_mm"} and quality["reason"].eq("the TTF does not fall to 10%").all()
        assert left_out["reason"].str.len().gt(20).all()
    from ImagInfoExtension import bridge

    scene = bridge.load_scene_bundle(out / "phantom_study.mrb")
    assert scene.GetNodesByClass("vtkMRMLScalarVolumeNode").GetNumberOfItems() == 15


def _chromium() -> str | None:
    import shutil

    return next(
        (shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome") if shutil.which(name)), None
    )


def test_report_reads_well_in_a_real_browser(demo):
    """Headless Chromium loads the report: every image decodes, every link points at a file, nothing is blank."""
    import html.parser
    import re

    browser = _chromium()
    if browser is None:
        pytest.skip("no Chromium here (apt-get install chromium)")
    out, _ = demo
    report = out / "comparison" / "report.html"
    dom = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=5000",
            "--dump-dom",
            report.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    assert 'data-images-loaded="4/4"' in dom, "every plot decodes in the browser"

    class Links(html.parser.HTMLParser):
        def __init__(self):
            super().__init__()
            self.links, self.headings = [], []

        def handle_starttag(self, tag, attributes):
            if tag == "a":
                self.links.append(dict(attributes)["href"])

    parser = Links()
    parser.feed(dom)
    assert len(parser.links) >= 10
    for link in parser.links:
        assert (report.parent / link).is_file(), f"the report links {link}, which is missing"
    text = re.sub(r"<[^>]+>", " ", dom)
    assert not re.search(r"\bnan\b", text, re.IGNORECASE), "no NaN shown"
    for heading in ("Key findings", "Tables", "Plots", "Statistics", "Provenance"):
        assert f">{heading}<" in dom or f"{heading} (" in dom, heading
    # Published values beside ours in the three published tables, and significance marks.
    assert dom.count("published ") >= 3 * 15
    assert re.search(r"<th>\d[\d.]* mGy\*</th>", dom), "some dose column is marked significant"
    assert "<details>" in dom and "statistics_differences.csv" in dom


def test_key_findings_are_computed_from_the_results(demo):
    out, _ = demo
    comparison = out / "comparison"
    provenance = json.loads((comparison / "provenance.json").read_text())
    findings = provenance["findings"]
    iso = pd.read_csv(comparison / "statistics_iso_dose.csv").set_index("recon")
    for recon in ("IR", "DL"):
        saving = round(100 * (1 - iso.loc[recon, "dose_fraction"]))
        sentence = next(f for f in findings if f.startswith(f"{recon} ") and "noise SD of FBP at 4 mGy" in f)
        assert f"{iso.loc[recon, 'iso_dose_mgy']:.2g} mGy" in sentence
        assert f"{abs(saving)}% {'less' if saving >= 0 else 'more'} dose" in sentence
    assert any("Against the published study" in f for f in findings)
    assert any(f.startswith("Noise SD falls with dose as FBP dose^−") for f in findings)
    report = (comparison / "report.html").read_text()
    assert all(html_escape(f) in report for f in findings)
    assert provenance["software"]["torch"] not in ("", None) and "monai" in provenance["software"]
    assert provenance["factors"] == ["recon", "dose_mgy", "repetition"]


def html_escape(text: str) -> str:
    import html

    return html.escape(text)


def test_virtual_study_iqr_trends(demo):
    _, summary = demo
    iqr = _means(summary, "iqr_hu", 3.0)
    for recon in ("FBP", "IR", "DL"):
        assert np.all(np.diff(iqr.loc[recon].to_numpy()) < 0), f"{recon} IQR falls with dose: {iqr.loc[recon]}"
    assert np.all(iqr.loc["IR"] < iqr.loc["FBP"]), "IR IQR < FBP IQR at every dose"


def test_virtual_study_dl_volume_is_highest_from_half_a_milligray(demo):
    _, summary = demo
    volume = _means(summary, "total_volume_ml", None)
    for dose in [d for d in volume.columns if d >= 0.5]:
        assert volume[dose].idxmax() == "DL", volume[dose]


def test_virtual_study_ir_volume_rises_with_dose(demo):
    """IR's regulariser fades thin vessels at low dose (``detail_shrinkage_hu_mgy``)."""
    _, summary = demo
    assert np.all(np.diff(_means(summary, "total_volume_ml", None).loc["IR"].to_numpy()) > 0)


def test_virtual_study_fbp_noise_adds_volume_at_lowest_dose(demo):
    """Photon-starvation streaks of FBP at 0.2 mGy are taken for thin vessels."""
    _, summary = demo
    volume = _means(summary, "total_volume_ml", None)
    assert volume.loc["FBP", 0.2] > volume.loc["FBP", 4.0]


def test_virtual_study_noise_follows_a_power_law(demo):
    out, _ = demo
    fit = pd.read_csv(out / "comparison" / "statistics_noise_power_law.csv")
    fbp = fit[(fit["recon"] == "FBP") & (fit["metric"] == "noise_sd_hu")].iloc[0]
    # Quantum noise alone gives k = 0.5; electronic noise and photon starvation steepen it.
    assert 0.5 < fbp["k"] < 1.2 and fbp["r_squared"] > 0.9
    ir = fit[(fit["recon"] == "IR") & (fit["metric"] == "noise_sd_hu")].iloc[0]
    assert 0.2 < ir["k"] < 0.8 and ir["r_squared"] > 0.9


def test_compare_on_dicom_grouped_from_tags_equals_the_nrrd_measurements(tiny_study, tmp_path):
    from ImagInfoExtension.study.runner import measure_series, plugin_parameters

    out = tmp_path / "dicom_out"
    assert main(["compare", str(tiny_study / "dicom"), "--out", str(out), "--workers", "2"]) == 0
    iq = pd.read_csv(out / "iq_metrics.csv")
    manifest = read_manifest(tiny_study / "manifest.csv")
    assert sorted(map(tuple, iq[["recon", "dose_mgy", "repetition"]].values.tolist())) == sorted(
        map(tuple, manifest[["recon", "dose_mgy", "repetition"]].values.tolist())
    )
    # The DICOM series holds the NRRD's voxels and geometry, so every number agrees.
    parameters = {"plugins": plugin_parameters(["vessels", "image_quality"])}
    nrrd = measure_series({"path": str(tiny_study / "IR_2.1mGy_rep2.nrrd")}, parameters)
    measured = {row["metric"]: row["value"] for row in nrrd["rows"] if row["radius_mm"] is None}
    row = iq[(iq["recon"] == "IR") & (iq["repetition"] == 2)].iloc[0]
    for metric in ("noise_sd_hu", "nps_fpeak_per_mm", "ttf50_per_mm", "dprime_npw"):
        assert row[metric] == pytest.approx(measured[metric], rel=1e-5), metric  # CSV keeps 6 digits


def test_batch_runs_on_an_existing_dask_scheduler(tmp_path):
    from distributed import LocalCluster

    cases = [BatchCase(f"case{x}", {"x": x}, {"x": x}) for x in (2, -1, 3)]
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        summary = run_batch(_square_or_fail, cases, {"scale": 3}, tmp_path, scheduler=cluster.scheduler_address)
    assert summary.workers == 2
    assert [o.status for o in summary.outcomes] == [STATUS_OK, STATUS_FAILED, STATUS_OK]
    assert [o.result.get("y") for o in summary.outcomes] == [12, None, 27]
    assert len(list(tmp_path.glob("*.json"))) == 3
