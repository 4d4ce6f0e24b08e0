"""IBSI-1 image processing: resampling geometry, masks, resegmentation, discretisation,
the IBSI diagnostics of configurations A–E and the reference-table side of the check."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage as ndi

from ImagInfoExtension.radiomics import ibsi
from ImagInfoExtension.radiomics.discretise import discretise
from ImagInfoExtension.radiomics.preprocess import _sample, prepare_roi, resampling_grid
from ImagInfoExtension.radiomics.settings import RadiomicsSettings, load_preset

CT_CONFIGS = ("A", "B", "C", "D", "E")


# --- IBSI-1 reference ---------------------------------------------------------------------


@pytest.mark.parametrize("config", CT_CONFIGS)
def test_every_ibsi_diagnostic_matches_its_reference(ibsi_roi, ibsi_data, config):
    roi = ibsi_roi(config)
    rows = [row for row in ibsi.compliance_rows(config, roi.diagnostics, ibsi_data) if row["tag"] in roi.diagnostics]
    assert len(rows) == 60
    failed = [(row["tag"], row["value"], row["reference"], row["tolerance"]) for row in rows if not row["pass"]]
    assert not failed


def test_configuration_c_grid_levels_and_masks(ibsi_roi):
    roi = ibsi_roi("C")
    d = roi.diagnostics
    # 204 x 201 x 60 voxels of 0.977 x 0.977 x 3 mm -> ceil(n s / 2 mm) voxels of 2 mm.
    assert (d["img_dim_x_interp_img"], d["img_dim_y_interp_img"], d["img_dim_z_interp_img"]) == (100, 99, 90)
    assert roi.spacing_mm == (2.0, 2.0, 2.0)
    # Fixed bins of 25 HU from -1000 HU: the ROI's -939..393 HU are levels 3..56 (ih_min, ih_max).
    assert roi.n_levels == 56
    assert roi.levels[roi.int_mask].min() == 3 and roi.levels[roi.int_mask].max() == 56
    assert np.all(roi.levels[~roi.int_mask] == 0)
    # The morphological mask is not resegmented; the intensity mask is inside it.
    assert roi.morph_mask.sum() == d["morph_mask_vox_count_reseg_roi"] > roi.int_mask.sum()
    assert not np.any(roi.int_mask & ~roi.morph_mask)
    assert roi.intensity.dtype == np.float64 and np.all(roi.intensity == np.round(roi.intensity))
    # At least 10 mm (5 voxels) of image around the ROI's box.
    for axis in range(3):
        hit = np.flatnonzero(roi.morph_mask.any(axis=tuple(a for a in range(3) if a != axis)))
        assert hit[0] >= 5 and roi.morph_mask.shape[axis] - 1 - hit[-1] >= 5
    print(f"prepare_roi on configuration C: {ibsi_roi.seconds['C']:.3f} s")


def test_fixed_bin_number_and_2d_configurations(ibsi_roi):
    roi_b = ibsi_roi("B")
    assert roi_b.spacing_mm == (3.0, 2.0, 2.0)  # in-plane resampling only
    assert roi_b.n_levels == 32 and roi_b.levels[roi_b.int_mask].max() == 32
    roi_a = ibsi_roi("A")
    assert roi_a.spacing_mm == pytest.approx((3.0, 0.977, 0.977))
    assert roi_a.n_levels == 36  # floor((377 + 500) / 25) + 1, the reference ih_max
    roi_e = ibsi_roi("E")
    # Cubic splines overshoot: the whole interpolated image reaches below -1000 HU.
    assert roi_e.diagnostics["min_int_interp_img"] < -1000


def test_digital_phantom_levels_are_its_values(ibsi_data):
    image, mask, preset = ibsi.case_inputs("phantom", ibsi_data)
    assert preset == "ibsi-phantom"
    roi = prepare_roi(image, mask, load_preset(preset))
    values = sitk.GetArrayFromImage(image)
    inside = sitk.GetArrayFromImage(mask) != 0
    assert roi.intensity.shape == values.shape  # the 10 mm margin is clipped at the border
    assert np.array_equal(roi.morph_mask, inside) and np.array_equal(roi.int_mask, inside)
    assert np.array_equal(roi.levels[inside], values[inside].astype(int))
    assert roi.n_levels == 6 and roi.morph_mask.sum() == 74


def test_reference_tables(ibsi_data):
    rows = ibsi.reference_values("C", ibsi_data)
    assert len(rows) == 275 and sum(not r.has_value for r in rows) == 5
    assert sum(r.is_diagnostic for r in rows) == 60
    first = rows[0]
    assert (first.tag, first.reference, first.tolerance, first.family) == (
        "img_dim_x_init_img",
        204.0,
        0.0,
        "Diagnostics-initial image",
    )
    assert {r.tag for r in rows if not r.has_value} >= {"ivh_auc", "morph_vol_dens_ombb"}
    compliance = ibsi.compliance_rows("phantom", {"morph_volume": 556.0}, ibsi_data)
    assert len(compliance) == 482
    volume = next(row for row in compliance if row["tag"] == "morph_volume")
    assert volume["pass"] and volume["config"] == "phantom"
    assert all(math.isnan(row["value"]) and not row["pass"] for row in compliance if row["tag"] != "morph_volume")
    with pytest.raises(ValueError, match="unknown"):
        ibsi.reference_values("F", ibsi_data)


def test_case_inputs_refuse_a_file_that_differs_from_the_manifest(tmp_path):
    folder = tmp_path / "ibsi"
    (folder / "digital_phantom").mkdir(parents=True)
    image = sitk.GetImageFromArray(np.ones((2, 2, 2), dtype=np.int16))
    sitk.WriteImage(image, str(folder / "digital_phantom" / "phantom.nii.gz"))
    sitk.WriteImage(image, str(folder / "digital_phantom" / "mask.nii.gz"))
    good = hashlib.sha256((folder / "digital_phantom" / "mask.nii.gz").read_bytes()).hexdigest()
    (folder / "MANIFEST.txt").write_text(
        f"header\n{'0' * 64}  digital_phantom/phantom.nii.gz\n{good}  digital_phantom/mask.nii.gz\n"
    )
    with pytest.raises(ValueError, match="phantom.nii.gz does not match MANIFEST"):
        ibsi.case_inputs("phantom", folder)


def test_default_data_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("IMAGINFO_IBSI_DATA", str(tmp_path))
    assert ibsi.default_ibsi_data_dir() == tmp_path
    monkeypatch.delenv("IMAGINFO_IBSI_DATA")
    assert ibsi.default_ibsi_data_dir().parts[-3:] == ("shared", "reference", "ibsi")


def test_within_tolerance_rule():
    assert ibsi.within_tolerance(0.05964, 0.0596, 0)  # rounded to 3 significant digits first
    assert not ibsi.within_tolerance(0.05966, 0.0596, 0)  # 0.0597
    assert ibsi.within_tolerance(0.05966, 0.0596, 0.0001)
    assert ibsi.within_tolerance(-46.94, -46.9, 0)
    assert not ibsi.within_tolerance(-46.96, -46.9, 0)
    assert ibsi.within_tolerance(-1111.4, -1111, 10)
    assert ibsi.within_tolerance(0.0, 0.0, 0) and ibsi.within_tolerance(1e-9, 0.0, 0.0001)
    assert not ibsi.within_tolerance(0.1, 0.0, 0.05)
    # Exact counts with more than 3 digits and tolerance 0 match when equal.
    assert ibsi.within_tolerance(125256, 125256, 0) and not ibsi.within_tolerance(125255, 125256, 0)
    assert not ibsi.within_tolerance(math.nan, 1.0, 10) and not ibsi.within_tolerance(1.0, math.nan, 1)
    assert ibsi.round_significant(-0.0012345) == -0.00123


# --- discretisation -----------------------------------------------------------------------


def test_fixed_bin_size_counts_from_the_range_minimum():
    values = np.array([-1000.0, -976, -975, -951, 400])
    levels, n_levels = discretise(values, "fixed_bin_size", bin_width=25, range_min=-1000)
    assert levels.tolist() == [1, 1, 2, 2, 57] and n_levels == 57
    levels, n_levels = discretise(values[1:], "fixed_bin_size", bin_width=25)  # from the ROI minimum, -976
    assert levels.tolist() == [1, 1, 2, 56] and n_levels == 56
    # A decimal bin edge belongs to the upper bin (0.3 / 0.1 is 2.9999999999999996 in binary).
    assert discretise(np.array([0.0, 0.3]), "fixed_bin_size", bin_width=0.1, range_min=0.0)[0].tolist() == [1, 4]
    with pytest.raises(ValueError, match="below range_min"):
        discretise(values, "fixed_bin_size", bin_width=25, range_min=-500)


def test_fixed_bin_number_puts_the_maximum_in_the_last_bin():
    levels, n_levels = discretise(np.array([0.0, 1, 2, 3, 4]), "fixed_bin_number", n_bins=4)
    assert levels.tolist() == [1, 2, 3, 4, 4] and n_levels == 4
    levels, n_levels = discretise(np.array([10.0, 10.5, 20]), "fixed_bin_number", n_bins=32)
    assert levels.tolist() == [1, 2, 32] and n_levels == 32
    levels, n_levels = discretise(np.full(7, 3.5), "fixed_bin_number", n_bins=32)
    assert levels.tolist() == [1] * 7 and n_levels == 1


def test_no_discretisation_keeps_the_levels():
    levels, n_levels = discretise(np.array([1.0, 3, 4, 6]), "none")
    assert levels.tolist() == [1, 3, 4, 6] and n_levels == 6 and levels.dtype == np.int32
    with pytest.raises(ValueError, match="whole numbers"):
        discretise(np.array([0.5, 2]), "none")
    with pytest.raises(ValueError, match="empty ROI"):
        discretise(np.array([]), "fixed_bin_number", n_bins=4)
    with pytest.raises(ValueError, match="bin_width"):
        discretise(np.array([1.0]), "fixed_bin_size")
    with pytest.raises(ValueError, match="unknown"):
        discretise(np.array([1.0]), "equal_probability")


# --- resampling geometry ------------------------------------------------------------------


def _rotation(x_deg: float, y_deg: float, z_deg: float) -> np.ndarray:
    a, b, c = np.radians([x_deg, y_deg, z_deg])
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _ramp_image(size_xyz, spacing_xyz, direction, origin, gradient, offset):
    """An image whose value at every voxel centre is gradient . p + offset (p in mm)."""
    zz, yy, xx = np.meshgrid(*[np.arange(n) for n in size_xyz[::-1]], indexing="ij")
    index = np.stack([xx, yy, zz], axis=-1).astype(float)
    points = index @ (direction * np.asarray(spacing_xyz)).T + origin
    image = sitk.GetImageFromArray(points @ gradient + offset)
    image.SetSpacing(spacing_xyz)
    image.SetDirection(tuple(direction.ravel()))
    image.SetOrigin(tuple(origin))
    return image


def _mask_like(image, box_zyx):
    array = np.zeros(sitk.GetArrayFromImage(image).shape, dtype=np.uint8)
    array[box_zyx] = 1
    mask = sitk.GetImageFromArray(array)
    mask.CopyInformation(image)
    return mask


def test_resampling_an_oblique_ramp_is_exact_at_the_new_voxel_centres():
    direction = _rotation(20, -35, 50)
    spacing, size = (0.7, 0.9, 2.5), (31, 27, 13)
    origin, gradient = np.array([-12.0, 40.0, 7.5]), np.array([1.5, -2.0, 0.75])
    image = _ramp_image(size, spacing, direction, origin, gradient, 100.0)
    mask = _mask_like(image, np.s_[3:10, 5:22, 6:25])
    settings = RadiomicsSettings(
        resampled_spacing_mm=(1.3, 1.1, 1.7),
        interpolator="linear",
        modality="other",
        discretisation="fixed_bin_number",
        bin_width=None,
        n_bins=16,
    )
    roi = prepare_roi(image, mask, settings)
    assert roi.spacing_mm == (1.7, 1.1, 1.3) and roi.direction == pytest.approx(tuple(direction.ravel()))
    d = roi.diagnostics
    expected = [math.ceil(n * s / t) for n, s, t in zip(size, spacing, (1.3, 1.1, 1.7))]
    assert [d["img_dim_x_interp_img"], d["img_dim_y_interp_img"], d["img_dim_z_interp_img"]] == expected

    zz, yy, xx = np.meshgrid(*[np.arange(n) for n in roi.intensity.shape], indexing="ij")
    index = np.stack([xx, yy, zz], axis=-1).astype(float)
    points = index @ (direction * np.array(roi.spacing_mm[::-1])).T + np.array(roi.origin_lps_mm)
    # Linear interpolation is exact for a ramp wherever the new centre lies within the
    # original grid's centres (beyond them the edge value is repeated).
    original_index = np.linalg.solve(direction * np.array(spacing), (points - origin).reshape(-1, 3).T).T
    inside = np.all((original_index >= -1e-9) & (original_index <= np.array(size) - 1 + 1e-9), axis=1)
    assert inside.mean() > 0.6
    error = (roi.intensity.reshape(-1) - (points.reshape(-1, 3) @ gradient + 100.0))[inside]
    assert np.abs(error).max() < 1e-9

    # The new grid's centre is the original grid's centre, in physical space.
    coords, _ = resampling_grid(sitk.GetArrayFromImage(image).shape, spacing[::-1], (1.3, 1.1, 1.7))
    assert [float(np.mean(c)) for c in coords] == pytest.approx([(n - 1) / 2 for n in size[::-1]])


def test_zero_spacing_keeps_an_axis_and_no_resampling_keeps_the_grid():
    coords, spacing = resampling_grid((60, 201, 204), (3.0, 0.977, 0.977), (2.0, 2.0, 0.0))
    assert [len(c) for c in coords] == [60, 99, 100] and spacing.tolist() == [3.0, 2.0, 2.0]
    assert np.array_equal(coords[0], np.arange(60))
    coords, spacing = resampling_grid((4, 5, 6), (1.0, 2.0, 3.0), None)
    assert [c.tolist() for c in coords] == [list(range(n)) for n in (4, 5, 6)]


@pytest.mark.parametrize("order", [0, 1, 3])
def test_axis_by_axis_interpolation_equals_map_coordinates(order):
    rng = np.random.default_rng(order)
    array = rng.normal(size=(12, 80, 15)) * 100
    # Whole grids beyond the edges, and a block deep inside a long axis (the cubic
    # prefilter then sees only part of that axis).
    grids = [
        [np.linspace(-0.7, n - 0.2, m) for n, m in zip(array.shape, (17, 37, 9))],
        [np.linspace(2.2, 9.1, 7), np.linspace(38.3, 44.9, 9), np.linspace(0.4, 13.6, 11)],
    ]
    for coords in grids:
        expected = ndi.map_coordinates(
            array, np.array(np.meshgrid(*coords, indexing="ij")), order=order, mode="nearest"
        )
        assert np.abs(_sample(array, coords, order) - expected).max() < 1e-9


# --- inputs that cannot be used -----------------------------------------------------------


@pytest.fixture(scope="module")
def small_case():
    array = np.arange(10 * 12 * 14, dtype=np.float64).reshape(10, 12, 14)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((1.0, 1.0, 2.0))
    image.SetOrigin((5.0, -3.0, 10.0))
    return image, _mask_like(image, np.s_[3:7, 4:9, 5:10])


def test_a_mask_on_another_grid_inside_the_image_is_put_on_its_grid(small_case):
    image, mask = small_case
    fine = sitk.Resample(mask, [28, 24, 20], sitk.Transform(), sitk.sitkNearestNeighbor, image.GetOrigin(),
                         (0.5, 0.5, 1.0), image.GetDirection(), 0, sitk.sitkUInt8)  # fmt: skip
    settings = RadiomicsSettings(modality="other", discretisation="fixed_bin_size", bin_width=50.0)
    same = prepare_roi(image, mask, settings)
    moved = prepare_roi(image, fine, settings)
    assert np.array_equal(same.morph_mask, moved.morph_mask) and same.morph_mask.sum() == 4 * 5 * 5


def test_unusable_masks_and_images_are_refused(small_case):
    image, mask = small_case
    settings = RadiomicsSettings(modality="other", discretisation="fixed_bin_size", bin_width=50.0)
    with pytest.raises(ValueError, match="mask is empty"):
        prepare_roi(image, _mask_like(image, np.s_[0:0]), settings)
    away = sitk.Image(mask)
    away.SetOrigin((500.0, 500.0, 500.0))
    with pytest.raises(ValueError, match="does not overlap the image"):
        prepare_roi(image, away, settings)
    half_off = sitk.Image(mask)
    half_off.SetOrigin((12.0, -3.0, 10.0))
    with pytest.raises(ValueError, match="partly outside the image"):
        prepare_roi(image, half_off, settings)
    array = sitk.GetArrayFromImage(image)
    array[5, 6, 7] = np.nan
    with_nan = sitk.GetImageFromArray(array)
    with_nan.CopyInformation(image)
    with pytest.raises(ValueError, match="NaN"):
        prepare_roi(with_nan, mask, settings)
    with pytest.raises(ValueError, match="no ROI voxel is left"):
        prepare_roi(image, mask, settings.with_changes(resegment_range=(5000.0, None)))
    with pytest.raises(ValueError, match="vanishes"):
        prepare_roi(image, _mask_like(image, np.s_[5, 6, 7]), settings.with_changes(resampled_spacing_mm=(4, 4, 4)))


@pytest.mark.parametrize("interpolator", ["linear", "bspline"])
def test_slab_by_slab_diagnostics_equal_the_whole_image(small_case, monkeypatch, interpolator):
    from ImagInfoExtension.radiomics import preprocess

    image, mask = small_case
    settings = RadiomicsSettings(
        resampled_spacing_mm=(0.8, 1.5, 1.5), interpolator=interpolator, round_intensities=True, modality="CT"
    )
    whole = prepare_roi(image, mask, settings)
    monkeypatch.setattr(preprocess, "_SLAB_VOXELS", 50)  # one row of the new grid per slab
    slabs = prepare_roi(image, mask, settings)
    assert np.array_equal(whole.intensity, slabs.intensity) and np.array_equal(whole.levels, slabs.levels)
    assert whole.diagnostics == pytest.approx(slabs.diagnostics, rel=1e-12)
    skipped = prepare_roi(image, mask, settings, whole_image_diagnostics=False)
    assert math.isnan(skipped.diagnostics["mean_int_interp_img"])
    assert skipped.diagnostics["int_mask_mean_int_reseg_roi"] == whole.diagnostics["int_mask_mean_int_reseg_roi"]
