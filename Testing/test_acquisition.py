"""Virtual acquisitions: calibration to the published study, noise, texture, blur."""

from __future__ import annotations

from dataclasses import replace

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
    shrink_fine_detail,
)
from ImagInfoExtension.phantom.starvation import (
    WATER_ATTENUATION_PER_MM,
    PhotonStarvation,
    attenuation_map,
    back_project_hu,
    expected_counts,
    expected_log_error,
    line_integrals,
    log_bias,
    log_error_slope,
    ray_geometry,
    starvation_streaks,
    starved_readings,
)

DOSES = (0.2, 0.5, 1.0, 2.1, 4.0)
RECONS = ("FBP", "IR", "DL")
REPEATS = 2


@pytest.fixture(scope="module")
def calibration_measurements(default_scanner):
    """MPV and IQR inside the true 3 mm vessels (≥ 1 mm inside the wall), 2 repeats each (the published 4
    average the same noise level; 2 keep the mean IQR within a few percent, and halve this fixture)."""
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


def test_fbp_mpv_rises_as_dose_falls_like_the_published_table(calibration_measurements, published_table):
    """The log of few-photon readings overestimates line integrals: FBP's vessels read denser at low dose."""
    published = published_table.set_index(["metric", "recon", "dose_mgy"])["mean"]
    fbp = {dose: calibration_measurements.loc[("FBP", dose), "mpv_hu"] for dose in DOSES}
    assert fbp[0.2] == pytest.approx(published[("mpv_hu", "FBP", 0.2)], abs=10.0)
    # Published: 91 HU at 4 mGy, 98 HU at 0.2 mGy.
    assert 5.0 < fbp[0.2] - fbp[4.0] < 15.0, f"FBP MPV by dose: {fbp}"
    assert fbp[0.2] > max(fbp[d] for d in DOSES[1:]), f"FBP MPV is highest at 0.2 mGy: {fbp}"


def test_iqr_falls_with_dose_and_ir_is_below_fbp(calibration_measurements):
    for recon in RECONS:
        iqr = [calibration_measurements.loc[(recon, d), "iqr_hu"] for d in DOSES]
        assert all(a > b for a, b in zip(iqr, iqr[1:])), f"{recon} IQR must fall with dose: {iqr}"
    for dose in DOSES:
        assert (
            calibration_measurements.loc[("IR", dose), "iqr_hu"] < calibration_measurements.loc[("FBP", dose), "iqr_hu"]
        )


def test_repetitions_differ_only_in_noise(small_scanner):
    first = sitk.GetArrayFromImage(small_scanner.acquire(AcquisitionSettings(2.1, "FBP", 1))).astype(float)
    again = sitk.GetArrayFromImage(small_scanner.acquire(AcquisitionSettings(2.1, "FBP", 1))).astype(float)
    second = sitk.GetArrayFromImage(small_scanner.acquire(AcquisitionSettings(2.1, "FBP", 2))).astype(float)
    other_seed = sitk.GetArrayFromImage(small_scanner.acquire(AcquisitionSettings(2.1, "FBP", 1, seed=7)))
    assert np.array_equal(first, again), "same settings give the same image"
    assert not np.array_equal(first, other_seed)
    difference = first - second
    # The difference of two repeats is pure noise: zero mean, variance 2·sigma².
    sigma = small_scanner.model.noise_sd_hu("FBP", 2.1)  # above the doses that starve
    inside = small_scanner.object_hu > -900  # clear of the clipping at -1024
    assert abs(difference[inside].mean()) < 0.5
    measured = difference[inside].std() / np.sqrt(2)
    assert 0.5 * sigma < measured < 1.05 * sigma  # the small grid integrates less of the NPS


