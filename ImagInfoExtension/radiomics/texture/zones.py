"""Grey level size zone (GLSZM) and distance zone (GLDZM) matrices and their IBSI-1 features.

A *zone* is a connected group of voxels inside the intensity mask that share one grey
level: 8-connected within an axial slice for the 2D and 2.5D variants, 26-connected for
3D. The GLSZM counts zones by grey level and size (voxels); the GLDZM counts them by grey
level and distance to the ROI edge.

Both matrices are kept sparse, as one record per zone (grey level, size or distance,
slice), because zone sizes in a CT ROI run to tens of thousands of voxels while only a
few hundred (level, size) pairs occur. The same record form serves the NGLDM in
:mod:`.neighbourhood`, whose features are the same sums over a different matrix.

Spatial variants (IBSI-1 section 3.1.2): ``2D`` computes the features per slice and
averages them over the slices that hold ROI voxels; ``2_5D`` merges the per-slice
matrices into one; ``3D`` builds one matrix over the volume.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import skimage.measure
from scipy import ndimage

from .directions import check_levels

__all__ = ["glszm_features", "gldzm_features"]

DIMENSIONS = ("2D", "2_5D", "3D")

# Generic names of the features of a (grey level i, second index j) count matrix, in
# IBSI order; each family maps them to its own tags.
_MATRIX_FEATURES = (
    "small_j",
    "large_j",
    "low_grey",
    "high_grey",
    "small_j_low_grey",
    "small_j_high_grey",
    "large_j_low_grey",
    "large_j_high_grey",
    "glnu",
    "glnu_norm",
    "jnu",
    "jnu_norm",
    "percentage",
    "gl_var",
    "j_var",
    "j_entropy",
    "j_energy",
)

_SZM_TAGS = dict(
    zip(
        _MATRIX_FEATURES[:16],
        (
            "sze",
            "lze",
            "lgze",
            "hgze",
            "szlge",
            "szhge",
            "lzlge",
            "lzhge",
            "glnu",
            "glnu_norm",
            "zsnu",
            "zsnu_norm",
            "z_perc",
            "gl_var",
            "zs_var",
            "zs_entr",
        ),
        strict=True,
    )
)

_DZM_TAGS = dict(
    zip(
        _MATRIX_FEATURES[:16],
        (
            "sde",
            "lde",
            "lgze",
            "hgze",
            "sdlge",
            "sdhge",
            "ldlge",
            "ldhge",
            "glnu",
            "glnu_norm",
            "zdnu",
            "zdnu_norm",
            "z_perc",
            "gl_var",
            "zd_var",
            "zd_entr",
        ),
        strict=True,
    )
)


def check_texture_inputs(
    levels: np.ndarray, int_mask: np.ndarray, n_levels: int, dimensions: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Validate the arguments shared by the zone and neighbourhood texture families.

    The grey levels and mask are checked as for every texture family
    (:func:`~ImagInfoExtension.radiomics.texture.directions.check_levels`).

    Returns
    -------
    levels : ndarray of int64
        The grey levels, 0 outside the intensity mask.
    int_mask : ndarray of bool
    dimensions : tuple of str
        The requested spatial variants, duplicates removed, in their given order.

    Raises
    ------
    ValueError
        If the arrays are not 3-D or differ in shape, the mask is empty, ``n_levels`` < 1,
        a grey level inside the mask lies outside 1..n_levels, or a dimension is unknown.
    """
    levels, int_mask = check_levels(levels, int_mask, n_levels)
    dims = tuple(dict.fromkeys(dimensions))
    unknown = [d for d in dims if d not in DIMENSIONS]
    if unknown:
        raise ValueError(f"unknown dimensions {unknown}; choose from {DIMENSIONS}")
    return levels, int_mask, dims


def bounding_box(mask: np.ndarray) -> tuple[slice, slice, slice]:
    """Slices of the smallest box holding every True voxel of a non-empty 3-D mask."""
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hit = np.flatnonzero(mask.any(axis=other))
        box.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(box)


