"""TG-233 image-quality metrics against analytic noise, blur and detectability."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from scipy.integrate import trapezoid

from ImagInfoExtension.imagequality import (
    ObserverParameters,
    SquareRois,
    detectability_index,
    disk_task_spectrum,
    fit_disk_centres,
    noise_power_spectrum,
    noise_sd_hu,
    place_square_rois,
    task_transfer_function,
)

PIXEL_MM = 0.5
PEAK_PER_MM = 0.35
SIGMA_PSF_MM = 0.6


def _band_pass(shape: tuple[int, int]) -> np.ndarray:
    """|H(f)| = f exp(-f²/(2 s²)): the NPS ∝ f² exp(-f²/s²) peaks at f = s."""
    fy = np.fft.fftfreq(shape[0], PIXEL_MM)[:, None]
    fx = np.fft.fftfreq(shape[1], PIXEL_MM)[None, :]
    f = np.hypot(fy, fx)
    return f * np.exp(-(f**2) / (2 * PEAK_PER_MM**2))


def _textured_noise(slices: int, size: int, sd_hu: float, seed: int = 0) -> tuple[np.ndarray, float]:
    """Stationary noise with a known NPS; returns it and the white-noise variance scale."""
    rng = np.random.default_rng(seed)
    h = _band_pass((size, size))
    white = rng.standard_normal((slices, size, size))
    noise = np.real(np.fft.ifft2(np.fft.fft2(white) * h))
    scale = sd_hu / np.sqrt(np.mean(h**2))
    return noise * scale, scale**2


def _analytic_nps(f: np.ndarray, white_variance: float) -> np.ndarray:
    return white_variance * PIXEL_MM**2 * (f * np.exp(-(f**2) / (2 * PEAK_PER_MM**2))) ** 2


@pytest.fixture(scope="module")
def noise_image():
    image, white_variance = _textured_noise(24, 256, 20.0)
    rois = place_square_rois(np.ones(image.shape, bool), max_count=24 * 16)
    return image + 120.0, white_variance, rois


def test_rois_fill_the_region_without_overlap():
    region = np.zeros((3, 100, 100), bool)
    region[:, 10:50, 20:90] = True
    rois = place_square_rois(region, max_size_px=64, min_count=6)
    assert rois.size_px == 34  # two squares of 34 fit across 70 pixels on each of 3 slices; 36 gives one
    mask = rois.mask(region.shape)
    assert mask.sum() == len(rois) * rois.size_px**2  # no overlap
    assert not (mask & ~region).any()
    with pytest.raises(ValueError, match="uniform region"):
        place_square_rois(region[:, :12, :], min_count=30)


def test_noise_sd_within_5_percent(noise_image):
    image, _, rois = noise_image
    assert rois.size_px == 64
    assert noise_sd_hu(image, rois) == pytest.approx(20.0, rel=0.05)


def test_nps_peak_and_integral(noise_image):
    image, white_variance, rois = noise_image
    nps = noise_power_spectrum(image, (PIXEL_MM, PIXEL_MM), rois)
    assert abs(nps.peak_frequency_per_mm - PEAK_PER_MM) <= 0.03
    assert nps.variance_hu2 == pytest.approx(np.var(image), rel=0.05)
    # The radial NPS follows the analytic one where it carries power.
    f = nps.frequency_per_mm
    analytic = _analytic_nps(f, white_variance)
    strong = analytic > 0.2 * analytic.max()
    np.testing.assert_allclose(nps.nps_hu2_mm2[strong], analytic[strong], rtol=0.15)


def _blurred_disk(radius_mm: float, contrast_hu: float, sigma_mm: float, size: int, slices: int, seed: int):
    """Point samples of a Gaussian-blurred disk, computed on an 8x finer grid."""
    fine = 8
    coordinates = (np.arange(size * fine) - (size * fine - 1) / 2) * PIXEL_MM / fine
    y, x = np.meshgrid(coordinates + 0.13, coordinates - 0.21, indexing="ij")
    disk = (np.hypot(y, x) <= radius_mm).astype(float) * contrast_hu
    blurred = ndimage.gaussian_filter(disk, sigma_mm / (PIXEL_MM / fine))[fine // 2 :: fine, fine // 2 :: fine]
    rng = np.random.default_rng(seed)
    return blurred[None] - 1000.0 + rng.normal(0, 5.0, (slices, size, size))


def test_ttf50_of_a_gaussian_blurred_disk():
    image = _blurred_disk(8.0, 1100.0, SIGMA_PSF_MM, 80, 12, 1)
    spacing = (1.0, PIXEL_MM, PIXEL_MM)
    centres = fit_disk_centres(image > -450, spacing)
    ttf = task_transfer_function(image, spacing, centres, 8.0)
    analytic_ttf50 = np.sqrt(np.log(2) / (2 * np.pi**2)) / SIGMA_PSF_MM
    analytic_ttf10 = np.sqrt(np.log(10) / (2 * np.pi**2)) / SIGMA_PSF_MM
    assert ttf.ttf50_per_mm == pytest.approx(analytic_ttf50, rel=0.05)
    assert ttf.ttf10_per_mm == pytest.approx(analytic_ttf10, rel=0.07)
    assert ttf.contrast_hu == pytest.approx(1100.0, rel=0.02)
    assert ttf.edge_radius_mm == pytest.approx(8.0, abs=0.1)


def test_ttf_is_robust_to_air_clipping():
    image = _blurred_disk(8.0, 1100.0, SIGMA_PSF_MM, 80, 12, 2)
    image += np.random.default_rng(3).normal(0, 60.0, image.shape)
    clipped = np.maximum(image, -1024.0)
    spacing = (1.0, PIXEL_MM, PIXEL_MM)
    ttf = task_transfer_function(clipped, spacing, fit_disk_centres(clipped > -450, spacing), 8.0)
    analytic_ttf50 = np.sqrt(np.log(2) / (2 * np.pi**2)) / SIGMA_PSF_MM
    assert ttf.ttf50_per_mm == pytest.approx(analytic_ttf50, rel=0.08)


def test_detectability_matches_its_analytic_value(noise_image):
    image, white_variance, rois = noise_image
    nps = noise_power_spectrum(image, (PIXEL_MM, PIXEL_MM), rois)
    edge = _blurred_disk(8.0, 1100.0, SIGMA_PSF_MM, 80, 12, 4)
    spacing = (1.0, PIXEL_MM, PIXEL_MM)
    ttf = task_transfer_function(edge, spacing, fit_disk_centres(edge > -450, spacing), 8.0)
    observer = ObserverParameters()
    measured = detectability_index(ttf, nps, task_radius_mm=1.5, task_contrast_hu=50.0, observer=observer)

    f = np.linspace(0, nps.frequency_per_mm[-1], 4096)
    w2t2 = disk_task_spectrum(f, 1.5, 50.0) ** 2 * np.exp(-2 * (np.pi * SIGMA_PSF_MM * f) ** 2) ** 2
    noise = _analytic_nps(f, white_variance)
    ring = 2 * np.pi * f
    npw = np.sqrt(trapezoid(w2t2 * ring, f) ** 2 / trapezoid(w2t2 * noise * ring, f))
    eye = observer.eye_filter(f)
    npwe = np.sqrt(trapezoid(w2t2 * eye**2 * ring, f) ** 2 / trapezoid(w2t2 * noise * eye**4 * ring, f))
    assert measured.npw == pytest.approx(npw, rel=0.10)
    assert measured.npwe == pytest.approx(npwe, rel=0.10)
    # More contrast, more detectability, in proportion.
    double = detectability_index(ttf, nps, task_radius_mm=1.5, task_contrast_hu=100.0, observer=observer)
    assert double.npw == pytest.approx(2 * measured.npw, rel=1e-9)


def test_square_rois_mask_round_trip():
    rois = SquareRois(4, np.array([[0, 1, 2], [1, 0, 0]]))
    assert rois.mask((2, 8, 8)).sum() == 32
