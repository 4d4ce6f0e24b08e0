"""The study table: one row per series, its file and its factors.

A study is a table with a ``path`` (image file, or DICOM folder with ``series_uid``)
and any number of **factors**: the columns that say how a series differs from the
others (``dose_mgy``, ``recon`` and ``repetition`` for a dose study; a model, a noise
level or a kernel for another). Every column that is neither a file
(``path``, ``series_uid``, a name ending in ``_dir``, ``_path`` or ``_file``) nor a
DICOM descriptor (:data:`DESCRIPTOR_COLUMNS`) is a factor. ``repetition``
numbers the repeated scans of one condition; when a table has none, repeated
conditions are numbered in row order.

Results are reported per factor combination: the runner's long table has the
columns ``<factors>,radius_mm,metric,value``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

#: Where a series is: an image file, or a DICOM folder and the series in it.
LOCATION_COLUMNS = ("path", "series_uid")
#: Further columns that name files (a DICOM copy beside the NRRD, a mask): not factors.
LOCATION_SUFFIXES = ("_dir", "_path", "_file")
#: DICOM attributes that a grouped study carries for the reader; not factors.
DESCRIPTOR_COLUMNS = (
    "series_number",
    "acquisition_time",
    "convolution_kernel",
    "reconstruction_algorithm",
    "manufacturer",
    "series_description",
)
REPETITION = "repetition"
#: The factors of a dose study, in the order its tables show them.
DOSE_FACTORS = ("recon", "dose_mgy", REPETITION)
#: Factors shown first when present (the dose study's), then the others in table order, then the repetition.
_LEADING_FACTORS = ("recon", "dose_mgy")
#: Factors that must be positive numbers when present.
_POSITIVE_FACTORS = ("dose_mgy",)


def _shown(value: object) -> str:
    """A cell as the user typed it: text quoted, numbers plain (not numpy's repr)."""
    return repr(value) if isinstance(value, str) else str(value)


def study_factors(table: pd.DataFrame) -> list[str]:
    """The factor columns of a study table, in display order (``repetition`` last)."""
    columns = [
        str(c)
        for c in table.columns
        if c not in LOCATION_COLUMNS and c not in DESCRIPTOR_COLUMNS and not str(c).endswith(LOCATION_SUFFIXES)
    ]
    leading = [c for c in _LEADING_FACTORS if c in columns]
    others = [c for c in columns if c not in leading and c != REPETITION]
    return [*leading, *others, *([REPETITION] if REPETITION in columns else [])]


def condition_factors(factors: Sequence[str]) -> list[str]:
    """The factors that define a condition: all but the repetition (results are averaged over it)."""
    return [f for f in factors if f != REPETITION]


def read_manifest(path: str | Path, required_factors: Sequence[str] = ()) -> pd.DataFrame:
    """A study from a CSV: ``path`` plus factor columns (``series_uid`` optional).

    Relative paths are taken relative to the CSV's folder.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist; give a manifest CSV with a path column and one column per factor "
            "(e.g. path,dose_mgy,recon,repetition)"
        )
    table = pd.read_csv(path, dtype={"series_uid": str}, keep_default_na=True)
    if "path" not in table.columns:
        raise ValueError(f"{path} has no 'path' column; a manifest needs path plus one column per factor")
    table = table.copy()
    table["path"] = [str(p) if Path(str(p)).is_absolute() else str(path.parent / str(p)) for p in table["path"]]
    return validate_study(table, required_factors, source=str(path))


def validate_study(
    table: pd.DataFrame, required_factors: Sequence[str] = (), source: str = "the study"
) -> pd.DataFrame:
    """Check a study table and put it in canonical order; the error names the bad row and column.

    Parameters
    ----------
    table : DataFrame
        ``path`` (and optionally ``series_uid``) plus factor columns.
    required_factors : sequence of str
        Factors this analysis needs (a dose comparison: :data:`DOSE_FACTORS`).
    source : str
        Named in errors.

    Returns
    -------
    DataFrame
        ``path``, the factors (:func:`study_factors` order), ``series_uid``, then the
        other columns (descriptors, further file columns), sorted by the factors.
    """
    table = table.copy().reset_index(drop=True)
    if len(table) == 0:
        raise ValueError(f"{source} has no series")
    if "path" not in table.columns:
        raise ValueError(f"{source} has no 'path' column")
    if "series_uid" not in table.columns:
        table["series_uid"] = ""
    table["series_uid"] = [str(uid) if pd.notna(uid) else "" for uid in table["series_uid"]]
    missing = [f for f in required_factors if f not in table.columns and f != REPETITION]
    if missing:
        raise ValueError(
            f"{source} lacks the column(s) {', '.join(missing)}; this analysis needs {', '.join(required_factors)}"
        )
    factors = [f for f in study_factors(table) if f != REPETITION]
    if not factors:
        raise ValueError(f"{source} has no factor columns: add the columns that tell its series apart")
    for column in factors:
        empty = table.index[table[column].isna() | (table[column].astype(str).str.strip() == "")]
        if len(empty):
            raise ValueError(f"row {empty[0] + 1}: {column} is empty; every series needs a value of every factor")
    for column in _POSITIVE_FACTORS:
        if column not in table.columns:
            continue
        values = pd.to_numeric(table[column], errors="coerce")
        bad = table.index[values.isna() | (values <= 0)]
        if len(bad):
            shown = _shown(table.loc[bad[0], column])
            raise ValueError(f"row {bad[0] + 1}: {column} {shown} is not a positive number (CTDIvol in mGy)")
        table[column] = values.astype(float)
    if "recon" in table.columns:
        table["recon"] = table["recon"].astype(str)
    if REPETITION in table.columns:
        values = pd.to_numeric(table[REPETITION], errors="coerce")
        bad = table.index[values.isna() | (values < 1) | (values != np.round(values))]
        if len(bad):
            raise ValueError(
                f"row {bad[0] + 1}: repetition {_shown(table.loc[bad[0], REPETITION])} is not a whole number ≥ 1"
            )
        table[REPETITION] = values.astype(int)
    else:
        table[REPETITION] = table.groupby(factors, sort=False).cumcount() + 1
    factors = study_factors(table)
    duplicated = table.duplicated(factors, keep=False)
    if duplicated.any():
        first = table[duplicated].iloc[0]
        described = ", ".join(f"{f} {first[f]}" for f in factors)
        raise ValueError(f"two series share {described}; number the repetitions apart")
    others = [c for c in table.columns if c not in ("path", "series_uid", *factors)]
    ordered = ["path", *factors, "series_uid", *others]
    return table[ordered].sort_values(factors).reset_index(drop=True)


def _factor_text(factor: str, value: object, compact: bool) -> str:
    if factor == "dose_mgy":
        return f"{float(value):g}{'' if compact else ' '}mGy"
    if factor == REPETITION:
        return f"rep{'' if compact else ' '}{int(value)}"
    return str(value)


def series_label(row: dict | pd.Series, factors: Sequence[str]) -> str:
    """A series named by its factors for people: ``FBP 1 mGy rep 2``."""
    return " ".join(_factor_text(factor, row[factor], compact=False) for factor in factors)


def series_name(row: dict | pd.Series, factors: Sequence[str]) -> str:
    """A unique name of a series from its factors (``FBP_1mGy_rep2``), safe in file names."""
    text = "_".join(_factor_text(factor, row[factor], compact=True) for factor in factors)
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in text)


def number_repetitions(series: pd.DataFrame, order: Sequence[str], factors: Sequence[str]) -> pd.DataFrame:
    """Number the series of each condition (equal ``factors``) 1, 2, ... in the given column order."""
    study = series.sort_values([*factors, *order])
    study[REPETITION] = study.groupby(list(factors)).cumcount() + 1
    return study


def left_out_path(study_csv: str | Path) -> Path:
    """Where ``imaginfo study`` writes the series it left out: ``<study>_left_out.csv`` beside the study."""
    study_csv = Path(study_csv)
    return study_csv.with_name(f"{study_csv.stem}_left_out.csv")
