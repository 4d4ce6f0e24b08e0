"""The phantom's ground truth: one versioned document, its files, and the views measurements take of it.

A truth is written as two files in one folder:

``truth.json``, the truth document (version :data:`TRUTH_DOCUMENT_VERSION`)::

    {
      "version": 2,                      # absent in version-1 documents, which still read
      "coordinate_system": "LPS",        # the only frame accepted
      "units": "mm",
      "grid": {"size_ijk", "spacing_mm", "origin_mm", "direction"},   # of the label map
      "classes": [{"label", "radius_mm", "name", "colour",
                   "true_volume_ml", "centerline_length_mm"}, ...],  # label k = k-th radius, ascending
      "total_volume_ml": ...,            # when every class states its volume
      "segments": [{"id", "radius_mm", "parent_id", "points",        # centreline polyline, LPS mm
                    "weights_mm"}, ...], # optional: the length each point stands for
      "materials_hu": {"vessel", "holder_pmma", "background_air"},
      "holder": {"shape", "outer_semi_axes_mm", ...},
      "label_map": {"file": "truth_labels.nrrd", "rule": "..."}
    }

and ``truth_labels.nrrd``, the label map (0 background, label k the k-th radius class).
Version 2 added ``version`` and each class's ``name`` and ``colour`` (derived when a
version-1 document is read); the grid, which version 1 carried only in study folders,
is written with every label map.

Every key but ``segments`` (and, in each segment, ``radius_mm`` and ``points``) may be
left out. A segment without ``weights_mm`` is a polyline, resampled to
:data:`TRUTH_STEP_MM` before detection is measured (:func:`resample_polyline`), so a
design given by its vertices alone is measured as finely as a densely sampled one. A
segment with ``weights_mm`` is a set of samples, each standing for its own length.

Two views serve the measurements: :class:`ImagInfoExtension.vessels.truth.VesselTruth`
(centreline points with radii, for detection and radius accuracy) and
:class:`MaskTruth` (the label map and its class table, for segmentation overlap).

This module imports neither pandas nor Slicer. Slicer modules and the bridge must load
without numpy, pandas or SimpleITK at import time (in a bare Slicer), so they import
it inside functions only.
"""

from __future__ import annotations

import json
import math
import numbers
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import SimpleITK as sitk

from ImagInfoExtension.geometry import ImageGrid
from ImagInfoExtension.io import read_image, write_atomically, write_image
from ImagInfoExtension.report import radius_class_colours

if TYPE_CHECKING:
    from ImagInfoExtension.phantom.design import PhantomDesign
    from ImagInfoExtension.phantom.scanner import PhantomTruth

#: Version of the truth document this ImagInfo writes; it reads this one and older.
TRUTH_DOCUMENT_VERSION = 2
#: File names of a truth folder.
TRUTH_FILE = "truth.json"
TRUTH_LABELS_FILE = "truth_labels.nrrd"
#: How the virtual scanner labels voxels (``label_map.rule``).
LABEL_MAP_RULE = "voxel at least half inside the tree, or crossed by a centreline"
#: Longest step between truth points when detection is measured, in mm.
TRUTH_STEP_MM = 0.25
#: Relative slack of :func:`resample_polyline`'s step, so that a polyline already sampled
#: at the step, whose points a document rounded to 0.1 µm, is not sampled twice as densely.
_STEP_SLACK = 1e-3

_SEGMENT_NAME_RADIUS = re.compile(r"\br\s*=\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)")


# --------------------------------------------------------------------------- segment names


def segment_name(radius_mm: float) -> str:
    """The name of a radius class's segment, ``vessel r=1.5 mm``, which :func:`radius_from_segment_name` reads.

    The radius is written in its shortest exact form, so that it reads back unchanged.
    """
    text = repr(float(radius_mm))
    return f"vessel r={text[:-2] if text.endswith('.0') else text} mm"


