"""The ImagInfoDoseComparison module's Logic and self-test on real MRML (slicer-core + harness)."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("slicer", reason="module tests need the slicer-core wheel (pip install imaginfo[slicer-core])")

from ImagInfoExtension.progress import Cancelled  # noqa: E402

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
    assert logic.applyBlocker(parameters).startswith("Group a manifest")
    study, unmatched = logic.readStudy(manifest=small_study / "manifest.csv")
    table = logic.studyTableNode(study)
    assert table.GetNumberOfRows() == 4 and unmatched.empty
    parameters.studyTable = table
    assert logic.applyBlocker(parameters) == "Choose an output folder."
    parameters.outputFolder = tmp_path / "out"
    assert logic.applyBlocker(parameters) == ""
    # The user relabels a series in the table; the run uses the edited grouping.
    recon_column = table.GetTable().GetColumnByName("recon")
    edited_row = next(r for r in range(4) if recon_column.GetValue(r) == "DL")
    recon_column.SetValue(edited_row, "DLR")
    inputs = logic.inputsFromParameterNode(parameters)
    assert sorted(inputs["study"]["recon"].unique()) == ["DL", "DLR", "FBP"]
    assert inputs["workers"] is None, "0 workers in the panel means one per core"
    result = logic.compare(**inputs)
    assert set(result.iq["recon"]) == {"DL", "DLR", "FBP"}
    assert pd.read_csv(tmp_path / "out" / "study.csv")["recon"].tolist().count("DLR") == 1, "the run's study is kept"
    nodes = logic.createOutputNodes(result)
    assert nodes["charts"]["iqr_hu"].GetNumberOfPlotSeriesNodes() == 3
    # Grouping again reuses the study table node.
    assert logic.studyTableNode(study, None) is table


def test_dicom_folder_and_database_group_like_the_manifest(module, slicer_scene, tiny_study):
    from ImagInfoExtension.study.table import read_manifest

    logic = module.ImagInfoDoseComparisonLogic()
    expected = read_manifest(tiny_study / "manifest.csv")[["recon", "dose_mgy", "repetition"]]
    folder_study, folder_left_out = logic.readStudy(dicomFolder=tiny_study / "dicom")
    assert folder_left_out.empty
    pd.testing.assert_frame_equal(folder_study[["recon", "dose_mgy", "repetition"]], expected)

    class Database:
        """Slicer's DICOM database, as much of it as the grouping asks for."""

        def filesForSeries(self, uid):
            folder = next(p for p in (tiny_study / "dicom").iterdir() if p.name == series[uid])
            return [str(p) for p in sorted(folder.glob("*.dcm"))]

    manifest = pd.read_csv(tiny_study / "manifest.csv")
    series = {row.series_uid: Path(row.dicom_dir).name for row in manifest.itertuples()}
    from ImagInfoExtension.bridge.dicom import study_from_database

    database_study, _ = logic.studyFromDicomDatabase(list(series), database=Database())
    pd.testing.assert_frame_equal(database_study[["recon", "dose_mgy", "repetition"]], expected)
    assert sorted(database_study["series_uid"]) == sorted(series)
    with pytest.raises(ValueError, match="has no files in the DICOM database"):
        study_from_database(["1.2.3"], database=type("Empty", (), {"filesForSeries": lambda self, uid: []})())


def test_a_comparison_with_a_failed_series_still_loads_and_lists_it(module, slicer_scene, small_study, tmp_path):
    logic = module.ImagInfoDoseComparisonLogic()
    study, _ = logic.readStudy(manifest=small_study / "manifest.csv")
    (tmp_path / "broken.nrrd").write_text("not an image")
    broken = study.iloc[[0]].assign(path=str(tmp_path / "broken.nrrd"), recon="DL", repetition=9)
    mixed = pd.concat([study[(study["recon"] == "FBP") & (study["repetition"] == 1)], broken])
    result = logic.compare(mixed, tmp_path / "out", workers=0)
    assert len(result.batch.succeeded) == 1 and result.failures["path"].tolist() == [str(tmp_path / "broken.nrrd")]
    assert "could not be read" in result.failures.loc[0, "error"]
    assert result.tables["iqr_hu"].loc["FBP"].str.contains("±").all()
    assert (result.tables["iqr_hu"].loc["DL"] == "").all(), "the failed series' row stays empty"
    nodes = logic.createOutputNodes(result)
    assert nodes["tables"]["iqr_hu"].GetNumberOfRows() == 2


