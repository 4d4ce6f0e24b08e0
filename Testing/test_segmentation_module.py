"""The ImagInfoSegmentation module on real MRML (slicer-core + harness): panel, child-process runs, rules, follow-up.

Two models: a tiny MONAI UNet (seeded random weights) written into a user catalogue in a
temporary cache, for the panel's plumbing (download, Apply, Cancel, batch), whose outputs
are checked against the core functions on the very label map the child wrote; and the
shipped lung-vessel phantom model, whose real inference on (a crop of) the small phantom
is checked against the phantom's truth.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip(
    "slicer", reason="module tests need the slicer-core wheel (pip install imaginfo[slicer-core])"
)
import SimpleITK as sitk  # noqa: E402
import slicer_harness  # noqa: E402

from ImagInfoExtension import bridge  # noqa: E402
from ImagInfoExtension.segmentation.weights import CACHE_VARIABLE  # noqa: E402

MODULE_NAME = "ImagInfoSegmentation"
REPOSITORY = Path(__file__).resolve().parent.parent
MODULE_DIR = REPOSITORY / "Modules" / "Scripted" / MODULE_NAME
TINY = "tiny-test-model@1.0.0"
TINY_ARGS = {"spatial_dims": 3, "in_channels": 1, "out_channels": 3, "channels": [4, 8], "strides": [2]}
VESSEL_TERMINOLOGY = {
    "category": {"scheme": "SCT", "code": "91723000", "meaning": "Anatomical Structure"},
    "type": {"scheme": "SCT", "code": "59820001", "meaning": "Blood vessel"},
}


# ----------------------------------------------------------------------------------------
# A tiny model in a user catalogue


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny UNet's weights file and its catalogue entry (weights downloadable from a file URL)."""
    torch = pytest.importorskip("torch")
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-source")
    weights = folder / "model.pt"
    torch.save(UNet(**TINY_ARGS).eval().state_dict(), weights)
    data = weights.read_bytes()
    entry = {
        "id": "tiny-test-model",
        "version": "1.0.0",
        "title": "Tiny test UNet",
        "description": "seeded random weights: plumbing only",
        "task": "segmentation",
        "modality": "CT",
        "input_channels": 1,
        "preprocessing": {
            "orientation": "RAS",
            "target_spacing_mm": None,
            "spacing_tolerance": 0.02,
            "intensity": {"clip_min": -100.0, "clip_max": 200.0, "normalisation": "range", "mean": None, "sd": None},
        },
        "network": {"format": "monai", "class": "UNet", "args": TINY_ARGS},
        "inference": {
            "roi_size": [16, 16, 16],
            "overlap": 0.25,
            "blend_mode": "gaussian",
            "sigma_scale": 0.125,
            "sw_batch_size": 4,
            "padding_mode": "constant",
            "padding_value": 0.0,
        },
        "postprocessing": {
            "activation": "softmax",
            "decision": "argmax",
            "thresholds": None,
            "largest_component": [],
            "min_component_volume_ml": 0.0,
        },
        "labels": [
            {"value": 1, "name": "thin", "color": "#ff0000", "terminology": VESSEL_TERMINOLOGY},
            {"value": 2, "name": "thick", "color": "#00ff00", "terminology": {}},
        ],
        "license": "Apache-2.0",
        "provenance": {},
        "reported_metrics": {},
        "weights": {
            "file": "model.pt",
            "format": "state_dict",
            "sha256": hashlib.sha256(data).hexdigest(),
            "size_bytes": len(data),
            "urls": [weights.as_uri()],
            "bundle": None,
        },
        "requirements": {"reference_shape": [24, 24, 20], "memory_mb": {"cpu": 40.0}, "time_s": {"cpu": 1.0}},
    }
    return {"weights": weights, "entry": entry}


