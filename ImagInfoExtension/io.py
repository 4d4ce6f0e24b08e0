"""Reading and writing images: NRRD, NIfTI, MHA and CT DICOM series."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from ImagInfoExtension import __version__

#: Root under which ImagInfo derives its UIDs (pydicom's registered root).
_UID_PREFIX = pydicom.uid.PYDICOM_ROOT_UID

_IMAGE_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")


def read_image(path: str | Path) -> sitk.Image:
    """Read a 3D image from a file (NRRD, NIfTI, MHA) or a DICOM series folder.

    Raises
    ------
    FileNotFoundError
        When the path does not exist.
    ValueError
        When a folder holds no DICOM series or several, or the file is not 3D.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if path.is_dir():
        return read_dicom_series(path)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else "unknown format"
        raise ValueError(
            f"{path} could not be read as an image (NRRD, NIfTI, MHA or a DICOM folder): {reason}"
        ) from None
    if image.GetDimension() != 3:
        raise ValueError(f"{path} is a {image.GetDimension()}D image; ImagInfo needs a 3D volume")
    return image


def json_default(value: object) -> object:
    """``json.dumps(..., default=json_default)``: numpy scalars and arrays, tuples and sets."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, tuple | set):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def write_image(image: sitk.Image, path: str | Path, compress: bool = True) -> Path:
    """Write an image; the format follows the suffix (.nrrd, .nii.gz, .mha)."""
    path = Path(path)
    if not path.name.lower().endswith(_IMAGE_SUFFIXES):
        raise ValueError(f"cannot tell the image format of {path.name}; use one of {', '.join(_IMAGE_SUFFIXES)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), useCompression=compress)
    return path


def read_dicom_series(folder: str | Path, series_uid: str | None = None) -> sitk.Image:
    """Read one DICOM series from a folder with SimpleITK's series reader."""
    folder = Path(folder)
    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise ValueError(f"{folder} holds no DICOM series")
    if series_uid is None:
        if len(series) > 1:
            raise ValueError(f"{folder} holds {len(series)} DICOM series; pass series_uid to choose one")
        series_uid = series[0]
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series_uid)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    return reader.Execute()


@dataclass(frozen=True)
class CTSeriesInfo:
    """What a CT DICOM series says about its acquisition.

    Parameters
    ----------
    series_description : str
    ctdivol_mgy : float
        CTDIvol (0018,9345).
    convolution_kernel : str
        ConvolutionKernel (0018,1210).
    reconstruction_algorithm : str
        ReconstructionAlgorithm (0018,9315), in the CT Reconstruction Sequence;
        empty to omit (DICOM has no term for deep-learning methods).
    manufacturer : str
    series_number : int
    acquisition_time : datetime
    patient_name, patient_id : str
    study_uid, frame_of_reference_uid : str, optional
        Shared by the series of one study; derived from ``uid_entropy`` if absent.
    uid_entropy : tuple of str
        Seeds the UIDs, so that the same study written twice gets the same UIDs and
        different series never share one.
    """

    series_description: str
    ctdivol_mgy: float
    convolution_kernel: str
    reconstruction_algorithm: str = ""
    manufacturer: str = "ImagInfo digital phantom"
    series_number: int = 1
    acquisition_time: dt.datetime = dt.datetime(2021, 1, 1, 9, 0, 0)
    patient_name: str = "ImagInfo^Phantom"
    patient_id: str = "IMAGINFO-PHANTOM"
    study_uid: str | None = None
    frame_of_reference_uid: str | None = None
    uid_entropy: tuple[str, ...] = ()
    kvp: float = 120.0


def _uid(*parts: str) -> str:
    return generate_uid(prefix=_UID_PREFIX, entropy_srcs=[str(p) for p in parts])


def study_uids(entropy: tuple[str, ...]) -> tuple[str, str]:
    """Study instance UID and frame-of-reference UID derived from ``entropy``."""
    return _uid("study", *entropy), _uid("frame", *entropy)


