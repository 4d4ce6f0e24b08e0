"""Shared fixtures. The Slicer stand-in is installed by Testing/slicer_harness.py."""

from __future__ import annotations

import sys
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