def _cache(folder: Path, tiny, weights: bytes | None = None) -> Path:
    """A weights cache whose user catalogue holds the tiny model, with ``weights`` (None: none) in place."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "catalogue.json").write_text(json.dumps({"schema_version": 1, "models": [tiny["entry"]]}))
    if weights is not None:
        target = folder / "tiny-test-model" / "1.0.0" / "model.pt"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(weights)
    return folder


@pytest.fixture(scope="module")
def module(tiny, tmp_path_factory):
    """The module, loaded while the tiny model is in the catalogue (the picker lists what is there at load)."""
    from test_slicer_modules import _load_module_source

    patch = pytest.MonkeyPatch()
    patch.setenv(CACHE_VARIABLE, str(_cache(tmp_path_factory.mktemp("cache"), tiny, tiny["weights"].read_bytes())))
    yield _load_module_source(MODULE_DIR)
    patch.undo()


def _image(array: np.ndarray, spacing=(0.8, 0.8, 1.5), origin=(-10.0, 15.0, -40.0)) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    return image


def _tiny_inputs(name: str = "CT"):
    """A 24 x 24 x 20 CT-like volume and a reference segmentation named as the tiny model's labels."""
    rng = np.random.default_rng(5)
    array = np.round(rng.normal(0.0, 30.0, (20, 24, 24))).astype(np.int16)
    array[4:12, 6:14, 6:14] += 120
    image = _image(array)
    labels = np.zeros(array.shape, dtype=np.uint8)
    labels[4:12, 6:14, 6:14] = 2
    labels[14:17, 16:20, 3:21] = 1
    truth = _image(labels)
    volume = bridge.volume_node_from_sitk(image, slicer.mrmlScene, name)
    segments = [bridge.SegmentDescription(1, "Thin "), bridge.SegmentDescription(2, "thick")]
    reference = bridge.segmentation_node_from_label_map(
        truth, slicer.mrmlScene, segments, f"{name} reference", reference_volume_node=volume
    )
    return volume, reference, image, truth


def _segmentation_labels(segmentation, image, names: dict[str, int]) -> sitk.Image:
    """A segmentation node back to a label map on ``image``'s grid, each segment to the value of its name."""
    ids = [segmentation.GetSegmentation().GetNthSegmentID(n) for n in range(len(names))]
    conversion = bridge.label_map_from_segmentation_node(segmentation, image, ids)
    lookup = np.array([0] + [names[s.name] for s in conversion.segments], dtype=np.uint8)
    labels = sitk.GetImageFromArray(lookup[sitk.GetArrayViewFromImage(conversion.image)])
    labels.CopyInformation(image)
    return labels


def _nodes(class_name: str) -> list:
    collection = slicer.mrmlScene.GetNodesByClass(class_name)
    found = [collection.GetItemAsObject(n) for n in range(collection.GetNumberOfItems())]
    collection.UnRegister(None)
    return found


def _run_until_idle(widget, timeout_s: float = 180.0) -> None:
    deadline = time.time() + timeout_s
    while widget._job is not None:
        assert time.time() < deadline, "the job did not end"
        slicer_harness.tick()
        time.sleep(0.05)


# ----------------------------------------------------------------------------------------
# The panel's definition, the requirements, the self-test


def test_ui_binds_every_parameter_and_loads_with_pyside6(module):
    ui_path = MODULE_DIR / "Resources" / "UI" / f"{MODULE_NAME}.ui"
    root = ElementTree.parse(ui_path).getroot()
    bound = {}
    for widget in root.iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[prop.find("string").text] = widget.get("class")
    fields = module.ImagInfoSegmentationParameterNode.allParameters
    assert set(bound) == set(fields), "every field has a widget and every bound widget a field"
    assert bound["model"] == bound["device"] == bound["ruleMode"] == bound["connectivity"] == "QComboBox"
    assert bound["seedPoints"] == bound["inputVolume"] == "qMRMLNodeComboBox"
    assert TINY in module.MODEL_CHOICES and module.DEVICES == ["auto", "cpu", "cuda", "mps"]
    pytest.importorskip("PySide6", reason="the .ui load check needs PySide6 (pip install imaginfo[test])")
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtCore import QFile
    from PySide6.QtUiTools import QUiLoader
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication([])
    handle = QFile(str(ui_path))
    assert handle.open(QFile.ReadOnly)
    loader = QUiLoader()
    widget = loader.load(handle)
    handle.close()
    assert widget is not None, loader.errorString()
    del app


