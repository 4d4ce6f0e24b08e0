"""The shared widget behaviour, driven as a user would: panel, Apply rules, run, cancel, lifecycle, old Slicer.

The harness's application gives the widgets stand-in Qt widgets built from each
module's ``.ui`` (with its connections) and a QTimer the test ticks; everything else
(MRML, the parameter node, the child process through a PythonSlicer launcher) is real.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

slicer = pytest.importorskip("slicer", reason="module tests need the slicer-core wheel")

import slicer_harness  # noqa: E402
from test_slicer_modules import _load_module_source  # noqa: E402

REPOSITORY = Path(__file__).resolve().parent.parent


def _module(name: str):
    return _load_module_source(REPOSITORY / "Modules" / "Scripted" / name)


def _run_until_idle(widget, timeout_s: float = 180.0) -> None:
    deadline = time.time() + timeout_s
    while widget._job is not None:
        assert time.time() < deadline, "the job did not end"
        slicer_harness.tick()
        time.sleep(0.05)


def _cylinders(scene, dtype=None):
    import SimpleITK as sitk

    from ImagInfoExtension import bridge
    from ImagInfoExtension.phantom.cylinders import make_cylinder_phantom

    image = make_cylinder_phantom((0.75, 1.5, 3.0), copies=1, seed=2).image
    if dtype is not None:
        image = sitk.Cast(sitk.RescaleIntensity(image, 0, 255), dtype)
    return bridge.volume_node_from_sitk(image, scene, "cylinders")


@pytest.fixture
def vessel_widget():
    with slicer_harness.application((5, 12)):
        module = _module("ImagInfoVesselPhantom")
        widget = module.ImagInfoVesselPhantomWidget()
        widget.setup()
        yield widget
        widget.cleanup()


def test_every_mrml_selector_gets_the_scene(vessel_widget):
    selectors = [w for w in vars(vessel_widget.ui).values() if w.className.startswith("qMRML")]
    assert len(selectors) == 6
    assert all(w.mrmlScene is slicer.mrmlScene for w in selectors), [w.objectName for w in selectors if not w.mrmlScene]


def test_apply_is_enabled_only_for_valid_inputs_then_runs_reruns_and_cancels(vessel_widget):
    widget, scene = vessel_widget, slicer.mrmlScene
    apply = widget.ui.applyButton
    assert not apply.enabled and apply.toolTip == "Select the input volume (the phantom CT)."
    apply.click()
    assert widget._job is None, "a disabled button does nothing"
    volume = _cylinders(scene)
    widget.enter()
    assert widget._parameterNode.inputVolume is volume, "the first volume is preselected"
    assert apply.enabled
    widget._parameterNode.radii = "0.75, x"
    assert not apply.enabled and "numbers in mm" in apply.toolTip
    widget._parameterNode.radii = "0.75, 1.5, 3"
    widget._parameterNode.designFile = Path("/no/such/truth.json")
    assert not apply.enabled and "does not exist" in apply.toolTip
    widget._parameterNode.designFile = Path()
    assert apply.enabled

    apply.click()
    assert widget._job is not None and apply.text == "Cancel" and apply.enabled
    assert widget.ui.progressBar.visible
    _run_until_idle(widget)
    assert widget.ui.statusLabel.text.startswith("Total vessel volume")
    assert apply.text == "Apply" and not widget.ui.progressBar.visible
    parameters = widget._parameterNode
    table, segmentation = parameters.outputTable, parameters.outputSegmentation
    assert table.GetNumberOfRows() == 4 and segmentation.GetSegmentation().GetNumberOfSegments() >= 3
    count = scene.GetNumberOfNodes()

    apply.click()
    _run_until_idle(widget)
    assert parameters.outputTable is table and parameters.outputSegmentation is segmentation
    assert scene.GetNumberOfNodes() == count, "a re-run reuses its output nodes"

    # Inputs changed while a run goes on: the outputs still belong to the run's inputs.
    apply.click()
    job = widget._job
    other = _cylinders(scene)
    other.SetName("another volume")
    parameters.inputVolume = other
    _run_until_idle(widget)
    assert job.context["volumeNode"] is volume and parameters.outputTable is table
    assert table.GetName() == "cylinders per radius"
    parameters.inputVolume = volume
    count = scene.GetNumberOfNodes()

    apply.click()
    job = widget._job
    while job.progress.done == 0:  # cancel a child whose Python is working, not one still starting
        slicer_harness.tick()
        time.sleep(0.05)
    apply.click()  # Cancel
    assert widget.ui.statusLabel.text == "Cancelling..."
    _run_until_idle(widget)
    assert job.state == "cancelled" and widget.ui.statusLabel.text == "Cancelled; the scene is unchanged."
    assert scene.GetNumberOfNodes() == count
    with pytest.raises(ProcessLookupError):
        os.killpg(job.process.pid, 0)
    assert not job.work_dir.exists(), "the cancelled run's files are gone"


def test_a_failed_job_shows_the_childs_message_and_changes_nothing(vessel_widget):
    widget, scene = vessel_widget, slicer.mrmlScene
    import SimpleITK as sitk

    _cylinders(scene, sitk.sitkUInt8)
    widget.enter()
    count = scene.GetNumberOfNodes()
    widget.ui.applyButton.click()
    _run_until_idle(widget)
    assert widget.ui.statusLabel.text.startswith("Failed:") and "not a CT range" in widget.ui.statusLabel.text
    errors = [text for kind, text in slicer_harness.EVENTS if kind == "errorDisplay"]
    assert len(errors) == 1 and "not a CT range" in errors[0]
    assert scene.GetNumberOfNodes() == count


def test_the_widget_follows_the_template_lifecycle(vessel_widget):
    widget, scene = vessel_widget, slicer.mrmlScene
    apply = widget.ui.applyButton
    widget.exit()
    assert slicer_harness.EVENTS[-1][0] == "disconnectGui"
    _cylinders(scene)
    widget._parameterNode.inputVolume = scene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
    assert not apply.enabled, "after exit() the panel no longer follows the parameter node"
    widget.enter()
    assert slicer_harness.EVENTS[-1][0] == "connectGui" and apply.enabled
    scene.Clear(0)  # File > Close scene: StartClose, then EndClose (the parameter node is a singleton: it stays)
    assert widget._parameterNode is not None and widget._parameterNode.inputVolume is None
    assert not apply.enabled, "the closed scene has no volume"
    kinds = [kind for kind, _ in slicer_harness.EVENTS]
    assert kinds[-2:] == ["disconnectGui", "connectGui"]


def test_an_old_slicer_gets_a_sentence_not_a_traceback():
    with slicer_harness.application((5, 8)) as app:
        for name in ("ImagInfoVesselPhantom", "ImagInfoDoseComparison", "ImagInfoRadiomics", "ImagInfoSegmentation"):
            module = _module(name)
            description = getattr(module, name)(slicer_harness.ModuleParent(module.__file__))
            assert "needs 3D Slicer 5.10 or later" in description.parent.helpText
            widget = getattr(module, f"{name}Widget")()
            widget.setup()
            assert widget.ui is None and "download.slicer.org" in widget.unsupportedLabel.text
            widget.enter()
            widget.cleanup()
        assert "startupCompleted()" not in app._slots, "no sample data is registered on an unsupported Slicer"


def test_dose_widget_groups_a_dicom_folder_as_a_child_job(tiny_study, tmp_path):
    with slicer_harness.application((5, 10)):
        module = _module("ImagInfoDoseComparison")
        widget = module.ImagInfoDoseComparisonWidget()
        widget.setup()
        parameters = widget._parameterNode
        assert widget.ui.testComboBox.className == "QComboBox" and parameters.statisticalTest == "welch"
        assert not widget.ui.applyButton.enabled
        parameters.dicomFolder = tiny_study / "dicom"
        widget.ui.loadStudyButton.click()
        assert widget._job is not None and widget._job.command == "study"
        grouping = widget._job
        widget.ui.addSceneVolumesButton.click()
        assert widget._job is grouping and widget.ui.statusLabel.text.startswith("A run is in progress")
        _run_until_idle(widget)
        assert widget.ui.statusLabel.text == "6 series grouped."
        table = parameters.studyTable
        assert table.GetNumberOfRows() == 6
        assert widget.ui.studyTableView.tableNode is table, "the table view follows the selector"
        assert "output folder" in widget.ui.applyButton.toolTip
        parameters.outputFolder = tmp_path / "out"
        assert widget.ui.applyButton.enabled
        widget.cleanup()
