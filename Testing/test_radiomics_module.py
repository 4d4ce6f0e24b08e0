"""The ImagInfoRadiomics module on real MRML (slicer-core + harness): panel, in-process and child-process runs.

Images are tiny (24 x 24 x 12 voxels) and the feature families few, so that the file
stays within a few seconds beyond the child processes' start-up.
"""

from __future__ import annotations

import json
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

slicer = pytest.importorskip(
    "slicer", reason="module tests need the slicer-core wheel (pip install imaginfo[slicer-core])"
)
import SimpleITK as sitk  # noqa: E402
import slicer_harness  # noqa: E402

from ImagInfoExtension import bridge  # noqa: E402
from ImagInfoExtension.radiomics.extract import FEATURE_COLUMNS, extract_features, image_digest  # noqa: E402
from ImagInfoExtension.radiomics.settings import FAMILIES, IMAGE_TYPES, PRESET_NAMES, load_preset  # noqa: E402

MODULE_NAME = "ImagInfoRadiomics"
REPOSITORY = Path(__file__).resolve().parent.parent
MODULE_DIR = REPOSITORY / "Modules" / "Scripted" / MODULE_NAME
ATTRIBUTE = "ImagInfo.radiomics."


def _image(seed: int = 11) -> sitk.Image:
    voxels = np.round(np.random.default_rng(seed).normal(30.0, 40.0, (12, 24, 24))).astype(np.int16)
    image = sitk.GetImageFromArray(voxels)
    image.SetSpacing((1.0, 1.25, 2.0))
    image.SetOrigin((-12.0, 8.0, 30.0))
    return image


def _labels(image: sitk.Image, boxes: dict[int, tuple[slice, slice, slice]]) -> sitk.Image:
    labels = np.zeros(image.GetSize()[::-1], dtype=np.uint8)
    for label, box in boxes.items():
        labels[box] = label
    labels_image = sitk.GetImageFromArray(labels)
    labels_image.CopyInformation(image)
    return labels_image


LEFT = (slice(3, 9), slice(3, 11), slice(3, 11))
RIGHT = (slice(4, 10), slice(13, 21), slice(12, 20))


def _scene_inputs(name: str = "CT", names=("left", "right"), seed: int = 11):
    """A volume and a segmentation of two boxes drawn on it; also the SimpleITK image and label map."""
    image = _image(seed)
    labels = _labels(image, {1: LEFT, 2: RIGHT})
    volume = bridge.volume_node_from_sitk(image, slicer.mrmlScene, name)
    segments = [bridge.SegmentDescription(label=n, name=segment) for n, segment in enumerate(names, start=1)]
    segmentation = bridge.segmentation_node_from_label_map(
        labels, slicer.mrmlScene, segments, f"{name} segmentation", reference_volume_node=volume
    )
    return volume, segmentation, image, labels


def _add_segment(segmentation, image: sitk.Image, box, name: str) -> None:
    """A segment with its own binary label map, so that it may overlap the others."""
    from ImagInfoExtension.bridge.volumes import array_to_image_data, ijk_to_ras_from_grid, numpy_to_matrix
    from ImagInfoExtension.geometry import ImageGrid

    mask = np.zeros(image.GetSize()[::-1], dtype=np.uint8)
    mask[box] = 1
    oriented = array_to_image_data(mask, slicer.vtkOrientedImageData)
    oriented.SetImageToWorldMatrix(numpy_to_matrix(ijk_to_ras_from_grid(ImageGrid.from_sitk(image))))
    segment = slicer.vtkSegment()
    segment.SetName(name)
    segment.AddRepresentation(slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName(), oriented)
    segmentation.GetSegmentation().AddSegment(segment, name)


def _table_nodes() -> list:
    nodes = slicer.mrmlScene.GetNodesByClass("vtkMRMLTableNode")
    found = [nodes.GetItemAsObject(n) for n in range(nodes.GetNumberOfItems())]
    nodes.UnRegister(None)
    return found


# ----------------------------------------------------------------------------------------
# The panel's definition


