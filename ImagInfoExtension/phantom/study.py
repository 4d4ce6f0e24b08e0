"""Virtual dose studies: every (dose, reconstruction, repetition) of the phantom."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ImagInfoExtension.io import CTSeriesInfo, study_uids, write_atomically, write_ct_series, write_image
from ImagInfoExtension.phantom.acquisition import AcquisitionCalibration, AcquisitionModel, AcquisitionSettings
from ImagInfoExtension.phantom.scanner import PHANTOM_SIZES, VirtualScanner
from ImagInfoExtension.progress import ProgressCallback
from ImagInfoExtension.truth import write_truth as write_truth_files

#: The published protocol: CTDIvol levels (mGy) and reconstructions.
PUBLISHED_DOSES_MGY: tuple[float, ...] = (0.2, 0.5, 1.0, 2.1, 4.0)
PUBLISHED_RECONS: tuple[str, ...] = ("FBP", "IR", "DL")
FORMATS = ("nrrd", "dicom", "both")
MANIFEST_COLUMNS = ["path", "dose_mgy", "recon", "repetition", "series_uid"]


@dataclass(frozen=True)
class StudyRequest:
    """What to scan.

    Parameters
    ----------
    doses_mgy : sequence of float
        CTDIvol levels.
    recons : sequence of str
        Reconstruction names known to the acquisition model.
    repetitions : int
        Scans per dose; they differ only in their noise realisation.
    seed : int
        Seeds every noise realisation.
    file_format : {'nrrd', 'dicom', 'both'}
    size : {'default', 'small'}
    calibration_csv : path, optional
        A user calibration table (layout of ``phantom_study_2021.csv``).
    """

    doses_mgy: Sequence[float] = PUBLISHED_DOSES_MGY
    recons: Sequence[str] = PUBLISHED_RECONS
    repetitions: int = 4
    seed: int = 0
    file_format: str = "nrrd"
    size: str = "default"
    calibration_csv: str | None = None

    def validate(self, model: AcquisitionModel) -> None:
        if not self.doses_mgy:
            raise ValueError("no dose given: pass at least one CTDIvol in mGy, e.g. 1.0")
        if any(d <= 0 for d in self.doses_mgy):
            raise ValueError(f"doses must be positive CTDIvol values in mGy, got {list(self.doses_mgy)}")
        if len(set(self.doses_mgy)) != len(self.doses_mgy):
            raise ValueError(f"doses are repeated: {list(self.doses_mgy)}")
        if not self.recons:
            raise ValueError("no reconstruction given: pass one or more of " + ", ".join(model.reconstructions))
        for recon in self.recons:
            model.model_for(recon)
        if self.repetitions < 1:
            raise ValueError(f"repetitions must be at least 1, got {self.repetitions}")
        if self.file_format not in FORMATS:
            raise ValueError(f"unknown format {self.file_format!r}; choose one of {', '.join(FORMATS)}")
        if self.size not in PHANTOM_SIZES:
            raise ValueError(f"unknown size {self.size!r}; choose one of {', '.join(PHANTOM_SIZES)}")

    def scanner(self) -> VirtualScanner:
        """A validated scanner for this request (its size and calibration)."""
        model = AcquisitionModel()
        if self.calibration_csv:
            model = AcquisitionModel(calibration=AcquisitionCalibration.from_csv(self.calibration_csv))
        self.validate(model)
        return VirtualScanner(size=self.size, model=model)

    def acquisitions(self) -> list[AcquisitionSettings]:
        return [
            AcquisitionSettings(dose_mgy=float(dose), recon=recon, repetition=rep, seed=self.seed)
            for dose in self.doses_mgy
            for rep in range(1, self.repetitions + 1)
            for recon in self.recons
        ]


def acquisition_name(settings: AcquisitionSettings) -> str:
    return f"{settings.recon}_{settings.dose_mgy:g}mGy_rep{settings.repetition}"


def write_truth(scanner: VirtualScanner, out_dir: Path) -> None:
    """Write ``truth.json`` and ``truth_labels.nrrd`` (see :func:`ImagInfoExtension.truth.write_truth`)."""
    write_truth_files(scanner.truth, out_dir)


def generate_study(
    request: StudyRequest,
    out_dir: str | Path,
    progress: ProgressCallback | None = None,
    scanner: VirtualScanner | None = None,
) -> pd.DataFrame:
    """Scan the phantom at every requested dose, reconstruction and repetition.

    Writes ``truth.json``, ``truth_labels.nrrd``, one image per acquisition (NRRD
    file and/or DICOM series folder) and ``manifest.csv``, whose paths are relative
    to ``out_dir``. Each file appears whole or not at all, and the manifest, rewritten
    after every acquisition, lists only finished ones.

    Returns
    -------
    pandas.DataFrame
        The manifest.
    """
    out_dir = Path(out_dir)
    if scanner is None:
        scanner = request.scanner()
    else:
        request.validate(scanner.model)
    out_dir.mkdir(parents=True, exist_ok=True)
    acquisitions = request.acquisitions()
    total = len(acquisitions) + 1
    if progress:
        progress(0, total, "rendering phantom and truth")
    write_truth(scanner, out_dir)
    if progress:
        progress(1, total, "truth written")

    entropy = (f"imaginfo-phantom-seed{request.seed}-{request.size}",)
    study_uid, frame_uid = study_uids(entropy)
    start = dt.datetime(2021, 6, 1, 9, 0, 0)
    rows: list[dict] = []
    for number, settings in enumerate(acquisitions):
        name = acquisition_name(settings)
        image = scanner.acquire(settings)
        scan_index = list(request.doses_mgy).index(settings.dose_mgy) * request.repetitions + settings.repetition - 1
        recon = scanner.model.model_for(settings.recon)
        info = CTSeriesInfo(
            series_description=f"{settings.recon} {recon.description}, {settings.dose_mgy:g} mGy, "
            f"rep {settings.repetition}",
            ctdivol_mgy=settings.dose_mgy,
            convolution_kernel=recon.kernel,
            reconstruction_algorithm=recon.algorithm,
            series_number=100 * (scan_index + 1) + list(request.recons).index(settings.recon) + 1,
            acquisition_time=start + dt.timedelta(minutes=3 * scan_index),
            study_uid=study_uid,
            frame_of_reference_uid=frame_uid,
            uid_entropy=(*entropy, name),
        )
        row = {"dose_mgy": settings.dose_mgy, "recon": settings.recon, "repetition": settings.repetition}
        if request.file_format in ("dicom", "both"):
            relative = Path("dicom") / name
            row["series_uid"] = write_atomically(
                out_dir / relative, lambda p, image=image, info=info: write_ct_series(image, p, info)
            )
            row["path"] = row["dicom_dir"] = relative.as_posix()
        if request.file_format in ("nrrd", "both"):
            relative = Path(f"{name}.nrrd")
            write_atomically(out_dir / relative, lambda p, image=image: write_image(image, p))
            row["path"] = relative.as_posix()
            row.setdefault("series_uid", "")
        rows.append(row)
        manifest = pd.DataFrame(rows)
        columns = MANIFEST_COLUMNS + (["dicom_dir"] if "dicom_dir" in manifest else [])
        write_atomically(out_dir / "manifest.csv", lambda p, m=manifest[columns]: m.to_csv(p, index=False))
        if progress:
            progress(number + 2, total, name)
    return pd.DataFrame(rows)[MANIFEST_COLUMNS]


#: The acquisition behind the "ImagInfo vessel phantom" sample data set.
SAMPLE_ACQUISITION = AcquisitionSettings(dose_mgy=1.0, recon="FBP", repetition=1)
#: What a Slicer module loads from a sample folder: files, node names and how to show them.
SAMPLE_MANIFEST = "sample.json"
SAMPLE_VOLUME_NAME = "ImagInfoVesselPhantom"


def write_sample_data(folder: str | Path, size: str = "small") -> dict[str, Path]:
    """Generate the sample data set once: one CT, its truth label map, ``truth.json`` and ``sample.json``.

    ``sample.json`` lists the nodes to load (``{"nodes": [{"file", "kind", "name", ...}]}``):
    the CT as a volume shown with a lung window, and the truth label map as a
    segmentation with one named, coloured segment per radius class. A folder that
    already holds every file is reused, so a cache folder costs the generation once.
    """
    folder = Path(folder)
    paths = {
        "volume": folder / f"{SAMPLE_VOLUME_NAME}_{acquisition_name(SAMPLE_ACQUISITION)}.nrrd",
        # Named apart from a study's truth_labels.nrrd: Slicer's download cache is shared.
        "truth_labels": folder / f"{SAMPLE_VOLUME_NAME}_truth_labels.nrrd",
        "truth": folder / "truth.json",
        "manifest": folder / SAMPLE_MANIFEST,
    }
    if all(p.is_file() and p.stat().st_size > 0 for p in paths.values()):
        return paths
    scanner = VirtualScanner(size=size)
    write_truth(scanner, folder)
    write_atomically(paths["truth_labels"], lambda p: write_image(scanner.truth.label_image(), p))
    write_atomically(paths["volume"], lambda p: write_image(scanner.acquire(SAMPLE_ACQUISITION), p))
    manifest = {
        "nodes": [
            {"file": paths["volume"].name, "kind": "volume", "name": SAMPLE_VOLUME_NAME, "window_level": [1500, -600]},
            {
                "file": paths["truth_labels"].name,
                "kind": "segmentation",
                "name": f"{SAMPLE_VOLUME_NAME} truth",
                "reference": SAMPLE_VOLUME_NAME,
                "segments": scanner.truth.segment_table(),
            },
        ]
    }
    write_atomically(paths["manifest"], lambda p: p.write_text(json.dumps(manifest, indent=1)))
    return paths
