"""Segmentation metrics: golden values against MONAI 1.6.1, analytic geometry, lesion-wise counts by hand.

MONAI's arrays are the same [k, j, i] arrays, so its spacing is ours reversed (ours is
(i, j, k), as SimpleITK's GetSpacing). MONAI computes in float32: "equal" is 1e-6 relative.
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from scipy import ndimage
from scipy.spatial.distance import cdist

from ImagInfoExtension.segmentation import evaluation as ev

torch = pytest.importorskip("torch")
from monai.metrics import (  # noqa: E402
    compute_average_surface_distance,
    compute_dice,
    compute_hausdorff_distance,
    compute_surface_dice,
)
from monai.metrics.utils import get_mask_edges  # noqa: E402

SPACING_IJK = (0.7, 0.9, 2.5)
RELATIVE = 1e-6


@pytest.fixture(scope="module", autouse=True)
def _few_torch_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _tensor(mask: np.ndarray):
    return torch.as_tensor(np.asarray(mask, dtype=np.float32)[None, None])


def monai_metrics(pred: np.ndarray, truth: np.ndarray, spacing_ijk, tolerance_mm: float = 1.0) -> dict:
    """MONAI's values for one pair of masks (include_background=True: one foreground channel)."""
    p, t = _tensor(pred), _tensor(truth)
    spacing = tuple(reversed(spacing_ijk))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            "hd95": compute_hausdorff_distance(p, t, include_background=True, percentile=95, spacing=spacing).item(),
            "hd": compute_hausdorff_distance(p, t, include_background=True, spacing=spacing).item(),
            "assd": compute_average_surface_distance(
                p, t, include_background=True, symmetric=True, spacing=spacing
            ).item(),
            "asd": compute_average_surface_distance(
                p, t, include_background=True, symmetric=False, spacing=spacing
            ).item(),
            "nsd": compute_surface_dice(p, t, [tolerance_mm], include_background=True, spacing=spacing).item(),
            "dice": compute_dice(p, t, include_background=True).item(),
            "dice_not_ignoring_empty": compute_dice(p, t, include_background=True, ignore_empty=False).item(),
        }


def ours(pred, truth, spacing_ijk, tolerance_mm: float = 1.0) -> dict:
    metrics = ev.surface_metrics(pred, truth, spacing_ijk, tolerance_mm=tolerance_mm)
    return {
        "hd95": metrics.hd95_mm,
        "hd": metrics.hd_mm,
        "assd": metrics.assd_mm,
        "asd": ev.average_surface_distance_mm(pred, truth, spacing_ijk, symmetric=False),
        "nsd": metrics.nsd,
        "dice": ev.dice(pred, truth),
    }


def blob(rng: np.random.Generator, shape, sigma: float = 2.0, level: float = 0.05) -> np.ndarray:
    return ndimage.gaussian_filter(rng.standard_normal(shape), sigma) > level


def assert_equal_to_monai(mine: dict, peer: dict, keys=("hd95", "hd", "assd", "asd", "nsd")) -> None:
    for key in keys:
        assert mine[key] == pytest.approx(peer[key], rel=RELATIVE, abs=1e-9), key


# --------------------------------------------------------------------------- against MONAI


@pytest.mark.parametrize("seed", range(4))
def test_random_blobs_equal_monai(seed):
    rng = np.random.default_rng(seed)
    shape = (18, 30, 26)
    pred = blob(rng, shape)
    truth = blob(rng, shape) | (pred & (rng.random(shape) < 0.4))
    tolerance = (1.0, 1.5, 2.0, 0.75)[seed]
    mine, peer = ours(pred, truth, SPACING_IJK, tolerance), monai_metrics(pred, truth, SPACING_IJK, tolerance)
    assert_equal_to_monai(mine, peer)
    assert mine["dice"] == pytest.approx(peer["dice"], rel=RELATIVE)
    assert 0 < mine["nsd"] < 1 and mine["hd95"] < mine["hd"]


def test_images_take_their_spacing_and_isotropic_spacing_is_one_number():
    rng = np.random.default_rng(7)
    pred, truth = blob(rng, (16, 20, 22)), blob(rng, (16, 20, 22))
    images = []
    for mask in (pred, truth):
        image = sitk.GetImageFromArray(mask.astype(np.uint8))
        image.SetSpacing(SPACING_IJK)
        images.append(image)
    assert ev.surface_metrics(*images) == ev.surface_metrics(pred, truth, SPACING_IJK)
    assert ev.hausdorff_distance_mm(pred, truth, 1.3) == ev.hausdorff_distance_mm(pred, truth, (1.3, 1.3, 1.3))
    # the spacing order matters: (i, j, k), not the array's (k, j, i)
    assert ev.average_surface_distance_mm(pred, truth, SPACING_IJK) != pytest.approx(
        ev.average_surface_distance_mm(pred, truth, SPACING_IJK[::-1])
    )