def test_ui_binds_every_parameter_and_offers_every_family_preset_and_image_type(module):
    root = ElementTree.parse(MODULE_DIR / "Resources" / "UI" / f"{MODULE_NAME}.ui").getroot()
    bound = {}
    for widget in root.iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[prop.find("string").text] = widget.get("class")
    fields = module.ImagInfoRadiomicsParameterNode.allParameters
    assert set(bound) == set(fields)
    assert {f"family{f.capitalize()}" for f in FAMILIES} == set(module.FAMILY_PARAMETERS.values())
    assert all(bound[name] == "QCheckBox" for name in module.FAMILY_PARAMETERS.values())
    assert set(module.IMAGE_TYPE_PARAMETERS) == set(IMAGE_TYPES)
    assert bound["preset"] == bound["mode"] == "QComboBox"
    (kind, metadata) = fields["preset"]
    assert next(m for m in metadata if type(m).__name__ == "Choice").choices == list(PRESET_NAMES)


def test_requirements_list_what_the_engine_and_the_batch_need():
    from ImagInfoExtension.bridge.requirements import module_requirements

    needed = module_requirements(MODULE_NAME)
    assert {"scipy>=1.11", "pandas>=2.0", "scikit-image>=0.22", "PyYAML>=6"} <= set(needed)
    assert {"dask[distributed]>=2024.1", "threadpoolctl>=3.1"} <= set(needed)
    assert not any("radiomics" in r.lower() for r in needed), "pyradiomics stays optional"


def test_module_self_test_passes(module, slicer_scene):
    module.ImagInfoRadiomicsTest().runTest()


# ----------------------------------------------------------------------------------------
# In-process (the console API)


def test_extract_gives_what_extract_features_gives_on_the_same_arrays(module, slicer_scene):
    volume, segmentation, image, labels = _scene_inputs()
    # A third segment overlapping both boxes: rasterised on its own, it keeps every voxel.
    overlap_box = (slice(5, 8), slice(6, 18), slice(6, 16))
    _add_segment(segmentation, image, overlap_box, "overlap")
    logic = module.ImagInfoRadiomicsLogic()
    families = ["morph", "stat", "cm"]
    frame = logic.extract(volume, segmentation, preset="ibsi-C", families=families, createTable=False)
    assert list(pd.unique(frame["segment"])) == ["left", "right", "overlap"], "one row group per segment, in order"
    settings = load_preset("ibsi-C").with_changes(families=tuple(families))
    direct = extract_features(image, labels, settings, case="CT", segment_names={1: "left", 2: "right"}).frame()
    pd.testing.assert_frame_equal(frame[frame["segment"] != "overlap"].reset_index(drop=True), direct)
    alone = extract_features(image, _labels(image, {1: overlap_box}), settings, case="CT", segment_names={1: "overlap"})
    pd.testing.assert_frame_equal(frame[frame["segment"] == "overlap"].reset_index(drop=True), alone.frame())
    assert frame.attrs["provenance"]["settings_sha256"] == settings.digest()
    assert frame.attrs["failures"] == []


def test_per_lesion_splits_a_two_blob_segment(module, slicer_scene):
    image = _image()
    blobs = _labels(image, {1: LEFT})
    both = sitk.GetArrayFromImage(blobs)
    both[RIGHT] = 1
    blobs = sitk.GetImageFromArray(both)
    blobs.CopyInformation(image)
    volume = bridge.volume_node_from_sitk(image, slicer.mrmlScene, "CT")
    segmentation = bridge.segmentation_node_from_label_map(
        blobs, slicer.mrmlScene, [bridge.SegmentDescription(1, "nodules")], "nodules", reference_volume_node=volume
    )
    logic = module.ImagInfoRadiomicsLogic()
    frame, table = logic.extract(volume, segmentation, perLesion=True, families=["stat"], preset="ct")
    assert sorted(frame["lesion"].unique()) == ["1", "2"]
    assert frame.groupby("lesion").size().nunique() == 1, "each lesion gets the same features"
    lesions = pd.DataFrame(frame.attrs["lesions"])
    assert sorted(lesions["voxel_count"]) == [6 * 8 * 8, 6 * 8 * 8]
    assert table.GetAttribute(ATTRIBUTE + "per_lesion") == "true"
    lesion_tables = [t for t in _table_nodes() if t.GetName().endswith("lesions")]
    assert len(lesion_tables) == 1 and lesion_tables[0].GetNumberOfRows() == 2
    # Without per-lesion the same inputs give one row group, and the stale lesion table goes.
    frame, again = logic.extract(volume, segmentation, families=["stat"], preset="ct")
    assert again is table and set(frame["lesion"]) == {""}
    assert not [t for t in _table_nodes() if t.GetName().endswith("lesions")]


