"""Biomarkers of a label map, per segment and per lesion.

For each label (a *segment*) and each of its connected components (a *lesion*,
numbered 1, 2, … by decreasing volume as :func:`ImagInfoExtension.radiomics.lesions.split_lesions`
numbers them): voxel count, volume, lesion count, centroid in LPS and in RAS,
bounding box (in LPS and in voxel indices), maximum 3D diameter, and the image's
intensity inside (mean, SD, min, median, max).

Conventions, stated once:

- positions are those of voxel centres: the centroid is the mean of the voxel centres,
  the bounding box spans the extreme voxel centres (add half a voxel on each side for
  the voxels' outer faces), and the maximum diameter is the largest distance between two
  voxel centres of the segment (so one voxel has diameter 0 and a row of ``n`` voxels at
  spacing ``s`` has ``(n - 1) s``);
- the intensity SD is the population SD (divides by the voxel count, as Slicer's
  Segment Statistics does); intensities are in the image's units (HU for CT);
- RAS is Slicer's world frame: LPS with x and y negated.

The maximum diameter is exact and fast: the farthest pair of a point set are vertices of
its convex hull, and a voxel lying between two voxels of the segment along an axis is
never one, so only the remaining voxel centres go to Qhull (``scipy.spatial.ConvexHull``)
and the distances are taken among the hull's vertices. Flat (one slice thick) and thin
(one voxel wide) lesions are handled in 2D and 1D.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from scipy.spatial import ConvexHull
from scipy.spatial.distance import cdist

from ImagInfoExtension.geometry import ImageGrid, mask_bounding_box
from ImagInfoExtension.io import write_atomically
from ImagInfoExtension.radiomics.lesions import CONNECTIVITY
from ImagInfoExtension.segmentation.rules import check_image, check_same_grid

#: Columns of the biomarker table, in order (``write_biomarkers_csv``, ``BiomarkerRow.as_dict``).
BIOMARKER_COLUMNS: tuple[str, ...] = (
    "label",
    "name",
    "scope",
    "lesion_id",
    "voxel_count",
    "volume_ml",
    "lesion_count",
    "lesions_below_min_volume",
    "centroid_lps_x_mm",
    "centroid_lps_y_mm",
    "centroid_lps_z_mm",
    "centroid_ras_x_mm",
    "centroid_ras_y_mm",
    "centroid_ras_z_mm",
    "bbox_lps_min_x_mm",
    "bbox_lps_min_y_mm",
    "bbox_lps_min_z_mm",
    "bbox_lps_max_x_mm",
    "bbox_lps_max_y_mm",
    "bbox_lps_max_z_mm",
    "bbox_min_i",
    "bbox_min_j",
    "bbox_min_k",
    "bbox_max_i",
    "bbox_max_j",
    "bbox_max_k",
    "max_diameter_mm",
    "intensity_mean",
    "intensity_sd",
    "intensity_min",
    "intensity_median",
    "intensity_max",
)

SCOPES = ("segment", "lesion")

Triple = tuple[float, float, float]


@dataclass(frozen=True)
class BiomarkerRow:
    """Biomarkers of one segment (``scope="segment"``) or one of its lesions (``scope="lesion"``).

    Attributes
    ----------
    label : int
        The label value.
    name : str
    scope : {"segment", "lesion"}
    lesion_id : int or None
        1 for the largest lesion of the segment, …; None on segment rows.
    voxel_count : int
    volume_ml : float
    lesion_count, lesions_below_min_volume : int or None
        On segment rows: lesions counted, and components left out as smaller than
        the minimum lesion volume; None on lesion rows.
    centroid_lps_mm, centroid_ras_mm : tuple of float or None
        Mean voxel centre; None for an empty segment.
    bbox_lps_min_mm, bbox_lps_max_mm : tuple of float or None
        Extreme voxel centres along x, y and z (LPS).
    bbox_index_min_ijk, bbox_index_max_ijk : tuple of int or None
        Inclusive voxel index box (i, j, k) on the label map's grid.
    max_diameter_mm : float or None
        Largest distance between two voxel centres.
    intensity_mean, intensity_sd, intensity_min, intensity_median, intensity_max : float or None
        Of the image inside (None without an image or for an empty segment).
    """

    label: int
    name: str
    scope: str
    lesion_id: int | None
    voxel_count: int
    volume_ml: float
    lesion_count: int | None = None
    lesions_below_min_volume: int | None = None
    centroid_lps_mm: Triple | None = None
    centroid_ras_mm: Triple | None = None
    bbox_lps_min_mm: Triple | None = None
    bbox_lps_max_mm: Triple | None = None
    bbox_index_min_ijk: tuple[int, int, int] | None = None
    bbox_index_max_ijk: tuple[int, int, int] | None = None
    max_diameter_mm: float | None = None
    intensity_mean: float | None = None
    intensity_sd: float | None = None
    intensity_min: float | None = None
    intensity_median: float | None = None
    intensity_max: float | None = None

    def as_dict(self) -> dict[str, object]:
        """The row under :data:`BIOMARKER_COLUMNS` (vectors spread over their x/y/z or i/j/k columns)."""
        row: dict[str, object] = {
            "label": self.label,
            "name": self.name,
            "scope": self.scope,
            "lesion_id": self.lesion_id,
            "voxel_count": self.voxel_count,
            "volume_ml": self.volume_ml,
            "lesion_count": self.lesion_count,
            "lesions_below_min_volume": self.lesions_below_min_volume,
        }
        for prefix, value, axes in (
            ("centroid_lps", self.centroid_lps_mm, "xyz"),
            ("centroid_ras", self.centroid_ras_mm, "xyz"),
            ("bbox_lps_min", self.bbox_lps_min_mm, "xyz"),
            ("bbox_lps_max", self.bbox_lps_max_mm, "xyz"),
            ("bbox_min", self.bbox_index_min_ijk, "ijk"),
            ("bbox_max", self.bbox_index_max_ijk, "ijk"),
        ):
            for n, axis in enumerate(axes):
                key = f"{prefix}_{axis}_mm" if axes == "xyz" else f"{prefix}_{axis}"
                row[key] = None if value is None else value[n]
        for key in BIOMARKER_COLUMNS[BIOMARKER_COLUMNS.index("max_diameter_mm") :]:
            row[key] = getattr(self, key)
        return row


def _diameter_of_points(points_mm: np.ndarray) -> float:
    """Largest distance between two of the points, from their convex hull's vertices."""
    if len(points_mm) < 2:
        return 0.0
    centred = points_mm - points_mm.mean(axis=0)
    _, singular, basis = np.linalg.svd(centred, full_matrices=False)
    scale = max(float(singular[0]), 1e-300)
    rank = int(np.count_nonzero(singular > 1e-9 * scale))
    if rank >= 3 and len(points_mm) >= 4:
        vertices = points_mm[ConvexHull(points_mm).vertices]
    elif rank == 2:
        # Coplanar (a lesion one slice thick): the hull in the plane of the points.
        vertices = points_mm[ConvexHull(centred @ basis[:2].T).vertices]
    else:
        along = centred @ basis[0]
        vertices = points_mm[[int(np.argmin(along)), int(np.argmax(along))]]
    best = 0.0
    # Chunks bound the distance matrix to 1024 rows whatever the hull's size.
    for start in range(0, len(vertices), 1024):
        best = max(best, float(cdist(vertices[start : start + 1024], vertices, "sqeuclidean").max()))
    return float(np.sqrt(best))


