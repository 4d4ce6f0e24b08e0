"""Multiscale Hessian vesselness (Frangi, bright tubes) in physical units, block by block.

The Hessian is formed only where it can matter: at voxels of the region whose smoothed
value stands clearly above the background at that scale. Everywhere else a bright tube
is impossible, so the eigen-analysis, which dominates the cost of a dense filter, is
skipped there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ImagInfoExtension.progress import ProgressCallback

#: Gaussian kernels are cut at this many standard deviations.
GAUSSIAN_TRUNCATE = 3.0


@dataclass(frozen=True)
class VesselnessParameters:
    """Frangi's measure for bright tubes.

    Parameters
    ----------
    scales_mm : sequence of float
        Gaussian standard deviations in mm.
    alpha, beta : float
        Plate-versus-line and blob-versus-line sensitivities.
    structureness_fraction : float
        Frangi's ``c`` as a fraction of the vessel contrast: the σ²-normalised Hessian
        of a tube at its own scale has a norm of about a quarter to a half of the
        contrast, so 0.15 keeps the measure near 1 on any visible vessel while
        suppressing noise.
    candidate_sigmas : float
        A voxel is analysed at a scale only if its smoothed value exceeds the region's
        background median by this many robust standard deviations of the smoothed
        background.
    block_slices : int
        Slices (along the array's first axis) processed at once; bounds memory.
    """

    scales_mm: tuple[float, ...]
    alpha: float = 0.5
    beta: float = 0.5
    structureness_fraction: float = 0.05
    candidate_sigmas: float = 3.0
    block_slices: int = 48

    def __post_init__(self) -> None:
        if not self.scales_mm or min(self.scales_mm) <= 0:
            raise ValueError("vesselness scales must be positive millimetres, e.g. 0.5,1,2")
        if self.block_slices < 1:
            raise ValueError("block_slices must be at least 1")


def scales_for_radii(radii_mm: Sequence[float], spacing_mm: Sequence[float], count: int = 5) -> tuple[float, ...]:
    """Scales (mm) whose tube responses peak across the given radii.

    The σ²-normalised Hessian of a solid cylinder of radius r peaks near σ = r / √3;
    scales below half the finest voxel spacing only amplify noise, so they are raised
    to it.

    Parameters
    ----------
    radii_mm : sequence of float
        Radii to be measured.
    spacing_mm : sequence of float
        Voxel spacing.
    count : int
        Number of logarithmically spaced scales.
    """
    finest = 0.5 * float(min(spacing_mm))
    low = max(finest, min(radii_mm) / np.sqrt(3.0))
    high = max(low, max(radii_mm) / np.sqrt(3.0))
    if high / low < 1.05:
        return (round(low, 4),)
    return tuple(round(float(s), 4) for s in np.geomspace(low, high, count))


def symmetric_eigenvalues(hessian: np.ndarray) -> np.ndarray:
    """Eigenvalues of symmetric 3×3 matrices, sorted by increasing magnitude.

    Parameters
    ----------
    hessian : ndarray, shape (6, N)
        Rows ``xx, yy, zz, xy, xz, yz``.

    Returns
    -------
    ndarray, shape (3, N)
        ``λ1, λ2, λ3`` with ``|λ1| ≤ |λ2| ≤ |λ3|``.
    """
    a11, a22, a33, a12, a13, a23 = hessian.astype(np.float64)
    q = (a11 + a22 + a33) / 3.0
    p1 = a12 * a12 + a13 * a13 + a23 * a23
    b11, b22, b33 = a11 - q, a22 - q, a33 - q
    p = np.sqrt((b11 * b11 + b22 * b22 + b33 * b33 + 2.0 * p1) / 6.0)
    safe = np.where(p > 0, p, 1.0)
    det = b11 * (b22 * b33 - a23 * a23) - a12 * (a12 * b33 - a23 * a13) + a13 * (a12 * a23 - b22 * a13)
    r = np.clip(det / (2.0 * safe**3), -1.0, 1.0)
    phi = np.arccos(r) / 3.0
    e1 = q + 2.0 * p * np.cos(phi)
    e3 = q + 2.0 * p * np.cos(phi + 2.0 * np.pi / 3.0)
    e2 = 3.0 * q - e1 - e3
    values = np.stack([e1, e2, e3])
    order = np.argsort(np.abs(values), axis=0)
    return np.take_along_axis(values, order, axis=0)


def frangi_bright_tubes(eigenvalues: np.ndarray, alpha: float, beta: float, c: float) -> np.ndarray:
    """Frangi's vesselness from magnitude-sorted eigenvalues (bright tubes: λ2, λ3 < 0)."""
    l1, l2, l3 = eigenvalues
    abs2, abs3 = np.abs(l2), np.abs(l3)
    with np.errstate(divide="ignore", invalid="ignore"):
        ra = abs2 / abs3
        rb = np.abs(l1) / np.sqrt(abs2 * abs3)
    s2 = l1 * l1 + l2 * l2 + l3 * l3
    value = (1.0 - np.exp(-(ra * ra) / (2 * alpha * alpha))) * np.exp(-(rb * rb) / (2 * beta * beta))
    value *= 1.0 - np.exp(-s2 / (2 * c * c))
    value = np.where((l2 < 0) & (l3 < 0) & np.isfinite(value), value, 0.0)
    return value.astype(np.float32)


def _hessian_at(smoothed: np.ndarray, flat_index: np.ndarray, spacing_kji: np.ndarray) -> np.ndarray:
    """Central-difference Hessian (rows xx, yy, zz, xy, xz, yz in array-axis order) at voxels."""
    f = smoothed.ravel()
    strides = np.array([smoothed.shape[1] * smoothed.shape[2], smoothed.shape[2], 1])
    centre = f[flat_index].astype(np.float64)
    rows = []
    for axis in range(3):
        step = strides[axis]
        rows.append((f[flat_index + step] - 2.0 * centre + f[flat_index - step]) / spacing_kji[axis] ** 2)
    for a, b in ((0, 1), (0, 2), (1, 2)):
        sa, sb = strides[a], strides[b]
        value = f[flat_index + sa + sb] - f[flat_index + sa - sb] - f[flat_index - sa + sb] + f[flat_index - sa - sb]
        rows.append(value / (4.0 * spacing_kji[a] * spacing_kji[b]))
    return np.stack(rows)


def _robust_level(values: np.ndarray) -> tuple[float, float]:
    """Median and MAD-based standard deviation."""
    median = float(np.median(values))
    return median, 1.4826 * float(np.median(np.abs(values - median)))


def vesselness(
    image: np.ndarray,
    spacing_kji: Sequence[float],
    parameters: VesselnessParameters,
    contrast_hu: float,
    mask: np.ndarray | None = None,
    progress: ProgressCallback | None = None,
) -> np.ndarray:
    """Maximum over scales of the σ²-normalised Frangi measure for bright tubes.

    Parameters
    ----------
    image : ndarray, ``[k, j, i]``
        Intensities in HU.
    spacing_kji : sequence of float
        Voxel spacing along the array axes, in mm (anisotropy is respected).
    parameters : VesselnessParameters
    contrast_hu : float
        Expected vessel-to-background contrast; sets Frangi's ``c``.
    mask : ndarray of bool, optional
        Where to compute; zero elsewhere.
    progress : callable, optional
        ``progress(done, total, message)`` after each block and scale.

    Returns
    -------
    ndarray of float32 in [0, 1], same shape as ``image``.
    """
    if image.ndim != 3:
        raise ValueError(f"vesselness needs a 3D image; got {image.ndim} dimensions")
    spacing = np.asarray(spacing_kji, dtype=float)
    shape = image.shape
    output = np.zeros(shape, dtype=np.float32)
    if mask is None:
        mask = np.ones(shape, dtype=bool)
    # Background level per scale, from a sparse sample of the region (the smoothed noise
    # shrinks with scale, so the candidate threshold must follow it).
    sample_step = max(1, int(round((mask.sum() / 2e6) ** (1 / 3))))
    sample = (slice(None, None, sample_step),) * 3
    levels = []
    for scale in parameters.scales_mm:
        sigma = scale / spacing
        smoothed = ndimage.gaussian_filter(
            image[sample].astype(np.float32), sigma / sample_step, truncate=GAUSSIAN_TRUNCATE
        )
        levels.append(_robust_level(smoothed[mask[sample]]))
    c = parameters.structureness_fraction * abs(contrast_hu)
    halo = int(np.ceil(GAUSSIAN_TRUNCATE * max(parameters.scales_mm) / spacing[0])) + 1
    blocks = list(range(0, shape[0], parameters.block_slices))
    total = len(blocks) * len(parameters.scales_mm)
    done = 0
    for start in blocks:
        stop = min(shape[0], start + parameters.block_slices)
        low, high = max(0, start - halo), min(shape[0], stop + halo)
        slab = image[low:high].astype(np.float32)
        inner = (slice(start - low, stop - low), slice(1, shape[1] - 1), slice(1, shape[2] - 1))
        region = np.zeros(slab.shape, dtype=bool)
        region[inner] = mask[start:stop, 1:-1, 1:-1]
        # Differences need both neighbours: the image's outermost voxels are never analysed.
        if start == 0:
            region[0] = False
        if stop == shape[0]:
            region[-1] = False
        best = np.zeros(slab.shape, dtype=np.float32)
        for scale, (background, spread) in zip(parameters.scales_mm, levels, strict=True):
            smoothed = ndimage.gaussian_filter(slab, scale / spacing, truncate=GAUSSIAN_TRUNCATE)
            candidates = np.flatnonzero(region & (smoothed > background + parameters.candidate_sigmas * spread))
            if len(candidates):
                hessian = _hessian_at(smoothed, candidates, spacing) * scale**2
                measure = frangi_bright_tubes(symmetric_eigenvalues(hessian), parameters.alpha, parameters.beta, c)
                flat = best.ravel()
                flat[candidates] = np.maximum(flat[candidates], measure)
            done += 1
            if progress is not None:
                progress(done, total, f"vesselness, scale {scale:g} mm")
        output[start:stop] = best[start - low : stop - low]
    return output
