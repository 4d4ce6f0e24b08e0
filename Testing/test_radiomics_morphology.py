"""IBSI-1 morphological features.

Checked against the IBSI-1 reference values (digital phantom, CT configurations A-E) with IBSI's
matching rule; Moran's I and Geary's C against the O(N^2) double sum they are defined by; the mesh,
the enclosing bodies and the principal axes against shapes whose answers are known analytically.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from ibsi_reference import ibsi_reference, ibsi_tags, mismatches
from numpy.polynomial.legendre import legval
from scipy.spatial import ConvexHull
from scipy.spatial.distance import pdist, squareform
from scipy.spatial.transform import Rotation

from ImagInfoExtension.radiomics.morphology import (
    _minimum_volume_box,
    _mvee_semi_axes,
    ellipsoid_surface_area_mm2,
    moran_geary,
    morphology_features,
)

ALL_TAGS = {
    "morph_volume",
    "morph_vol_approx",
    "morph_area_mesh",
    "morph_av",
    "morph_comp_1",
    "morph_comp_2",
    "morph_sph_dispr",
    "morph_sphericity",
    "morph_asphericity",
    "morph_com",
    "morph_diam",
    "morph_pca_maj_axis",
    "morph_pca_min_axis",
    "morph_pca_least_axis",
    "morph_pca_elongation",
    "morph_pca_flatness",
    "morph_vol_dens_aabb",
    "morph_area_dens_aabb",
    "morph_vol_dens_ombb",
    "morph_area_dens_ombb",
    "morph_vol_dens_aee",
    "morph_area_dens_aee",
    "morph_vol_dens_mvee",
    "morph_area_dens_mvee",
    "morph_vol_dens_conv_hull",
    "morph_area_dens_conv_hull",
    "morph_integ_int",
    "morph_moran_i",
    "morph_geary_c",
}


def _brute_force_moran_geary(intensity, mask, spacing_mm):
    """Moran's I and Geary's C straight from their definitions, over all N^2 pairs."""
    positions_mm = np.argwhere(mask) * np.asarray(spacing_mm)
    values = intensity[mask].astype(np.float64)
    deviations = values - values.mean()
    weights = squareform(1.0 / pdist(positions_mm))  # zero diagonal: pairs i != j only
    n = len(values)
    total_weight = weights.sum()
    sum_squares = np.sum(deviations**2)
    moran = n * (deviations @ weights @ deviations) / (total_weight * sum_squares)
    geary = (n - 1) * np.sum(weights * (values[:, None] - values[None, :]) ** 2) / (2 * total_weight * sum_squares)
    return moran, geary


def test_digital_phantom_matches_every_reference_value(ibsi_phantom):
    image, mask = ibsi_phantom
    features = morphology_features(image, mask, mask, (2.0, 2.0, 2.0))
    # The morph_mask_* rows are image-processing diagnostics (mask sizes), not features of this family.
    assert ibsi_tags("phantom", "morph_") == ALL_TAGS == set(features)
    assert len(ibsi_reference("phantom", "morph_")) == 25  # OMBB and MVEE densities have no reference value
    assert mismatches(features, "phantom", "morph_") == []
    # IBSI's numbers for this phantom: mesh volume 556 mm^3 against 74 voxels * 8 mm^3 = 592 mm^3.
    assert features["morph_volume"] == pytest.approx(556.333, abs=1e-3)
    assert features["morph_vol_approx"] == 592.0
    assert all(isinstance(v, float) for v in features.values())


def test_digital_phantom_spatial_autocorrelation_is_the_double_sum(ibsi_phantom):
    image, mask = ibsi_phantom
    exact = _brute_force_moran_geary(image, mask, (2.0, 2.0, 2.0))
    np.testing.assert_allclose(moran_geary(image, mask, (2.0, 2.0, 2.0)), exact, rtol=1e-12)


@pytest.mark.parametrize("config", ["A", "B", "C", "D", "E"])
def test_chest_configuration_matches_every_reference_value(ibsi_roi, config):
    # Morphology is 3D in every configuration, the 2D ones (A, B) included.
    roi = ibsi_roi(config)
    features = morphology_features(roi.intensity, roi.morph_mask, roi.int_mask, roi.spacing_mm)
    assert ibsi_tags(config, "morph_") == ALL_TAGS == set(features)
    assert len(ibsi_reference(config, "morph_")) == 25
    assert mismatches(features, config, "morph_") == []


@pytest.mark.parametrize("spacing_mm", [(2.0, 2.0, 2.0), (3.0, 0.977, 0.5)])
def test_moran_and_geary_equal_the_brute_force_double_sum(spacing_mm):
    rng = np.random.default_rng(7)
    shape = (9, 13, 11)
    mask = rng.random(shape) < 0.6
    intensity = rng.normal(40.0, 25.0, shape) + 30.0 * np.arange(shape[2])[None, None, :] / shape[2]
    intensity[~mask] = 1e6  # outside the mask nothing may leak in
    padded_mask = np.pad(mask, ((2, 1), (0, 3), (1, 0)))
    padded_intensity = np.pad(intensity, ((2, 1), (0, 3), (1, 0)), constant_values=-7.0)

    ours = moran_geary(padded_intensity, padded_mask, spacing_mm)
    exact = _brute_force_moran_geary(intensity, mask, spacing_mm)
    np.testing.assert_allclose(ours, exact, rtol=1e-10)
    if spacing_mm[0] != spacing_mm[2]:  # and through the family's entry point (once: its mesh is the slow part)
        features = morphology_features(padded_intensity, padded_mask, padded_mask, spacing_mm)
        np.testing.assert_allclose((features["morph_moran_i"], features["morph_geary_c"]), exact, rtol=1e-10)


def test_moran_and_geary_of_two_voxels_by_hand():
    # Deviations +-1/2, one pair at distance d both ways: sum_ij w z_i z_j = -1/(2d), W = 2/d,
    # sum z^2 = 1/2, so I = 2 * (-1/(2d)) / (2/d * 1/2) = -1 and C = 1/(4/d) * (2/d) / (1/2) = 1.
    intensity = np.zeros((1, 1, 3))
    intensity[0, 0, 2] = 1.0
    mask = np.array([[[True, False, True]]])
    assert moran_geary(intensity, mask, (1.0, 1.0, 1.7)) == pytest.approx((-1.0, 1.0), rel=1e-12)
    # Constant intensities (no variance) and a single voxel leave both undefined.
    assert all(math.isnan(v) for v in moran_geary(np.full((1, 1, 3), 5.0), mask, (1.0, 1.0, 1.0)))
    assert all(math.isnan(v) for v in moran_geary(intensity, mask & (intensity > 0), (1.0, 1.0, 1.0)))


@pytest.fixture(scope="module")
def ball():
    """A voxelised ball of radius 10 mm on a 0.5 mm grid (and a hollow one, with a 5 mm cavity)."""
    spacing_mm = 0.5
    axis_mm = (np.arange(45) - 22) * spacing_mm
    radius_mm = np.sqrt(axis_mm[:, None, None] ** 2 + axis_mm[None, :, None] ** 2 + axis_mm[None, None, :] ** 2)
    return radius_mm, (spacing_mm,) * 3


def test_ball_mesh_volume_shape_and_axes(ball):
    radius_mm, spacing_mm = ball
    mask = radius_mm <= 10.0
    features = morphology_features(np.full(mask.shape, 20.0), mask, mask, spacing_mm)
    volume_mm3 = 4.0 / 3.0 * np.pi * 10.0**3
    assert features["morph_volume"] == pytest.approx(volume_mm3, rel=0.01)
    # The staircase of a voxelised surface adds a few per cent of area (about 9 % here).
    assert 0.9 < features["morph_sphericity"] <= 1.0
    # A uniform ball has covariance r^2/5 on every axis: axis length 4 sqrt(r^2/5).
    assert features["morph_pca_maj_axis"] == pytest.approx(40.0 / math.sqrt(5.0), rel=0.01)
    assert features["morph_pca_elongation"] == pytest.approx(1.0, abs=1e-9)
    assert features["morph_pca_flatness"] == pytest.approx(1.0, abs=1e-9)
    assert features["morph_diam"] == pytest.approx(20.0, abs=1.0)
    # Constant intensity: both centres coincide; the integrated intensity is volume times intensity.
    assert features["morph_com"] == pytest.approx(0.0, abs=1e-12)
    assert features["morph_integ_int"] == pytest.approx(20.0 * features["morph_volume"])
    assert math.isnan(features["morph_moran_i"]) and math.isnan(features["morph_geary_c"])
    # The enclosing ellipsoid of a ball is the ball through its farthest mesh vertex, radius diam / 2.
    mvee_volume_mm3 = features["morph_volume"] / features["morph_vol_dens_mvee"]
    assert mvee_volume_mm3 == pytest.approx(4.0 / 3.0 * np.pi * (features["morph_diam"] / 2.0) ** 3, rel=1e-3)


def test_cavity_is_subtracted_from_the_mesh_volume(ball):
    radius_mm, spacing_mm = ball
    shell = (radius_mm <= 10.0) & (radius_mm > 5.0)
    features = morphology_features(np.ones(shell.shape), shell, shell, spacing_mm)
    assert features["morph_volume"] == pytest.approx(4.0 / 3.0 * np.pi * (10.0**3 - 5.0**3), rel=0.01)


def test_block_fills_its_boxes_and_hull():
    # A convex 4 x 5 x 6-voxel block on a (1, 2, 3) mm grid: the mesh runs half a voxel beyond the
    # outer voxel centres, so its bounding box is 4 x 10 x 18 mm = 720 mm^3 = the voxel volume.
    mask = np.zeros((8, 9, 10), dtype=bool)
    mask[2:6, 1:6, 3:9] = True
    features = morphology_features(np.ones(mask.shape), mask, mask, (1.0, 2.0, 3.0))
    assert features["morph_vol_approx"] == 720.0
    assert features["morph_volume"] / features["morph_vol_dens_aabb"] == pytest.approx(720.0)
    aabb_area_mm2 = 2.0 * (4 * 10 + 4 * 18 + 10 * 18)
    assert features["morph_area_mesh"] / features["morph_area_dens_aabb"] == pytest.approx(aabb_area_mm2)
    # The mesh of a block is convex, and its smallest box is the axis-aligned one.
    assert features["morph_vol_dens_conv_hull"] == pytest.approx(1.0)
    assert features["morph_area_dens_conv_hull"] == pytest.approx(1.0)
    assert features["morph_vol_dens_ombb"] == pytest.approx(features["morph_vol_dens_aabb"])
    assert features["morph_area_dens_ombb"] == pytest.approx(features["morph_area_dens_aabb"])
    # Chamfered edges and corners: less than the box, more than the box less its edge prisms.
    assert 0.8 < features["morph_vol_dens_aabb"] < 1.0


def test_minimum_volume_box_of_a_rotated_cuboid():
    rng = np.random.default_rng(3)
    dims_mm = np.array([7.0, 3.0, 11.0])
    corners = (np.array(np.meshgrid([0, 1], [0, 1], [0, 1], indexing="ij")).reshape(3, -1).T - 0.5) * dims_mm
    inside = (rng.random((200, 3)) - 0.5) * dims_mm
    rotation = Rotation.from_euler("zyx", [23.0, -41.0, 67.0], degrees=True)
    points = rotation.apply(np.vstack([corners, inside])) + [5.0, -2.0, 9.0]
    hull = ConvexHull(points)
    found = _minimum_volume_box(hull, points[hull.vertices])
    np.testing.assert_allclose(np.sort(found), np.sort(dims_mm), rtol=1e-9)
    # Axis-aligned box of the rotated cuboid is much larger.
    assert np.prod(np.ptp(points, axis=0)) > 1.5 * np.prod(dims_mm)


def test_minimum_volume_box_beats_random_orientations():
    # A generic hull, whose smallest box need not be flush with a facet: no orientation of a
    # dense random sample may give a smaller enclosing box.
    rng = np.random.default_rng(4)
    points = Rotation.random(random_state=4).apply(rng.normal(size=(300, 3)) * [3.0, 2.0, 1.0])
    hull = ConvexHull(points)
    hull_points = points[hull.vertices]
    found = _minimum_volume_box(hull, hull_points)
    flush_only = _minimum_volume_box(hull, hull_points, n_refined=0)
    rotations = Rotation.random(20_000, random_state=5).as_matrix()
    projected = np.einsum("rij,pj->rpi", rotations, hull_points)
    sampled_min = np.prod(np.ptp(projected, axis=1), axis=1).min()
    assert np.prod(found) <= np.prod(flush_only)
    assert np.prod(found) < sampled_min
    # The box found encloses the hull: its extents are those of the points in its own frame.
    assert np.all(found > 0.0)


def test_minimum_volume_ellipsoid_is_affine_equivariant():
    # The smallest ellipsoid around a cube's corners is the sphere of radius sqrt(3) through them;
    # under x -> A x it becomes the ellipsoid with semi-axes sqrt(3) times A's singular values.
    corners = np.array(np.meshgrid([-1, 1], [-1, 1], [-1, 1], indexing="ij"), dtype=float).reshape(3, -1).T
    np.testing.assert_allclose(_mvee_semi_axes(corners), [math.sqrt(3.0)] * 3, rtol=1e-6)
    transform = np.array([[3.0, 0.4, -0.2], [0.1, 1.5, 0.3], [0.0, -0.5, 0.8]])
    semi_axes = _mvee_semi_axes(corners @ transform.T + [1.0, 2.0, 3.0])
    np.testing.assert_allclose(semi_axes, math.sqrt(3.0) * np.linalg.svd(transform, compute_uv=False), rtol=1e-6)


def test_ellipsoid_area_is_ibsis_legendre_series():
    assert ellipsoid_surface_area_mm2(5.0, 5.0, 5.0) == pytest.approx(4.0 * np.pi * 25.0, rel=1e-14)
    a, b, c = 5.7, 4.65, 4.27
    alpha, beta = math.sqrt(1 - b**2 / a**2), math.sqrt(1 - c**2 / a**2)
    nu = np.arange(21.0)
    series = legval((alpha**2 + beta**2) / (2 * alpha * beta), (alpha * beta) ** nu / (1 - 4 * nu**2))
    assert ellipsoid_surface_area_mm2(c, a, b) == pytest.approx(4 * np.pi * a * b * series, rel=1e-12)
    # Spheroids (alpha or beta = 0) stay finite, where the series' argument is not.
    assert math.isfinite(ellipsoid_surface_area_mm2(5.0, 5.0, 1.0))
    assert math.isnan(ellipsoid_surface_area_mm2(5.0, 5.0, 0.0))


def test_single_voxel_and_single_slice_give_nan_not_errors():
    mask = np.zeros((3, 3, 3), dtype=bool)
    mask[1, 1, 1] = True
    features = morphology_features(np.ones(mask.shape), mask, mask, (1.0, 1.0, 1.0))
    assert features["morph_vol_approx"] == 1.0 and features["morph_volume"] > 0.0
    assert math.isnan(features["morph_pca_maj_axis"]) and math.isnan(features["morph_vol_dens_aee"])
    flat = np.zeros((3, 6, 6), dtype=bool)
    flat[1, 1:5, 1:4] = True
    features = morphology_features(np.ones(flat.shape), flat, flat, (2.0, 1.0, 1.0))
    assert features["morph_pca_least_axis"] == pytest.approx(0.0, abs=1e-9)
    assert features["morph_pca_flatness"] == pytest.approx(0.0, abs=1e-9)
    assert math.isnan(features["morph_vol_dens_aee"]) and math.isnan(features["morph_area_dens_aee"])


def test_bad_arguments_are_refused():
    mask = np.zeros((4, 4, 4), dtype=bool)
    mask[1:3, 1:3, 1:3] = True
    image = np.ones(mask.shape)
    with pytest.raises(ValueError, match="empty"):
        morphology_features(image, np.zeros_like(mask), mask, (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="int_mask is empty"):
        morphology_features(image, mask, np.zeros_like(mask), (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="same"):
        morphology_features(image[:, :, :3], mask, mask, (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="same"):
        morphology_features(image, mask, mask[:3], (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="spacing"):
        morphology_features(image, mask, mask, (1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="spacing"):
        morphology_features(image, mask, mask, (1.0, 1.0))
    nan_image = image.copy()
    nan_image[1, 1, 1] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        morphology_features(nan_image, mask, mask, (1.0, 1.0, 1.0))
