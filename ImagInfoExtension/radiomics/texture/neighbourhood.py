"""Neighbourhood grey tone difference (NGTDM) and neighbouring grey level dependence
(NGLDM) matrices and their IBSI-1 features.

Both look at the neighbourhood of each ROI voxel: the voxels within Chebyshev distance
``distance`` (a square of side 2*distance+1 within the axial slice for 2D and 2.5D, a cube
for 3D), without the centre. Only neighbours inside the intensity mask count; the edge of
the array counts as outside.

The per-voxel neighbour counts and sums are accumulated over the neighbour offsets with
shifted views of a padded copy: one vectorised pass per offset (8 in a slice, 26 in a
volume at distance 1), and the in-slice offsets are shared between the 2D and 3D variants.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import product

import numpy as np

from .directions import check_distance
from .zones import bounding_box, check_texture_inputs, collect_features, matrix_features

__all__ = ["ngtdm_features", "ngldm_features"]

_NGL_TAGS = {
    "small_j": "lde",
    "large_j": "hde",
    "low_grey": "lgce",
    "high_grey": "hgce",
    "small_j_low_grey": "ldlge",
    "small_j_high_grey": "ldhge",
    "large_j_low_grey": "hdlge",
    "large_j_high_grey": "hdhge",
    "glnu": "glnu",
    "glnu_norm": "glnu_norm",
    "jnu": "dcnu",
    "jnu_norm": "dcnu_norm",
    "percentage": "dc_perc",
    "gl_var": "gl_var",
    "j_var": "dc_var",
    "j_entropy": "dc_entr",
    "j_energy": "dc_energy",
}

_NGT_FEATURES = ("coarseness", "contrast", "busyness", "complexity", "strength")


def _neighbour_accumulators(
    levels: np.ndarray,
    int_mask: np.ndarray,
    distance: int,
    dims: Sequence[str],
    coarseness: int | None,
) -> dict[bool, tuple[np.ndarray, ...]]:
    """Per in-mask voxel: the count of neighbours in the mask and either the sum of their
    grey levels (``coarseness`` None) or the count of those within ``coarseness`` levels.

    Returns a dict keyed by ``per_slice`` (True for the in-slice neighbourhood of 2D and
    2_5D, False for the volume neighbourhood of 3D), each holding arrays over the voxels of
    ``int_mask`` in C order.
    """
    need_slice = any(d in ("2D", "2_5D") for d in dims)
    need_volume = "3D" in dims
    d = distance
    padded_levels = np.pad(levels, d, constant_values=0)
    padded_mask = np.pad(int_mask, d, constant_values=False)
    nz, ny, nx = levels.shape
    centre = levels.astype(np.int64)

    n_neighbours = np.zeros(levels.shape, dtype=np.int64)
    accumulated = np.zeros(levels.shape, dtype=np.int64)
    steps = range(-d, d + 1)
    # In-slice offsets first, so that their totals can be read off before the others.
    offsets = [(0, dy, dx) for dy, dx in product(steps, steps) if (dy, dx) != (0, 0)]
    if need_volume:
        offsets += [(dz, dy, dx) for dz, dy, dx in product(steps, steps, steps) if dz != 0]

    result: dict[bool, tuple[np.ndarray, ...]] = {}
    n_in_slice = (2 * d + 1) ** 2 - 1
    for index, (dz, dy, dx) in enumerate(offsets):
        window = (slice(d + dz, d + dz + nz), slice(d + dy, d + dy + ny), slice(d + dx, d + dx + nx))
        neighbour_in = padded_mask[window]
        n_neighbours += neighbour_in
        if coarseness is None:
            accumulated += padded_levels[window]  # levels are 0 outside the mask
        else:
            accumulated += neighbour_in & (np.abs(padded_levels[window] - centre) <= coarseness)
        if index + 1 == n_in_slice and need_slice:
            result[True] = (n_neighbours[int_mask].copy(), accumulated[int_mask].copy())
    if need_volume:
        result[False] = (n_neighbours[int_mask], accumulated[int_mask])
    return result


def _ngtdm_group_features(n_i: np.ndarray, s_i: np.ndarray) -> dict[str, float]:
    """NGTDM features of one matrix given its voxel counts and s values per grey level.

    Undefined cases take the values IBSI-1 assigns: coarseness 1e6 when sum(p s) is 0;
    contrast and busyness 0 for a single grey level; strength 0 when sum(s) is 0. An empty
    matrix (no voxel with a neighbour) gives NaN.
    """
    present = n_i > 0
    if not present.any():
        return dict.fromkeys(_NGT_FEATURES, float("nan"))
    grey = np.flatnonzero(present).astype(np.float64) + 1.0
    n = n_i[present].astype(np.float64)
    s = s_i[present]
    n_voxels = n.sum()
    p = n / n_voxels
    n_present = grey.size
    ps = p * s
    sum_ps = ps.sum()
    sum_s = s.sum()
    grey_diff = grey[:, None] - grey[None, :]
    p_sum = p[:, None] + p[None, :]

    coarseness = 1.0e6 if sum_ps == 0 else 1.0 / sum_ps
    if n_present > 1:
        contrast = (p[:, None] * p[None, :] * grey_diff**2).sum() / (n_present * (n_present - 1)) * sum_s / n_voxels
        weighted = grey * p
        busy_denominator = np.abs(weighted[:, None] - weighted[None, :]).sum()
        busyness = sum_ps / busy_denominator if busy_denominator > 0 else 0.0
    else:
        contrast = 0.0
        busyness = 0.0
    complexity = (np.abs(grey_diff) * (ps[:, None] + ps[None, :]) / p_sum).sum() / n_voxels
    strength = (p_sum * grey_diff**2).sum() / sum_s if sum_s > 0 else 0.0
    return {
        "coarseness": float(coarseness),
        "contrast": float(contrast),
        "busyness": float(busyness),
        "complexity": float(complexity),
        "strength": float(strength),
    }


def ngtdm_features(
    levels: np.ndarray,
    int_mask: np.ndarray,
    n_levels: int,
    *,
    distance: int = 1,
    dimensions: Sequence[str] = ("2D", "2_5D", "3D"),
) -> dict[str, float]:
    """IBSI-1 neighbourhood grey tone difference matrix features (section 3.9).

    For each voxel with at least one neighbour in the intensity mask, ``s_i`` of its grey
    level i gains |i - mean grey level of those neighbours|; voxels without such a
    neighbour are left out of the matrix and of the voxel count N_v,c.

    Parameters
    ----------
    levels : ndarray of int, shape (z, y, x)
        Discretised grey levels 1..n_levels inside ``int_mask`` (ignored outside).
    int_mask : ndarray of bool, shape (z, y, x)
        Intensity mask of the ROI.
    n_levels : int
        Number of grey levels of the discretisation (>= 1).
    distance : int
        Chebyshev radius of the neighbourhood in voxels (>= 1).
    dimensions : sequence of {"2D", "2_5D", "3D"}
        Spatial variants: in-slice neighbourhoods with features averaged over slices (2D),
        in-slice neighbourhoods with the slices' matrices summed (2_5D), or volume
        neighbourhoods (3D).

    Returns
    -------
    dict of str to float
        ``ngt_<feature>_<dim>`` for coarseness, contrast, busyness, complexity and
        strength. Where IBSI-1 defines a value for a degenerate matrix (a single grey level,
        no grey tone difference) that value is returned; a matrix with no voxel gives NaN.

    Raises
    ------
    ValueError
        On arrays of different shape or not 3-D, an empty mask, ``n_levels`` < 1, grey
        levels outside 1..n_levels in the mask, ``distance`` < 1, or an unknown dimension.
    """
    levels, int_mask, dims = check_texture_inputs(levels, int_mask, n_levels, dimensions)
    distance = check_distance(distance)
    n_levels = int(n_levels)
    box = bounding_box(int_mask)
    levels, int_mask = levels[box], int_mask[box]
    accumulators = _neighbour_accumulators(levels, int_mask, distance, dims, coarseness=None)

    voxel_level = levels[int_mask] - 1
    voxel_slice = np.nonzero(int_mask)[0]
    n_slices = levels.shape[0]
    per_dimension = {}
    for dim in dims:
        n_neighbours, level_sum = accumulators[dim != "3D"]
        valid = n_neighbours > 0
        tone_difference = np.abs(voxel_level[valid] + 1.0 - level_sum[valid] / n_neighbours[valid])
        group = voxel_slice[valid] if dim == "2D" else np.zeros(int(valid.sum()), dtype=np.int64)
        n_groups = n_slices if dim == "2D" else 1
        key = group * n_levels + voxel_level[valid]
        counts = np.bincount(key, minlength=n_groups * n_levels).reshape(n_groups, n_levels)
        s_values = np.bincount(key, weights=tone_difference, minlength=n_groups * n_levels).reshape(n_groups, n_levels)
        per_group = [_ngtdm_group_features(counts[g], s_values[g]) for g in range(n_groups)]
        per_dimension[dim] = {name: np.array([features[name] for features in per_group]) for name in _NGT_FEATURES}
    return collect_features("ngt", {name: name for name in _NGT_FEATURES}, per_dimension)


def ngldm_features(
    levels: np.ndarray,
    int_mask: np.ndarray,
    n_levels: int,
    *,
    distance: int = 1,
    coarseness: int = 0,
    dimensions: Sequence[str] = ("2D", "2_5D", "3D"),
) -> dict[str, float]:
    """IBSI-1 neighbouring grey level dependence matrix features (section 3.10).

    Every voxel of the intensity mask is the centre of one neighbourhood; its dependence
    count j is 1 (the centre itself) plus the number of neighbours in the mask whose grey
    level differs from the centre's by at most ``coarseness``. The matrix counts
    neighbourhoods by centre grey level and dependence count.

    Parameters
    ----------
    levels : ndarray of int, shape (z, y, x)
        Discretised grey levels 1..n_levels inside ``int_mask`` (ignored outside).
    int_mask : ndarray of bool, shape (z, y, x)
        Intensity mask of the ROI.
    n_levels : int
        Number of grey levels of the discretisation (>= 1).
    distance : int
        Chebyshev radius of the neighbourhood in voxels (>= 1).
    coarseness : int
        Largest grey level difference for a neighbour to be dependent (>= 0; IBSI uses 0).
    dimensions : sequence of {"2D", "2_5D", "3D"}
        Spatial variants, as for :func:`ngtdm_features`.

    Returns
    -------
    dict of str to float
        17 features per variant, keyed ``ngl_<feature>_<dim>`` as in the IBSI reference
        tables (``ngl_lde_3D``, ``ngl_dc_energy_2D``, ...).

    Raises
    ------
    ValueError
        As :func:`ngtdm_features`, and for ``coarseness`` < 0.
    """
    levels, int_mask, dims = check_texture_inputs(levels, int_mask, n_levels, dimensions)
    distance = check_distance(distance)
    if int(coarseness) != coarseness or coarseness < 0:
        raise ValueError(f"coarseness must be an integer >= 0 (grey levels), got {coarseness!r}")
    box = bounding_box(int_mask)
    levels, int_mask = levels[box], int_mask[box]
    accumulators = _neighbour_accumulators(levels, int_mask, distance, dims, coarseness=int(coarseness))

    voxel_level = levels[int_mask]
    voxel_slice = np.nonzero(int_mask)[0]
    voxels_per_slice = int_mask.sum(axis=(1, 2)).astype(np.float64)
    per_dimension = {}
    for dim in dims:
        _, dependent = accumulators[dim != "3D"]
        if dim == "2D":
            group, n_voxels = voxel_slice, voxels_per_slice
        else:
            group, n_voxels = np.zeros(voxel_level.size, dtype=np.int64), np.array([voxels_per_slice.sum()])
        per_dimension[dim] = matrix_features(group, voxel_level, dependent + 1, n_voxels)
    return collect_features("ngl", _NGL_TAGS, per_dimension)
