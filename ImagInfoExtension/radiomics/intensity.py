"""IBSI-1 intensity families: local intensity, statistics, intensity histogram, intensity-volume histogram.

All four families read intensities inside the intensity mask (IBSI-1 section 3.2-3.5). Local intensity also
reads the image around the mask, which is why it takes the whole cropped intensity array instead of values.

Tags are spelled exactly as in the IBSI-1 reference tables (``loc_peak_loc``, ``stat_p10``, ``ih_max_grad_g``,
``ivh_diff_i10_i90`` ...).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import signal

__all__ = [
    "LOCAL_PEAK_RADIUS_MM",
    "histogram_features",
    "ivh_features",
    "local_intensity_features",
    "statistics_features",
]

# Radius of a sphere of 1 cm^3 (IBSI-1 3.2): (3 / (4 pi))^(1/3) cm.
LOCAL_PEAK_RADIUS_MM = (3.0 / (4.0 * math.pi)) ** (1.0 / 3.0) * 10.0

IVH_METHODS = ("none", "fixed_bin_size", "fixed_bin_number")


def _as_values(values: np.ndarray, name: str) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0:
        raise ValueError(f"{name} is empty: the intensity mask selects no voxel; pass a mask with at least one voxel.")
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{name} holds NaN or infinite values; pass only the finite intensities inside the mask.")
    return values


def _ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, NaN where the denominator is zero (a feature undefined on this ROI)."""
    return float(numerator / denominator) if denominator != 0 else float("nan")


def local_intensity_features(
    intensity: np.ndarray, int_mask: np.ndarray, spacing_mm: tuple[float, float, float]
) -> dict[str, float]:
    """Local and global intensity peak (IBSI-1 3.2).

    The local mean of a voxel is the mean intensity of all image voxels whose centre lies within
    :data:`LOCAL_PEAK_RADIUS_MM` (a 1 cm^3 sphere) of its centre, in physical distance, so anisotropic
    spacing shrinks the sphere along the coarse axis. Voxels outside the mask count, those outside the
    array do not: near the array border the mean is over the in-image part of the sphere only.

    Parameters
    ----------
    intensity : (z, y, x) ndarray of float
        Intensities of the image around the ROI (a crop with a margin of at least the sphere radius, so
        that the neighbourhood of ROI voxels is not truncated).
    int_mask : (z, y, x) ndarray of bool
        Intensity mask.
    spacing_mm : tuple of 3 float
        Voxel spacing (z, y, x) in mm.

    Returns
    -------
    dict
        ``loc_peak_loc``: local mean at the voxel of maximum intensity in the mask (the highest of those
        means when several voxels share the maximum); ``loc_peak_glob``: the highest local mean over the mask.

    Raises
    ------
    ValueError
        If shapes differ, the array is not 3D, a spacing is not positive or the mask is empty.
    """
    intensity = np.asarray(intensity, dtype=np.float64)
    int_mask = np.asarray(int_mask, dtype=bool)
    if intensity.ndim != 3:
        raise ValueError(f"intensity must be a 3D (z, y, x) array, got {intensity.ndim} dimensions.")
    if intensity.shape != int_mask.shape:
        raise ValueError(
            f"intensity {intensity.shape} and int_mask {int_mask.shape} differ in shape; pass arrays on one grid."
        )
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    if spacing.shape != (3,) or not np.all(spacing > 0):
        raise ValueError(f"spacing_mm must be three positive (z, y, x) spacings in mm, got {spacing_mm!r}.")
    if not int_mask.any():
        raise ValueError("int_mask is empty: pass a mask with at least one voxel.")
    if not np.all(np.isfinite(intensity)):
        raise ValueError("intensity holds NaN or infinite values; fill the image before computing local intensity.")

    half_extent = np.floor(LOCAL_PEAK_RADIUS_MM / spacing).astype(int)
    offsets = np.meshgrid(*(np.arange(-h, h + 1) * s for h, s in zip(half_extent, spacing)), indexing="ij")
    kernel = (np.sqrt(sum(offset**2 for offset in offsets)) <= LOCAL_PEAK_RADIUS_MM).astype(np.float64)

    # The sphere is symmetric, so convolution equals correlation; FFT keeps this cheap for fine in-plane
    # spacing, where the kernel holds hundreds of voxels.
    local_sum = signal.fftconvolve(intensity, kernel, mode="same")
    # Counting the in-image voxels under the sphere gives the truncated mean at the array border.
    local_count = np.rint(signal.fftconvolve(np.ones_like(intensity), kernel, mode="same"))
    local_mean = local_sum[int_mask] / local_count[int_mask]

    roi_values = intensity[int_mask]
    at_maximum = roi_values == roi_values.max()
    return {
        "loc_peak_loc": float(local_mean[at_maximum].max()),
        "loc_peak_glob": float(local_mean.max()),
    }


