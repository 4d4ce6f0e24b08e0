"""The IBSI-1 reference values for the radiomics tests, read and matched by the engine's own code.

The tables are those of ``ImagInfoExtension.radiomics.ibsi`` (``../shared/reference/ibsi``) and a
value matches by its rule, :func:`~ImagInfoExtension.radiomics.ibsi.within_tolerance`, which
Testing/test_radiomics_preprocess.py checks by hand. The preprocessed CT ROIs and the digital
phantom are session fixtures in Testing/conftest.py (``ibsi_roi``, ``ibsi_phantom``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import pytest
from conftest import SHARED_REFERENCE

from ImagInfoExtension.radiomics import ibsi

IBSI_DATA = SHARED_REFERENCE / "ibsi"
"""The IBSI-1 data folder beside the repository."""


def require_ibsi_data() -> Path:
    """The IBSI-1 data folder; skips the test when it is absent."""
    if not (IBSI_DATA / "MANIFEST.txt").is_file():
        pytest.skip(f"{IBSI_DATA} is absent: the IBSI-1 reference data live in ../shared/reference/ibsi")
    return IBSI_DATA


def _feature_rows(case: str, prefix: str | tuple[str, ...]) -> list[ibsi.ReferenceValue]:
    rows = ibsi.reference_values(case, require_ibsi_data())
    return [row for row in rows if not row.is_diagnostic and row.tag.startswith(prefix)]


def ibsi_reference(case: str, prefix: str | tuple[str, ...] = "") -> dict[str, tuple[float, float]]:
    """``{tag: (reference, tolerance)}`` of the features of an IBSI-1 case that have a reference value.

    Parameters
    ----------
    case : {"phantom", "A", "B", "C", "D", "E"}
    prefix : str or tuple of str, optional
        Only tags that start with it (``"cm_"``, ``("szm_", "dzm_")``); all by default. The
        image-processing diagnostics (``img_dim_x_init_img``, ``morph_mask_vox_count_init_roi``, …)
        are never included.
    """
    return {row.tag: (row.reference, row.tolerance) for row in _feature_rows(case, prefix) if row.has_value}


def ibsi_tags(case: str, prefix: str | tuple[str, ...] = "") -> set[str]:
    """Every feature tag the case's table lists, those without a reference value included."""
    return {row.tag for row in _feature_rows(case, prefix)}


def mismatches(values: Mapping[str, float], case: str, prefix: str | tuple[str, ...] = "") -> list[str]:
    """The reference values of `case` under `prefix` that `values` do not match, one line each.

    A tag missing from `values` is a mismatch.
    """
    failed = []
    for tag, (reference, tolerance) in ibsi_reference(case, prefix).items():
        ours = values.get(tag, math.nan)
        if not ibsi.within_tolerance(ours, reference, tolerance):
            got = "missing" if tag not in values else f"{ours:.6g}"
            failed.append(f"{tag}: {got} (reference {reference:g} ± {tolerance:g})")
    return failed
