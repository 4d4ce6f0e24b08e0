"""DICOM SEG export and import of label maps, with highdicom.

:func:`write_dicom_seg` writes a label map as a binary DICOM Segmentation that
references the CT series it was made on; :func:`read_dicom_seg` reads one back onto
an image's grid. Works with highdicom 0.27 (bundled with Slicer 5.12) and 0.28.

The label map and the series must sample the same points: every pixel of every
frame must sit on a voxel centre of the label map (to 0.01 voxel) with the same
pixel spacing, in any order, flip or permutation of the axes (a left-handed grid
written as a right-handed series, for instance). Nothing is interpolated, so the
voxels read back are exactly those written. A label map on another grid is refused
with the fix (resample it onto the series with nearest neighbour first).

Each segment carries its name, its display colour (CIELab, from ``#rrggbb``) and its
DICOM terminology: a category and a type code (SNOMED CT by default), and the
algorithm that made it. Segments are numbered 1, 2, … in the order given; an empty
segment is skipped with a warning by default (``empty_segments``), which renumbers
the later ones, so the reader maps segments back to label values by their names
when given the same descriptions.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import PYDICOM_ROOT_UID, generate_uid

from ImagInfoExtension import __version__
from ImagInfoExtension.geometry import ImageGrid
from ImagInfoExtension.io import save_dataset, write_atomically
from ImagInfoExtension.segmentation.biomarkers import label_array, label_boxes
from ImagInfoExtension.segmentation.rules import check_image

ALGORITHM_TYPES = ("AUTOMATIC", "SEMIAUTOMATIC", "MANUAL")
EMPTY_SEGMENT_CHOICES = ("skip", "keep", "error")
#: How far (in voxels) a frame's pixel may sit from a voxel centre and still be that voxel.
GRID_TOLERANCE_VOXELS = 0.01
#: Type 2 attributes highdicom copies from the source images (empty when absent there).
_TYPE2_FROM_SOURCE = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)


@dataclass(frozen=True)
class Code:
    """A coded concept: code value, coding scheme designator (``SCT`` = SNOMED CT) and meaning."""

    value: str
    scheme: str
    meaning: str


ANATOMICAL_STRUCTURE = Code("91723000", "SCT", "Anatomical Structure")
TISSUE = Code("85756007", "SCT", "Tissue")


@dataclass(frozen=True)
class SegmentDescriptionSpec:
    """How one label of the map is described in the SEG.

    Attributes
    ----------
    label : int
        The label value in the label map.
    name : str
        The segment label shown to readers.
    color : str
        Display colour ``#rrggbb`` (stored as CIELab).
    category, type : Code
        Segmented property category and type, e.g. ``Code("91723000", "SCT",
        "Anatomical Structure")`` and ``Code("59820001", "SCT", "Blood vessel")``.
    algorithm_type : {"AUTOMATIC", "SEMIAUTOMATIC", "MANUAL"}
    algorithm_name, algorithm_version : str
        The algorithm (model id, rule) and its version; not needed for MANUAL.
    algorithm_family : str
        A concept of DICOM CID 7162 (``pydicom.sr.codedict.codes.cid7162``):
        ``ArtificialIntelligence`` for a model, ``HistogramAnalysis`` for a threshold rule.
    """

    label: int
    name: str
    color: str = "#808080"
    category: Code = ANATOMICAL_STRUCTURE
    type: Code = TISSUE
    algorithm_type: str = "AUTOMATIC"
    algorithm_name: str = "ImagInfo"
    algorithm_version: str = __version__
    algorithm_family: str = "ArtificialIntelligence"

    @property
    def color_rgb(self) -> tuple[int, int, int]:
        """The colour as three integers 0–255."""
        return tuple(int(self.color[i : i + 2], 16) for i in (1, 3, 5))


def segment_specs(
    labels: Sequence[object],
    algorithm_name: str,
    algorithm_version: str,
    algorithm_type: str = "AUTOMATIC",
    algorithm_family: str = "ArtificialIntelligence",
) -> list[SegmentDescriptionSpec]:
    """Descriptions from catalogue labels (``value``, ``name``, ``color`` and a ``terminology`` mapping).

    ``terminology`` holds ``{"category": {"scheme", "code", "meaning"}, "type": {...}}``
    as in ``Resources/models.json``; a missing part falls back to Anatomical Structure / Tissue.
    """

    def code(entry: Mapping | None, default: Code) -> Code:
        if not entry:
            return default
        return Code(str(entry["code"]), str(entry["scheme"]), str(entry["meaning"]))

    return [
        SegmentDescriptionSpec(
            label=int(label.value),
            name=str(label.name),
            color=str(label.color),
            category=code(dict(label.terminology or {}).get("category"), ANATOMICAL_STRUCTURE),
            type=code(dict(label.terminology or {}).get("type"), TISSUE),
            algorithm_type=algorithm_type,
            algorithm_name=algorithm_name,
            algorithm_version=algorithm_version,
            algorithm_family=algorithm_family,
        )
        for label in labels
    ]


def load_dicom_series(folder: str | Path, series_uid: str | None = None) -> list[Dataset]:
    """The image datasets of one series in a folder (headers only, no pixel data), by instance number.

    Raises
    ------
    ValueError
        When the folder holds no DICOM image, or several series and no ``series_uid``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder of DICOM files")
    by_series: dict[str, list[Dataset]] = {}
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        try:
            dataset = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError):
            continue
        if "ImagePositionPatient" in dataset and "SeriesInstanceUID" in dataset:
            by_series.setdefault(str(dataset.SeriesInstanceUID), []).append(dataset)
    if not by_series:
        raise ValueError(f"{folder} holds no DICOM image with a position (ImagePositionPatient)")
    if series_uid is None:
        if len(by_series) > 1:
            raise ValueError(
                f"{folder} holds {len(by_series)} series ({', '.join(sorted(by_series))}); pass series_uid"
            )
        series_uid = next(iter(by_series))
    if series_uid not in by_series:
        raise ValueError(f"{folder} holds no series {series_uid}")
    return sorted(by_series[series_uid], key=lambda d: int(getattr(d, "InstanceNumber", 0) or 0))