def statistics_features(values: np.ndarray) -> dict[str, float]:
    """Intensity-based statistical features (IBSI-1 3.3).

    Parameters
    ----------
    values : ndarray of float
        Intensities inside the intensity mask (``intensity[int_mask]``), any shape.

    Returns
    -------
    dict
        The 18 ``stat_*`` features. Percentiles interpolate linearly between order statistics (numpy's
        default, as the IBSI reference implementations do). Variance, skewness and kurtosis are the biased
        (population) moments; kurtosis is the excess kurtosis. Features that divide by zero on this ROI
        (skewness and kurtosis of a constant ROI, the coefficient of variation at zero mean, the quartile
        coefficient of dispersion when p25 + p75 = 0, the robust mean absolute deviation when no value lies
        between p10 and p90) are NaN.

    Raises
    ------
    ValueError
        If ``values`` is empty or not finite.
    """
    values = _as_values(values, "values")
    mean = values.mean()
    deviation = values - mean
    variance = np.mean(deviation**2)
    sd = math.sqrt(variance)
    p10, p25, median, p75, p90 = np.percentile(values, [10, 25, 50, 75, 90])
    robust = values[(values >= p10) & (values <= p90)]
    energy = float(np.sum(values**2))
    return {
        "stat_mean": float(mean),
        "stat_var": float(variance),
        "stat_skew": _ratio(np.mean(deviation**3), sd**3),
        "stat_kurt": _ratio(np.mean(deviation**4), variance**2) - 3.0,
        "stat_median": float(median),
        "stat_min": float(values.min()),
        "stat_p10": float(p10),
        "stat_p90": float(p90),
        "stat_max": float(values.max()),
        "stat_iqr": float(p75 - p25),
        "stat_range": float(values.max() - values.min()),
        "stat_mad": float(np.mean(np.abs(deviation))),
        # With very few voxels no value may lie between p10 and p90.
        "stat_rmad": float(np.mean(np.abs(robust - robust.mean()))) if robust.size else float("nan"),
        "stat_medad": float(np.mean(np.abs(values - median))),
        "stat_cov": _ratio(sd, mean),
        "stat_qcod": _ratio(p75 - p25, p75 + p25),
        "stat_energy": energy,
        "stat_rms": math.sqrt(energy / values.size),
    }


