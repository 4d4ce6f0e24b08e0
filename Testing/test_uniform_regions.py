"""Automatic uniform regions for noise ROIs on any scan, and the user's own noise ROI.

The QA phantoms (a PMMA slab beside cylinders in air, a 20 cm water cylinder) and the
vessel phantom have a known noise model: automatic placement, square ROIs, noise SD
and NPS must give the model's noise SD (within 5 %) and NPS peak (within 0.03 mm⁻¹),
from ROIs clear of every edge and of the clipped air.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from ImagInfoExtension.geometry import ImageGrid
from ImagInfoExtension.imagequality import (
    find_uniform_regions,
    noise_power_spectrum,
    noise_sd_hu,
    place_square_rois,
    read_noise_roi,
)
from ImagInfoExtension.phantom import AcquisitionSettings
from ImagInfoExtension.phantom.acquisition import noise_power_spectrum as model_noise_power_spectrum
from ImagInfoExtension.phantom.qa import (
    CT_CLIP_HU,
    correlated_noise,
    slab_and_cylinders_phantom,
    structured_phantom,
    water_cylinder_phantom,
)
from ImagInfoExtension.vessels.region import distance_from_mask_mm

DEFAULT_MARGIN_MM = 1.5


@pytest.fixture(scope="module")
def slab():
    return slab_and_cylinders_phantom(seed=0)


@pytest.fixture(scope="module")
def water():
    return water_cylinder_phantom(seed=0)


@pytest.fixture(params=["slab", "water"])
def qa_phantom(request, slab, water):
    return {"slab": slab, "water": water}[request.param]


def test_qa_phantom_noise_matches_its_model(qa_phantom):
    array, spacing = qa_phantom.array, qa_phantom.spacing_kji_mm
    region = find_uniform_regions(array, spacing)
    rois = place_square_rois(region)
    sd = noise_sd_hu(array, rois)
    nps = noise_power_spectrum(array, spacing[1:], rois)
    assert sd == pytest.approx(qa_phantom.noise.noise_sd_hu, rel=0.05)
    assert abs(nps.peak_frequency_per_mm - qa_phantom.noise.peak_frequency_per_mm) <= 0.03
    assert rois.size_px == 64 and len(rois) >= 60
    # The ROIs sit in the phantom's main material (the slab, not a cylinder or the air).
    in_rois = qa_phantom.object_hu[rois.mask(array.shape)]
    assert np.abs(in_rois - qa_phantom.uniform_hu).max() < 0.5


def test_regions_keep_their_margin_from_edges_and_clipped_air(qa_phantom):
    array, spacing = qa_phantom.array, qa_phantom.spacing_kji_mm
    for margin_mm in (DEFAULT_MARGIN_MM, 5.0):
        region = find_uniform_regions(array, spacing, margin_mm=margin_mm)
        assert region.any()
        rois = place_square_rois(region).mask(array.shape)
        assert qa_phantom.edge_distance_mm[region].min() > margin_mm
        assert qa_phantom.edge_distance_mm[rois].min() > margin_mm
        assert not (region & (array <= CT_CLIP_HU)).any()
        assert not (region & (qa_phantom.object_hu < -500)).any()
    # A larger margin leaves a smaller region inside the smaller one.
    narrow = find_uniform_regions(array, spacing, margin_mm=5.0)
    wide = find_uniform_regions(array, spacing)
    assert narrow.sum() < wide.sum() and not (narrow & ~wide).any()


def test_air_yields_no_region():
    noise, _ = correlated_noise((6, 160, 160), (0.7, 0.7), 15.0, 0.3, seed=1)
    # Air as a scanner stores it: the lower half of its noise clipped at -1024 HU.
    clipped = np.maximum(-1000.0 + noise, CT_CLIP_HU)
    assert not find_uniform_regions(clipped, (2.0, 0.7, 0.7)).any()
    # Air below -900 HU is no noise region even where nothing is clipped.
    quiet = -1000.0 + noise / 5.0
    assert quiet.min() > CT_CLIP_HU
    assert not find_uniform_regions(quiet, (2.0, 0.7, 0.7)).any()


def test_structured_image_yields_an_empty_region_not_an_error():
    phantom = structured_phantom(seed=0)
    region = find_uniform_regions(phantom.array, phantom.spacing_kji_mm)
    assert region.shape == phantom.array.shape and not region.any()
    # The caller turns it into a reason.
    with pytest.raises(ValueError, match="uniform region holds only 0 square ROI"):
        place_square_rois(region)


def test_uniform_module_beside_a_structured_module():
    """A QA phantom's uniform module next to a structured one along z: the uniform slices alone."""
    water = water_cylinder_phantom(slices=6, seed=2)
    rods = structured_phantom(size_ij=(300, 300), slices=4, spacing_mm=(0.8, 0.8, 2.0), seed=2)
    stack = np.concatenate([water.array, rods.array], axis=0)
    region = find_uniform_regions(stack, water.spacing_kji_mm)
    per_slice = region.sum(axis=(1, 2))
    assert (per_slice[:6] > 0.9 * per_slice[0]).all()
    assert per_slice[6:].sum() < 0.01 * per_slice[0]
    assert noise_sd_hu(stack, place_square_rois(region)) == pytest.approx(water.noise.noise_sd_hu, rel=0.05)