def _noise_only(recon: str, dose: float, grid: ImageGrid, repetition: int = 1) -> np.ndarray:
    empty = FourierObject(np.zeros(grid.shape_kji, np.float32), grid)
    # The Gaussian noise alone: a water block this size would starve FBP's rays.
    model = AcquisitionModel()
    model = model.with_reconstruction(replace(model.model_for(recon), photon_starvation=None))
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


def _disk_slice(radius_mm: float, pixel_mm: float, size: int, hu: float) -> np.ndarray:
    centre = 0.5 * (size - 1)
    y, x = (np.mgrid[:size, :size] - centre) * pixel_mm
    return np.where(np.hypot(x, y) <= radius_mm, hu, -1000.0).astype(np.float32)


def test_line_integrals_through_a_disk_are_its_chords():
    radius, hu = 30.0, 0.0  # water disk in air
    slice_hu = _disk_slice(radius, 0.25, 321, hu)
    angles = np.radians([0.0, 37.0, 90.0])
    offsets = np.array([0.0, 10.0, -20.0, 28.0])
    paths = line_integrals(attenuation_map(slice_hu), (0.25, 0.25), angles, offsets, step_mm=0.25)
    chords = 2 * np.sqrt(radius**2 - offsets**2) * WATER_ATTENUATION_PER_MM
    assert np.allclose(paths, chords[None, :], rtol=0.03)


def test_filtered_back_projection_recovers_a_disk_in_hu():
    """The streak reconstruction chain (ramp filter, back projection, HU scale) is exact on a disk."""
    radius, hu = 20.0, 500.0
    mu = WATER_ATTENUATION_PER_MM * hu / 1000.0
    shape, pixel = (1, 161, 161), 0.5
    starvation = PhotonStarvation(counts_per_mgy=1.0)
    angles, offsets = ray_geometry(shape[1:], (pixel, pixel), starvation)
    views, channels = np.meshgrid(np.arange(len(angles)), np.arange(len(offsets)), indexing="ij")
    chords = 2 * mu * np.sqrt(np.clip(radius**2 - offsets**2, 0, None))
    sinogram = np.broadcast_to(chords, views.shape).ravel()[None, :]
    image = back_project_hu(
        sinogram, views.ravel(), channels.ravel(), angles, offsets, shape, (pixel, pixel, 1.0), 0.3
    )[0]
    centre = 0.5 * (shape[1] - 1)
    r = np.hypot(*(np.mgrid[: shape[1], : shape[2]] - centre)) * pixel
    assert image[r < radius - 3].mean() == pytest.approx(hu, rel=0.02)
    assert abs(image[(r > radius + 3) & (r < 38)].mean()) < 0.02 * hu


@pytest.mark.parametrize("mean_counts", [100.0, 1000.0, 1e4])
def test_log_of_poisson_counts_overestimates_the_line_integral_by_one_over_two_n(mean_counts):
    """E[ln N̄ − ln N] = 1/(2N̄) + 5/(12N̄²) + … for Poisson counts N; its slope in ln N̄ is the same at leading order."""
    assert expected_log_error(mean_counts) == pytest.approx(1 / (2 * mean_counts), rel=0.01)
    assert log_error_slope(mean_counts) == pytest.approx(1 / (2 * mean_counts), rel=0.02)


def test_electronic_noise_adds_its_variance_to_the_log_bias_and_the_clamp_caps_it():
    sigma = 18.0
    for mean in (5e3, 2e4):
        assert expected_log_error(mean, sigma) == pytest.approx((mean + sigma**2) / (2 * mean**2), rel=0.01)
        # One more unit of line integral multiplies the counts by 1/e: the bias grows by this slope.
        assert log_error_slope(mean, sigma) == pytest.approx((mean + 2 * sigma**2) / (2 * mean**2), rel=0.01)
    # Against the sampled readings, where no series holds: near zero the clamp makes the bias negative.
    rng = np.random.default_rng(3)
    means = np.array([0.5, 5.0, 20.0, 200.0])
    draws = rng.poisson(means, size=(400_000, 4)) + sigma * rng.standard_normal((400_000, 4))
    logs = np.log(np.maximum(draws, 0.5))
    sampled = np.log(means) - logs.mean(axis=0)
    tolerance = 4 * logs.std(axis=0) / np.sqrt(len(logs))
    assert np.all(np.abs(expected_log_error(means, sigma, 0.5) - sampled) < tolerance)
    assert expected_log_error(0.5, sigma, 0.5) < 0 < expected_log_error(20.0, sigma, 0.5)
    assert expected_log_error(means, sigma).shape == means.shape


