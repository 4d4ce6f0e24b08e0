"""Radiomics jobs: one image to files, a manifest on the batch engine, the IBSI check.

Outputs of a run beside ``features.csv``:

* ``features.csv``: tidy, ``case[,<factors>],segment,lesion,image_type,feature_class,feature,value,ibsi_tag``;
* ``features_wide.csv``: one row per case/segment/lesion, one column per feature;
* ``lesions.csv`` (per-lesion mode): id, voxels, volume and centroid (LPS and RAS);
* ``failures.csv``: every ROI or case that gave no features, with the reason;
* ``features.provenance.json``: engine and version, mode, settings and their hash,
  the inputs' identity, warnings and software versions.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ImagInfoExtension.io import json_default, write_atomically
from ImagInfoExtension.radiomics.extract import FAILURE_COLUMNS, FEATURE_COLUMNS, LESION_COLUMNS
from ImagInfoExtension.radiomics.settings import RadiomicsSettings

#: Columns of a radiomics manifest that are not factors.
MANIFEST_COLUMNS = ("case", "image", "mask", "label", "segment")
COMPLIANCE_COLUMNS = ("config", "tag", "reference", "tolerance", "value", "pass")


def output_paths(features_path: str | Path) -> dict[str, Path]:
    """The files written beside a ``features.csv``."""
    features_path = Path(features_path)
    stem = features_path.with_suffix("")
    return {
        "features": features_path,
        "wide": stem.parent / f"{stem.name}_wide.csv",
        "lesions": stem.parent / "lesions.csv",
        "failures": stem.parent / "failures.csv",
        "provenance": stem.parent / f"{stem.name}.provenance.json",
    }


def write_outputs(
    features_path: str | Path,
    rows: list[dict],
    lesions: list[dict],
    failures: list[dict],
    provenance: dict,
    factor_columns: Sequence[str] = (),
) -> dict[str, Path]:
    """Write the tables and provenance atomically (no half-written file is left)."""
    import pandas as pd

    from ImagInfoExtension.radiomics.extract import wide_table

    paths = output_paths(features_path)
    paths["features"].parent.mkdir(parents=True, exist_ok=True)
    factor_columns = list(factor_columns)
    columns = ["case", *factor_columns, *FEATURE_COLUMNS[1:]]
    features = pd.DataFrame(rows, columns=columns)
    write_atomically(paths["features"], lambda p: features.to_csv(p, index=False))
    written = {"features": paths["features"]}
    if len(features):
        wide = wide_table(features)
        write_atomically(paths["wide"], lambda p: wide.to_csv(p, index=False))
        written["wide"] = paths["wide"]
    if lesions:
        table = pd.DataFrame(lesions, columns=["case", *factor_columns, *LESION_COLUMNS[1:]])
        write_atomically(paths["lesions"], lambda p: table.to_csv(p, index=False))
        written["lesions"] = paths["lesions"]
    failure_table = pd.DataFrame(failures, columns=["case", *factor_columns, *FAILURE_COLUMNS[1:]])
    if failures or paths["failures"].exists():
        write_atomically(paths["failures"], lambda p: failure_table.to_csv(p, index=False))
        written["failures"] = paths["failures"]
    text = json.dumps(provenance, indent=2, default=json_default)
    write_atomically(paths["provenance"], lambda p: p.write_text(text))
    written["provenance"] = paths["provenance"]
    return written


def _provenance(details: dict, inputs: list[dict]) -> dict:
    from ImagInfoExtension.provenance import provenance_document

    return provenance_document(details.pop("settings", {}), inputs, **details)


def extract_file(
    image_path: str | Path,
    mask_path: str | Path,
    settings: RadiomicsSettings,
    out_path: str | Path,
    *,
    case: str | None = None,
    segment_names: dict[int, str] | None = None,
    per_lesion: bool = False,
    min_lesion_volume_ml: float = 0.0,
    progress: Callable[[int, int, str], None] | None = None,
):
    """Extract the features of one image and label map and write the outputs.

    Returns
    -------
    RadiomicsResult, dict of paths
    """
    from ImagInfoExtension.batch import file_identity
    from ImagInfoExtension.io import read_image
    from ImagInfoExtension.radiomics.extract import extract_features

    image = read_image(image_path)
    mask = read_image(mask_path)
    case = case if case is not None else Path(image_path).name.split(".")[0]
    result = extract_features(
        image,
        mask,
        settings,
        case=case,
        segment_names=segment_names,
        per_lesion=per_lesion,
        min_lesion_volume_ml=min_lesion_volume_ml,
        progress=progress,
    )
    inputs = [
        {"role": "image", **file_identity(image_path), "sha256": result.provenance["image_sha256"]},
        {"role": "mask", **file_identity(mask_path), "sha256": result.provenance["mask_sha256"]},
    ]
    details = {**result.provenance, "warnings": result.warnings, "timings_s": result.timings_s}
    paths = write_outputs(out_path, result.rows, result.lesions, result.failures, _provenance(details, inputs))
    return result, paths


# --- manifests -----------------------------------------------------------------------


def read_manifest(path: str | Path):
    """A radiomics manifest: ``case,image,mask`` plus optional ``label``, ``segment``
    and any factor columns. Relative paths are relative to the manifest's folder.

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
    missing = [c for c in ("case", "image", "mask") if c not in table.columns]
    if missing:
        raise ValueError(
            f"{path}: column(s) {', '.join(missing)} missing; a radiomics manifest has case,image,mask "
            "(plus optional label, segment and factor columns such as recon, dose_mgy)"
        )
    if table.empty:
        raise ValueError(f"{path}: the manifest has no rows")
    for column in ("image", "mask"):
        table[column] = [str((path.parent / value).resolve()) if value else "" for value in table[column]]
    for number, row in table.iterrows():
        where = f"{path}, row {number + 2}"
        for column in ("case", "image", "mask"):
            if not row[column]:
                raise ValueError(f"{where}: '{column}' is empty; fill it in")
        for column in ("image", "mask"):
            if not Path(row[column]).exists():
                raise ValueError(f"{where}: {column} {row[column]} does not exist; fix the path")
        if "label" in table.columns and row["label"] and not row["label"].isdigit():
            raise ValueError(f"{where}: label {row['label']!r} must be a positive whole number")
    keys = [c for c in table.columns if c in ("case", "segment", "label") or c not in MANIFEST_COLUMNS]
    duplicated = table.duplicated(subset=keys, keep=False)
    if duplicated.any():
        rows = ", ".join(str(n + 2) for n in table.index[duplicated])
        raise ValueError(f"{path}: rows {rows} are the same case, segment and factors; give each row its own case")
    return table


