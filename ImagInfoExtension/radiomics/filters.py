"""Image filters for derived image types: Laplacian of Gaussian and undecimated wavelets.

Both work in physical units on the image's own grid and keep its geometry, so the
ROI masks apply to the response maps unchanged.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

#: Decomposition filters (low pass) of the wavelets offered; the high pass is the
#: quadrature mirror of the low pass.
WAVELET_LOW_PASS = {
    "haar": np.array([1.0, 1.0]) / np.sqrt(2.0),
    "coif1": np.array(
        [
            -0.01565572813546454,
            -0.0727326195128539,
            0.38486484686420286,
            0.8525720202122554,
            0.3378976624578092,
            -0.0727326195128539,
        ]
    ),
}


def gaussian_kernels(sigma_voxels: float, truncate: float = 4.0) -> tuple[np.ndarray, np.ndarray]:
    """A sampled Gaussian and its second derivative, truncated at ``truncate`` σ.

    The smoothing kernel sums to 1. The second-derivative kernel is corrected so that
    it sums to 0 and its second moment is exactly 2: it then gives 0 on constants and
    lines and exactly 2 on a parabola, which a merely sampled derivative does not (off
    by 2-5 % at σ of a few voxels, and varying with position).
    """
    radius = max(1, int(np.ceil(truncate * sigma_voxels)))
    offsets = np.arange(-radius, radius + 1, dtype=float)
    smooth = np.exp(-0.5 * (offsets / sigma_voxels) ** 2)
    smooth /= smooth.sum()
    second = smooth * (offsets**2 - sigma_voxels**2) / sigma_voxels**4
    second -= second.sum() * smooth
    second *= 2.0 / float((offsets**2 * second).sum())
    return smooth, second


def log_filter(image: sitk.Image, sigma_mm: float) -> sitk.Image:
    """Laplacian of Gaussian of width ``sigma_mm`` (mm), scale-normalised by σ².

    The Gaussian's width is given in mm and converted per axis with the spacing, so
    anisotropic voxels get an isotropic filter, and each axis's second derivative is
    taken in mm. Separable kernels truncated at 4σ (:func:`gaussian_kernels`); borders
    are mirrored.
    """
    if not sigma_mm > 0:
        raise ValueError(f"LoG sigma {sigma_mm} mm must be > 0")
    array = sitk.GetArrayFromImage(image).astype(np.float64)
    spacing_kji = image.GetSpacing()[::-1]
    kernels = [gaussian_kernels(sigma_mm / s) for s in spacing_kji]
    response = np.zeros_like(array)
    for axis, spacing in enumerate(spacing_kji):
        term = array
        for other, (smooth, second) in enumerate(kernels):
            term = ndimage.correlate1d(term, second if other == axis else smooth, axis=other, mode="mirror")
        # The second derivative along an axis in voxels is spacing² times the one in mm.
        response += term / spacing**2
    response *= sigma_mm**2
    filtered = sitk.GetImageFromArray(response)
    filtered.CopyInformation(image)
    return filtered


def _high_pass(low: np.ndarray) -> np.ndarray:
    signs = (-1.0) ** np.arange(low.size)
    return (low[::-1] * signs).astype(float)


def wavelet_bands(image: sitk.Image, wavelet: str = "coif1") -> Iterator[tuple[str, sitk.Image]]:
    """The 8 first-level sub-bands of an undecimated (stationary) separable wavelet.

    Yields
    ------
    name, image
        ``"LLH"`` … ``"HHH"``: the letters give the filter along x, y and z (L low
        pass, H high pass), as pyradiomics names them; each band has the input's grid.
    """
    if wavelet not in WAVELET_LOW_PASS:
        raise ValueError(f"wavelet '{wavelet}' is not offered; use one of {', '.join(WAVELET_LOW_PASS)}")
    low = WAVELET_LOW_PASS[wavelet]
    kernels = {"L": low, "H": _high_pass(low)}
    array = sitk.GetArrayFromImage(image).astype(np.float64)
    for letters in itertools.product("LH", repeat=3):
        band = array
        # Array axes are (z, y, x); letters are (x, y, z).
        for axis, letter in zip((2, 1, 0), letters):
            band = ndimage.convolve1d(band, kernels[letter], axis=axis, mode="wrap")
        filtered = sitk.GetImageFromArray(band)
        filtered.CopyInformation(image)
        yield "".join(letters), filtered