def radius_from_segment_name(name: str) -> float | None:
    """The radius a segment's name states (``vessel r=1.5 mm``, ``r = 1.5 mm``), or None."""
    found = _SEGMENT_NAME_RADIUS.search(name)
    return float(found.group(1)) if found else None


# --------------------------------------------------------------------------- polylines


def resample_polyline(
    points_mm: np.ndarray | Sequence[Sequence[float]], max_step_mm: float = TRUTH_STEP_MM
) -> np.ndarray:
    """Points along a polyline at most ``max_step_mm`` apart.

    Every vertex is kept (both ends included); each piece between two vertices is cut
    into equal steps no longer than ``max_step_mm`` (to a relative 0.1%, so that a
    polyline already sampled at that step keeps its points). Repeated vertices are
    dropped.

    Parameters
    ----------
    points_mm : array-like (N, 3)
        The polyline's vertices.
    max_step_mm : float
        Longest step.

    Returns
    -------
    ndarray (M, 3)
    """
    if not max_step_mm > 0:
        raise ValueError(f"max_step_mm must be positive, got {max_step_mm}")
    points = np.asarray(points_mm, dtype=float).reshape(-1, 3)
    if len(points) < 2:
        return points.copy()
    pieces = np.diff(points, axis=0)
    lengths = np.linalg.norm(pieces, axis=1)
    moving = lengths > 0
    if not moving.any():
        return points[:1].copy()
    pieces, lengths, starts = pieces[moving], lengths[moving], points[:-1][moving]
    counts = np.maximum(1, np.ceil(lengths / max_step_mm - _STEP_SLACK)).astype(int)
    within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    steps = np.repeat(pieces / counts[:, None], counts, axis=0)
    samples = np.repeat(starts, counts, axis=0) + within[:, None] * steps
    return np.vstack([samples, points[-1]])


def polyline_weights_mm(points_mm: np.ndarray) -> np.ndarray:
    """The centreline length each point of a polyline stands for: half of each piece beside it.

    The weights sum to the polyline's length; an end point stands for half a step.
    """
    points = np.asarray(points_mm, dtype=float).reshape(-1, 3)
    weights = np.zeros(len(points))
    if len(points) > 1:
        halves = 0.5 * np.linalg.norm(np.diff(points, axis=0), axis=1)
        weights[:-1] += halves
        weights[1:] += halves
    return weights


# --------------------------------------------------------------------------- the document


@dataclass(frozen=True)
class TruthClass:
    """One radius class: its label in the label map, its name and colour, and what is known of it.

    Attributes
    ----------
    label : int
        Value of the class in the label map (k for the k-th radius, ascending).
    radius_mm : float
    name : str
        Segment name, ``vessel r=1.5 mm``.
    colour : tuple of float
        RGB, 0-1.
    true_volume_ml, centerline_length_mm : float or None
        When known.
    """

    label: int
    radius_mm: float
    name: str
    colour: tuple[float, float, float]
    true_volume_ml: float | None = None
    centerline_length_mm: float | None = None


def radius_classes(
    radii_mm: Sequence[float],
    true_volume_ml: Mapping[float, float] | None = None,
    centerline_length_mm: Mapping[float, float] | None = None,
) -> tuple[TruthClass, ...]:
    """The class table of some radii: label k for the k-th radius, ascending, named and coloured as views show them."""
    radii = sorted({float(r) for r in radii_mm})
    colours = radius_class_colours(len(radii))
    volumes = {float(r): float(v) for r, v in (true_volume_ml or {}).items()}
    lengths = {float(r): float(v) for r, v in (centerline_length_mm or {}).items()}
    return tuple(
        TruthClass(
            label=number,
            radius_mm=radius,
            name=segment_name(radius),
            colour=colours[number - 1],
            true_volume_ml=volumes.get(radius),
            centerline_length_mm=lengths.get(radius),
        )
        for number, radius in enumerate(radii, start=1)
    )


def segment_table(classes: Sequence[TruthClass]) -> list[dict]:
    """Label, name and RGB ``color`` of each class: what a segmentation node (or ``sample.json``) is built from."""
    return [{"label": c.label, "name": c.name, "color": list(c.colour)} for c in classes]