@dataclass(frozen=True)
class _Plane:
    """Where a frame's pixels fall on a grid: integer (k, j, i) per pixel, and whether inside."""

    k: np.ndarray
    j: np.ndarray
    i: np.ndarray
    inside: np.ndarray


def _plane_on_grid(
    position: Sequence[float],
    orientation: Sequence[float],
    pixel_spacing: Sequence[float],
    rows: int,
    columns: int,
    grid: ImageGrid,
    what: str,
) -> _Plane:
    """Map a frame (DICOM plane geometry) onto a grid's voxels; refuse one that is not a plane of the grid."""
    position = np.asarray(position, dtype=float)
    row_cosine = np.asarray(orientation[:3], dtype=float)
    column_cosine = np.asarray(orientation[3:], dtype=float)
    # PixelSpacing is (between rows, between columns); the column index runs along the row cosine.
    origin = grid.index_from_physical(position[None, :])[0]
    step_column = grid.index_from_physical((position + float(pixel_spacing[1]) * row_cosine)[None, :])[0] - origin
    step_row = grid.index_from_physical((position + float(pixel_spacing[0]) * column_cosine)[None, :])[0] - origin
    tolerance = GRID_TOLERANCE_VOXELS
    steps_ok = all(
        np.allclose(np.abs(step), np.eye(3)[np.argmax(np.abs(step))], atol=tolerance / max(rows, columns))
        for step in (step_column, step_row)
    ) and np.argmax(np.abs(step_column)) != np.argmax(np.abs(step_row))
    if not steps_ok or not np.allclose(origin, np.round(origin), atol=tolerance):
        raise ValueError(
            f"{what} does not lie on the label grid's voxels (first pixel at index {np.round(origin, 3)}, pixel "
            f"steps {np.round(step_column, 3)} and {np.round(step_row, 3)} in voxels; each must be one voxel along "
            "one axis); "
            "the label map must be on the series' grid: resample it onto the image read from the series with "
            "nearest-neighbour interpolation first (sitk.Resample(labels, image, sitk.Transform(), "
            "sitk.sitkNearestNeighbor, 0))"
        )
    origin = np.round(origin).astype(np.int64)
    step_column = np.round(step_column).astype(np.int64)
    step_row = np.round(step_row).astype(np.int64)
    r, c = np.meshgrid(np.arange(rows), np.arange(columns), indexing="ij")
    index = origin + r[..., None] * step_row + c[..., None] * step_column  # (rows, columns, 3) as i, j, k
    size = np.asarray(grid.size_ijk)
    inside = np.all((index >= 0) & (index < size), axis=-1)
    clipped = np.clip(index, 0, size - 1)
    return _Plane(k=clipped[..., 2], j=clipped[..., 1], i=clipped[..., 0], inside=inside)