def test_torch_comes_through_the_pytorch_extension_and_pip_never_touches_it(module, monkeypatch):
    from ImagInfoExtension.bridge import pytorch
    from ImagInfoExtension.bridge import requirements as requirements_module

    requirements = module.ImagInfoSegmentationLogic().requirements()
    assert "monai>=1.4" in requirements and not any(r.lower().startswith("torch") for r in requirements)
    installs = []

    class PyTorchUtilsLogic:
        answer = None

        def installTorch(self, askConfirmation=False, torchVersionRequirement=None, **options):
            installs.append((askConfirmation, torchVersionRequirement))
            return PyTorchUtilsLogic.answer

    monkeypatch.setitem(sys.modules, "PyTorchUtils", type(sys)("PyTorchUtils"))
    sys.modules["PyTorchUtils"].PyTorchUtilsLogic = PyTorchUtilsLogic
    monkeypatch.setattr(pytorch, "torch_version", lambda: None)
    with slicer_harness.application((5, 12)):
        logic = module.ImagInfoSegmentationLogic()
        assert pytorch.TORCH_REQUIREMENT in logic.missingRequirements()
        with logic.deepLearningNotNeeded():
            assert pytorch.TORCH_REQUIREMENT not in logic.missingRequirements()
            assert logic.ensureRequirements() is True and installs == [], "rules and follow-up need no torch"
        assert logic.ensureRequirements() is False, "the user declined PyTorch Utils' offer"
        assert installs == [(True, ">=2.4")]
        # torch installed (by PyTorch Utils), monai not yet: pip_ensure installs it and skips torch.
        monkeypatch.setattr(pytorch, "torch_version", lambda: "2.13.0+cu126")

        def monai_until_installed(wanted, *lookups):
            installed = any(kind == "pip_install" for kind, _ in slicer_harness.EVENTS)
            return [] if installed else [r for r in wanted if r.startswith("monai")]

        monkeypatch.setattr(requirements_module, "missing_requirements", monai_until_installed)
        slicer_harness.ANSWERS["confirm"] = True
        ensured = []
        standin = sys.modules["slicer.packaging"].pip_ensure

        def pip_ensure(wanted, requester=None, **options):
            ensured.append((list(wanted), options))
            standin(wanted, requester=requester)

        monkeypatch.setattr(sys.modules["slicer.packaging"], "pip_ensure", pip_ensure)
        assert pytorch.ensure_torch_dependents(["monai>=1.4"], "Test") is True
        assert ensured == [(["monai>=1.4"], {"skip_packages": ["torch"]})]
        monkeypatch.setattr(pytorch, "torch_version", lambda: "2.1.0")
        with pytest.raises(RuntimeError, match="torch 2.1.0 is installed; update it in the PyTorch Utils module"):
            pytorch.ensure_torch("Test")
    with slicer_harness.application((5, 10)):
        slicer_harness.ANSWERS["confirm"] = True
        monkeypatch.setattr(pytorch, "torch_version", lambda: "2.13.0")
        assert pytorch.ensure_torch_dependents(["monai>=1.4"], "Test") is True
        asked, installed = slicer_harness.EVENTS
        assert asked[0] == "confirmOkCancelDisplay" and "monai>=1.4" in asked[1]
        assert "".join(installed[1]) == "monai>=1.4 --no-deps", "Slicer 5.10: pip must not replace torch"
        monkeypatch.setattr(pytorch, "torch_version", lambda: None)
        monkeypatch.delitem(sys.modules, "PyTorchUtils")
        with pytest.raises(RuntimeError, match="install 'PyTorch' in View > Extensions Manager"):
            pytorch.ensure_torch("Test")


def test_module_self_test_passes(module, slicer_scene):
    module.ImagInfoSegmentationTest().runTest()


def test_terminology_round_trips_and_rejects_what_slicer_cannot_store():
    from ImagInfoExtension.bridge.terminology import parse_terminology_entry, terminology_entry

    full = {
        **VESSEL_TERMINOLOGY,
        "type_modifier": {"scheme": "SCT", "code": "7771000", "meaning": "Left"},
        "anatomic_region": {"scheme": "SCT", "code": "39607008", "meaning": "Lung"},
    }
    entry = terminology_entry(full)
    assert entry.split("~")[0] == "Segmentation category and type - DICOM master list"
    assert entry.split("~")[4] == "Anatomic codes - DICOM master list" and entry.endswith("~^^")
    assert parse_terminology_entry(entry) == full
    for bad, message in (
        ({"type": VESSEL_TERMINOLOGY["type"]}, "needs a category"),
        ({**VESSEL_TERMINOLOGY, "colour": {}}, "unknown terminology keys"),
        ({**VESSEL_TERMINOLOGY, "type": {"scheme": "SCT", "code": "1", "meaning": "a~b"}}, "cannot store"),
        ({**VESSEL_TERMINOLOGY, "type": {"scheme": "", "code": "1", "meaning": "x"}}, "needs a coding scheme"),
    ):
        with pytest.raises(ValueError, match=message):
            terminology_entry(bad)


