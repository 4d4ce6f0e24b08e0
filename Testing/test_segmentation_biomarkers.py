"""Biomarkers per segment and lesion, follow-up registration and lesion matching, DICOM SEG round trip."""

from __future__ import annotations

import csv
import math
import warnings

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from scipy.spatial.distance import pdist

from ImagInfoExtension.geometry import ImageGrid
from ImagInfoExtension.io import CTSeriesInfo, read_dicom_series, write_ct_series
from ImagInfoExtension.radiomics.lesions import split_lesions
from ImagInfoExtension.segmentation.biomarkers import (
    BIOMARKER_COLUMNS,
    label_lesions,
    maximum_diameter_mm,
    segment_biomarkers,
    write_biomarkers_csv,
)
from ImagInfoExtension.segmentation.dicomseg import (
    Code,
    SegmentDescriptionSpec,
    read_dicom_seg,
    read_segment_descriptions,
    segment_specs,
    write_dicom_seg,
)
from ImagInfoExtension.segmentation.followup import (
    FOLLOWUP_COLUMNS,
    compare_followup,
    register_rigid,
    write_followup_csv,
)

OBLIQUE = tuple(sitk.VersorTransform((0.2, 0.9, -0.4), 0.5).GetMatrix())


def _image(array, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=None) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection(direction)
    return image


def _ball_kji(shape, centre_kji, radius_mm, spacing) -> np.ndarray:
    k, j, i = np.indices(shape, dtype=float)
    return (
        ((i - centre_kji[2]) * spacing[0]) ** 2
        + ((j - centre_kji[1]) * spacing[1]) ** 2
        + ((k - centre_kji[0]) * spacing[2]) ** 2
    ) <= radius_mm**2


# --- biomarkers -----------------------------------------------------------------------------------


def test_sphere_volume_centroid_and_shifted_centroid_on_an_oblique_grid():
    spacing = (1.0, 1.0, 1.0)
    shape = (24, 26, 28)
    ball = _ball_kji(shape, (11, 12, 13), 8.0, spacing)
    origin = (10.0, -40.0, 25.0)
    labels = _image(ball.astype(np.uint8), spacing, origin, OBLIQUE)
    (row,) = segment_biomarkers(labels, per_lesion=False)
    assert row.voxel_count == ball.sum() == 2109  # lattice points of a radius-8 ball centred on a point
    assert row.volume_ml == pytest.approx(ball.sum() / 1000, rel=1e-12)
    # A digitised ball of radius 8 voxels is within 2.3 % of 4/3 pi r^3 wherever its centre lies (2000 random
    # sub-voxel centres); centred on a voxel it is 1.7 % under.
    assert row.volume_ml == pytest.approx(4 / 3 * math.pi * 8**3 / 1000, rel=0.025)
    # Symmetric about a voxel centre: the centroid is that centre, in LPS and RAS.
    centre_lps = np.array(labels.TransformContinuousIndexToPhysicalPoint((13.0, 12.0, 11.0)))
    assert np.allclose(row.centroid_lps_mm, centre_lps, atol=1e-9)
    assert np.allclose(row.centroid_ras_mm, centre_lps * [-1, -1, 1], atol=1e-9)
    assert row.max_diameter_mm == pytest.approx(16.0, abs=1e-9)  # opposite poles (0, 0, +-8) are voxel centres
    assert row.lesion_count == 1 and row.lesions_below_min_volume == 0
    # The same ball shifted by (3, -2, 1) voxels: the centroid moves by that vector through the direction.
    shifted = np.roll(ball, (1, -2, 3), axis=(0, 1, 2))
    (moved,) = segment_biomarkers(_image(shifted.astype(np.uint8), spacing, origin, OBLIQUE), per_lesion=False)
    expected = np.asarray(OBLIQUE).reshape(3, 3) @ np.array([3.0, -2.0, 1.0]) + centre_lps
    assert np.allclose(moved.centroid_lps_mm, expected, atol=1e-9)