def test_percentiles_match_monai():
    rng = np.random.default_rng(11)
    pred, truth = blob(rng, (14, 24, 24)), blob(rng, (14, 24, 24))
    p, t = _tensor(pred), _tensor(truth)
    warnings.simplefilter("ignore")  # MONAI's own deprecation notice; pytest restores the filters after the test
    for percentile in (1, 50, 99, 100):
        peer = compute_hausdorff_distance(
            p, t, include_background=True, percentile=percentile, spacing=SPACING_IJK[::-1]
        ).item()
        assert ev.hausdorff_distance_mm(pred, truth, SPACING_IJK, percentile) == pytest.approx(peer, rel=RELATIVE)
    assert (
        ev.hausdorff_distance_mm(pred, truth, SPACING_IJK, None) == ev.surface_metrics(pred, truth, SPACING_IJK).hd_mm
    )


def test_surface_voxels_are_monai_edges():
    rng = np.random.default_rng(3)
    mask = blob(rng, (12, 17, 15), sigma=1.5, level=-0.1)  # large: it touches the array's border
    assert mask[0].any() and mask[:, :, -1].any()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI's own deprecation notice
        edges, _ = get_mask_edges(mask, mask, crop=False)
    np.testing.assert_array_equal(ev.surface_voxels(mask), edges)
    np.testing.assert_array_equal(ev.surface_voxels(mask), ndimage.binary_erosion(mask) ^ mask)
    plane = rng.random((20, 20)) > 0.3
    np.testing.assert_array_equal(ev.surface_voxels(plane), ndimage.binary_erosion(plane) ^ plane)


def test_masks_touching_the_border_equal_monai():
    rng = np.random.default_rng(5)
    pred = blob(rng, (10, 14, 12), sigma=1.5, level=-0.2)
    truth = blob(rng, (10, 14, 12), sigma=1.5, level=-0.1)
    assert_equal_to_monai(ours(pred, truth, SPACING_IJK), monai_metrics(pred, truth, SPACING_IJK))


def test_2d_masks_equal_monai():
    rng = np.random.default_rng(9)
    pred, truth = blob(rng, (40, 36)), blob(rng, (40, 36))
    assert_equal_to_monai(ours(pred, truth, (0.6, 1.1)), monai_metrics(pred, truth, (0.6, 1.1)))


# --------------------------------------------------------------------------- edge cases


def _box(shape=(10, 12, 14), *voxels_or_slices) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    for index in voxels_or_slices:
        mask[index] = True
    return mask


EMPTY = _box()
BLOCK = _box((10, 12, 14), np.s_[3:6, 4:8, 5:9])
VOXEL = _box((10, 12, 14), (5, 5, 5))
OTHER_VOXEL = _box((10, 12, 14), (2, 9, 11))


def test_both_empty_is_nan_everywhere_as_monai():
    mine, peer = ours(EMPTY, EMPTY, SPACING_IJK), monai_metrics(EMPTY, EMPTY, SPACING_IJK)
    for key in ("hd95", "hd", "assd", "asd", "nsd", "dice"):
        assert math.isnan(mine[key]) and math.isnan(peer[key]), key
    assert peer["dice_not_ignoring_empty"] == 1.0  # MONAI's other convention; ours: nan, "absent in both"


@pytest.mark.parametrize("case", ["truth empty", "prediction empty"])
def test_one_empty_mask_is_inf_distance_zero_nsd_zero_dice(case):
    pred, truth = (BLOCK, EMPTY) if case == "truth empty" else (EMPTY, BLOCK)
    mine, peer = ours(pred, truth, SPACING_IJK), monai_metrics(pred, truth, SPACING_IJK)
    assert mine["hd"] == peer["hd"] == math.inf
    assert mine["assd"] == peer["assd"] == math.inf
    assert mine["asd"] == peer["asd"] == math.inf
    assert mine["nsd"] == peer["nsd"] == 0.0
    # MONAI's HD95 is nan here (torch.quantile of infinities); ours stays inf, as its maximum
    assert mine["hd95"] == math.inf and math.isnan(peer["hd95"])
    assert mine["dice"] == 0.0 == peer["dice_not_ignoring_empty"]
    if case == "truth empty":  # MONAI's default ignores an empty truth even when the prediction is not empty
        assert math.isnan(peer["dice"])
    else:
        assert peer["dice"] == 0.0


