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