def test_log_bias_makes_a_disk_in_a_ring_denser_by_the_analytic_gain():
    """A 100 HU disk at the centre of a PMMA ring, in air: every ray through it crosses 16 mm of PMMA.

    The disk lengthens those rays by δ, so their log bias grows by ``slope × δ`` with
    ``slope = (N̄ + 2σ²)/(2N̄²)``: the disk reads ``1100 × slope`` HU denser (first
    order). The exact expected error, reconstructed, is a little more (the bias is convex
    in the path). The ring's own bias is positive in the PMMA and, through the ramp
    filter, negative in the air it encloses.
    """
    pixel, size, dose = 0.5, 201, 0.2
    centre = 0.5 * (size - 1)
    r = np.hypot(*(np.mgrid[:size, :size] - centre)) * pixel
    ring = np.where((r >= 40.0) & (r <= 48.0), 120.0, -1000.0).astype(np.float32)
    with_disk = np.where(r <= 2.5, 100.0, ring).astype(np.float32)
    starvation = PhotonStarvation(counts_per_mgy=1500.0, electronic_noise_counts=18.0, views_per_rotation=360)
    sigma, clamp = starvation.electronic_noise_counts, starvation.clamp_counts
    angles, offsets = ray_geometry(ring.shape, (pixel, pixel), starvation)
    paths = line_integrals(attenuation_map(ring), (pixel, pixel), angles, offsets, step_mm=0.5)
    paths_disk = line_integrals(attenuation_map(with_disk), (pixel, pixel), angles, offsets, step_mm=0.5)
    counts = expected_counts(paths, offsets, dose, starvation)
    assert not starved_readings(counts, paths, starvation).any()
    central_counts = starvation.counts_per_mgy * dose * np.exp(-16.0 * 1.12 * WATER_ATTENUATION_PER_MM)
    analytic_gain = (central_counts + 2 * sigma**2) / (2 * central_counts**2)

    bias_hu, gain = log_bias(paths, angles, offsets, ring.shape, (pixel, pixel), dose, starvation, psf_sigma_mm=0.4)
    inner = r < 1.0
    assert gain[inner].mean() == pytest.approx(analytic_gain, rel=0.05)  # leading order of the exact slope
    assert gain[inner].mean() == pytest.approx(log_error_slope(central_counts, sigma, clamp), rel=0.005)
    assert 1100 * gain[inner].mean() > 9.0  # HU, at 0.2 mGy

    extra = expected_log_error(expected_counts(paths_disk, offsets, dose, starvation), sigma, clamp)
    extra -= expected_log_error(counts, sigma, clamp)
    views, channels = np.meshgrid(np.arange(len(angles)), np.arange(len(offsets)), indexing="ij")
    disk_hu = back_project_hu(
        extra.ravel()[None, :].astype(np.float32),
        views.ravel(),
        channels.ravel(),
        angles,
        offsets,
        (1, size, size),
        (pixel, pixel, 1.0),
        0.4,
        tail_fraction=0.0,
    )[0]
    assert 1.0 < disk_hu[inner].mean() / (1100 * gain[inner].mean()) < 1.25
    assert abs(disk_hu[(r > 6.0) & (r < 30.0)]).max() < 0.05 * disk_hu[inner].mean()  # the gain stays on the disk
    assert bias_hu[(r > 42.0) & (r < 46.0)].mean() > 10.0
    assert bias_hu[r < 30.0].mean() < 0.0