@dataclass(frozen=True, eq=False)
class TruthSegment:
    """One centreline piece of constant radius.

    Attributes
    ----------
    id : int or str
    radius_mm : float
    points_mm : ndarray (N, 3)
        LPS polyline vertices, or samples when ``weights_mm`` is given.
    parent_id : int, str or None
        The segment this one branches from.
    weights_mm : ndarray (N,), optional
        Centreline length each point stands for; then the points are used as they are.
    """

    id: int | str
    radius_mm: float
    points_mm: np.ndarray
    parent_id: int | str | None = None
    weights_mm: np.ndarray | None = None

    def samples(self, max_step_mm: float = TRUTH_STEP_MM) -> tuple[np.ndarray, np.ndarray]:
        """Points at most ``max_step_mm`` apart and the length each stands for.

        A polyline is resampled (:func:`resample_polyline`) and each point weighs its
        share of length (:func:`polyline_weights_mm`); given weights keep the points as
        they are.
        """
        if self.weights_mm is not None:
            return self.points_mm, self.weights_mm
        points = resample_polyline(self.points_mm, max_step_mm)
        return points, polyline_weights_mm(points)


@dataclass(frozen=True, eq=False)
class TruthDocument:
    """The truth document (``truth.json``) in memory.

    Attributes
    ----------
    segments : tuple of TruthSegment
    classes : tuple of TruthClass
        One per radius, ascending; every segment's radius has one.
    grid : ImageGrid, optional
        Grid of the label map.
    materials_hu : dict
        Material values (``vessel``, ``holder_pmma``, ``background_air``).
    holder : dict
        Description of the holder.
    label_map : dict, optional
        ``{"file": ..., "rule": ...}``: the label map beside the document.
    source : str
        Where the document came from (a file name, ``design``).
    version : int
        The version it was read as; it is always written as :data:`TRUTH_DOCUMENT_VERSION`.
    """

    segments: tuple[TruthSegment, ...]
    classes: tuple[TruthClass, ...] = ()
    grid: ImageGrid | None = None
    materials_hu: dict[str, float] = field(default_factory=dict)
    holder: dict[str, Any] = field(default_factory=dict)
    label_map: dict[str, str] | None = None
    source: str = TRUTH_FILE
    version: int = TRUTH_DOCUMENT_VERSION

    @property
    def radii_mm(self) -> tuple[float, ...]:
        return tuple(c.radius_mm for c in self.classes)

    @property
    def class_volume_ml(self) -> dict[float, float]:
        """True volume of each class that states one."""
        return {c.radius_mm: c.true_volume_ml for c in self.classes if c.true_volume_ml is not None}

    @property
    def total_volume_ml(self) -> float | None:
        """Sum of the class volumes, when every class states one."""
        if not self.classes or any(c.true_volume_ml is None for c in self.classes):
            return None
        return float(sum(c.true_volume_ml for c in self.classes))

    def to_json(self) -> dict:
        """The document as JSON-ready data, at the current version."""
        document: dict[str, Any] = {"version": TRUTH_DOCUMENT_VERSION, "coordinate_system": "LPS", "units": "mm"}
        if self.grid is not None:
            document["grid"] = _grid_to_json(self.grid)
        document["classes"] = [
            {
                "label": c.label,
                "radius_mm": c.radius_mm,
                "name": c.name,
                "colour": list(c.colour),
                "true_volume_ml": c.true_volume_ml,
                "centerline_length_mm": c.centerline_length_mm,
            }
            for c in self.classes
        ]
        if (total := self.total_volume_ml) is not None:
            document["total_volume_ml"] = total
        document["segments"] = [_segment_to_json(s) for s in self.segments]
        if self.materials_hu:
            document["materials_hu"] = dict(self.materials_hu)
        if self.holder:
            document["holder"] = dict(self.holder)
        if self.label_map:
            document["label_map"] = dict(self.label_map)
        return document

    @classmethod
    def from_json(cls, document: object, source: str = TRUTH_FILE) -> TruthDocument:
        """Check and read a truth document of any known version.

        Raises
        ------
        ValueError
            Naming the problem and its fix: not a document, a newer version, another
            coordinate system or unit, a missing or malformed key.
        """
        return _parse_document(document, source)


