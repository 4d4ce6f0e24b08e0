"""Grouping DICOM series into a dose study, from a folder or from Slicer's DICOM database.

Series are grouped by CTDIvol (0018,9345) and by reconstruction rules: regular
expressions over ConvolutionKernel (0018,1210), ReconstructionAlgorithm (0018,9315) in
the CT Reconstruction Sequence, Manufacturer and SeriesDescription. The result is a
study table (:mod:`ImagInfoExtension.study.table`) with the factors ``recon``,
``dose_mgy`` and ``repetition``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from ImagInfoExtension.progress import ProgressCallback
from ImagInfoExtension.study.table import DOSE_FACTORS, number_repetitions, validate_study

#: DICOM attributes the reconstruction rules may test.
RULE_FIELDS = ("convolution_kernel", "reconstruction_algorithm", "manufacturer", "series_description")


@dataclass(frozen=True)
class ReconstructionRule:
    """A series belongs to ``recon`` when ``pattern`` matches one of ``fields``.

    Patterns are Python regular expressions, matched case-insensitively anywhere in the
    attribute. Rules are tried in order; the first match wins.
    """

    recon: str
    pattern: str
    fields: tuple[str, ...] = RULE_FIELDS

    def __post_init__(self) -> None:
        unknown = set(self.fields) - set(RULE_FIELDS)
        if unknown:
            raise ValueError(f"unknown rule field(s) {sorted(unknown)}; use {', '.join(RULE_FIELDS)}")
        try:
            re.compile(self.pattern)
        except re.error as error:
            raise ValueError(f"rule for {self.recon}: {self.pattern!r} is not a regular expression ({error})") from None

    def matches(self, attributes: dict[str, str]) -> bool:
        return any(re.search(self.pattern, attributes.get(f, "") or "", re.IGNORECASE) for f in self.fields)


#: Deep learning first: DL series often also carry an iterative algorithm term.
DEFAULT_RULES: tuple[ReconstructionRule, ...] = (
    ReconstructionRule(
        "DL",
        r"\bDL\b|deep[- ]?learning|AiCE|TrueFidelity|DLIR|Precise ?Image|ClariCT|\bDLR\b",
        ("series_description", "convolution_kernel", "reconstruction_algorithm"),
    ),
    ReconstructionRule(
        "IR",
        r"\bIR\b|ITERATIVE|AIDR|ASIR|ADMIRE|SAFIRE|iDose|IMR|Veo|MBIR|hybrid iterative",
        ("reconstruction_algorithm", "series_description", "convolution_kernel"),
    ),
    ReconstructionRule(
        "FBP",
        r"\bFBP\b|FILTER_BACK_PROJ|filtered back ?projection",
        ("reconstruction_algorithm", "series_description"),
    ),
)


def rules_from_json(path: str | Path) -> tuple[ReconstructionRule, ...]:
    """Read rules from JSON: ``[{"recon": "IR", "pattern": "AIDR", "fields": [...]}, ...]``."""
    try:
        document = json.loads(Path(path).read_text())
        return tuple(
            ReconstructionRule(r["recon"], r["pattern"], tuple(r.get("fields", RULE_FIELDS))) for r in document
        )
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(
            f"{path} is not a rules file: expected a JSON list of {{'recon', 'pattern', 'fields'}} ({error})"
        ) from None


def rules_to_json(rules: Sequence[ReconstructionRule]) -> str:
    return json.dumps([asdict(r) for r in rules], indent=1)


def classify_reconstruction(attributes: dict[str, str], rules: Sequence[ReconstructionRule]) -> str | None:
    """The first rule's reconstruction that matches, or None."""
    for rule in rules:
        if rule.matches(attributes):
            return rule.recon
    return None


@dataclass(frozen=True)
class DicomSeries:
    folder: str
    series_uid: str
    attributes: dict
    dose_mgy: float | None
    series_number: int
    acquisition_time: str
    files: int


def _text(dataset, keyword: str) -> str:
    value = dataset.get(keyword, "")
    if isinstance(value, Iterable) and not isinstance(value, str | bytes):
        value = "\\".join(str(v) for v in value)
    return str(value).strip()


