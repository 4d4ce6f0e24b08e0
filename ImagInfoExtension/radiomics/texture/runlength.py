"""Grey level run length matrix (GLRLM) features, IBSI-1 section 3.7, with all six aggregations.

A run is a maximal sequence of consecutive voxels along one direction, all inside the intensity
mask and all of the same grey level; voxels outside the mask break runs. Runs are found without
a loop over lines: the masked voxels are sorted along the lines of a direction
(:func:`~ImagInfoExtension.radiomics.texture.directions.line_order`), a run starts wherever the line
breaks or the level changes, and run lengths are the differences of the start indices.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ImagInfoExtension.radiomics.texture.directions import (
    AGGREGATIONS,
    DIRECTIONS_3D,
    IN_PLANE_DIRECTIONS,
    check_texture_input,
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

    Returns
    -------
    ndarray of int64, shape (n_directions, n_slices, n_levels, max_run_length)
        ``n_slices`` is the number of z slices when `per_slice`, else 1. Entry ``[d, s, i-1, l-1]``
        counts the runs of level i and length l; ``max_run_length`` is the longest run found.
    """
    shape = levels.shape
    coords = np.array(np.nonzero(int_mask), dtype=np.int64)
    voxel_levels = levels[int_mask]
    n_z = shape[0] if per_slice else 1
    runs = []
    for index, direction in enumerate(directions):
        order, keys = line_order(coords, direction, shape)
        sorted_levels = voxel_levels[order]
        starts = np.flatnonzero(np.concatenate(([True], (np.diff(keys) != 1) | (np.diff(sorted_levels) != 0))))
        lengths = np.diff(np.append(starts, keys.size))
        slices = coords[0, order[starts]] if per_slice else 0
        runs.append((index, slices, sorted_levels[starts] - 1, lengths - 1))
    max_length = max(int(r[3].max()) for r in runs) + 1
    codes = np.concatenate(
        [((index * n_z + slices) * n_levels + level) * max_length + length for index, slices, level, length in runs]
    )
    counts = np.bincount(codes, minlength=len(directions) * n_z * n_levels * max_length)
    return counts.reshape(len(directions), n_z, n_levels, max_length)


