"""Virtual acquisitions: calibration to the published study, noise, texture, blur."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.fft
import SimpleITK as sitk

from ImagInfoExtension.geometry import ImageGrid
from ImagInfoExtension.phantom import AcquisitionCalibration, AcquisitionModel, AcquisitionSettings
from ImagInfoExtension.phantom.acquisition import (
    DEFAULT_RECONSTRUCTIONS,
    REFERENCE_SPACING_MM,
    FourierObject,
    modulation_transfer,
)

DOSES = (0.2, 0.5, 1.0, 2.1, 4.0)
RECONS = ("FBP", "IR", "DL")
REPEATS = 4


@pytest.fixture(scope="module")
def calibration_measurements(default_scanner):
    """MPV and IQR inside the true 3 mm vessels (≥ 1 mm inside the wall), 4 repeats each."""
    core = default_scanner.vessel_core_mask(3.0, depth_mm=1.0)
    assert core.sum() > 500
    rows = []
    for recon in RECONS:
        for dose in DOSES:
            for repetition in range(1, REPEATS + 1):
                image = default_scanner.acquire(AcquisitionSettings(dose, recon, repetition))
                values = sitk.GetArrayViewFromImage(image)[core].astype(float)
                q1, median, q3 = np.percentile(values, [25, 50, 75])
                rows.append({"recon": recon, "dose_mgy": dose, "rep": repetition, "mpv_hu": median, "iqr_hu": q3 - q1})
    return pd.DataFrame(rows).groupby(["recon", "dose_mgy"]).mean(numeric_only=True)


@pytest.mark.parametrize("recon", RECONS)
@pytest.mark.parametrize("dose", DOSES)
def test_calibration_reproduces_published_iqr_and_mpv(calibration_measurements, published_table, recon, dose):
    measured = calibration_measurements.loc[(recon, dose)]
    published = published_table.set_index(["metric", "recon", "dose_mgy"])["mean"]
    iqr = published[("iqr_hu", recon, dose)]
    mpv = published[("mpv_hu", recon, dose)]
    assert measured["iqr_hu"] == pytest.approx(iqr, rel=0.25), f"{recon} {dose} mGy IQR"
    assert measured["mpv_hu"] == pytest.approx(mpv, abs=10.0), f"{recon} {dose} mGy MPV"


def test_iqr_falls_with_dose_and_ir_is_below_fbp(calibration_measurements):
    for recon in RECONS:
        iqr = [calibration_measurements.loc[(recon, d), "iqr_hu"] for d in DOSES]
        assert all(a > b for a, b in zip(iqr, iqr[1:])), f"{recon} IQR must fall with dose: {iqr}"
    for dose in DOSES:
        assert (
            calibration_measurements.loc[("IR", dose), "iqr_hu"] < calibration_measurements.loc[("FBP", dose), "iqr_hu"]
        )


def test_repetitions_differ_only_in_noise(small_scanner):
    first = sitk.GetArrayFromImage(small_scanner.acquire(AcquisitionSettings(1.0, "FBP", 1))).astype(float)
    again = sitk.GetArrayFromImage(small_scanner.acquire(AcquisitionSettings(1.0, "FBP", 1))).astype(float)
    second = sitk.GetArrayFromImage(small_scanner.acquire(AcquisitionSettings(1.0, "FBP", 2))).astype(float)
    other_seed = sitk.GetArrayFromImage(small_scanner.acquire(AcquisitionSettings(1.0, "FBP", 1, seed=7)))
    assert np.array_equal(first, again), "same settings give the same image"
    assert not np.array_equal(first, other_seed)
    difference = first - second
    # The difference of two repeats is pure noise: zero mean, variance 2·sigma².
    sigma = small_scanner.model.noise_sd_hu("FBP", 1.0)
    inside = small_scanner.object_hu > -900  # clear of the clipping at -1024
    assert abs(difference[inside].mean()) < 0.5
    measured = difference[inside].std() / np.sqrt(2)
    assert 0.5 * sigma < measured < 1.05 * sigma  # the small grid integrates less of the NPS


def _noise_only(recon: str, dose: float, grid: ImageGrid, repetition: int = 1) -> np.ndarray:
    empty = FourierObject(np.zeros(grid.shape_kji, np.float32), grid)
    model = AcquisitionModel()
    offset = model.calibration.hu_offset[recon]
    return empty.acquire(model, AcquisitionSettings(dose, recon, repetition)).astype(float) - round(offset)


@pytest.mark.parametrize("recon", RECONS)
def test_noise_sd_and_nps_peak_match_the_model(recon):
    grid = ImageGrid((256, 256, 48), REFERENCE_SPACING_MM)
    dose = 1.0
    model = AcquisitionModel()
    noise = _noise_only(recon, dose, grid)
    expected_sd = model.noise_sd_hu(recon, dose)
    assert noise.std() == pytest.approx(expected_sd, rel=0.03)
    # Radially averaged 2D NPS of the slices: its peak is the model's.
    spectrum = np.abs(np.fft.fft2(noise - noise.mean(axis=(1, 2), keepdims=True))) ** 2
    nps = spectrum.mean(axis=0)
    fy = np.fft.fftfreq(grid.size_ijk[1], REFERENCE_SPACING_MM[1])
    fx = np.fft.fftfreq(grid.size_ijk[0], REFERENCE_SPACING_MM[0])
    radius = np.hypot(*np.meshgrid(fy, fx, indexing="ij"))
    bins = np.arange(0, 0.7, 0.02)
    which = np.digitize(radius.ravel(), bins)
    profile = np.array([nps.ravel()[which == b].mean() for b in range(1, len(bins))])
    peak = bins[np.argmax(profile)] + 0.01
    assert peak == pytest.approx(DEFAULT_RECONSTRUCTIONS[recon].nps_peak_at(dose), abs=0.03)


def test_shared_scan_noise_correlates_across_reconstructions():
    grid = ImageGrid((96, 96, 24), REFERENCE_SPACING_MM)
    fbp = _noise_only("FBP", 1.0, grid)
    dl = _noise_only("DL", 1.0, grid)
    other_scan = _noise_only("DL", 1.0, grid, repetition=2)
    assert np.corrcoef(fbp.ravel(), dl.ravel())[0, 1] > 0.5
    assert abs(np.corrcoef(fbp.ravel(), other_scan.ravel())[0, 1]) < 0.05


def test_blur_matches_the_gaussian_psf():
    """An edge blurred by the model has the analytic erf profile of its PSF."""
    from scipy.special import erf

    grid = ImageGrid((64, 64, 64), (0.5, 0.5, 0.5))
    recon = DEFAULT_RECONSTRUCTIONS["FBP"]
    fk, fj, fi = (
        np.fft.fftfreq(64, 0.5)[:, None, None],
        np.fft.fftfreq(64, 0.5)[None, :, None],
        np.fft.rfftfreq(64, 0.5)[None, None, :],
    )
    # A smooth periodic slab avoids the aliasing of a sharp edge.
    x = (np.arange(64) - 32) * 0.5
    sigma_true = 0.3
    slab = 0.5 * (erf((x + 8) / (np.sqrt(2) * sigma_true)) - erf((x - 8) / (np.sqrt(2) * sigma_true)))
    volume = np.broadcast_to(slab, grid.shape_kji).astype(np.float32)
    blurred = scipy.fft.irfftn(scipy.fft.rfftn(volume) * modulation_transfer(recon, 4.0, fk, fj, fi), s=grid.shape_kji)
    sigma_psf = recon.psf_fwhm_mm(4.0)[0] / 2.3548200450309493
    total = np.hypot(sigma_true, sigma_psf)
    expected = 0.5 * (erf((x + 8) / (np.sqrt(2) * total)) - erf((x - 8) / (np.sqrt(2) * total)))
    assert np.abs(blurred[32, 32] - expected).max() < 0.01


def test_user_calibration_table_sets_the_noise(tmp_path, published_table):
    table = published_table.copy()
    table.loc[table.metric == "iqr_hu", "mean"] *= 2
    path = tmp_path / "mine.csv"
    table.to_csv(path, index=False)
    mine = AcquisitionModel(calibration=AcquisitionCalibration.from_csv(path))
    default = AcquisitionModel()
    for recon in RECONS:
        assert mine.noise_sd_hu(recon, 1.0) == pytest.approx(2 * default.noise_sd_hu(recon, 1.0), rel=1e-6)


def test_bad_calibration_tables_are_refused(tmp_path):
    with pytest.raises(ValueError, match="lacks column"):
        AcquisitionCalibration.from_table(pd.DataFrame({"recon": ["FBP"], "mean": [1.0]}))
    one_dose = pd.DataFrame({"metric": ["iqr_hu"], "recon": ["FBP"], "dose_mgy": [1.0], "mean": [40.0]})
    with pytest.raises(ValueError, match="two or more doses"):
        AcquisitionCalibration.from_table(one_dose)
    with pytest.raises(FileNotFoundError):
        AcquisitionCalibration.from_csv(tmp_path / "missing.csv")
    with pytest.raises(ValueError, match="unknown reconstruction"):
        AcquisitionModel().noise_sd_hu("XYZ", 1.0)
