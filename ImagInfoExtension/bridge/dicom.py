"""Series of Slicer's DICOM database, grouped into a study by the same code as a DICOM folder."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ImagInfoExtension.bridge.compat import import_slicer


def database_series_files(series_uids: Sequence[str], database: Any = None) -> list[str]:
    """The files of the given series in Slicer's DICOM database (``slicer.dicomDatabase`` by default)."""
    if database is None:
        database = getattr(import_slicer(), "dicomDatabase", None)
    if database is None:
        raise RuntimeError("Slicer's DICOM database is not open; open the DICOM module once, then try again")
    files: list[str] = []
    for uid in series_uids:
        found = list(database.filesForSeries(uid))
        if not found:
            raise ValueError(f"series {uid} has no files in the DICOM database; import it in the DICOM module")
        files.extend(found)
    return files


def study_from_database(series_uids: Sequence[str], rules: Sequence[Any] | None = None, database: Any = None):
    """Group series of the DICOM database into a study, as ``imaginfo study`` groups a folder.

    Returns ``(study, left_out)`` like :func:`ImagInfoExtension.study.dicom.study_from_series`.
    """
    from ImagInfoExtension.study.dicom import DEFAULT_RULES, scan_dicom_files, study_from_series

    files = database_series_files(series_uids, database)
    return study_from_series(scan_dicom_files(files), rules or DEFAULT_RULES, "the DICOM database selection")
