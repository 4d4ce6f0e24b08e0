"""The segmentation measurement plugin and the robustness study: noise, blur, design, runs end to end."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from ImagInfoExtension.segmentation import robustness
from ImagInfoExtension.segmentation.robustness import (
    DoseReference,
    dose_noise_sd_hu,
    gaussian_blur,
    noise_spectrum,
    perturb_image,
    perturbation_design,
)

FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))


def _image(array_kji: np.ndarray, spacing_ijk=(0.7, 0.7, 1.0), origin=(0.0, 0.0, 0.0)) -> sitk.Image:
    image = sitk.GetImageFromArray(array_kji)
    image.SetSpacing(spacing_ijk)
    image.SetOrigin(origin)
    return image


# --------------------------------------------------------------------------- noise insertion


def _measured_nps(noise: np.ndarray, spacing_ji):
    from ImagInfoExtension.imagequality import noise_power_spectrum, place_square_rois

    rois = place_square_rois(np.ones(noise.shape, dtype=bool), max_size_px=64)
    return noise_power_spectrum(noise, spacing_ji, rois)


@pytest.fixture(scope="module")
def nps_csv(tmp_path_factory):
    """A radial NPS peaking at 0.25 mm⁻¹ (a ramp times a Gaussian), as a CSV."""
    frequency = np.linspace(0.0, 1.0, 201)
    ratio = frequency / 0.25
    path = tmp_path_factory.mktemp("nps") / "nps.csv"
    pd.DataFrame({"frequency_per_mm": frequency, "nps": (ratio * np.exp(0.5 * (1 - ratio**2))) ** 2}).to_csv(
        path, index=False
    )
    return path


@pytest.mark.parametrize("choice", ["phantom", "phantom:IR", "white", "csv"])
def test_inserted_noise_has_the_sd_and_the_nps_peak_asked_for(choice, nps_csv):
    nps = str(nps_csv) if choice == "csv" else choice
    spectrum = noise_spectrum(nps)
    zeros = _image(np.zeros((24, 128, 128), dtype=np.float32))
    noisy = perturb_image(zeros, noise_sd_hu=20.0, nps=nps, seed=3)
    noise = sitk.GetArrayFromImage(noisy)
    assert noise.dtype == np.float32
    assert abs(noise.std() / 20.0 - 1) < 0.05
    measured = _measured_nps(noise, (0.7, 0.7))
    # The NPS integrates to the (detrended) pixel variance.
    assert abs(measured.variance_hu2 / noise.var() - 1) < 0.05
    if spectrum.peak_frequency_per_mm is None:
        # White noise: flat, so its power at low and high frequency agree.
        low, high = measured.at(np.array([0.15, 0.6]))
        assert abs(low / high - 1) < 0.15
    else:
        step = measured.frequency_per_mm[1] - measured.frequency_per_mm[0]
        assert abs(measured.peak_frequency_per_mm - spectrum.peak_frequency_per_mm) < 1.5 * step
    expected = {"phantom": 0.32, "phantom:IR": 0.22, "csv": 0.25, "white": None}[choice]
    assert spectrum.peak_frequency_per_mm == pytest.approx(expected)


def test_noise_is_deterministic_and_levels_share_one_realisation():
    zeros = _image(np.zeros((8, 32, 32), dtype=np.int16))
    first = sitk.GetArrayFromImage(perturb_image(zeros, noise_sd_hu=10.0, nps="white", seed=1, repetition=2))
    again = sitk.GetArrayFromImage(perturb_image(zeros, noise_sd_hu=10.0, nps="white", seed=1, repetition=2))
    double = sitk.GetArrayFromImage(perturb_image(zeros, noise_sd_hu=20.0, nps="white", seed=1, repetition=2))
    other = sitk.GetArrayFromImage(perturb_image(zeros, noise_sd_hu=10.0, nps="white", seed=1, repetition=3))
    np.testing.assert_array_equal(first, again)
    np.testing.assert_allclose(double, 2 * first, rtol=1e-6, atol=1e-4)
    assert np.corrcoef(first.ravel(), other.ravel())[0, 1] < 0.1


def test_low_dose_is_simulated_by_the_noise_its_variance_law_needs():
    # σ(d)² = σ_ref² d_ref / d: from 4 mGy and 10 HU to 1 mGy, 30 HU² ... 100·(4 − 1) = 300 HU² added.
    assert dose_noise_sd_hu(1.0, 4.0, 10.0) == pytest.approx(10 * math.sqrt(3))
    assert dose_noise_sd_hu(4.0, 4.0, 10.0) == 0.0
    with pytest.raises(ValueError, match="only lowers the dose"):
        dose_noise_sd_hu(8.0, 4.0, 10.0)
    zeros = _image(np.zeros((16, 64, 64), dtype=np.float32))
    reference = DoseReference(dose_mgy=4.0, noise_sd_hu=10.0)
    noisy = perturb_image(zeros, noise_sd_hu=5.0, dose_mgy=1.0, nps="white", dose_reference=reference)
    expected = math.sqrt(5.0**2 + 300.0)
    assert abs(sitk.GetArrayViewFromImage(noisy).std() / expected - 1) < 0.03
    with pytest.raises(ValueError, match="reference_dose_mgy"):
        perturb_image(zeros, dose_mgy=1.0, nps="white")


def test_bad_nps_choices_are_named(tmp_path):
    with pytest.raises(ValueError, match="neither 'phantom'"):
        noise_spectrum(tmp_path / "missing.csv")
    with pytest.raises(ValueError, match="unknown reconstruction"):
        noise_spectrum("phantom:XYZ")
    bad = tmp_path / "bad.csv"
    bad.write_text("frequency,power\n0,1\n0.5,2\n")
    with pytest.raises(ValueError, match="lacks the column"):
        noise_spectrum(bad)
    bad.write_text("frequency_per_mm,nps\n0.5,1\n0.2,2\n")
    with pytest.raises(ValueError, match="increase"):
        noise_spectrum(bad)
    high = tmp_path / "high.csv"
    high.write_text("frequency_per_mm,nps\n5,1\n6,1\n")
    with pytest.raises(ValueError, match="no power below"):
        perturb_image(_image(np.zeros((4, 16, 16), np.float32)), noise_sd_hu=5.0, nps=high)


# --------------------------------------------------------------------------- blur


def test_blur_of_a_point_has_the_gaussian_variance_in_mm_on_anisotropic_voxels():
    spacing_ijk = (0.4, 0.5, 0.6)
    point = np.zeros((41, 41, 41), dtype=np.float32)
    point[20, 20, 20] = 1.0
    fwhm = 2.0
    blurred = gaussian_blur(point, spacing_ijk[::-1], fwhm).astype(np.float64)
    assert blurred.sum() == pytest.approx(1.0, abs=1e-5)
    sigma_sq = (fwhm / FWHM_PER_SIGMA) ** 2
    for axis, spacing in enumerate(spacing_ijk[::-1]):
        profile = blurred.sum(axis=tuple(a for a in range(3) if a != axis))
        x_mm = (np.arange(41) - 20) * spacing
        assert np.sum(profile * x_mm**2) == pytest.approx(sigma_sq, rel=0.01)


def test_blurred_edge_is_as_wide_as_the_gaussian_says():
    # A step along i on fine voxels: its 10–90 % rise is 2·1.2816·σ.
    spacing_kji = (1.0, 1.0, 0.025)
    step = np.zeros((4, 4, 800), dtype=np.float32)
    step[..., 400:] = 100.0
    for fwhm in (0.5, 1.0, 2.0):
        profile = gaussian_blur(step, spacing_kji, fwhm)[2, 2].astype(float) / 100.0
        x_mm = np.arange(800) * 0.025
        ten, ninety = np.interp([0.1, 0.9], profile, x_mm)
        assert ninety - ten == pytest.approx(2 * 1.2815516 * fwhm / FWHM_PER_SIGMA, rel=0.01)
        # The mirrored padding keeps the ends flat: nothing wraps around.
        assert profile[0] == pytest.approx(0.0, abs=1e-4) and profile[-1] == pytest.approx(1.0, abs=1e-4)
    np.testing.assert_array_equal(gaussian_blur(step, spacing_kji, 0.0), step)


# --------------------------------------------------------------------------- the design


def test_design_varies_each_factor_alone_or_the_whole_grid():
    levels = {"noise_sd_hu": [0, 10, 20, 40], "blur_fwhm_mm": [0, 0.5, 1, 2]}
    alone = perturbation_design(levels, repetitions=2)
    assert list(alone.columns) == ["noise_sd_hu", "blur_fwhm_mm", "repetition"]
    # Baseline once (no noise: deterministic), 3 noise levels × 2 realisations, 3 blurs once.
    assert len(alone) == 1 + 3 * 2 + 3
    assert ((alone["noise_sd_hu"] > 0) & (alone["blur_fwhm_mm"] > 0)).sum() == 0
    grid = perturbation_design(levels, design="grid", repetitions=2)
    assert len(grid) == 4 + 12 * 2
    # The baseline is always there, even when the levels leave it out.
    assert len(perturbation_design({"noise_sd_hu": [10]})) == 2
    dose = perturbation_design({"dose_mgy": [1, 2]}, dose_reference=DoseReference(4.0, 10.0))
    assert sorted(dose["dose_mgy"]) == [1.0, 2.0, 4.0]


@pytest.mark.parametrize(
    ("perturbations", "options", "message"),
    [
        ({"noise": [0, 10]}, {}, "unknown perturbation 'noise'; use noise_sd_hu, blur_fwhm_mm, dose_mgy"),
        ({"noise_sd_hu": [0, -10]}, {}, "noise_sd_hu: level -10 is not a non-negative number"),
        ({"blur_fwhm_mm": []}, {}, "give a list of levels"),
        ({"blur_fwhm_mm": [0, "x"]}, {}, "not all numbers"),
        ({"dose_mgy": [1]}, {}, "need the image's own dose"),
        ({"dose_mgy": [8]}, {"dose_reference": DoseReference(4.0, 10.0)}, "only lowers the dose"),
        ({}, {}, "no perturbation given"),
        ({"noise_sd_hu": [10]}, {"design": "random"}, "unknown design 'random'"),
        ({"noise_sd_hu": [10]}, {"repetitions": 0}, "repetitions must be a whole number"),
    ],
)
def test_bad_designs_are_refused_with_the_fix(perturbations, options, message):
    with pytest.raises(ValueError, match=_escaped(message)):
        perturbation_design(perturbations, **options)


def _escaped(text: str) -> str:
    import re

    return re.escape(text)


assert robustness.PERTURBATIONS == ("noise_sd_hu", "blur_fwhm_mm", "dose_mgy")
