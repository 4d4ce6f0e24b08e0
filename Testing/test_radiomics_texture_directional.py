"""GLCM and GLRLM (the directional texture families) against hand-computed cases and IBSI-1 references."""

from __future__ import annotations

import math

import numpy as np
import pytest
from ibsi_reference import ibsi_reference, mismatches

from ImagInfoExtension.radiomics.texture.cooccurrence import FEATURE_NAMES as GLCM_FEATURES
from ImagInfoExtension.radiomics.texture.cooccurrence import glcm_features, glcm_matrices
from ImagInfoExtension.radiomics.texture.directions import (
    AGGREGATIONS,
    DIRECTIONS_3D,
    IN_PLANE_DIRECTIONS,
    line_order,
)
from ImagInfoExtension.radiomics.texture.runlength import FEATURE_NAMES as GLRLM_FEATURES
from ImagInfoExtension.radiomics.texture.runlength import glrlm_features, glrlm_matrices

FAMILIES = ("cm_", "rlm_")

# A single 2x2 slice, levels [[1, 2], [2, 1]]: small enough to write every matrix by hand.
CHECKER = np.array([[[1, 2], [2, 1]]])
CHECKER_MASK = np.ones_like(CHECKER, dtype=bool)


# --- directions -------------------------------------------------------------------------------


def test_directions_are_the_13_unique_neighbours():
    assert len(IN_PLANE_DIRECTIONS) == 4 and len(DIRECTIONS_3D) == 13
    assert DIRECTIONS_3D[:4] == IN_PLANE_DIRECTIONS
    every = {tuple(d) for d in np.indices((3, 3, 3)).reshape(3, -1).T - 1} - {(0, 0, 0)}
    both_ways = set(DIRECTIONS_3D) | {tuple(-c for c in d) for d in DIRECTIONS_3D}
    assert both_ways == every and len(set(DIRECTIONS_3D)) == 13


def test_line_order_walks_each_line_in_steps_of_one():
    shape = (3, 4, 5)
    coords = np.indices(shape).reshape(3, -1)
    for direction in DIRECTIONS_3D:
        order, keys = line_order(coords, direction, shape)
        steps = np.diff(keys) == 1
        # Consecutive keys are exactly the voxel pairs one step apart along the direction.
        moved = coords[:, order[1:]] - coords[:, order[:-1]]
        assert np.array_equal(steps, np.all(moved == np.array(direction)[:, None], axis=0))
        assert steps.sum() == np.prod([n - abs(d) for n, d in zip(shape, direction)])


# --- GLCM by hand -----------------------------------------------------------------------------


def test_glcm_matrices_of_the_checker_by_hand():
    counts = glcm_matrices(CHECKER, CHECKER_MASK, 2, IN_PLANE_DIRECTIONS)[:, 0]
    # (0,0,1) and (0,1,0): 1->2 and 2->1, both ways; (0,1,-1): 2->2; (0,1,1): 1->1.
    expected = {
        (0, 0, 1): [[0, 2], [2, 0]],
        (0, 1, -1): [[0, 0], [0, 2]],
        (0, 1, 0): [[0, 2], [2, 0]],
        (0, 1, 1): [[2, 0], [0, 0]],
    }
    for direction, matrix in zip(IN_PLANE_DIRECTIONS, counts):
        assert matrix.tolist() == expected[direction]


def test_glcm_features_of_the_checker_by_hand():
    features = glcm_features(CHECKER, CHECKER_MASK, 2)
    # Per direction: contrast 1, 0, 1, 0 and joint maximum 1/2, 1, 1/2, 1.
    assert features["cm_contrast_2D_avg"] == pytest.approx(0.5)
    assert features["cm_joint_max_2D_avg"] == pytest.approx(0.75)
    # Merged: [[2, 4], [4, 2]] / 12.
    assert features["cm_contrast_2D_comb"] == pytest.approx(8 / 12)
    assert features["cm_joint_max_2D_comb"] == pytest.approx(1 / 3)
    assert features["cm_energy_2D_comb"] == pytest.approx(40 / 144)
    assert features["cm_joint_avg_2D_comb"] == pytest.approx(1.5)
    # sum i j p = 13/6, mu = 3/2, variance 1/4: (13/6 - 9/4) / (1/4).
    assert features["cm_corr_2D_comb"] == pytest.approx(-1 / 3)
    # One slice: the 2.5D aggregations are the 2D ones; the 9 out-of-plane directions have no
    # pairs at all, so IBSI leaves them out and 3D equals 2D too.
    for feature in GLCM_FEATURES:
        for avg in ("2_5D_avg", "3D_avg"):
            assert features[f"cm_{feature}_{avg}"] == pytest.approx(features[f"cm_{feature}_2D_avg"], nan_ok=True)
        for comb in ("2_5D_comb", "3D_comb"):
            assert features[f"cm_{feature}_{comb}"] == pytest.approx(features[f"cm_{feature}_2D_comb"], nan_ok=True)


