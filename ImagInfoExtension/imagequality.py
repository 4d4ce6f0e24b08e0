"""CT image-quality metrics following AAPM TG-233.

Noise SD, the 2D noise power spectrum (NPS) and its radial average, the task transfer
function (TTF) from a circular edge, the contrast-to-noise ratio (CNR) and the
detectability index d' of the non-prewhitening (NPW) and non-prewhitening-with-eye-
filter (NPWE) observers. Every function takes arrays ``[k, j, i]`` with their
spacing in mm and works on axial slices (the ``j, i`` plane); frequencies are in
cycles per mm.

References: Samei E. et al., "Performance evaluation of computed tomography systems:
The report of AAPM Task Group 233", Med Phys 46 (2019) e735; Richard S., Husarik D.,
Yadava G., Murphy S., Samei E., "Towards task-based assessment of CT performance",
Med Phys 39 (2012) 4115.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage, special
from scipy.integrate import trapezoid

#: TG-233's largest recommended NPS ROI (pixels per side).
MAX_NPS_ROI_PX = 64
#: Below this side (pixels) an NPS is too coarse to report.
MIN_NPS_ROI_PX = 8
#: Enough ROIs for a stable ensemble NPS; more only cost time.
MAX_NPS_ROIS = 600


@dataclass(frozen=True)
class SquareRois:
    """Square ROIs on axial slices: slice ``k`` and top-left corner ``(j, i)``."""

    size_px: int
    corners_kji: np.ndarray

    def __len__(self) -> int:
        return len(self.corners_kji)

    def mask(self, shape_kji: Sequence[int]) -> np.ndarray:
        """The ROIs as a boolean image (for display)."""
        mask = np.zeros(shape_kji, dtype=bool)
        for k, j, i in self.corners_kji:
            mask[k, j : j + self.size_px, i : i + self.size_px] = True
        return mask


def place_square_rois(
    region: np.ndarray,
    max_size_px: int = MAX_NPS_ROI_PX,
    min_size_px: int = MIN_NPS_ROI_PX,
    min_count: int = 30,
    max_count: int = MAX_NPS_ROIS,
) -> SquareRois:
    """Tile a uniform region with non-overlapping square ROIs, as large as it allows.

    The side is the largest (from ``max_size_px`` down to ``min_size_px``, even
    numbers) that gives at least ``min_count`` ROIs over all slices; ROIs lie wholly
    inside ``region``.

    Parameters
    ----------
    region : ndarray of bool, ``[k, j, i]``
        The uniform material (e.g. the PMMA wall, eroded from its edges).

    Raises
    ------
    ValueError
        When not even ``min_count`` ROIs of ``min_size_px`` fit.
    """
    region = np.asarray(region, dtype=bool)
    best: SquareRois | None = None
    for size in range(max_size_px - max_size_px % 2, min_size_px - 1, -2):
        corners = _greedy_squares(region, size, max_count)
        if len(corners) >= min_count:
            return SquareRois(size, corners)
        if best is None or len(corners) > len(best):
            best = SquareRois(size, corners)
    found = 0 if best is None else len(best)
    raise ValueError(
        f"the uniform region holds only {found} square ROI(s) of {min_size_px} pixels, fewer than {min_count}; "
        "give a larger uniform region (a water or PMMA section) for the noise power spectrum"
    )


def _greedy_squares(region: np.ndarray, size: int, max_count: int) -> np.ndarray:
    # A square fits at a corner when the region's summed-area table says it is full.
    inside = np.pad(region, ((0, 0), (1, 0), (1, 0))).astype(np.int32).cumsum(1).cumsum(2)
    full = (
        inside[:, size:, size:] - inside[:, :-size, size:] - inside[:, size:, :-size] + inside[:, :-size, :-size]
    ) == size * size
    slices = np.flatnonzero(full.any(axis=(1, 2)))
    corners: list[tuple[int, int, int]] = []
    # Spread the ROIs over the slices when there are more than needed.
    per_slice = max(1, int(np.ceil(max_count / max(1, len(slices)))))
    for k in slices:
        taken = np.zeros(region.shape[1:], dtype=bool)
        count = 0
        for j, i in np.argwhere(full[k]):
            if taken[j, i]:
                continue
            corners.append((int(k), int(j), int(i)))
            taken[max(0, j - size + 1) : j + size, max(0, i - size + 1) : i + size] = True
            count += 1
            if count >= per_slice:
                break
    return np.array(corners, dtype=int).reshape(-1, 3)


def _roi_stack(image: np.ndarray, rois: SquareRois) -> np.ndarray:
    s = rois.size_px
    return np.stack([image[k, j : j + s, i : i + s] for k, j, i in rois.corners_kji]).astype(np.float64)


def _detrend(stack: np.ndarray) -> np.ndarray:
    """Remove a plane fitted to each ROI (TG-233: first-order detrending)."""
    s = stack.shape[-1]
    y, x = np.mgrid[:s, :s].astype(float)
    design = np.stack([np.ones(s * s), y.ravel(), x.ravel()], axis=1)
    flat = stack.reshape(len(stack), -1)
    coefficients, *_ = np.linalg.lstsq(design, flat.T, rcond=None)
    return (flat - (design @ coefficients).T).reshape(stack.shape)


def noise_sd_hu(image: np.ndarray, rois: SquareRois) -> float:
    """Pooled noise SD (HU) over the ROIs, each first detrended by a plane.

    The plane takes 3 degrees of freedom per ROI; the pooled variance is corrected
    for them.
    """
    residual = _detrend(_roi_stack(image, rois))
    pixels = rois.size_px**2
    return float(np.sqrt(np.sum(residual**2) / (len(residual) * (pixels - 3))))


@dataclass(frozen=True)
class NoisePowerSpectrum:
    """A 2D NPS and its radial average.

    Attributes
    ----------
    frequency_per_mm : ndarray
        Radial bin centres (cycles/mm).
    nps_hu2_mm2 : ndarray
        Radially averaged NPS (HU² mm²).
    nps_2d_hu2_mm2 : ndarray
        The 2D NPS, zero frequency at the centre (``fftshift`` order).
    fy_per_mm, fx_per_mm : ndarray
        Frequencies along the 2D NPS axes (``j`` and ``i``).
    roi_size_px, roi_count : int
    """

    frequency_per_mm: np.ndarray
    nps_hu2_mm2: np.ndarray
    nps_2d_hu2_mm2: np.ndarray
    fy_per_mm: np.ndarray
    fx_per_mm: np.ndarray
    roi_size_px: int
    roi_count: int

    @property
    def variance_hu2(self) -> float:
        """The integral of the 2D NPS, which equals the pixel variance."""
        df = (self.fy_per_mm[1] - self.fy_per_mm[0]) * (self.fx_per_mm[1] - self.fx_per_mm[0])
        return float(self.nps_2d_hu2_mm2.sum() * df)

    @property
    def peak_frequency_per_mm(self) -> float:
        """Frequency of the radial NPS maximum, refined by a parabola through its neighbours."""
        values, f = self.nps_hu2_mm2, self.frequency_per_mm
        n = int(np.argmax(values))
        if 0 < n < len(values) - 1:
            left, centre, right = values[n - 1 : n + 2]
            curvature = left - 2 * centre + right
            if curvature < 0:
                return float(f[n] + 0.5 * (left - right) / curvature * (f[1] - f[0]))
        return float(f[n])

    @property
    def average_frequency_per_mm(self) -> float:
        """NPS-weighted mean radial frequency over the 2D spectrum (TG-233's f_av)."""
        fy, fx = np.meshgrid(self.fy_per_mm, self.fx_per_mm, indexing="ij")
        radius = np.hypot(fy, fx)
        return float(np.sum(radius * self.nps_2d_hu2_mm2) / np.sum(self.nps_2d_hu2_mm2))

    def at(self, frequency_per_mm: np.ndarray) -> np.ndarray:
        """The radial NPS interpolated at the given frequencies (held flat beyond its ends)."""
        return np.interp(frequency_per_mm, self.frequency_per_mm, self.nps_hu2_mm2)


def noise_power_spectrum(
    image: np.ndarray, pixel_spacing_ji_mm: Sequence[float], rois: SquareRois
) -> NoisePowerSpectrum:
    """Ensemble 2D NPS over square ROIs, and its radial average.

    ``NPS(fy, fx) = dy dx / (Ny Nx) <|DFT(ROI - fitted plane)|²>``; its integral is the
    variance of the detrended pixels.

    Parameters
    ----------
    image : ndarray, ``[k, j, i]``
    pixel_spacing_ji_mm : (float, float)
        Pixel spacing along ``j`` and ``i`` (mm).
    rois : SquareRois
    """
    dy, dx = (float(v) for v in pixel_spacing_ji_mm)
    s = rois.size_px
    residual = _detrend(_roi_stack(image, rois))
    power = np.mean(np.abs(np.fft.fft2(residual)) ** 2, axis=0) * dy * dx / (s * s)
    # The plane fit removed 3 of s² degrees of freedom from each ROI's power.
    power *= s * s / (s * s - 3)
    nps_2d = np.fft.fftshift(power)
    fy = np.fft.fftshift(np.fft.fftfreq(s, dy))
    fx = np.fft.fftshift(np.fft.fftfreq(s, dx))
    grid_y, grid_x = np.meshgrid(fy, fx, indexing="ij")
    radius = np.hypot(grid_y, grid_x)
    step = max(fy[1] - fy[0], fx[1] - fx[0])
    bins = np.rint(radius / step).astype(int)
    keep = (bins > 0) & (radius <= min(abs(fy[0]), abs(fx[0])))
    counts = np.bincount(bins[keep])
    sums = np.bincount(bins[keep], weights=nps_2d[keep])
    filled = counts > 0
    return NoisePowerSpectrum(
        frequency_per_mm=np.arange(len(counts))[filled] * step,
        nps_hu2_mm2=sums[filled] / counts[filled],
        nps_2d_hu2_mm2=nps_2d,
        fy_per_mm=fy,
        fx_per_mm=fx,
        roi_size_px=s,
        roi_count=len(rois),
    )


@dataclass(frozen=True)
class TaskTransferFunction:
    """The TTF of a circular edge.

    Attributes
    ----------
    frequency_per_mm, ttf : ndarray
    esf_radius_mm, esf_hu : ndarray
        The radial edge-spread function (median of each radial bin).
    contrast_hu : float
        Inside minus outside plateau.
    edge_radius_mm : float
        Where the ESF crosses half-way.
    slices : int
        Slices averaged.
    """

    frequency_per_mm: np.ndarray
    ttf: np.ndarray
    esf_radius_mm: np.ndarray
    esf_hu: np.ndarray
    contrast_hu: float
    edge_radius_mm: float
    slices: int

    def frequency_at(self, level: float) -> float:
        """First frequency (cycles/mm) where the TTF falls to ``level``; NaN if it never does."""
        below = np.flatnonzero(self.ttf < level)
        if len(below) == 0 or below[0] == 0:
            return float("nan")
        n = below[0]
        f0, f1, t0, t1 = self.frequency_per_mm[n - 1], self.frequency_per_mm[n], self.ttf[n - 1], self.ttf[n]
        return float(f0 + (t0 - level) * (f1 - f0) / (t0 - t1))

    @property
    def ttf50_per_mm(self) -> float:
        return self.frequency_at(0.5)

    @property
    def ttf10_per_mm(self) -> float:
        return self.frequency_at(0.1)

    def at(self, frequency_per_mm: np.ndarray) -> np.ndarray:
        return np.interp(frequency_per_mm, self.frequency_per_mm, self.ttf, right=0.0)


def fit_disk_centres(disk: np.ndarray, spacing_kji: Sequence[float]) -> np.ndarray:
    """Centre ``(j, i)`` (pixels) of a disk on each slice, from a straight-axis fit.

    ``disk`` marks the object on each slice (e.g. thresholded half-way); the
    per-slice centroids are fitted with a straight line along ``k`` so that noise on
    one slice does not move its centre.

    Returns
    -------
    ndarray (K, 2)
        NaN on slices without the disk.
    """
    slices = np.flatnonzero(disk.any(axis=(1, 2)))
    if len(slices) == 0:
        raise ValueError("no circular object found for the TTF; place the edge ROI on a round insert")
    centroids = np.array([ndimage.center_of_mass(disk[k]) for k in slices])
    centres = np.full((disk.shape[0], 2), np.nan)
    if len(slices) >= 3:
        z = slices * float(spacing_kji[0])
        design = np.stack([np.ones_like(z), z], axis=1)
        coefficients, *_ = np.linalg.lstsq(design, centroids, rcond=None)
        centres[slices] = design @ coefficients
    else:
        centres[slices] = centroids
    return centres


def task_transfer_function(
    image: np.ndarray,
    spacing_kji: Sequence[float],
    centres_ji: np.ndarray,
    radius_mm: float,
    bin_fraction: float = 0.1,
) -> TaskTransferFunction:
    """TTF of a bright (or dark) disk seen on axial slices (Richard et al. 2012).

    Pixels within ``radius_mm`` on either side of the edge are binned by their
    distance from the disk centre, in bins of ``bin_fraction`` pixel; each bin's
    median forms the edge-spread function (the median is robust to the -1024 HU
    clipping of air). Its derivative, Hann-windowed, is Fourier transformed and
    normalised at zero frequency.

    Parameters
    ----------
    image : ndarray, ``[k, j, i]``
    spacing_kji : sequence of float
    centres_ji : ndarray (K, 2)
        Disk centre per slice in pixels; NaN rows are skipped (see :func:`fit_disk_centres`).
    radius_mm : float
        Nominal disk radius.
    """
    dy, dx = float(spacing_kji[1]), float(spacing_kji[2])
    pixel = float(np.sqrt(dy * dx))
    reach = 2.0 * radius_mm
    distances, values = [], []
    used = 0
    for k in np.flatnonzero(np.isfinite(centres_ji[:, 0])):
        cj, ci = centres_ji[k]
        j0, j1 = max(0, int(cj - reach / dy) - 1), min(image.shape[1], int(cj + reach / dy) + 2)
        i0, i1 = max(0, int(ci - reach / dx) - 1), min(image.shape[2], int(ci + reach / dx) + 2)
        jj, ii = np.mgrid[j0:j1, i0:i1]
        r = np.hypot((jj - cj) * dy, (ii - ci) * dx)
        near = r <= reach
        distances.append(r[near])
        values.append(image[k, j0:j1, i0:i1][near].astype(np.float64))
        used += 1
    if used == 0:
        raise ValueError("no slice holds the edge; check the disk centre and radius")
    r = np.concatenate(distances)
    v = np.concatenate(values)
    step = bin_fraction * pixel
    bins = np.floor(r / step).astype(int)
    order = np.argsort(bins, kind="stable")
    bins, v = bins[order], v[order]
    starts = np.flatnonzero(np.r_[True, np.diff(bins) > 0])
    ends = np.r_[starts[1:], len(bins)]
    filled_r = (bins[starts] + 0.5) * step
    filled = np.array([np.median(v[a:b]) for a, b in zip(starts, ends, strict=True)])
    # A small disk centred on the pixel lattice offers few distinct distances, leaving
    # bins empty; they are filled linearly so that the ESF is uniformly sampled.
    esf_r = (np.arange(bins[0], bins[-1] + 1) + 0.5) * step
    esf = np.interp(esf_r, filled_r, filled)
    # Bins near the centre hold few pixels; start where the ring is well sampled.
    start = esf_r >= max(0.25 * radius_mm, 2 * pixel)
    esf_r, esf = esf_r[start], esf[start]
    # A running mean over half a pixel tames the noise of single bins; its own transfer
    # (a sinc) is divided out of the TTF below.
    smoothing_bins = max(1, int(round(0.5 / bin_fraction)))
    esf = ndimage.uniform_filter1d(esf, smoothing_bins, mode="nearest")
    inside = float(np.median(esf[esf_r < radius_mm - 0.5 * radius_mm]))
    outside = float(np.median(esf[esf_r > radius_mm + 0.5 * radius_mm]))
    contrast = inside - outside
    if abs(contrast) <= 0:
        raise ValueError("the disk has no contrast against its surroundings; pick another edge")
    normalised = (esf - outside) / contrast
    crossing = np.flatnonzero(np.diff(np.sign(normalised - 0.5)) != 0)
    edge = float(esf_r[crossing[0]]) if len(crossing) else radius_mm
    lsf = -np.gradient(normalised, esf_r)
    window = np.hanning(len(lsf))
    # Centre the window on the edge rather than on the sampled range.
    shift = np.interp(esf_r, esf_r - (edge - 0.5 * (esf_r[0] + esf_r[-1])), window, left=0.0, right=0.0)
    lsf = lsf * shift
    size = 1 << int(np.ceil(np.log2(max(4 * len(lsf), 1024))))
    spectrum = np.abs(np.fft.rfft(lsf, size))
    frequency = np.fft.rfftfreq(size, step)
    # The radial ESF is oversampled (bins of a tenth of a pixel), so the TTF is known
    # beyond the pixel Nyquist frequency; TG-233 reports it up to the sampling frequency.
    keep = frequency <= 1.0 / pixel
    ttf = spectrum / spectrum[0] / np.abs(np.sinc(frequency * smoothing_bins * step))
    return TaskTransferFunction(
        frequency_per_mm=frequency[keep],
        ttf=ttf[keep],
        esf_radius_mm=esf_r,
        esf_hu=esf,
        contrast_hu=contrast,
        edge_radius_mm=edge,
        slices=used,
    )


@dataclass(frozen=True)
class ObserverParameters:
    """The NPWE observer's eye filter ``E(rho) = rho^n exp(-c rho^2)`` (rho in cycles/degree).

    ``c`` puts the filter's peak at ``eye_peak_cycles_per_degree`` (Burgess 1994).
    An image frequency ``f`` (cycles/mm) reaches the eye at
    ``rho = f * viewing_distance_mm * pi / 180 / display_zoom``.
    """

    eye_exponent: float = 1.3
    eye_peak_cycles_per_degree: float = 4.0
    viewing_distance_mm: float = 500.0
    display_zoom: float = 1.0
    internal_noise_fraction: float = 0.0

    def eye_filter(self, frequency_per_mm: np.ndarray) -> np.ndarray:
        rho = frequency_per_mm * self.viewing_distance_mm * np.pi / 180.0 / self.display_zoom
        c = self.eye_exponent / (2.0 * self.eye_peak_cycles_per_degree**2)
        return rho**self.eye_exponent * np.exp(-c * rho**2)


def disk_task_spectrum(frequency_per_mm: np.ndarray, radius_mm: float, contrast_hu: float) -> np.ndarray:
    """Fourier transform (HU mm²) of a disk of the given radius and contrast."""
    f = np.asarray(frequency_per_mm, dtype=float)
    x = 2.0 * np.pi * radius_mm * f
    with np.errstate(invalid="ignore", divide="ignore"):
        shape = np.where(x > 1e-9, 2.0 * special.j1(x) / np.where(x > 1e-9, x, 1.0), 1.0)
    return contrast_hu * np.pi * radius_mm**2 * shape


@dataclass(frozen=True)
class Detectability:
    npw: float
    npwe: float
    task_radius_mm: float
    task_contrast_hu: float
    observer: ObserverParameters = field(default_factory=ObserverParameters)


def detectability_index(
    ttf: TaskTransferFunction | None,
    nps: NoisePowerSpectrum,
    task_radius_mm: float,
    task_contrast_hu: float,
    observer: ObserverParameters | None = None,
    ttf_values: np.ndarray | None = None,
    frequency_per_mm: np.ndarray | None = None,
) -> Detectability:
    """d' of the NPW and NPWE observers for a disk task (TG-233 eq. for radial symmetry).

    ``d'²_NPW = [∫ |W|² TTF² d²f]² / ∫ |W|² TTF² NPS d²f`` and
    ``d'²_NPWE = [∫ |W|² TTF² E² d²f]² / ∫ (|W|² TTF² NPS E⁴ + |W|² TTF² N_i E²) d²f``,
    integrated radially (``d²f = 2 pi f df``) up to the NPS's highest frequency.

    Parameters
    ----------
    ttf : TaskTransferFunction, optional
        Or ``ttf_values`` on ``frequency_per_mm``.
    nps : NoisePowerSpectrum
    task_radius_mm, task_contrast_hu : float
        The disk to detect.
    observer : ObserverParameters, optional
    """
    observer = observer or ObserverParameters()
    top = float(nps.frequency_per_mm[-1])
    f = np.linspace(0.0, top, 2048) if frequency_per_mm is None else np.asarray(frequency_per_mm)
    t = ttf.at(f) if ttf is not None else np.asarray(ttf_values)
    w2t2 = disk_task_spectrum(f, task_radius_mm, task_contrast_hu) ** 2 * t**2
    noise = nps.at(f)
    ring = 2.0 * np.pi * f
    npw = trapezoid(w2t2 * ring, f) ** 2 / trapezoid(w2t2 * noise * ring, f)
    eye = observer.eye_filter(f)
    internal = observer.internal_noise_fraction * float(np.max(noise))
    npwe_num = trapezoid(w2t2 * eye**2 * ring, f) ** 2
    npwe_den = trapezoid((w2t2 * noise * eye**4 + w2t2 * internal * eye**2) * ring, f)
    return Detectability(
        npw=float(np.sqrt(npw)),
        npwe=float(np.sqrt(npwe_num / npwe_den)),
        task_radius_mm=task_radius_mm,
        task_contrast_hu=task_contrast_hu,
        observer=observer,
    )


def contrast_to_noise_ratio(signal_hu: float, background_hu: float, noise_sd: float) -> float:
    """``(signal - background) / noise SD``."""
    if not noise_sd > 0:
        raise ValueError(f"noise SD must be positive to form a CNR, got {noise_sd}")
    return float((signal_hu - background_hu) / noise_sd)