def _check_sources(datasets: Sequence[Dataset]) -> None:
    if not datasets:
        raise ValueError("no source images: pass the datasets (or folder) of the series the label map was made on")
    series = {str(getattr(d, "SeriesInstanceUID", "")) for d in datasets}
    if len(series) != 1:
        raise ValueError(f"the source images belong to {len(series)} series; pass the images of one series")
    for n, dataset in enumerate(datasets):
        for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns"):
            if keyword not in dataset:
                raise ValueError(f"source image {n + 1} has no {keyword}; DICOM SEG needs a series of CT/MR slices")
        if int(getattr(dataset, "NumberOfFrames", 1) or 1) != 1:
            raise ValueError(f"source image {n + 1} is multi-frame; pass a series of single-frame slices")
        if "StudyInstanceUID" not in dataset:
            raise ValueError(f"source image {n + 1} has no StudyInstanceUID")


def _with_type2(dataset: Dataset) -> Dataset:
    """A copy of the header that has the type 2 attributes highdicom copies (empty when absent)."""
    copy = Dataset()
    for element in dataset:
        copy.add(element)
    if hasattr(dataset, "file_meta"):
        copy.file_meta = dataset.file_meta
    for keyword in _TYPE2_FROM_SOURCE:
        if keyword not in copy:
            setattr(copy, keyword, "")
    return copy


