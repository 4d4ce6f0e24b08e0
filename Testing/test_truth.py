"""The truth module: document format and versions, files, views, resampling and the detection rule."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from ImagInfoExtension.geometry import ImageGrid
from ImagInfoExtension.phantom.cylinders import correlated_noise, make_cylinder_phantom
from ImagInfoExtension.phantom.scanner import VirtualScanner
from ImagInfoExtension.truth import (
    TRUTH_DOCUMENT_VERSION,
    TRUTH_FILE,
    TRUTH_LABELS_FILE,
    MaskTruth,
    TruthDocument,
    dice_per_class,
    polyline_weights_mm,
    radius_from_segment_name,
    read_mask_truth,
    read_truth,
    resample_polyline,
    segment_name,
    write_truth,
)
from ImagInfoExtension.vessels import quantify_vessels
from ImagInfoExtension.vessels.quantify import compare_with_truth
from ImagInfoExtension.vessels.truth import VesselTruth, load_truth, truth_from_design, truth_from_document

REPOSITORY = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- helpers


def _two_point_document(radius_mm: float, start_mm, end_mm) -> dict:
    """A version-1 style document: one segment given by its two end points only."""
    return {
        "coordinate_system": "LPS",
        "segments": [{"radius_mm": radius_mm, "points": [list(map(float, start_mm)), list(map(float, end_mm))]}],
    }


def _flat_cylinder_image(radius_mm: float, seed: int, length_mm: float = 20.0, spacing_mm: float = 0.6):
    """A cylinder with flat end caps at a random orientation, blurred (FWHM 1 mm) and noisy (SD 20 HU).

    Partial volume follows the signed distance to the finite cylinder (linear over one voxel).
    """
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    side = length_mm + 2 * radius_mm + 8.0
    centre = np.full(3, side / 2) + rng.uniform(-0.5, 0.5, 3)
    start, end = centre - 0.5 * length_mm * direction, centre + 0.5 * length_mm * direction
    grid = ImageGrid.covering_box(np.zeros(3), np.full(3, side), (spacing_mm,) * 3)
    k, j, i = np.indices(grid.shape_kji)
    offset = grid.physical_from_index(np.stack([i.ravel(), j.ravel(), k.ravel()], axis=1)) - start
    along = offset @ direction
    radial = np.linalg.norm(offset - along[:, None] * direction, axis=1) - radius_mm
    axial = np.maximum(-along, along - length_mm)
    outside = np.hypot(np.maximum(radial, 0), np.maximum(axial, 0))
    signed = np.where((radial > 0) | (axial > 0), outside, np.maximum(radial, axial))
    fraction = np.clip(0.5 - signed / spacing_mm, 0.0, 1.0).reshape(grid.shape_kji)
    image = ndimage.gaussian_filter(-1000.0 + 1100.0 * fraction, 1.0 / 2.3548 / spacing_mm)
    image = image + correlated_noise(grid.shape_kji, (spacing_mm,) * 3, 20.0, 0.5, rng)
    return grid.to_sitk(image.astype(np.float32)), start, end


def _cylinder_mask(grid: ImageGrid, radius_mm: float, start_mm, end_mm) -> np.ndarray:
    """Voxels whose centre lies in the flat-ended cylinder from ``start_mm`` to ``end_mm``."""
    start, end = np.asarray(start_mm, float), np.asarray(end_mm, float)
    axis = end - start
    length = np.linalg.norm(axis)
    axis /= length
    k, j, i = np.indices(grid.shape_kji)
    offset = grid.physical_from_index(np.stack([i.ravel(), j.ravel(), k.ravel()], axis=1)) - start
    along = offset @ axis
    radial = np.linalg.norm(offset - along[:, None] * axis, axis=1)
    return ((along >= 0) & (along <= length) & (radial <= radius_mm)).reshape(grid.shape_kji)


@pytest.fixture(scope="module")
def cylinder_scanner():
    """A phantom truth (label map, classes, design) of three cylinders on their image's grid."""
    phantom = make_cylinder_phantom((0.75, 1.5, 3.0), copies=1, seed=8, noise_sd_hu=0.0)
    return VirtualScanner(design=phantom.design, grid=ImageGrid.from_sitk(phantom.image), subsamples=2)


# --------------------------------------------------------------------------- segment names


@pytest.mark.parametrize("radius", [0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 3.0, 4.25, 1.2345678, 1e-5, 120.0])
def test_segment_names_round_trip(radius):
    assert radius_from_segment_name(segment_name(radius)) == radius