def test_empty_study_table_is_refused_with_the_fix(module, slicer_scene, tmp_path):
    logic = module.ImagInfoDoseComparisonLogic()
    parameters = logic.getParameterNode()
    parameters.outputFolder = tmp_path
    with pytest.raises(ValueError, match="study table is empty"):
        logic.inputsFromParameterNode(parameters)


def test_cancel_keeps_finished_series_and_leaves_the_scene(module, slicer_scene, small_study, tmp_path):
    slicer = slicer_scene
    logic = module.ImagInfoDoseComparisonLogic()
    study, _ = logic.readStudy(manifest=small_study / "manifest.csv")
    study = study[study["repetition"] == 1]  # two series: cancelled after the first
    before = slicer.mrmlScene.GetNumberOfNodes()
    job = logic.compare(study, tmp_path / "out", workers=0, wait=False)
    while not job.finished and not list((tmp_path / "out" / "cases").glob("*.json")):
        job.poll()
        time.sleep(0.05)
    job.cancel(wait=True)
    assert job.state == "cancelled"
    with pytest.raises(Cancelled):
        job.result()
    job.close()
    assert slicer.mrmlScene.GetNumberOfNodes() == before
    finished = list((tmp_path / "out" / "cases").glob("*.json"))
    assert len(finished) == 1
    result = logic.compare(study, tmp_path / "out", workers=0)
    assert len(result.batch.cached) == len(finished)


def test_a_segmentation_or_a_box_gives_the_noise_roi(module, slicer_scene, tmp_path):
    """The module's noise ROI: a markups box or a segmentation, written on the first series' grid."""
    import numpy as np
    import SimpleITK as sitk

    from ImagInfoExtension import bridge
    from ImagInfoExtension.io import write_image
    from ImagInfoExtension.phantom.qa import slab_and_cylinders_phantom
    from ImagInfoExtension.study.table import validate_study

    slicer = slicer_scene
    phantom = slab_and_cylinders_phantom(spacing_mm=(0.75, 0.75, 2.5), size_ij=(256, 256), slices=6)
    write_image(phantom.image, tmp_path / "slab.nrrd")
    study = validate_study(pd.DataFrame([{"path": str(tmp_path / "slab.nrrd"), "recon": "FBP", "dose_mgy": 1.0}]))
    logic = module.ImagInfoDoseComparisonLogic()
    assert logic.noiseRoiFile(study, tmp_path) is None, "no node: placed automatically"
    # A 60 x 30 mm box in the slab (LPS centre (0, 50)); markups work in RAS.
    box = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "noise box")
    box.SetCenter(0.0, -50.0, 0.0)
    box.SetSize(60.0, 30.0, 100.0)
    path = logic.noiseRoiFile(study, tmp_path / "box", roiNode=box)
    mask = sitk.GetArrayFromImage(sitk.ReadImage(str(path))) > 0
    assert mask.sum() * 0.75 * 0.75 * 2.5 == pytest.approx(60 * 30 * 15, rel=0.05)
    assert phantom.object_hu[mask] == pytest.approx(phantom.uniform_hu), "the box lies in the slab"
    # A segmentation on another grid (the truth of the slab's middle) gives the same region.
    labels = sitk.Cast(sitk.GetImageFromArray(mask.astype(np.uint8)), sitk.sitkUInt8)
    labels.CopyInformation(phantom.image)
    segmentation = bridge.segmentation_node_from_label_map(
        labels, slicer.mrmlScene, [bridge.SegmentDescription(label=1, name="uniform")], "noise segmentation"
    )
    again = logic.noiseRoiFile(study, tmp_path / "segmentation", segmentationNode=segmentation)
    assert (sitk.GetArrayFromImage(sitk.ReadImage(str(again))) > 0).sum() == mask.sum()
    far = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "far box")
    far.SetCenter(900.0, 900.0, 0.0)
    far.SetSize(10.0, 10.0, 10.0)
    with pytest.raises(ValueError, match="covers no voxel of the first series"):
        logic.noiseRoiFile(study, tmp_path / "far", roiNode=far)
    # The comparison measures the noise where the box says, whatever the automatic placement would do.
    result = logic.compare(study, tmp_path / "out", workers=0, noiseRoi=path)
    assert result.iq["noise_sd_hu"].iloc[0] == pytest.approx(phantom.noise.noise_sd_hu, rel=0.05)
