"""The phantom's geometry and truth against analytic answers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ImagInfoExtension.geometry import ImageGrid
from ImagInfoExtension.phantom import DEFAULT_RADII_MM, default_design
from ImagInfoExtension.phantom.design import PhantomDesign, VesselSegment, render_holder_fraction, render_vessels
from ImagInfoExtension.phantom.study import write_truth


def _capsule_volume_mm3(radius: float, length: float) -> float:
    return np.pi * radius**2 * length + 4.0 / 3.0 * np.pi * radius**3


def test_tree_spans_the_published_radii_with_enough_centreline():
    design = default_design()
    assert design.radius_classes_mm == DEFAULT_RADII_MM
    assert min(design.radius_classes_mm) == pytest.approx(0.1)
    assert max(design.radius_classes_mm) == pytest.approx(4.25)
    for radius, length in design.centerline_length_mm().items():
        assert length >= 20.0, f"radius {radius} mm has only {length:.1f} mm of centreline"


def test_tree_branches_without_collisions():
    design = default_design()
    by_id = {s.id: s for s in design.segments}
    for segment in design.segments[1:]:
        parent = by_id[segment.parent_id]
        assert np.allclose(segment.start_mm, parent.end_mm), "children start where their parent ends"
        assert segment.radius_mm <= parent.radius_mm
    # Branches that are not parent, child or sibling keep clear of each other.
    rng = np.random.default_rng(1)
    far = [s for s in design.segments if s.radius_mm >= 1.0]
    for a in far:
        for b in far:
            if b.id <= a.id or a.parent_id == b.parent_id or b.parent_id == a.id or a.parent_id == b.id:
                continue
            points = a.centerline_points(0.5)
            ab = np.subtract(b.end_mm, b.start_mm)
            t = np.clip((points - b.start_mm) @ ab / (ab @ ab), 0, 1)
            gap = np.linalg.norm(points - (np.asarray(b.start_mm) + t[:, None] * ab), axis=1).min()
            assert gap > a.radius_mm + b.radius_mm, (a.id, b.id, rng)


def test_tree_sits_inside_the_holder_and_the_default_grid(default_scanner):
    design = default_scanner.design
    grid = default_scanner.grid
    assert max(grid.spacing_mm[:2]) <= 0.7
    points = np.concatenate([s.centerline_points(1.0) for s in design.segments])
    inner = design.holder.normalised_radius(points[:, 0], points[:, 1], design.holder.wall_thickness_mm)
    assert inner.max() < 1.0, "every vessel lies in the air inside the PMMA holder"
    radius = np.concatenate([np.full(len(s.centerline_points(1.0)), s.radius_mm) for s in design.segments])
    assert (points[:, 1] + radius).max() < design.holder.base_top_y_mm - 3.0, "and clear of the base"
    index = grid.index_from_physical(points)
    assert np.all(index >= 0) and np.all(index <= np.asarray(grid.size_ijk) - 1)


def test_true_volume_in_the_published_range(default_scanner):
    truth = default_scanner.truth
    assert 4.0 <= truth.total_volume_ml <= 8.0
    assert [c.label for c in truth.classes] == list(range(1, len(DEFAULT_RADII_MM) + 1))
    assert [c.radius_mm for c in truth.classes] == list(DEFAULT_RADII_MM)


@pytest.mark.parametrize(
    "spacing, direction",
    [
        ((0.7, 0.7, 1.0), (1, 0, 0, 0, 1, 0, 0, 0, 1)),
        # An oblique, anisotropic grid: rotated 30° about z and 20° about x.
        ((0.6, 0.9, 1.3), None),
    ],
)
def test_partial_volume_matches_analytic_capsule_volume(spacing, direction):
    if direction is None:
        a, b = np.deg2rad(30), np.deg2rad(20)
        rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
        rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
        direction = tuple((rz @ rx).ravel())
    segments = (
        VesselSegment(0, 2.0, (-8.0, -3.0, -6.0), (9.0, 4.0, 7.0)),
        VesselSegment(1, 0.75, (20.0, 0.0, 0.0), (20.0, 15.0, 2.0)),
    )
    design = PhantomDesign(segments=segments)
    grid = ImageGrid(size_ijk=(90, 90, 70), spacing_mm=spacing, origin_mm=(-25, -25, -25), direction=direction)
    centre = grid.physical_from_index(np.array([[45, 45, 35]]))[0]
    grid = ImageGrid(grid.size_ijk, spacing, tuple(np.array(grid.origin_mm) - centre + [6, 6, 0]), direction)
    rendering = render_vessels(design, grid, subsamples=6)
    for segment in segments:
        expected = _capsule_volume_mm3(segment.radius_mm, segment.length_mm)
        assert rendering.class_volume_mm3[segment.radius_mm] == pytest.approx(expected, rel=0.01)
    total = rendering.fraction.sum() * grid.voxel_volume_mm3
    assert total == pytest.approx(sum(_capsule_volume_mm3(s.radius_mm, s.length_mm) for s in segments), rel=0.01)


def test_holder_wall_area_is_exact():
    design = default_design()
    holder = design.holder
    grid = design.default_grid((0.7, 0.7, 1.0))
    fraction = render_holder_fraction(holder, grid)
    area = fraction[0].sum() * 0.7 * 0.7
    # Area of a superellipse with semi-axes a, b and exponent n.
    from scipy.special import gamma

    def superellipse_area(a, b, n):
        return 4 * a * b * gamma(1 + 1 / n) ** 2 / gamma(1 + 2 / n)

    from scipy.integrate import quad

    a, b = holder.outer_semi_axes_mm
    t = holder.wall_thickness_mm
    n = holder.exponent
    expected = superellipse_area(a, b, n) - superellipse_area(a - t, b - t, n)
    # The base fills the cavity's posterior cap: y from the base face to the inner boundary.
    cap, _ = quad(lambda y: 2 * (a - t) * (1 - (y / (b - t)) ** n) ** (1 / n), holder.base_top_y_mm, b - t)
    expected += cap
    assert area == pytest.approx(expected, rel=0.005)


def test_object_materials(default_scanner):
    image = default_scanner.object_hu
    design = default_scanner.design
    labels = default_scanner.truth.labels
    assert np.median(image[default_scanner.vessel_core_mask(3.0)]) == pytest.approx(design.vessel_hu)
    centre_row = image[image.shape[0] // 2, image.shape[1] // 2]
    assert centre_row.max() == pytest.approx(design.holder_hu, abs=0.5)
    assert image[0, 0, 0] == pytest.approx(design.background_hu)
    assert labels.max() == len(DEFAULT_RADII_MM)


def test_truth_files_follow_the_schema(default_scanner, tmp_path):
    import SimpleITK as sitk

    write_truth(default_scanner, tmp_path)
    document = json.loads((tmp_path / "truth.json").read_text())
    assert document["coordinate_system"] == "LPS" and document["units"] == "mm"
    assert {"id", "radius_mm", "points"} <= set(document["segments"][0])
    assert len(document["segments"]) == len(default_scanner.design.segments)
    classes = document["classes"]
    assert [c["label"] for c in classes] == list(range(1, len(classes) + 1))
    assert [c["radius_mm"] for c in classes] == sorted(c["radius_mm"] for c in classes)
    assert sum(c["true_volume_ml"] for c in classes) == pytest.approx(document["total_volume_ml"], rel=1e-6)
    labels = sitk.ReadImage(str(tmp_path / "truth_labels.nrrd"))
    array = sitk.GetArrayFromImage(labels)
    assert set(np.unique(array)) == {0, *[c["label"] for c in classes]}
    # Points are in LPS mm: the first trunk point maps inside the label map on a trunk voxel.
    trunk = document["segments"][0]
    point = np.array(trunk["points"][len(trunk["points"]) // 2])
    index = labels.TransformPhysicalPointToIndex(tuple(point))
    assert array[index[2], index[1], index[0]] == classes[-1]["label"]
    # The label volume of thick classes matches the true volume.
    for c in classes:
        if c["radius_mm"] >= 2.0:
            label_ml = (array == c["label"]).sum() * np.prod(labels.GetSpacing()) / 1000
            assert label_ml == pytest.approx(c["true_volume_ml"], rel=0.03)
