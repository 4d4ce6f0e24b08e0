"""Derived image types: Laplacian of Gaussian and undecimated wavelets, against analytic answers."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from ImagInfoExtension.radiomics.extract import extract_features
from ImagInfoExtension.radiomics.filters import log_filter, wavelet_bands
from ImagInfoExtension.radiomics.settings import load_preset


def _image(array: np.ndarray, spacing=(0.8, 0.6, 1.5)) -> sitk.Image:
    image = sitk.GetImageFromArray(array.astype(np.float64))
    image.SetSpacing(spacing)
    return image


def test_log_of_a_quadratic_is_its_laplacian_times_sigma_squared_on_any_spacing():
    spacing = (0.8, 0.6, 1.5)  # x, y, z
    k, j, i = np.indices((40, 56, 50)).astype(float)
    x, y, z = i * spacing[0], j * spacing[1], k * spacing[2]
    # ∇²(x² + 2y² + 3z²) = 2 + 4 + 6 = 12 mm⁻², in physical units whatever the voxel size;
    # the moment-corrected kernels make this exact, not merely close.
    response = sitk.GetArrayFromImage(log_filter(_image(x**2 + 2 * y**2 + 3 * z**2, spacing), 3.0))
    interior = response[16:-16, 22:-22, 18:-18]  # clear of the 4σ kernels' reach into the mirrored borders
    assert interior == pytest.approx(12.0 * 3.0**2, rel=1e-9)
    flat = sitk.GetArrayFromImage(log_filter(_image(np.full((10, 10, 10), 7.0)), 2.0))
    assert np.abs(flat).max() < 1e-9
    with pytest.raises(ValueError, match="must be > 0"):
        log_filter(_image(np.zeros((4, 4, 4))), 0.0)


@pytest.mark.parametrize("wavelet", ["haar", "coif1"])
def test_undecimated_wavelet_bands_keep_the_energy_and_the_mean(wavelet):
    rng = np.random.default_rng(1)
    array = rng.normal(size=(12, 14, 16))
    bands = dict(wavelet_bands(_image(array), wavelet))
    assert sorted(bands) == sorted(a + b + c for a in "LH" for b in "LH" for c in "LH")
    # Orthonormal filter pairs: |L|² + |H|² = 2 per axis, so the 8 bands hold 2³ times the energy.
    energy = sum(float((sitk.GetArrayViewFromImage(b) ** 2).sum()) for b in bands.values())
    assert energy == pytest.approx(8 * float((array**2).sum()), rel=1e-10)
    constant = dict(wavelet_bands(_image(np.full((6, 6, 6), 3.0)), wavelet))
    assert sitk.GetArrayViewFromImage(constant["LLL"]) == pytest.approx(3.0 * 2**1.5)
    assert np.abs(sitk.GetArrayViewFromImage(constant["HHH"])).max() < 1e-12
    assert bands["LLH"].GetSpacing() == (0.8, 0.6, 1.5)


def test_derived_image_types_give_their_own_rows_without_shape_features():
    rng = np.random.default_rng(2)
    image = _image(rng.normal(50, 10, (16, 20, 20)).round())
    labels = sitk.GetImageFromArray(np.pad(np.ones((8, 10, 10), np.uint8), ((4, 4), (5, 5), (5, 5))))
    labels.CopyInformation(image)
    settings = load_preset("ct").with_changes(
        resampled_spacing_mm=None,
        families=("morph", "stat", "cm"),
        image_types={"Original": {}, "LoG": {"sigma_mm": [1.0, 2.5]}, "Wavelet": {"wavelet": "haar"}},
    )
    frame = extract_features(image, labels, settings).frame()
    types = frame.groupby("image_type")["feature_class"].agg(set).to_dict()
    assert set(types) == {"original", "log-sigma-1-mm", "log-sigma-2-5-mm"} | {
        f"wavelet-{a}{b}{c}" for a in "LH" for b in "LH" for c in "LH"
    }
    assert types["original"] == {"morphology", "intensity_statistics", "glcm"}
    assert all(classes == {"intensity_statistics", "glcm"} for name, classes in types.items() if name != "original")
    log_mean = frame.query("image_type == 'log-sigma-1-mm' and feature == 'stat_mean'")["value"].iloc[0]
    expected = sitk.GetArrayViewFromImage(log_filter(image, 1.0))[4:12, 5:15, 5:15].mean()
    assert log_mean == pytest.approx(expected)
