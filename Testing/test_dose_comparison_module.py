"""The ImagInfoDoseComparison module's Logic and self-test on real MRML (slicer-core + harness)."""

from __future__ import annotations

import pytest

pytest.importorskip("slicer", reason="module tests need the slicer-core wheel (pip install imaginfo[slicer-core])")

MODULE_NAME = "ImagInfoDoseComparison"


@pytest.fixture(scope="module")
def small_study(tmp_path_factory):
    from ImagInfoExtension.phantom.study import StudyRequest, generate_study

    folder = tmp_path_factory.mktemp("dose_module")
    generate_study(StudyRequest(doses_mgy=(1.0,), recons=("FBP", "DL"), repetitions=2, size="small"), folder)
    return folder


def test_module_self_test_passes(module, slicer_scene):
    module.ImagInfoDoseComparisonTest().runTest()


def test_parameter_node_drives_the_logic_and_edits_count(module, slicer_scene, small_study, tmp_path):
    logic = module.ImagInfoDoseComparisonLogic()
    parameters = logic.getParameterNode()
    parameters.manifestFile = str(small_study / "manifest.csv")
    parameters.outputFolder = str(tmp_path / "out")
    table, unmatched = logic.studyFromParameterNode(parameters)
    assert table.GetNumberOfRows() == 4 and unmatched.empty
    parameters.studyTable = table
    # The user relabels a series in the table; the run uses the edited grouping.
    recon_column = table.GetTable().GetColumnByName("recon")
    edited_row = next(r for r in range(4) if recon_column.GetValue(r) == "DL")
    recon_column.SetValue(edited_row, "DLR")
    inputs = logic.inputsFromParameterNode(parameters)
    assert sorted(inputs["study"]["recon"].unique()) == ["DL", "DLR", "FBP"]
    result = logic.compare(**inputs)
    assert set(result.iq["recon"]) == {"DL", "DLR", "FBP"}
    nodes = logic.createOutputNodes(result)
    assert nodes["charts"]["iqr_hu"].GetNumberOfPlotSeriesNodes() == 3


def test_empty_study_table_is_refused_with_the_fix(module, slicer_scene, tmp_path):
    logic = module.ImagInfoDoseComparisonLogic()
    parameters = logic.getParameterNode()
    parameters.outputFolder = str(tmp_path)
    with pytest.raises(ValueError, match="study table is empty"):
        logic.inputsFromParameterNode(parameters)


def test_cancel_keeps_finished_series_and_leaves_the_scene(module, slicer_scene, small_study, tmp_path):
    slicer = slicer_scene
    logic = module.ImagInfoDoseComparisonLogic()
    study, _ = logic.readStudy(manifest=small_study / "manifest.csv")
    before = slicer.mrmlScene.GetNumberOfNodes()
    job = logic.startComparison(study, str(tmp_path / "out"))
    while job.is_alive() and job.progress[0] < 1:
        job.wait(0.1)
    job.cancel()
    job.wait(120)
    assert job.cancelled and job.result is None
    assert slicer.mrmlScene.GetNumberOfNodes() == before
    finished = list((tmp_path / "out" / "cases").glob("*.json"))
    assert 1 <= len(finished) < 4
    result = logic.compare(study, str(tmp_path / "out"))
    assert len(result.batch.cached) == len(finished)