def test_segment_names_read_both_spellings():
    assert segment_name(1.5) == "vessel r=1.5 mm"
    assert segment_name(3.0) == "vessel r=3 mm"
    assert radius_from_segment_name("r = 0.75 mm") == 0.75
    assert radius_from_segment_name("vessel r=4.25 mm") == 4.25
    assert radius_from_segment_name("trunk") is None
    assert radius_from_segment_name("artery 3 mm") is None


# --------------------------------------------------------------------------- polylines


def test_resample_polyline_keeps_vertices_and_steps_at_most_the_maximum():
    vertices = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 0.6, 0.0], [1.0, 0.6, 0.1]])
    points = resample_polyline(vertices, 0.25)
    steps = np.linalg.norm(np.diff(points, axis=0), axis=1)
    assert steps.max() <= 0.25 + 1e-12 and steps.min() > 0
    np.testing.assert_allclose(points[0], vertices[0])
    np.testing.assert_allclose(points[-1], vertices[-1])
    # Every distinct vertex is kept; within a piece the steps are equal.
    for vertex in vertices:
        assert np.min(np.linalg.norm(points - vertex, axis=1)) < 1e-12
    np.testing.assert_allclose(steps[:4], 0.25)
    np.testing.assert_allclose(steps[4:7], 0.2)
    assert len(points) == 4 + 3 + 1 + 1
    weights = polyline_weights_mm(points)
    assert weights.sum() == pytest.approx(1.0 + 0.6 + 0.1)
    assert weights[0] == pytest.approx(0.125)


def test_resample_polyline_edge_cases():
    assert resample_polyline([[1.0, 2.0, 3.0]]).shape == (1, 3)
    assert resample_polyline([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]]).shape == (1, 3)
    # A polyline already sampled at the step, its points rounded as a document stores them, keeps its points.
    sampled = np.round(resample_polyline([[0.1, 0.2, 0.3], [7.3, -2.1, 4.4]], 0.25), 4)
    assert len(resample_polyline(sampled, 0.25)) == len(sampled)
    with pytest.raises(ValueError, match="positive"):
        resample_polyline(sampled, 0.0)


# --------------------------------------------------------------------------- detection


def test_two_point_capsule_cylinder_is_fully_detected():
    phantom = make_cylinder_phantom((1.0,), copies=1, seed=4, noise_sd_hu=20.0)
    segment = phantom.design.segments[0]
    truth = truth_from_document(_two_point_document(1.0, segment.start_mm, segment.end_mm))
    assert len(truth.points_mm) == 81 and truth.weight_mm.sum() == pytest.approx(20.0)
    result = quantify_vessels(phantom.image, truth=truth)
    assert result.per_radius.loc[0, "detection_rate"] == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("radius, seed", [(1.0, 0), (1.0, 1), (2.0, 1)])
def test_two_point_flat_ended_cylinder_is_fully_detected(radius, seed):
    """End points on flat caps, whose own voxels partial volume may leave out, still count."""
    image, start, end = _flat_cylinder_image(radius, seed)
    truth = truth_from_document(_two_point_document(radius, start, end))
    result = quantify_vessels(image, truth=truth)
    assert result.per_radius.loc[0, "detection_rate"] == pytest.approx(1.0, abs=1e-12)


def test_sparse_design_detection_is_not_quantised():
    """A two-vertex truth running 6 mm past a capsule's end: detected up to the segmentation's reach."""
    radius, length = 1.0, 20.0
    phantom = make_cylinder_phantom((radius,), copies=1, seed=4, noise_sd_hu=20.0, length_mm=length)
    segment = phantom.design.segments[0]
    direction = np.subtract(segment.end_mm, segment.start_mm) / length
    beyond = np.add(segment.end_mm, 6.0 * direction)
    truth = truth_from_document(_two_point_document(radius, segment.start_mm, beyond))
    rate = quantify_vessels(phantom.image, truth=truth).per_radius.loc[0, "detection_rate"]
    # The capsule reaches r past its end point and detection r further: 2 r of the 6 mm.
    assert rate == pytest.approx((length + 2 * radius) / (length + 6.0), abs=0.04)


def test_detection_rule_on_a_known_segmentation():
    grid = ImageGrid((60, 40, 40), (0.5, 0.5, 0.5))
    start, end = np.array([2.0, 10.0, 10.0]), np.array([27.0, 10.0, 10.0])
    segmentation = _cylinder_mask(grid, 2.0, start, [14.5, 10.0, 10.0])
    truth = truth_from_document(_two_point_document(2.0, start, end))
    table = compare_with_truth(truth, segmentation, grid, np.zeros((0, 3)), np.zeros(0))
    # Segmented over 12.5 of 25 mm; points up to the radius past its end are detected too.
    assert table.loc[0, "detection_rate"] == pytest.approx((12.5 + 2.0) / 25.0, abs=0.02)
    assert table.loc[0, "true_length_mm"] == pytest.approx(25.0)


