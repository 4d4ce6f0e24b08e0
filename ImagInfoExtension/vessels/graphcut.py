"""Minimum-cut vessel segmentation on a band around likely vessels.

The graph holds only the voxels of a candidate band; everything outside it is
background. Regional (terminal) costs are the negative log-odds of a logistic
vessel/background model on intensity, shifted by vesselness so that thin tubes whose
blurred peak falls below the half-contrast level are still recovered: where a voxel
is tubular, its level moves from half the material contrast to half the local peak
contrast (a local full-width-at-half-maximum), which leaves thick vessels, whose peak is
the material value, at the unbiased half-contrast boundary. Boundary costs
fall with the intensity difference between 6-neighbours, so cuts follow edges. The
cut is found with ``scipy.sparse.csgraph.maximum_flow`` (Dinic), BSD-licensed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage, sparse
from scipy.sparse import csgraph

from ImagInfoExtension.geometry import mask_bounding_box

#: Real-valued costs are scaled by this and rounded: maximum_flow needs integers.
CAPACITY_SCALE = 64.0


@dataclass(frozen=True)
class GraphCutParameters:
    """Energy of the vessel/background cut.

    Parameters
    ----------
    vesselness_reference : float
        Vesselness at which a voxel fully takes the local half-maximum level
        (below it, the level moves linearly back to the global half-contrast).
    local_peak_mm : float
        Reach of the local peak search: the blurred peak of a thin vessel lies
        within this distance of its edge.
    smoothness : float
        Weight of the boundary term relative to the regional term.
    band_fraction : float
        Voxels brighter than background + this fraction of the contrast, or with
        vesselness above ``band_vesselness``, seed the band (then dilated once).
    band_vesselness : float
    min_component_voxels : int
        Connected vessel pieces smaller than this are dropped as noise.
    """

    vesselness_reference: float = 0.25
    local_peak_mm: float = 1.2
    smoothness: float = 0.5
    band_fraction: float = 0.2
    band_vesselness: float = 0.05
    min_component_voxels: int = 4


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, x)


def _local_levels(
    image: np.ndarray,
    vesselness: np.ndarray,
    band: np.ndarray,
    flat_band: np.ndarray,
    spacing: np.ndarray,
    background_hu: float,
    contrast: float,
    parameters: GraphCutParameters,
) -> np.ndarray:
    """Intensity level of the vessel/background decision at each band voxel."""
    reach = np.ceil(parameters.local_peak_mm / spacing).astype(int)
    box = mask_bounding_box(band, reach)
    # Half-voxel smoothing keeps single noisy voxels from posing as peaks.
    smoothed = ndimage.gaussian_filter(image[box].astype(np.float32), 0.5, truncate=2.0)
    peak = ndimage.maximum_filter(smoothed, size=tuple(2 * reach + 1))
    offset = np.array([s.start for s in box])
    index = np.stack(np.unravel_index(flat_band, image.shape), axis=1) - offset
    local_peak = peak[tuple(index.T)].astype(np.float64)
    half = background_hu + 0.5 * contrast
    floor = background_hu + parameters.band_fraction * contrast
    local = np.clip(background_hu + 0.5 * (local_peak - background_hu), floor, half)
    gate = np.clip(vesselness.ravel()[flat_band] / parameters.vesselness_reference, 0.0, 1.0)
    return half - gate * (half - local)


def candidate_band(
    image: np.ndarray,
    vesselness: np.ndarray,
    region: np.ndarray,
    background_hu: float,
    vessel_hu: float,
    parameters: GraphCutParameters,
) -> np.ndarray:
    """Voxels that enter the graph: likely vessel, dilated by one voxel, inside the region."""
    seed = region & (
        (image > background_hu + parameters.band_fraction * (vessel_hu - background_hu))
        | (vesselness > parameters.band_vesselness)
    )
    return ndimage.binary_dilation(seed) & region


def graph_cut_segmentation(
    image: np.ndarray,
    vesselness: np.ndarray,
    region: np.ndarray,
    spacing_kji: Sequence[float],
    background_hu: float,
    vessel_hu: float,
    noise_sd_hu: float,
    parameters: GraphCutParameters | None = None,
) -> np.ndarray:
    """Segment bright vessels by a minimum cut.

    Parameters
    ----------
    image : ndarray, ``[k, j, i]``
        HU.
    vesselness : ndarray
        Vesselness in [0, 1], same shape.
    region : ndarray of bool
        Where vessels may be.
    spacing_kji : sequence of float
        Voxel spacing along the array axes (mm); boundary weights divide by it.
    background_hu, vessel_hu : float
        The two material levels; the regional model is centred half-way between them,
        where a blurred edge crosses the true boundary.
    noise_sd_hu : float
        Image noise, which sets the width of the regional model and of the edge weight.
    parameters : GraphCutParameters, optional

    Returns
    -------
    ndarray of bool
    """
    parameters = parameters or GraphCutParameters()
    band = candidate_band(image, vesselness, region, background_hu, vessel_hu, parameters)
    segmentation = np.zeros(image.shape, dtype=bool)
    node_count = int(band.sum())
    if node_count == 0:
        return segmentation
    spacing = np.asarray(spacing_kji, dtype=float)
    contrast = vessel_hu - background_hu
    # Below ~5% of the contrast the logistic would become a hard threshold that no
    # boundary term could regularise.
    width = max(float(noise_sd_hu), 0.05 * abs(contrast))
    flat_band = np.flatnonzero(band)
    coordinates = np.unravel_index(flat_band, image.shape)
    flat_image = image.ravel()
    values = flat_image[flat_band].astype(np.float64)
    level = _local_levels(image, vesselness, band, flat_band, spacing, background_hu, contrast, parameters)
    logit = (values - level) / width
    cost_background = _softplus(logit)  # paid when labelled background (cut from source)
    cost_vessel = _softplus(-logit)  # paid when labelled vessel (cut to sink)

    rows, cols, weights = [], [], []
    mean_spacing = float(np.mean(spacing))
    edge_width = 2.0 * width
    strides = (image.shape[1] * image.shape[2], image.shape[2], 1)
    for axis in range(3):
        for direction in (1, -1):
            position = coordinates[axis] + direction
            valid = (position >= 0) & (position < image.shape[axis])
            nodes = np.flatnonzero(valid)
            neighbour = flat_band[nodes] + direction * strides[axis]
            diff = values[nodes] - flat_image[neighbour]
            weight = parameters.smoothness * np.exp(-0.5 * (diff / edge_width) ** 2) * (mean_spacing / spacing[axis])
            slot = np.minimum(np.searchsorted(flat_band, neighbour), node_count - 1)
            in_band = flat_band[slot] == neighbour
            # A band voxel next to a non-band voxel borders fixed background.
            np.add.at(cost_vessel, nodes[~in_band], weight[~in_band])
            if direction == 1:
                rows.append(nodes[in_band])
                cols.append(slot[in_band])
                weights.append(weight[in_band])
    source, sink = node_count, node_count + 1
    rows = np.concatenate(rows)
    cols = np.concatenate(cols)
    weights = np.rint(np.concatenate(weights) * CAPACITY_SCALE).astype(np.int32)
    nodes = np.arange(node_count)
    to_source = np.rint(cost_background * CAPACITY_SCALE).astype(np.int32)
    to_sink = np.rint(cost_vessel * CAPACITY_SCALE).astype(np.int32)
    all_rows = np.concatenate([rows, cols, np.full(node_count, source), nodes])
    all_cols = np.concatenate([cols, rows, nodes, np.full(node_count, sink)])
    all_caps = np.concatenate([weights, weights, to_source, to_sink])
    keep = all_caps > 0
    capacity = sparse.csr_array(
        (all_caps[keep], (all_rows[keep], all_cols[keep])), shape=(node_count + 2, node_count + 2), dtype=np.int32
    )
    capacity.sum_duplicates()
    flow = csgraph.maximum_flow(capacity, source, sink, method="dinic").flow
    residual = (capacity - flow).tocsr()
    residual.data[residual.data < 0] = 0
    residual.eliminate_zeros()
    reachable = csgraph.breadth_first_order(residual, source, directed=True, return_predecessors=False)
    vessel_nodes = reachable[reachable < node_count]
    is_vessel = np.zeros(node_count, dtype=bool)
    is_vessel[vessel_nodes] = True
    segmentation.ravel()[flat_band] = is_vessel
    if parameters.min_component_voxels > 1:
        labels, count = ndimage.label(segmentation)
        sizes = np.bincount(labels.ravel(), minlength=count + 1)
        small = sizes < parameters.min_component_voxels
        small[0] = False
        segmentation[small[labels]] = False
    return segmentation
