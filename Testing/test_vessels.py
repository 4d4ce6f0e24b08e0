"""Vessel extraction and quantification against phantoms with known answers."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from scipy.spatial.transform import Rotation

from ImagInfoExtension.cli import main
from ImagInfoExtension.geometry import ImageGrid
from ImagInfoExtension.io import CTSeriesInfo, write_ct_series, write_image
from ImagInfoExtension.phantom import AcquisitionSettings, VirtualScanner
from ImagInfoExtension.phantom.cylinders import make_cylinder_phantom
from ImagInfoExtension.progress import Cancelled
from ImagInfoExtension.vessels import (
    BASE_COLUMNS,
    TRUTH_COLUMNS,
    quantify_vessels,
    register_truth_to_image,
    truth_from_design,
)
from ImagInfoExtension.vessels.region import distance_from_mask_mm, find_holder_cavity
from ImagInfoExtension.vessels.vesselness import symmetric_eigenvalues

CYLINDER_RADII_MM = (0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0)


def test_closed_form_eigenvalues_match_lapack():
    rng = np.random.default_rng(4)
    matrices = rng.normal(size=(500, 3, 3))
    matrices = matrices + matrices.transpose(0, 2, 1)
    rows = np.stack(
        [
            matrices[:, 0, 0],
            matrices[:, 1, 1],
            matrices[:, 2, 2],
            matrices[:, 0, 1],
            matrices[:, 0, 2],
            matrices[:, 1, 2],
        ]
    )
    ours = symmetric_eigenvalues(rows)
    reference = np.linalg.eigvalsh(matrices)
    reference = np.take_along_axis(reference, np.argsort(np.abs(reference), axis=1), axis=1)
    np.testing.assert_allclose(ours.T, reference, atol=1e-9)


def _oblique_grid(radii, seed):
    layout = make_cylinder_phantom(radii, grid=ImageGrid((2, 2, 2), (1.0, 1.0, 1.0)), seed=seed, noise_sd_hu=0)
    ends = np.array([s.start_mm for s in layout.design.segments] + [s.end_mm for s in layout.design.segments])
    rotation = Rotation.from_euler("xyz", [20, -15, 30], degrees=True).as_matrix()
    return ImageGrid.covering_box(ends.min(0) - 6, ends.max(0) + 6, (0.55, 0.7, 0.9), tuple(rotation.ravel()))


@pytest.fixture(scope="module", params=["isotropic", "oblique-anisotropic"])
def cylinder_run(request):
    """Cylinders at random orientations, PSF FWHM 0.8 mm, correlated noise SD 20 HU."""
    seed = 3 if request.param == "isotropic" else 11
    grid = None if request.param == "isotropic" else _oblique_grid(CYLINDER_RADII_MM, seed)
    phantom = make_cylinder_phantom(CYLINDER_RADII_MM, grid=grid, seed=seed, psf_fwhm_mm=0.8, noise_sd_hu=20.0)
    truth = truth_from_design(phantom.design, phantom.class_volume_ml)
    result = quantify_vessels(phantom.image, truth=truth)
    voxel_mm = float(np.prod(phantom.image.GetSpacing()) ** (1 / 3))
    return phantom, result, voxel_mm


def test_distance_from_mask_matches_scipy_on_an_anisotropic_grid():
    from scipy import ndimage

    rng = np.random.default_rng(4)
    mask = rng.random((23, 31, 17)) > 0.995
    spacing = (1.7, 0.45, 0.8)
    expected = ndimage.distance_transform_edt(~mask, sampling=spacing)
    np.testing.assert_allclose(distance_from_mask_mm(mask, spacing), expected, rtol=1e-6, atol=1e-5)
    with pytest.raises(ValueError, match="empty mask"):
        distance_from_mask_mm(np.zeros((3, 3, 3), bool), spacing)


def test_holder_cavity_is_the_enclosed_air_less_the_wall_margin():
    # A PMMA tube (inner radius 20 mm, wall 4 mm) in air, open along k, with a 3 mm
    # vessel inside and one outside it: the region is the bore, 2 mm from the wall.
    spacing = (1.25, 0.5, 0.6)
    k, j, i = np.meshgrid(*(np.arange(n) * s for n, s in zip((24, 120, 100), spacing, strict=True)), indexing="ij")
    r = np.hypot(j - 30.0, i - 30.0)
    image = np.full(k.shape, -1000.0, np.float32)
    image[(r >= 20) & (r < 24)] = 120.0
    image[np.hypot(j - 32.0, i - 27.0) < 3] = 100.0
    image[np.hypot(j - 30.0, i - 57.0) < 3] = 100.0
    region = find_holder_cavity(image, spacing, wall_margin_mm=2.0)
    assert region.source == "holder cavity"
    well_inside = r < 20 - 2 - 0.8
    near_or_outside = r > 20 - 2 + 0.8
    assert region.mask[well_inside].all()
    assert not region.mask[near_or_outside].any()
    assert find_holder_cavity(np.where(r < 24, -1000.0, image), spacing).source == "whole image"


def test_cylinder_noise_is_as_specified(cylinder_run):
    phantom, result, _ = cylinder_run
    assert result.summary["levels_hu"]["noise_sd"] == pytest.approx(20.0, rel=0.1)
    assert result.summary["levels_hu"]["background"] == pytest.approx(-1000.0, abs=3.0)


def test_cylinder_detection(cylinder_run):
    _, result, _ = cylinder_run
    table = result.per_radius.dropna(subset=["true_length_mm"])
    assert (table["detection_rate"] >= 0.95).all(), table[["radius_mm", "detection_rate"]]


def test_cylinder_radius_bias(cylinder_run):
    _, result, voxel_mm = cylinder_run
    table = result.per_radius.dropna(subset=["true_length_mm"])
    relative = (table["radius_bias_mm"] / table["radius_mm"]).abs()
    in_voxels = table["radius_mm"] / voxel_mm
    assert (relative[in_voxels >= 2] <= 0.10).all(), table[["radius_mm", "est_radius_mm"]]
    assert (relative[(in_voxels >= 1) & (in_voxels < 2)] <= 0.20).all(), table[["radius_mm", "est_radius_mm"]]
    assert (table["correct_radius_rate"] >= 0.9).all()


def test_cylinder_class_volumes(cylinder_run):
    phantom, result, _ = cylinder_run
    table = result.per_radius.dropna(subset=["true_length_mm"]).set_index("radius_mm")
    for radius, true_ml in phantom.class_volume_ml.items():
        if radius >= 1.0:
            assert table.loc[radius, "volume_ml"] == pytest.approx(true_ml, rel=0.10), radius


def test_cylinder_mpv_of_thick_vessels(cylinder_run):
    _, result, _ = cylinder_run
    table = result.per_radius.set_index("radius_mm")
    for radius in (3.0, 4.0):
        assert abs(table.loc[radius, "mpv_hu"] - 100.0) <= 15.0
        # The core statistics measure noise, not the blurred edge: IQR ≈ 1.349 σ.
        assert table.loc[radius, "iqr_hu"] == pytest.approx(1.349 * 20.0, rel=0.25)


@pytest.fixture(scope="module")
def phantom_series():
    """The built-in phantom (small grid) at three doses, each reconstruction."""
    scanner = VirtualScanner(size="small")
    truth_document = scanner.truth.to_json()
    from ImagInfoExtension.vessels import truth_from_document

    truth = truth_from_document(truth_document)
    results = {}
    for recon in ("FBP", "IR", "DL"):
        for dose in (0.2, 1.0, 4.0):
            image = scanner.acquire(AcquisitionSettings(dose_mgy=dose, recon=recon, repetition=1))
            results[recon, dose] = quantify_vessels(image, truth=truth)
    return scanner, results


def test_phantom_iqr_falls_with_dose(phantom_series):
    _, results = phantom_series
    for recon in ("FBP", "IR", "DL"):
        iqr = [results[recon, dose].per_radius.set_index("radius_mm").loc[3.0, "iqr_hu"] for dose in (0.2, 1.0, 4.0)]
        assert iqr[0] > iqr[1] > iqr[2], (recon, iqr)


def test_phantom_total_volume_at_4_mgy(phantom_series):
    scanner, results = phantom_series
    for recon in ("FBP", "IR", "DL"):
        result = results[recon, 4.0]
        assert result.summary["region"]["source"] == "holder cavity"
        assert result.total_volume_ml == pytest.approx(scanner.truth.total_volume_ml, rel=0.15), recon


def test_phantom_mpv_near_material_and_thick_vessels_found(phantom_series):
    _, results = phantom_series
    for (recon, dose), result in results.items():
        table = result.per_radius.set_index("radius_mm")
        assert abs(table.loc[3.0, "mpv_hu"] - 100.0) <= 20.0, (recon, dose)
        assert (table.loc[[1.0, 1.5, 2.0, 3.0, 4.25], "detection_rate"] >= 0.95).all(), (recon, dose)


def test_truth_registration_recovers_a_rigid_offset():
    phantom = make_cylinder_phantom((1.0, 2.0, 3.0), copies=2, seed=5, noise_sd_hu=10.0)
    truth = truth_from_design(phantom.design)
    moved = sitk.Euler3DTransform()
    moved.SetCenter(tuple(truth.points_mm.mean(axis=0)))
    moved.SetRotation(0.04, -0.03, 0.05)
    moved.SetTranslation((3.0, -2.0, 2.5))
    # The design as delivered lives in another frame: image = moved(design).
    delivered = truth.transformed(moved.GetInverse())
    recovered = register_truth_to_image(delivered, phantom.image)
    aligned = delivered.transformed(recovered)
    error = np.linalg.norm(aligned.points_mm - truth.points_mm, axis=1)
    assert np.median(error) < 0.5


def test_registration_option_rescues_a_misplaced_truth():
    phantom = make_cylinder_phantom((1.0, 2.0, 3.0), copies=2, seed=6, noise_sd_hu=10.0)
    truth = truth_from_design(phantom.design, phantom.class_volume_ml)
    shift = sitk.TranslationTransform(3, (4.0, 3.0, -3.0))
    delivered = truth.transformed(shift)
    from ImagInfoExtension.vessels import VesselParameters

    plain = quantify_vessels(phantom.image, truth=delivered, radii_mm=None)
    registered = quantify_vessels(phantom.image, truth=delivered, parameters=VesselParameters(register_truth=True))
    plain_rate = plain.per_radius.dropna(subset=["true_length_mm"])["detection_rate"].mean()
    registered_rate = registered.per_radius.dropna(subset=["true_length_mm"])["detection_rate"].mean()
    assert plain_rate < 0.6
    assert registered_rate > 0.95
    assert registered.summary["truth"]["design_to_image_transform"] is not None


def test_cancel_stops_the_run():
    phantom = make_cylinder_phantom((1.0,), copies=1, seed=1)

    def cancel(done, total, message):
        if done >= 50:
            raise Cancelled("cancelled")

    with pytest.raises(Cancelled):
        quantify_vessels(phantom.image, progress=cancel)


@pytest.fixture(scope="module")
def small_cylinders(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cylinders")
    phantom = make_cylinder_phantom((0.75, 1.5, 3.0), copies=1, seed=8)
    image = sitk.Cast(sitk.Round(phantom.image), sitk.sitkInt16)
    write_image(image, folder / "image.nrrd")
    write_image(image, folder / "image.nii.gz")
    write_ct_series(image, folder / "dicom", CTSeriesInfo("cylinders", 1.0, "FC08"))
    truth = truth_from_design(phantom.design, phantom.class_volume_ml)
    document = {
        "coordinate_system": "LPS",
        "segments": [
            {"radius_mm": float(r), "points": truth.points_mm[truth.radius_mm == r].tolist()} for r in truth.radii_mm
        ],
        "classes": [{"radius_mm": r, "true_volume_ml": v} for r, v in phantom.class_volume_ml.items()],
    }
    (folder / "truth.json").write_text(json.dumps(document))
    return folder, image


@pytest.mark.parametrize("name", ["image.nrrd", "image.nii.gz", "dicom"])
def test_vessels_command_writes_the_contract(small_cylinders, tmp_path, name):
    folder, _ = small_cylinders
    out = tmp_path / "out"
    assert main(["vessels", str(folder / name), "--truth", str(folder / "truth.json"), "--out", str(out)]) == 0
    table = pd.read_csv(out / "per_radius.csv")
    assert list(table.columns[: len(BASE_COLUMNS) + len(TRUTH_COLUMNS)]) == [*BASE_COLUMNS, *TRUTH_COLUMNS]
    assert table["radius_mm"].dropna().tolist() == [0.75, 1.5, 3.0]
    assert (table["detection_rate"].dropna() >= 0.95).all()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["total_volume_ml"] == pytest.approx(table["volume_ml"].sum(), rel=1e-6)
    assert {"runtime_s", "parameters", "software", "classes"} <= set(summary)
    labels = sitk.ReadImage(str(out / "vessels.nrrd"))
    assert labels.GetSize() == sitk.ReadImage(str(folder / "image.nrrd")).GetSize()
    counts = np.bincount(sitk.GetArrayFromImage(labels).ravel(), minlength=5)
    assert counts[1:4].tolist() == table["n_voxels"].tolist()[:3]
    centerlines = json.loads((out / "centerlines.json").read_text())
    assert centerlines["coordinate_system"] == "LPS" and len(centerlines["points"]) > 20


def test_vessels_command_without_truth_uses_given_radii(small_cylinders, tmp_path):
    folder, _ = small_cylinders
    out = tmp_path / "out"
    assert main(["vessels", str(folder / "image.nrrd"), "--radii", "0.75,1.5,3", "--out", str(out)]) == 0
    table = pd.read_csv(out / "per_radius.csv")
    assert list(table.columns[: len(BASE_COLUMNS)]) == list(BASE_COLUMNS)
    assert "detection_rate" not in table.columns
    assert table["radius_mm"].dropna().tolist() == [0.75, 1.5, 3.0]


def _expect_error(capsys, arguments, fragment):
    with pytest.raises(SystemExit) as raised:
        main(arguments)
    assert raised.value.code == 2
    assert fragment in capsys.readouterr().err


def test_vessels_command_refuses_bad_input(small_cylinders, tmp_path, capsys):
    folder, image = small_cylinders
    out = tmp_path / "out"
    flat = sitk.Image(64, 64, sitk.sitkInt16)
    write_image(flat, tmp_path / "slice.nrrd")
    _expect_error(capsys, ["vessels", str(tmp_path / "slice.nrrd"), "--out", str(out)], "2D image")

    not_ct = sitk.Cast(sitk.RescaleIntensity(image, 0, 255), sitk.sitkUInt8)
    write_image(not_ct, tmp_path / "not_ct.nrrd")
    _expect_error(capsys, ["vessels", str(tmp_path / "not_ct.nrrd"), "--out", str(out)], "not a CT range")

    far = json.loads((folder / "truth.json").read_text())
    for segment in far["segments"]:
        segment["points"] = (np.asarray(segment["points"]) + 500.0).tolist()
    (tmp_path / "far.json").write_text(json.dumps(far))
    arguments = ["vessels", str(folder / "image.nrrd"), "--truth", str(tmp_path / "far.json"), "--out", str(out)]
    _expect_error(capsys, arguments, "truth lies outside the image")

    small_mask = sitk.Image(10, 10, 10, sitk.sitkUInt8)
    write_image(small_mask, tmp_path / "mask.nrrd")
    arguments = ["vessels", str(folder / "image.nrrd"), "--mask", str(tmp_path / "mask.nrrd"), "--out", str(out)]
    _expect_error(capsys, arguments, "mask's geometry")
    assert not out.exists(), "a refused run must not leave outputs"
