"""DICOM and NRRD output, the `imaginfo phantom` command and the demo."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import SimpleITK as sitk

from ImagInfoExtension.cli import main
from ImagInfoExtension.geometry import ImageGrid
from ImagInfoExtension.io import CTSeriesInfo, read_dicom_series, read_image, write_ct_series


def _corner_points(image: sitk.Image) -> np.ndarray:
    size = np.array(image.GetSize()) - 1
    corners = [(i, j, k) for i in (0, size[0]) for j in (0, size[1]) for k in (0, size[2])]
    return np.array([image.TransformIndexToPhysicalPoint(tuple(int(v) for v in c)) for c in corners])


def _oblique_grid(left_handed: bool) -> ImageGrid:
    a, b = np.deg2rad(25), np.deg2rad(-15)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    direction = rz @ ry
    if left_handed:
        direction[:, 2] *= -1
    return ImageGrid((20, 16, 7), (0.6, 0.8, 2.5), (-10.0, 5.0, 30.0), tuple(direction.ravel()))


@pytest.mark.parametrize("left_handed", [False, True])
def test_dicom_series_reads_back_with_identical_geometry(tmp_path, left_handed):
    grid = _oblique_grid(left_handed)
    rng = np.random.default_rng(0)
    image = grid.to_sitk(rng.integers(-1024, 2000, grid.shape_kji).astype(np.int16))
    info = CTSeriesInfo(
        series_description="FBP 1 mGy rep 1",
        ctdivol_mgy=1.0,
        convolution_kernel="FC08",
        reconstruction_algorithm="FILTER_BACK_PROJ",
        uid_entropy=("test", str(left_handed)),
    )
    uid = write_ct_series(image, tmp_path / "series", info)
    back = read_dicom_series(tmp_path / "series")
    # The same physical voxels: every voxel centre of one image samples the other exactly.
    resampled = sitk.Resample(back, image, sitk.Transform(), sitk.sitkNearestNeighbor, -5000)
    assert np.array_equal(sitk.GetArrayFromImage(resampled), sitk.GetArrayFromImage(image))
    assert np.allclose(np.sort(_corner_points(back), axis=0), np.sort(_corner_points(image), axis=0), atol=1e-4)
    if not left_handed:
        assert np.allclose(back.GetOrigin(), image.GetOrigin(), atol=1e-5)
        assert np.allclose(back.GetDirection(), image.GetDirection(), atol=1e-6)
        assert np.allclose(back.GetSpacing(), image.GetSpacing(), atol=1e-6)
    files = sorted((tmp_path / "series").glob("*.dcm"))
    datasets = [pydicom.dcmread(f) for f in files]
    assert len({d.SOPInstanceUID for d in datasets}) == len(files) == grid.size_ijk[2]
    first = datasets[0]
    assert first.SeriesInstanceUID == uid and first.Modality == "CT"
    assert float(first[0x0018, 0x9345].value) == 1.0 and first[0x0018, 0x1210].value == "FC08"
    assert first.CTReconstructionSequence[0].ReconstructionAlgorithm == "FILTER_BACK_PROJ"
    assert first.RescaleIntercept == -1024 and first.Manufacturer


def test_phantom_command_writes_the_contract(tmp_path):
    out = tmp_path / "X"
    code = main(
        ["phantom", "--format", "both", "--doses", "1.0", "--recons", "FBP", "--repetitions", "1", "--out", str(out)]
    )
    assert code == 0
    manifest = pd.read_csv(out / "manifest.csv")
    assert list(manifest.columns[:5]) == ["path", "dose_mgy", "recon", "repetition", "series_uid"]
    assert len(manifest) == 1
    row = manifest.iloc[0]
    assert (row.dose_mgy, row.recon, row.repetition) == (1.0, "FBP", 1)
    nrrd = read_image(out / row.path)
    dicom = read_image(out / row.dicom_dir)
    assert np.array_equal(sitk.GetArrayFromImage(nrrd), sitk.GetArrayFromImage(dicom))
    assert np.allclose(nrrd.GetOrigin(), dicom.GetOrigin(), atol=1e-4)
    assert np.allclose(nrrd.GetSpacing(), dicom.GetSpacing()) and max(nrrd.GetSpacing()[:2]) <= 0.7
    assert pydicom.dcmread(next((out / row.dicom_dir).glob("*.dcm"))).SeriesInstanceUID == row.series_uid
    truth = json.loads((out / "truth.json").read_text())
    assert truth["coordinate_system"] == "LPS"
    labels = read_image(out / "truth_labels.nrrd")
    assert labels.GetSize() == nrrd.GetSize() and np.allclose(labels.GetOrigin(), nrrd.GetOrigin())
    assert not list(out.glob(".partial-*")), "no temporary leftovers"


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--doses", "0.2,abc"], "comma-separated list of numbers"),
        (["--doses", "-1"], "must be positive"),
        (["--recons", "FBP,XYZ"], "unknown reconstruction 'XYZ'; choose one of FBP, IR, DL"),
        (["--repetitions", "0"], "must be at least 1"),
        (["--format", "png"], "invalid choice"),
        (["--calibration", "/nonexistent.csv"], "does not exist"),
    ],
)
def test_bad_arguments_get_clear_errors(tmp_path, capsys, arguments, message):
    with pytest.raises(SystemExit) as stop:
        main(["phantom", "--out", str(tmp_path / "bad"), "--size", "small", *arguments])
    assert stop.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "bad" / "manifest.csv").exists()


PYDICOM_2 = Path(__file__).resolve().parent.parent / ".venv" / "pydicom2"


@pytest.mark.skipif(
    not (PYDICOM_2 / "pydicom").is_dir(), reason="pydicom 2.4.4 is installed by `make test` into .venv/pydicom2"
)
def test_dicom_writing_and_grouping_work_with_slicer_5_10s_pydicom_2(tmp_path):
    """Slicer 5.10 bundles pydicom 2.4.4, which has no save_as(enforce_file_format=...)."""
    script = """