def _segment_to_json(segment: TruthSegment) -> dict:
    entry: dict[str, Any] = {
        "id": segment.id,
        "radius_mm": segment.radius_mm,
        "parent_id": segment.parent_id,
        "points": np.asarray(segment.points_mm, dtype=float).tolist(),
    }
    if segment.weights_mm is not None:
        entry["weights_mm"] = np.asarray(segment.weights_mm, dtype=float).tolist()
    return entry


def _grid_to_json(grid: ImageGrid) -> dict:
    return {
        "size_ijk": list(grid.size_ijk),
        "spacing_mm": list(grid.spacing_mm),
        "origin_mm": list(grid.origin_mm),
        "direction": list(grid.direction),
    }


def _not_a_document(source: str, problem: str) -> ValueError:
    return ValueError(
        f"{source} is not an ImagInfo truth document: {problem}. Give the truth.json that 'imaginfo phantom' "
        "writes, or a document with 'segments': [{'radius_mm': ..., 'points': [[x, y, z], ...]}] in LPS mm"
    )


def _number(value: object, what: str, source: str, positive: bool = False) -> float:
    """A finite number, or an error naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise _not_a_document(source, f"{what} must be a number, got {value!r}")
    if positive and value <= 0:
        raise _not_a_document(source, f"{what} must be positive, got {value!r}")
    return float(value)


def _optional_number(entry: Mapping, key: str, what: str, source: str) -> float | None:
    return None if entry.get(key) is None else _number(entry[key], f"{what} {key}", source)


def _parse_version(document: Mapping, source: str) -> int:
    # Version 1 predates the key: a document without it is one.
    version = document.get("version", 1)
    if isinstance(version, bool) or not isinstance(version, numbers.Integral) or version < 1:
        raise _not_a_document(source, f"'version' must be a positive integer, got {version!r}")
    if version > TRUTH_DOCUMENT_VERSION:
        raise ValueError(
            f"{source} is a truth document of version {version}, newer than this ImagInfo reads (versions 1 to "
            f"{TRUTH_DOCUMENT_VERSION}): update ImagInfo (pip install --upgrade imaginfo), or write the truth "
            "with this version"
        )
    return int(version)


def _parse_points(value: object, what: str, source: str) -> np.ndarray:
    try:
        points = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        points = None
    if points is None or points.ndim != 2 or points.shape[1] != 3 or len(points) == 0:
        raise _not_a_document(source, f"{what} 'points' must be a non-empty list of [x, y, z] in mm")
    if not np.isfinite(points).all():
        raise _not_a_document(source, f"{what} 'points' holds a value that is not a finite number")
    return points


def _parse_segment(entry: object, number: int, source: str) -> TruthSegment:
    what = f"segment {number}"
    if not isinstance(entry, Mapping):
        raise _not_a_document(source, f"{what} must be an object with 'radius_mm' and 'points'")
    for key in ("radius_mm", "points"):
        if key not in entry:
            raise _not_a_document(source, f"{what} lacks '{key}'")
    radius = _number(entry["radius_mm"], f"{what} radius_mm", source, positive=True)
    points = _parse_points(entry["points"], what, source)
    weights = None
    if entry.get("weights_mm") is not None:
        try:
            weights = np.asarray(entry["weights_mm"], dtype=float)
        except (TypeError, ValueError):
            weights = np.zeros(0)
        if weights.shape != (len(points),) or not np.isfinite(weights).all() or (weights < 0).any():
            raise _not_a_document(
                source, f"{what} has {len(points)} points but its 'weights_mm' are not {len(points)} lengths >= 0"
            )
    return TruthSegment(
        id=entry.get("id", number),
        radius_mm=radius,
        points_mm=points,
        parent_id=entry.get("parent_id"),
        weights_mm=weights,
    )


def _parse_classes(entries: object, segments: Sequence[TruthSegment], source: str) -> tuple[TruthClass, ...]:
    """The class table, completed: version-1 classes lack label, name and colour, and may be missing."""
    if not isinstance(entries, list):
        raise _not_a_document(source, "'classes' must be a list")
    stated: dict[float, Mapping] = {}
    for number, entry in enumerate(entries):
        if not isinstance(entry, Mapping) or "radius_mm" not in entry:
            raise _not_a_document(source, f"class {number} lacks 'radius_mm'")
        radius = _number(entry["radius_mm"], f"class {number} radius_mm", source, positive=True)
        if radius in stated:
            raise _not_a_document(source, f"radius {radius:g} mm has two classes")
        stated[radius] = entry
    radii = sorted({*stated, *(s.radius_mm for s in segments)})
    defaults = radius_classes(radii)
    classes = []
    for default in defaults:
        entry = stated.get(default.radius_mm, {})
        what = f"class r={default.radius_mm:g} mm"
        label = entry.get("label", default.label)
        if isinstance(label, bool) or not isinstance(label, numbers.Integral) or label < 1:
            raise _not_a_document(source, f"{what} label must be a positive integer, got {label!r}")
        colour = entry.get("colour", default.colour)
        if not isinstance(colour, Sequence) or len(colour) != 3:
            raise _not_a_document(source, f"{what} colour must be [r, g, b] in 0-1, got {colour!r}")
        classes.append(
            TruthClass(
                label=int(label),
                radius_mm=default.radius_mm,
                name=str(entry.get("name", default.name)),
                colour=tuple(_number(c, f"{what} colour", source) for c in colour),
                true_volume_ml=_optional_number(entry, "true_volume_ml", what, source),
                centerline_length_mm=_optional_number(entry, "centerline_length_mm", what, source),
            )
        )
    labels = [c.label for c in classes]
    if len(set(labels)) != len(labels):
        raise _not_a_document(source, f"two classes share a label ({labels})")
    return tuple(classes)


def _parse_grid(entry: object, source: str) -> ImageGrid:
    try:
        return ImageGrid(
            size_ijk=tuple(int(v) for v in entry["size_ijk"]),
            spacing_mm=tuple(float(v) for v in entry["spacing_mm"]),
            origin_mm=tuple(float(v) for v in entry["origin_mm"]),
            direction=tuple(float(v) for v in entry["direction"]),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise _not_a_document(
            source, f"'grid' needs size_ijk, spacing_mm, origin_mm and direction ({type(error).__name__}: {error})"
        ) from None


def _parse_document(document: object, source: str) -> TruthDocument:
    if not isinstance(document, Mapping):
        raise _not_a_document(source, f"it holds a JSON {type(document).__name__}, not an object")
    version = _parse_version(document, source)
    frame = document.get("coordinate_system", "LPS")
    if frame != "LPS":
        raise ValueError(
            f"{source}: coordinate_system must be 'LPS', got {frame!r}. ImagInfo reads truths in DICOM's LPS frame: "
            "convert the points (from RAS, negate x and y) and set coordinate_system to 'LPS'"
        )
    units = document.get("units", "mm")
    if units != "mm":
        raise ValueError(f"{source}: units must be 'mm', got {units!r}; convert the points and radii to millimetres")
    if "segments" not in document:
        raise _not_a_document(source, "it lacks 'segments'")
    if not isinstance(document["segments"], list) or not document["segments"]:
        raise _not_a_document(source, "'segments' must be a non-empty list")
    segments = tuple(_parse_segment(entry, number, source) for number, entry in enumerate(document["segments"]))
    classes = _parse_classes(document.get("classes", []), segments, source)
    for key in ("materials_hu", "holder"):
        if not isinstance(document.get(key) or {}, Mapping):
            raise _not_a_document(source, f"'{key}' must be an object")
    label_map = document.get("label_map")
    if label_map is not None and not (isinstance(label_map, Mapping) and isinstance(label_map.get("file"), str)):
        raise _not_a_document(source, "'label_map' must be an object naming its 'file'")
    return TruthDocument(
        segments=segments,
        classes=classes,
        grid=_parse_grid(document["grid"], source) if document.get("grid") is not None else None,
        materials_hu=dict(document.get("materials_hu") or {}),
        holder=dict(document.get("holder") or {}),
        label_map=dict(label_map) if label_map is not None else None,
        source=source,
        version=version,
    )


def document_from_design(
    design: PhantomDesign,
    class_volume_ml: Mapping[float, float] | None = None,
    grid: ImageGrid | None = None,
    centerline_step_mm: float | None = TRUTH_STEP_MM,
    describe_holder: bool = True,
    source: str = "design",
) -> TruthDocument:
    """The truth document of a design.

    Parameters
    ----------
    design : PhantomDesign
    class_volume_ml : mapping, optional
        True volume of each radius class.
    grid : ImageGrid, optional
        Grid of the label map written beside the document (which then names it).
    centerline_step_mm : float or None
        Sample each centreline at this step (points rounded to 0.1 µm, as readers
        without resampling need them); None writes the two end points only.
    describe_holder : bool
        Include the holder and its material (not for cylinder phantoms, whose image
        has none).
    source : str
    """
    segments = []
    for segment in design.segments:
        ends = np.array([segment.start_mm, segment.end_mm], dtype=float)
        points = ends if centerline_step_mm is None else np.round(resample_polyline(ends, centerline_step_mm), 4)
        segments.append(TruthSegment(segment.id, float(segment.radius_mm), points, segment.parent_id))
    materials = {"vessel": design.vessel_hu, "background_air": design.background_hu}
    holder = {}
    if describe_holder:
        materials["holder_pmma"] = design.holder_hu
        holder = {
            "shape": "superellipse along z",
            "outer_semi_axes_mm": list(design.holder.outer_semi_axes_mm),
            "wall_thickness_mm": design.holder.wall_thickness_mm,
            "base_thickness_mm": design.holder.base_thickness_mm,
            "exponent": design.holder.exponent,
            "centre_xy_mm": list(design.holder.centre_xy_mm),
        }
    return TruthDocument(
        segments=tuple(segments),
        classes=radius_classes(design.radius_classes_mm, class_volume_ml, design.centerline_length_mm()),
        grid=grid,
        materials_hu=materials,
        holder=holder,
        label_map={"file": TRUTH_LABELS_FILE, "rule": LABEL_MAP_RULE} if grid is not None else None,
        source=source,
    )


def write_truth(
    truth: TruthDocument | PhantomTruth | Mapping, folder: str | Path, labels: sitk.Image | None = None
) -> dict[str, Path]:
    """Write ``truth.json`` and, with a label map, ``truth_labels.nrrd``; each whole or not at all.

    Parameters
    ----------
    truth : TruthDocument, PhantomTruth or dict
        A phantom truth brings its own label map; a dict is checked as
        :meth:`TruthDocument.from_json` does.
    folder : path
    labels : SimpleITK.Image, optional
        The label map of a document (label k for its k-th class). Without one, the
        document written names no label map.

    Returns
    -------
    dict
        ``{"truth": path}`` and, with a label map, ``{"labels": path}``.
    """
    folder = Path(folder)
    if isinstance(truth, TruthDocument):
        document = truth
    elif isinstance(truth, Mapping):
        document = TruthDocument.from_json(truth, "the truth document")
    else:
        document, labels = truth.document(), truth.label_image()
    paths = {"truth": folder / TRUTH_FILE}
    if labels is None:
        document = replace(document, label_map=None)
    else:
        grid = ImageGrid.from_sitk(labels)
        if document.grid is not None and not document.grid.same_as(grid, tolerance_mm=1e-3):
            raise ValueError("the label map's grid differs from the grid the truth document states; give both one grid")
        rule = (document.label_map or {}).get("rule", LABEL_MAP_RULE)
        document = replace(document, grid=grid, label_map={"file": TRUTH_LABELS_FILE, "rule": rule})
        paths["labels"] = folder / TRUTH_LABELS_FILE
        # The label map goes first: a truth.json on disk always has its label map beside it.
        write_atomically(paths["labels"], lambda p: write_image(labels, p))
    text = json.dumps(document.to_json(), indent=1)
    write_atomically(paths["truth"], lambda p: p.write_text(text))
    return paths


def read_truth(path: str | Path) -> TruthDocument:
    """Read a truth document: ``truth.json``, or a folder holding one.

    Raises
    ------
    FileNotFoundError
        When there is no such file.
    ValueError
        When the file is not JSON or not a truth document this version reads; the
        message names the problem and the fix.
    """
    path = Path(path)
    if path.is_dir():
        path = path / TRUTH_FILE
    if not path.is_file():
        raise FileNotFoundError(f"truth file not found: {path}")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(
            f"{path.name} is not valid JSON ({error}): give the truth.json that 'imaginfo phantom' writes, or "
            "a truth label map image (.nrrd, .nii.gz)"
        ) from None
    return TruthDocument.from_json(document, path.name)


# --------------------------------------------------------------------------- the mask view


@dataclass(frozen=True, eq=False)
class MaskTruth:
    """The truth as a label map with its class table: what segmentation metrics compare against.

    Attributes
    ----------
    labels : SimpleITK.Image
        Integer label map: 0 background, ``classes[n].label`` for each class.
    classes : tuple of TruthClass
    source : str
    """

    labels: sitk.Image
    classes: tuple[TruthClass, ...]
    source: str = TRUTH_LABELS_FILE

    @property
    def grid(self) -> ImageGrid:
        return ImageGrid.from_sitk(self.labels)

    @property
    def radii_mm(self) -> tuple[float, ...]:
        return tuple(c.radius_mm for c in self.classes)

    def label_array(self) -> np.ndarray:
        """The labels as a ``[k, j, i]`` array."""
        return sitk.GetArrayFromImage(self.labels)

    def class_of_label(self, label: int) -> TruthClass:
        for truth_class in self.classes:
            if truth_class.label == label:
                return truth_class
        raise KeyError(f"{self.source} has no class with label {label}")

    def segment_table(self) -> list[dict]:
        return segment_table(self.classes)

    def resampled_onto(self, reference: sitk.Image | ImageGrid) -> MaskTruth:
        """The truth on another grid: each voxel takes the label at its centre (nearest neighbour, LPS mm).

        Parameters
        ----------
        reference : SimpleITK.Image or ImageGrid
            The image (any pixel type) or grid to resample onto.
        """
        if isinstance(reference, ImageGrid):
            reference = reference.to_sitk(np.zeros(reference.shape_kji, dtype=np.uint8))
        resampled = sitk.Resample(
            self.labels, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, self.labels.GetPixelID()
        )
        return MaskTruth(resampled, self.classes, self.source)

    @classmethod
    def from_label_map(
        cls, labels: sitk.Image, radii_mm: Sequence[float] | None = None, source: str = "label map"
    ) -> MaskTruth:
        """A label map whose value k marks the radius class ``radii_mm[k - 1]`` (default the phantom's classes)."""
        if radii_mm is None:
            # Imported here: the phantom package pulls pandas in, which importing this module must not.
            from ImagInfoExtension.phantom.design import DEFAULT_RADII_MM

            radii_mm = DEFAULT_RADII_MM
        labels = _integer_labels(labels, source)
        present = [int(v) for v in np.unique(sitk.GetArrayViewFromImage(labels)) if v > 0]
        radii = [float(r) for r in radii_mm]
        if present and max(present) > len(radii):
            raise ValueError(
                f"{source} has label {max(present)} but only {len(radii)} radius classes are known; "
                "give the class radii (--radii) in label order"
            )
        # Label k is the k-th radius as given (a segmentation's segments need not ascend);
        # the colours still run from the thinnest class to the thickest.
        colours = {c.radius_mm: c.colour for c in radius_classes(radii)}
        classes = tuple(
            TruthClass(label=number, radius_mm=radius, name=segment_name(radius), colour=colours[radius])
            for number, radius in enumerate(radii, start=1)
        )
        return cls(labels, classes, source)

    @classmethod
    def from_document(cls, document: TruthDocument, folder: str | Path) -> MaskTruth:
        """The label map a document names, read from ``folder``, with the document's class table."""
        name = (document.label_map or {}).get("file", TRUTH_LABELS_FILE)
        path = Path(folder) / name
        if not path.is_file():
            raise FileNotFoundError(
                f"{document.source} names the label map {name}, which is not in {folder}; "
                "keep the truth folder's files together (or write them again with 'imaginfo phantom')"
            )
        labels = _integer_labels(read_image(path), name)
        if document.grid is not None and not document.grid.same_as(ImageGrid.from_sitk(labels), tolerance_mm=1e-3):
            raise ValueError(f"{name} does not lie on the grid {document.source} states; write the truth folder again")
        known = {c.label for c in document.classes}
        unknown = sorted({int(v) for v in np.unique(sitk.GetArrayViewFromImage(labels)) if v > 0} - known)
        if unknown:
            raise ValueError(f"{name} holds labels {unknown} that no class of {document.source} describes")
        return cls(labels, document.classes, name)


def _integer_labels(labels: sitk.Image, source: str) -> sitk.Image:
    """The label map as an integer image; a float image must hold whole numbers."""
    if labels.GetNumberOfComponentsPerPixel() != 1 or labels.GetDimension() != 3:
        raise ValueError(f"{source} is not a 3D label map (one integer per voxel)")
    array = sitk.GetArrayViewFromImage(labels)
    if np.issubdtype(array.dtype, np.integer):
        return labels
    if not np.array_equal(array, np.round(array)) or (array < 0).any():
        raise ValueError(f"{source} holds fractional or negative values: a label map holds class numbers 0, 1, 2, ...")
    return sitk.Cast(labels, sitk.sitkUInt16)


def read_mask_truth(path: str | Path, radii_mm: Sequence[float] | None = None) -> MaskTruth:
    """The mask truth of a truth folder (or its ``truth.json``), or of a label map file.

    Parameters
    ----------
    path : path
        A folder or ``truth.json`` (whose label map lies beside it), or a label map.
    radii_mm : sequence of float, optional
        For a label map: the radius of label k, ascending; default the phantom's classes.
    """
    path = Path(path)
    if path.is_dir() or path.suffix.lower() == ".json":
        document = read_truth(path)
        return MaskTruth.from_document(document, path if path.is_dir() else path.parent)
    if not path.exists():
        raise FileNotFoundError(f"truth file not found: {path}")
    return MaskTruth.from_label_map(read_image(path), radii_mm, path.name)


def dice_per_class(truth: MaskTruth, labels: sitk.Image) -> dict[float, float]:
    """Dice overlap of each truth class with the same label in ``labels``, keyed by radius.

    ``labels`` classes voxels as the truth does (label k for the k-th radius, as
    :attr:`ImagInfoExtension.vessels.VesselQuantification.labels` does with the truth's
    radii); the truth is resampled onto its grid. NaN where both are empty.
    """
    truth_array = truth.resampled_onto(labels).label_array()
    measured = sitk.GetArrayViewFromImage(labels)
    scores = {}
    for truth_class in truth.classes:
        expected, found = truth_array == truth_class.label, measured == truth_class.label
        total = int(expected.sum()) + int(found.sum())
        scores[truth_class.radius_mm] = 2.0 * int((expected & found).sum()) / total if total else float("nan")
    return scores