def test_detection_rule_does_not_over_count():
    grid = ImageGrid((40, 40, 40), (0.5, 0.5, 0.5))
    # A thick vessel segmented along x; a thin one runs parallel, 1.5 mm from its wall, unsegmented.
    segmentation = _cylinder_mask(grid, 2.0, [1.0, 10.0, 10.0], [18.0, 10.0, 10.0])
    thin = np.array([[2.0 + 0.25 * n, 13.5, 10.0] for n in range(60)])
    truth = VesselTruth(thin, np.full(len(thin), 1.0), np.full(len(thin), 0.25), (1.0,))
    assert not truth.detected_in(segmentation, grid).any()
    # Off the segmented surface: a 0.4 mm vessel is detected 0.35 mm away (its radius), a 0.1 mm one is
    # not (half a voxel, 0.25 mm), unless the grid is coarser along another axis (half of 1 mm).
    surface = grid.physical_from_index(np.argwhere(segmentation)[:, ::-1])
    outermost = surface[np.argmax(surface[:, 1])]
    off = outermost + np.array([[0.0, 0.35, 0.0], [0.0, 0.35, 0.0], [0.0, 0.8, 0.0]])
    radii = np.array([0.4, 0.1, 0.1])
    points = VesselTruth(off, radii, np.full(3, 0.25), (0.1, 0.4))
    assert points.detected_in(segmentation, grid).tolist() == [True, False, False]
    coarse = ImageGrid((40, 40, 20), (0.5, 0.5, 1.0))
    segmentation = _cylinder_mask(coarse, 2.0, [1.0, 10.0, 10.0], [18.0, 10.0, 10.0])
    surface = coarse.physical_from_index(np.argwhere(segmentation)[:, ::-1])
    outermost = surface[np.argmax(surface[:, 1])]
    off = outermost + np.array([[0.0, 0.35, 0.0], [0.0, 0.8, 0.0]])
    points = VesselTruth(off, np.full(2, 0.1), np.full(2, 0.25), (0.1,))
    assert points.detected_in(segmentation, coarse).tolist() == [True, False]
    # Points outside the grid are never detected.
    away = VesselTruth(np.array([[-30.0, 0.0, 0.0]]), np.array([1.0]), np.array([0.25]), (1.0,))
    assert not away.detected_in(segmentation, grid).any()


# --------------------------------------------------------------------------- the document and its files


def test_document_round_trips_through_its_files(cylinder_scanner, tmp_path):
    phantom_truth = cylinder_scanner.truth
    paths = write_truth(phantom_truth, tmp_path)
    assert paths == {"truth": tmp_path / TRUTH_FILE, "labels": tmp_path / TRUTH_LABELS_FILE}
    assert not list(tmp_path.glob(".partial-*"))
    written = json.loads(paths["truth"].read_text())
    assert written["version"] == TRUTH_DOCUMENT_VERSION and written["coordinate_system"] == "LPS"
    assert written["label_map"]["file"] == TRUTH_LABELS_FILE
    assert [c["name"] for c in written["classes"]] == ["vessel r=0.75 mm", "vessel r=1.5 mm", "vessel r=3 mm"]
    assert {"colour", "true_volume_ml", "centerline_length_mm", "label"} <= set(written["classes"][0])

    document = read_truth(tmp_path)
    assert document.version == TRUTH_DOCUMENT_VERSION
    assert document.grid.same_as(cylinder_scanner.grid)
    expected = truth_from_document(phantom_truth.document())
    for read in (truth_from_document(document), load_truth(paths["truth"]), load_truth(tmp_path)):
        np.testing.assert_array_equal(read.points_mm, expected.points_mm)
        np.testing.assert_array_equal(read.radius_mm, expected.radius_mm)
        np.testing.assert_array_equal(read.weight_mm, expected.weight_mm)
        assert read.radii_mm == expected.radii_mm == (0.75, 1.5, 3.0)
        assert read.class_volume_ml == pytest.approx({c.radius_mm: c.true_volume_ml for c in phantom_truth.classes})

    for mask in (read_mask_truth(tmp_path), read_mask_truth(paths["truth"])):
        np.testing.assert_array_equal(mask.label_array(), phantom_truth.labels)
        assert mask.grid.same_as(cylinder_scanner.grid)
        assert mask.classes == phantom_truth.truth_classes()
        assert mask.segment_table() == phantom_truth.segment_table()


