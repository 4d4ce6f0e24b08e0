"""Grey level co-occurrence matrix (GLCM) features, IBSI-1 section 3.6, with all six aggregations.

Matrices are symmetric (each pair counted i->j and j->i), built from pairs of voxels at Chebyshev
distance `distance` along the 13 unique 3D directions (or the 4 in-plane ones per axial slice),
with both voxels inside the intensity mask. Every matrix of every aggregation is counted in one
``np.bincount`` per family of directions, and the 25 features are computed at once over the whole
stack of matrices.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import numpy as np

from ImagInfoExtension.radiomics.texture.directions import (
    AGGREGATIONS,
    FeatureMeans,
    aggregate_directions,
    check_distance,
    check_texture_input,
    compact_levels,
)

FEATURE_NAMES: tuple[str, ...] = (
    "joint_max",
    "joint_avg",
    "joint_var",
    "joint_entr",
    "diff_avg",
    "diff_var",
    "diff_entr",
    "sum_avg",
    "sum_var",
    "sum_entr",
    "energy",
    "contrast",
    "dissimilarity",
    "inv_diff",
    "inv_diff_norm",
    "inv_diff_mom",
    "inv_diff_mom_norm",
    "inv_var",
    "corr",
    "auto_corr",
    "clust_tend",
    "clust_shade",
    "clust_prom",
    "info_corr1",
    "info_corr2",
)
"""The 25 IBSI GLCM features, as spelt in the tags ``cm_<feature>_<aggregation>``."""


def glcm_matrices(
    levels: np.ndarray,
    int_mask: np.ndarray,
    n_levels: int,
    directions: Sequence[tuple[int, int, int]],
    *,
    distance: int = 1,
    per_slice: bool = False,
) -> np.ndarray:
    """Count symmetric co-occurrences per direction (and per axial slice).

    Parameters
    ----------
    levels : ndarray of int64, shape (z, y, x)
        Grey levels 1..`n_levels` inside `int_mask`, 0 outside.
    int_mask : ndarray of bool, shape (z, y, x)
        Intensity mask.
    n_levels : int
        Number of grey levels (matrix size).
    directions : sequence of (dz, dy, dx)
        Unit neighbour directions; the offset used is ``distance`` times each.
    distance : int, optional
        Chebyshev distance between the voxels of a pair, in voxels.
    per_slice : bool, optional
        Keep one matrix per axial slice (for in-plane directions).

    Returns
    -------
    ndarray of int64, shape (n_directions, n_slices, n_levels, n_levels)
        ``n_slices`` is the number of z slices when `per_slice`, else 1. Entry ``[d, s, i-1, j-1]``
        counts the pairs with levels (i, j), both orders.
    """
    n_z = levels.shape[0] if per_slice else 1
    padded = np.pad(levels, distance)
    strides = np.array([padded.shape[1] * padded.shape[2], padded.shape[2], 1])
    coords = np.nonzero(int_mask)
    flat = np.ravel_multi_index(tuple(c + distance for c in coords), padded.shape)
    padded = padded.ravel()
    from_level = padded[flat] - 1
    # Combined index (direction, slice, i) of every voxel, before its neighbour's level is appended.
    base = coords[0] * n_levels + from_level if per_slice else from_level
    codes = []
    for index, direction in enumerate(directions):
        neighbour = padded[flat + distance * int(np.dot(strides, direction))]
        valid = neighbour > 0
        codes.append(((index * n_z * n_levels + base[valid]) * n_levels) + neighbour[valid] - 1)
    counts = np.bincount(np.concatenate(codes), minlength=len(directions) * n_z * n_levels * n_levels)
    counts = counts.reshape(len(directions), n_z, n_levels, n_levels)
    return counts + counts.swapaxes(2, 3)


def _xlog2x(p: np.ndarray) -> np.ndarray:
    return p * np.log2(np.where(p > 0, p, 1.0))


def glcm_feature_stack(matrices: np.ndarray, grey: np.ndarray, n_levels: int) -> dict[str, np.ndarray]:
    """The 25 IBSI GLCM features of each matrix of a stack.

    Parameters
    ----------
    matrices : ndarray, shape (n, G, G)
        Symmetric co-occurrence counts, none of them empty.
    grey : ndarray of float, shape (G,)
        Grey level of each row (and column), increasing, within 1..`n_levels`.
    n_levels : int
        Number of grey levels N_g of the discretisation (it normalises ``inv_diff_norm`` and
        ``inv_diff_mom_norm``).

    Returns
    -------
    dict of str to ndarray, shape (n,)
        Keyed by the names in :data:`FEATURE_NAMES`; NaN where a feature is undefined
        (a zero variance for ``corr``, a single grey level for ``info_corr1``).
    """
    n = matrices.shape[0]
    p = matrices / matrices.sum(axis=(1, 2), keepdims=True)
    p_i = p.sum(axis=2)
    p_j = p.sum(axis=1)
    mu_i = p_i @ grey
    mu_j = p_j @ grey
    var_i = p_i @ grey**2 - mu_i**2
    var_j = p_j @ grey**2 - mu_j**2

    # Diagonal (k = |i - j|, 0..N_g-1) and cross-diagonal (k = i + j, 2..2N_g) probabilities,
    # one bincount each over the whole stack.
    grey_index = grey.astype(np.int64)
    diff_k = np.abs(grey_index[:, None] - grey_index[None, :]).ravel()
    sum_k = (grey_index[:, None] + grey_index[None, :] - 2).ravel()
    n_sums = 2 * n_levels - 1
    flat = p.reshape(-1)
    p_diff = np.bincount((diff_k + n_levels * np.arange(n)[:, None]).ravel(), flat, minlength=n * n_levels)
    p_diff = p_diff.reshape(n, n_levels)
    p_sum = np.bincount((sum_k + n_sums * np.arange(n)[:, None]).ravel(), flat, minlength=n * n_sums)
    p_sum = p_sum.reshape(n, n_sums)
    k_diff = np.arange(n_levels, dtype=float)
    k_sum = np.arange(2, 2 * n_levels + 1, dtype=float)

    diff_avg = p_diff @ k_diff
    sum_avg = p_sum @ k_sum
    joint_entr = -_xlog2x(p).sum(axis=(1, 2))
    auto_corr = np.einsum("nij,i,j->n", p, grey, grey)
    # Cluster moments: i + j - mu_i - mu_j depends on i + j only.
    centred_sum = k_sum[None, :] - (mu_i + mu_j)[:, None]
    inv_var_weight = np.zeros(n_levels)
    inv_var_weight[1:] = 1.0 / k_diff[1:] ** 2

    entropy_i = -_xlog2x(p_i).sum(axis=1)
    entropy_j = -_xlog2x(p_j).sum(axis=1)
    log_i = np.log2(np.where(p_i > 0, p_i, 1.0))
    log_j = np.log2(np.where(p_j > 0, p_j, 1.0))
    # HXY1 = -sum p_ij log2(p_i p_j); HXY2 = -sum p_i p_j log2(p_i p_j) = HX + HY.
    hxy1 = -(np.einsum("nij,ni->n", p, log_i) + np.einsum("nij,nj->n", p, log_j))
    hxy2 = entropy_i + entropy_j
    max_entropy = np.maximum(entropy_i, entropy_j)
    with np.errstate(divide="ignore", invalid="ignore"):
        corr = (auto_corr - mu_i * mu_j) / np.sqrt(var_i * var_j)
        corr[(var_i <= 0) | (var_j <= 0)] = np.nan
        info_corr1 = (joint_entr - hxy1) / max_entropy
        info_corr1[max_entropy <= 0] = np.nan
    # Rounding can push HXY2 - HXY a hair below 0 for independent marginals.
    info_corr2 = np.sqrt(1.0 - np.exp(-2.0 * np.maximum(hxy2 - joint_entr, 0.0)))

    return {
        "joint_max": p.max(axis=(1, 2)),
        "joint_avg": mu_i,
        "joint_var": var_i,
        "joint_entr": joint_entr,
        "diff_avg": diff_avg,
        "diff_var": p_diff @ k_diff**2 - diff_avg**2,
        "diff_entr": -_xlog2x(p_diff).sum(axis=1),
        "sum_avg": sum_avg,
        "sum_var": p_sum @ k_sum**2 - sum_avg**2,
        "sum_entr": -_xlog2x(p_sum).sum(axis=1),
        "energy": (p**2).sum(axis=(1, 2)),
        "contrast": p_diff @ k_diff**2,
        "dissimilarity": diff_avg,
        "inv_diff": p_diff @ (1.0 / (1.0 + k_diff)),
        "inv_diff_norm": p_diff @ (1.0 / (1.0 + k_diff / n_levels)),
        "inv_diff_mom": p_diff @ (1.0 / (1.0 + k_diff**2)),
        "inv_diff_mom_norm": p_diff @ (1.0 / (1.0 + (k_diff / n_levels) ** 2)),
        "inv_var": p_diff @ inv_var_weight,
        "corr": corr,
        "auto_corr": auto_corr,
        "clust_tend": (p_sum * centred_sum**2).sum(axis=1),
        "clust_shade": (p_sum * centred_sum**3).sum(axis=1),
        "clust_prom": (p_sum * centred_sum**4).sum(axis=1),
        "info_corr1": info_corr1,
        "info_corr2": info_corr2,
    }


def glcm_features(
    levels: np.ndarray,
    int_mask: np.ndarray,
    n_levels: int,
    *,
    distance: int = 1,
    aggregations: Sequence[str] = AGGREGATIONS,
) -> dict[str, float]:
    """IBSI-1 GLCM features for the requested aggregation methods.

    Parameters
    ----------
    levels : ndarray of int, shape (z, y, x)
        Discretised grey levels, 1..`n_levels` inside `int_mask`; values outside are ignored.
    int_mask : ndarray of bool, shape (z, y, x)
        Intensity mask; only pairs with both voxels inside count.
    n_levels : int
        Number of grey levels N_g (it enters ``inv_diff_norm`` and ``inv_diff_mom_norm``).
    distance : int, optional
        Chebyshev distance between paired voxels, in voxels (IBSI default 1).
    aggregations : sequence of str, optional
        Any of ``"2D_avg"`` (features per slice and in-plane direction, averaged),
        ``"2D_comb"`` (per slice, the 4 directions merged, averaged over slices),
        ``"2_5D_avg"`` (per in-plane direction, merged over slices, averaged over directions),
        ``"2_5D_comb"`` (one matrix over all slices and in-plane directions),
        ``"3D_avg"`` (per 3D direction, averaged over the 13) and ``"3D_comb"`` (the 13 merged).

    Returns
    -------
    dict of str to float
        ``cm_<feature>_<aggregation>`` for the 25 features of :data:`FEATURE_NAMES`. Empty matrices
        (a slice or direction without any pair) are left out of the averages; an aggregation with
        no pair at all gives NaN.

    Raises
    ------
    ValueError
        Shapes that differ, ``n_levels < 1``, an empty mask, levels outside 1..`n_levels` in the
        mask, an unknown aggregation or ``distance < 1``.
    """
    levels, int_mask, aggregations = check_texture_input(levels, int_mask, n_levels, aggregations)
    distance = check_distance(distance)
    n_levels = int(n_levels)
    compact, grey = compact_levels(levels, int_mask)
    size = len(grey)
    means = FeatureMeans("cm", FEATURE_NAMES, aggregations, partial(_stack_features, grey=grey, n_levels=n_levels))

    def matrices(part: slice, directions: Sequence[tuple[int, int, int]], per_slice: bool) -> np.ndarray:
        return glcm_matrices(compact[part], int_mask[part], size, directions, distance=distance, per_slice=per_slice)

    aggregate_directions(means, int_mask, (size, size), matrices)
    return means.result()


def _stack_features(
    matrices: np.ndarray, n_voxels: np.ndarray, grey: np.ndarray, n_levels: int
) -> dict[str, np.ndarray]:
    # No GLCM feature counts voxels: the count that the aggregation passes along is the GLRLM's.
    return glcm_feature_stack(matrices, grey, n_levels)
