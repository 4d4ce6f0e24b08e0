"""Straight-cylinder test phantoms with known geometry, blur and correlated noise.

Used to measure vessel-extraction accuracy where the answer is known exactly: each
cylinder has one radius and a random orientation, the image is the analytic
partial-volume object blurred by an isotropic Gaussian point-spread function, plus
Gaussian-correlated noise scaled to a given standard deviation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ImagInfoExtension.geometry import ImageGrid
from ImagInfoExtension.phantom.design import HolderDesign, PhantomDesign, VesselSegment, render_vessels

_FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))


@dataclass(frozen=True)
class CylinderPhantom:
    """A blurred, noisy image of straight cylinders and its design.

    Attributes
    ----------
    image : SimpleITK.Image
        Float32 HU.
    design : PhantomDesign
        The cylinders (as capsule segments); its holder is not part of the image.
    class_volume_ml : dict
        True volume of each radius class.
    """

    image: sitk.Image
    design: PhantomDesign
    class_volume_ml: dict[float, float]


def random_directions(count: int, rng: np.random.Generator) -> np.ndarray:
    """Unit vectors uniformly distributed on the sphere, shape (count, 3)."""
    vectors = rng.normal(size=(count, 3))
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def correlated_noise(
    shape_kji: tuple[int, int, int],
    spacing_kji: Sequence[float],
    noise_sd_hu: float,
    correlation_mm: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Gaussian noise smoothed by a Gaussian of ``correlation_mm`` SD, rescaled to ``noise_sd_hu``."""
    white = rng.standard_normal(shape_kji).astype(np.float32)
    if correlation_mm <= 0:
        return white * np.float32(noise_sd_hu)
    sigma = correlation_mm / np.asarray(spacing_kji, dtype=float)
    field = ndimage.gaussian_filter(white, sigma, mode="wrap", truncate=4.0)
    # The exact variance of a discretely smoothed white field is the sum of the
    # squared kernel weights; measuring the field's SD instead would add sample error.
    unit = np.zeros(shape_kji, dtype=np.float32)
    unit[tuple(n // 2 for n in shape_kji)] = 1.0
    kernel = ndimage.gaussian_filter(unit, sigma, mode="wrap", truncate=4.0)
    return field * np.float32(noise_sd_hu / np.sqrt(float(np.sum(kernel.astype(np.float64) ** 2))))


def make_cylinder_phantom(
    radii_mm: Sequence[float],
    grid: ImageGrid | None = None,
    copies: int = 2,
    length_mm: float = 20.0,
    psf_fwhm_mm: float = 0.8,
    noise_sd_hu: float = 20.0,
    noise_correlation_mm: float = 0.5,
    vessel_hu: float = 100.0,
    background_hu: float = -1000.0,
    seed: int = 0,
) -> CylinderPhantom:
    """Randomly oriented straight cylinders, one per lattice cell, blurred and noisy.

    Parameters
    ----------
    radii_mm : sequence of float
        Radius of each cylinder kind; each appears ``copies`` times.
    grid : ImageGrid, optional
        Any grid (oblique, anisotropic). By default an isotropic 0.6 mm grid around
        the lattice.
    copies : int
        Cylinders per radius.
    length_mm : float
        Centreline length of each cylinder.
    psf_fwhm_mm : float
        Isotropic Gaussian blur.
    noise_sd_hu : float
        Standard deviation of the added noise.
    noise_correlation_mm : float
        SD of the Gaussian that correlates the noise.
    vessel_hu, background_hu : float
        Material values.
    seed : int
        Seed of orientations, placement jitter and noise.
    """
    rng = np.random.default_rng(seed)
    radii = [float(r) for r in radii_mm for _ in range(copies)]
    cell_mm = length_mm + 2 * max(radii) + 6.0
    count = len(radii)
    side = int(np.ceil(count ** (1 / 3)))
    layers = int(np.ceil(count / side**2))
    directions = random_directions(count, rng)
    order = rng.permutation(count)
    segments = []
    for number, radius_index in enumerate(order):
        cell = np.array([number % side, (number // side) % side, number // side**2], dtype=float)
        centre = (cell + 0.5) * cell_mm + rng.uniform(-1.0, 1.0, 3)
        half = 0.5 * length_mm * directions[number]
        segments.append(
            VesselSegment(
                id=number,
                radius_mm=radii[radius_index],
                start_mm=tuple(centre - half),
                end_mm=tuple(centre + half),
            )
        )
    design = PhantomDesign(
        segments=tuple(segments),
        holder=HolderDesign(),
        vessel_hu=vessel_hu,
        background_hu=background_hu,
    )
    if grid is None:
        upper = np.array([side, side, layers], dtype=float) * cell_mm
        grid = ImageGrid.covering_box(np.zeros(3), upper, (0.6, 0.6, 0.6))
    rendering = render_vessels(design, grid, subsamples=6)
    spacing_kji = np.asarray(grid.spacing_mm, dtype=float)[::-1]
    image = background_hu + rendering.fraction * np.float32(vessel_hu - background_hu)
    if psf_fwhm_mm > 0:
        image = ndimage.gaussian_filter(image, psf_fwhm_mm / _FWHM_PER_SIGMA / spacing_kji, truncate=4.0)
    if noise_sd_hu > 0:
        image = image + correlated_noise(grid.shape_kji, spacing_kji, noise_sd_hu, noise_correlation_mm, rng)
    volumes = {radius: volume / 1000.0 for radius, volume in rendering.class_volume_mm3.items()}
    return CylinderPhantom(image=grid.to_sitk(image.astype(np.float32)), design=design, class_volume_ml=volumes)
