"""Shared fixtures. The Slicer stand-in is installed by Testing/slicer_harness.py."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parent.parent
SHARED_REFERENCE = REPOSITORY.parent / "shared" / "reference"
sys.path.insert(0, str(REPOSITORY))
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(scope="session")
def published_table():
    import pandas as pd

    path = SHARED_REFERENCE / "phantom_study_2021.csv"
    if not path.is_file():
        pytest.skip(f"{path} is absent: the published phantom table lives in ../shared/reference")
    return pd.read_csv(path)


@pytest.fixture(scope="session")
def ibsi_data() -> Path:
    """The IBSI-1 data folder (../shared/reference/ibsi); skips when it is absent."""
    from ibsi_reference import require_ibsi_data

    return require_ibsi_data()


@pytest.fixture(scope="session")
def ibsi_phantom(ibsi_data):
    """The IBSI-1 digital phantom: its image as float64 (z, y, x) and its mask as bool."""
    import SimpleITK as sitk

    from ImagInfoExtension.radiomics.ibsi import case_inputs

    image, mask, _ = case_inputs("phantom", ibsi_data)
    arrays = sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(mask) != 0
    for array in arrays:
        array.setflags(write=False)  # shared by every test of the session
    return arrays


class PreparedRois:
    """The IBSI-1 CT prepared for configurations A–E, each on first use and once per session.

    ``rois("C")`` is configuration C's ``PreparedRoi``; ``rois.seconds["C"]`` how long it took.
    """

    def __init__(self, data_dir: Path) -> None:
        from ImagInfoExtension.radiomics.ibsi import case_inputs

        self.image, self.mask, _ = case_inputs("A", data_dir)  # one CT, rounded to HU, for A–E
        self.rois = {}
        self.seconds: dict[str, float] = {}

    def __call__(self, config: str):
        if config not in self.rois:
            from ImagInfoExtension.radiomics.preprocess import prepare_roi
            from ImagInfoExtension.radiomics.settings import load_preset

            start = time.perf_counter()
            roi = prepare_roi(self.image, self.mask, load_preset(f"ibsi-{config}"))
            self.seconds[config] = time.perf_counter() - start
            for array in (roi.intensity, roi.levels, roi.int_mask, roi.morph_mask):
                array.setflags(write=False)  # shared by every test of the session
            self.rois[config] = roi
        return self.rois[config]


@pytest.fixture(scope="session")
def ibsi_roi(ibsi_data) -> PreparedRois:
    """The preprocessed CT ROI of an IBSI-1 configuration: ``ibsi_roi("C")``, shared by every test file."""
    return PreparedRois(ibsi_data)


@pytest.fixture(scope="session")
def default_scanner():
    from ImagInfoExtension.phantom import VirtualScanner

    return VirtualScanner(size="default")


@pytest.fixture(scope="session")
def small_scanner():
    from ImagInfoExtension.phantom import VirtualScanner

    return VirtualScanner(size="small")


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory):
    """1 dose x 3 reconstructions x 2 repetitions of the small phantom, NRRD and DICOM."""
    from ImagInfoExtension.phantom.study import StudyRequest, generate_study

    folder = tmp_path_factory.mktemp("tiny_study")
    request = StudyRequest(doses_mgy=(2.1,), repetitions=2, size="small", file_format="both")
    generate_study(request, folder)
    return folder


@pytest.fixture(scope="module")
def module(request):
    """The scripted module named by the test file's ``MODULE_NAME``, loaded under the harness."""
    pytest.importorskip("slicer", reason="module tests need the slicer-core wheel (pip install imaginfo[slicer-core])")
    from test_slicer_modules import _load_module_source

    return _load_module_source(REPOSITORY / "Modules" / "Scripted" / request.module.MODULE_NAME)


@pytest.fixture
def slicer_scene(module):
    """``slicer`` with an empty scene."""
    import slicer

    slicer.mrmlScene.Clear(0)
    return slicer