def test_box_diameter_is_its_space_diagonal_and_bounding_boxes_are_its_extreme_voxel_centres():
    spacing = (0.7, 1.1, 2.5)
    origin = (-30.0, 12.0, 100.0)
    array = np.zeros((12, 20, 30), dtype=np.uint8)
    array[3:8, 4:15, 5:25] = 2  # 20 x 11 x 5 voxels along i, j, k
    labels = _image(array, spacing, origin)
    (row,) = segment_biomarkers(labels, names={2: "box"}, per_lesion=False)
    assert row.name == "box"
    diagonal = math.sqrt((19 * 0.7) ** 2 + (10 * 1.1) ** 2 + (4 * 2.5) ** 2)
    assert row.max_diameter_mm == pytest.approx(diagonal, rel=1e-12)
    assert row.bbox_index_min_ijk == (5, 4, 3) and row.bbox_index_max_ijk == (24, 14, 7)
    assert np.allclose(row.bbox_lps_min_mm, (-30 + 5 * 0.7, 12 + 4 * 1.1, 100 + 3 * 2.5))
    assert np.allclose(row.bbox_lps_max_mm, (-30 + 24 * 0.7, 12 + 14 * 1.1, 100 + 7 * 2.5))
    assert row.voxel_count == 20 * 11 * 5
    # On an oblique grid the LPS box is that of the rotated voxel centres.
    oblique = _image(array, spacing, origin, OBLIQUE)
    (turned,) = segment_biomarkers(oblique, per_lesion=False)
    centres = ImageGrid.from_sitk(oblique).physical_from_index(np.argwhere(array)[:, ::-1])
    assert np.allclose(turned.bbox_lps_min_mm, centres.min(axis=0)) and np.allclose(
        turned.bbox_lps_max_mm, centres.max(axis=0)
    )
    assert turned.max_diameter_mm == pytest.approx(diagonal, rel=1e-12)


def test_maximum_diameter_equals_brute_force_including_degenerate_shapes():
    rng = np.random.default_rng(3)
    for trial in range(60):
        shape = tuple(int(n) for n in rng.integers(1, 9, 3))
        mask = rng.random(shape) < rng.uniform(0.05, 0.6)
        if not mask.any():
            mask.flat[0] = True
        direction = tuple(np.linalg.qr(rng.normal(size=(3, 3)))[0].ravel())
        grid = ImageGrid(shape[::-1], tuple(rng.uniform(0.3, 3.0, 3)), tuple(rng.normal(size=3) * 50), direction)
        points = grid.physical_from_index(np.argwhere(mask)[:, ::-1])
        expected = pdist(points).max() if len(points) > 1 else 0.0
        assert maximum_diameter_mm(mask, grid) == pytest.approx(expected, rel=1e-12, abs=1e-12), trial
    grid = ImageGrid((6, 5, 4), (0.5, 0.8, 3.0))
    one = np.zeros(grid.shape_kji, dtype=bool)
    one[1, 2, 3] = True
    assert maximum_diameter_mm(one, grid) == 0.0
    two = one.copy()
    two[2, 3, 4] = True  # corner neighbours
    assert maximum_diameter_mm(two, grid) == pytest.approx(math.sqrt(0.5**2 + 0.8**2 + 3.0**2))
    row = np.zeros(grid.shape_kji, dtype=bool)
    row[0, 0, :] = True  # collinear: 1D case
    assert maximum_diameter_mm(row, grid) == pytest.approx(5 * 0.5)
    plane = np.zeros(grid.shape_kji, dtype=bool)
    plane[2] = True  # one slice: the coplanar (2D hull) case
    assert maximum_diameter_mm(plane, grid) == pytest.approx(math.hypot(5 * 0.5, 4 * 0.8))
    assert math.isnan(maximum_diameter_mm(np.zeros(grid.shape_kji, dtype=bool), grid))