import json, sys
import numpy as np, pydicom, SimpleITK as sitk
from ImagInfoExtension.geometry import ImageGrid
from ImagInfoExtension.io import CTSeriesInfo, read_dicom_series, write_ct_series
from ImagInfoExtension.study.dicom import study_from_dicom
grid = ImageGrid((12, 10, 5), (0.7, 0.7, 1.25), (-4.0, 2.0, 10.0))
array = np.random.default_rng(0).integers(-1024, 2000, grid.shape_kji).astype(np.int16)
info = CTSeriesInfo("IR 1 mGy rep 1", 1.0, "FC08", "ITERATIVE", uid_entropy=("pydicom2",))
uid = write_ct_series(grid.to_sitk(array), sys.argv[1] + "/series", info)
back = read_dicom_series(sys.argv[1] + "/series")
study, left_out = study_from_dicom(sys.argv[1])
first = pydicom.dcmread(sys.argv[1] + "/series/IM00001.dcm")
print(json.dumps({"version": pydicom.__version__, "same": bool(np.array_equal(sitk.GetArrayFromImage(back), array)),
    "preamble": first.preamble == b"\\0" * 128, "syntax": str(first.file_meta.TransferSyntaxUID),
    "recon": study["recon"].tolist(), "uid": study["series_uid"].tolist() == [uid]}))
"""
    import subprocess
    import sys

    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(PYDICOM_2), str(Path(__file__).resolve().parent.parent)]),
    }
    completed = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, env=environment, check=False
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    found = json.loads(completed.stdout)
    assert found["version"] == "2.4.4"
    assert found["same"] and found["preamble"] and found["uid"]
    assert found["syntax"] == "1.2.840.10008.1.2.1" and found["recon"] == ["IR"]
