"""The IBSI-1 benchmark: reference values, inputs and the compliance check.

The IBSI-1 data (the digital phantom, the CT radiomics phantom and the reference tables)
are not part of ImagInfo; they live in ``../shared/reference/ibsi`` beside the repository
or in ``$IMAGINFO_IBSI_DATA``, with a ``MANIFEST.txt`` of SHA-256 sums that the inputs are
checked against.

The six cases are the digital phantom and the CT configurations A–E. Their reference
tables (``reference_values/zrad_ibsi_table_format/``, the IBSI-1 submission layout) give,
per tag, the reference value, its tolerance and the feature family; the first 60 rows of
the CT tables are image-processing diagnostics. Five rows per table have no reference
value (OMBB and MVEE densities, the IVH's area under the curve): they are listed but
never pass or fail.
"""

from __future__ import annotations

import csv
import hashlib
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import SimpleITK as sitk

IBSI_CASES = ("phantom", "A", "B", "C", "D", "E")
"""The IBSI-1 cases: the digital phantom and CT configurations A–E."""

#: Environment variable that points at the IBSI-1 data folder.
DATA_ENVIRONMENT_VARIABLE = "IMAGINFO_IBSI_DATA"

_TABLES = "reference_values/zrad_ibsi_table_format"
_INPUTS = {
    "phantom": ("digital_phantom/phantom.nii.gz", "digital_phantom/mask.nii.gz"),
    **{case: ("ct_radiomics_phantom/phantom.nii.gz", "ct_radiomics_phantom/mask.nii.gz") for case in "ABCDE"},
}


@dataclass(frozen=True)
class ReferenceValue:
    """One row of an IBSI-1 reference table.

    Attributes
    ----------
    tag : str
        Feature or diagnostic tag (``cm_joint_max_3D_avg``, ``img_dim_x_init_img``, …).
    reference : float
        Reference value (NaN when the table has none).
    tolerance : float
        Tolerance (NaN when the table has none).
    family : str
        The table's family column (``Morphology``, ``Diagnostics-initial image``, …).
    has_value : bool
        Whether the table gives a reference value; rows without one are listed but
        take no part in pass/fail.
    feature : str
        The feature's name in the table.
    consensus : str
        The IBSI consensus level (``≥ 10``, ``6-9``, ``3-5``, ``not standardized``).
    """

    tag: str
    reference: float
    tolerance: float
    family: str
    has_value: bool
    feature: str = ""
    consensus: str = ""

    @property
    def is_diagnostic(self) -> bool:
        """Whether the row is an image-processing diagnostic rather than a feature."""
        return self.family.startswith("Diagnostics")


def _check_case(case: str) -> str:
    if case not in IBSI_CASES:
        raise ValueError(f"IBSI-1 case '{case}' is unknown; use one of {', '.join(IBSI_CASES)}")
    return case


def reference_table_path(case: str, data_dir: Path) -> Path:
    """The reference table of a case."""
    name = "digital_phantom" if _check_case(case) == "phantom" else f"config_{case}"
    return Path(data_dir) / _TABLES / f"ibsi_1_reference_values_{name}.csv"


def reference_values(case: str, data_dir: Path) -> list[ReferenceValue]:
    """The reference values of an IBSI-1 case, in the table's order.

    Parameters
    ----------
    case : {"phantom", "A", "B", "C", "D", "E"}
    data_dir : path
        The IBSI-1 data folder (:func:`default_ibsi_data_dir`).

    Returns
    -------
    list of ReferenceValue
        Every row, those without a value included (``has_value`` False).

    Raises
    ------
    FileNotFoundError
        When the table is missing.
    ValueError
        An unknown case, or a table whose layout is not the IBSI-1 submission layout.
    """
    path = reference_table_path(case, data_dir)
    if not path.is_file():
        raise FileNotFoundError(
            f"the IBSI-1 reference table {path} is missing; give the IBSI-1 data folder (with {_TABLES}/) "
            f"or set {DATA_ENVIRONMENT_VARIABLE}"
        )
    return list(_read_table(str(path), path.stat().st_mtime_ns))


@lru_cache(maxsize=16)
def _read_table(path: str, _mtime_ns: int) -> tuple[ReferenceValue, ...]:
    with open(path, encoding="utf-8-sig", newline="") as handle:
        rows = list(csv.DictReader(handle))
    needed = {"family", "feature", "consensus", "reference value", "tolerance", "tag"}
    if not rows or not needed <= set(rows[0]):
        raise ValueError(f"{path}: expected the IBSI-1 submission table columns {', '.join(sorted(needed))}")
    values = []
    for row in rows:
        text = (row["reference value"] or "").strip()
        has_value = bool(text)
        tolerance = (row["tolerance"] or "").strip()
        values.append(
            ReferenceValue(
                tag=row["tag"].strip(),
                reference=float(text) if has_value else math.nan,
                tolerance=float(tolerance) if tolerance else (0.0 if has_value else math.nan),
                family=row["family"].strip(),
                has_value=has_value,
                feature=row["feature"].strip(),
                consensus=row["consensus"].strip(),
            )
        )
    return tuple(values)


def round_significant(value: float, digits: int = 3) -> float:
    """`value` rounded to `digits` significant digits (0 and non-finite values as they are)."""
    if value == 0 or not math.isfinite(value):
        return value
    return round(value, digits - int(math.floor(math.log10(abs(value)))) - 1)