@pytest.mark.parametrize(
    "pred, truth",
    [(VOXEL, BLOCK), (BLOCK, VOXEL), (VOXEL, VOXEL), (VOXEL, OTHER_VOXEL), (BLOCK, BLOCK)],
    ids=["voxel-block", "block-voxel", "voxel-itself", "voxel-voxel", "block-itself"],
)
def test_one_voxel_objects_equal_monai(pred, truth):
    mine, peer = ours(pred, truth, SPACING_IJK), monai_metrics(pred, truth, SPACING_IJK)
    assert_equal_to_monai(mine, peer)
    assert mine["dice"] == pytest.approx(peer["dice"])


def test_one_voxel_apart_by_hand():
    distance = math.dist(np.array([5, 5, 5]) * SPACING_IJK[::-1], np.array([2, 9, 11]) * SPACING_IJK[::-1])
    metrics = ev.surface_metrics(VOXEL, OTHER_VOXEL, SPACING_IJK, tolerance_mm=distance)
    assert metrics.hd_mm == metrics.hd95_mm == metrics.assd_mm == pytest.approx(distance, rel=1e-12)
    assert metrics.nsd == 1.0 and ev.normalised_surface_dice(VOXEL, OTHER_VOXEL, SPACING_IJK, distance * 0.99) == 0.0
    assert metrics.prediction_surface_voxels == metrics.truth_surface_voxels == 1
    assert ev.dice(VOXEL, OTHER_VOXEL) == 0.0 and ev.dice(VOXEL, VOXEL) == 1.0


# --------------------------------------------------------------------------- analytic geometry


def _ellipsoid_voxels(shape, spacing_kji, centre_mm, radius_mm) -> np.ndarray:
    k, j, i = np.indices(shape, dtype=float)
    return (
        (k * spacing_kji[0] - centre_mm[0]) ** 2
        + (j * spacing_kji[1] - centre_mm[1]) ** 2
        + (i * spacing_kji[2] - centre_mm[2]) ** 2
    ) <= radius_mm**2


def test_two_offset_spheres():
    """Dice is the lens formula, HD the offset, within the lattice-point discrepancy of a ball.

    Dice of two balls of radius R whose centres are d apart is V_lens / V_ball with
    V_lens = π (4R + d)(2R − d)² / 12. Counting voxels instead of volumes errs by the
    lattice-point discrepancy of a ball, which grows like r^(3/2) in voxels of size h
    (r = R/h; the best proven bound is r^(21/16+ε), Heath-Brown 1999; r^(1+ε) is conjectured):
    relative error ≲ r^(3/2) / (4/3 π r³) with h the largest spacing, 0.41 % here; the
    tolerance is 3× that. The offset d is a whole number of voxels along k, so each
    voxelised sphere is the other's translate: every surface voxel has a partner exactly d
    away (HD ≤ d), and the lowest voxels of one lie d below every voxel of the other
    (HD ≥ d): HD = d exactly.
    """
    spacing_ijk = (0.5, 0.45, 0.6)
    spacing_kji = spacing_ijk[::-1]
    radius, offset_voxels = 9.0, 10
    offset = offset_voxels * spacing_kji[0]
    shape = (62, 46, 42)
    centre = (12.0, 10.0, 10.0)
    a = _ellipsoid_voxels(shape, spacing_kji, centre, radius)
    b = _ellipsoid_voxels(shape, spacing_kji, (centre[0] + offset, centre[1], centre[2]), radius)
    np.testing.assert_array_equal(b[offset_voxels:], a[:-offset_voxels])  # b is a's translate

    r = radius / max(spacing_ijk)
    tolerance = 3 * r**1.5 / (4 / 3 * math.pi * r**3)
    ball_ml = 4 / 3 * math.pi * radius**3
    assert a.sum() * np.prod(spacing_ijk) == pytest.approx(ball_ml, rel=tolerance)
    lens = math.pi * (4 * radius + offset) * (2 * radius - offset) ** 2 / 12
    assert ev.dice(a, b) == pytest.approx(lens / ball_ml, rel=tolerance)

    metrics = ev.surface_metrics(a, b, spacing_ijk)
    assert metrics.hd_mm == pytest.approx(offset, rel=1e-12)
    assert metrics.hd95_mm < metrics.hd_mm
    assert_equal_to_monai(
        {
            "hd95": metrics.hd95_mm,
            "hd": metrics.hd_mm,
            "assd": metrics.assd_mm,
            "asd": metrics.mean_prediction_to_truth_mm,
            "nsd": metrics.nsd,
        },
        monai_metrics(a, b, spacing_ijk),
    )


