"""Rule-based segmentation: HU window within a mask, region growing, connectivity, errors."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from ImagInfoExtension.segmentation.rules import lps_from_ras, region_growing, window_segmentation

SPACING = (0.8, 0.9, 1.5)
ORIGIN = (-20.0, 15.0, 40.0)


def _image(array: np.ndarray, spacing=SPACING, origin=ORIGIN, direction=None) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection(direction)
    return image


def _ball(shape, centre_kji, radius_mm, spacing=SPACING) -> np.ndarray:
    """Voxels whose centres lie within ``radius_mm`` of a centre given in (continuous) voxel indices."""
    k, j, i = np.indices(shape, dtype=float)
    return (
        ((i - centre_kji[2]) * spacing[0]) ** 2
        + ((j - centre_kji[1]) * spacing[1]) ** 2
        + ((k - centre_kji[0]) * spacing[2]) ** 2
    ) <= radius_mm**2


@pytest.fixture(scope="module")
def head():
    """A head-like phantom: skull, brain at 30 HU, a 60 HU blob in the brain, one in the scalp, a 60 HU speck."""
    shape = (30, 56, 60)
    k, j, i = np.indices(shape, dtype=float)
    # Ellipsoids in mm around the centre.
    r = np.sqrt(((i - 29.5) * 0.8 / 22) ** 2 + ((j - 27.5) * 0.9 / 24) ** 2 + ((k - 14.5) * 1.5 / 21) ** 2)
    array = np.full(shape, -1000.0, dtype=np.float32)
    array[r <= 1.0] = 20.0  # scalp
    array[r <= 0.9] = 800.0  # skull
    brain = r <= 0.78
    array[brain] = 30.0
    inside_blob = _ball(shape, (14, 27, 22), 4.0)
    outside_blob = _ball(shape, (14, 27, 57), 2.0)  # in the scalp: right edge of the head
    assert not (outside_blob & brain).any() and (inside_blob & ~brain).sum() == 0
    array[inside_blob] = 60.0
    array[outside_blob] = 60.0
    array[14, 20, 40] = 60.0  # a one-voxel speck in the brain
    return {
        "image": _image(array),
        "brain": _image(brain.astype(np.uint8)),
        "inside_blob": inside_blob,
        "outside_blob": outside_blob,
    }


def test_window_in_brain_keeps_only_the_blob_inside_the_mask(head):
    voxel_ml = np.prod(SPACING) / 1000
    result = window_segmentation(head["image"], 40, 90, mask=head["brain"], min_volume_ml=2 * voxel_ml)
    labels = sitk.GetArrayFromImage(result.labels)
    assert np.array_equal(labels == 1, head["inside_blob"])  # the scalp blob and the speck are gone
    assert result.component_count == 1 and result.removed_count == 1
    assert result.voxel_count == head["inside_blob"].sum()
    assert result.volume_ml == pytest.approx(head["inside_blob"].sum() * voxel_ml, rel=1e-12)
    assert result.labels.GetSpacing() == head["image"].GetSpacing()
    assert result.labels.GetOrigin() == head["image"].GetOrigin()
    # Without the mask, the scalp blob (and the speck) come back.
    unmasked = window_segmentation(head["image"], 40, 90, label=7)
    labels = sitk.GetArrayFromImage(unmasked.labels)
    assert unmasked.component_count == 3 and unmasked.removed_count == 0
    assert np.array_equal(labels == 7, head["inside_blob"] | head["outside_blob"] | _speck(labels.shape))
    assert set(np.unique(labels)) == {0, 7}


def _speck(shape):
    speck = np.zeros(shape, dtype=bool)
    speck[14, 20, 40] = True
    return speck


def test_window_is_inclusive_and_minimum_volume_keeps_a_component_of_exactly_that_volume():
    array = np.zeros((5, 5, 20), dtype=np.float32)
    array[2, 2, 1:4] = [40.0, 90.0, 65.0]  # both bounds belong: one component of 3 voxels
    array[2, 2, 8] = 39.999
    array[2, 2, 12] = 90.001
    array[2, 2, 16:18] = 50.0  # 2 voxels
    image = _image(array, spacing=(1.0, 1.0, 1.0))
    result = window_segmentation(image, 40, 90)
    assert result.component_count == 2 and result.voxel_count == 5
    assert result.component_volumes_ml == pytest.approx((0.003, 0.002))
    kept = window_segmentation(image, 40, 90, min_volume_ml=0.003)
    assert kept.component_count == 1 and kept.removed_count == 1 and kept.voxel_count == 3


def _chains() -> np.ndarray:
    """A face-connected row of 3, an edge-only pair, a corner-only pair, apart from each other."""
    array = np.zeros((6, 8, 22), dtype=np.int16)
    array[2, 2, 1:4] = 1  # faces
    array[2, 2, 7] = array[2, 3, 8] = 1  # share an edge only
    array[2, 2, 13] = array[3, 3, 14] = 1  # share a corner only
    array[1, 5, 18] = array[2, 6, 19] = array[3, 5, 20] = 1  # a corner-only zigzag of 3
    return array


@pytest.mark.parametrize(("connectivity", "components"), [(6, 1 + 2 + 2 + 3), (18, 1 + 1 + 2 + 3), (26, 1 + 1 + 1 + 1)])
def test_connectivity_counts_on_diagonal_chains(connectivity, components):
    image = _image(_chains() * 100)
    result = window_segmentation(image, 50, 150, connectivity=connectivity)
    assert result.component_count == components
    assert result.voxel_count == _chains().sum()
    if connectivity != 18:  # SimpleITK knows face (6) and full (26) connectivity: it must agree
        peer = sitk.ConnectedComponent(sitk.Cast(image > 50, sitk.sitkUInt8), connectivity == 26)
        assert int(sitk.GetArrayFromImage(peer).max()) == components


@pytest.fixture(scope="module")
def vessels():
    """Two bright tubes joined by one voxel below the window, and a side branch touching by an edge only."""
    array = np.full((12, 16, 40), -50.0, dtype=np.float32)
    array[6, 8, 2:19] = 300.0  # tube A
    array[6, 8, 19] = 120.0  # the joint: inside [100, 500], outside [200, 500]
    array[6, 8, 20:38] = 300.0  # tube B
    array[7, 9, 10:14] = 250.0  # branch touching tube A along edges only (diagonal in k and j)
    return _image(array)


def test_region_growing_stops_at_the_window_and_follows_the_connectivity(vessels):
    seed_lps = vessels.TransformIndexToPhysicalPoint((4, 8, 6))  # in tube A
    grown = region_growing(vessels, seed_lps, 200, 500, connectivity=6)
    labels = sitk.GetArrayFromImage(grown.labels)
    assert labels.sum() == 17 and labels[6, 8, 2:19].all() and not labels[6, 8, 19:].any()
    assert grown.component_count == 1
    # The edge-touching branch joins with 18 (and 26), not 6.
    assert region_growing(vessels, seed_lps, 200, 500, connectivity=18).voxel_count == 17 + 4
    assert region_growing(vessels, seed_lps, 200, 500, connectivity=26).voxel_count == 17 + 4
    # A wider window takes the joint and tube B.
    assert region_growing(vessels, seed_lps, 100, 500, connectivity=6).voxel_count == 17 + 1 + 18
    # SimpleITK's connected threshold (face and full connectivity) agrees voxel for voxel.
    for connectivity, full in ((6, False), (26, True)):
        ours = sitk.GetArrayFromImage(region_growing(vessels, seed_lps, 200, 500, connectivity=connectivity).labels)
        filter_ = sitk.ConnectedThresholdImageFilter()
        filter_.SetLower(200)
        filter_.SetUpper(500)
        filter_.SetSeedList([(4, 8, 6)])
        filter_.SetConnectivity(filter_.FullConnectivity if full else filter_.FaceConnectivity)
        assert np.array_equal(ours, sitk.GetArrayFromImage(filter_.Execute(vessels)))


def test_region_growing_with_several_seeds_and_ras_seeds_on_an_oblique_grid(vessels):
    rotation = sitk.VersorTransform((0.3, -0.5, 0.8), 0.7).GetMatrix()
    oblique = sitk.Image(vessels)
    oblique.SetDirection(rotation)
    seeds_lps = np.array([oblique.TransformIndexToPhysicalPoint(idx) for idx in ((4, 8, 6), (30, 8, 6))])
    both = region_growing(oblique, seeds_lps, 200, 500, connectivity=6)
    assert both.component_count == 2 and both.voxel_count == 17 + 18
    assert both.component_volumes_ml == pytest.approx(np.array([18, 17]) * np.prod(SPACING) / 1000)
    # Slicer's RAS markups: converted, the same seeds give the same voxels; nudged by less than half a voxel too.
    seeds_ras = seeds_lps * [-1, -1, 1]
    from_ras = region_growing(oblique, lps_from_ras(seeds_ras + [0.3, -0.2, 0.1]), 200, 500, connectivity=6)
    assert np.array_equal(sitk.GetArrayFromImage(from_ras.labels), sitk.GetArrayFromImage(both.labels))
    assert np.allclose(lps_from_ras(seeds_ras[0]), seeds_lps[0])


def test_region_growing_inside_a_mask(vessels):
    mask = np.zeros((12, 16, 40), dtype=np.uint8)
    mask[:, :, :10] = 1
    mask_image = _image(mask)
    seed = vessels.TransformIndexToPhysicalPoint((4, 8, 6))
    grown = region_growing(vessels, seed, 200, 500, connectivity=6, mask=mask_image)
    assert grown.voxel_count == 8  # i = 2..9
    with pytest.raises(ValueError, match="outside the mask"):
        region_growing(vessels, vessels.TransformIndexToPhysicalPoint((15, 8, 6)), 200, 500, mask=mask_image)


def test_errors_name_the_problem_and_the_fix(vessels, head):
    seed = vessels.TransformIndexToPhysicalPoint((4, 8, 6))
    with pytest.raises(ValueError, match=r"outside the image .*lps_from_ras"):
        region_growing(vessels, np.array(seed) + [500, 0, 0], 200, 500)
    with pytest.raises(ValueError, match=r"has value -50, outside the window \[200, 500\]"):
        region_growing(vessels, vessels.TransformIndexToPhysicalPoint((0, 0, 0)), 200, 500)
    with pytest.raises(ValueError, match="lower bound 500 is above its upper bound 200"):
        region_growing(vessels, seed, 500, 200)
    with pytest.raises(ValueError, match="lower bound 90 is above"):
        window_segmentation(vessels, 90, 40)
    shifted = sitk.Image(head["brain"])
    shifted.SetOrigin((0.0, 0.0, 0.0))
    with pytest.raises(ValueError, match=r"mask is on another grid .*origin .*sitk.Resample"):
        window_segmentation(head["image"], 40, 90, mask=shifted)
    with pytest.raises(ValueError, match=r"mask is on another grid"):
        region_growing(head["image"], seed, 0, 100, mask=shifted)
    nans = sitk.GetArrayFromImage(vessels)
    nans[0, 0, :3] = np.nan
    with pytest.raises(ValueError, match="3 NaN voxel"):
        window_segmentation(_image(nans), 200, 500)
    with pytest.raises(ValueError, match="3 NaN voxel"):
        region_growing(_image(nans), seed, 200, 500)
    flat = sitk.GetImageFromArray(np.zeros((10, 10), dtype=np.float32))
    with pytest.raises(ValueError, match="2D"):
        window_segmentation(flat, 0, 1)
    with pytest.raises(ValueError, match="2D"):
        region_growing(flat, (0.0, 0.0), 0, 1)
    with pytest.raises(ValueError, match="connectivity 8 is not 6, 18 or 26"):
        window_segmentation(vessels, 200, 500, connectivity=8)
    with pytest.raises(ValueError, match="min_volume_ml"):
        window_segmentation(vessels, 200, 500, min_volume_ml=-1)
    with pytest.raises(ValueError, match="finite"):
        window_segmentation(vessels, float("nan"), 500)
    with pytest.raises(ValueError, match="label 0"):
        window_segmentation(vessels, 200, 500, label=0)
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        region_growing(vessels, [[1.0, 2.0]], 200, 500)
