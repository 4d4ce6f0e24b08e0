"""Segmentation jobs as the command line and the Slicer module run them: one image, or a manifest.

One image (``imaginfo segment IMAGE --model ID --out DIR``) gives, in ``DIR``:

- ``segmentation.nrrd``: the label map on the input's grid, labelled as in the catalogue;
- ``biomarkers.csv``: per segment and per lesion (:mod:`~ImagInfoExtension.segmentation.biomarkers`);
- ``evaluation.csv``: with a truth, per label ``label,name,dice,hd95_mm,assd_mm,nsd,volume_ml,true_volume_ml``;
- ``summary.json``: runtime, device, the model's id, version and sha256, the label table
  (names, colours, terminology) and every warning.

Each file is written whole or not at all, ``summary.json`` last: a folder with a
summary is a finished run. A manifest runs every row on the batch engine with one model
load per worker, resumable, and a failing row is reported while the others go on.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from ImagInfoExtension.io import json_default, write_atomically
from ImagInfoExtension.progress import ProgressCallback
from ImagInfoExtension.segmentation.catalogue import ModelEntry

SEGMENTATION_FILE = "segmentation.nrrd"
BIOMARKERS_FILE = "biomarkers.csv"
EVALUATION_FILE = "evaluation.csv"
SUMMARY_FILE = "summary.json"
#: Manifest columns that are not factors.
MANIFEST_COLUMNS = ("case", "path", "truth", "modality")

#: One network per (model, device) in each process: a batch worker loads its model once.
_SEGMENTERS: dict[tuple[str, str], Any] = {}


def resolve_model(model: str | ModelEntry) -> ModelEntry:
    """The catalogue entry of ``id`` or ``id@version`` (an entry passes through)."""
    if isinstance(model, ModelEntry):
        return model
    from ImagInfoExtension.segmentation.catalogue import load_catalogue

    model_id, _, version = model.partition("@")
    return load_catalogue().get(model_id, version or None)


def segmenter_for(entry: ModelEntry, device: str = "auto"):
    """This process's :class:`~ImagInfoExtension.segmentation.inference.Segmenter` of a model on a device."""
    from ImagInfoExtension.segmentation.inference import Segmenter

    key = (f"{entry.key}:{entry.weights.sha256}", device)
    if key not in _SEGMENTERS:
        _SEGMENTERS[key] = Segmenter(entry, device=device)
    return _SEGMENTERS[key]


def label_table(entry: ModelEntry) -> list[dict]:
    """The catalogue's labels as JSON rows (value, name, colour, terminology)."""
    return [
        {"value": label.value, "name": label.name, "color": label.color, "terminology": dict(label.terminology)}
        for label in entry.labels
    ]


def segment_file(
    image_path: str | Path,
    model: str | ModelEntry,
    out_dir: str | Path,
    *,
    device: str = "auto",
    truth_path: str | Path | None = None,
    modality: str | None = None,
    nsd_tolerance_mm: float = 1.0,
    progress: ProgressCallback | None = None,
) -> dict:
    """Segment one image file and write the outputs listed in the module docstring.

    Parameters
    ----------
    image_path : path
        NRRD, NIfTI, MHA or a DICOM series folder.
    model : str or ModelEntry
        ``id`` or ``id@version`` of the catalogue.
    out_dir : path
    device : {'auto', 'cpu', 'cuda', 'mps'}
    truth_path : path, optional
        A label map labelled as the model; on another grid it is resampled (with a warning).
    modality : str, optional
        The input's modality, checked against the model's.
    nsd_tolerance_mm : float
        Tolerance of the normalised surface Dice.

    Returns
    -------
    dict
        The summary (also written as ``summary.json``).
    """
    from ImagInfoExtension.io import read_image, write_image
    from ImagInfoExtension.segmentation.biomarkers import segment_biomarkers, write_biomarkers_csv

    entry = resolve_model(model)
    out_dir = Path(out_dir)
    image = read_image(image_path)
    truth = read_image(truth_path) if truth_path is not None else None
    started = time.perf_counter()
    result = segmenter_for(entry, device)(image, modality=modality, progress=progress)
    warnings = list(result.warnings)
    evaluation = None
    if truth is not None:
        from ImagInfoExtension.segmentation.evaluation import align_truth, evaluate_label_maps

        truth, truth_warnings = align_truth(truth, result.labels)
        warnings.extend(truth_warnings)
        evaluation = evaluate_label_maps(
            result.labels, truth, labels=entry.label_names, nsd_tolerance_mm=nsd_tolerance_mm
        )
    biomarkers = segment_biomarkers(result.labels, image, names=entry.label_names)
    summary = {
        "image": str(Path(image_path).resolve()),
        "truth": str(Path(truth_path).resolve()) if truth_path is not None else None,
        "model": {"id": entry.id, "version": entry.version, "sha256": entry.weights.sha256},
        "device": result.device,
        "runtime_s": round(result.runtime_s, 3),
        "total_runtime_s": round(time.perf_counter() - started, 3),
        "memory": result.memory.to_json() if result.memory is not None else None,
        "labels": label_table(entry),
        "outputs": [SEGMENTATION_FILE, BIOMARKERS_FILE] + ([EVALUATION_FILE] if evaluation is not None else []),
        "warnings": warnings,
    }
    if evaluation is not None:
        summary["evaluation"] = [{k: _json_number(v) for k, v in vars(row).items()} for row in evaluation]
    text = json.dumps(summary, indent=2, default=json_default, allow_nan=False)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomically(out_dir / SEGMENTATION_FILE, lambda p: write_image(result.labels, p))
    write_biomarkers_csv(biomarkers, out_dir / BIOMARKERS_FILE)
    if evaluation is not None:
        from ImagInfoExtension.segmentation.evaluation import write_evaluation_csv

        write_evaluation_csv(evaluation, out_dir / EVALUATION_FILE)
    write_atomically(out_dir / SUMMARY_FILE, lambda p: p.write_text(text))
    return summary