# ----------------------------------------------------------------------------------------
# Rule-based and follow-up (in-process)


def test_region_growing_from_a_point_list_takes_only_the_seeded_box(module, slicer_scene):
    array = np.full((16, 20, 20), -50, dtype=np.int16)
    array[3:9, 2:8, 2:8] = 200  # seeded
    array[3:9, 12:18, 12:18] = 200  # in the window, not connected
    array[9, 8, 8] = 200  # touches the seeded box (its voxel 8, 7, 7) only by a corner
    image = _image(array, spacing=(1.0, 1.0, 2.0))
    volume = bridge.volume_node_from_sitk(image, slicer.mrmlScene, "CT")
    points = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "seed")
    centre_lps = image.TransformContinuousIndexToPhysicalPoint((4.0, 4.0, 5.0))
    points.AddControlPoint(-centre_lps[0], -centre_lps[1], centre_lps[2])  # markups are RAS
    logic = module.ImagInfoSegmentationLogic()
    parameters = logic.getParameterNode()
    parameters.inputVolume, parameters.seedPoints = volume, points
    parameters.ruleMode, parameters.lowerHu, parameters.upperHu = "growing", 100.0, 300.0
    parameters.connectivity = "6"
    status = logic.segmentByRuleFrom(parameters)
    assert status.startswith(f"{216 * 2 / 1000:.3f} ml in 1 component(s) (216 voxels)")
    labels = bridge.label_map_from_segmentation_node(parameters.ruleSegmentation, image).image
    expected = np.zeros(array.shape, dtype=np.uint8)
    expected[3:9, 2:8, 2:8] = 1
    np.testing.assert_array_equal(sitk.GetArrayFromImage(labels), expected)
    parameters.connectivity = "26"
    logic.segmentByRuleFrom(parameters)
    assert parameters.ruleSegmentation.GetSegmentation().GetNumberOfSegments() == 1
    assert int(parameters.ruleSegmentation.GetNodeReference(module.BIOMARKERS_REFERENCE).GetCellText(0, 4)) == 217
    before = slicer.mrmlScene.GetNumberOfNodes()
    parameters.lowerHu = 250.0
    with pytest.raises(ValueError, match=r"has value 200, outside the window \[250, 300\]"):
        logic.segmentByRuleFrom(parameters)
    parameters.maskSegment = "nothing"
    parameters.maskSegmentation = parameters.ruleSegmentation
    with pytest.raises(ValueError, match="has no segment 'nothing'; its segments: grown 100 to 300 HU"):
        logic.segmentByRuleFrom(parameters)
    assert slicer.mrmlScene.GetNumberOfNodes() == before


