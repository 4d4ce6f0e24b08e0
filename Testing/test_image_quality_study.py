"""Image quality on scans that are not our phantom: a dose study of a slab beside cylinders,
the user's noise ROI, and a scan where no uniform region exists (no silent blanks)."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from ImagInfoExtension.cli import main
from ImagInfoExtension.io import write_image
from ImagInfoExtension.phantom.qa import slab_and_cylinders_phantom, structured_phantom
from ImagInfoExtension.study.measurements import IMAGE_QUALITY_METRICS
from ImagInfoExtension.study.runner import run_study
from ImagInfoExtension.study.table import validate_study

#: Two reconstructions of different noise texture; noise SD ∝ dose^-1/2.
NPS_PEAK_PER_MM = {"SOFT": 0.25, "SHARP": 0.4}
DOSES_MGY = (1.0, 2.0, 4.0)
NOISE_SD_AT_1_MGY = 30.0


def _noise_sd_hu(dose_mgy: float) -> float:
    return NOISE_SD_AT_1_MGY / np.sqrt(dose_mgy)


@pytest.fixture(scope="module")
def slab_study(tmp_path_factory):
    """2 reconstructions × 3 doses × 2 repetitions of a PMMA slab beside cylinders, with known noise."""
    folder = tmp_path_factory.mktemp("slab_study")
    rows, truth = [], {}
    for (recon, peak), dose, repetition in itertools.product(NPS_PEAK_PER_MM.items(), DOSES_MGY, (1, 2)):
        phantom = slab_and_cylinders_phantom(
            noise_sd_hu=_noise_sd_hu(dose),
            peak_frequency_per_mm=peak,
            spacing_mm=(0.75, 0.75, 2.5),
            size_ij=(256, 256),
            slices=12,
            seed=int(100 * dose) + repetition + (0 if recon == "SOFT" else 1000),
        )
        path = folder / f"{recon}_{dose:g}mGy_rep{repetition}.nrrd"
        write_image(phantom.image, path)
        rows.append({"path": path.name, "dose_mgy": dose, "recon": recon, "repetition": repetition})
        truth[(recon, dose, repetition)] = phantom.noise
    pd.DataFrame(rows).to_csv(folder / "manifest.csv", index=False)
    out = folder / "comparison"
    code = main(["compare", "--manifest", str(folder / "manifest.csv"), "--out", str(out), "--workers", "2"])
    return folder, out, code, truth


def test_noise_and_nps_of_an_ordinary_phantom_are_measured_and_right(slab_study):
    _, out, code, truth = slab_study
    assert code == 0, "no series failed"
    iq = pd.read_csv(out / "iq_metrics.csv")
    assert len(iq) == 12
    for row in iq.itertuples():
        noise = truth[(row.recon, row.dose_mgy, row.repetition)]
        assert row.noise_sd_hu == pytest.approx(noise.noise_sd_hu, rel=0.05), (row.recon, row.dose_mgy)
        assert abs(row.nps_fpeak_per_mm - noise.peak_frequency_per_mm) <= 0.03, (row.recon, row.dose_mgy)
    # The dose analysis works on them: noise follows dose^-1/2 for both reconstructions.
    law = pd.read_csv(out / "statistics_noise_power_law.csv")
    for fit in law[law["metric"] == "noise_sd_hu"].itertuples():
        assert fit.k == pytest.approx(0.5, abs=0.05), fit.recon


def test_what_cannot_be_measured_is_listed_with_its_reason(slab_study):
    """No silent blanks: every empty image-quality cell has a warning row with the reason."""
    _, out, _, _ = slab_study
    iq = pd.read_csv(out / "iq_metrics.csv")
    warnings = pd.read_csv(out / "warnings.csv") if (out / "warnings.csv").exists() else pd.DataFrame()
    for row in iq.to_dict("records"):
        for key in IMAGE_QUALITY_METRICS:
            if np.isfinite(row[key]):
                continue
            reasons = warnings[
                (warnings["recon"] == row["recon"])
                & np.isclose(warnings["dose_mgy"], row["dose_mgy"])
                & (warnings["repetition"] == row["repetition"])
                & (warnings["metric"] == key)
            ]["reason"]
            assert len(reasons) == 1 and len(reasons.iloc[0]) > 20, (key, row)
    report = (out / "report.html").read_text()
    if not warnings.empty:
        assert "Not measured" in report and "warnings.csv" in report
        assert all(reason in report for reason in warnings["reason"].unique())


def _one_series_study(path) -> pd.DataFrame:
    return validate_study(pd.DataFrame([{"path": str(path), "recon": "X", "dose_mgy": 1.0}]))


def test_the_users_noise_roi_is_used_on_any_grid(slab_study, tmp_path):
    folder, _, _, truth = slab_study
    series = folder / "SHARP_2mGy_rep1.nrrd"
    image = sitk.ReadImage(str(series))
    # A box inside the slab, drawn on a coarser grid shifted from the scan's.
    reference = sitk.Image([64, 64, 4], sitk.sitkUInt8)
    reference.SetSpacing((3.0, 3.0, 5.0))
    reference.SetOrigin(tuple(np.asarray(image.GetOrigin()) + (1.1, 0.7, 0.0)))
    mask = np.zeros((4, 64, 64), np.uint8)
    x = np.asarray(reference.GetOrigin()[0]) + 3.0 * np.arange(64)
    y = np.asarray(reference.GetOrigin()[1]) + 3.0 * np.arange(64)
    inside_y = (y > 30) & (y < 70)
    inside_x = (x > -60) & (x < 60)
    mask[:, inside_y[:, None] & inside_x[None, :]] = 1
    roi = sitk.GetImageFromArray(mask)
    roi.CopyInformation(reference)
    write_image(roi, tmp_path / "roi.nrrd")
    run = run_study(
        _one_series_study(series), ["image_quality"], tmp_path / "user", noise_roi=tmp_path / "roi.nrrd", workers=0
    )
    record = next(iter(run.records.values()))["image_quality"]
    assert record["details"]["noise_roi_source"] == "user (roi.nrrd)"
    noise = run.long.set_index("metric")["value"]
    known = truth[("SHARP", 2.0, 1)]
    assert noise["noise_sd_hu"] == pytest.approx(known.noise_sd_hu, rel=0.05)
    assert abs(noise["nps_fpeak_per_mm"] - known.peak_frequency_per_mm) <= 0.03
    # A mask that misses the scan is named, with the fix; the other metrics still get their reasons.
    far = sitk.Image(roi)
    far.SetOrigin((5000.0, 5000.0, 5000.0))
    write_image(far, tmp_path / "far.nrrd")
    missed = run_study(
        _one_series_study(series), ["image_quality"], tmp_path / "far", noise_roi=tmp_path / "far.nrrd", workers=0
    )
    reasons = missed.warnings.set_index("metric")["reason"]
    assert "noise ROI" in reasons["noise_sd_hu"] and "far.nrrd" in reasons["noise_sd_hu"]
    assert set(IMAGE_QUALITY_METRICS) <= set(reasons.index)


def test_a_scan_without_a_uniform_region_says_so_instead_of_a_blank(tmp_path):
    phantom = structured_phantom(size_ij=(128, 128), slices=4)
    write_image(phantom.image, tmp_path / "rods.nrrd")
    out = tmp_path / "out"
    run = run_study(_one_series_study(tmp_path / "rods.nrrd"), ["vessels", "image_quality"], out, workers=0)
    assert run.failures.empty
    reasons = run.warnings.set_index("metric")["reason"]
    assert "no uniform region found" in reasons["noise_sd_hu"] and "--noise-roi" in reasons["noise_sd_hu"]
    assert not run.long["metric"].isin(["noise_sd_hu", "nps_fpeak_per_mm"]).any()