def test_starvation_streaks_follow_the_longest_paths_and_vanish_at_high_dose():
    """A long PMMA bar starves the rays along it: streaks parallel to the bar, only at low dose."""
    pixel = 0.8
    slice_hu = np.full((151, 251), -1000.0, np.float32)
    slice_hu[70:81, 25:226] = 120.0  # 160 mm × 9 mm bar along x
    starvation = PhotonStarvation(counts_per_mgy=1500.0, electronic_noise_counts=27.0)
    angles, offsets = ray_geometry(slice_hu.shape, (pixel, pixel), starvation)
    paths = line_integrals(attenuation_map(slice_hu), (pixel, pixel), angles, offsets)
    shape, spacing = (6, *slice_hu.shape), (pixel, pixel, 1.0)
    rng = np.random.default_rng(1)
    assert starvation_streaks(paths, angles, offsets, shape, spacing, 4.0, starvation, 0.4, rng) is None
    streaks = starvation_streaks(paths, angles, offsets, shape, spacing, 0.2, starvation, 0.4, rng)
    assert streaks is not None and streaks.std() > 5.0
    along_x = np.abs(np.diff(streaks, axis=2)).mean()
    across = np.abs(np.diff(streaks, axis=1)).mean()
    assert across > 3 * along_x


def test_fine_detail_shrinkage_fades_thin_lines_in_air_and_keeps_solid_material():
    grid = ImageGrid((128, 64, 8), (0.5, 0.5, 1.0))
    x = (np.arange(128) - 64) * 0.5
    profile = np.full(128, -1000.0)
    profile += 500.0 * np.exp(-0.5 * ((x + 15) / 0.5) ** 2)  # thin line in air, FWHM 1.2 mm
    profile += np.where(np.abs(x - 12) < 8, 1100.0, 0.0)  # 16 mm wide solid
    profile += 40.0 * np.exp(-0.5 * ((x - 12) / 0.5) ** 2)  # a thin bump inside it
    signal = np.ascontiguousarray(np.broadcast_to(profile.astype(np.float32), grid.shape_kji))
    shrunk = shrink_fine_detail(signal, grid.spacing_mm, 1.0, 100.0)[4, 32]
    thin_peak = np.argmin(np.abs(x + 15))
    assert profile[thin_peak] - shrunk[thin_peak] == pytest.approx(100.0, abs=1.0)  # loses the threshold
    solid = np.abs(x - 12) < 7.5
    assert np.allclose(shrunk[solid], profile[solid], atol=0.01)  # edges, plateau and bump kept
    far = np.abs(x + 15) > 4
    assert np.allclose(shrunk[far & ~solid], profile[far & ~solid], atol=0.01)


def test_starvation_adds_streaks_to_fbp_only_at_the_lowest_doses(small_scanner):
    """IR and DL model the raw-data statistics and show none; FBP's streaks fade with dose."""
    cavity = small_scanner.object_hu < -990
    extra = {}
    for dose in (0.2, 1.0):
        fbp = sitk.GetArrayFromImage(small_scanner.acquire(AcquisitionSettings(dose, "FBP", 1))).astype(float)
        base = DEFAULT_RECONSTRUCTIONS["FBP"]
        plain_model = small_scanner.model.with_reconstruction(replace(base, photon_starvation=None))
        plain = FourierObject(small_scanner.object_hu, small_scanner.grid).acquire(
            plain_model, AcquisitionSettings(dose, "FBP", 1)
        )
        extra[dose] = np.abs(fbp - plain)[cavity].mean()
    assert extra[0.2] > 10.0
    assert extra[1.0] < 0.2 * extra[0.2]
    assert DEFAULT_RECONSTRUCTIONS["IR"].photon_starvation is None
    assert DEFAULT_RECONSTRUCTIONS["DL"].photon_starvation is None
