"""Photon starvation and the log bias of filtered back projection at low dose.

A detector reading ``X`` (photons plus electronic noise) is turned into a line integral
by ``ln(N0 / X)``. The log is nonlinear, so the measured line integral is biased:

    E[ln N̄ − ln X] ≈ (N̄ + σ_e²) / (2 N̄²)       (X many SDs above zero),

1/(2N̄) for pure Poisson counts. Line integrals are overestimated, and the more so the
fewer photons a reading collects: the bias grows as dose falls and as the path
lengthens. Behind a long attenuating path a reading collects only a few photons; its
log error is then heavy-tailed as well (a reading of 0 or below must be clamped before
the log), which the Gaussian noise model cannot represent. FBP spreads each such error
along its ray as a bright or dark line: the streaks of ultra-low-dose CT.
Reconstructions that model the raw-data statistics (hybrid iterative, deep learning)
weight these readings down and show neither streaks nor bias.

The model traces the rays of a parallel-beam geometry through the object's attenuation
(one slice: the phantom's holder is uniform along z). Readings are treated in two ways:

* Starved readings (expected count within a few SDs of zero): their Poisson counts and
  electronic noise are drawn, and their log errors (bias included) are reconstructed
  by ramp filtering (apodised to the reconstruction's PSF) and back projection, slice
  by slice, near each ray (``starvation_streaks``).
* All other readings: their log error is the calibrated Gaussian noise (its linear
  part) plus the deterministic bias above (``expected_log_error``). Its reconstruction
  (``log_bias``) has two parts: the bias of the holder's own line integrals, back
  projected once per dose, and a gain on whatever each slice adds to the holder (the
  vessels): a ray through a vessel is longer in attenuation than its neighbours, so its
  overestimate is larger, by ``d bias / d path`` per unit of the vessel's line integral.
  In the reconstruction the vessel's attenuation is multiplied by ``1 + gain``, the
  gain being that slope averaged over the views through each point; a vessel of 100 HU
  in air reads ``1100 × gain`` HU higher.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import scipy.fft
from scipy import ndimage, stats

#: Filtered-projection values below this fraction of a view's peak are not back-projected.
_TAIL_FRACTION = 1e-3

#: A reading is treated here when its expected count is within this many SDs of zero.
_CLAMP_REACH_SD = 3.0

#: Line integral below which a ray is taken to miss the object.
_MISSED_OBJECT = 0.01

#: Linear attenuation of water at the effective energy of a thorax protocol, mm⁻¹.
WATER_ATTENUATION_PER_MM = 0.019

#: The log error is computed exactly below this many SDs of a reading; above, its series is exact to ~1e-6.
_SERIES_FROM_SD = 30.0

#: Expected counts tabulated for the exact log error: 32 points a decade from 1e-4.
_TABLE_LOWEST_COUNTS = 1e-4
_TABLE_POINTS_PER_DECADE = 32


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


def expected_counts(
    path_integrals: np.ndarray, offsets_mm: np.ndarray, dose_mgy: float, starvation: PhotonStarvation
) -> np.ndarray:
    """Mean photon count (float64, ``[view, channel]``) of each reading behind the bowtie and the object."""
    radius = starvation.bowtie_water_radius_mm
    bowtie = 2.0 * WATER_ATTENUATION_PER_MM * (radius - np.sqrt(np.clip(radius**2 - offsets_mm**2, 0.0, None)))
    return starvation.counts_per_mgy * dose_mgy * np.exp(-(path_integrals.astype(np.float64) + bowtie))


def starved_readings(expected: np.ndarray, path_integrals: np.ndarray, starvation: PhotonStarvation) -> np.ndarray:
    """Readings whose count may reach the clamp: there the log error leaves the Gaussian regime.

    Rays that miss the object are never starved: their streaks would only cross the
    empty corners of the field of view.
    """
    electronic = starvation.electronic_noise_counts
    near_zero = expected < _CLAMP_REACH_SD * np.sqrt(expected + electronic**2)
    return near_zero & (path_integrals > _MISSED_OBJECT)


def _log_error_series(mean_counts: np.ndarray, electronic_noise_counts: float) -> tuple[np.ndarray, np.ndarray]:
    """Moment expansion of ``E[ln N̄ − ln X]`` and of its derivative in ``ln N̄``.

    With ``X = N̄ + D``, ``Var D = v = N̄ + σ²``, third and fourth cumulants ``N̄``
    (Poisson; the Gaussian electronic noise adds to the variance only)::

        E = v / (2N̄²) − 1 / (3N̄²) + (N̄ + 3v²) / (4N̄⁴) + O(v³/N̄⁶)
    """
    m = np.asarray(mean_counts, dtype=np.float64)
    v = m + electronic_noise_counts**2
    value = v / (2 * m**2) - 1 / (3 * m**2) + (m + 3 * v**2) / (4 * m**4)
    derivative = (1 / (2 * m**2) - v / m**3) + 2 / (3 * m**3) + ((1 + 6 * v) / (4 * m**4) - (m + 3 * v**2) / m**5)
    return value, m * derivative


@lru_cache(maxsize=16)
def _log_error_table(
    electronic_noise_counts: float, clamp_counts: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """The exact ``E = E[ln N̄ − ln max(X, clamp)]`` and ``−dE/d ln N̄`` on a ``ln N̄`` grid; where the series takes over.

    With ``h(k) = E[ln max(k + σG, clamp)]`` and Poisson weights ``p_k``:
    ``E = ln N̄ − Σ p_k h(k)`` and, since ``dp_k/dN̄ = p_{k−1} − p_k``,
    ``−dE/d ln N̄ = N̄ Σ p_k (h(k+1) − h(k)) − 1``.
    """
    sigma_sq = electronic_noise_counts**2
    # The series holds where N̄ > k·sqrt(N̄ + σ²), k = _SERIES_FROM_SD: N̄ > (k² + sqrt(k⁴ + 4k²σ²)) / 2.
    k_sq = _SERIES_FROM_SD**2
    series_from = 0.5 * (k_sq + np.sqrt(k_sq**2 + 4 * k_sq * sigma_sq))
    decades = np.log10(series_from / _TABLE_LOWEST_COUNTS)
    means = np.geomspace(_TABLE_LOWEST_COUNTS, series_from, int(np.ceil(decades * _TABLE_POINTS_PER_DECADE)) + 1)
    top = int(np.ceil(series_from + 12 * np.sqrt(series_from) + 30))
    counts = np.arange(top + 2, dtype=np.float64)
    if electronic_noise_counts > 0:
        # E[ln max(k + σG, clamp)] for each photon count k, G standard normal, on a 0.01-SD grid.
        g = np.linspace(-8.0, 8.0, 1601)
        weight = stats.norm.pdf(g)
        weight /= weight.sum()
        log_reading = np.log(np.maximum(counts[:, None] + electronic_noise_counts * g[None, :], clamp_counts)) @ weight
    else:
        log_reading = np.log(np.maximum(counts, clamp_counts))
    probability = stats.poisson.pmf(counts[None, :-1], means[:, None])
    value = np.log(means) - probability @ log_reading[:-1]
    slope = means * (probability @ np.diff(log_reading)) - 1.0
    return np.log(means), value, slope, float(series_from)


def expected_log_error(
    mean_counts: np.ndarray | float, electronic_noise_counts: float = 0.0, clamp_counts: float = 0.5
) -> np.ndarray:
    """Bias of a log-transformed reading: ``E[ln N̄ − ln max(X, clamp)]``, X = Poisson(N̄) + N(0, σ²).

    The overestimate of the line integral (dimensionless, like the line integral).
    It is ``(N̄ + σ²) / (2N̄²)`` when the reading is far from zero (``1/(2N̄)`` for
    photon counts alone); near zero the clamp caps the log and the bias turns
    negative. Exact (tabulated over N̄ and interpolated in ``ln N̄``) where the reading
    is within ``_SERIES_FROM_SD`` SDs of zero, a moment series beyond; below
    ``_TABLE_LOWEST_COUNTS`` photons it is held at the table's end.

    Parameters
    ----------
    mean_counts : array_like
        Expected photon count N̄ of each reading (> 0).
    electronic_noise_counts : float
        SD σ of the additive electronic noise, in photon counts.
    clamp_counts : float
        Floor applied to the reading before the log.
    """
    return _from_table_or_series(mean_counts, electronic_noise_counts, clamp_counts, slope=False)


def log_error_slope(
    mean_counts: np.ndarray | float, electronic_noise_counts: float = 0.0, clamp_counts: float = 0.5
) -> np.ndarray:
    """Change of ``expected_log_error`` per unit of extra line integral on the ray (no unit).

    Extra attenuation ``δ`` lowers N̄ by ``exp(−δ)``, so this is ``−d E / d ln N̄``:
    ``(N̄ + 2σ²) / (2N̄²)`` far from zero. A small object on the ray is measured
    ``1 + slope`` times too dense.
    """
    return _from_table_or_series(mean_counts, electronic_noise_counts, clamp_counts, slope=True)


def _from_table_or_series(
    mean_counts: np.ndarray | float, electronic_noise_counts: float, clamp_counts: float, slope: bool
) -> np.ndarray:
    """``expected_log_error`` (or its ``log_error_slope``) of each count, shaped like ``mean_counts``."""
    mean = np.asarray(mean_counts, dtype=np.float64)
    flat = mean.ravel()
    log_means, table, slopes, series_from = _log_error_table(float(electronic_noise_counts), float(clamp_counts))
    values = slopes if slope else table
    result = np.interp(np.log(np.maximum(flat, _TABLE_LOWEST_COUNTS)), log_means, values)
    series = flat >= series_from
    if series.any():
        value, derivative = _log_error_series(flat[series], electronic_noise_counts)
        result[series] = -derivative if slope else value
    return result.reshape(mean.shape)


def log_bias(
    path_integrals: np.ndarray,
    angles_rad: np.ndarray,
    offsets_mm: np.ndarray,
    shape_ji: tuple[int, int],
    spacing_ij: tuple[float, float],
    dose_mgy: float,
    starvation: PhotonStarvation,
    psf_sigma_mm: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Expected FBP error of the readings that do not starve: a bias image and a contrast gain.

    Parameters
    ----------
    path_integrals : ndarray, ``[view, channel]``
        Line integrals through the part of the object common to every slice (the holder).
    shape_ji, spacing_ij
        The slice.
    psf_sigma_mm : float
        The reconstruction's in-plane PSF, which apodises the ramp filter.

    Returns
    -------
    bias_hu : ndarray of float32, ``[j, i]``
        FBP of the readings' ``expected_log_error`` (zeroth order): what the holder's
        own line integrals add to every slice, in HU.
    contrast_gain : ndarray of float32, ``[j, i]``
        ``log_error_slope`` averaged over the views through each pixel (first order): an
        attenuation that a slice adds to the holder, ``Δμ``, reconstructs as
        ``(1 + gain)·Δμ``, that is ``gain × (HU + 1000)`` above its value for material
        in air. First order in the added line integral; for a 3 mm vessel (0.13 along a
        diameter) the second order adds about a tenth.

    Starved readings carry their own errors, bias included, in ``starvation_streaks``;
    here they count for nothing. That split matters: ``starvation_streaks`` back
    projects each starved error only near its ray (``_TAIL_FRACTION``), so the mean of
    those errors stays near the rays that starve (the holder's base and long walls)
    instead of spreading, through the ramp filter's negative tails, into the cavity.
    Back projected whole, the starved readings' mean error would lower the centre of
    the default phantom by about 13 HU at 0.2 mGy and cancel most of the vessels' gain
    there; the model keeps the streaks' local reconstruction, an approximation that
    this bias inherits.
    """
    expected = expected_counts(path_integrals, offsets_mm, dose_mgy, starvation)
    # As for the streaks, rays that miss the object are left out: behind the thick edge
    # of the bowtie the outermost channels modelled here collect few photons too, and
    # their bias would reflect only how far the grid reaches, not the object.
    regular = ~starved_readings(expected, path_integrals, starvation) & (path_integrals > _MISSED_OBJECT)
    electronic, clamp = starvation.electronic_noise_counts, starvation.clamp_counts
    bias = np.where(regular, expected_log_error(expected, electronic, clamp), 0.0)
    slope = np.where(regular, log_error_slope(expected, electronic, clamp), 0.0)
    views, channels = np.meshgrid(np.arange(len(angles_rad)), np.arange(len(offsets_mm)), indexing="ij")
    bias_hu = back_project_hu(
        bias.ravel()[None, :].astype(np.float32),
        views.ravel(),
        channels.ravel(),
        angles_rad,
        offsets_mm,
        (1, *shape_ji),
        (*spacing_ij, 1.0),
        psf_sigma_mm,
        tail_fraction=0.0,
    )[0]
    return bias_hu, view_average(slope, angles_rad, offsets_mm, shape_ji, spacing_ij)