def write_ct_series(image: sitk.Image, folder: str | Path, info: CTSeriesInfo) -> str:
    """Write a 3D HU image as a CT DICOM series, one file per slice.

    Geometry (ImagePositionPatient, ImageOrientationPatient, PixelSpacing) follows
    the image; a left-handed direction is written with its slices reversed, which
    describes the same voxels in the right-handed frame DICOM readers assume.
    Pixels are stored unsigned with RescaleIntercept -1024, so HU below -1024 are
    clipped.

    Returns
    -------
    str
        The SeriesInstanceUID.
    """
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError("a CT series needs a 3D scalar image")
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    array = sitk.GetArrayFromImage(image)
    origin = np.asarray(image.GetOrigin())
    spacing = np.asarray(image.GetSpacing())
    if np.linalg.det(direction) < 0:
        origin = origin + direction[:, 2] * spacing[2] * (array.shape[0] - 1)
        direction = direction.copy()
        direction[:, 2] *= -1
        array = array[::-1]
    stored = (np.clip(np.rint(array), -1024, 64511) + 1024).astype(np.uint16)

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    entropy = info.uid_entropy or (info.series_description, str(info.series_number))
    study_uid, frame_uid = study_uids(entropy[:1])
    study_uid = info.study_uid or study_uid
    frame_uid = info.frame_of_reference_uid or frame_uid
    series_uid = _uid("series", *entropy)
    when = info.acquisition_time

    for k in range(stored.shape[0]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = _uid("instance", *entropy, str(k))
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationVersionName = f"IMAGINFO_{__version__}"[:16]

        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.Modality = "CT"
        ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
        ds.Manufacturer = info.manufacturer
        ds.ManufacturerModelName = "ImagInfo virtual scanner"
        ds.SoftwareVersions = f"ImagInfo {__version__}"
        ds.PatientName = info.patient_name
        ds.PatientID = info.patient_id
        # Type 2 attributes of the CT image IOD: present, empty when unknown (highdicom requires them).
        ds.PatientBirthDate = ds.PatientSex = ds.AccessionNumber = ds.ReferringPhysicianName = ""
        ds.StudyDate = when.strftime("%Y%m%d")
        ds.StudyTime = "090000"
        ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = when.strftime("%Y%m%d")
        ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = when.strftime("%H%M%S")
        ds.StudyID = "1"
        ds.SeriesNumber = info.series_number
        ds.AcquisitionNumber = info.series_number
        ds.InstanceNumber = k + 1
        ds.SeriesDescription = info.series_description
        ds.BodyPartExamined = "CHEST"
        ds.KVP = info.kvp
        ds.CTDIvol = round(float(info.ctdivol_mgy), 6)
        ds.ConvolutionKernel = info.convolution_kernel
        if info.reconstruction_algorithm:
            item = Dataset()
            item.ReconstructionAlgorithm = info.reconstruction_algorithm
            ds.CTReconstructionSequence = Sequence([item])
        position = origin + direction[:, 2] * spacing[2] * k
        ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in np.concatenate([direction[:, 0], direction[:, 1]])]
        ds.PixelSpacing = [f"{spacing[1]:.6f}", f"{spacing[0]:.6f}"]
        ds.SliceThickness = f"{spacing[2]:.6f}"
        ds.SpacingBetweenSlices = f"{spacing[2]:.6f}"
        ds.SliceLocation = f"{float(position @ direction[:, 2]):.6f}"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = stored.shape[1], stored.shape[2]
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
        ds.WindowCenter = -600
        ds.WindowWidth = 1500
        ds.PixelData = stored[k].tobytes()
        save_dataset(ds, folder / f"IM{k + 1:05d}.dcm")
    return series_uid


#: pydicom's major version: Slicer 5.10 bundles pydicom 2.4, 5.12 bundles pydicom 3.
PYDICOM_MAJOR = int(pydicom.__version__.split(".")[0])


def save_dataset(dataset: Dataset, path: str | Path) -> None:
    """Write a dataset as a DICOM Part 10 file (preamble and file meta) with pydicom 2 or 3.

    pydicom 3 spells this ``save_as(..., enforce_file_format=True)`` and reads the
    encoding from the transfer syntax; pydicom 2 spells it ``write_like_original=False``
    and needs the encoding set on the dataset.
    """
    if PYDICOM_MAJOR >= 3:
        dataset.save_as(path, enforce_file_format=True)
        return
    syntax = dataset.file_meta.TransferSyntaxUID
    dataset.is_little_endian = syntax.is_little_endian
    dataset.is_implicit_VR = syntax.is_implicit_VR
    dataset.save_as(path, write_like_original=False)


#: Prefix of the temporary siblings :func:`write_atomically` writes through.
PARTIAL_PREFIX = ".partial-"


def write_atomically(target: Path, writer: Callable[[Path], object]) -> object:
    """Write through a temporary sibling and rename, so a crash leaves no half file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=PARTIAL_PREFIX, dir=target.parent)) / target.name
    try:
        result = writer(temporary)
        if target.exists() and target.is_dir():
            shutil.rmtree(target)
        os.replace(temporary, target)
        return result
    finally:
        shutil.rmtree(temporary.parent, ignore_errors=True)


def write_if_changed(target: Path, writer: Callable[[Path], object]) -> bool:
    """Write like :func:`write_atomically`, but keep an existing file with the same bytes untouched.

    Returns whether the file changed. Keeping the file keeps its modification time, so
    the batch engine's cache (keyed by it) still recognises the input.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=PARTIAL_PREFIX, dir=target.parent)) / target.name
    try:
        writer(staging)
        if target.is_file() and _same_bytes(staging, target):
            return False
        os.replace(staging, target)
        return True
    finally:
        shutil.rmtree(staging.parent, ignore_errors=True)


def _same_bytes(first: Path, second: Path, chunk: int = 1 << 20) -> bool:
    if first.stat().st_size != second.stat().st_size:
        return False
    with open(first, "rb") as a, open(second, "rb") as b:
        while True:
            block = a.read(chunk)
            if block != b.read(chunk):
                return False
            if not block:
                return True


#: How deep below an output folder :func:`write_atomically` writes (``out/cases/x.json``,
#: ``out/series/<name>/x.csv``), and so where a killed writer can leave its temporary folder.
PARTIAL_DEPTH = 2


def remove_partial_files(folder: str | Path, depth: int = PARTIAL_DEPTH) -> list[Path]:
    """Remove the temporary siblings a killed writer left in ``folder`` and ``depth`` levels below it.

    Only for a folder nothing is writing to any more (a cancelled job's outputs). It
    looks no deeper than ``depth``, so a user's output folder full of other data is
    not searched.
    """
    folder = Path(folder)
    removed = []
    for level in range(depth + 1):
        for path in sorted(folder.glob("/".join(["*"] * level + [f"{PARTIAL_PREFIX}*"]))):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed
