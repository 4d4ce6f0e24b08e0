"""Segmentation metrics: golden values against MONAI 1.6.1, analytic geometry, lesion-wise counts by hand.

MONAI's arrays are the same [k, j, i] arrays, so its spacing is ours reversed (ours is
(i, j, k), as SimpleITK's GetSpacing). MONAI computes in float32: "equal" is 1e-6 relative.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
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
    (r = R/h; the proven bound is r^(4/3+ε) in 3D, observed ≈ r): relative error
    ≲ r^(3/2) / (4/3 π r³) with h the largest spacing, 0.37 % here; the tolerance is 3×.
    The offset d is a whole number of voxels along k, so each voxelised sphere is the
    other's translate: every surface voxel has a partner exactly d away (HD ≤ d), and the
    far pole's nearest partner is at least d − h_k away.
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
    assert offset - spacing_kji[0] <= metrics.hd_mm <= offset + 1e-12
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