def _json_number(value: object) -> object:
    """Strict JSON: an infinite distance (one mask empty) is "inf", an undefined one (both empty) "nan"."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def read_segment_manifest(path: str | Path):
    """A segmentation manifest: ``path`` plus optional ``case``, ``truth``, ``modality`` and factor columns.

    Relative paths are relative to the manifest's folder.

    Raises
    ------
    ValueError
        Naming the row and column of the first problem and its fix.
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"the manifest {path} does not exist")
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    if "path" not in table.columns:
        raise ValueError(
            f"{path}: column 'path' missing; a segmentation manifest has path (the image) plus optional "
            "case, truth, modality and factor columns such as recon, dose_mgy"
        )
    if table.empty:
        raise ValueError(f"{path}: the manifest has no rows")
    if "case" not in table.columns:
        table.insert(0, "case", [Path(p).name.split(".")[0] or f"case{n + 1}" for n, p in enumerate(table["path"])])
    for column in ("path", "truth"):
        if column in table.columns:
            table[column] = [str((path.parent / value).resolve()) if value else "" for value in table[column]]
    for number, row in table.iterrows():
        where = f"{path}, row {number + 2}"
        if not row["path"]:
            raise ValueError(f"{where}: 'path' is empty; fill it in")
        for column in ("path", "truth"):
            if column in table.columns and row[column] and not Path(row[column]).exists():
                raise ValueError(f"{where}: {column} {row[column]} does not exist; fix the path")
    duplicated = table.duplicated(subset=["case", *factor_columns_of(table)], keep=False)
    if duplicated.any():
        rows = ", ".join(str(n + 2) for n in table.index[duplicated])
        raise ValueError(f"{path}: rows {rows} have the same case and factors; give each row its own case name")
    return table


def factor_columns_of(table) -> list[str]:
    return [c for c in table.columns if c not in MANIFEST_COLUMNS]


def segmentation_case(payload: dict, parameters: dict) -> dict:
    """Batch job: segment one manifest row into its own folder (runs on a worker)."""
    from ImagInfoExtension.segmentation.catalogue import entry_from_json

    summary = segment_file(
        payload["path"],
        entry_from_json(parameters["entry"], "batch parameters"),
        payload["out_dir"],
        device=parameters["device"],
        truth_path=payload.get("truth") or None,
        modality=payload.get("modality") or None,
        nsd_tolerance_mm=parameters["nsd_tolerance_mm"],
    )
    return {
        "device": summary["device"],
        "runtime_s": summary["runtime_s"],
        "warnings": summary["warnings"],
        "evaluation": summary.get("evaluation", []),
    }


def run_segment_manifest(
    manifest_path: str | Path,
    model: str | ModelEntry,
    out_dir: str | Path,
    *,
    device: str = "auto",
    nsd_tolerance_mm: float = 1.0,
    workers: int | None = None,
    scheduler: str | None = None,
    progress: ProgressCallback | None = None,
):
    """Segment every manifest row on the batch engine.

    Each row goes to ``out_dir/cases/<case>[-<factors>]/``; ``out_dir/cases.csv`` lists
    every row with its status, device, runtime and error, and ``out_dir/evaluation.csv``
    gathers the rows' evaluations with their case and factor columns. Finished rows are
    cached, so a second run goes on where the first stopped.

    Returns
    -------
    paths : dict of Path
    summary : BatchSummary
    """
    import pandas as pd

    from ImagInfoExtension.batch import BatchCase, file_identity, run_batch

    entry = resolve_model(model)
    table = read_segment_manifest(manifest_path)
    factors = factor_columns_of(table)
    out_dir = Path(out_dir)
    cases = []
    for _, row in table.iterrows():
        name = "-".join([row["case"], *(f"{f}={row[f]}" for f in factors)])
        safe = "".join(c if c.isalnum() or c in "._=-" else "_" for c in name)
        identity = {"image": file_identity(row["path"])}
        if row.get("truth"):
            identity["truth"] = file_identity(row["truth"])
        payload = {k: row[k] for k in table.columns} | {"out_dir": str(out_dir / "cases" / safe)}
        cases.append(BatchCase(name=safe, identity=identity, payload=payload))
    parameters = {"entry": entry.to_json(), "device": device, "nsd_tolerance_mm": nsd_tolerance_mm}
    summary = run_batch(
        segmentation_case,
        cases,
        parameters,
        out_dir / ".cases",
        workers=workers,
        scheduler=scheduler,
        progress=progress,
    )
    listing, evaluation = [], []
    for case, outcome in zip(cases, summary.outcomes):
        extra = {"case": case.payload["case"], **{f: case.payload[f] for f in factors}}
        listing.append(
            extra
            | {
                "status": outcome.status,
                "device": outcome.result.get("device", ""),
                "runtime_s": outcome.result.get("runtime_s", ""),
                "folder": case.payload["out_dir"],
                "error": outcome.error,
            }
        )
        evaluation.extend(extra | row for row in outcome.result.get("evaluation", []))
    paths = {"cases": out_dir / "cases.csv"}
    write_atomically(paths["cases"], lambda p: pd.DataFrame(listing).to_csv(p, index=False))
    if evaluation:
        paths["evaluation"] = out_dir / EVALUATION_FILE
        write_atomically(paths["evaluation"], lambda p: pd.DataFrame(evaluation).to_csv(p, index=False, na_rep="nan"))
    return paths, summary