def factor_columns_of(table) -> list[str]:
    return [c for c in table.columns if c not in MANIFEST_COLUMNS]


def radiomics_case(payload: dict, parameters: dict) -> dict:
    """Batch job: the features of one manifest row (runs on a worker)."""
    from ImagInfoExtension.io import read_image
    from ImagInfoExtension.radiomics.extract import extract_features

    settings = RadiomicsSettings.from_dict(parameters["settings"])
    image = read_image(payload["image"])
    mask = read_image(payload["mask"])
    label = int(payload["label"]) if payload.get("label") else None
    names = {label: payload["segment"]} if label is not None and payload.get("segment") else None
    result = extract_features(
        image,
        mask,
        settings,
        case=payload["case"],
        labels=[label] if label is not None else None,
        segment_names=names,
        per_lesion=parameters["per_lesion"],
        min_lesion_volume_ml=parameters["min_lesion_volume_ml"],
    )
    return {
        "rows": result.rows,
        "lesions": result.lesions,
        "failures": result.failures,
        "warnings": result.warnings,
        "timings_s": result.timings_s,
        "image_sha256": result.provenance["image_sha256"],
        "mask_sha256": result.provenance["mask_sha256"],
    }


def run_manifest(
    manifest_path: str | Path,
    settings: RadiomicsSettings,
    out_path: str | Path,
    *,
    per_lesion: bool = False,
    min_lesion_volume_ml: float = 0.0,
    workers: int | None = None,
    scheduler: str | None = None,
    progress: Any = None,
) -> tuple[dict[str, Path], Any]:
    """Features of every manifest row on the batch engine: resumable (finished rows are
    cached beside the output), a failing row is reported and the others go on.

    Returns
    -------
    paths : dict of Path
    summary : BatchSummary
    """
    from ImagInfoExtension.batch import BatchCase, file_identity, run_batch
    from ImagInfoExtension.radiomics.extract import settings_provenance

    table = read_manifest(manifest_path)
    factors = factor_columns_of(table)
    cases = []
    for number, row in table.iterrows():
        name = "-".join([row["case"], *(str(row[f]) for f in factors), row.get("segment", "") or row.get("label", "")])
        cases.append(
            BatchCase(
                name=name.strip("-") + f"-{number + 1}",
                identity={"image": file_identity(row["image"]), "mask": file_identity(row["mask"])},
                payload={k: row[k] for k in table.columns},
            )
        )
    parameters = {
        "settings": settings.as_dict(),
        "per_lesion": per_lesion,
        "min_lesion_volume_ml": min_lesion_volume_ml,
    }
    out_path = Path(out_path)
    cache = out_path.parent / f".{out_path.stem}-cases"
    summary = run_batch(
        radiomics_case, cases, parameters, cache, workers=workers, scheduler=scheduler, progress=progress
    )
    rows, lesions, failures, warnings, inputs = [], [], [], [], []
    for case, outcome in zip(cases, summary.outcomes):
        extra = {f: case.payload[f] for f in factors}
        if outcome.status != "ok":
            failures.append(
                {"case": case.payload["case"], **extra, "segment": case.payload.get("segment", ""), "lesion": ""}
                | {"error": outcome.error}
            )
            continue
        result = outcome.result
        rows.extend({**r, **extra} for r in result["rows"])
        lesions.extend({**r, **extra} for r in result["lesions"])
        failures.extend({**r, **extra} for r in result["failures"])
        warnings.extend(f"{case.name}: {w}" for w in result["warnings"])
        inputs.append({"case": case.name, **case.identity, "image_sha256": result["image_sha256"]})
    details = {
        **settings_provenance(settings),
        "per_lesion": per_lesion,
        "manifest": str(Path(manifest_path).resolve()),
        "cases": len(cases),
        "failed_cases": len(summary.failed),
        "workers": summary.workers,
        "wall_s": summary.wall_s,
        "warnings": warnings,
    }
    paths = write_outputs(out_path, rows, lesions, failures, _provenance(details, inputs), factors)
    return paths, summary