def view_average(
    sinogram: np.ndarray,
    angles_rad: np.ndarray,
    offsets_mm: np.ndarray,
    shape_ji: tuple[int, int],
    spacing_ij: tuple[float, float],
) -> np.ndarray:
    """Unfiltered back projection divided by the number of views: the mean, over views, of the ray through each pixel.

    ``sinogram`` is ``[view, channel]``; returns float32 ``[j, i]``.
    """
    x, y = _centred_coordinates(shape_ji, spacing_ij)
    xx, yy = np.meshgrid(x, y)
    pitch = float(offsets_mm[1] - offsets_mm[0])
    channels = np.arange(len(offsets_mm), dtype=np.float64)
    total = np.zeros(shape_ji, dtype=np.float64)
    for view, angle in enumerate(angles_rad):
        position = ((-np.sin(angle) * xx + np.cos(angle) * yy) - offsets_mm[0]) / pitch
        total += np.interp(position, channels, sinogram[view], left=0.0, right=0.0)
    return (total / len(angles_rad)).astype(np.float32)


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
    expected = expected_counts(path_integrals, offsets_mm, dose_mgy, starvation)
    electronic = starvation.electronic_noise_counts
    low = starved_readings(expected, path_integrals, starvation)
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
    tail_fraction: float = _TAIL_FRACTION,
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
    tail_fraction : float
        Filtered values below this fraction of their view's peak are not back projected:
        the 1/s² tails of a few sparse rays, which cost time and change no streak. They
        do carry the rays' mean error away from the rays, so a dense sinogram of
        expected errors is back projected whole (0).
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
        significant = magnitude > tail_fraction * magnitude.max()
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