def scan_dicom_folder(folder: str | Path, progress: ProgressCallback | None = None) -> list[DicomSeries]:
    """Every CT series under ``folder`` (recursively), from the headers alone."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder of DICOM files")
    return scan_dicom_files(sorted(p for p in folder.rglob("*") if p.is_file()), progress)


def scan_dicom_files(files: Sequence[str | Path], progress: ProgressCallback | None = None) -> list[DicomSeries]:
    """The CT series among ``files`` (a folder's files, or those of series in Slicer's DICOM database).

    Files that are not DICOM images are skipped.
    """
    import pydicom

    found: dict[str, dict] = {}
    for number, path in enumerate(files, start=1):
        path = Path(path)
        if progress is not None and (number % 50 == 0 or number == len(files)):
            progress(number, len(files), f"read {number} of {len(files)} headers")
        try:
            dataset = pydicom.dcmread(path, stop_before_pixels=True)
        except (pydicom.errors.InvalidDicomError, OSError, ValueError):
            continue
        uid = _text(dataset, "SeriesInstanceUID")
        if not uid or "PixelSpacing" not in dataset:
            continue
        entry = found.setdefault(uid, {"dataset": dataset, "folders": set(), "files": 0})
        entry["folders"].add(str(path.parent))
        entry["files"] += 1
    series = []
    for uid, entry in found.items():
        dataset = entry["dataset"]
        algorithm = ""
        for item in dataset.get("CTReconstructionSequence", []):
            algorithm = algorithm or _text(item, "ReconstructionAlgorithm")
        algorithm = algorithm or _text(dataset, "ReconstructionAlgorithm")
        attributes = {
            "convolution_kernel": _text(dataset, "ConvolutionKernel"),
            "reconstruction_algorithm": algorithm,
            "manufacturer": _text(dataset, "Manufacturer"),
            "series_description": _text(dataset, "SeriesDescription"),
        }
        ctdi = dataset.get("CTDIvol")
        if len(entry["folders"]) != 1:
            raise ValueError(f"series {uid} is spread over several folders; keep each series' files in one folder")
        series.append(
            DicomSeries(
                folder=next(iter(entry["folders"])),
                series_uid=uid,
                attributes=attributes,
                dose_mgy=None if ctdi in (None, "") else float(ctdi),
                series_number=int(dataset.get("SeriesNumber", 0) or 0),
                acquisition_time=_text(dataset, "AcquisitionDate") + _text(dataset, "AcquisitionTime"),
                files=entry["files"],
            )
        )
    return series


def study_from_series(
    series: Sequence[DicomSeries], rules: Sequence[ReconstructionRule] = DEFAULT_RULES, source: str = "the input"
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Group DICOM series into a study.

    Repetitions are numbered within each (dose, reconstruction) by acquisition time,
    then series number.

    Returns
    -------
    study : DataFrame
        A study table (factors ``recon``, ``dose_mgy``, ``repetition``) with the DICOM attributes used.
    unmatched : DataFrame
        Series left out, with the reason (no CTDIvol, or no rule matched).
    """
    rows, unmatched = [], []
    for entry in series:
        row = {
            "path": entry.folder,
            "series_uid": entry.series_uid,
            "series_number": entry.series_number,
            "acquisition_time": entry.acquisition_time,
            **entry.attributes,
        }
        recon = classify_reconstruction(entry.attributes, rules)
        if entry.dose_mgy is None or entry.dose_mgy <= 0:
            unmatched.append({**row, "reason": "no CTDIvol (0018,9345)"})
        elif recon is None:
            unmatched.append({**row, "reason": "no reconstruction rule matched"})
        else:
            rows.append({**row, "dose_mgy": entry.dose_mgy, "recon": recon})
    unmatched_table = pd.DataFrame(unmatched, columns=["path", "series_uid", "series_description", "reason"])
    if not rows:
        raise ValueError(
            f"no series in {source} could be grouped ({len(unmatched)} left out: "
            + "; ".join(sorted({u["reason"] for u in unmatched}) or ["no CT series found"])
            + "); check the input or edit the reconstruction rules"
        )
    study = number_repetitions(pd.DataFrame(rows), ("acquisition_time", "series_number"), ("recon", "dose_mgy"))
    return validate_study(study, DOSE_FACTORS, source), unmatched_table


def study_from_dicom(
    folder: str | Path, rules: Sequence[ReconstructionRule] = DEFAULT_RULES, progress: ProgressCallback | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Group the CT series under ``folder`` into a study (see :func:`study_from_series`)."""
    return study_from_series(scan_dicom_folder(folder, progress), rules, str(folder))
