"""Neighbour directions, line walking and the aggregation of the directional texture matrices
(GLCM, GLRLM), and the argument checks that every texture family shares.

IBSI-1 (section 3.6) counts each neighbour direction once: a direction and its opposite give the
same symmetric co-occurrence matrix and the same runs. In 3D that leaves the 13 unique directions
of the 26-connected neighbourhood; in 2D (an axial slice, fixed z) the 4 in-plane ones.
Offsets are ``(dz, dy, dx)`` in voxels, each written with its first non-zero component positive,
so the in-plane directions come first in :data:`DIRECTIONS_3D`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

IN_PLANE_DIRECTIONS: tuple[tuple[int, int, int], ...] = ((0, 0, 1), (0, 1, -1), (0, 1, 0), (0, 1, 1))
"""The 4 unique in-plane neighbour directions (dz = 0)."""

DIRECTIONS_3D: tuple[tuple[int, int, int], ...] = IN_PLANE_DIRECTIONS + tuple(
    (1, dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)
)
"""The 13 unique 3D neighbour directions; the first 4 are :data:`IN_PLANE_DIRECTIONS`."""

AGGREGATIONS: tuple[str, ...] = ("2D_avg", "2D_comb", "2_5D_avg", "2_5D_comb", "3D_avg", "3D_comb")
"""IBSI-1 aggregation methods, spelt as the suffixes of the reference tags."""

MATRIX_ENTRY_BUDGET = 1 << 21
"""Most matrix entries held in one stack (16 MiB of int64), which keeps memory bounded when a
fine discretisation gives hundreds of grey levels; typical ROIs fit in a single stack."""


def check_levels(levels: np.ndarray, int_mask: np.ndarray, n_levels: int) -> tuple[np.ndarray, np.ndarray]:
    """Validate the discretised grey levels and intensity mask that every texture family takes.

    Parameters
    ----------
    levels : ndarray of int, shape (z, y, x)
        Discretised grey levels, 1..`n_levels` inside `int_mask` (values outside are ignored).
    int_mask : ndarray of bool, shape (z, y, x)
        Intensity mask.
    n_levels : int
        Number of grey levels, at least 1.

    Returns
    -------
    levels : ndarray of int64
        The grey levels, 0 outside the mask.
    int_mask : ndarray of bool

    Raises
    ------
    ValueError
        Arrays that are not 3D or differ in shape, ``n_levels < 1``, an empty mask, or grey levels
        inside the mask that are not whole numbers in 1..`n_levels`.
    """
    levels = np.asarray(levels)
    int_mask = np.asarray(int_mask)
    if levels.ndim != 3:
        raise ValueError(
            f"levels must be a 3-D (z, y, x) array, got {levels.ndim} dimensions; "
            "give a single slice a leading axis of length 1"
        )
    if levels.shape != int_mask.shape:
        raise ValueError(
            f"levels {levels.shape} and int_mask {int_mask.shape} differ in shape; "
            "pass the discretised ROI and its intensity mask on the same (z, y, x) grid"
        )
    if int(n_levels) != n_levels or n_levels < 1:
        raise ValueError(f"n_levels must be an integer >= 1, got {n_levels!r}; pass the number of grey levels")
    int_mask = int_mask.astype(bool, copy=False)
    if not int_mask.any():
        raise ValueError("int_mask is empty: texture features need at least one voxel in the intensity mask")
    inside = levels[int_mask]
    if not np.issubdtype(levels.dtype, np.integer) and not np.array_equal(inside, np.round(inside)):
        raise ValueError("levels must hold integer grey levels inside int_mask; discretise the image first")
    if inside.min() < 1 or inside.max() > n_levels:
        raise ValueError(
            f"grey levels inside int_mask span {inside.min()}..{inside.max()}, outside 1..{n_levels}; "
            "pass the levels discretised to 1..n_levels and their n_levels"
        )
    return np.where(int_mask, levels, 0).astype(np.int64), int_mask


def check_distance(distance: int) -> int:
    """A neighbourhood's Chebyshev distance in voxels, checked to be a whole number >= 1."""
    if int(distance) != distance or distance < 1:
        raise ValueError(f"distance must be an integer >= 1 (Chebyshev voxels), got {distance!r}")
    return int(distance)