def test_document_written_from_memory_with_and_without_labels(cylinder_scanner, tmp_path):
    document = cylinder_scanner.truth.document()
    paths = write_truth(document, tmp_path / "bare")
    assert set(paths) == {"truth"} and "label_map" not in json.loads(paths["truth"].read_text())
    from_dict = write_truth(document.to_json(), tmp_path / "dict")
    assert read_truth(from_dict["truth"]).to_json() == json.loads(paths["truth"].read_text())
    labels = cylinder_scanner.truth.label_image()
    write_truth(document, tmp_path / "full", labels)
    mask = read_mask_truth(tmp_path / "full")
    np.testing.assert_array_equal(mask.label_array(), cylinder_scanner.truth.labels)
    shifted = sitk.Image(labels)
    shifted.SetOrigin(tuple(o + 1.0 for o in labels.GetOrigin()))
    with pytest.raises(ValueError, match="grid"):
        write_truth(document, tmp_path / "bad", shifted)


def test_vessel_truth_document_reads_back_exactly(cylinder_scanner):
    truth = truth_from_design(cylinder_scanner.design, {0.75: 0.1, 1.5: 0.2, 3.0: 0.5})
    document = json.loads(json.dumps(truth.to_document()))
    assert document["version"] == TRUTH_DOCUMENT_VERSION
    again = truth_from_document(document)
    np.testing.assert_array_equal(again.points_mm, truth.points_mm)
    np.testing.assert_array_equal(again.weight_mm, truth.weight_mm)
    assert again.radii_mm == truth.radii_mm and again.class_volume_ml == truth.class_volume_ml


def test_version_1_documents_still_read(cylinder_scanner, tmp_path):
    version_2 = cylinder_scanner.truth.to_json()
    # What ImagInfo wrote before the version key: no version, classes without name and colour.
    version_1 = {key: value for key, value in version_2.items() if key != "version"}
    version_1["classes"] = [
        {key: c[key] for key in ("label", "radius_mm", "true_volume_ml", "centerline_length_mm")}
        for c in version_2["classes"]
    ]
    (tmp_path / TRUTH_FILE).write_text(json.dumps(version_1))
    document = read_truth(tmp_path / TRUTH_FILE)
    assert document.version == 1
    assert [c.name for c in document.classes] == [c["name"] for c in version_2["classes"]]
    assert [list(c.colour) for c in document.classes] == [c["colour"] for c in version_2["classes"]]
    old, new = truth_from_document(document), truth_from_document(version_2)
    np.testing.assert_array_equal(old.points_mm, new.points_mm)
    # The smallest document: segments only.
    minimal = TruthDocument.from_json({"segments": [{"radius_mm": 2, "points": [[0, 0, 0], [0, 0, 1]]}]})
    assert minimal.version == 1 and minimal.classes[0].label == 1 and minimal.classes[0].name == "vessel r=2 mm"


def _refusal(tmp_path: Path, content: str) -> str:
    path = tmp_path / "truth.json"
    path.write_text(content)
    with pytest.raises(ValueError) as raised:
        read_truth(path)
    with pytest.raises(ValueError):
        load_truth(path)
    return str(raised.value)


def test_future_and_broken_documents_are_refused(tmp_path):
    segments = [{"radius_mm": 1.0, "points": [[0, 0, 0], [0, 0, 5]]}]
    message = _refusal(tmp_path, json.dumps({"version": TRUTH_DOCUMENT_VERSION + 1, "segments": segments}))
    assert f"version {TRUTH_DOCUMENT_VERSION + 1}, newer than this ImagInfo reads" in message and "update" in message
    assert "not valid JSON" in _refusal(tmp_path, '{"segments": [')
    assert "not an ImagInfo truth document" in _refusal(tmp_path, "[1, 2, 3]")
    assert "lacks 'segments'" in _refusal(tmp_path, json.dumps({"coordinate_system": "LPS"}))
    assert "segment 0 lacks 'points'" in _refusal(tmp_path, json.dumps({"segments": [{"radius_mm": 1.0}]}))
    assert "[x, y, z]" in _refusal(tmp_path, json.dumps({"segments": [{"radius_mm": 1, "points": [[0, 0]]}]}))
    assert "must be positive" in _refusal(tmp_path, json.dumps({"segments": [{**segments[0], "radius_mm": -1}]}))
    assert "weights_mm" in _refusal(tmp_path, json.dumps({"segments": [{**segments[0], "weights_mm": [1.0]}]}))
    message = _refusal(tmp_path, json.dumps({"coordinate_system": "RAS", "segments": segments}))
    assert "must be 'LPS'" in message and "negate x and y" in message
    assert "'holder' must be" in _refusal(tmp_path, json.dumps({"holder": [1], "segments": segments}))
    assert "'version' must be" in _refusal(tmp_path, json.dumps({"version": "two", "segments": segments}))
    with pytest.raises(FileNotFoundError, match="not found"):
        read_truth(tmp_path / "absent.json")