def test_lesions_by_decreasing_volume_with_intensities_and_empty_named_segments():
    spacing = (0.8, 0.8, 2.0)
    shape = (16, 30, 40)
    array = np.zeros(shape, dtype=np.uint16)
    array[2:6, 2:10, 2:12] = 3  # 320 voxels: lesion 1
    array[10:12, 20:25, 30:34] = 3  # 40 voxels: lesion 2
    array[14, 28, 38] = 3  # 1 voxel: below the minimum lesion volume
    array[8:10, 12:18, 15:20] = 5  # another segment
    rng = np.random.default_rng(0)
    values = rng.normal(40.0, 12.0, shape).astype(np.float32)
    labels = _image(array, spacing, (5.0, 6.0, 7.0))
    image = _image(values, spacing, (5.0, 6.0, 7.0))
    voxel_ml = 0.8 * 0.8 * 2.0 / 1000
    rows = segment_biomarkers(
        labels, image, names={3: "tumour", 5: "node", 9: "absent"}, min_lesion_volume_ml=2 * voxel_ml
    )
    assert [(r.label, r.scope, r.lesion_id) for r in rows] == [
        (3, "segment", None),
        (3, "lesion", 1),
        (3, "lesion", 2),
        (5, "segment", None),
        (5, "lesion", 1),
        (9, "segment", None),
    ]
    tumour, first, second, node, node_lesion, absent = rows
    assert tumour.voxel_count == 361 and tumour.lesion_count == 2 and tumour.lesions_below_min_volume == 1
    assert tumour.volume_ml == pytest.approx(361 * voxel_ml)
    assert (first.voxel_count, second.voxel_count) == (320, 40)
    for row, mask in (
        (tumour, array == 3),
        (first, _box(shape, (slice(2, 6), slice(2, 10), slice(2, 12)))),
        (second, _box(shape, (slice(10, 12), slice(20, 25), slice(30, 34)))),
        (node, array == 5),
    ):
        inside = values[mask].astype(np.float64)
        assert row.intensity_mean == pytest.approx(inside.mean(), rel=1e-12)
        assert row.intensity_sd == pytest.approx(inside.std(ddof=0), rel=1e-12)
        assert (row.intensity_min, row.intensity_max) == (inside.min(), inside.max())
        assert row.intensity_median == pytest.approx(np.median(inside), rel=1e-12)
        centre_ijk = np.argwhere(mask).mean(axis=0)[::-1]
        assert np.allclose(row.centroid_lps_mm, np.array([5.0, 6.0, 7.0]) + centre_ijk * spacing)
    assert second.bbox_index_min_ijk == (30, 20, 10) and second.bbox_index_max_ijk == (33, 24, 11)
    assert node_lesion.voxel_count == node.voxel_count == 60
    assert absent.voxel_count == 0 and absent.lesion_count == 0 and absent.max_diameter_mm is None
    # Without an image the intensities are absent; connectivity 6 splits nothing here.
    plain = segment_biomarkers(labels, connectivity=6)
    assert plain[0].intensity_mean is None and plain[0].lesion_count == 3
    assert plain[0].name == "label 3"


@pytest.mark.parametrize("connectivity", [6, 18, 26])
def test_lesions_are_numbered_as_split_lesions_numbers_them(connectivity):
    """Same ids, voxels, volumes and centroids as radiomics' per-lesion split (ties in size included)."""
    rng = np.random.default_rng(connectivity)
    array = (rng.random((14, 17, 19)) < {6: 0.2, 18: 0.1, 26: 0.06}[connectivity]).astype(np.uint8) * 4
    array[0:2, 0:2, 0:2] = 4  # two 8-voxel cubes far apart: a tie broken by the first voxel
    array[12:14, 15:17, 17:19] = 4
    grid = ImageGrid((19, 17, 14), (0.6, 0.9, 1.7), (3.0, -2.0, 8.0), OBLIQUE)
    min_ml = 2.5 * grid.voxel_volume_mm3 / 1000
    ours = label_lesions(array, grid, 4, connectivity=connectivity, min_volume_ml=min_ml)
    reference, left_out = split_lesions(array == 4, grid, connectivity=connectivity, min_volume_ml=min_ml)
    assert len(ours.lesions) == len(reference) > 10 and ours.left_out == left_out > 0
    for lesion, expected in zip(ours.lesions, reference):
        assert lesion.lesion_id == expected.lesion_id and lesion.voxel_count == expected.voxel_count
        assert lesion.volume_ml == pytest.approx(expected.volume_ml, rel=1e-12)
        assert np.allclose(lesion.centroid_lps_mm, expected.centroid_lps_mm, atol=1e-9)
        full = np.zeros(array.shape, dtype=bool)
        full[lesion.box] = lesion.mask
        assert np.array_equal(full, expected.mask)


def _box(shape, slices):
    mask = np.zeros(shape, dtype=bool)
    mask[slices] = True
    return mask