# --- IBSI compliance --------------------------------------------------------------------


def ibsi_case_values(case: str, data_dir: str | Path, timings: dict[str, float] | None = None) -> dict[str, float]:
    """Our values (features and image-processing diagnostics) for one IBSI-1 case."""
    import time

    from ImagInfoExtension.radiomics import ibsi
    from ImagInfoExtension.radiomics.extract import ibsi_feature_values
    from ImagInfoExtension.radiomics.preprocess import prepare_roi
    from ImagInfoExtension.radiomics.settings import load_preset

    image, mask, preset = ibsi.case_inputs(case, Path(data_dir))
    settings = load_preset(preset)
    start = time.perf_counter()
    roi = prepare_roi(image, mask, settings)
    if timings is not None:
        timings["preprocess"] = time.perf_counter() - start
    values = dict(roi.diagnostics)
    values.update(ibsi_feature_values(roi, settings, timings=timings))
    return values


def run_ibsi_check(
    out_dir: str | Path,
    data_dir: str | Path | None = None,
    cases: Sequence[str] | None = None,
    progress: Callable[[int, int, str], None] | None = None,
):
    """Run every IBSI-1 case and write ``ibsi_compliance.csv`` (and a summary).

    Returns
    -------
    compliance : pandas.DataFrame
        ``config,tag,reference,tolerance,value,pass``, one row per reference value.
    summary : pandas.DataFrame
        Per config: features passed / with a reference value, and diagnostics likewise.
    """
    import pandas as pd

    from ImagInfoExtension.radiomics import ibsi

    data_dir = Path(data_dir) if data_dir else ibsi.default_ibsi_data_dir()
    if not data_dir.is_dir():
        raise ValueError(
            f"the IBSI-1 data folder {data_dir} does not exist; give --ibsi-data DIR (the folder with "
            "digital_phantom/, ct_radiomics_phantom/ and reference_values/) or set IMAGINFO_IBSI_DATA"
        )
    cases = list(cases or ibsi.IBSI_CASES)
    rows: list[dict] = []
    timings: dict[str, dict[str, float]] = {}
    for number, case in enumerate(cases, start=1):
        timings[case] = {}
        values = ibsi_case_values(case, data_dir, timings[case])
        rows.extend(ibsi.compliance_rows(case, values, data_dir))
        if progress is not None:
            progress(number, len(cases), f"IBSI-1 case {case}")
    compliance = pd.DataFrame(rows, columns=list(COMPLIANCE_COLUMNS))
    is_diagnostic = compliance["tag"].str.contains(r"_(?:init|interp|reseg)_(?:img|roi)$")
    summary = (
        compliance.assign(diagnostic=is_diagnostic)
        .groupby(["config", "diagnostic"], sort=False)["pass"]
        .agg(passed="sum", total="count")
        .reset_index()
    )
    summary["kind"] = summary.pop("diagnostic").map({True: "diagnostics", False: "features"})
    summary = summary[["config", "kind", "passed", "total"]]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomically(out_dir / "ibsi_compliance.csv", lambda p: compliance.to_csv(p, index=False))
    write_atomically(out_dir / "ibsi_summary.csv", lambda p: summary.to_csv(p, index=False))
    timing_text = json.dumps(timings, indent=2)
    write_atomically(out_dir / "ibsi_timings.json", lambda p: p.write_text(timing_text))
    return compliance, summary