def within_tolerance(value: float, reference: float, tolerance: float) -> bool:
    """Whether a value matches an IBSI-1 reference value.

    The MANIFEST's rule (that of IBSI's reference implementation): the value rounded to 3
    significant digits lies within `tolerance` of `reference`. The reference values are
    published to 3 significant digits, except exact counts and sizes (125256 voxels,
    3065 HU) whose tolerance is 0 and which no 3-digit rounding can reach; against such a
    reference a value that lies within the tolerance unrounded matches too. Equality on
    a tolerance's edge is decided as in decimals (the last bits of binary are forgiven).

    Parameters
    ----------
    value : float
        Our value.
    reference, tolerance : float
        From the reference table.

    Returns
    -------
    bool
        False for a NaN or infinite value, reference or tolerance.
    """
    value, reference, tolerance = float(value), float(reference), float(tolerance)
    if not (math.isfinite(value) and math.isfinite(reference) and math.isfinite(tolerance)):
        return False
    # The tables' decimals and our rounding meet in binary: allow for the last bits.
    slack = tolerance + 1e-12 * max(1.0, abs(reference))
    if abs(round_significant(value) - reference) <= slack:
        return True
    # Only a reference of more than 3 significant digits (an exact count) is compared unrounded.
    return round_significant(reference) != reference and abs(value - reference) <= slack


def default_ibsi_data_dir() -> Path:
    """The IBSI-1 data folder: ``$IMAGINFO_IBSI_DATA``, else ``../shared/reference/ibsi``
    beside the repository."""
    configured = os.environ.get(DATA_ENVIRONMENT_VARIABLE)
    if configured:
        return Path(configured).expanduser()
    return Path(__file__).resolve().parents[2].parent / "shared" / "reference" / "ibsi"


def manifest_sums(data_dir: Path) -> dict[str, str]:
    """The SHA-256 sums of ``MANIFEST.txt``, keyed by path relative to `data_dir`."""
    path = Path(data_dir) / "MANIFEST.txt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the IBSI-1 data folder must hold its MANIFEST.txt of SHA-256 sums")
    sums = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        parts = line.split()
        if len(parts) == 2 and len(parts[0]) == 64 and all(c in "0123456789abcdef" for c in parts[0].lower()):
            sums[parts[1]] = parts[0].lower()
    return sums


@lru_cache(maxsize=32)
def _sha256(path: str, _mtime_ns: int, _size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_file(data_dir: Path, relative: str) -> Path:
    """The path of an IBSI-1 data file, after checking its SHA-256 against the MANIFEST.

    Raises
    ------
    FileNotFoundError
        The file (or the MANIFEST) is missing.
    ValueError
        The file is not in the MANIFEST or its content differs.
    """
    path = Path(data_dir) / relative
    if not path.is_file():
        raise FileNotFoundError(f"the IBSI-1 file {path} is missing")
    expected = manifest_sums(data_dir).get(relative)
    if expected is None:
        raise ValueError(f"{relative} is not listed in {Path(data_dir) / 'MANIFEST.txt'}; cannot verify it")
    stat = path.stat()
    actual = _sha256(str(path), stat.st_mtime_ns, stat.st_size)
    if actual != expected:
        raise ValueError(
            f"the IBSI-1 file {path} does not match MANIFEST.txt (SHA-256 {actual}, expected {expected}); "
            "it was altered or is another version: fetch the IBSI-1 data again"
        )
    return path


def case_inputs(case: str, data_dir: Path) -> tuple[sitk.Image, sitk.Image, str]:
    """The image, mask and preset name of an IBSI-1 case.

    The image is read as float64; the CT is rounded to whole HU, as IBSI-1 and the
    MANIFEST prescribe (it is stored as float). Both files are checked against the
    MANIFEST's SHA-256 sums first.

    Returns
    -------
    image : SimpleITK.Image
    mask : SimpleITK.Image
    preset : str
        ``ibsi-phantom`` or ``ibsi-A`` … ``ibsi-E``.
    """
    image_file, mask_file = _INPUTS[_check_case(case)]
    image_path = verify_file(data_dir, image_file)
    mask_path = verify_file(data_dir, mask_file)
    image = sitk.ReadImage(str(image_path), sitk.sitkFloat64)
    if case != "phantom":
        rounded = sitk.GetImageFromArray(np.round(sitk.GetArrayFromImage(image)))
        rounded.CopyInformation(image)
        image = rounded
    mask = sitk.ReadImage(str(mask_path))
    return image, mask, "ibsi-phantom" if case == "phantom" else f"ibsi-{case}"


def compliance_rows(case: str, values: Mapping[str, float], data_dir: Path) -> list[dict]:
    """Our values against the reference, one row per reference value.

    Parameters
    ----------
    case : {"phantom", "A", "B", "C", "D", "E"}
    values : mapping of tag to float
        Our feature values and image-processing diagnostics; a missing tag counts as NaN
        (and fails).
    data_dir : path
        The IBSI-1 data folder.

    Returns
    -------
    list of dict
        ``{config, tag, family, reference, tolerance, value, pass}`` for every row that has a
        reference value (the diagnostics of the CT cases included), in the table's order.
    """
    rows = []
    for entry in reference_values(case, data_dir):
        if not entry.has_value:
            continue
        value = values.get(entry.tag, math.nan)
        value = math.nan if value is None else float(value)
        rows.append(
            {
                "config": case,
                "tag": entry.tag,
                "family": entry.family,
                "reference": entry.reference,
                "tolerance": entry.tolerance,
                "value": value,
                "pass": within_tolerance(value, entry.reference, entry.tolerance),
            }
        )
    return rows