def test_biomarkers_csv_is_written_whole_with_every_digit(tmp_path):
    array = np.zeros((6, 7, 8), dtype=np.uint8)
    array[1:3, 1:4, 1:5] = 1
    array[5, 6, 7] = 1
    labels = _image(array, (0.3, 0.7, 1.3), (1.1, 2.2, 3.3))
    image = _image(np.random.default_rng(1).normal(size=array.shape), (0.3, 0.7, 1.3), (1.1, 2.2, 3.3))
    rows = segment_biomarkers(labels, image, names={1: "a, b"})
    path = write_biomarkers_csv(rows, tmp_path / "out" / "biomarkers.csv")
    assert sorted(p.name for p in path.parent.iterdir()) == ["biomarkers.csv"]
    with open(path, newline="") as handle:
        table = list(csv.DictReader(handle))
    assert tuple(table[0]) == BIOMARKER_COLUMNS
    assert [r["scope"] for r in table] == ["segment", "lesion", "lesion"]
    assert table[0]["name"] == "a, b" and table[0]["lesion_id"] == "" and table[1]["lesion_count"] == ""
    for written, row in zip(table, rows):
        for column, value in row.as_dict().items():
            if isinstance(value, float):
                assert float(written[column]) == value, column
    assert float(table[0]["volume_ml"]) == 25 * 0.3 * 0.7 * 1.3 / 1000