def test_cube_against_shifted_cube():
    """A cube and its shift by s voxels along k: Dice (a − s)/a, HD exactly s·h_k, the rest by brute force."""
    spacing_ijk = (0.8, 0.6, 1.25)
    h_k = spacing_ijk[2]
    side, shift = 8, 3
    a = _box((16, 12, 12), np.s_[2 : 2 + side, 2 : 2 + side, 2 : 2 + side])
    b = _box((16, 12, 12), np.s_[2 + shift : 2 + shift + side, 2 : 2 + side, 2 : 2 + side])
    assert ev.dice(a, b) == (side - shift) / side
    metrics = ev.surface_metrics(a, b, spacing_ijk, tolerance_mm=1.0)
    assert metrics.hd_mm == pytest.approx(shift * h_k, rel=1e-12)

    # brute force: all pairwise distances between the surface voxel centres
    scale = np.asarray(spacing_ijk[::-1])
    surface_a = np.argwhere(ndimage.binary_erosion(a) ^ a) * scale
    surface_b = np.argwhere(ndimage.binary_erosion(b) ^ b) * scale
    pairwise = cdist(surface_a, surface_b)
    a_to_b, b_to_a = pairwise.min(axis=1), pairwise.min(axis=0)
    both = np.concatenate([a_to_b, b_to_a])
    assert metrics.assd_mm == pytest.approx(both.mean(), rel=1e-12)
    assert metrics.hd95_mm == pytest.approx(max(np.percentile(a_to_b, 95), np.percentile(b_to_a, 95)), rel=1e-12)
    assert metrics.nsd == pytest.approx(np.mean(both <= 1.0), rel=1e-12)
    np.testing.assert_allclose(np.sort(ev.surface_distances(a, b, spacing_ijk).prediction_to_truth_mm), np.sort(a_to_b))


# --------------------------------------------------------------------------- argument errors


def test_bad_arguments_are_refused_with_the_fix():
    with pytest.raises(ValueError, match="spacing_mm is needed"):
        ev.surface_metrics(BLOCK, BLOCK)
    with pytest.raises(ValueError, match="differ in shape"):
        ev.surface_metrics(BLOCK, BLOCK[:5], SPACING_IJK)
    with pytest.raises(ValueError, match="2 values for a 3D mask"):
        ev.hausdorff_distance_mm(BLOCK, BLOCK, (1.0, 1.0))
    with pytest.raises(ValueError, match="positive"):
        ev.hausdorff_distance_mm(BLOCK, BLOCK, (1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="NaNs"):
        ev.dice(np.full((3, 3, 3), np.nan), BLOCK[:3, :3, :3])
    with pytest.raises(ValueError, match="percentile"):
        ev.hausdorff_distance_mm(BLOCK, BLOCK, SPACING_IJK, percentile=120)
    with pytest.raises(ValueError, match="tolerance"):
        ev.normalised_surface_dice(BLOCK, BLOCK, SPACING_IJK, tolerance_mm=-1)
    near, far = sitk.GetImageFromArray(BLOCK.astype(np.uint8)), sitk.GetImageFromArray(BLOCK.astype(np.uint8))
    far.SetOrigin((0.0, 0.0, 3.0))
    for metric in (ev.dice, ev.surface_metrics, lambda a, b: ev.surface_metrics(a, b, SPACING_IJK)):
        with pytest.raises(ValueError, match="different grids.*align_truth"):
            metric(near, far)


# --------------------------------------------------------------------------- label maps


def _image(array: np.ndarray, spacing_ijk=(0.5, 1.0, 2.0), origin=(0.0, 0.0, 0.0), direction=None) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing_ijk)
    image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection(direction)
    return image


@pytest.fixture(scope="module")
def label_pair():
    """Prediction and truth label maps (voxel 0.5 × 1 × 2 mm = 1 µl) built by hand."""
    pred = np.zeros((10, 12, 14), dtype=np.uint8)
    truth = np.zeros_like(pred)
    pred[2:5, 2:6, 2:6] = truth[2:5, 2:6, 2:6] = 1  # identical: 48 voxels
    truth[6:8, 2:6, 8:12] = 2  # missed: 32 voxels
    pred[6:8, 7:10, 1:5] = 3  # shifted by one voxel along i (0.5 mm): 18 of 24 voxels shared
    truth[6:8, 7:10, 2:6] = 3
    pred[0, 0, 0] = 5  # invented: one voxel
    return _image(pred), _image(truth), pred, truth