def matrix_features(group: np.ndarray, i: np.ndarray, j: np.ndarray, n_voxels: np.ndarray) -> dict[str, np.ndarray]:
    """IBSI features of count matrices given as one record per counted element.

    Each element (a zone, or a neighbourhood for the NGLDM) adds 1 to entry ``(i, j)`` of
    the matrix of its ``group``; all groups are evaluated at once.

    Parameters
    ----------
    group : ndarray of int, shape (n,)
        Matrix of each element, 0..n_groups-1.
    i : ndarray of int, shape (n,)
        Grey level of each element, >= 1.
    j : ndarray of int, shape (n,)
        Second index of each element (zone size, zone distance, dependence count), >= 1.
    n_voxels : ndarray, shape (n_groups,)
        Voxels of the ROI behind each matrix, the denominator of the percentage feature.

    Returns
    -------
    dict of str to ndarray of shape (n_groups,)
        Keyed by the generic names of ``_MATRIX_FEATURES``; NaN for a group without elements.
    """
    n_groups = len(n_voxels)
    group = np.asarray(group, dtype=np.int64)
    i = np.asarray(i, dtype=np.int64)
    j = np.asarray(j, dtype=np.int64)
    n_elements = np.bincount(group, minlength=n_groups).astype(np.float64)
    fi = i.astype(np.float64)
    fj = j.astype(np.float64)
    i2, j2 = fi * fi, fj * fj

    with np.errstate(divide="ignore", invalid="ignore"):

        def group_mean(values: np.ndarray) -> np.ndarray:
            return np.bincount(group, weights=values, minlength=n_groups) / n_elements

        out = {
            "small_j": group_mean(1.0 / j2),
            "large_j": group_mean(j2),
            "low_grey": group_mean(1.0 / i2),
            "high_grey": group_mean(i2),
            "small_j_low_grey": group_mean(1.0 / (i2 * j2)),
            "small_j_high_grey": group_mean(i2 / j2),
            "large_j_low_grey": group_mean(j2 / i2),
            "large_j_high_grey": group_mean(i2 * j2),
        }

        # Marginal sums and the joint distribution come from counts per unique key.
        n_i = int(i.max(initial=0)) + 1
        n_j = int(j.max(initial=0)) + 1
        for name, index, n_index in (("glnu", i, n_i), ("jnu", j, n_j)):
            keys, counts = np.unique(group * n_index + index, return_counts=True)
            squares = np.bincount(keys // n_index, weights=counts.astype(np.float64) ** 2, minlength=n_groups)
            out[name] = squares / n_elements
            out[name + "_norm"] = squares / n_elements**2
        out["percentage"] = n_elements / np.asarray(n_voxels, dtype=np.float64)

        mean_i = group_mean(fi)
        mean_j = group_mean(fj)
        out["gl_var"] = group_mean((fi - mean_i[group]) ** 2)
        out["j_var"] = group_mean((fj - mean_j[group]) ** 2)

        keys, counts = np.unique((group * n_i + i) * n_j + j, return_counts=True)
        key_group = keys // (n_i * n_j)
        p = counts / n_elements[key_group]
        out["j_entropy"] = -np.bincount(key_group, weights=p * np.log2(p), minlength=n_groups)
        out["j_energy"] = np.bincount(key_group, weights=p * p, minlength=n_groups)

    empty = n_elements == 0
    for values in out.values():
        values[empty] = np.nan
    return out


def collect_features(
    prefix: str,
    tags: dict[str, str],
    per_dimension: dict[str, dict[str, np.ndarray]],
) -> dict[str, float]:
    """Tag the features of each spatial variant; a 2D variant is averaged over its slices.

    Slices whose feature is NaN (no element) are left out of the 2D average.
    """
    result: dict[str, float] = {}
    for dim, features in per_dimension.items():
        for generic, tag in tags.items():
            values = features[generic]
            finite = values[np.isfinite(values)]
            result[f"{prefix}_{tag}_{dim}"] = float(finite.mean()) if finite.size else float("nan")
    return result


def _label_zones(levels: np.ndarray, per_slice: bool) -> tuple[np.ndarray, int]:
    """Label the zones (connected voxels of one grey level; 0 is background).

    Per slice, empty planes are interleaved between the slices so that one 26-connected
    labelling gives every slice its own 8-connected zones at once.
    """
    if per_slice and levels.shape[0] > 1:
        spaced = np.zeros((2 * levels.shape[0] - 1,) + levels.shape[1:], dtype=levels.dtype)
        spaced[::2] = levels
        labels, n_zones = skimage.measure.label(spaced, background=0, connectivity=3, return_num=True)
        return labels[::2], n_zones
    labels, n_zones = skimage.measure.label(levels, background=0, connectivity=3, return_num=True)
    return labels, n_zones


def _zone_records(levels: np.ndarray, int_mask: np.ndarray, per_slice: bool):
    """Per-voxel zone index (0-based, in-mask voxels in C order) and per-zone level and slice."""
    labels, n_zones = _label_zones(levels, per_slice)
    zone_of_voxel = labels[int_mask] - 1
    zone_level = np.empty(n_zones, dtype=np.int64)
    zone_level[zone_of_voxel] = levels[int_mask]
    zone_slice = np.empty(n_zones, dtype=np.int64)
    zone_slice[zone_of_voxel] = np.nonzero(int_mask)[0]
    return zone_of_voxel, zone_level, zone_slice, n_zones


def _spatial_groups(dims: Sequence[str], int_mask: np.ndarray):
    """(dimension, per_slice, merge_slices, n_voxels per group) for each requested variant."""
    voxels_per_slice = int_mask.sum(axis=(1, 2)).astype(np.float64)
    for dim in dims:
        if dim == "2D":
            yield dim, True, False, voxels_per_slice
        elif dim == "2_5D":
            yield dim, True, True, np.array([voxels_per_slice.sum()])
        else:
            yield dim, False, True, np.array([voxels_per_slice.sum()])


def glszm_features(
    levels: np.ndarray,
    int_mask: np.ndarray,
    n_levels: int,
    *,
    dimensions: Sequence[str] = ("2D", "2_5D", "3D"),
) -> dict[str, float]:
    """IBSI-1 grey level size zone matrix features (section 3.7).

    Parameters
    ----------
    levels : ndarray of int, shape (z, y, x)
        Discretised grey levels 1..n_levels inside ``int_mask`` (ignored outside).
    int_mask : ndarray of bool, shape (z, y, x)
        Intensity mask of the ROI.
    n_levels : int
        Number of grey levels of the discretisation (>= 1).
    dimensions : sequence of {"2D", "2_5D", "3D"}
        Spatial variants to compute: zones 8-connected per axial slice with features
        averaged over slices (2D), per-slice zones in one merged matrix (2_5D), or zones
        26-connected in the volume (3D).

    Returns
    -------
    dict of str to float
        16 features per variant, keyed ``szm_<feature>_<dim>`` as in the IBSI reference
        tables (``szm_sze_3D``, ``szm_zs_entr_2_5D``, ...).

    Raises
    ------
    ValueError
        On arrays of different shape or not 3-D, an empty mask, ``n_levels`` < 1, grey
        levels outside 1..n_levels in the mask, or an unknown dimension.
    """
    levels, int_mask, dims = check_texture_inputs(levels, int_mask, n_levels, dimensions)
    box = bounding_box(int_mask)
    levels, int_mask = levels[box], int_mask[box]

    per_dimension = {}
    zones_by_slicing = {}
    for dim, per_slice, merge, n_voxels in _spatial_groups(dims, int_mask):
        if per_slice not in zones_by_slicing:
            zones_by_slicing[per_slice] = _zone_records(levels, int_mask, per_slice)
        zone_of_voxel, zone_level, zone_slice, n_zones = zones_by_slicing[per_slice]
        zone_size = np.bincount(zone_of_voxel, minlength=n_zones)
        group = np.zeros(n_zones, dtype=np.int64) if merge else zone_slice
        per_dimension[dim] = matrix_features(group, zone_level, zone_size, n_voxels)
    return collect_features("szm", _SZM_TAGS, per_dimension)


def _edge_distance(mask: np.ndarray, per_slice: bool) -> np.ndarray:
    """City-block steps from each mask voxel to the nearest voxel outside the mask.

    Voxels beyond the array count as outside, so a voxel on the ROI border is at 1.
    Per slice, steps stay within the axial plane (4-connected); in 3D they are
    6-connected.
    """
    padded = np.pad(mask, 1, constant_values=False)
    if per_slice:
        metric = np.zeros((3, 3, 3), dtype=bool)
        metric[1] = ndimage.generate_binary_structure(2, 1)
    else:
        metric = "taxicab"
    distance = ndimage.distance_transform_cdt(padded, metric=metric)
    return distance[1:-1, 1:-1, 1:-1]


def gldzm_features(
    levels: np.ndarray,
    int_mask: np.ndarray,
    n_levels: int,
    *,
    morph_mask: np.ndarray | None = None,
    dimensions: Sequence[str] = ("2D", "2_5D", "3D"),
) -> dict[str, float]:
    """IBSI-1 grey level distance zone matrix features (section 3.8).

    Zones are found as for the GLSZM. A zone's distance is the smallest, over its voxels,
    city-block distance to the ROI edge: steps are 4-connected within the slice for 2D and
    2_5D and 6-connected for 3D, the edge is the first voxel outside the mask, and a voxel
    on the ROI border is at distance 1.

    Parameters
    ----------
    levels : ndarray of int, shape (z, y, x)
        Discretised grey levels 1..n_levels inside ``int_mask`` (ignored outside).
    int_mask : ndarray of bool, shape (z, y, x)
        Intensity mask of the ROI: which voxels form zones.
    n_levels : int
        Number of grey levels of the discretisation (>= 1).
    morph_mask : ndarray of bool, shape (z, y, x), optional
        Morphological mask of the ROI, from which the distance map is computed: the
        IBSI-1 reference values of configurations A, B, D and E, where resegmentation
        punches holes in the intensity mask, match only with distances to the edge of the
        morphological mask (those to the holes miss by up to 60 %). It must contain
        ``int_mask``. Defaults to ``int_mask``, which is right only when no
        resegmentation removed voxels.
    dimensions : sequence of {"2D", "2_5D", "3D"}
        Spatial variants to compute, as for :func:`glszm_features`.

    Returns
    -------
    dict of str to float
        16 features per variant, keyed ``dzm_<feature>_<dim>`` as in the IBSI reference
        tables (``dzm_sde_3D``, ``dzm_zd_entr_2D``, ...).

    Raises
    ------
    ValueError
        As :func:`glszm_features`, and when ``morph_mask`` differs in shape or does not
        contain ``int_mask``.
    """
    levels, int_mask, dims = check_texture_inputs(levels, int_mask, n_levels, dimensions)
    if morph_mask is None:
        morph_mask = int_mask
    else:
        morph_mask = np.asarray(morph_mask).astype(bool, copy=False)
        if morph_mask.shape != int_mask.shape:
            raise ValueError(
                f"morph_mask {morph_mask.shape} and int_mask {int_mask.shape} differ in shape; "
                "pass both masks on the same (z, y, x) grid"
            )
        if np.any(int_mask & ~morph_mask):
            raise ValueError(
                "int_mask has voxels outside morph_mask; the intensity mask must be a subset of the "
                "morphological mask (resegmentation only removes voxels)"
            )
    box = bounding_box(morph_mask)
    levels, int_mask, morph_mask = levels[box], int_mask[box], morph_mask[box]

    per_dimension = {}
    zones_by_slicing = {}
    for dim, per_slice, merge, n_voxels in _spatial_groups(dims, int_mask):
        if per_slice not in zones_by_slicing:
            zone_of_voxel, zone_level, zone_slice, n_zones = _zone_records(levels, int_mask, per_slice)
            voxel_distance = _edge_distance(morph_mask, per_slice)[int_mask]
            zone_distance = np.full(n_zones, np.iinfo(np.int64).max, dtype=np.int64)
            np.minimum.at(zone_distance, zone_of_voxel, voxel_distance)
            zones_by_slicing[per_slice] = (zone_level, zone_slice, zone_distance, n_zones)
        zone_level, zone_slice, zone_distance, n_zones = zones_by_slicing[per_slice]
        group = np.zeros(n_zones, dtype=np.int64) if merge else zone_slice
        per_dimension[dim] = matrix_features(group, zone_level, zone_distance, n_voxels)
    return collect_features("dzm", _DZM_TAGS, per_dimension)