def test_biomarker_errors():
    labels = _image(np.ones((4, 5, 6), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"image is on another grid than the label map .*sitk.Resample"):
        segment_biomarkers(labels, _image(np.zeros((4, 5, 6), dtype=np.float32), spacing=(2.0, 1.0, 1.0)))
    with pytest.raises(ValueError, match="non-integer"):
        segment_biomarkers(_image(np.full((4, 5, 6), 0.5, dtype=np.float32)))
    with pytest.raises(ValueError, match="2D"):
        segment_biomarkers(sitk.GetImageFromArray(np.ones((5, 6), dtype=np.uint8)))
    nans = np.zeros((4, 5, 6), dtype=np.float32)
    nans[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="1 NaN voxel"):
        segment_biomarkers(labels, _image(nans))


# --- follow-up ------------------------------------------------------------------------------------

SHIFT_MM = np.array([4.0, -3.0, 2.0])
GROWING = np.array([20.3, 30.2, 28.4])  # radius 6 -> 7 mm
VANISHING = np.array([42.0, 25.0, 38.0])  # radius 4 mm, gone at follow-up
NEW = np.array([30.0, 44.0, 20.0])  # radius 3 mm, only at follow-up
MOVING = (np.array([38.0, 40.0, 30.0]), np.array([44.0, 40.0, 30.0]))  # radius 2 mm, moves 6 mm: no overlap


def _scan(shift_mm, lesions, seed):
    """A 64^3 1 mm head: skull, brain, lesions at 70 HU; anatomy and lesions displaced by ``shift_mm``."""
    k, j, i = np.indices((64, 64, 64), dtype=float)
    x, y, z = i - shift_mm[0], j - shift_mm[1], k - shift_mm[2]
    r = np.sqrt(((x - 32) / 26) ** 2 + ((y - 32) / 22) ** 2 + ((z - 32) / 24) ** 2)
    array = np.full(r.shape, -1000.0)
    array[r <= 1] = 800.0
    array[r <= 0.85] = 35.0
    labels = np.zeros(r.shape, dtype=np.uint8)
    for centre, radius in lesions:
        inside = (x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2 <= radius**2
        array[inside] = 70.0
        labels[inside] = 1
    array += np.random.default_rng(seed).normal(0.0, 5.0, array.shape)
    return _image(array.astype(np.float32)), _image(labels)


def _lattice_count(centre, radius):
    """Voxel centres of a 1 mm grid within ``radius`` of ``centre`` (counted independently of the code)."""
    g = np.arange(64, dtype=float)
    x, y, z = np.meshgrid(g, g, g, indexing="ij")
    return int(np.count_nonzero((x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2 <= radius**2))


@pytest.fixture(scope="module")
def followup_pair():
    baseline = _scan(np.zeros(3), [(GROWING, 6.0), (VANISHING, 4.0), (MOVING[0], 2.0)], seed=1)
    followup = _scan(SHIFT_MM, [(GROWING, 7.0), (NEW, 3.0), (MOVING[1], 2.0)], seed=2)
    return baseline, followup, compare_followup(*baseline, *followup)


def test_registration_recovers_the_known_shift_and_is_reproducible(followup_pair):
    (baseline_image, _), (followup_image, _), result = followup_pair
    registration = result.registration
    assert np.allclose(registration.translation_mm, SHIFT_MM, atol=0.5)
    assert np.abs(registration.rotation_deg).max() < 1.0
    assert np.allclose(registration.map_to_moving(GROWING), GROWING + SHIFT_MM, atol=0.5)
    again = register_rigid(baseline_image, followup_image)
    assert again.transform.GetParameters() == registration.transform.GetParameters()
    # From a translation guess, sampling only the head (a mask on the baseline grid).
    head = sitk.Cast(baseline_image > -500, sitk.sitkUInt8)
    guided = register_rigid(
        baseline_image,
        followup_image,
        initial_transform=sitk.TranslationTransform(3, (3.0, -2.0, 1.0)),
        fixed_mask=head,
    )
    assert np.allclose(guided.translation_mm, SHIFT_MM, atol=0.5)


def test_registration_recovers_a_known_rotation(followup_pair):
    (baseline_image, _), _, _ = followup_pair
    truth = sitk.Euler3DTransform(
        (31.5, 31.5, 31.5), math.radians(1.5), math.radians(-1.0), math.radians(3.0), (2.0, -1.5, 1.0)
    )
    # The anatomy moved by ``truth``: the follow-up at p shows the baseline at truth^-1(p).
    followup = sitk.Resample(baseline_image, baseline_image, truth.GetInverse(), sitk.sitkLinear, -1000.0)
    registration = register_rigid(baseline_image, followup)
    assert np.allclose(registration.rotation_deg, (1.5, -1.0, 3.0), atol=0.3)
    points = np.array([[8.0, 10.0, 12.0], [55.0, 50.0, 52.0], [32.0, 20.0, 40.0]])
    expected = np.array([truth.TransformPoint(tuple(p)) for p in points])
    assert np.abs(registration.map_to_moving(points) - expected).max() < 0.3
    assert np.allclose(registration.map_to_fixed(expected), points, atol=0.3)


def test_lesions_match_grow_vanish_and_appear(followup_pair, tmp_path):
    _, _, result = followup_pair
    rows = {(r.baseline_lesion_id, r.followup_lesion_id): r for r in result.lesions}
    assert [(r.status, r.matched_by) for r in result.lesions] == [
        ("matched", "overlap"),
        ("vanished", None),
        ("matched", "distance"),
        ("new", None),
    ]
    # Baseline lesions by volume: growing (1), vanishing (2), moving (3); follow-up: growing (1), new (2), moving (3).
    growing, vanished, moved, new = rows[(1, 1)], rows[(2, None)], rows[(3, 3)], rows[(None, 2)]
    before, after = _lattice_count(GROWING, 6.0), _lattice_count(GROWING + SHIFT_MM, 7.0)
    assert (growing.baseline_volume_ml, growing.followup_volume_ml) == (before / 1000, after / 1000)
    assert growing.volume_change_ml == pytest.approx((after - before) / 1000, abs=1e-12)
    assert growing.volume_change_percent == pytest.approx(100 * (after - before) / before)
    # Analytic growth 4/3 pi (7^3 - 6^3) = 0.532 ml. Digitising a ball of radius 6 (7) voxels miscounts it by
    # at most 23 (45) voxels over 3000 random sub-voxel centres, so the change is within 0.068 ml of it.
    assert growing.volume_change_ml == pytest.approx(4 / 3 * math.pi * (7**3 - 6**3) / 1000, abs=0.068)
    assert growing.overlap_voxels == before  # the grown lesion covers the baseline one
    assert growing.centroid_shift_mm < 0.5
    assert vanished.followup_volume_ml == 0 and vanished.volume_change_percent == -100.0
    assert vanished.volume_change_ml == -_lattice_count(VANISHING, 4.0) / 1000
    assert new.baseline_volume_ml == 0 and new.volume_change_percent is None
    assert new.followup_volume_ml == _lattice_count(NEW + SHIFT_MM, 3.0) / 1000
    assert np.allclose(new.followup_centroid_lps_mm, NEW, atol=0.5)  # in baseline space
    assert moved.centroid_shift_mm == pytest.approx(6.0, abs=0.5) and moved.overlap_voxels == 0
    assert result.summary() == {
        1: {
            "matched": 2,
            "new": 1,
            "vanished": 1,
            "baseline_volume_ml": pytest.approx(sum(r.baseline_volume_ml for r in result.lesions)),
            "followup_volume_ml": pytest.approx(sum(r.followup_volume_ml for r in result.lesions)),
        }
    }
    in_baseline = sitk.GetArrayFromImage(result.followup_labels_in_baseline)
    assert in_baseline.sum() == after + _lattice_count(NEW + SHIFT_MM, 3.0) + _lattice_count(MOVING[1] + SHIFT_MM, 2)
    path = write_followup_csv(result, tmp_path / "followup.csv")
    with open(path, newline="") as handle:
        table = list(csv.DictReader(handle))
    assert tuple(table[0]) == FOLLOWUP_COLUMNS and [r["status"] for r in table] == [
        "matched",
        "vanished",
        "matched",
        "new",
    ]
    # Without the distance fallback the moved lesion is one vanished and one new.
    strict = compare_followup(
        *followup_pair[0], *followup_pair[1], registration=result.registration, max_centroid_distance_mm=0
    )
    assert [r.status for r in strict.lesions] == ["matched", "vanished", "vanished", "new", "new"]


def test_followup_errors(followup_pair):
    (baseline_image, baseline_labels), (followup_image, followup_labels), _ = followup_pair
    far = sitk.Image(followup_image)
    far.SetOrigin((500.0, 0.0, 0.0))
    with pytest.raises(
        ValueError, match=r"LPS box \[-0.5..63.5.*LPS box \[499.5..563.5.*do not overlap.*initial_transform"
    ):
        register_rigid(baseline_image, far)
    far_labels = sitk.Image(followup_labels)
    far_labels.SetOrigin((500.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="do not overlap"):
        compare_followup(baseline_image, baseline_labels, far, far_labels)
    with pytest.raises(ValueError, match="follow-up label map is on another grid than the follow-up image"):
        compare_followup(baseline_image, baseline_labels, followup_image, far_labels)
    with pytest.raises(ValueError, match="metric"):
        register_rigid(baseline_image, followup_image, metric="ncc")


# --- DICOM SEG ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ct_series(tmp_path_factory):
    """A small CT series written from a left-handed grid (the writer stores it right-handed, slices reversed)."""
    direction = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
    array = np.full((7, 18, 16), -1000, dtype=np.int16)
    array[2:5, 4:14, 3:13] = 40
    image = _image(array, (0.7, 0.8, 2.0), (5.0, -3.0, 10.0), direction)
    folder = tmp_path_factory.mktemp("ct")
    write_ct_series(image, folder, CTSeriesInfo("seg test", 2.0, "B30f", uid_entropy=("seg-test",)))
    labels = np.zeros(array.shape, dtype=np.uint8)
    labels[2:4, 5:9, 4:8] = 1
    labels[4, 10:13, 6:12] = 3
    labels[0, 0, 0] = 3  # a corner voxel: the edge of the series
    label_image = _image(labels, (0.7, 0.8, 2.0), (5.0, -3.0, 10.0), direction)
    return folder, image, label_image


SPECS = [
    SegmentDescriptionSpec(1, "vessel", "#ff0000", type=Code("59820001", "SCT", "Blood vessel")),
    SegmentDescriptionSpec(2, "calcification", "#ffff00", type=Code("18115005", "SCT", "Calcification")),
    SegmentDescriptionSpec(
        3,
        "lesion",
        "#00c800",
        category=Code("49755003", "SCT", "Morphologically Altered Structure"),
        type=Code("4147007", "SCT", "Mass"),
        algorithm_type="SEMIAUTOMATIC",
        algorithm_family="HistogramAnalysis",
        algorithm_name="HU window",
    ),
]


def test_dicom_seg_round_trip_gives_the_same_voxels(ct_series, tmp_path):
    folder, _, labels = ct_series
    expected = sitk.GetArrayFromImage(labels)
    with pytest.warns(UserWarning, match="'calcification' \\(label 2\\) is empty: left out"):
        path = write_dicom_seg(labels, folder, SPECS, tmp_path / "seg.dcm")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seg.dcm"]
    dataset = pydicom.dcmread(path)
    assert dataset.Modality == "SEG" and dataset.SegmentationType == "BINARY"
    assert dataset.StudyInstanceUID == pydicom.dcmread(next(folder.iterdir())).StudyInstanceUID
    # Back on the label map's own (left-handed) grid: the same voxels, labels mapped by name.
    back = read_dicom_seg(path, labels, segments=SPECS)
    assert np.array_equal(sitk.GetArrayFromImage(back), expected)
    assert back.GetDirection() == labels.GetDirection()
    # On the series as SimpleITK reads it (right-handed: slices reversed), by segment number.
    series = read_dicom_series(folder)
    by_number = sitk.GetArrayFromImage(read_dicom_seg(path, series))
    assert np.array_equal(by_number, np.where(expected == 3, 2, expected)[::-1])
    only_lesion = sitk.GetArrayFromImage(read_dicom_seg(path, labels, segments=SPECS, segment_numbers=[2]))
    assert np.array_equal(only_lesion, np.where(expected == 3, 3, 0))
    described = read_segment_descriptions(path)
    assert [(d.label, d.name, d.color) for d in described] == [(1, "vessel", "#ff0000"), (2, "lesion", "#00c800")]
    assert described[0].type == SPECS[0].type and described[1].category == SPECS[2].category
    assert (described[1].algorithm_type, described[1].algorithm_name) == ("SEMIAUTOMATIC", "HU window")
    assert described[1].algorithm_family == "HistogramAnalysis"
    # From datasets instead of a folder, the empty segment kept: numbers are the label values.
    datasets = [pydicom.dcmread(p) for p in sorted(folder.iterdir())]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kept = write_dicom_seg(labels, datasets, SPECS, tmp_path / "kept.dcm", empty_segments="keep")
    assert [d.name for d in read_segment_descriptions(kept)] == ["vessel", "calcification", "lesion"]
    assert np.array_equal(sitk.GetArrayFromImage(read_dicom_seg(kept, labels)), expected)


def test_catalogue_labels_become_segment_descriptions():
    class Label:  # the shape of catalogue.LabelSpec
        def __init__(self, value, name, color, terminology):
            self.value, self.name, self.color, self.terminology = value, name, color, terminology

    vessel = {
        "category": {"scheme": "SCT", "code": "91723000", "meaning": "Anatomical Structure"},
        "type": {"scheme": "SCT", "code": "59820001", "meaning": "Blood vessel"},
    }
    specs = segment_specs([Label(1, "vessel r=1 mm", "#aa0011", vessel), Label(2, "x", "#000000", {})], "m", "1.0")
    assert specs[0].type == Code("59820001", "SCT", "Blood vessel") and specs[0].color_rgb == (170, 0, 17)
    assert specs[1].category.value == "91723000" and specs[1].algorithm_version == "1.0"


@pytest.mark.filterwarnings("ignore:segment 'calcification'")
def test_dicom_seg_errors(ct_series, tmp_path):
    folder, image, labels = ct_series
    half_voxel = sitk.Image(labels)
    half_voxel.SetOrigin((5.35, -3.0, 10.0))
    with pytest.raises(ValueError, match=r"does not lie on the label grid's voxels.*sitk.Resample"):
        write_dicom_seg(half_voxel, folder, SPECS, tmp_path / "x.dcm")
    with pytest.raises(ValueError, match=r"label\(s\) \[3\] are in the label map but have no segment description"):
        write_dicom_seg(labels, folder, SPECS[:1], tmp_path / "x.dcm")
    with pytest.raises(ValueError, match="'calcification' \\(label 2\\) is empty"):
        write_dicom_seg(labels, folder, SPECS, tmp_path / "x.dcm", empty_segments="error")
    # A label map that reaches past the series: the series of a cropped image.
    cropped = tmp_path / "cropped"
    write_ct_series(image[:, :, 1:], cropped, CTSeriesInfo("cropped", 2.0, "B30f", uid_entropy=("cropped",)))
    with pytest.raises(ValueError, match=r"'lesion' has 19 voxels in the label map but 18 on the series' slices"):
        write_dicom_seg(labels, cropped, SPECS, tmp_path / "x.dcm", empty_segments="keep")
    assert not (tmp_path / "x.dcm").exists()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = write_dicom_seg(labels, folder, SPECS, tmp_path / "seg.dcm")
    with pytest.raises(ValueError, match="outside the reference image"):
        read_dicom_seg(path, labels[1:, :, :])
    with pytest.raises(ValueError, match="named 'lesion', which no description given has"):
        read_dicom_seg(path, labels, segments=SPECS[:2])
    with pytest.raises(ValueError, match="not a DICOM Segmentation"):
        read_dicom_seg(next(folder.iterdir()), labels)
