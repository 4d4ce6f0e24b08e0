"""The MRML bridge against real MRML (slicer-core)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip(
    "slicer", reason="bridge tests need the slicer-core wheel (pip install imaginfo[slicer-core])"
)

from ImagInfoExtension import bridge  # noqa: E402
from ImagInfoExtension.bridge import SegmentDescription  # noqa: E402
from ImagInfoExtension.geometry import ImageGrid  # noqa: E402


def _oblique_grid(size=(17, 13, 9), spacing=(0.45, 0.8, 2.2), origin=(-12.5, 30.25, 7.0)) -> ImageGrid:
    a, b, c = np.deg2rad([20, -35, 10])
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return ImageGrid(size, spacing, origin, tuple((rz @ ry @ rx).ravel()))


def _corners(size):
    return [(i, j, k) for i in (0, size[0] - 1) for j in (0, size[1] - 1) for k in (0, size[2] - 1)]


def _matrix(node):
    import vtk

    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def test_oblique_anisotropic_nrrd_file_to_node_to_sitk(tmp_path):
    grid = _oblique_grid()
    array = np.random.default_rng(3).integers(-1000, 1500, grid.shape_kji).astype(np.int16)
    image = grid.to_sitk(array)
    path = tmp_path / "oblique.nrrd"
    sitk.WriteImage(image, str(path))

    scene = slicer.vtkMRMLScene()
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    node = slicer.vtkMRMLScalarVolumeNode()
    scene.AddNode(storage)
    scene.AddNode(node)
    storage.SetFileName(str(path))
    assert storage.ReadData(node)

    # Slicer's own reader and SimpleITK agree on the physical position of each corner.
    ijk_to_ras = _matrix(node)
    for corner in _corners(grid.size_ijk):
        ras = ijk_to_ras @ np.array([*corner, 1.0])
        lps = np.array(image.TransformIndexToPhysicalPoint(corner))
        assert np.allclose(ras[:3] * [-1, -1, 1], lps, atol=1e-4)

    back = bridge.sitk_from_volume_node(node)
    assert np.array_equal(sitk.GetArrayFromImage(back), array)
    assert back.GetPixelID() == sitk.sitkInt16
    for corner in _corners(grid.size_ijk):
        assert np.allclose(
            back.TransformIndexToPhysicalPoint(corner), image.TransformIndexToPhysicalPoint(corner), atol=1e-4
        )


@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.float32])
def test_sitk_to_node_to_sitk_is_exact(dtype):
    grid = _oblique_grid()
    array = (np.random.default_rng(1).random(grid.shape_kji) * 200).astype(dtype)
    image = grid.to_sitk(array)
    scene = bridge.new_scene()
    node = bridge.volume_node_from_sitk(image, scene, "volume")
    back = bridge.sitk_from_volume_node(node)
    assert back.GetPixelIDValue() == image.GetPixelIDValue()
    assert np.array_equal(sitk.GetArrayFromImage(back), array)
    assert np.allclose(back.GetOrigin(), image.GetOrigin(), atol=1e-6)
    assert np.allclose(back.GetSpacing(), image.GetSpacing(), atol=1e-6)
    assert np.allclose(back.GetDirection(), image.GetDirection(), atol=1e-6)
    assert np.allclose(_matrix(node), bridge.ijk_to_ras_from_grid(grid))


def test_linear_parent_transform_is_applied():
    image = ImageGrid((4, 4, 4), (1.0, 1.0, 1.0)).to_sitk(np.zeros((4, 4, 4), np.int16))
    scene = bridge.new_scene()
    node = bridge.volume_node_from_sitk(image, scene, "moved")
    transform = slicer.vtkMRMLLinearTransformNode()
    scene.AddNode(transform)
    import vtk

    shift = vtk.vtkMatrix4x4()
    shift.SetElement(0, 3, 5.0)  # 5 mm towards R, i.e. -5 mm in LPS x
    transform.SetMatrixTransformToParent(shift)
    node.SetAndObserveTransformNodeID(transform.GetID())
    assert np.allclose(bridge.sitk_from_volume_node(node).GetOrigin(), (-5.0, 0.0, 0.0))


def test_vector_and_4d_images_are_refused():
    scene = bridge.new_scene()
    vector = sitk.Image([4, 4, 4], sitk.sitkVectorFloat32, 3)
    with pytest.raises(ValueError, match="components per voxel"):
        bridge.volume_node_from_sitk(vector, scene, "rgb")
    four_d = sitk.Image([4, 4, 4, 3], sitk.sitkInt16)
    with pytest.raises(ValueError, match="4D"):
        bridge.volume_node_from_sitk(four_d, scene, "4d")
    assert scene.GetNodesByClass("vtkMRMLScalarVolumeNode").GetNumberOfItems() == 0, "nothing half-made"
    node = slicer.vtkMRMLVectorVolumeNode()
    scene.AddNode(node)
    with pytest.raises(ValueError, match="not a scalar volume"):
        bridge.sitk_from_volume_node(node)


def _segments(count):
    colours = [(1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (1.0, 1.0, 0.0)]
    return [SegmentDescription(label=k + 1, name=f"segment {k + 1}", color=colours[k]) for k in range(count)]


def test_segmentation_round_trip_is_exact_on_the_same_grid():
    grid = _oblique_grid()
    labels = np.zeros(grid.shape_kji, np.uint8)
    labels[2:5, 3:9, 4:12] = 1
    labels[6:8, 1:4, 1:6] = 2
    labels[1, 10:12, 13:16] = 3
    image = grid.to_sitk(labels)
    scene = bridge.new_scene()
    volume = bridge.volume_node_from_sitk(image, scene, "reference")
    node = bridge.segmentation_node_from_label_map(image, scene, _segments(4), "seg", reference_volume_node=volume)
    result = bridge.label_map_from_segmentation_node(node, volume)
    assert np.array_equal(sitk.GetArrayFromImage(result.image), labels)
    assert [s.name for s in result.segments] == [f"segment {k}" for k in range(1, 5)]
    assert [s.color for s in result.segments] == [s.color for s in _segments(4)]
    assert result.empty_segments == ["segment 4"], "the empty segment is reported, not dropped"
    assert [s.voxel_count for s in result.segments] == [int((labels == k).sum()) for k in range(1, 5)]


def test_segmentation_on_another_grid_is_resampled_nearest_neighbour():
    volume_grid = _oblique_grid(size=(30, 24, 12), spacing=(0.5, 0.5, 1.5))
    seg_grid = ImageGrid((20, 18, 10), (0.9, 0.7, 2.0), (-14.0, 28.0, 2.0))  # axis-aligned, coarser
    labels = np.zeros(seg_grid.shape_kji, np.uint8)
    labels[3:8, 4:14, 3:12] = 1
    labels[4:7, 9:16, 12:17] = 2
    seg_image = seg_grid.to_sitk(labels)
    scene = bridge.new_scene()
    volume = bridge.volume_node_from_sitk(volume_grid.to_sitk(np.zeros(volume_grid.shape_kji, np.int16)), scene, "v")
    node = bridge.segmentation_node_from_label_map(seg_image, scene, _segments(2), "seg")
    result = bridge.label_map_from_segmentation_node(node, volume)
    expected = sitk.Resample(
        seg_image,
        volume_grid.to_sitk(np.zeros(volume_grid.shape_kji, np.uint8)),
        sitk.Transform(),
        sitk.sitkNearestNeighbor,
        0,
    )
    assert np.array_equal(sitk.GetArrayFromImage(result.image), sitk.GetArrayFromImage(expected))
    assert result.image.GetSize() == volume_grid.size_ijk
    assert sitk.GetArrayFromImage(result.image).max() == 2


def test_unknown_labels_are_refused():
    image = ImageGrid((4, 4, 4), (1, 1, 1)).to_sitk(np.full((4, 4, 4), 7, np.uint8))
    with pytest.raises(ValueError, match=r"labels \[7\]"):
        bridge.segmentation_node_from_label_map(image, bridge.new_scene(), _segments(1), "seg")


def test_table_round_trip_keeps_types_and_units():
    frame = pd.DataFrame(
        {
            "recon": ["FBP", "IR", "DL"],
            "dose_mgy": [0.2, 1.0, 4.0],
            "n_voxels": np.array([10, 20, 30], dtype=np.int64),
            "label": np.array([1, 2, 3], dtype=np.int32),
            "volume_ml": np.array([1.5, 2.5, 3.5], dtype=np.float32),
            "detected": [True, False, True],
        }
    )
    scene = bridge.new_scene()
    node = bridge.table_node_from_dataframe(frame, scene, "results")
    assert node.GetColumnUnitLabel("dose_mgy") == "mGy"
    assert node.GetColumnUnitLabel("volume_ml") == "ml"
    back = bridge.dataframe_from_table_node(node)
    pd.testing.assert_frame_equal(back, frame, check_dtype=True)
    chart = bridge.chart_node_from_table(node, scene, "dose_mgy", ["volume_ml"], "Volume", log_x=True)
    assert chart.GetNumberOfPlotSeriesNodes() == 1
    series = chart.GetNthPlotSeriesNode(0)
    assert series.GetTableNode() is node and series.GetYColumnName() == "volume_ml"
    with pytest.raises(ValueError, match="no column"):
        bridge.chart_node_from_table(node, scene, "dose_mgy", ["nope"], "bad")


def test_scene_bundle_round_trip(tmp_path):
    grid = _oblique_grid()
    array = np.arange(np.prod(grid.shape_kji), dtype=np.int16).reshape(grid.shape_kji)
    scene = bridge.new_scene()
    bridge.volume_node_from_sitk(grid.to_sitk(array), scene, "ct")
    path = bridge.save_scene_bundle(scene, tmp_path / "scene.mrb")
    assert path.is_file() and not list(tmp_path.glob(".mrb-*"))
    loaded = bridge.load_scene_bundle(path)
    node = loaded.GetFirstNodeByName("ct")
    assert np.array_equal(sitk.GetArrayFromImage(bridge.sitk_from_volume_node(node)), array)
    with pytest.raises(ValueError, match=".mrb"):
        bridge.save_scene_bundle(scene, tmp_path / "scene.zip")


def _node_count(scene) -> int:
    return scene.GetNumberOfNodes()


def test_output_nodes_are_reused_on_a_rerun_and_per_input():
    from ImagInfoExtension.bridge.scenes import OutputNodes

    scene = bridge.new_scene()
    frame = pd.DataFrame({"radius_mm": [1.0, 2.0], "iqr_hu": [30.0, 20.0]})

    def run(key, values):
        with OutputNodes(scene, "Module", key) as outputs:
            table = outputs.node("table", "vtkMRMLTableNode", "per radius")
            bridge.table_node_from_dataframe(frame.assign(iqr_hu=values), scene, "", table)
            chart = outputs.node("chart", "vtkMRMLPlotChartNode", "plot")
            bridge.chart_node_from_table(table, scene, "radius_mm", ["iqr_hu"], "IQR", node=chart)
        return table, chart

    first_table, first_chart = run("volume1", [30.0, 20.0])
    count = _node_count(scene)
    table, chart = run("volume1", [40.0, 25.0])
    assert table is first_table and chart is first_chart, "a re-run on the same input updates the same nodes"
    assert _node_count(scene) == count, "no new nodes, and the chart's old series are gone"
    assert bridge.dataframe_from_table_node(table)["iqr_hu"].tolist() == [40.0, 25.0]
    assert chart.GetNumberOfPlotSeriesNodes() == 1
    other_table, _ = run("volume2", [1.0, 2.0])
    assert other_table is not first_table, "another input gets its own nodes"
    chosen = scene.AddNewNodeByClass("vtkMRMLTableNode", "chosen by the user")
    with OutputNodes(scene, "Module", "volume1") as outputs:
        assert outputs.node("table", "vtkMRMLTableNode", "x", preferred=chosen) is chosen


def test_a_failed_run_leaves_no_half_made_nodes():
    from ImagInfoExtension.bridge.scenes import OutputNodes

    grid = _oblique_grid()
    labels = np.zeros(grid.shape_kji, np.uint8)
    labels[2:5, 3:9, 4:12] = 1
    scene = bridge.new_scene()
    volume = bridge.volume_node_from_sitk(grid.to_sitk(labels), scene, "reference")
    before = _node_count(scene)
    with pytest.raises(ValueError, match="labels"), OutputNodes(scene, "Module", volume.GetID()) as outputs:
        seg = outputs.node("segmentation", "vtkMRMLSegmentationNode", "vessels")
        bridge.segmentation_node_from_label_map(grid.to_sitk(labels), scene, _segments(1), "vessels", volume, seg)
        model = outputs.node("model", "vtkMRMLModelNode", "centrelines")
        bridge.model_node_from_centerlines(np.zeros((3, 3)), np.ones(3), scene, "centrelines", node=model)
        # The last output fails: a label no segment describes.
        bridge.segmentation_node_from_label_map(grid.to_sitk(labels * 7), scene, _segments(1), "bad")
    assert _node_count(scene) == before, "every node the failed run added (with display nodes) is removed"


def test_segmentation_node_reuse_replaces_its_segments():
    grid = _oblique_grid()
    labels = np.zeros(grid.shape_kji, np.uint8)
    labels[2:5, 3:9, 4:12] = 1
    labels[6:8, 1:4, 1:6] = 2
    scene = bridge.new_scene()
    volume = bridge.volume_node_from_sitk(grid.to_sitk(labels), scene, "reference")
    node = bridge.segmentation_node_from_label_map(grid.to_sitk(labels), scene, _segments(2), "seg", volume)
    fewer = np.where(labels == 2, 0, labels).astype(np.uint8)
    again = bridge.segmentation_node_from_label_map(grid.to_sitk(fewer), scene, _segments(1), "seg", volume, node)
    assert again is node and node.GetSegmentation().GetNumberOfSegments() == 1
    back = bridge.label_map_from_segmentation_node(node, volume)
    assert np.array_equal(sitk.GetArrayFromImage(back.image), fewer)


def _roi_node(centre_ras, size_mm, angle_deg):
    roi = slicer.vtkMRMLMarkupsROINode()
    roi.SetCenterWorld(*centre_ras)
    roi.SetSizeWorld(*size_mm)
    a = np.deg2rad(angle_deg)
    rotation = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    matrix = np.eye(4)
    matrix[:3, :3] = rotation
    matrix[:3, 3] = centre_ras
    roi.SetAndObserveObjectToNodeMatrix(bridge.volumes.numpy_to_matrix(matrix))
    return roi


def test_roi_mask_tests_only_the_rois_box_and_equals_the_whole_grid_test():
    from ImagInfoExtension.bridge.markups import mask_from_roi_node
    from ImagInfoExtension.bridge.volumes import LPS_TO_RAS, matrix_to_numpy

    grid = _oblique_grid(size=(40, 36, 20))
    scene = bridge.new_scene()
    centre_lps = grid.physical_from_index(np.array([[20.0, 18.0, 10.0]]))[0]
    roi = _roi_node(centre_lps @ LPS_TO_RAS[:3, :3], (9.0, 5.0, 14.0), 30.0)
    scene.AddNode(roi)
    mask = mask_from_roi_node(roi, grid)
    # The same test on every voxel of the grid.
    size, centre = np.zeros(3), np.zeros(3)
    roi.GetSizeWorld(size)
    roi.GetCenterWorld(centre)
    axes = matrix_to_numpy(roi.GetObjectToWorldMatrix())[:3, :3]
    k, j, i = np.indices(grid.shape_kji)
    points = grid.physical_from_index(np.stack([i, j, k], axis=-1).reshape(-1, 3)) @ LPS_TO_RAS[:3, :3]
    expected = np.all(np.abs((points - centre) @ axes) <= size / 2, axis=1).reshape(grid.shape_kji)
    assert mask.any() and np.array_equal(mask, expected)
    far = _roi_node((5000.0, 5000.0, 5000.0), (10.0, 10.0, 10.0), 0.0)
    scene.AddNode(far)
    assert not mask_from_roi_node(far, grid).any()