def _grid_noise_sd_hu(scanner, recon: str, dose_mgy: float) -> float:
    """The model's noise SD on the scanner's grid: its NPS integrated over the grid's band.

    The calibration's SD holds on the reference grid; a coarser grid passes less of
    the NPS. Rounding to integer HU adds 1/12 HU².
    """
    grid = scanner.grid
    k, j, i = grid.shape_kji
    fk = np.fft.fftfreq(k, grid.spacing_mm[2])[:, None, None]
    fj = np.fft.fftfreq(j, grid.spacing_mm[1])[None, :, None]
    fi = np.fft.fftfreq(i, grid.spacing_mm[0])[None, None, :]
    model = scanner.model
    nps = model_noise_power_spectrum(model.model_for(recon), model.calibration.noise[recon], dose_mgy, fk, fj, fi)
    return float(np.sqrt(nps.astype(np.float64).mean() / grid.voxel_volume_mm3 + 1.0 / 12.0))


@pytest.mark.parametrize("recon", ["FBP", "IR"])
def test_vessel_phantom_noise_matches_its_model(small_scanner, recon):
    dose = 4.0
    image = small_scanner.acquire(AcquisitionSettings(dose, recon, 1))
    array = sitk.GetArrayFromImage(image)
    spacing = image.GetSpacing()[::-1]
    region = find_uniform_regions(array, spacing)
    rois = place_square_rois(region)
    expected_sd = _grid_noise_sd_hu(small_scanner, recon, dose)
    assert noise_sd_hu(array, rois) == pytest.approx(expected_sd, rel=0.05)
    nps = noise_power_spectrum(array, spacing[1:], rois)
    expected_peak = small_scanner.model.model_for(recon).nps_peak_at(dose)
    assert abs(nps.peak_frequency_per_mm - expected_peak) <= 0.03
    # Only solid PMMA (the holder's base), at least the margin from any other material.
    holder_hu = small_scanner.design.holder_hu
    other = np.abs(small_scanner.object_hu - holder_hu) > 0.5
    roi_mask = rois.mask(array.shape)
    assert not (roi_mask & other).any()
    assert distance_from_mask_mm(other, spacing)[region].min() > DEFAULT_MARGIN_MM


def _box_mask_image(grid: ImageGrid, lower_mm, upper_mm, label: int = 1) -> sitk.Image:
    """A label image on ``grid``: ``label`` where the voxel centre lies in the LPS box."""
    k, j, i = np.meshgrid(*(np.arange(n) for n in grid.shape_kji), indexing="ij")
    points = grid.physical_from_index(np.stack([i.ravel(), j.ravel(), k.ravel()], axis=1))
    inside = np.all((points >= lower_mm) & (points <= upper_mm), axis=1).reshape(grid.shape_kji)
    return grid.to_sitk((inside * label).astype(np.uint8))


def test_read_noise_roi_round_trips_through_physical_coordinates(tmp_path, water):
    reference = water.image
    reference_grid = ImageGrid.from_sitk(reference)
    lower, upper = np.array([-40.0, -25.0, -6.0]), np.array([30.0, 35.0, 6.0])
    expected = sitk.GetArrayFromImage(_box_mask_image(reference_grid, lower, upper)) > 0
    # The same box drawn on a finer, shifted grid whose i and j axes point the other way.
    other = ImageGrid(
        size_ijk=(200, 200, 40),
        spacing_mm=(0.5, 0.5, 0.5),
        origin_mm=(49.9, 49.8, -10.1),
        direction=(-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0),
    )
    drawn = _box_mask_image(other, lower, upper, label=3)
    path = tmp_path / "noise_roi.nrrd"
    sitk.WriteImage(drawn, str(path))
    mask = read_noise_roi(path, reference)
    assert mask.shape == expected.shape and mask.dtype == bool
    # Nearest-neighbour sampling may move the boundary by half a fine voxel: only
    # reference voxels whose centres lie within 0.25 mm of the box faces may differ.
    index = np.stack(np.meshgrid(*(np.arange(n) for n in reference_grid.size_ijk), indexing="ij"), -1)
    points = reference_grid.physical_from_index(index.reshape(-1, 3)).reshape(*reference_grid.size_ijk, 3)
    near_face = np.any((np.abs(points - lower) < 0.25) | (np.abs(points - upper) < 0.25), axis=-1)
    near_face = near_face.transpose(2, 1, 0)
    assert expected.sum() > 10000
    assert np.array_equal(mask[~near_face], expected[~near_face])
    # On the image's own grid the mask comes back unchanged; every nonzero label counts.
    labels = sitk.GetArrayFromImage(_box_mask_image(reference_grid, lower, upper, label=2))
    labels[0, :10, :10] = 7
    own = reference_grid.to_sitk(labels)
    assert np.array_equal(read_noise_roi(own, reference), labels != 0)
    # A user ROI inside the water gives its noise.
    rois = place_square_rois(mask, max_size_px=32, min_count=10)
    assert noise_sd_hu(water.array, rois) == pytest.approx(water.noise.noise_sd_hu, rel=0.05)


def test_read_noise_roi_refuses_empty_and_misplaced_masks(tmp_path, water):
    reference = water.image
    grid = ImageGrid.from_sitk(reference)
    empty = tmp_path / "empty.nrrd"
    sitk.WriteImage(grid.to_sitk(np.zeros(grid.shape_kji, np.uint8)), str(empty))
    with pytest.raises(ValueError, match="no nonzero voxel.*paint the uniform region"):
        read_noise_roi(empty, reference)
    far = ImageGrid(size_ijk=(20, 20, 5), spacing_mm=(1.0, 1.0, 2.0), origin_mm=(500.0, 500.0, 0.0))
    with pytest.raises(ValueError, match="does not overlap the image.*origin and direction"):
        read_noise_roi(far.to_sitk(np.ones(far.shape_kji, np.uint8)), reference)
    with pytest.raises(FileNotFoundError):
        read_noise_roi(tmp_path / "missing.nrrd", reference)
