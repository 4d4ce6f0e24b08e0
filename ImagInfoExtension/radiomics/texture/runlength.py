"""Grey level run length matrix (GLRLM) features, IBSI-1 section 3.7, with all six aggregations.

A run is a maximal sequence of consecutive voxels along one direction, all inside the intensity
mask and all of the same grey level; voxels outside the mask break runs. Runs are found without
a loop over lines: the masked voxels are sorted along the lines of a direction
(:func:`~ImagInfoExtension.radiomics.texture.directions.line_order`), a run starts wherever the line
breaks or the level changes, and run lengths are the differences of the start indices.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import numpy as np

from ImagInfoExtension.radiomics.texture.directions import (
    AGGREGATIONS,
    FeatureMeans,
    aggregate_directions,
    check_texture_input,
    compact_levels,
    line_order,
)

FEATURE_NAMES: tuple[str, ...] = (
    "sre",
    "lre",
    "lgre",
    "hgre",
    "srlge",
    "srhge",
    "lrlge",
    "lrhge",
    "glnu",
    "glnu_norm",
    "rlnu",
    "rlnu_norm",
    "r_perc",
    "gl_var",
    "rl_var",
    "rl_entr",
)
"""The 16 IBSI GLRLM features, as spelt in the tags ``rlm_<feature>_<aggregation>``."""


def glrlm_matrices(
    levels: np.ndarray,
    int_mask: np.ndarray,
    n_levels: int,
    directions: Sequence[tuple[int, int, int]],
    *,
    per_slice: bool = False,
    max_length: int | None = None,
) -> np.ndarray:
    """Count runs per direction (and per axial slice, by the slice where each run starts).

    Parameters
    ----------
    levels : ndarray of int64, shape (z, y, x)
        Grey levels 1..`n_levels` inside `int_mask`, 0 outside.
    int_mask : ndarray of bool, shape (z, y, x)
        Intensity mask.
    n_levels : int
        Number of grey levels.
    directions : sequence of (dz, dy, dx)
        Unit directions, first non-zero component positive.
    per_slice : bool, optional
        Keep one matrix per axial slice (meaningful for in-plane directions, whose runs stay in
        their slice).
    max_length : int, optional
        Length of the run-length axis, at least the longest run; by default the largest array
        dimension, which no run can exceed.

    Returns
    -------
    ndarray of int64, shape (n_directions, n_slices, n_levels, max_length)
        ``n_slices`` is the number of z slices when `per_slice`, else 1. Entry ``[d, s, i-1, l-1]``
        counts the runs of level i and length l.
    """
    shape = levels.shape
    coords = np.array(np.nonzero(int_mask), dtype=np.int64)
    voxel_levels = levels[int_mask]
    n_z = shape[0] if per_slice else 1
    if max_length is None:
        max_length = max(shape)
    if voxel_levels.size == 0:
        return np.zeros((len(directions), n_z, n_levels, max_length), dtype=np.int64)
    runs = []
    for index, direction in enumerate(directions):
        order, keys = line_order(coords, direction, shape)
        sorted_levels = voxel_levels[order]
        starts = np.flatnonzero(np.concatenate(([True], (np.diff(keys) != 1) | (np.diff(sorted_levels) != 0))))
        lengths = np.diff(np.append(starts, keys.size))
        slices = coords[0, order[starts]] if per_slice else 0
        runs.append((index, slices, sorted_levels[starts] - 1, lengths - 1))
    codes = np.concatenate(
        [((index * n_z + slices) * n_levels + level) * max_length + length for index, slices, level, length in runs]
    )
    counts = np.bincount(codes, minlength=len(directions) * n_z * n_levels * max_length)
    return counts.reshape(len(directions), n_z, n_levels, max_length)


def glrlm_feature_stack(matrices: np.ndarray, n_voxels: np.ndarray, grey: np.ndarray) -> dict[str, np.ndarray]:
    """The 16 IBSI GLRLM features of each matrix of a stack.

    Parameters
    ----------
    matrices : ndarray, shape (n, G, max_run_length)
        Run counts, none of them empty; column l - 1 holds runs of length l.
    n_voxels : ndarray, shape (n,)
        Voxels each matrix stands for, the N_v of the run percentage (for a merged matrix, the
        sum over the matrices merged, so a voxel counts once per direction).
    grey : ndarray of float, shape (G,)
        Grey level of each row.

    Returns
    -------
    dict of str to ndarray, shape (n,)
        Keyed by the names in :data:`FEATURE_NAMES`.
    """
    r = matrices.astype(float)
    n_runs = r.sum(axis=(1, 2))
    length = np.arange(1, r.shape[2] + 1, dtype=float)
    r_i = r.sum(axis=2)
    r_j = r.sum(axis=1)
    p_i = r_i / n_runs[:, None]
    p_j = r_j / n_runs[:, None]
    mu_i = p_i @ grey
    mu_j = p_j @ length
    p = r / n_runs[:, None, None]
    return {
        "sre": p_j @ length**-2,
        "lre": p_j @ length**2,
        "lgre": p_i @ grey**-2,
        "hgre": p_i @ grey**2,
        "srlge": np.einsum("nij,i,j->n", p, grey**-2, length**-2),
        "srhge": np.einsum("nij,i,j->n", p, grey**2, length**-2),
        "lrlge": np.einsum("nij,i,j->n", p, grey**-2, length**2),
        "lrhge": np.einsum("nij,i,j->n", p, grey**2, length**2),
        "glnu": (r_i**2).sum(axis=1) / n_runs,
        "glnu_norm": (p_i**2).sum(axis=1),
        "rlnu": (r_j**2).sum(axis=1) / n_runs,
        "rlnu_norm": (p_j**2).sum(axis=1),
        "r_perc": n_runs / n_voxels,
        "gl_var": p_i @ grey**2 - mu_i**2,
        "rl_var": p_j @ length**2 - mu_j**2,
        "rl_entr": -(p * np.log2(np.where(p > 0, p, 1.0))).sum(axis=(1, 2)),
    }


def glrlm_features(
    levels: np.ndarray,
    int_mask: np.ndarray,
    n_levels: int,
    *,
    aggregations: Sequence[str] = AGGREGATIONS,
) -> dict[str, float]:
    """IBSI-1 GLRLM features for the requested aggregation methods.

    Parameters
    ----------
    levels : ndarray of int, shape (z, y, x)
        Discretised grey levels, 1..`n_levels` inside `int_mask`; values outside are ignored.
    int_mask : ndarray of bool, shape (z, y, x)
        Intensity mask; runs stop at its border.
    n_levels : int
        Number of grey levels N_g.
    aggregations : sequence of str, optional
        Any of ``"2D_avg"``, ``"2D_comb"``, ``"2_5D_avg"``, ``"2_5D_comb"``, ``"3D_avg"``,
        ``"3D_comb"``, with the meanings of
        :func:`~ImagInfoExtension.radiomics.texture.cooccurrence.glcm_features`.

    Returns
    -------
    dict of str to float
        ``rlm_<feature>_<aggregation>`` for the 16 features of :data:`FEATURE_NAMES`. Merged
        matrices count each voxel once per merged direction in the run percentage's N_v, as IBSI
        does. Slices without voxels are left out of the 2D averages.

    Raises
    ------
    ValueError
        Shapes that differ, ``n_levels < 1``, an empty mask, levels outside 1..`n_levels` in the
        mask or an unknown aggregation.
    """
    levels, int_mask, aggregations = check_texture_input(levels, int_mask, n_levels, aggregations)
    compact, grey = compact_levels(levels, int_mask)
    size = len(grey)
    means = FeatureMeans("rlm", FEATURE_NAMES, aggregations, partial(_trimmed_features, grey=grey))
    # Every matrix gets the longest possible run-length axis, so that they add up;
    # _trimmed_features drops the empty tail.
    longest = max(levels.shape)

    def matrices(part: slice, directions: Sequence[tuple[int, int, int]], per_slice: bool) -> np.ndarray:
        return glrlm_matrices(compact[part], int_mask[part], size, directions, per_slice=per_slice, max_length=longest)

    aggregate_directions(means, int_mask, (size, longest), matrices)
    return means.result()


def _trimmed_features(matrices: np.ndarray, n_voxels: np.ndarray, grey: np.ndarray) -> dict[str, np.ndarray]:
    # Run lengths beyond the longest run in the stack are all-zero columns: dropping them saves work.
    width = int(np.flatnonzero(matrices.any(axis=(0, 1)))[-1]) + 1
    return glrlm_feature_stack(matrices[:, :, :width], n_voxels, grey)