# --------------------------------------------------------------------------- the mask view


def test_mask_truth_resamples_by_physical_position(cylinder_scanner):
    mask = MaskTruth(cylinder_scanner.truth.label_image(), cylinder_scanner.truth.truth_classes())
    source = mask.grid
    rotation = sitk.Euler3DTransform((0, 0, 0), 0.3, -0.2, 0.5).GetMatrix()
    target = ImageGrid.covering_box(
        np.asarray(source.origin_mm) + 3.0, np.asarray(source.origin_mm) + 20.0, (0.45, 0.8, 0.6), rotation
    )
    resampled = mask.resampled_onto(target)
    assert resampled.grid.same_as(target) and resampled.classes == mask.classes
    array = resampled.label_array()
    # Each target voxel takes the label of the source voxel holding its centre.
    rng = np.random.default_rng(0)
    kji = np.stack([rng.integers(0, n, 400) for n in target.shape_kji], axis=1)
    centres = target.physical_from_index(kji[:, ::-1])
    nearest = np.rint(source.index_from_physical(centres)).astype(int)
    inside = np.all((nearest >= 0) & (nearest < np.asarray(source.size_ijk)), axis=1)
    labels = cylinder_scanner.truth.labels
    expected = np.where(inside, labels[tuple(np.clip(nearest, 0, np.asarray(source.size_ijk) - 1)[:, ::-1].T)], 0)
    assert (array[tuple(kji.T)] == expected).mean() > 0.99  # ties on voxel borders may round either way
    # An image on the source grid resamples to itself.
    same = mask.resampled_onto(source.to_sitk(np.zeros(source.shape_kji, np.int16)))
    np.testing.assert_array_equal(same.label_array(), labels)


def test_mask_truth_from_a_label_map_file(cylinder_scanner, tmp_path):
    labels = cylinder_scanner.truth.label_image()
    sitk.WriteImage(labels, str(tmp_path / "design.nrrd"))
    mask = read_mask_truth(tmp_path / "design.nrrd", radii_mm=(0.75, 1.5, 3.0))
    assert [c.name for c in mask.classes] == ["vessel r=0.75 mm", "vessel r=1.5 mm", "vessel r=3 mm"]
    # Segments in any order: label k is the k-th radius given.
    unordered = MaskTruth.from_label_map(labels, (3.0, 0.75, 1.5))
    assert unordered.class_of_label(1).radius_mm == 3.0 and unordered.class_of_label(1).colour == mask.classes[2].colour
    with pytest.raises(ValueError, match="only 2 radius classes are known"):
        MaskTruth.from_label_map(labels, (1.0, 2.0))
    with pytest.raises(ValueError, match="fractional"):
        MaskTruth.from_label_map(sitk.Cast(labels, sitk.sitkFloat32) * 0.5, (0.75, 1.5, 3.0))
    (tmp_path / TRUTH_FILE).write_text(json.dumps(cylinder_scanner.truth.to_json()))
    with pytest.raises(FileNotFoundError, match="names the label map truth_labels.nrrd"):
        read_mask_truth(tmp_path / TRUTH_FILE)


def test_dice_per_class(cylinder_scanner):
    truth = cylinder_scanner.truth
    mask = MaskTruth(truth.label_image(), truth.truth_classes())
    assert dice_per_class(mask, truth.label_image()) == {0.75: 1.0, 1.5: 1.0, 3.0: 1.0}
    eroded = truth.labels.copy()
    thick = truth.labels == 3
    eroded[thick & ~ndimage.binary_erosion(thick)] = 0
    kept, total = int((eroded == 3).sum()), int(thick.sum())
    scores = dice_per_class(mask, truth.grid.to_sitk(eroded))
    assert scores[3.0] == pytest.approx(2 * kept / (kept + total)) and scores[0.75] == 1.0


# --------------------------------------------------------------------------- imports


def test_truth_module_imports_without_pandas():
    code = (
        "import sys; sys.modules['pandas'] = None\n"
        "import ImagInfoExtension.truth as truth\n"
        "assert truth.segment_name(1.5) == 'vessel r=1.5 mm'\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPOSITORY, check=True, timeout=120)
