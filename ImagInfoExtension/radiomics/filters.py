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


def log_filter(image: sitk.Image, sigma_mm: float) -> sitk.Image:
    """Laplacian of Gaussian of width ``sigma_mm`` (mm), scale-normalised by σ².

    The Gaussian's width is given in mm and converted per axis with the spacing, so
    anisotropic voxels get an isotropic filter. Borders are mirrored.
    """
    if not sigma_mm > 0:
        raise ValueError(f"LoG sigma {sigma_mm} mm must be > 0")
    array = sitk.GetArrayFromImage(image).astype(np.float64)
    sigma_voxels = [sigma_mm / s for s in image.GetSpacing()[::-1]]
    response = ndimage.gaussian_laplace(array, sigma=sigma_voxels, mode="mirror") * sigma_mm**2
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