def test_settings_follow_the_panel_and_reach_the_child_unchanged(module, slicer_scene, tmp_path):
    logic = module.ImagInfoRadiomicsLogic()
    settings, base = logic.settingsFor("ibsi-C")
    assert settings is base or settings == base
    assert logic.settingsArguments(settings, base, "ibsi-C", None, tmp_path) == ["--preset", "ibsi-C", "--mode", "ibsi"]
    image_types = {"Original": {}, "LoG": {"sigma_mm": [1.0, 2.0]}}
    settings, base = logic.settingsFor("ct", families=["cm", "stat"], imageTypes=image_types)
    assert settings.families == ("stat", "cm"), "the families keep the engine's order"
    assert settings.image_types == image_types and settings.name == "ct-custom"
    arguments = logic.settingsArguments(settings, base, "ct", None, tmp_path)
    assert arguments == ["--params", str(tmp_path / "ct-custom.json")]
    from ImagInfoExtension.radiomics.settings import load_parameter_file

    assert load_parameter_file(arguments[1]) == settings, "the child reads back exactly these settings"
    with pytest.raises(ValueError, match="none of the feature classes"):
        logic.settingsFor("ct", families=["nothing"])
    parameters = logic.getParameterNode()
    assert logic.applyBlocker(parameters) == "Select the volume."
    volume, segmentation, _image_, _labels_ = _scene_inputs()
    logic.setDefaultParameters(parameters)
    assert parameters.inputVolume is volume and parameters.inputSegmentation is segmentation
    assert logic.applyBlocker(parameters) == ""
    parameters.imageOriginal = False
    assert "image type" in logic.applyBlocker(parameters)
    parameters.imageLoG = True
    parameters.logSigmasMm = "1, x"
    assert "numbers in mm" in logic.applyBlocker(parameters)
    parameters.logSigmasMm = "0.5 1.5"
    assert logic.applyBlocker(parameters) == ""
    assert logic.settingsChoicesFrom(parameters)["imageTypes"] == {"LoG": {"sigma_mm": [0.5, 1.5]}}
    for name in module.FAMILY_PARAMETERS.values():
        setattr(parameters, name, False)
    assert logic.applyBlocker(parameters) == "Tick at least one feature class."
    parameters.familyCm = True
    parameters.parameterFile = tmp_path / "missing.yaml"
    assert "does not exist" in logic.applyBlocker(parameters)