def write_dicom_seg(
    labels: sitk.Image,
    source_datasets: Sequence[Dataset] | str | Path,
    segments: Sequence[SegmentDescriptionSpec],
    path: str | Path,
    *,
    series_number: int = 300,
    series_description: str = "ImagInfo segmentation",
    content_label: str = "SEGMENTATION",
    empty_segments: str = "skip",
) -> Path:
    """Write a label map as a binary DICOM SEG referencing its source series.

    Parameters
    ----------
    labels : SimpleITK.Image
        A 3D label map on the series' grid (as SimpleITK reads the series, or any
        flip/permutation of its axes).
    source_datasets : sequence of pydicom.Dataset, or a folder
        The series' slices (headers suffice) or the folder that holds them.
    segments : sequence of SegmentDescriptionSpec
        One per label to write, in the order of their segment numbers. Every label
        present in the map must be described.
    path : str or Path
        The ``.dcm`` file to write (whole or not at all).
    series_number : int
    series_description : str
    content_label : str
        The SEG's content label (upper case, no spaces, ≤ 16 characters).
    empty_segments : {"skip", "keep", "error"}
        A described label with no voxels: left out with a warning (the later segments
        are numbered on), written as a segment without frames, or refused.

    Returns
    -------
    Path

    Raises
    ------
    ValueError
        On a label map not on the series' grid or reaching beyond it, undescribed
        labels, duplicate descriptions, a bad colour or algorithm type, or sources that
        are not one series of slices.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    if empty_segments not in EMPTY_SEGMENT_CHOICES:
        raise ValueError(f"empty_segments {empty_segments!r} is not one of {', '.join(EMPTY_SEGMENT_CHOICES)}")
    array = label_array(labels)
    grid = ImageGrid.from_sitk(labels)
    datasets = load_dicom_series(source_datasets) if isinstance(source_datasets, str | Path) else list(source_datasets)
    _check_sources(datasets)
    if not segments:
        raise ValueError("no segment descriptions: describe at least one label")
    values = [int(spec.label) for spec in segments]
    if min(values) < 1 or max(values) > 65535:
        raise ValueError(f"segment labels must be from 1 to 65535 (0 is the background), got {sorted(values)}")
    if len(set(values)) != len(values):
        raise ValueError(f"labels described more than once: {sorted({v for v in values if values.count(v) > 1})}")
    for spec in segments:
        if spec.algorithm_type not in ALGORITHM_TYPES:
            raise ValueError(f"segment {spec.name!r}: algorithm_type must be one of {', '.join(ALGORITHM_TYPES)}")
        if not re.fullmatch(r"#[0-9a-fA-F]{6}", spec.color):
            raise ValueError(f"segment {spec.name!r}: color {spec.color!r} must be '#rrggbb'")
        if not spec.name:
            raise ValueError(f"label {spec.label}: the segment needs a name")
    boxes = label_boxes(array)
    present = set(boxes)
    top = max(present, default=0)
    undescribed = sorted(present - set(values))
    if undescribed:
        raise ValueError(
            f"label(s) {undescribed} are in the label map but have no segment description; describe them or set "
            "them to 0"
        )
    written: list[SegmentDescriptionSpec] = []
    for spec in segments:
        if spec.label in present or empty_segments == "keep":
            written.append(spec)
            if spec.label not in present:
                warnings.warn(
                    f"segment {spec.name!r} (label {spec.label}) is empty: written without frames", stacklevel=2
                )
        elif empty_segments == "error":
            raise ValueError(f"segment {spec.name!r} (label {spec.label}) is empty; remove it or use empty_segments")
        else:
            warnings.warn(f"segment {spec.name!r} (label {spec.label}) is empty: left out of the SEG", stacklevel=2)
    if not written:
        raise ValueError("every described segment is empty: there is nothing to write")

    number_of = np.zeros(max(max(values), top) + 1, dtype=np.uint16)
    for number, spec in enumerate(written, start=1):
        number_of[spec.label] = number
    frames = np.zeros((len(datasets), int(datasets[0].Rows), int(datasets[0].Columns)), dtype=np.uint16)
    found = np.zeros(len(written) + 1, dtype=np.int64)
    for n, dataset in enumerate(datasets):
        if (int(dataset.Rows), int(dataset.Columns)) != frames.shape[1:]:
            raise ValueError(f"source image {n + 1} is {dataset.Rows}×{dataset.Columns}, unlike the first image")
        plane = _plane_on_grid(
            [float(v) for v in dataset.ImagePositionPatient],
            [float(v) for v in dataset.ImageOrientationPatient],
            [float(v) for v in dataset.PixelSpacing],
            frames.shape[1],
            frames.shape[2],
            grid,
            f"source image {n + 1} (InstanceNumber {getattr(dataset, 'InstanceNumber', '?')})",
        )
        frame = np.where(plane.inside, number_of[array[plane.k, plane.j, plane.i]], 0)
        frames[n] = frame
        found += np.bincount(frame.ravel(), minlength=len(written) + 1)
    for number, spec in enumerate(written, start=1):
        expected = int(np.count_nonzero(array[boxes[spec.label]] == spec.label)) if spec.label in boxes else 0
        if found[number] != expected:
            raise ValueError(
                f"segment {spec.name!r} has {expected} voxels in the label map but {found[number]} on the series' "
                "slices: the label map reaches beyond the series (or the series repeats slices); pass the series "
                "the label map was made on"
            )
    frames = frames.astype(np.uint8) if len(written) <= 255 else frames

    descriptions = []
    for number, spec in enumerate(written, start=1):
        algorithm = None
        if spec.algorithm_type != "MANUAL":
            algorithm = hd.AlgorithmIdentificationSequence(
                name=spec.algorithm_name,
                family=getattr(codes.cid7162, spec.algorithm_family),
                version=spec.algorithm_version,
            )
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=spec.name,
                segmented_property_category=hd.sr.CodedConcept(
                    spec.category.value, spec.category.scheme, spec.category.meaning
                ),
                segmented_property_type=hd.sr.CodedConcept(spec.type.value, spec.type.scheme, spec.type.meaning),
                algorithm_type=getattr(hd.seg.SegmentAlgorithmTypeValues, spec.algorithm_type),
                algorithm_identification=algorithm,
                display_color=hd.color.CIELabColor.from_rgb(*spec.color_rgb),
            )
        )
    # UIDs derived from the series and the content: the same SEG written twice is the same instance.
    digest = hashlib.sha256(frames.tobytes())
    digest.update(repr([(s.label, s.name, s.color, s.category, s.type) for s in written]).encode())
    entropy = [str(datasets[0].SeriesInstanceUID), digest.hexdigest(), str(series_number)]
    segmentation = hd.seg.Segmentation(
        source_images=[_with_type2(d) for d in datasets],
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=generate_uid(prefix=PYDICOM_ROOT_UID, entropy_srcs=["seg-series", *entropy]),
        series_number=int(series_number),
        sop_instance_uid=generate_uid(prefix=PYDICOM_ROOT_UID, entropy_srcs=["seg-instance", *entropy]),
        instance_number=1,
        manufacturer="ImagInfo",
        manufacturer_model_name="ImagInfo",
        software_versions=f"ImagInfo {__version__}",
        device_serial_number="0",
        content_label=content_label,
        content_description=series_description[:64],
        omit_empty_frames=True,
    )
    segmentation.SeriesDescription = series_description
    path = Path(path)
    write_atomically(path, lambda target: save_dataset(segmentation, target))
    return path


def _functional(dataset: Dataset, frame: int, sequence: str) -> Dataset | None:
    """Item of a functional-group macro for one frame: per-frame first, then shared."""
    for groups, index in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        items = getattr(dataset, groups, None)
        if items and len(items) > index and sequence in items[index]:
            return getattr(items[index], sequence)[0]
    return None


def read_segment_descriptions(path: str | Path) -> list[SegmentDescriptionSpec]:
    """The segments of a DICOM SEG as descriptions whose ``label`` is the segment number."""
    dataset = pydicom.dcmread(path, stop_before_pixels=True)
    return [_spec(item) for item in dataset.SegmentSequence]


def _spec(item: Dataset) -> SegmentDescriptionSpec:
    import highdicom as hd

    def code(sequence: str, default: Code) -> Code:
        if sequence not in item:
            return default
        concept = getattr(item, sequence)[0]
        return Code(str(concept.CodeValue), str(concept.CodingSchemeDesignator), str(concept.CodeMeaning))

    color = "#808080"
    if "RecommendedDisplayCIELabValue" in item:
        rgb = hd.color.CIELabColor.from_dicom_value(list(item.RecommendedDisplayCIELabValue)).to_rgb(clip=True)
        color = "#" + "".join(f"{int(v):02x}" for v in rgb)
    algorithm = (
        item.SegmentationAlgorithmIdentificationSequence[0]
        if "SegmentationAlgorithmIdentificationSequence" in item
        else None
    )
    return SegmentDescriptionSpec(
        label=int(item.SegmentNumber),
        name=str(getattr(item, "SegmentLabel", f"segment {item.SegmentNumber}")),
        color=color,
        category=code("SegmentedPropertyCategoryCodeSequence", ANATOMICAL_STRUCTURE),
        type=code("SegmentedPropertyTypeCodeSequence", TISSUE),
        algorithm_type=str(getattr(item, "SegmentAlgorithmType", "MANUAL")),
        algorithm_name=str(getattr(algorithm, "AlgorithmName", "")) if algorithm is not None else "",
        algorithm_version=str(getattr(algorithm, "AlgorithmVersion", "")) if algorithm is not None else "",
        algorithm_family=(
            str(algorithm.AlgorithmFamilyCodeSequence[0].CodeMeaning).title().replace(" ", "")
            if algorithm is not None and "AlgorithmFamilyCodeSequence" in algorithm
            else ""
        ),
    )


def read_dicom_seg(
    path: str | Path,
    reference_image: sitk.Image,
    segments: Sequence[SegmentDescriptionSpec] | None = None,
    segment_numbers: Sequence[int] | None = None,
) -> sitk.Image:
    """Read a DICOM SEG back into a label map on a reference image's grid.

    Parameters
    ----------
    path : str or Path
    reference_image : SimpleITK.Image
        The image the SEG was made on (its series as read, or the label map's grid).
    segments : sequence of SegmentDescriptionSpec, optional
        Give each SEG segment the ``label`` of the description with the same name
        (what :func:`write_dicom_seg` was given); without it a segment's label is its
        segment number.
    segment_numbers : sequence of int, optional
        Read only these segments (e.g. one at a time when segments overlap).

    Returns
    -------
    SimpleITK.Image
        uint8 (uint16 above 255 labels) label map on the reference grid.

    Raises
    ------
    ValueError
        When the file is not a SEG, its frames do not lie on the reference grid's
        voxels or reach beyond it, segments overlap (a label map cannot hold that), or
        a segment's name is not among ``segments``.
    """
    dataset = pydicom.dcmread(path)
    if str(getattr(dataset, "Modality", "")) != "SEG" or "SegmentSequence" not in dataset:
        raise ValueError(f"{path} is not a DICOM Segmentation (Modality SEG with a Segment Sequence)")
    check_image(reference_image, "reference image")
    grid = ImageGrid.from_sitk(reference_image)
    label_of = {int(item.SegmentNumber): int(item.SegmentNumber) for item in dataset.SegmentSequence}
    if segments is not None:
        by_name = {spec.name: spec.label for spec in segments}
        for item in dataset.SegmentSequence:
            name = str(getattr(item, "SegmentLabel", ""))
            if name not in by_name:
                raise ValueError(
                    f"{path}: segment {item.SegmentNumber} is named {name!r}, which no description given has "
                    f"({', '.join(sorted(by_name))})"
                )
            label_of[int(item.SegmentNumber)] = by_name[name]
    kind = str(getattr(dataset, "SegmentationType", "BINARY"))
    pixels = dataset.pixel_array
    if pixels.ndim == 2:
        pixels = pixels[None]
    top = max(label_of.values(), default=0)
    array = np.zeros(grid.shape_kji, dtype=np.uint8 if top <= 255 else np.uint16)
    lookup = np.zeros(max(max(label_of, default=0), int(pixels.max()) if pixels.size else 0) + 1, dtype=array.dtype)
    for number, label in label_of.items():
        if segment_numbers is None or number in segment_numbers:
            lookup[number] = label
    for frame in range(pixels.shape[0]):
        position = _functional(dataset, frame, "PlanePositionSequence")
        orientation = _functional(dataset, frame, "PlaneOrientationSequence")
        measures = _functional(dataset, frame, "PixelMeasuresSequence")
        if position is None or orientation is None or measures is None:
            raise ValueError(f"{path}: frame {frame + 1} has no plane position, orientation or pixel spacing")
        plane = _plane_on_grid(
            [float(v) for v in position.ImagePositionPatient],
            [float(v) for v in orientation.ImageOrientationPatient],
            [float(v) for v in measures.PixelSpacing],
            pixels.shape[1],
            pixels.shape[2],
            grid,
            f"{Path(path).name} frame {frame + 1}",
        )
        if kind == "LABELMAP":
            values = lookup[pixels[frame]]
        else:
            identification = _functional(dataset, frame, "SegmentIdentificationSequence")
            number = int(identification.ReferencedSegmentNumber)
            threshold = 0
            if kind == "FRACTIONAL":
                threshold = int(getattr(dataset, "MaximumFractionalValue", 255)) / 2
            values = np.where(pixels[frame] > threshold, lookup[number], 0).astype(array.dtype)
        on = values != 0
        if np.any(on & ~plane.inside):
            raise ValueError(
                f"{path}: {int(np.count_nonzero(on & ~plane.inside))} voxels of frame {frame + 1} lie outside the "
                "reference image; pass the image the segmentation was made on"
            )
        k, j, i = plane.k[on], plane.j[on], plane.i[on]
        previous = array[k, j, i]
        clash = (previous != 0) & (previous != values[on])
        if np.any(clash):
            raise ValueError(
                f"{path}: segments overlap in {int(np.count_nonzero(clash))} voxel(s) (labels "
                f"{sorted({int(v) for v in previous[clash]} | {int(v) for v in values[on][clash]})}); a label map "
                "holds one label per voxel: read them one at a time with segment_numbers "
                "(read_segment_descriptions lists them)"
            )
        array[k, j, i] = values[on]
    image = sitk.GetImageFromArray(array)
    image.CopyInformation(reference_image)
    return image