def test_evaluate_label_maps_by_hand(label_pair):
    prediction, truth, pred, true = label_pair
    rows = {row.label: row for row in ev.evaluate_label_maps(prediction, truth)}
    assert list(rows) == [1, 2, 3, 5] and rows[3].name == "label 3"
    one, two, three, five = rows[1], rows[2], rows[3], rows[5]
    assert (one.dice, one.hd95_mm, one.assd_mm, one.nsd) == (1.0, 0.0, 0.0, 1.0)
    assert one.volume_ml == one.true_volume_ml == pytest.approx(0.048)
    assert (two.dice, two.hd95_mm, two.assd_mm, two.nsd, two.volume_ml) == (0.0, math.inf, math.inf, 0.0, 0.0)
    assert two.true_volume_ml == pytest.approx(0.032)
    assert (five.dice, five.hd95_mm, five.true_volume_ml) == (0.0, math.inf, 0.0)
    assert five.volume_ml == pytest.approx(0.001)
    assert three.dice == 0.75
    expected = ev.surface_metrics(pred == 3, true == 3, (0.5, 1.0, 2.0), tolerance_mm=1.0)
    assert (three.hd95_mm, three.assd_mm, three.nsd) == (expected.hd95_mm, expected.assd_mm, expected.nsd)
    assert expected.hd_mm == 0.5 and three.nsd == 1.0
    peer = monai_metrics(pred == 3, true == 3, (0.5, 1.0, 2.0))
    assert three.hd95_mm == pytest.approx(peer["hd95"], rel=RELATIVE)
    assert three.assd_mm == pytest.approx(peer["assd"], rel=RELATIVE)
    assert tuple(f.name for f in dataclasses.fields(ev.LabelEvaluation)) == ev.EVALUATION_COLUMNS


def test_named_labels_and_voxel_units(label_pair):
    prediction, truth, _, _ = label_pair
    names = {3: "kidney", 1: "liver", 4: "absent", 2: "spleen"}
    rows = ev.evaluate_label_maps(prediction, truth, labels=names, nsd_tolerance_mm=0.4)
    assert [(r.label, r.name) for r in rows] == [(1, "liver"), (2, "spleen"), (3, "kidney"), (4, "absent")]
    absent = rows[3]
    assert all(math.isnan(v) for v in (absent.dice, absent.hd95_mm, absent.assd_mm, absent.nsd))
    assert absent.volume_ml == absent.true_volume_ml == 0.0
    assert rows[2].nsd < 1.0  # 0.5 mm shifts are beyond 0.4 mm
    in_voxels = {r.label: r for r in ev.evaluate_label_maps(prediction, truth, spacing_aware=False)}
    assert (
        ev.surface_metrics(sitk.GetArrayFromImage(prediction) == 3, sitk.GetArrayFromImage(truth) == 3, 1.0).hd_mm
        == 1.0
    )
    assert in_voxels[3].hd95_mm == pytest.approx(1.0) and in_voxels[3].nsd == 1.0
    assert in_voxels[3].volume_ml == pytest.approx(0.024)  # volumes stay in ml


def test_evaluation_csv_round_trip(label_pair, tmp_path):
    prediction, truth, _, _ = label_pair
    rows = ev.evaluate_label_maps(prediction, truth, labels={1: "liver", 2: "spleen", 4: "absent"})
    path = ev.write_evaluation_csv(rows, tmp_path / "out" / "evaluation.csv")
    assert sorted(p.name for p in path.parent.iterdir()) == ["evaluation.csv"]  # no temporary left behind
    assert path.read_text().splitlines()[0] == ",".join(ev.EVALUATION_COLUMNS)
    table = pd.read_csv(path)
    assert list(table.columns) == list(ev.EVALUATION_COLUMNS)
    assert table.loc[1, "hd95_mm"] == math.inf and math.isnan(table.loc[2, "dice"])
    assert table.loc[0, "true_volume_ml"] == rows[0].true_volume_ml  # full precision
    with pytest.raises(ValueError, match="lacks the column"):
        ev.write_evaluation_csv([{"label": 1}], tmp_path / "bad.csv")
    assert not (tmp_path / "bad.csv").exists()


