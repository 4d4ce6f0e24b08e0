"""Vessel quantification of every acquisition of a phantom study."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from ImagInfoExtension.io import read_image, write_atomically
from ImagInfoExtension.vessels.quantify import VesselParameters, quantify_vessels, write_results
from ImagInfoExtension.vessels.truth import load_truth
from ImagInfoExtension.vessels.vesselness import ProgressCallback

#: The radius whose MPV and IQR the published study tabulates.
REPORTED_RADIUS_MM = 3.0


def _row_for(table: pd.DataFrame, radius_mm: float) -> pd.Series | None:
    rows = table[np.isclose(table["radius_mm"].astype(float), radius_mm)]
    return None if rows.empty else rows.iloc[0]


def quantify_study(
    study_dir: str | Path,
    out_dir: str | Path,
    parameters: VesselParameters | None = None,
    progress: ProgressCallback | None = None,
) -> pd.DataFrame:
    """Quantify each acquisition listed in a study's ``manifest.csv``.

    Each acquisition's outputs go to ``out_dir/<image stem>/``. A failing acquisition
    is recorded (``status`` = ``failed`` with its error) and the batch goes on.
    ``out_dir/study_vessels.csv`` lists every acquisition with its total volume and
    the MPV and IQR of the 3 mm class.

    Parameters
    ----------
    study_dir : path
        Folder with ``manifest.csv`` and, optionally, ``truth.json``.
    out_dir : path
    parameters : VesselParameters, optional
    progress : callable, optional
        ``progress(done, total, message)`` once per acquisition.
    """
    study_dir, out_dir = Path(study_dir), Path(out_dir)
    manifest_path = study_dir / "manifest.csv"
    if not manifest_path.exists():
        raise FileNotFoundError(f"{manifest_path} not found; a study folder is written by `imaginfo phantom`")
    manifest = pd.read_csv(manifest_path)
    truth_path = study_dir / "truth.json"
    truth = load_truth(truth_path) if truth_path.exists() else None
    rows = []
    for number, acquisition in enumerate(manifest.itertuples(), start=1):
        name = Path(str(acquisition.path)).name.split(".")[0]
        row = {
            "name": name,
            "recon": acquisition.recon,
            "dose_mgy": float(acquisition.dose_mgy),
            "repetition": int(acquisition.repetition),
        }
        started = time.perf_counter()
        try:
            result = quantify_vessels(read_image(study_dir / str(acquisition.path)), truth=truth, parameters=parameters)
            write_results(result, out_dir / name)
            reported = _row_for(result.per_radius, REPORTED_RADIUS_MM)
            row.update(
                status="ok",
                error="",
                total_volume_ml=result.total_volume_ml,
                mpv_hu=np.nan if reported is None else float(reported["mpv_hu"]),
                iqr_hu=np.nan if reported is None else float(reported["iqr_hu"]),
            )
            if truth is not None:
                table = result.per_radius.dropna(subset=["true_length_mm"])
                row["detection_rate"] = float(table["detected_length_mm"].sum() / table["true_length_mm"].sum())
        except Exception as error:  # noqa: BLE001 - one bad acquisition must not stop the batch
            row.update(status="failed", error=f"{type(error).__name__}: {error}")
        row["runtime_s"] = round(time.perf_counter() - started, 2)
        rows.append(row)
        if progress is not None:
            progress(number, len(manifest), f"{name}: {row['status']}")
    summary = pd.DataFrame(rows)
    write_atomically(out_dir / "study_vessels.csv", lambda p: summary.to_csv(p, index=False, float_format="%.6g"))
    return summary