def glrlm_feature_stack(matrices: np.ndarray, n_voxels: np.ndarray) -> dict[str, np.ndarray]:
    """The 16 IBSI GLRLM features of each matrix of a stack.

    Parameters
    ----------
    matrices : ndarray, shape (n, n_levels, max_run_length)
        Run counts, none of them empty.
    n_voxels : ndarray, shape (n,)
        Voxels each matrix stands for, the N_v of the run percentage (for a merged matrix, the
        sum over the matrices merged, so a voxel counts once per direction).

    Returns
    -------
    dict of str to ndarray, shape (n,)
        Keyed by the names in :data:`FEATURE_NAMES`.
    """
    r = matrices.astype(float)
    n_runs = r.sum(axis=(1, 2))
    grey = np.arange(1, r.shape[1] + 1, dtype=float)
    length = np.arange(1, r.shape[2] + 1, dtype=float)
    r_i = r.sum(axis=2)
    r_j = r.sum(axis=1)
    p = r / n_runs[:, None, None]
    mu_i = p.sum(axis=2) @ grey
    mu_j = p.sum(axis=1) @ length
    entropy_terms = p * np.log2(np.where(p > 0, p, 1.0))
    return {
        "sre": r_j @ length**-2 / n_runs,
        "lre": r_j @ length**2 / n_runs,
        "lgre": r_i @ grey**-2 / n_runs,
        "hgre": r_i @ grey**2 / n_runs,
        "srlge": np.einsum("nij,i,j->n", r, grey**-2, length**-2) / n_runs,
        "srhge": np.einsum("nij,i,j->n", r, grey**2, length**-2) / n_runs,
        "lrlge": np.einsum("nij,i,j->n", r, grey**-2, length**2) / n_runs,
        "lrhge": np.einsum("nij,i,j->n", r, grey**2, length**2) / n_runs,
        "glnu": (r_i**2).sum(axis=1) / n_runs,
        "glnu_norm": (r_i**2).sum(axis=1) / n_runs**2,
        "rlnu": (r_j**2).sum(axis=1) / n_runs,
        "rlnu_norm": (r_j**2).sum(axis=1) / n_runs**2,
        "r_perc": n_runs / n_voxels,
        "gl_var": p.sum(axis=2) @ grey**2 - mu_i**2,
        "rl_var": p.sum(axis=1) @ length**2 - mu_j**2,
        "rl_entr": -entropy_terms.sum(axis=(1, 2)),
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
    n_levels = int(n_levels)
    n_total = int(int_mask.sum())
    wants_2d = any(not name.startswith("3D") for name in aggregations)
    wants_3d = any(name.startswith("3D") for name in aggregations)

    # In-plane runs never leave their slice: the per-slice in-plane matrices serve the 2D and 2.5D
    # aggregations and, summed over slices, the first 4 of the 13 3D directions.
    groups: dict[str, tuple[list[np.ndarray], list[float]]] = {}
    in_plane = glrlm_matrices(levels, int_mask, n_levels, IN_PLANE_DIRECTIONS, per_slice=wants_2d)
    if wants_2d:
        n_directions = len(IN_PLANE_DIRECTIONS)
        slice_voxels = int_mask.sum(axis=(1, 2)).astype(float)
        if "2D_avg" in aggregations:
            groups["2D_avg"] = (
                list(in_plane.reshape(-1, *in_plane.shape[2:])),
                list(np.tile(slice_voxels, n_directions)),
            )
        if "2D_comb" in aggregations:
            groups["2D_comb"] = (list(in_plane.sum(axis=0)), list(n_directions * slice_voxels))
        if "2_5D_avg" in aggregations:
            groups["2_5D_avg"] = (list(in_plane.sum(axis=1)), [n_total] * n_directions)
        if "2_5D_comb" in aggregations:
            groups["2_5D_comb"] = ([in_plane.sum(axis=(0, 1))], [n_directions * n_total])
    if wants_3d:
        out_of_plane = glrlm_matrices(levels, int_mask, n_levels, DIRECTIONS_3D[len(IN_PLANE_DIRECTIONS) :])
        width = max(in_plane.shape[3], out_of_plane.shape[3])
        per_direction = np.concatenate([_widen(in_plane.sum(axis=1), width), _widen(out_of_plane[:, 0], width)])
        if "3D_avg" in aggregations:
            groups["3D_avg"] = (list(per_direction), [n_total] * len(DIRECTIONS_3D))
        if "3D_comb" in aggregations:
            groups["3D_comb"] = ([per_direction.sum(axis=0)], [len(DIRECTIONS_3D) * n_total])

    # One feature pass over every non-empty matrix of every aggregation, then a mean per aggregation.
    kept = {name: [(m, v) for m, v in zip(*groups[name]) if m.any()] for name in aggregations}
    width = max((m.shape[1] for name in aggregations for m, _ in kept[name]), default=1)
    stack = [_widen(m, width) for name in aggregations for m, _ in kept[name]]
    voxels = np.array([v for name in aggregations for _, v in kept[name]], dtype=float)
    values = glrlm_feature_stack(np.stack(stack), voxels) if stack else {}
    result: dict[str, float] = {}
    start = 0
    for name in aggregations:
        stop = start + len(kept[name])
        for feature in FEATURE_NAMES:
            result[f"rlm_{feature}_{name}"] = (
                float(np.mean(values[feature][start:stop])) if stop > start else float("nan")
            )
        start = stop
    return result


def _widen(matrices: np.ndarray, width: int) -> np.ndarray:
    # Run-length axes differ between direction families; zero columns leave every feature unchanged.
    pad = [(0, 0)] * (matrices.ndim - 1) + [(0, width - matrices.shape[-1])]
    return np.pad(matrices, pad)