def histogram_features(levels: np.ndarray, n_levels: int) -> dict[str, float]:
    """Intensity-histogram features (IBSI-1 3.4) of discretised grey levels.

    Parameters
    ----------
    levels : ndarray of int
        Grey levels inside the intensity mask (``roi_levels[int_mask]``), values 1..n_levels.
    n_levels : int
        Number of grey levels of the discretisation; the histogram has a bin for every level 1..n_levels,
        empty ones included, which the histogram gradient sees.

    Returns
    -------
    dict
        The 23 ``ih_*`` features. The mode is the most frequent level (on a tie, the one nearest the mean,
        then the lower). The histogram gradient is the central difference of the bin counts, one-sided at
        levels 1 and n_levels; ``ih_max_grad_g``/``ih_min_grad_g`` are the (lowest) levels where it peaks.
        Statistical features follow :func:`statistics_features` on the levels.

    Raises
    ------
    ValueError
        If ``levels`` is empty, ``n_levels`` < 1, or a level lies outside 1..n_levels.
    """
    if int(n_levels) != n_levels or n_levels < 1:
        raise ValueError(f"n_levels must be a positive integer, got {n_levels!r}.")
    n_levels = int(n_levels)
    values = _as_values(levels, "levels")
    if np.any(values != np.round(values)) or values.min() < 1 or values.max() > n_levels:
        raise ValueError(
            f"levels must be integer grey levels in 1..{n_levels} (got {values.min():g}..{values.max():g}); "
            "pass roi.levels[roi.int_mask] with its n_levels."
        )
    stats = statistics_features(values)
    features = {"ih_" + tag.removeprefix("stat_"): value for tag, value in stats.items()}
    # Energy and RMS belong to the statistics family only; the histogram family has mode, entropy, uniformity
    # and gradients instead.
    del features["ih_energy"], features["ih_rms"]

    counts = np.bincount(values.astype(np.intp), minlength=n_levels + 1)[1:].astype(np.float64)
    probability = counts / values.size
    grey = np.arange(1, n_levels + 1, dtype=np.float64)

    modes = grey[counts == counts.max()]
    mode = modes[np.argmin(np.abs(modes - stats["stat_mean"]))]
    nonzero = probability[probability > 0]
    gradient = np.gradient(counts) if n_levels > 1 else np.zeros(1)

    features.update(
        {
            "ih_mode": float(mode),
            "ih_entropy": float(-np.sum(nonzero * np.log2(nonzero))),
            "ih_uniformity": float(np.sum(probability**2)),
            "ih_max_grad": float(gradient.max()),
            "ih_max_grad_g": float(grey[np.argmax(gradient)]),
            "ih_min_grad": float(gradient.min()),
            "ih_min_grad_g": float(grey[np.argmin(gradient)]),
        }
    )
    order = [
        "ih_mean", "ih_var", "ih_skew", "ih_kurt", "ih_median", "ih_min", "ih_p10", "ih_p90", "ih_max",
        "ih_mode", "ih_iqr", "ih_range", "ih_mad", "ih_rmad", "ih_medad", "ih_cov", "ih_qcod", "ih_entropy",
        "ih_uniformity", "ih_max_grad", "ih_max_grad_g", "ih_min_grad", "ih_min_grad_g",
    ]  # fmt: skip
    return {tag: features[tag] for tag in order}


def _finite_or_none(bound: float | None) -> float | None:
    return None if bound is None or not np.isfinite(bound) else float(bound)