def _extreme_voxels(mask: np.ndarray) -> np.ndarray:
    """Indices ``(N, 3)`` as (k, j, i) of the voxels that are not between two voxels of ``mask`` along an axis.

    They hold every vertex of the convex hull of the voxel centres (a voxel between two
    others is their midpoint), hence the extremes of any linear function and the
    farthest pair.
    """
    padded = np.pad(mask, 1)
    inner = np.zeros_like(padded)
    core = (slice(1, -1),) * 3
    for axis in range(3):
        before = [slice(1, -1)] * 3
        after = [slice(1, -1)] * 3
        before[axis] = slice(0, -2)
        after[axis] = slice(2, None)
        inner[core] |= padded[tuple(before)] & padded[tuple(after)]
    return np.argwhere(padded & ~inner) - 1


def maximum_diameter_mm(mask: np.ndarray, grid: ImageGrid) -> float:
    """Largest distance in mm between the centres of two voxels of ``mask`` (``[k, j, i]`` on ``grid``).

    Exact for any spacing and direction. 0 for one voxel; NaN for an empty mask.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != grid.shape_kji:
        raise ValueError(f"mask shape {mask.shape} is not the grid's {grid.shape_kji}")
    box = mask_bounding_box(mask)
    if not mask[box].any():
        return float("nan")
    start = np.array([s.start for s in box])
    points = grid.physical_from_index((_extreme_voxels(mask[box]) + start)[:, ::-1])
    return _diameter_of_points(points)


@dataclass(frozen=True)
class LesionRegion:
    """One lesion of a label, located by its bounding box.

    Attributes
    ----------
    lesion_id : int
        1 for the label's largest lesion, then by decreasing volume (ties: first voxel
        in array order), as :func:`~ImagInfoExtension.radiomics.lesions.split_lesions` numbers them.
    box : tuple of slice
        The lesion's bounding box in the label map's ``[k, j, i]`` array.
    mask : numpy.ndarray of bool
        The lesion's voxels in its box.
    voxel_count : int
    volume_ml : float
    centroid_lps_mm : tuple of float
        Mean voxel centre (LPS).
    """

    lesion_id: int
    box: tuple[slice, ...]
    mask: np.ndarray
    voxel_count: int
    volume_ml: float
    centroid_lps_mm: Triple


@dataclass(frozen=True)
class LabelLesions:
    """The lesions of one label.

    Attributes
    ----------
    label : int
    box : tuple of slice
        The label's bounding box in the label map's ``[k, j, i]`` array.
    mask : numpy.ndarray of bool
        The label's voxels in its box.
    lesions : list of LesionRegion
        Lesion 1 first.
    left_out : int
        Components below the minimum lesion volume.
    """

    label: int
    box: tuple[slice, ...]
    mask: np.ndarray
    lesions: list[LesionRegion]
    left_out: int


def _centre_ijk(mask: np.ndarray) -> np.ndarray:
    """Mean (i, j, k) index of the voxels of a non-empty mask, from its projections (no index arrays)."""
    count = float(np.count_nonzero(mask))
    centre_kji = [
        float(np.dot(np.count_nonzero(mask, axis=tuple(a for a in range(3) if a != axis)), np.arange(mask.shape[axis])))
        / count
        for axis in range(3)
    ]
    return np.array(centre_kji[::-1])


def _shifted(box: tuple[slice, ...], offset: Sequence[int]) -> tuple[slice, ...]:
    return tuple(slice(s.start + o, s.stop + o) for s, o in zip(box, offset))


def label_lesions(
    array: np.ndarray,
    grid: ImageGrid,
    label: int,
    box: tuple[slice, ...] | None = None,
    *,
    connectivity: int = 26,
    min_volume_ml: float = 0.0,
) -> LabelLesions:
    """Split one label of a ``[k, j, i]`` label array into lesions, each kept in its own bounding box.

    Lesions are numbered exactly as :func:`~ImagInfoExtension.radiomics.lesions.split_lesions`
    numbers them (decreasing volume, ties by first voxel in array order; the tests check
    it), but no lesion is held as a mask of the whole image: a whole-body scan with a
    hundred lesions needs a hundred small boxes, not a hundred image-sized masks.

    Parameters
    ----------
    array : numpy.ndarray
        The label map on ``grid``.
    grid : ImageGrid
    label : int
    box : tuple of slice, optional
        The label's bounding box if known (``ndimage.find_objects``).
    connectivity : {6, 18, 26}
    min_volume_ml : float
        Smaller components are left out (and counted).
    """
    if connectivity not in CONNECTIVITY:
        raise ValueError(f"connectivity {connectivity} is not 6, 18 or 26")
    if not min_volume_ml >= 0:
        raise ValueError(f"min_volume_ml {min_volume_ml} must be ≥ 0")
    if box is None:
        box = mask_bounding_box(array == label)
    mask = array[box] == label
    components, count = ndimage.label(mask, structure=ndimage.generate_binary_structure(3, CONNECTIVITY[connectivity]))
    voxel_ml = grid.voxel_volume_mm3 / 1000.0
    offset = [s.start for s in box]
    found = []
    for number, component_box in enumerate(ndimage.find_objects(components), start=1):
        component = components[component_box] == number
        voxels = int(np.count_nonzero(component))
        # First voxel in array order: in the box's first plane, first in row-major order there.
        first_row = np.flatnonzero(component[0])[0]
        j, i = divmod(int(first_row), component.shape[2])
        first = np.ravel_multi_index(
            (component_box[0].start, component_box[1].start + j, component_box[2].start + i), components.shape
        )
        found.append((-voxels, int(first), component_box, component, voxels))
    found.sort(key=lambda item: (item[0], item[1]))
    lesions: list[LesionRegion] = []
    left_out = 0
    for _, _, component_box, component, voxels in found:
        volume_ml = voxels * voxel_ml
        if volume_ml < min_volume_ml:
            left_out += 1
            continue
        full_box = _shifted(component_box, offset)
        start = np.array([s.start for s in full_box], dtype=float)[::-1]
        centroid = grid.physical_from_index((start + _centre_ijk(component))[None, :])[0]
        lesions.append(
            LesionRegion(
                lesion_id=len(lesions) + 1,
                box=full_box,
                mask=component,
                voxel_count=voxels,
                volume_ml=float(volume_ml),
                centroid_lps_mm=_triple(centroid),
            )
        )
    return LabelLesions(label, box, mask, lesions, left_out)


def _region_row(
    label: int,
    name: str,
    scope: str,
    lesion_id: int | None,
    box: tuple[slice, ...],
    mask: np.ndarray,
    grid: ImageGrid,
    values: np.ndarray | None,
    **extra: int,
) -> BiomarkerRow:
    """The row of the voxels of ``mask``, the contents of the tight box ``box`` of the label map."""
    start = np.array([s.start for s in box])
    voxels = int(np.count_nonzero(mask))
    centroid = grid.physical_from_index((start[::-1] + _centre_ijk(mask))[None, :])[0]
    extreme = grid.physical_from_index((_extreme_voxels(mask) + start)[:, ::-1])
    last = start + np.array(mask.shape) - 1
    row = {
        "voxel_count": voxels,
        "volume_ml": float(voxels * grid.voxel_volume_mm3 / 1000.0),
        "centroid_lps_mm": _triple(centroid),
        "centroid_ras_mm": _triple((-centroid[0], -centroid[1], centroid[2])),
        "bbox_lps_min_mm": _triple(extreme.min(axis=0)),
        "bbox_lps_max_mm": _triple(extreme.max(axis=0)),
        "bbox_index_min_ijk": tuple(int(v) for v in start[::-1]),
        "bbox_index_max_ijk": tuple(int(v) for v in last[::-1]),
        "max_diameter_mm": _diameter_of_points(extreme),
    }
    if values is not None:
        inside = np.asarray(values[box][mask], dtype=np.float64)
        row.update(
            intensity_mean=float(inside.mean()),
            intensity_sd=float(inside.std()),
            intensity_min=float(inside.min()),
            intensity_median=float(np.median(inside)),
            intensity_max=float(inside.max()),
        )
    return BiomarkerRow(label=label, name=name, scope=scope, lesion_id=lesion_id, **row, **extra)


def _triple(values: Sequence[float]) -> Triple:
    return (float(values[0]), float(values[1]), float(values[2]))


def label_array(labels: sitk.Image, what: str = "label map") -> np.ndarray:
    """The ``[k, j, i]`` integer array of a 3D label map (a float map with whole values is converted).

    Raises
    ------
    ValueError
        On a 2D or vector image, NaNs, non-integer or negative values.
    """
    check_image(labels, what)
    array = sitk.GetArrayViewFromImage(labels)
    if np.issubdtype(array.dtype, np.floating):
        if not np.array_equal(array, np.round(array)):
            raise ValueError(
                f"the {what} holds non-integer values; a label map has one integer per segment "
                "(threshold a probability map first)"
            )
        array = array.astype(np.int64)
    elif not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"the {what}'s voxels are {array.dtype}; it must hold integers")
    if array.size and array.min() < 0:
        raise ValueError(f"the {what} holds negative values; labels are 0 (background) or positive integers")
    return array


def label_boxes(array: np.ndarray) -> dict[int, tuple[slice, ...]]:
    """The bounding box (``[k, j, i]`` slices) of each positive label of an integer array, by label.

    One ``ndimage.find_objects`` pass (no histogram: ``np.bincount`` would first copy a
    uint8 CT-sized map into 8-byte integers).
    """
    maximum = int(array.max()) if array.size else 0
    if maximum <= 0:
        return {}
    if maximum <= 1 << 16:
        return {n: box for n, box in enumerate(ndimage.find_objects(array), start=1) if box is not None}
    return {int(v): mask_bounding_box(array == v) for v in np.unique(array) if v > 0}


def segment_biomarkers(
    labels: sitk.Image,
    image: sitk.Image | None = None,
    names: Mapping[int, str] | None = None,
    per_lesion: bool = True,
    connectivity: int = 26,
    min_lesion_volume_ml: float = 0.0,
) -> list[BiomarkerRow]:
    """Biomarkers of every segment of a label map and, optionally, of each of its lesions.

    Parameters
    ----------
    labels : SimpleITK.Image
        A 3D label map: 0 is background, each positive integer a segment.
    image : SimpleITK.Image, optional
        The image on the same grid, for the intensity columns.
    names : mapping of int to str, optional
        Segment names by label value. A named label absent from the map gets a row with
        zero volume and zero lesions (so tables from several runs line up); other labels
        are named ``"label <value>"``.
    per_lesion : bool
        Also one row per lesion (connected component) after each segment's row.
    connectivity : {6, 18, 26}
        Which neighbours join a lesion.
    min_lesion_volume_ml : float
        Components smaller than this are not lesions (counted in
        ``lesions_below_min_volume``); the segment row still counts all its voxels.

    Returns
    -------
    list of BiomarkerRow
        By increasing label, each segment row followed by its lesion rows (lesion 1 first).

    Raises
    ------
    ValueError
        On a 2D label map, non-integer or negative labels, an image on another grid or
        with NaNs, an unknown connectivity or a negative minimum volume.
    """
    array = label_array(labels)
    grid = ImageGrid.from_sitk(labels)
    values = None
    if image is not None:
        check_image(image)
        check_same_grid(labels, image, "image", reference="label map")
        values = sitk.GetArrayViewFromImage(image)
    if connectivity not in CONNECTIVITY:
        raise ValueError(f"connectivity {connectivity} is not 6, 18 or 26")
    if not min_lesion_volume_ml >= 0:
        raise ValueError(f"min_lesion_volume_ml {min_lesion_volume_ml} must be ≥ 0")
    names = dict(names or {})
    boxes = label_boxes(array)
    rows: list[BiomarkerRow] = []
    for label in sorted(set(boxes) | {int(v) for v in names}):
        name = names.get(label, f"label {label}")
        if label not in boxes:
            rows.append(BiomarkerRow(label, name, "segment", None, 0, 0.0, lesion_count=0, lesions_below_min_volume=0))
            continue
        found = label_lesions(
            array,
            grid,
            label,
            boxes[label],
            connectivity=connectivity,
            min_volume_ml=min_lesion_volume_ml,
        )
        rows.append(
            _region_row(
                label,
                name,
                "segment",
                None,
                found.box,
                found.mask,
                grid,
                values,
                lesion_count=len(found.lesions),
                lesions_below_min_volume=found.left_out,
            )
        )
        if per_lesion:
            for lesion in found.lesions:
                rows.append(_region_row(label, name, "lesion", lesion.lesion_id, lesion.box, lesion.mask, grid, values))
    return rows


def _cell(value: object) -> object:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value) if np.isfinite(value) else ""
    return value


def write_biomarkers_csv(rows: Sequence[BiomarkerRow], path: str | Path) -> Path:
    """Write the rows as CSV under :data:`BIOMARKER_COLUMNS`, whole or not at all.

    Empty cells stand for values that do not apply (lesion columns on a segment row,
    intensities without an image, positions of an empty segment). Floats are written
    with every digit they hold (``repr``), so the file reproduces the numbers exactly.
    """
    path = Path(path)

    def write(target: Path) -> None:
        with open(target, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(BIOMARKER_COLUMNS)
            for row in rows:
                cells = row.as_dict()
                writer.writerow([_cell(cells[column]) for column in BIOMARKER_COLUMNS])

    write_atomically(path, write)
    return path