def test_glcm_skips_a_slice_without_pairs():
    # A second slice holding a single voxel gives empty 2D matrices, which must not enter the average.
    levels = np.concatenate([CHECKER, [[[2, 0], [0, 0]]]])
    mask = levels > 0
    alone = glcm_features(CHECKER, CHECKER_MASK, 2, aggregations=("2D_avg", "2D_comb"))
    both = glcm_features(levels, mask, 2, aggregations=("2D_avg", "2D_comb"))
    assert both == pytest.approx(alone, nan_ok=True)


def test_glcm_distance_and_pairs_leaving_the_mask():
    levels = np.array([[[1, 2, 1, 2]]])
    # At distance 2 only equal levels meet: (1, 1) and (2, 2), once each.
    features = glcm_features(levels, levels > 0, 2, distance=2, aggregations=("2D_comb",))
    assert features["cm_contrast_2D_comb"] == 0
    assert features["cm_joint_max_2D_comb"] == pytest.approx(0.5)
    # With the last voxel outside the mask only (1, 1) is left.
    mask = np.array([[[True, True, True, False]]])
    features = glcm_features(levels, mask, 2, distance=2, aggregations=("2D_comb",))
    assert features["cm_joint_max_2D_comb"] == 1


def test_glcm_nan_when_no_pair_exists():
    features = glcm_features(np.array([[[3]]]), np.array([[[True]]]), 4)
    assert len(features) == 25 * 6 and all(math.isnan(v) for v in features.values())


# --- GLRLM by hand ----------------------------------------------------------------------------


def test_glrlm_matrices_of_the_checker_by_hand():
    counts = glrlm_matrices(CHECKER, CHECKER_MASK, 2, IN_PLANE_DIRECTIONS)[:, 0]
    # Rows are levels 1, 2; columns run lengths 1, 2. Only the diagonals hold runs of 2.
    expected = {
        (0, 0, 1): [[2, 0], [2, 0]],
        (0, 1, -1): [[2, 0], [0, 1]],
        (0, 1, 0): [[2, 0], [2, 0]],
        (0, 1, 1): [[0, 1], [2, 0]],
    }
    for direction, matrix in zip(IN_PLANE_DIRECTIONS, counts):
        assert matrix.tolist() == expected[direction]


def test_glrlm_features_of_the_checker_by_hand():
    features = glrlm_features(CHECKER, CHECKER_MASK, 2)
    # Per direction sre = 1, 3/4, 1, 3/4 and run percentage 4/4, 3/4, 4/4, 3/4.
    assert features["rlm_sre_2D_avg"] == pytest.approx(0.875)
    assert features["rlm_r_perc_2D_avg"] == pytest.approx(0.875)
    # Merged [[6, 1], [6, 1]]: 14 runs over 4 directions x 4 voxels.
    assert features["rlm_sre_2D_comb"] == pytest.approx((12 + 2 / 4) / 14)
    assert features["rlm_lre_2D_comb"] == pytest.approx((12 + 2 * 4) / 14)
    assert features["rlm_glnu_2D_comb"] == pytest.approx(7)
    assert features["rlm_r_perc_2D_comb"] == pytest.approx(14 / 16)
    # In 3D the 9 out-of-plane directions cut the slice into 4 runs of 1 each.
    assert features["rlm_sre_3D_avg"] == pytest.approx((3.5 + 9) / 13)
    assert features["rlm_sre_3D_comb"] == pytest.approx((48 + 0.5) / 50)
    assert features["rlm_r_perc_3D_comb"] == pytest.approx(50 / (13 * 4))
    assert set(features) == {f"rlm_{f}_{a}" for f in GLRLM_FEATURES for a in AGGREGATIONS}