def ivh_features(
    values: np.ndarray,
    *,
    method: str,
    bin_width: float | None = None,
    n_bins: int | None = None,
    range_min: float | None = None,
    range_max: float | None = None,
    is_discrete: bool = True,
) -> dict[str, float]:
    """Intensity-volume histogram features (IBSI-1 3.5).

    The IVH has its own discretisation, independent of the texture one. Its grid of intensities
    ``G_1 < ... < G_K`` (uniform step) is:

    - ``"none"``: every integer from the range's lower to its upper bound (step 1; e.g. CT in HU);
    - ``"fixed_bin_size"``: bins of ``bin_width`` counted from the range's lower bound, each voxel
      represented by its bin centre ``range_min + (k - 0.5) * bin_width``, k = 1 .. ceil(range / width) + 1;
    - ``"fixed_bin_number"``: ``n_bins`` bins spanning the ROI's minimum to maximum, each voxel represented
      by its bin number 1..n_bins (the resegmentation range is not used).

    The range is ``[range_min, range_max]`` where given (the bounds of the resegmentation range), else the
    ROI minimum / maximum. With gamma_k = (G_k - G_1) / (G_K - G_1) the intensity fraction and nu_k the
    fraction of voxels whose discretised intensity is >= G_k: V_x = nu at the first G_k with gamma_k >= x %;
    I_x = the lowest G_k with nu_k <= x % (G_K + step when there is none).

    Parameters
    ----------
    values : ndarray of float
        Intensities inside the intensity mask, any shape.
    method : {"none", "fixed_bin_size", "fixed_bin_number"}
        IVH discretisation.
    bin_width : float, optional
        Bin width in intensity units, required for ``"fixed_bin_size"``.
    n_bins : int, optional
        Number of bins for ``"fixed_bin_number"`` (default 1000, IBSI's choice for configuration E).
    range_min, range_max : float, optional
        Bounds of the resegmentation range; None or infinite means the ROI's own minimum / maximum.
    is_discrete : bool
        Whether the intensities are discrete (integers such as CT HU or the digital phantom's levels).
        Continuous intensities (PET SUV, filtered images) have no natural grid: ``"none"`` then uses
        ``"fixed_bin_number"`` with ``n_bins`` (default 1000), as IBSI recommends.

    Returns
    -------
    dict
        ``ivh_v10``, ``ivh_v90``, ``ivh_i10``, ``ivh_i90``, ``ivh_diff_v10_v90``, ``ivh_diff_i10_i90`` and
        ``ivh_auc`` (trapezoidal area under nu(gamma); IBSI gives no reference value for it). Volume
        features are NaN when the grid has a single intensity (no intensity range).

    Raises
    ------
    ValueError
        On an unknown method, a missing or non-positive bin width / bin number, an empty input, values
        outside the given range, or non-integer values with ``"none"`` and ``is_discrete``.
    """
    values = _as_values(values, "values")
    if method not in IVH_METHODS:
        raise ValueError(f"method must be one of {IVH_METHODS}, got {method!r}.")
    if method == "none" and not is_discrete:
        method = "fixed_bin_number"
    lower = _finite_or_none(range_min)
    upper = _finite_or_none(range_max)
    if lower is not None and upper is not None and lower > upper:
        raise ValueError(f"range_min {lower:g} exceeds range_max {upper:g}; pass the resegmentation range in order.")
    if (lower is not None and values.min() < lower) or (upper is not None and values.max() > upper):
        raise ValueError(
            f"values span {values.min():g}..{values.max():g}, outside the range [{range_min}, {range_max}]; "
            "pass the intensities of the resegmented intensity mask."
        )
    lower = values.min() if lower is None else lower
    upper = values.max() if upper is None else upper

    if method == "none":
        if np.any(values != np.round(values)) or lower != round(lower) or upper != round(upper):
            raise ValueError(
                "method 'none' uses a grid of unit steps, but the intensities or range bounds are not integers; "
                "round the image (IBSI rounds CT to HU) or use 'fixed_bin_size' / 'fixed_bin_number'."
            )
        index = (values - lower).astype(np.intp)
        n_grid = int(upper - lower) + 1
        grid_start, step = lower, 1.0
    elif method == "fixed_bin_size":
        if bin_width is None or not bin_width > 0:
            raise ValueError(f"method 'fixed_bin_size' needs a positive bin_width, got {bin_width!r}.")
        n_grid = int(math.ceil((upper - lower) / bin_width)) + 1
        index = np.floor((values - lower) / bin_width).astype(np.intp)
        grid_start, step = lower + 0.5 * bin_width, float(bin_width)
    else:
        n_bins = 1000 if n_bins is None else n_bins
        if int(n_bins) != n_bins or n_bins < 1:
            raise ValueError(f"method 'fixed_bin_number' needs a positive integer n_bins, got {n_bins!r}.")
        n_grid = int(n_bins)
        low, high = values.min(), values.max()
        if high > low:
            index = np.clip(np.floor(n_grid * (values - low) / (high - low)).astype(np.intp), 0, n_grid - 1)
        else:
            index = np.zeros(values.size, dtype=np.intp)
        grid_start, step = 1.0, 1.0

    counts = np.bincount(index, minlength=n_grid)
    # Voxels at or above each grid intensity, kept as integers so that "<= x %" is compared exactly.
    at_or_above = values.size - np.concatenate(([0], np.cumsum(counts)[:-1]))
    volume_fraction = at_or_above / values.size
    grid = grid_start + step * np.arange(n_grid)
    # k / (K - 1) is the correctly rounded intensity fraction, so a grid point at exactly x % is not lost to
    # rounding (e.g. -410 HU in [-500, 400] is exactly 10 %).
    intensity_fraction = np.arange(n_grid) / (n_grid - 1) if n_grid > 1 else np.full(1, np.nan)

    def volume_at(percent: float) -> float:
        reached = np.flatnonzero(intensity_fraction >= percent / 100.0)
        return float(volume_fraction[reached[0]]) if reached.size else float("nan")

    def intensity_at(percent: float) -> float:
        below = np.flatnonzero(at_or_above * 100.0 <= percent * values.size)
        return float(grid[below[0]]) if below.size else float(grid[-1] + step)

    v10, v90 = volume_at(10.0), volume_at(90.0)
    i10, i90 = intensity_at(10.0), intensity_at(90.0)
    if n_grid > 1:
        auc = float(np.sum(0.5 * (volume_fraction[1:] + volume_fraction[:-1]) * np.diff(intensity_fraction)))
    else:
        auc = float("nan")
    return {
        "ivh_v10": v10,
        "ivh_v90": v90,
        "ivh_i10": i10,
        "ivh_i90": i90,
        "ivh_diff_v10_v90": v10 - v90,
        "ivh_diff_i10_i90": i10 - i90,
        "ivh_auc": auc,
    }