def _head(shift_mm, lesions, seed):
    """A 48^3 1 mm head (skull, brain) with 70 HU lesions, all displaced by ``shift_mm``; image and labels."""
    k, j, i = np.indices((48, 48, 48), dtype=float)
    x, y, z = i - shift_mm[0], j - shift_mm[1], k - shift_mm[2]
    r = np.sqrt(((x - 24) / 20) ** 2 + ((y - 24) / 17) ** 2 + ((z - 24) / 18) ** 2)
    array = np.full(r.shape, -1000.0)
    array[r <= 1] = 800.0
    array[r <= 0.85] = 35.0
    labels = np.zeros(r.shape, dtype=np.uint8)
    for centre, radius in lesions:
        inside = (x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2 <= radius**2
        array[inside] = 70.0
        labels[inside] = 1
    array += np.random.default_rng(seed).normal(0.0, 5.0, array.shape)
    return _image(array.astype(np.float32), spacing=(1.0, 1.0, 1.0), origin=(0, 0, 0)), _image(
        labels, (1, 1, 1), (0, 0, 0)
    )


def test_followup_matches_a_grown_lesion_and_finds_a_new_one(module, slicer_scene):
    shift = np.array([3.0, -2.0, 1.0])
    baseline = _head(np.zeros(3), [((20.0, 22.0, 24.0), 4.0)], seed=1)
    followup = _head(shift, [((20.0, 22.0, 24.0), 5.0), ((30.0, 28.0, 22.0), 2.5)], seed=2)
    nodes = []
    for name, (image, labels) in (("baseline", baseline), ("follow-up", followup)):
        volume = bridge.volume_node_from_sitk(image, slicer.mrmlScene, name)
        segmentation = bridge.segmentation_node_from_label_map(
            labels, slicer.mrmlScene, [bridge.SegmentDescription(1, "haematoma")], f"{name} lesions", volume
        )
        nodes += [volume, segmentation]
    logic = module.ImagInfoSegmentationLogic()
    parameters = logic.getParameterNode()
    (parameters.baselineVolume, parameters.baselineSegmentation, parameters.followupVolume) = nodes[:3]
    parameters.followupSegmentation = nodes[3]
    status = logic.compareFollowupFrom(parameters)
    assert status.startswith("1 matched, 1 new, 0 vanished lesion(s)"), status
    translation = [
        float(v)
        for v in parameters.followupTable.GetAttribute(module.PROVENANCE_ATTRIBUTE + "translation_mm").split(",")
    ]
    np.testing.assert_allclose(translation, shift, atol=0.5)
    frame = bridge.dataframe_from_table_node(parameters.followupTable)
    assert frame["name"].tolist() == ["haematoma", "haematoma"] and frame["status"].tolist() == ["matched", "new"]
    base_ml = np.count_nonzero(sitk.GetArrayViewFromImage(baseline[1])) / 1000.0
    grown_ml = (
        np.count_nonzero(sitk.GetArrayViewFromImage(followup[1]) & _ball(followup[1], (20.0, 22.0, 24.0), shift, 5.0))
        / 1000.0
    )
    assert frame["baseline_volume_ml"][0] == pytest.approx(base_ml)
    assert frame["followup_volume_ml"][0] == pytest.approx(grown_ml)
    before = slicer.mrmlScene.GetNumberOfNodes()
    parameters.followupVolume = None
    with pytest.raises(ValueError, match="Select the follow-up volume"):
        logic.compareFollowupFrom(parameters)
    assert slicer.mrmlScene.GetNumberOfNodes() == before


def _ball(labels: sitk.Image, centre, shift, radius) -> np.ndarray:
    k, j, i = np.indices(labels.GetSize()[::-1], dtype=float)
    c = np.asarray(centre) + shift
    return ((i - c[0]) ** 2 + (j - c[1]) ** 2 + (k - c[2]) ** 2 <= radius**2).astype(np.uint8)


# ----------------------------------------------------------------------------------------
# Bad input of a model run


def test_bad_input_says_why_and_makes_no_node(module, slicer_scene, tiny, tmp_path, monkeypatch):
    logic = module.ImagInfoSegmentationLogic()
    parameters = logic.getParameterNode()
    parameters.model = TINY
    assert logic.applyBlocker(parameters) == "Select the input volume."
    flat = bridge.volume_node_from_sitk(_image(np.zeros((1, 12, 12), np.int16)), slicer.mrmlScene, "one slice")
    parameters.inputVolume = flat
    assert "one slice is 2D (12×12×1 voxels)" in logic.applyBlocker(parameters)
    volume, reference, _image_, _truth_ = _tiny_inputs()
    parameters.inputVolume = volume
    assert logic.applyBlocker(parameters) == ""
    parameters.referenceSegmentation = parameters.outputSegmentation = reference
    assert "output segmentation is the reference" in logic.applyBlocker(parameters)
    parameters.outputSegmentation = None
    before = slicer.mrmlScene.GetNumberOfNodes()

    monkeypatch.setenv(CACHE_VARIABLE, str(_cache(tmp_path / "empty", tiny)))
    assert "weights not present" in logic.applyBlocker(parameters)
    assert "not downloaded: click Download weights" in logic.modelDescription(TINY)
    with pytest.raises(ValueError, match="weights not present; download them with `imaginfo models fetch"):
        logic.startSegmentation(volume, TINY)
    damaged = bytearray(tiny["weights"].read_bytes())
    damaged[-1] ^= 1
    monkeypatch.setenv(CACHE_VARIABLE, str(_cache(tmp_path / "damaged", tiny, bytes(damaged))))
    assert "do not match: sha256" in logic.applyBlocker(parameters)
    with pytest.raises(ValueError, match="do not match: sha256"):
        logic.segment(volume, TINY)
    with pytest.raises(ValueError, match="is 2D"):
        logic.segment(flat, TINY)
    with pytest.raises(ValueError, match="there is no model 'no-such-model'"):
        logic.startSegmentation(volume, "no-such-model")
    segments = reference.GetSegmentation()
    segments.GetSegment(segments.GetNthSegmentID(0)).SetName("artery")
    with pytest.raises(ValueError, match=r"reference segment\(s\) \['artery'\] name no label of tiny-test-model"):
        logic.referenceLabels(reference, _image_, logic.modelEntry(TINY))
    assert slicer.mrmlScene.GetNumberOfNodes() == before, "no node was made"


def test_a_dicom_series_modality_goes_to_the_child(module, slicer_scene):
    volume, _reference, _image_, _truth_ = _tiny_inputs()
    hierarchy = slicer.mrmlScene.GetSubjectHierarchyNode()
    item = hierarchy.GetItemByDataNode(volume) or hierarchy.CreateItem(hierarchy.GetSceneItemID(), volume)
    logic = module.ImagInfoSegmentationLogic()
    job = logic.startSegmentation(volume, TINY, device="cpu")
    assert "--modality" not in job.arguments, "a volume read from a file states none"
    job.close()
    hierarchy.SetItemAttribute(item, "DICOM.Modality", "MR")
    job = logic.startSegmentation(volume, TINY, device="cpu")
    assert job.arguments[job.arguments.index("--modality") + 1] == "MR"
    job.cancel(wait=True)
    job.close()
    assert not job.work_dir.exists()


# ----------------------------------------------------------------------------------------
# The panel, driven as a user would (tiny model)


def test_panel_downloads_weights_segments_with_a_reference_cancels_and_batches(module, tiny, tmp_path, monkeypatch):
    from ImagInfoExtension.bridge.terminology import parse_terminology_entry, segment_terminology
    from ImagInfoExtension.segmentation.biomarkers import segment_biomarkers
    from ImagInfoExtension.segmentation.evaluation import evaluate_label_maps

    monkeypatch.setenv(CACHE_VARIABLE, str(_cache(tmp_path / "cache", tiny)))
    with slicer_harness.application((5, 12)):
        widget = module.ImagInfoSegmentationWidget()
        widget.setup()
        ui, parameters = widget.ui, widget._parameterNode
        assert not ui.applyButton.enabled and ui.applyButton.toolTip == "Select the input volume."
        volume, reference, image, truth = _tiny_inputs()
        widget.enter()
        parameters.model = TINY
        assert parameters.inputVolume is volume
        assert "not ready" in ui.applyButton.toolTip and not ui.applyButton.enabled
        assert ui.modelInfoLabel.text.splitlines()[:2] == [
            "Tiny test UNet",
            "tiny-test-model@1.0.0 · CT · licence Apache-2.0 · 2 labels",
        ]
        assert "Expected: CPU: about 1 s, 40 MB (for 24×24×20 voxels)" in ui.modelInfoLabel.text

        ui.downloadWeightsButton.click()
        assert widget._job is not None and widget._job.command == "models"
        _run_until_idle(widget)
        assert "weights verified" in ui.statusLabel.text, ui.statusLabel.text
        assert "verified (SHA-256)" in ui.modelInfoLabel.text and ui.applyButton.enabled

        parameters.referenceSegmentation = reference
        count = slicer.mrmlScene.GetNumberOfNodes()
        ui.applyButton.click()
        assert widget._job is not None and ui.applyButton.text == "Cancel"
        _run_until_idle(widget)
        status = ui.statusLabel.text
        assert status.startswith("tiny-test-model@1.0.0 on cpu in "), status
        segmentation, biomarkers, evaluation = (
            parameters.outputSegmentation,
            parameters.biomarkerTable,
            parameters.evaluationTable,
        )
        assert slicer.mrmlScene.GetNumberOfNodes() == count + 4, "segmentation (and its display), two tables"
        # One segment per label, with the catalogue's name, colour and terminology.
        segments = segmentation.GetSegmentation()
        assert [segments.GetNthSegment(n).GetName() for n in range(2)] == ["thin", "thick"]
        assert tuple(segments.GetSegment("thin").GetColor()) == (1.0, 0.0, 0.0)
        assert parse_terminology_entry(segment_terminology(segmentation, "thin")) == VESSEL_TERMINOLOGY
        assert "59820001" not in segment_terminology(segmentation, "thick"), "no code: Slicer's default stays"
        assert segmentation.GetAttribute(module.PROVENANCE_ATTRIBUTE + "model") == TINY
        assert segmentation.GetNodeReference(module.EVALUATION_REFERENCE) is evaluation
        # The tables hold what the core gives on the label map the child wrote.
        predicted = _segmentation_labels(segmentation, image, {"thin": 1, "thick": 2})
        rows = segment_biomarkers(predicted, image, names={1: "thin", 2: "thick"})
        frame = bridge.dataframe_from_table_node(biomarkers)
        assert frame["voxel_count"].tolist() == [row.voxel_count for row in rows]
        assert frame["volume_ml"].to_numpy() == pytest.approx([row.volume_ml for row in rows])
        expected = evaluate_label_maps(predicted, truth, labels={1: "thin", 2: "thick"})
        scored = bridge.dataframe_from_table_node(evaluation)
        assert scored["name"].tolist() == ["thin", "thick"]
        assert scored["dice"].to_numpy() == pytest.approx([row.dice for row in expected], nan_ok=True)
        assert scored["hd95_mm"].to_numpy() == pytest.approx([row.hd95_mm for row in expected], nan_ok=True)
        assert scored["true_volume_ml"].to_numpy() == pytest.approx([0.8 * 0.8 * 1.5 * n / 1000 for n in (216, 512)])
        assert "Warnings:" not in status, "the reference's names matched (case and spaces ignored)"

        # Cancel: the scene is as it was.
        count = slicer.mrmlScene.GetNumberOfNodes()
        ui.applyButton.click()
        job = widget._job
        ui.applyButton.click()
        _run_until_idle(widget)
        assert job.state == "cancelled" and ui.statusLabel.text == "Cancelled; the scene is unchanged."
        assert slicer.mrmlScene.GetNumberOfNodes() == count and not job.work_dir.exists()

        # The scene's volumes as a batch: the command and its manifest (the child is cancelled: a second model
        # load would double this test's time) ...
        parameters.batchOutputFolder = tmp_path / "batch"
        ui.batchSceneButton.click()
        job = widget._job
        arguments = job.arguments[job.arguments.index("segment") + 1 :]
        manifest = Path(arguments[arguments.index("--manifest") + 1])
        assert arguments[arguments.index("--model") + 1] == TINY and arguments[-4:-2] == ["--workers", "0"]
        assert arguments[arguments.index("--out") + 1] == str((tmp_path / "batch").resolve())
        assert manifest.read_text().splitlines() == ["case,path", f"001,{job.work_dir / 'volume_001.nrrd'}"]
        written = sitk.ReadImage(str(job.work_dir / "volume_001.nrrd"))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(written), sitk.GetArrayFromImage(image))
        ui.applyButton.click()
        _run_until_idle(widget)
        assert job.state == "cancelled" and slicer.mrmlScene.GetNumberOfNodes() == count
        # ... then the same manifest run by the batch engine in this process, and its outputs become nodes: the
        # volume's are updated (without a reference, the earlier evaluation table goes: it described another
        # run), and a cases table is added.
        from ImagInfoExtension.segmentation.run import run_segment_manifest

        sitk.WriteImage(image, str(tmp_path / "volume_001.nrrd"))
        (tmp_path / "manifest.csv").write_text(f"case,path\n001,{tmp_path / 'volume_001.nrrd'}\n")
        run_segment_manifest(tmp_path / "manifest.csv", TINY, tmp_path / "batch", workers=0)
        finished = type("FinishedJob", (), {"context": {**job.context}})()
        finished.result = lambda: widget.logic.readBatchOutputs(tmp_path / "batch")
        status = widget.logic.finishJob(finished, parameters)
        assert status == "1 of 1 case(s) segmented with tiny-test-model@1.0.0.", status
        assert slicer.mrmlScene.GetNumberOfNodes() == count + 1 - 1, "a cases table; the volume's nodes are reused"
        assert evaluation.GetScene() is None and segmentation.GetNodeReference(module.EVALUATION_REFERENCE) is None
        (cases,) = [t for t in _nodes("vtkMRMLTableNode") if t.GetName() == "Segmentation scene batch"]
        assert bridge.dataframe_from_table_node(cases)["status"].tolist() == ["ok"]
        again = _segmentation_labels(segmentation, image, {"thin": 1, "thick": 2})
        np.testing.assert_array_equal(sitk.GetArrayFromImage(again), sitk.GetArrayFromImage(predicted))
        with pytest.raises(ValueError, match="Choose a manifest CSV"):
            ui.batchManifestButton.click()
        widget.cleanup()