def test_glrlm_runs_stop_at_the_mask():
    levels = np.array([[[1, 1, 1, 1, 1]]])
    mask = np.array([[[True, True, False, True, True]]])
    counts = glrlm_matrices(levels, mask, 1, [(0, 0, 1)])
    assert counts[0, 0, 0].tolist() == [0, 2, 0, 0, 0]


def test_glrlm_skips_a_slice_without_voxels():
    levels = np.concatenate([CHECKER, np.zeros_like(CHECKER), CHECKER[:, ::-1]])
    two_d = ("2D_avg", "2D_comb", "2_5D_avg", "2_5D_comb")
    with_gap = glrlm_features(levels, levels > 0, 2, aggregations=two_d)
    stacked = np.concatenate([CHECKER, CHECKER[:, ::-1]])
    assert with_gap == pytest.approx(glrlm_features(stacked, stacked > 0, 2, aggregations=two_d))


# --- memory bound ---------------------------------------------------------------------------


def test_matrices_built_in_small_pieces_give_the_same_features(monkeypatch):
    import ImagInfoExtension.radiomics.texture.cooccurrence as cooccurrence
    import ImagInfoExtension.radiomics.texture.directions as directions
    import ImagInfoExtension.radiomics.texture.runlength as runlength

    rng = np.random.default_rng(3)
    levels = rng.integers(1, 9, size=(5, 6, 7))
    mask = rng.random(levels.shape) < 0.8
    whole = glcm_features(levels, mask, 10) | glrlm_features(levels, mask, 10)
    # A budget of one entry forces one slice and one direction per stack.
    for module in (cooccurrence, directions, runlength):
        monkeypatch.setattr(module, "MATRIX_ENTRY_BUDGET", 1, raising=False)
    pieces = glcm_features(levels, mask, 10) | glrlm_features(levels, mask, 10)
    assert pieces == pytest.approx(whole, nan_ok=True)


# --- arguments --------------------------------------------------------------------------------


@pytest.mark.parametrize("function", [glcm_features, glrlm_features])
def test_bad_arguments_raise(function):
    with pytest.raises(ValueError, match="same"):
        function(CHECKER, np.ones((1, 2, 3), dtype=bool), 2)
    with pytest.raises(ValueError, match="n_levels"):
        function(CHECKER, CHECKER_MASK, 0)
    with pytest.raises(ValueError, match="outside 1..1"):
        function(CHECKER, CHECKER_MASK, 1)
    with pytest.raises(ValueError, match="empty"):
        function(CHECKER, np.zeros_like(CHECKER_MASK), 2)
    with pytest.raises(ValueError, match="aggregation"):
        function(CHECKER, CHECKER_MASK, 2, aggregations=("3D",))


def test_glcm_bad_distance_raises():
    with pytest.raises(ValueError, match="distance"):
        glcm_features(CHECKER, CHECKER_MASK, 2, distance=0)


# --- IBSI-1 digital phantom -------------------------------------------------------------------


@pytest.fixture(scope="module")
def digital_phantom(ibsi_phantom):
    image, mask = ibsi_phantom
    levels = image.astype(np.int64)
    # No discretisation: the grey levels are the image values, N_g = 6 (levels 2 and 5 are unused).
    features = glcm_features(levels, mask, 6)
    features.update(glrlm_features(levels, mask, 6))
    return features


def test_digital_phantom_every_glcm_and_glrlm_tag(digital_phantom):
    reference = ibsi_reference("phantom", FAMILIES)
    assert len(reference) == (25 + 16) * 6
    assert set(digital_phantom) == set(reference)
    assert mismatches(digital_phantom, "phantom", FAMILIES) == []


# --- IBSI-1 CT phantom, configurations A-E ----------------------------------------------------


@pytest.mark.parametrize("config", ["A", "B", "C", "D", "E"])
def test_ct_phantom_configurations(ibsi_roi, config):
    reference = ibsi_reference(config, FAMILIES)
    aggregations = tuple(a for a in AGGREGATIONS if any(tag.endswith(f"_{a}") for tag in reference))
    roi = ibsi_roi(config)
    features = glcm_features(roi.levels, roi.int_mask, roi.n_levels, aggregations=aggregations)
    features.update(glrlm_features(roi.levels, roi.int_mask, roi.n_levels, aggregations=aggregations))
    assert mismatches(features, config, FAMILIES) == []
