"""Grey-level discretisation of ROI intensities (IBSI-1, section 2.7).

Three methods, as IBSI-1 defines them:

* ``fixed_bin_size`` (FBS): ``level = floor((x - range_min) / bin_width) + 1``, where
  ``range_min`` is the lower bound of the resegmentation range (so that bins mean the
  same intensities in every image) or, without one, the ROI minimum. The number of
  levels is the highest level in the ROI.
* ``fixed_bin_number`` (FBN): ``level = floor(n_bins (x - min) / (max - min)) + 1`` over
  the ROI's own minimum and maximum; the maximum goes to the last bin, and the number
  of levels is ``n_bins`` even when some bins are empty.
* ``none``: the intensities already are grey levels (the IBSI digital phantom); they
  must be whole numbers ≥ 1 and the number of levels is the highest one present.

A constant ROI gives a single level (level 1, one level) with either binning method.
"""

from __future__ import annotations

import math

import numpy as np

METHODS = ("fixed_bin_size", "fixed_bin_number", "none")


def discretise(
    values: np.ndarray,
    method: str,
    *,
    bin_width: float | None = None,
    n_bins: int | None = None,
    range_min: float | None = None,
) -> tuple[np.ndarray, int]:
    """Discretise ROI intensities into grey levels ``1..n_levels``.

    Parameters
    ----------
    values : ndarray of float
        Intensities of the ROI's voxels (any shape; pass only the voxels inside the
        intensity mask, since the ROI's extremes set the bins).
    method : {"fixed_bin_size", "fixed_bin_number", "none"}
        Discretisation method.
    bin_width : float, optional
        Bin width in intensity units (fixed bin size), > 0.
    n_bins : int, optional
        Number of bins (fixed bin number), a whole number ≥ 1.
    range_min : float, optional
        Lower bound of the resegmentation range: the fixed bins start there. None: they
        start at the ROI minimum.

    Returns
    -------
    levels : ndarray of int32
        Grey levels, the shape of `values`, 1..`n_levels`.
    n_levels : int
        Number of grey levels.

    Raises
    ------
    ValueError
        No values, values that are not finite, an unknown method, a missing or bad bin
        width or bin number, intensities below `range_min`, or (method "none") values
        that are not whole numbers ≥ 1.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        raise ValueError("discretise: there are no intensities (an empty ROI); check the mask and the resegmentation")
    if not np.all(np.isfinite(values)):
        raise ValueError("discretise: the intensities hold NaN or infinite values; mask them out first")
    low, high = float(values.min()), float(values.max())

    if method == "fixed_bin_size":
        if bin_width is None or not (math.isfinite(bin_width) and bin_width > 0):
            raise ValueError(f"discretise: fixed_bin_size needs a bin_width > 0, got {bin_width}")
        start = low if range_min is None else float(range_min)
        if low < start:
            raise ValueError(
                f"discretise: intensities down to {low} lie below range_min {start}; resegment the ROI to the range "
                "first, or give the range's lower bound"
            )
        levels = _floor((values - start) / bin_width) + 1
        n_levels = int(levels.max())
    elif method == "fixed_bin_number":
        if n_bins is None or int(n_bins) != n_bins or n_bins < 1:
            raise ValueError(f"discretise: fixed_bin_number needs a whole number of bins ≥ 1, got {n_bins}")
        n_bins = int(n_bins)
        if high == low:
            return np.ones(values.shape, dtype=np.int32), 1
        levels = _floor(n_bins * (values - low) / (high - low)) + 1
        # The maximum itself falls at n_bins + 1 and belongs to the last bin.
        np.clip(levels, 1, n_bins, out=levels)
        n_levels = n_bins
    elif method == "none":
        if low < 1 or not np.all(values == np.floor(values)):
            raise ValueError(
                "discretise: method 'none' takes intensities that already are grey levels (whole numbers ≥ 1); "
                "use fixed_bin_size or fixed_bin_number for other images"
            )
        levels = values.astype(np.int64)
        n_levels = int(levels.max())
    else:
        raise ValueError(f"discretise: method '{method}' is unknown; use one of {', '.join(METHODS)}")
    return levels.astype(np.int32), n_levels


def _floor(quotients: np.ndarray) -> np.ndarray:
    # A value on a bin edge written in decimal (0.3 with bins of 0.1) divides to just below
    # the whole number in binary (2.9999999999999996); it belongs to the upper bin, as exact
    # arithmetic says, so quotients within a few ulps of a whole number are snapped to it.
    nearest = np.round(quotients)
    snapped = np.where(np.abs(quotients - nearest) <= 1e-9 * np.maximum(1.0, np.abs(quotients)), nearest, quotients)
    return np.floor(snapped).astype(np.int64)