# ----------------------------------------------------------------------------------------
# Real inference with the shipped model


def _shipped_model():
    from ImagInfoExtension.segmentation.catalogue import read_catalogue_file, shipped_catalogue_path

    shipped = [e for e in read_catalogue_file(shipped_catalogue_path()) if e.id == "imaginfo-phantom-vessels"]
    if not shipped:
        pytest.skip(
            "the shipped model imaginfo-phantom-vessels is not in Resources/models.json yet (its MONAI bundle "
            "Resources/Models/imaginfo-phantom-vessels is trained by `make train`); this test runs once it is"
        )
    return shipped[-1]


def test_logic_segments_the_small_phantom_with_the_shipped_model(module, slicer_scene):
    from ImagInfoExtension.bridge.terminology import parse_terminology_entry, segment_terminology
    from ImagInfoExtension.geometry import ImageGrid
    from ImagInfoExtension.phantom import VirtualScanner
    from ImagInfoExtension.phantom.acquisition import AcquisitionSettings
    from ImagInfoExtension.segmentation.evaluation import evaluate_label_maps
    from ImagInfoExtension.segmentation.weights import verify_weights
    from ImagInfoExtension.truth import segment_name

    entry = _shipped_model()
    assert verify_weights(entry).ok, "the shipped weights are present and match their SHA-256"
    # The small phantom's four thickest radius classes (1.5 to 4.25 mm), in a crop (so that inference takes a
    # few seconds), scanned with a seed the model never saw, at 4 mGy.
    full = VirtualScanner(size="small").grid
    origin = full.physical_from_index(np.array([[96.0, 64.0, 40.0]]))[0]
    grid = ImageGrid(
        size_ijk=(64, 48, 64), spacing_mm=full.spacing_mm, origin_mm=tuple(origin), direction=full.direction
    )
    scanner = VirtualScanner(grid=grid, subsamples=8)
    image = scanner.acquire(AcquisitionSettings(4.0, "FBP", 1, seed=913))
    truth = grid.to_sitk(scanner.truth.labels)
    present = sorted(set(np.unique(scanner.truth.labels)) - {0})
    volume = bridge.volume_node_from_sitk(image, slicer.mrmlScene, "phantom 4 mGy")
    radius = {c.label: c.radius_mm for c in scanner.truth.classes}
    reference = bridge.segmentation_node_from_label_map(
        truth,
        slicer.mrmlScene,
        [bridge.SegmentDescription(int(v), segment_name(radius[int(v)])) for v in present],
        "phantom truth",
        reference_volume_node=volume,
    )
    logic = module.ImagInfoSegmentationLogic()
    segmentation = logic.segment(
        volume, model="imaginfo-phantom-vessels", device="auto", referenceSegmentation=reference
    )
    segments = segmentation.GetSegmentation()
    assert [segments.GetNthSegment(n).GetName() for n in range(segments.GetNumberOfSegments())] == [
        label.name for label in entry.labels
    ]
    for label in entry.labels:
        segment = segments.GetSegment(label.name)
        assert tuple(segment.GetColor()) == pytest.approx(label.color_rgb)
        if label.terminology:
            assert parse_terminology_entry(segment_terminology(segmentation, label.name)) == dict(label.terminology)
    # The evaluation table is the core's on the segmentation the node holds, and the model finds the vessels.
    predicted = _segmentation_labels(segmentation, image, {label.name: label.value for label in entry.labels})
    expected = {row.label: row for row in evaluate_label_maps(predicted, truth, labels=entry.label_names)}
    evaluation = bridge.dataframe_from_table_node(segmentation.GetNodeReference(module.EVALUATION_REFERENCE))
    assert evaluation["label"].tolist() == sorted(expected)
    dice = dict(zip(evaluation["label"], evaluation["dice"]))
    assert list(dice.values()) == pytest.approx([row.dice for row in expected.values()], nan_ok=True)
    for value in present:
        assert dice[int(value)] >= 0.8, (radius[int(value)], dice)
    biomarkers = bridge.dataframe_from_table_node(segmentation.GetNodeReference(module.BIOMARKERS_REFERENCE))
    segment_rows = biomarkers[biomarkers["scope"] == "segment"]
    assert segment_rows["voxel_count"].tolist() == [
        int(np.count_nonzero(sitk.GetArrayViewFromImage(predicted) == label.value)) for label in entry.labels
    ]