def check_texture_input(
    levels: np.ndarray, int_mask: np.ndarray, n_levels: int, aggregations: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Validate the arguments common to the directional texture families.

    Parameters
    ----------
    levels, int_mask, n_levels
        As for :func:`check_levels`.
    aggregations : sequence of str
        Requested aggregation methods, each one of :data:`AGGREGATIONS`.

    Returns
    -------
    levels : ndarray of int64
        The grey levels, 0 outside the mask.
    int_mask : ndarray of bool
    aggregations : tuple of str
        Duplicates removed, order kept.

    Raises
    ------
    ValueError
        As :func:`check_levels`, or an unknown aggregation.
    """
    levels, int_mask = check_levels(levels, int_mask, n_levels)
    unknown = [name for name in aggregations if name not in AGGREGATIONS]
    if unknown:
        raise ValueError(f"unknown aggregation(s) {unknown}; choose from {list(AGGREGATIONS)}")
    return levels, int_mask, tuple(dict.fromkeys(aggregations))


def line_order(
    coords: np.ndarray, direction: tuple[int, int, int], shape: tuple[int, int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Order voxels along the lines of one direction.

    Every voxel lies on exactly one line parallel to `direction`. The key of a voxel is its line's
    identifier times (length + 1) plus its position along the line, so that, after sorting, two
    voxels follow each other on a line exactly when their keys differ by 1 (the gap of 1 between
    lines keeps the last voxel of one line from touching the first of the next).

    Parameters
    ----------
    coords : ndarray of int64, shape (3, n)
        (z, y, x) coordinates of the voxels.
    direction : tuple of int
        Offset (dz, dy, dx) with components in {-1, 0, 1}, first non-zero component positive.
    shape : tuple of int
        Shape of the array the coordinates index.

    Returns
    -------
    order : ndarray of intp, shape (n,)
        Permutation that sorts the voxels by line, then by position along it.
    sorted_keys : ndarray of int64, shape (n,)
        The keys in that order.
    """
    axis = next(k for k in range(3) if direction[k] != 0)
    position = coords[axis]
    # The line's identifier is where it crosses the plane position == 0 (possibly outside the
    # array); shifting each coordinate by the largest backward walk keeps it non-negative.
    line = np.zeros_like(position)
    walk = shape[axis] - 1
    for k in range(3):
        if k == axis:
            continue
        span = shape[k] + (walk if direction[k] else 0)
        line = line * span + coords[k] - position * direction[k] + (walk if direction[k] > 0 else 0)
    keys = line * (shape[axis] + 1) + position
    order = np.argsort(keys, kind="stable")
    return order, keys[order]


def compact_levels(levels: np.ndarray, int_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Renumber the grey levels present in the mask as 1..G.

    Levels absent from the ROI only add zero rows and columns to a texture matrix; dropping them
    keeps the matrices small. Features that depend on the level values use the returned values.

    Parameters
    ----------
    levels : ndarray of int64, shape (z, y, x)
        Grey levels, 0 outside `int_mask`.
    int_mask : ndarray of bool, shape (z, y, x)

    Returns
    -------
    compact : ndarray of int64, shape (z, y, x)
        1..G inside `int_mask`, 0 outside.
    grey : ndarray of float, shape (G,)
        The original level of each compact level.
    """
    present, inverse = np.unique(levels[int_mask], return_inverse=True)
    compact = np.zeros_like(levels)
    compact[int_mask] = inverse.ravel() + 1
    return compact, present.astype(float)


class FeatureMeans:
    """Running means, per aggregation, of features computed on stacks of texture matrices.

    Parameters
    ----------
    prefix : str
        Tag prefix of the family (``"cm"``, ``"rlm"``).
    feature_names : sequence of str
        Features that `compute` returns.
    aggregations : sequence of str
        Aggregations that will be reported.
    compute : callable
        ``compute(matrices, *per_matrix) -> dict[str, ndarray]`` for a stack of non-empty
        matrices and optional per-matrix arrays.
    """

    def __init__(
        self,
        prefix: str,
        feature_names: Sequence[str],
        aggregations: Sequence[str],
        compute: Callable[..., dict[str, np.ndarray]],
    ) -> None:
        self.prefix = prefix
        self.feature_names = tuple(feature_names)
        self.aggregations = tuple(aggregations)
        self.compute = compute
        self.sums = {name: dict.fromkeys(self.feature_names, 0.0) for name in aggregations}
        self.counts = dict.fromkeys(aggregations, 0)

    def add(self, aggregation: str, matrices: np.ndarray, *per_matrix: np.ndarray) -> None:
        """Add the features of each non-empty matrix of a stack (shape (m, ...)) to an aggregation."""
        keep = matrices.reshape(len(matrices), -1).any(axis=1)
        matrices = matrices[keep]
        per_matrix = tuple(np.asarray(values)[keep] for values in per_matrix)
        step = max(1, MATRIX_ENTRY_BUDGET // max(1, matrices[0].size)) if len(matrices) else 1
        for start in range(0, len(matrices), step):
            part = slice(start, start + step)
            values = self.compute(matrices[part], *(v[part] for v in per_matrix))
            for feature in self.feature_names:
                self.sums[aggregation][feature] += float(np.sum(values[feature]))
        self.counts[aggregation] += len(matrices)

    def result(self) -> dict[str, float]:
        """``<prefix>_<feature>_<aggregation>``: the mean over the matrices added, NaN where none was."""
        return {
            f"{self.prefix}_{feature}_{name}": sums[feature] / self.counts[name] if self.counts[name] else float("nan")
            for name, sums in self.sums.items()
            for feature in self.feature_names
        }


def slice_chunks(n_slices: int, entries_per_slice: int) -> list[slice]:
    """Split the slices into runs whose per-slice matrices fit :data:`MATRIX_ENTRY_BUDGET`."""
    step = max(1, MATRIX_ENTRY_BUDGET // max(1, entries_per_slice))
    return [slice(start, start + step) for start in range(0, n_slices, step)]


def aggregate_directions(
    means: FeatureMeans,
    int_mask: np.ndarray,
    matrix_shape: tuple[int, int],
    matrices: Callable[[slice, Sequence[tuple[int, int, int]], bool], np.ndarray],
) -> None:
    """Add the matrices of every aggregation that `means` reports, as IBSI-1 defines them.

    In-plane neighbours never leave their slice: per-slice in-plane matrices (built a few slices
    at a time) serve the 2D aggregations and, summed over slices, the 2.5D ones and the first 4
    of the 13 3D directions; the other 9 are built a few directions at a time. Each matrix is
    added with the voxels it stands for (the mask's voxels once per direction merged into it),
    the N_v of the GLRLM's run percentage.

    Parameters
    ----------
    means : FeatureMeans
        Its ``aggregations`` say which matrices to build; its ``compute`` takes a stack of
        matrices and the voxel count of each.
    int_mask : ndarray of bool, shape (z, y, x)
        Intensity mask.
    matrix_shape : tuple of int
        Shape of one matrix (grey levels, second axis); every matrix has it, so that they add up.
    matrices : callable
        ``matrices(part, directions, per_slice)``: the count matrices of the axial slices `part`
        (a slice) along `directions`, shape ``(n_directions, n_slices or 1) + matrix_shape``.
    """
    aggregations = means.aggregations
    n_in_plane = len(IN_PLANE_DIRECTIONS)
    n_total = float(int_mask.sum())
    entries = int(np.prod(matrix_shape))
    if any(not name.startswith("3D") for name in aggregations):
        in_plane = np.zeros((n_in_plane, *matrix_shape), dtype=np.int64)
        slice_voxels = int_mask.sum(axis=(1, 2)).astype(float)
        for part in slice_chunks(int_mask.shape[0], n_in_plane * entries):
            per_slice = matrices(part, IN_PLANE_DIRECTIONS, True)
            if "2D_avg" in aggregations:
                means.add("2D_avg", per_slice.reshape(-1, *matrix_shape), np.tile(slice_voxels[part], n_in_plane))
            if "2D_comb" in aggregations:
                means.add("2D_comb", per_slice.sum(axis=0), n_in_plane * slice_voxels[part])
            in_plane += per_slice.sum(axis=1)
    else:
        in_plane = matrices(slice(None), IN_PLANE_DIRECTIONS, False)[:, 0]
    if "2_5D_avg" in aggregations:
        means.add("2_5D_avg", in_plane, np.full(n_in_plane, n_total))
    if "2_5D_comb" in aggregations:
        means.add("2_5D_comb", in_plane.sum(axis=0, keepdims=True), [n_in_plane * n_total])

    if any(name.startswith("3D") for name in aggregations):
        merged = in_plane.sum(axis=0)
        if "3D_avg" in aggregations:
            means.add("3D_avg", in_plane, np.full(n_in_plane, n_total))
        out_of_plane = DIRECTIONS_3D[n_in_plane:]
        step = max(1, MATRIX_ENTRY_BUDGET // entries)
        for start in range(0, len(out_of_plane), step):
            directions = out_of_plane[start : start + step]
            directional = matrices(slice(None), directions, False)[:, 0]
            if "3D_avg" in aggregations:
                means.add("3D_avg", directional, np.full(len(directions), n_total))
            merged += directional.sum(axis=0)
        if "3D_comb" in aggregations:
            means.add("3D_comb", merged[None], [len(DIRECTIONS_3D) * n_total])