def test_label_maps_are_validated(label_pair):
    prediction, truth, pred, _ = label_pair
    as_float = _image(pred.astype(np.float32))
    assert ev.evaluate_label_maps(as_float, truth) == ev.evaluate_label_maps(prediction, truth)
    with pytest.raises(ValueError, match="2D image"):
        ev.evaluate_label_maps(sitk.GetImageFromArray(pred[0]), sitk.GetImageFromArray(pred[0]))
    with_nan = pred.astype(np.float32)
    with_nan[1, 1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        ev.evaluate_label_maps(_image(with_nan), truth)
    with pytest.raises(ValueError, match=r"non-integer values \(e.g. 2.5\)"):
        ev.evaluate_label_maps(_image(pred.astype(np.float32) * 0.5), truth)
    negative = pred.astype(np.int16)
    negative[0, 0, 1] = -2
    with pytest.raises(ValueError, match="negative labels"):
        ev.evaluate_label_maps(_image(negative), truth)
    with pytest.raises(ValueError, match="align_truth"):
        ev.evaluate_label_maps(prediction, _image(pred, spacing_ijk=(0.5, 1.0, 2.5)))
    with pytest.raises(ValueError, match="background"):
        ev.evaluate_label_maps(prediction, truth, labels={0: "background"})
    with pytest.raises(ValueError, match="components per voxel"):
        ev.evaluate_label_maps(sitk.Compose(prediction, prediction), truth)


def test_align_truth_same_grid_is_unchanged(label_pair):
    prediction, truth, _, _ = label_pair
    aligned, warned = ev.align_truth(truth, prediction)
    assert aligned is truth and warned == []
    nudged = sitk.Image(truth)
    nudged.SetOrigin((1e-9, 0.0, -1e-9))
    assert ev.align_truth(nudged, prediction) == (nudged, [])


def test_align_truth_resamples_another_grid_through_physical_space():
    """Truth on a finer, x-flipped grid: each reference voxel takes the truth label at its centre."""
    size_ijk, spacing, origin = (30, 26, 22), (0.5, 0.4, 0.6), (4.1, -3.3, 2.2)
    direction = (-1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0)
    rng = np.random.default_rng(2)
    truth_array = np.zeros(size_ijk[::-1], dtype=np.uint16)
    truth_array[5:15, 4:20, 6:25] = 7
    truth_array[8:12, 10:14, 20:26] = 300
    truth_array[rng.random(truth_array.shape) < 0.05] = 2
    truth = _image(truth_array, spacing, origin, direction)
    reference = _image(np.zeros((9, 12, 11), np.uint8), (0.9, 0.7, 1.1), (-10.3, -4.05, 0.95))

    aligned, warned = ev.align_truth(truth, reference)
    assert len(warned) == 1 and "resampled onto the prediction's grid by nearest neighbour" in warned[0]
    assert aligned.GetPixelID() == truth.GetPixelID() and aligned.GetSize() == reference.GetSize()
    k, j, i = np.indices(sitk.GetArrayViewFromImage(reference).shape)
    centres = np.stack([i * 0.9 - 10.3, j * 0.7 - 4.05, k * 1.1 + 0.95], axis=-1)
    continuous = (centres - np.asarray(origin)) @ np.asarray(direction).reshape(3, 3) / np.asarray(spacing)
    assert np.all(np.abs(np.abs(continuous % 1) - 0.5) > 1e-3)  # no rounding ties
    index = np.rint(continuous).astype(int)
    inside = np.all((index >= 0) & (index < np.asarray(size_ijk)), axis=-1)
    expected = np.zeros(inside.shape, dtype=np.uint16)
    expected[inside] = truth_array[index[inside][:, 2], index[inside][:, 1], index[inside][:, 0]]
    assert inside.any() and (~inside).any() and len(np.unique(expected)) == 4
    np.testing.assert_array_equal(sitk.GetArrayFromImage(aligned), expected)


def test_align_truth_refuses_a_truth_elsewhere(label_pair):
    prediction, truth, _, _ = label_pair
    far = sitk.Image(truth)
    far.SetOrigin((500.0, 0.0, 0.0))
    with pytest.raises(ValueError, match=r"truth covers \[499.8, 506.8\].*mm \(LPS\).*do not overlap.*register"):
        ev.align_truth(far, prediction)
    with pytest.raises(ValueError, match="2D image"):
        ev.align_truth(sitk.Image(4, 4, sitk.sitkUInt8), prediction)


# --------------------------------------------------------------------------- lesions

#: Lesion case by hand (voxel 1 × 1 × 2 mm = 2 µl): truth T1…T6, prediction P1…P6.
TRUTH_LESIONS = {
    "T1": np.s_[2:6, 2:6, 2:6],  # 64, fully predicted by P1
    "T2": np.s_[2:6, 2:6, 10:14],  # 64, a quarter predicted by P2
    "T3": np.s_[2:6, 2:6, 18:22],  # 64, missed
    "T4": np.s_[2:6, 12:16, 2:6],  # 64, three quarters predicted, split between P4a and P4b
    "T5": np.s_[2:6, 12:16, 10:13],  # 48, merged with T6 into P5
    "T6": np.s_[2:6, 12:16, 14:17],  # 48
}
PREDICTED_LESIONS = {
    "P1": np.s_[2:6, 2:6, 2:6],
    "P2": np.s_[2:6, 2:6, 10:11],  # 16
    "P4a": np.s_[2:6, 12:16, 2:4],  # 32
    "P4b": np.s_[2:6, 12:16, 5:6],  # 16
    "P5": np.s_[2:6, 12:16, 10:17],  # 112
    "P6": np.s_[8:10, 30:34, 30:34],  # 32, far from every truth lesion
}
LESION_SPACING = (1.0, 1.0, 2.0)


def _lesion_case():
    return _box((12, 40, 40), *PREDICTED_LESIONS.values()), _box((12, 40, 40), *TRUTH_LESIONS.values())


def _autopet_volumes(truth: np.ndarray, prediction: np.ndarray, voxel_ml: float) -> tuple[float, float]:
    """autoPET's val_script.py false_pos_pix / false_neg_pix, verbatim but for ndimage.label (18-connected)."""
    structure = ndimage.generate_binary_structure(3, 2)
    pred_components, _ = ndimage.label(prediction, structure)
    false_pos = sum(
        (pred_components == idx).sum()
        for idx in range(1, pred_components.max() + 1)
        if ((pred_components == idx) * truth).sum() == 0
    )
    truth_components, _ = ndimage.label(truth, structure)
    false_neg = sum(
        (truth_components == idx).sum()
        for idx in range(1, truth_components.max() + 1)
        if ((truth_components == idx) * prediction).sum() == 0
    )
    return false_pos * voxel_ml, false_neg * voxel_ml


def test_lesion_metrics_by_hand_with_half_overlap_rule():
    pred, truth = _lesion_case()
    result = ev.lesion_metrics(pred, truth, LESION_SPACING, min_overlap=0.5)
    assert (result.truth_lesions, result.predicted_lesions) == (6, 6)
    assert (result.true_positives, result.false_negatives, result.false_positives) == (4, 2, 2)  # FP: P2, P6
    assert (result.sensitivity, result.ppv, result.f1) == pytest.approx((4 / 6, 4 / 6, 2 / 3))
    assert result.false_positive_volume_ml == pytest.approx(32 * 0.002)  # P6 only: P2 touches T2
    assert result.false_negative_volume_ml == pytest.approx(64 * 0.002)  # T3 only
    assert (result.false_positive_volume_ml, result.false_negative_volume_ml) == pytest.approx(
        _autopet_volumes(truth, pred, 0.002)
    )
    assert result.dice == pytest.approx(2 * 224 / (352 + 272))
    assert result.intersection_volume_ml == pytest.approx(224 * 0.002)
    lesions = {m.lesion: m for m in result.lesions}
    volumes = sorted(m.volume_ml for m in result.lesions)
    assert volumes == pytest.approx([0.096, 0.096, 0.128, 0.128, 0.128, 0.128])
    by_fraction = sorted((m.covered_fraction, m.detected, m.predicted_components, m.dice) for m in lesions.values())
    assert [x for row in by_fraction for x in row] == pytest.approx(
        [
            x
            for row in [
                (0.0, False, 0, 0.0),  # T3
                (0.25, False, 1, 2 * 16 / (64 + 16)),  # T2
                (0.75, True, 2, 2 * 48 / (64 + 48)),  # T4, split
                (1.0, True, 1, 2 * 48 / (48 + 112)),  # T5, merged
                (1.0, True, 1, 2 * 48 / (48 + 112)),  # T6, merged
                (1.0, True, 1, 1.0),  # T1
            ]
            for x in row
        ]
    )


def test_lesion_metrics_any_overlap_and_full_overlap_rules():
    pred, truth = _lesion_case()
    anything = ev.lesion_metrics(pred, truth, LESION_SPACING, min_overlap=0.0)
    assert (anything.true_positives, anything.false_negatives, anything.false_positives) == (5, 1, 1)
    assert anything.f1 == pytest.approx(10 / 12)
    whole = ev.lesion_metrics(pred, truth, LESION_SPACING, min_overlap=1.0)
    assert (whole.true_positives, whole.false_negatives, whole.false_positives) == (3, 3, 4)
    # autoPET's volumes do not depend on the matching rule
    for other in (anything, whole):
        assert other.false_positive_volume_ml == pytest.approx(0.064)
        assert other.false_negative_volume_ml == pytest.approx(0.128)
    with pytest.raises(ValueError, match="min_overlap"):
        ev.lesion_metrics(pred, truth, LESION_SPACING, min_overlap=1.5)
    with pytest.raises(ValueError, match="connectivity"):
        ev.lesion_metrics(pred, truth, LESION_SPACING, connectivity=8)


def test_lesion_connectivity():
    edge = _box((4, 4, 4), (1, 1, 1), (1, 2, 2))  # two voxels sharing an edge
    corner = _box((4, 4, 4), (1, 1, 1), (2, 2, 2))  # sharing a corner
    count = lambda mask, c: ev.lesion_metrics(mask, mask, 1.0, connectivity=c).truth_lesions  # noqa: E731
    assert (count(edge, 6), count(edge, 18), count(edge, 26)) == (2, 1, 1)
    assert (count(corner, 6), count(corner, 18), count(corner, 26)) == (2, 2, 1)


def test_empty_lesion_cases():
    nothing = ev.lesion_metrics(EMPTY, EMPTY, SPACING_IJK)
    assert (nothing.true_positives, nothing.false_positives, nothing.false_negatives) == (0, 0, 0)
    assert all(math.isnan(v) for v in (nothing.sensitivity, nothing.ppv, nothing.f1, nothing.dice))
    invented = ev.lesion_metrics(BLOCK, EMPTY, SPACING_IJK)
    assert (invented.false_positives, invented.ppv, invented.f1, invented.dice) == (1, 0.0, 0.0, 0.0)
    assert math.isnan(invented.sensitivity)
    assert invented.false_positive_volume_ml == pytest.approx(48 * np.prod(SPACING_IJK) / 1000)


def test_patient_wise_against_lesion_wise_aggregation():
    pred, truth = _lesion_case()
    case_a = ev.lesion_metrics(pred, truth, LESION_SPACING)
    case_b = ev.lesion_metrics(_box((6, 6, 6), np.s_[1:3, 1:3, 1:3]), _box((6, 6, 6)), LESION_SPACING)  # negative
    case_c = ev.lesion_metrics(_box((6, 6, 6)), _box((6, 6, 6), np.s_[1:3, 1:3, 1:3]), LESION_SPACING)  # missed
    summary = ev.aggregate_cases([case_a, case_b, case_c])
    patient, lesion = summary["patient_wise"], summary["lesion_wise"]
    assert summary["cases"] == 3
    assert patient["dice_mean"] == pytest.approx((448 / 624 + 0 + 0) / 3)
    assert patient["sensitivity_mean"] == pytest.approx((4 / 6 + 0) / 2)  # case b has no truth lesion
    assert patient["ppv_mean"] == pytest.approx((4 / 6 + 0) / 2)  # case c has no predicted lesion
    assert patient["f1_mean"] == pytest.approx((2 / 3 + 0 + 0) / 3)
    assert (patient["cases_with_lesions"], patient["detection_rate"]) == (2, 0.5)
    assert (patient["cases_without_lesions"], patient["false_alarm_rate"]) == (1, 1.0)
    assert patient["false_positive_volume_ml_mean"] == pytest.approx((0.064 + 0.016) / 3)
    assert (lesion["true_positives"], lesion["false_positives"], lesion["false_negatives"]) == (4, 3, 3)
    assert (lesion["sensitivity"], lesion["ppv"], lesion["f1"]) == pytest.approx((4 / 7, 4 / 7, 8 / 14))
    assert lesion["dice_pooled"] == pytest.approx(448 / (624 + 8 + 8))
    assert lesion["false_negative_volume_ml"] == pytest.approx(0.128 + 0.016)
    assert lesion["lesion_dice_mean"] == pytest.approx(np.mean([m.dice for m in case_a.lesions] + [0.0]))
    with pytest.raises(ValueError, match="no cases"):
        ev.aggregate_cases([])
