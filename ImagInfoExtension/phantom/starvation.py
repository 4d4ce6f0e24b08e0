"""Photon-starvation streaks of filtered back projection at very low dose.

A detector reading behind a long attenuating path collects only a few photons at low
dose. Its log-transformed line integral is then biased and heavy-tailed (a reading of 0
must be clamped before the log), which the Gaussian noise model cannot represent. FBP
spreads each such error along its ray as a bright or dark line: the streaks of
ultra-low-dose CT. Reconstructions that model the raw-data statistics (hybrid
iterative, deep learning) weight these readings down and show no streaks.

The model traces the rays of a parallel-beam geometry through the object's attenuation
(one slice: the phantom's holder is uniform along z), draws Poisson counts for the
readings whose expected count is low, and reconstructs their log errors by ramp
filtering (apodised to the reconstruction's PSF) and back projection, slice by slice.
Readings with more photons are left to the calibrated Gaussian noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.fft
from scipy import ndimage

#: Filtered-projection values below this fraction of a view's peak are not back-projected.
_TAIL_FRACTION = 1e-3

#: A reading is treated here when its expected count is within this many SDs of zero.
_CLAMP_REACH_SD = 3.0

#: Line integral below which a ray is taken to miss the object.
_MISSED_OBJECT = 0.01

#: Linear attenuation of water at the effective energy of a thorax protocol, mm⁻¹.
WATER_ATTENUATION_PER_MM = 0.019


@dataclass(frozen=True)
class PhotonStarvation:
    """Count level and geometry of the readings that starve.

    Parameters
    ----------
    counts_per_mgy : float
        Mean photon count of one unattenuated detector reading per mGy CTDIvol, after
        the bowtie filter and detector efficiency.
    electronic_noise_counts : float
        SD of the detector's electronic noise, in photon counts. With it a reading
        can fall to zero or below, which is what makes the lowest-count rays fail.
    clamp_counts : float
        Readings below this are replaced by it before the log, as scanners do.
    bowtie_water_radius_mm : float
        The bowtie filter is shaped to equalise the flux behind a water cylinder of
        this radius, so off-centre rays lose photons before they reach the object.
    views_per_rotation : int
    channel_pitch_mm, row_width_mm : float
        Detector sampling at the isocentre.
    """

    counts_per_mgy: float
    electronic_noise_counts: float = 0.0
    clamp_counts: float = 0.5
    bowtie_water_radius_mm: float = 160.0
    views_per_rotation: int = 900
    channel_pitch_mm: float = 0.5
    row_width_mm: float = 0.5


def _centred_coordinates(shape_ji: tuple[int, int], spacing_ij: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """In-plane x (along i) and y (along j) of the pixel centres, mm from the slice centre."""
    x = (np.arange(shape_ji[1]) - 0.5 * (shape_ji[1] - 1)) * spacing_ij[0]
    y = (np.arange(shape_ji[0]) - 0.5 * (shape_ji[0] - 1)) * spacing_ij[1]
    return x, y


def _half_diagonal_mm(shape_ji: tuple[int, int], spacing_ij: tuple[float, float]) -> float:
    """Distance from the slice centre to its farthest pixel centre: the reach of every ray."""
    x, y = _centred_coordinates(shape_ji, spacing_ij)
    return float(np.hypot(np.abs(x).max(), np.abs(y).max()))


def ray_geometry(
    shape_ji: tuple[int, int], spacing_ij: tuple[float, float], starvation: PhotonStarvation
) -> tuple[np.ndarray, np.ndarray]:
    """View angles (rad, over 180°) and channel offsets (mm) covering the slice."""
    count = int(np.ceil(_half_diagonal_mm(shape_ji, spacing_ij) / starvation.channel_pitch_mm))
    offsets = np.arange(-count, count + 1) * starvation.channel_pitch_mm
    angles = np.arange(starvation.views_per_rotation // 2) * (2 * np.pi / starvation.views_per_rotation)
    return angles, offsets


def line_integrals(
    attenuation_per_mm: np.ndarray,
    spacing_ij: tuple[float, float],
    angles_rad: np.ndarray,
    offsets_mm: np.ndarray,
    step_mm: float = 1.0,
) -> np.ndarray:
    """Line integrals of a 2D attenuation map (``[j, i]``) for parallel rays.

    The ray at angle θ and offset s is ``{s·n + t·d}`` with direction
    ``d = (cos θ, sin θ)`` and normal ``n = (−sin θ, cos θ)`` in (x, y).
    Returns ``[angle, offset]``.
    """
    reach = _half_diagonal_mm(attenuation_per_mm.shape, spacing_ij)
    t = np.arange(-reach, reach + step_mm, step_mm)
    centre_j, centre_i = 0.5 * (np.asarray(attenuation_per_mm.shape) - 1)
    result = np.empty((len(angles_rad), len(offsets_mm)), dtype=np.float32)
    for index, angle in enumerate(angles_rad):
        direction = np.array([np.cos(angle), np.sin(angle)])
        normal = np.array([-np.sin(angle), np.cos(angle)])
        px = offsets_mm[:, None] * normal[0] + t[None, :] * direction[0]
        py = offsets_mm[:, None] * normal[1] + t[None, :] * direction[1]
        coordinates = np.stack([py / spacing_ij[1] + centre_j, px / spacing_ij[0] + centre_i])
        samples = ndimage.map_coordinates(attenuation_per_mm, coordinates, order=1, cval=0.0)
        result[index] = samples.sum(axis=1) * step_mm
    return result


def attenuation_map(slice_hu: np.ndarray) -> np.ndarray:
    """Linear attenuation (mm⁻¹) of a slice in HU, air at 0."""
    return (WATER_ATTENUATION_PER_MM * np.clip(1.0 + slice_hu / 1000.0, 0.0, None)).astype(np.float32)


def starvation_streaks(
    path_integrals: np.ndarray,
    angles_rad: np.ndarray,
    offsets_mm: np.ndarray,
    shape_kji: tuple[int, int, int],
    spacing_ijk: tuple[float, float, float],
    dose_mgy: float,
    starvation: PhotonStarvation,
    psf_sigma_mm: float,
    rng: np.random.Generator,
) -> np.ndarray | None:
    """Streak image (HU, ``[k, j, i]`` float32) of the starved readings, or None if none starve.

    Each slice is reconstructed from its own rows: ``2 × rows`` readings per ray (a
    full rotation measures every parallel ray twice), each log-transformed, averaged.
    """
    radius = starvation.bowtie_water_radius_mm
    bowtie = 2.0 * WATER_ATTENUATION_PER_MM * (radius - np.sqrt(np.clip(radius**2 - offsets_mm**2, 0.0, None)))
    expected = starvation.counts_per_mgy * dose_mgy * np.exp(-(path_integrals.astype(np.float64) + bowtie))
    electronic = starvation.electronic_noise_counts
    # Only where a reading may reach the clamp does the log error leave the Gaussian regime.
    # Rays that miss the object streak only the empty corners of the field of view.
    low = (expected < _CLAMP_REACH_SD * np.sqrt(expected + electronic**2)) & (path_integrals > _MISSED_OBJECT)
    if not low.any():
        return None
    view_index, channel_index = np.nonzero(low)
    slices = shape_kji[0]
    rows = max(1, int(round(spacing_ijk[2] / starvation.row_width_mm)))
    size = (slices, 2 * rows, int(low.sum()))
    mean_counts = expected[low].astype(np.float32)
    drawn = rng.standard_normal(size, dtype=np.float32)
    drawn *= np.float32(electronic)
    drawn += rng.poisson(expected[low], size=size)
    # The linear part of the error is Gaussian noise, which the calibrated NPS holds.
    linear = (mean_counts - drawn) / mean_counts
    log_error = np.log(mean_counts / np.maximum(drawn, np.float32(starvation.clamp_counts)))
    log_error -= linear
    error = log_error.mean(axis=1)  # [slice, starved ray]

    return back_project_hu(
        error, view_index, channel_index, angles_rad, offsets_mm, shape_kji, spacing_ijk, psf_sigma_mm
    )


def back_project_hu(
    line_integrals_per_slice: np.ndarray,
    view_index: np.ndarray,
    channel_index: np.ndarray,
    angles_rad: np.ndarray,
    offsets_mm: np.ndarray,
    shape_kji: tuple[int, int, int],
    spacing_ijk: tuple[float, float, float],
    psf_sigma_mm: float,
) -> np.ndarray:
    """Filtered back projection (HU) of sparse parallel-beam line integrals, slice by slice.

    Parameters
    ----------
    line_integrals_per_slice : ndarray, ``[slice, ray]``
        Attenuation line integrals of the listed rays; every other ray is 0.
    view_index, channel_index : ndarray of int, ``[ray]``
        Which view (into ``angles_rad``, spread evenly over 180°) and channel (into
        ``offsets_mm``, evenly spaced) each ray is.
    psf_sigma_mm : float
        The ramp filter is apodised by this Gaussian, the reconstruction's in-plane PSF.
    """
    slices = shape_kji[0]
    pitch = float(offsets_mm[1] - offsets_mm[0])
    padded = int(scipy.fft.next_fast_len(2 * len(offsets_mm)))
    frequency = np.fft.rfftfreq(padded, d=pitch)
    # Ramp filter apodised to the reconstruction's PSF (its in-plane Gaussian MTF).
    ramp = (np.abs(frequency) * np.exp(-2 * np.pi**2 * psf_sigma_mm**2 * frequency**2)).astype(np.float32)
    view_step = np.pi / len(angles_rad)
    x, y = _centred_coordinates(shape_kji[1:], spacing_ijk[:2])
    xx, yy = np.meshgrid(x, y)
    image = np.zeros((slices, shape_kji[1] * shape_kji[2]), dtype=np.float32)
    for view in np.unique(view_index):
        in_view = view_index == view
        projection = np.zeros((slices, padded), dtype=np.float32)
        projection[:, channel_index[in_view]] = line_integrals_per_slice[:, in_view]
        filtered = scipy.fft.irfft(scipy.fft.rfft(projection, axis=1) * ramp, n=padded, axis=1)
        # Tails of a filtered sparse projection fall as 1/s²: back-project only where they matter.
        magnitude = np.abs(filtered).max(axis=0)
        significant = magnitude > _TAIL_FRACTION * magnitude.max()
        angle = angles_rad[view]
        # Where each pixel's ray crosses the detector, as a fractional channel index.
        position = ((-np.sin(angle) * xx + np.cos(angle) * yy).ravel() - offsets_mm[0]) / pitch
        channel = np.clip(np.floor(position).astype(np.intp), 0, padded - 2)
        pixels = np.flatnonzero(significant[channel] | significant[channel + 1])
        lower = channel[pixels]
        weight = (position[pixels] - lower).astype(np.float32)
        image[:, pixels] += filtered[:, lower] * (1 - weight) + filtered[:, lower + 1] * weight
    image *= np.float32(view_step * 1000.0 / WATER_ATTENUATION_PER_MM)
    return image.reshape(shape_kji)