def test_pyradiomics_mode_is_offered_only_where_pyradiomics_is(module, slicer_scene, monkeypatch):
    from importlib import metadata

    def absent(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", absent)
    logic = module.ImagInfoRadiomicsLogic()
    available, message = logic.pyradiomicsStatus()
    assert not available
    assert "SlicerRadiomics" in message and "macOS" in message and "--no-build-isolation pyradiomics" in message
    volume, segmentation, _image_, _labels_ = _scene_inputs()
    parameters = logic.getParameterNode()
    parameters.inputVolume, parameters.inputSegmentation = volume, segmentation
    parameters.mode = "pyradiomics"
    assert logic.applyBlocker(parameters) == message
    # Where pyradiomics is, the mode runs pyradiomics parameter files (it would ignore a preset's IBSI chain).
    logic._pyradiomicsStatus = (True, "pyradiomics v3.0.1")
    assert "choose one" in logic.applyBlocker(parameters)
    with pytest.raises(ValueError, match="pyradiomics does not run"):
        logic.settingsFor("ct", mode="pyradiomics")


def test_scene_pairs_follow_the_reference_geometry_then_the_name(module, slicer_scene):
    drawn_on, segmentation, image, labels = _scene_inputs("CT")
    other = bridge.volume_node_from_sitk(image, slicer.mrmlScene, "PET")
    named = bridge.segmentation_node_from_label_map(
        labels, slicer.mrmlScene, [bridge.SegmentDescription(1, "a"), bridge.SegmentDescription(2, "b")], "PET seg"
    )
    stray = _labels(image, {1: LEFT})
    bridge.segmentation_node_from_label_map(stray, slicer.mrmlScene, [bridge.SegmentDescription(1, "a")], "stray")
    bridge.volume_node_from_sitk(labels, slicer.mrmlScene, "CT labels", label_map=True)
    pairs = module.ImagInfoRadiomicsLogic().scenePairs()
    assert [(v.GetID(), s.GetID()) for v, s in pairs] == [
        (drawn_on.GetID(), segmentation.GetID()),
        (other.GetID(), named.GetID()),
    ]


# ----------------------------------------------------------------------------------------
# The child process (the panel's way)


def test_child_run_over_scene_pairs_reports_an_empty_segment_and_fills_a_table(module, slicer_scene):
    volume, segmentation, _image_, _labels_ = _scene_inputs("CT")
    segmentation.GetSegmentation().AddEmptySegment("empty", "empty")
    second, second_segmentation, _image2, _labels2 = _scene_inputs("PET", names=("a", "b"), seed=12)
    logic = module.ImagInfoRadiomicsLogic()
    families = ["stat", "cm"]
    before = slicer.mrmlScene.GetNumberOfNodes()
    outputs = logic.extractInBackground(pairs=logic.scenePairs(), preset="ibsi-C", families=families, workers=0)
    features, failures = outputs["features"], outputs["failures"]
    assert features.groupby("case")["segment"].unique().map(list).to_dict() == {
        "CT": ["left", "right"],
        "PET": ["a", "b"],
    }
    assert failures["segment"].tolist() == ["empty"] and "empty" in failures["error"].iloc[0]
    # The same values as in this process.
    in_process = logic.extract(volume, segmentation, preset="ibsi-C", families=families, createTable=False)
    pd.testing.assert_frame_equal(features[features["case"] == "CT"].reset_index(drop=True), in_process)
    assert in_process.attrs["failures"][0]["segment"] == "empty"
    table = outputs["table"]
    assert table.GetNumberOfRows() == len(features)
    assert slicer.mrmlScene.GetNumberOfNodes() == before + 1, "one table node, nothing else"
    frame = bridge.dataframe_from_table_node(table)
    assert frame["value"].to_numpy() == pytest.approx(features["value"].to_numpy(), nan_ok=True)
    attributes = {
        n[len(ATTRIBUTE) :]: table.GetAttribute(n) for n in table.GetAttributeNames() if n.startswith(ATTRIBUTE)
    }
    settings = load_preset("ibsi-C").with_changes(families=("stat", "cm"))
    assert attributes["engine"] == "ImagInfo IBSI-1 engine" and attributes["engine_version"]
    assert attributes["mode"] == "ibsi" and attributes["settings_name"] == "ibsi-C-custom"
    assert attributes["settings_sha256"] == settings.digest()
    assert json.loads(attributes["settings"])["families"] == ["stat", "cm"]
    hashes = attributes["image_sha256"].split(",")
    images = [image_digest(bridge.sitk_from_volume_node(v)) for v in (volume, second)]
    assert hashes == images, "the child's image hashes are those of the volumes' voxels and geometry"
    inputs = json.loads(attributes["inputs"])
    assert [(i["volume_id"], i["segmentation_id"]) for i in inputs] == [
        (volume.GetID(), segmentation.GetID()),
        (second.GetID(), second_segmentation.GetID()),
    ]
    assert inputs[0]["segments"] == ["left", "right", "empty"] and attributes["failed_rois"] == "1"
    status = logic.statusText(outputs)
    assert status.startswith(f"{len(features)} values of 4 ROI(s)") and "'empty'" in status


def test_cancel_leaves_no_table_node(module, slicer_scene):
    from ImagInfoExtension.progress import Cancelled

    volume, segmentation, _image_, _labels_ = _scene_inputs()
    logic = module.ImagInfoRadiomicsLogic()
    before = slicer.mrmlScene.GetNumberOfNodes()
    job = logic.extractInBackground(pairs=[(volume, segmentation)], families=["stat"], workers=0, wait=False)
    job.cancel(wait=True)
    assert job.state == "cancelled"
    with pytest.raises(Cancelled):
        job.result()
    job.close()
    assert slicer.mrmlScene.GetNumberOfNodes() == before and not _table_nodes()
    assert not job.work_dir.exists(), "the cancelled run's files are gone"


# ----------------------------------------------------------------------------------------
# The panel, driven as a user would


def _run_until_idle(widget, timeout_s: float = 120.0) -> None:
    deadline = time.time() + timeout_s
    while widget._job is not None:
        assert time.time() < deadline, "the job did not end"
        slicer_harness.tick()
        time.sleep(0.05)


def test_panel_runs_saves_csv_and_batches(tmp_path):
    from test_slicer_modules import _load_module_source

    with slicer_harness.application((5, 12)):
        module = _load_module_source(MODULE_DIR)
        widget = module.ImagInfoRadiomicsWidget()
        widget.setup()
        ui, parameters = widget.ui, widget._parameterNode
        assert ui.modeComboBox.enabled == widget.logic.pyradiomicsStatus()[0]
        assert bool(ui.pyradiomicsLabel.text) != ui.modeComboBox.enabled
        assert not ui.applyButton.enabled and ui.applyButton.toolTip == "Select the volume."
        volume, segmentation, _image_, _labels_ = _scene_inputs()
        widget.enter()
        assert parameters.inputVolume is volume and parameters.inputSegmentation is segmentation
        for name in module.FAMILY_PARAMETERS.values():
            setattr(parameters, name, name in ("familyStat", "familyNgt"))
        assert ui.applyButton.enabled
        ui.applyButton.click()
        assert widget._job is not None and ui.applyButton.text == "Cancel"
        _run_until_idle(widget)
        assert " values of 2 ROI(s) (ibsi mode, settings ct-custom)" in ui.statusLabel.text
        table = parameters.outputTable
        assert table is not None and table.GetAttribute(ATTRIBUTE + "settings_name") == "ct-custom"
        families = {c.split("_", 1)[0] for c in bridge.dataframe_from_table_node(table)["feature"]}
        assert families == {"stat", "ngt"}

        with pytest.raises(ValueError, match="Choose the CSV file"):
            ui.saveCsvButton.click()  # Slicer shows the error (and logs the traceback)
        assert "Choose the CSV file" in slicer_harness.EVENTS[-1][1]
        parameters.csvFile = tmp_path / "features"
        ui.saveCsvButton.click()
        saved = pd.read_csv(tmp_path / "features.csv")
        assert len(saved) == table.GetNumberOfRows() and list(saved.columns)[:3] == ["case", "segment", "lesion"]
        sidecar = json.loads((tmp_path / "features.provenance.json").read_text())
        assert sidecar["settings_sha256"] == table.GetAttribute(ATTRIBUTE + "settings_sha256")

        # Batch: the scene's pairs start a job that Cancel stops without a new node.
        count = slicer.mrmlScene.GetNumberOfNodes()
        ui.batchSceneButton.click()
        job = widget._job
        assert job is not None and "--manifest" in job.arguments
        ui.applyButton.click()
        _run_until_idle(widget)
        assert job.state == "cancelled" and ui.statusLabel.text == "Cancelled; the scene is unchanged."
        assert slicer.mrmlScene.GetNumberOfNodes() == count
        # A manifest of files goes to the child as it is.
        with pytest.raises(ValueError, match="Choose a manifest CSV"):
            ui.batchManifestButton.click()
        assert widget._job is None and "Choose a manifest CSV" in slicer_harness.EVENTS[-1][1]
        manifest = tmp_path / "study.csv"
        manifest.write_text("case,image,mask\n")
        parameters.batchManifest = manifest
        parameters.workers = 2
        ui.batchManifestButton.click()
        job = widget._job
        assert job.arguments[job.arguments.index("--manifest") + 1] == str(manifest.resolve())
        assert job.arguments[job.arguments.index("--workers") + 1] == "2"
        ui.applyButton.click()
        _run_until_idle(widget)
        assert job.state == "cancelled" and slicer.mrmlScene.GetNumberOfNodes() == count
        widget.cleanup()


def test_pyradiomics_mode_runs_a_pyradiomics_parameter_file(module, slicer_scene, tmp_path):
    logic = module.ImagInfoRadiomicsLogic()
    available, message = logic.pyradiomicsStatus()
    if not available:
        pytest.skip(f"pyradiomics is not importable here: {message}")
    parameters = tmp_path / "pyradiomics.yaml"
    parameters.write_text("setting:\n  binWidth: 25\nimageType:\n  Original: {}\nfeatureClass:\n  firstorder: []\n")
    volume, segmentation, _image_, _labels_ = _scene_inputs()
    frame, table = logic.extract(volume, segmentation, parameterFile=parameters, mode="pyradiomics", families=["cm"])
    assert set(frame["feature_class"]) == {"firstorder"}, "the file's featureClass decides, not the check boxes"
    assert frame.groupby("segment").size().to_dict() == {"left": 18, "right": 18}
    assert table.GetAttribute(ATTRIBUTE + "engine") == "pyradiomics"
    assert table.GetAttribute(ATTRIBUTE + "mode") == "pyradiomics"


# ----------------------------------------------------------------------------------------
# Reproducibility (in-process, as `imaginfo radiomics-robustness`)

GROUP_BY = ["recon", "dose_mgy"]
CONDITIONS = [("FBP", 4.0), ("IR", 4.0), ("FBP", 1.0)]


def _reproducibility_features(seed: int = 5) -> pd.DataFrame:
    """A tidy table of 10 ROIs under 3 recon x dose conditions: ``stat_mean`` follows the ROI (robust),
    ``stat_noise`` is drawn anew under each condition."""
    rng = np.random.default_rng(seed)
    truth = rng.normal(100.0, 20.0, 10)
    rows = []
    for recon, dose in CONDITIONS:
        case = f"{recon} {dose:g} mGy"
        for number, value in enumerate(truth):
            for feature, measured in (("stat_mean", value + rng.normal(0.0, 0.5)), ("stat_noise", rng.normal(100, 20))):
                rows.append([case, f"roi{number}", "", "original", "stat", feature, measured, feature, recon, dose])
    return pd.DataFrame(rows, columns=[*FEATURE_COLUMNS, *GROUP_BY])


def test_robustness_is_feature_robustness_from_a_frame_a_table_or_a_csv(module, slicer_scene, tmp_path):
    from ImagInfoExtension.radiomics.robustness import feature_ccc, feature_robustness

    features = _reproducibility_features()
    reference = {"recon": "FBP", "dose_mgy": 4.0}
    direct = feature_robustness(features, GROUP_BY, reference, ccc_threshold=0.9)
    assert direct["robust"].tolist() == [True, False]
    logic = module.ImagInfoRadiomicsLogic()
    summary, table = logic.robustness(
        features, groupBy=GROUP_BY, reference={"recon": "FBP", "dose_mgy": "4.0"}, cccThreshold=0.9
    )
    pd.testing.assert_frame_equal(summary, direct)
    assert table.GetNumberOfRows() == 2 and table.GetName() == "Radiomics robustness"
    assert bridge.dataframe_from_table_node(table)["robust"].tolist() == [True, False]
    ccc_table = table.GetNodeReference(module.CCC_TABLE_REFERENCE)
    ccc = bridge.dataframe_from_table_node(ccc_table)
    expected = feature_ccc(features, GROUP_BY, reference)
    assert ccc["condition"].tolist() == expected["condition"].tolist() and len(ccc) == 2 * 2
    assert ccc["ccc"].to_numpy() == pytest.approx(expected["ccc"].to_numpy())
    assert table.GetAttribute(module.ROBUSTNESS_ATTRIBUTE + "group_by") == '["recon", "dose_mgy"]'
    assert table.GetAttribute(module.ROBUSTNESS_ATTRIBUTE + "ccc_threshold") == "0.9"
    count = slicer.mrmlScene.GetNumberOfNodes()
    _summary, again = logic.robustness(features, GROUP_BY, {"recon": "FBP", "dose_mgy": 4}, cccThreshold=0.95)
    assert again is table and slicer.mrmlScene.GetNumberOfNodes() == count, "a re-run updates both tables"

    # A table node (the panel's text fields as they are typed) and a CSV give the same summary.
    node = bridge.table_node_from_dataframe(features, slicer.mrmlScene, "study features")
    typed = logic.robustness(node, "recon, dose_mgy", "recon=FBP, dose_mgy=4.0", cccThreshold=0.9, createTable=False)
    pd.testing.assert_frame_equal(typed, direct)
    features.to_csv(tmp_path / "features.csv", index=False)
    from_csv = logic.robustness(tmp_path / "features.csv", GROUP_BY, "recon=FBP,dose_mgy=4", createTable=False)
    pd.testing.assert_frame_equal(from_csv, direct)
    assert slicer.mrmlScene.GetNumberOfNodes() == count + 1, "createTable=False makes no node"


def test_bad_reproducibility_input_says_why_and_adds_no_node(module, slicer_scene, tmp_path):
    features = _reproducibility_features()
    logic = module.ImagInfoRadiomicsLogic()
    before = slicer.mrmlScene.GetNumberOfNodes()
    with pytest.raises(ValueError, match=r"group_by names 'scanner', which is not a column.*recon, dose_mgy"):
        logic.robustness(features, ["scanner"], {"scanner": "A"})
    with pytest.raises(ValueError, match=r"reference recon='OSEM' is not in the table.*FBP, IR"):
        logic.robustness(features, GROUP_BY, "recon=OSEM, dose_mgy=4.0")
    with pytest.raises(ValueError, match="write column=value pairs"):
        logic.robustness(features, GROUP_BY, "recon FBP")
    with pytest.raises(ValueError, match="does not exist"):
        logic.robustness(tmp_path / "missing.csv", GROUP_BY, "recon=FBP, dose_mgy=4.0")
    assert slicer.mrmlScene.GetNumberOfNodes() == before and not _table_nodes()


def test_panel_analyses_a_manifest_batch_table(tmp_path):
    from test_slicer_modules import _load_module_source

    from ImagInfoExtension.radiomics.extract import FAILURE_COLUMNS, LESION_COLUMNS

    with slicer_harness.application((5, 12)):
        module = _load_module_source(MODULE_DIR)
        widget = module.ImagInfoRadiomicsWidget()
        widget.setup()
        ui, parameters = widget.ui, widget._parameterNode
        assert parameters.robustnessCccThreshold == pytest.approx(0.9)
        ui.robustnessButton.click()
        assert ui.statusLabel.text == "Not analysed: Choose the feature table (or a features CSV) to analyse."
        # A finished manifest batch (its factors read back as text) becomes the section's input.
        features = _reproducibility_features().astype({"dose_mgy": str})
        outputs = {
            "features": features,
            "failures": pd.DataFrame(columns=list(FAILURE_COLUMNS)),
            "lesions": pd.DataFrame(columns=list(LESION_COLUMNS)),
            "provenance": {"engine": "ImagInfo IBSI-1 engine", "settings_name": "ct", "warnings": []},
        }
        job = type("FinishedJob", (), {"context": {"key": "manifest:study.csv", "name": "Radiomics study"}})()
        job.result = lambda: outputs
        widget.logic.finishJob(job, parameters)
        assert parameters.robustnessFeatures is parameters.outputTable is not None
        count = slicer.mrmlScene.GetNumberOfNodes()
        parameters.robustnessGroupBy = "recon, scanner"
        parameters.robustnessReference = "recon=FBP, scanner=A"
        ui.robustnessButton.click()
        assert ui.statusLabel.text.startswith("Not analysed: group_by names 'scanner', which is not a column")
        assert slicer.mrmlScene.GetNumberOfNodes() == count, "no half-made table"
        assert "errorDisplay" not in [kind for kind, _ in slicer_harness.EVENTS], "the reason is in the status"
        parameters.robustnessGroupBy = "recon, dose_mgy"
        parameters.robustnessReference = "recon=FBP, dose_mgy=4.0"
        ui.robustnessButton.click()
        assert ui.statusLabel.text == "1 of 2 features robust (CCC ≥ 0.90 in every condition)."
        assert slicer.mrmlScene.GetNumberOfNodes() == count + 2
        summary = next(t for t in _table_nodes() if t.GetName() == "Radiomics study robustness")
        assert summary.GetAttribute(ATTRIBUTE + "settings_name") == "ct", "the features' provenance is kept"
        widget.cleanup()
