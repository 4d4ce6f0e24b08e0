"""The ImagInfoVesselPhantom module's Logic and self-test on real MRML (slicer-core + harness)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("slicer", reason="module tests need the slicer-core wheel (pip install imaginfo[slicer-core])")

MODULE_NAME = "ImagInfoVesselPhantom"


def test_module_self_test_passes(module, slicer_scene):
    test = module.ImagInfoVesselPhantomTest()
    test.runTest()


def test_parameter_node_drives_the_logic(module, slicer_scene):
    slicer = slicer_scene
    from ImagInfoExtension import bridge
    from ImagInfoExtension.phantom.cylinders import make_cylinder_phantom

    phantom = make_cylinder_phantom((1.0, 3.0), copies=2, seed=4)
    volume = bridge.volume_node_from_sitk(phantom.image, slicer.mrmlScene, "cylinders")
    logic = module.ImagInfoVesselPhantomLogic()
    parameters = logic.getParameterNode()
    assert parameters.vesselHU == 100.0 and parameters.sensitivity == 0.25
    parameters.inputVolume = volume
    parameters.radii = "1, 3"
    inputs = logic.inputsFromParameterNode(parameters)
    assert inputs["radii_mm"] == [1.0, 3.0] and inputs["truth"] is None
    result = logic.quantify(**inputs)
    assert result.per_radius["radius_mm"].dropna().tolist() == [1.0, 3.0]
    parameters.radii = "1, x"
    with pytest.raises(ValueError, match="numbers in mm"):
        logic.inputsFromParameterNode(parameters)


def test_roi_restricts_the_search(module, slicer_scene):
    slicer = slicer_scene
    from ImagInfoExtension import bridge
    from ImagInfoExtension.phantom.cylinders import make_cylinder_phantom
    from ImagInfoExtension.vessels import truth_from_design

    phantom = make_cylinder_phantom((2.0,), copies=2, seed=9)
    volume = bridge.volume_node_from_sitk(phantom.image, slicer.mrmlScene, "cylinders")
    first = phantom.design.segments[0]
    centre_lps = (np.asarray(first.start_mm) + np.asarray(first.end_mm)) / 2
    roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "box")
    roi.SetCenter(*(centre_lps * np.array([-1.0, -1.0, 1.0])))
    roi.SetSize(30.0, 30.0, 30.0)
    logic = module.ImagInfoVesselPhantomLogic()
    truth = truth_from_design(phantom.design)
    whole = logic.quantify(volume, truth=truth)
    boxed = logic.quantify(volume, truth=truth, roi=roi)
    assert whole.per_radius.loc[0, "detection_rate"] > 0.95
    # Only the cylinder inside the box is found: half the centreline.
    assert boxed.per_radius.loc[0, "detection_rate"] == pytest.approx(0.5, abs=0.05)
    assert boxed.total_volume_ml == pytest.approx(whole.total_volume_ml / 2, rel=0.1)


def test_design_segmentation_is_a_truth(module, slicer_scene, tmp_path):
    slicer = slicer_scene
    from ImagInfoExtension import bridge
    from ImagInfoExtension.phantom import VirtualScanner
    from ImagInfoExtension.phantom.design import DEFAULT_RADII_MM
    from ImagInfoExtension.vessels import load_truth

    scanner = VirtualScanner(size="small")
    labels = scanner.truth.label_image()
    segments = [
        bridge.SegmentDescription(label=row["label"], name=row["name"], color=tuple(row["color"]))
        for row in scanner.truth.segment_table()
    ]
    volume = bridge.volume_node_from_sitk(labels, slicer.mrmlScene, "grid")
    design = bridge.segmentation_node_from_label_map(labels, slicer.mrmlScene, segments, "design", volume)
    logic = module.ImagInfoVesselPhantomLogic()
    arguments = logic.designArguments(design, volume, None, tmp_path)
    assert arguments[0] == "--truth" and arguments[2] == "--radii"
    radii = [float(r) for r in arguments[3].split(",")]
    assert radii == list(DEFAULT_RADII_MM), "each segment's name gives its radius"
    truth = load_truth(arguments[1], radii)
    lengths = scanner.design.centerline_length_mm()
    # Skeleton length of the label map approximates the design's centreline length.
    assert truth.length_mm(4.25) == pytest.approx(lengths[4.25], rel=0.35)
    design.GetSegmentation().GetNthSegment(0).SetName("first")
    with pytest.raises(ValueError, match="does not name its radius"):
        logic.designArguments(design, volume, None, tmp_path)


def test_sample_data_is_registered_cheaply_and_generated_on_demand(module, tmp_path):
    import slicer_harness

    with slicer_harness.application((5, 12)) as app:
        module.ImagInfoVesselPhantom(slicer_harness.ModuleParent(module.__file__))
        assert not slicer_harness.EVENTS, "nothing happens before Slicer has started"
        app.emit("startupCompleted()")
        ((kind, registered),) = slicer_harness.EVENTS
        assert kind == "registerCustomSampleDataSource"
        assert registered["loadFileTypes"] == ["VolumeFile", "SegmentationFile"]
        assert callable(registered["customDownloader"]) and Path(registered["thumbnailFileName"]).is_file()
        for uri, name in zip(registered["uris"], registered["fileNames"], strict=True):
            assert uri.startswith("file://") and uri.endswith(name)

        import slicer

        before = slicer.mrmlScene.GetNumberOfNodes()
        nodes = module.SAMPLE.load(folder=tmp_path / "ImagInfo", scene=slicer.mrmlScene)
    written = {p.name for p in (tmp_path / "ImagInfo").iterdir()}
    assert set(module.SAMPLE.file_names) <= written, "the registration names the files imaginfo sample writes"
    volume, truth = nodes
    assert [volume.GetName(), truth.GetName()] == list(module.SAMPLE.node_names)
    assert volume.GetImageData().GetDimensions()[2] > 10
    segmentation = truth.GetSegmentation()
    names = [segmentation.GetNthSegment(n).GetName() for n in range(segmentation.GetNumberOfSegments())]
    assert names[0] == "vessel r=0.1 mm" and len(names) == 9
    assert slicer.mrmlScene.GetNumberOfNodes() > before
    stamp = (tmp_path / "ImagInfo" / module.SAMPLE.file_names[0]).stat().st_mtime_ns
    module.SAMPLE.generate(tmp_path / "ImagInfo")
    assert (tmp_path / "ImagInfo" / module.SAMPLE.file_names[0]).stat().st_mtime_ns == stamp, "generated once"
