"""Per-radius vessel quantification of a phantom CT: the whole pipeline and its outputs.

Region → multiscale vesselness → minimum-cut segmentation → centrelines with local
radius → per-radius-class statistics, and, given the phantom's design, detection and
radius accuracy per true class.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
from scipy.spatial import cKDTree

from ImagInfoExtension.geometry import ImageGrid
from ImagInfoExtension.io import json_default, write_atomically, write_image
from ImagInfoExtension.phantom.design import DEFAULT_RADII_MM
from ImagInfoExtension.progress import ProgressCallback
from ImagInfoExtension.provenance import software_versions
from ImagInfoExtension.report import radius_class_colours
from ImagInfoExtension.vessels.centerlines import (
    METHOD_DISTANCE,
    METHOD_INTEGRAL,
    CenterlineParameters,
    Centerlines,
    extract_centerlines,
)
from ImagInfoExtension.vessels.graphcut import GraphCutParameters, graph_cut_segmentation
from ImagInfoExtension.vessels.region import find_holder_cavity
from ImagInfoExtension.vessels.truth import VesselTruth, register_truth_to_image
from ImagInfoExtension.vessels.vesselness import VesselnessParameters, scales_for_radii, vesselness

#: Columns of the per-radius table, always present.
BASE_COLUMNS = ("radius_mm", "n_voxels", "volume_ml", "mpv_hu", "iqr_hu")
#: Columns added when a truth is given.
TRUTH_COLUMNS = (
    "true_length_mm",
    "detected_length_mm",
    "detection_rate",
    "correct_radius_rate",
    "est_radius_mm",
    "radius_bias_mm",
)
#: Display colour of vessel voxels whose radius could not be measured.
UNRESOLVED_COLOUR = (0.6, 0.6, 0.6)
#: Share of the truth's centreline that must fall inside the image.
MIN_TRUTH_INSIDE = 0.5


@dataclass(frozen=True)
class VesselParameters:
    """Everything that sets the result of :func:`quantify_vessels`.

    Parameters
    ----------
    scales_mm : tuple of float, optional
        Vesselness scales; by default derived from the radius classes.
    vessel_hu : float
        Material value of the vessels (Visijet EX200 prints measure about 100 HU).
    background_hu : float, optional
        Air level inside the holder; by default the region's median.
    noise_sd_hu : float, optional
        Image noise; by default from the upper half of the region's histogram
        (the lower half may be clipped at -1024 HU).
    wall_margin_mm : float
        Distance kept from the holder wall when the region is found automatically.
    core_depth_mm : float
        MPV and IQR use voxels at least this deep inside the segmentation (at most
        half the class radius), so that they measure the material and its noise
        rather than the blurred edge.
    register_truth : bool
        Rigidly align the truth to the image before comparing.
    """

    scales_mm: tuple[float, ...] | None = None
    vessel_hu: float = 100.0
    background_hu: float | None = None
    noise_sd_hu: float | None = None
    wall_margin_mm: float = 2.0
    core_depth_mm: float = 1.0
    register_truth: bool = False
    vesselness: dict = field(default_factory=dict)
    graph_cut: dict = field(default_factory=dict)
    centerlines: dict = field(default_factory=dict)


@dataclass
class VesselQuantification:
    """The result of one run.

    Attributes
    ----------
    per_radius : pandas.DataFrame
        One row per radius class (``BASE_COLUMNS`` and, with a truth,
        ``TRUTH_COLUMNS``), then an ``unresolved`` row for vessel voxels whose
        centreline radius could not be measured.
    labels : ndarray of uint8, ``[k, j, i]``
        Class index (1-based, ascending radius; ``len(radii)+1`` = unresolved).
    grid : ImageGrid
    radii_mm : tuple of float
    centerline_points_mm : ndarray (N, 3)
        LPS.
    centerline_radius_mm : ndarray (N,)
        NaN where unresolved.
    centerline_method : ndarray (N,)
    summary : dict
    """

    per_radius: pd.DataFrame
    labels: np.ndarray
    grid: ImageGrid
    radii_mm: tuple[float, ...]
    centerline_points_mm: np.ndarray
    centerline_radius_mm: np.ndarray
    centerline_method: np.ndarray
    summary: dict

    @property
    def total_volume_ml(self) -> float:
        return float(self.summary["total_volume_ml"])

    def class_table(self) -> list[dict]:
        """Label index, radius, name and display colour (RGB 0-1) of each class of :attr:`labels`."""
        colours = radius_class_colours(len(self.radii_mm))
        rows = [
            {"index": n + 1, "radius_mm": r, "name": f"r = {r:g} mm", "color": colours[n]}
            for n, r in enumerate(self.radii_mm)
        ]
        rows.append(
            {"index": len(self.radii_mm) + 1, "radius_mm": None, "name": "unresolved", "color": UNRESOLVED_COLOUR}
        )
        return rows


def validate_ct_image(image: sitk.Image) -> None:
    """Refuse images the pipeline cannot measure, naming the problem and the fix."""
    if image.GetDimension() != 3 or min(image.GetSize()) < 3:
        raise ValueError(
            f"the image is {image.GetDimension()}D with size {image.GetSize()}; vessel quantification needs a 3D CT "
            "volume with at least 3 voxels along each axis (load the whole series, not one slice)"
        )
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError("the image has several components per voxel (colour or vector); give a scalar CT volume")
    array = sitk.GetArrayViewFromImage(image)
    sample = np.asarray(array[:: max(1, array.shape[0] // 16)], dtype=np.float32)
    low, high = np.percentile(sample, [0.5, 99.5])
    if low > -500 or low < -3000 or high > 5000:
        raise ValueError(
            f"the image values ({low:.0f} to {high:.0f}) are not a CT range in HU: a phantom CT holds air near "
            "-1000 HU. Convert the image to HU (apply the DICOM rescale slope and intercept) before measuring"
        )


def _region_mask(mask: sitk.Image | np.ndarray, grid: ImageGrid) -> np.ndarray:
    if isinstance(mask, sitk.Image):
        if mask.GetDimension() != 3 or not ImageGrid.from_sitk(mask).same_as(grid, tolerance_mm=1e-3):
            raise ValueError(
                "the mask's geometry (size, spacing, origin or direction) differs from the image's; "
                "resample the mask onto the image grid (e.g. Slicer's 'Resample Image (BRAINS)' or "
                "sitk.Resample with nearest-neighbour interpolation)"
            )
        mask = sitk.GetArrayFromImage(mask)
    mask = np.asarray(mask)
    if mask.shape != grid.shape_kji:
        raise ValueError(f"the mask's shape {mask.shape} differs from the image's {grid.shape_kji}; resample it")
    mask = mask > 0
    if not mask.any():
        raise ValueError("the mask is empty; give a mask that covers the vessels")
    return mask


def background_statistics(values: np.ndarray) -> tuple[float, float]:
    """Median and noise SD of a background sample, the SD from its upper half.

    CT stores air near the bottom of its range, so at low dose the lower half of the
    air histogram is clipped (at -1024 HU); the upper quartile is not.
    """
    median, upper = np.percentile(values, [50, 75])
    return float(median), float((upper - median) / 0.6745)


def _assign_classes(radius_mm: np.ndarray, radii_mm: Sequence[float]) -> np.ndarray:
    """Nearest class index (1-based) of each radius; ``len(radii)+1`` for NaN."""
    radii = np.asarray(radii_mm, dtype=float)
    index = np.full(len(radius_mm), len(radii) + 1, dtype=np.int64)
    finite = np.isfinite(radius_mm)
    index[finite] = np.argmin(np.abs(radius_mm[finite, None] - radii[None, :]), axis=1) + 1
    return index


def _class_statistics(
    image: np.ndarray,
    labels: np.ndarray,
    depth_mm: np.ndarray,
    radii: Sequence[float],
    voxel_volume_mm3: float,
    core_depth_mm: float,
) -> pd.DataFrame:
    rows = []
    for number, radius in enumerate([*radii, np.nan], start=1):
        members = labels == number
        count = int(members.sum())
        row = {"radius_mm": radius, "n_voxels": count, "volume_ml": count * voxel_volume_mm3 / 1000.0}
        depth_needed = core_depth_mm if not np.isfinite(radius) else min(core_depth_mm, 0.5 * radius)
        core = members & (depth_mm >= depth_needed - 1e-6)
        values = image[core] if core.any() else image[members]
        if len(values):
            q25, q50, q75 = np.percentile(values, [25, 50, 75])
            row.update(mpv_hu=float(q50), iqr_hu=float(q75 - q25), stat_voxels=int(len(values)))
        else:
            row.update(mpv_hu=np.nan, iqr_hu=np.nan, stat_voxels=0)
        rows.append(row)
    table = pd.DataFrame(rows)
    table["class"] = [f"{r:g}" for r in radii] + ["unresolved"]
    return table


def compare_with_truth(
    truth: VesselTruth,
    segmentation: np.ndarray,
    grid: ImageGrid,
    centerline_points_mm: np.ndarray,
    centerline_radius_mm: np.ndarray,
) -> pd.DataFrame:
    """Detection and radius accuracy per true radius class.

    The truth's points lie at most 0.25 mm apart along its centrelines
    (``ImagInfoExtension.truth.TRUTH_STEP_MM``), each standing for its share of length,
    so the detected length does not move in steps of a sparse design's vertices. A truth
    point is detected when the voxel holding it is segmented, or when a segmented voxel
    lies within the point's true radius of it (at least half a voxel; see
    :meth:`VesselTruth.detected_in`): an end point on a flat end cap, where partial
    volume may leave its own voxel out, still counts. Its estimated radius is that of
    the nearest extracted centreline point within its true radius plus two voxels; the
    radius is correct when it falls in the true class.
    """
    radii = truth.radii_mm
    detected = truth.detected_in(segmentation, grid)
    estimate = np.full(len(detected), np.nan)
    matched = np.zeros(len(detected), dtype=bool)
    if len(centerline_points_mm):
        reach = truth.radius_mm + 2.0 * float(np.mean(grid.spacing_mm))
        distance, nearest = cKDTree(centerline_points_mm).query(truth.points_mm)
        matched = detected & (distance <= reach)
        estimate[matched] = centerline_radius_mm[nearest[matched]]
    estimated_class = _assign_classes(estimate, radii)
    true_class = _assign_classes(truth.radius_mm, radii)
    rows = []
    for number, radius in enumerate(radii, start=1):
        members = true_class == number
        length = float(truth.weight_mm[members].sum())
        found = members & detected
        detected_length = float(truth.weight_mm[found].sum())
        correct = found & (estimated_class == number)
        finite = found & np.isfinite(estimate)
        median_estimate = float(np.median(estimate[finite])) if finite.any() else np.nan
        rows.append(
            {
                "true_length_mm": length,
                "detected_length_mm": detected_length,
                "detection_rate": detected_length / length if length > 0 else np.nan,
                "correct_radius_rate": float(correct.sum() / found.sum()) if found.any() else np.nan,
                "est_radius_mm": median_estimate,
                "radius_bias_mm": median_estimate - radius,
            }
        )
    return pd.DataFrame(rows)


def _check_truth_inside(truth: VesselTruth, grid: ImageGrid) -> float:
    index = grid.index_from_physical(truth.points_mm)
    inside = np.all((index >= -0.5) & (index <= np.asarray(grid.size_ijk) - 0.5), axis=1)
    return float(truth.weight_mm[inside].sum() / truth.weight_mm.sum())


def quantify_vessels(
    image: sitk.Image,
    truth: VesselTruth | None = None,
    mask: sitk.Image | np.ndarray | None = None,
    radii_mm: Sequence[float] | None = None,
    parameters: VesselParameters | None = None,
    progress: ProgressCallback | None = None,
) -> VesselQuantification:
    """Extract the phantom's vessels and quantify them per radius class.

    Parameters
    ----------
    image : SimpleITK.Image
        3D CT in HU, any orientation and spacing.
    truth : VesselTruth, optional
        The phantom's design (see :mod:`ImagInfoExtension.vessels.truth`), in LPS mm.
        Its radius classes then define the table's rows.
    mask : SimpleITK.Image or ndarray, optional
        Where to look (non-zero); on the image's grid. By default the air cavity
        inside the holder.
    radii_mm : sequence of float, optional
        Radius classes without a truth; default ``DEFAULT_RADII_MM``.
    parameters : VesselParameters, optional
    progress : callable, optional
        ``progress(done, total, message)``; it may raise
        :class:`~ImagInfoExtension.progress.Cancelled` to stop the run (nothing is written).

    Returns
    -------
    VesselQuantification

    Examples
    --------
    >>> from ImagInfoExtension.io import read_image
    >>> from ImagInfoExtension.vessels import load_truth, quantify_vessels
    >>> result = quantify_vessels(read_image("FBP_4mGy_rep1.nrrd"), truth=load_truth("truth.json"))  # doctest: +SKIP
    >>> result.per_radius[["radius_mm", "volume_ml", "mpv_hu", "iqr_hu"]]  # doctest: +SKIP
    """
    started = time.perf_counter()
    parameters = parameters or VesselParameters()
    timings: dict[str, float] = {}

    def report(done: int, message: str) -> None:
        if progress is not None:
            progress(done, 100, message)

    def lap(name: str, since: float) -> float:
        now = time.perf_counter()
        timings[name] = round(now - since, 3)
        return now

    validate_ct_image(image)
    grid = ImageGrid.from_sitk(image)
    spacing = np.asarray(grid.spacing_mm, dtype=float)[::-1]
    if truth is not None:
        radii = tuple(truth.radii_mm)
    else:
        radii = tuple(sorted(float(r) for r in (radii_mm if radii_mm is not None else DEFAULT_RADII_MM)))
    if not radii or min(radii) <= 0:
        raise ValueError("radius classes must be positive millimetres, e.g. --radii 0.5,1,2,3")
    transform = None
    if truth is not None:
        if parameters.register_truth:
            report(0, "aligning the design to the image")
        elif (share := _check_truth_inside(truth, grid)) < MIN_TRUTH_INSIDE:
            raise ValueError(
                f"the truth lies outside the image: only {100 * share:.0f}% of its centreline falls inside the "
                "image grid. Check that truth and image share the LPS frame, or ask for a rigid registration "
                "(--register-truth)"
            )
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    stamp = time.perf_counter()
    report(1, "finding the measurement region")
    if mask is not None:
        region = _region_mask(mask, grid)
        region_source = "user mask"
    else:
        found = find_holder_cavity(array, spacing, parameters.wall_margin_mm)
        region, region_source = found.mask, found.source
        if not region.any():
            raise ValueError(
                "no measurement region: the holder's cavity is empty once its wall margin is removed "
                "(is this the vessel phantom?); give a mask (--mask) around the vessels"
            )
    stamp = lap("region", stamp)

    sample = array[region][:: max(1, int(region.sum() // 2_000_000))]
    background, noise = background_statistics(sample)
    if parameters.background_hu is not None:
        background = parameters.background_hu
    if parameters.noise_sd_hu is not None:
        noise = parameters.noise_sd_hu
    contrast = parameters.vessel_hu - background
    if contrast < 200:
        raise ValueError(
            f"vessels at {parameters.vessel_hu:g} HU barely stand out of a background at {background:.0f} HU; "
            "check the region (give a mask around the vessels) or set vessel_hu"
        )
    scales = parameters.scales_mm or scales_for_radii([r for r in radii if r >= 0.5] or radii, grid.spacing_mm)
    vesselness_parameters = VesselnessParameters(scales_mm=tuple(scales), **parameters.vesselness)

    def vesselness_progress(done: int, total: int, message: str) -> None:
        report(5 + int(45 * done / total), message)

    measure = vesselness(array, spacing, vesselness_parameters, contrast, region, vesselness_progress)
    stamp = lap("vesselness", stamp)
    report(50, "graph-cut segmentation")
    segmentation = graph_cut_segmentation(
        array,
        measure,
        region,
        spacing,
        background,
        parameters.vessel_hu,
        noise,
        GraphCutParameters(**parameters.graph_cut),
    )
    del measure
    stamp = lap("graph_cut", stamp)
    report(70, "centrelines and radii")
    centerlines: Centerlines = extract_centerlines(
        segmentation,
        array,
        spacing,
        background,
        parameters.vessel_hu,
        region,
        CenterlineParameters(**parameters.centerlines),
    )
    stamp = lap("centerlines", stamp)
    report(85, "per-radius statistics")
    labels = np.zeros(grid.shape_kji, dtype=np.uint8)
    depth = np.zeros(grid.shape_kji, dtype=np.float32)
    if centerlines.depth_mm is not None:
        depth[centerlines.depth_box] = centerlines.depth_mm
    vessel_index = np.argwhere(segmentation)
    if len(vessel_index) and len(centerlines):
        _, nearest = cKDTree(centerlines.index_kji * spacing).query(vessel_index * spacing)
        classes = _assign_classes(centerlines.radius_mm[nearest], radii)
        labels[tuple(vessel_index.T)] = classes
    elif len(vessel_index):
        labels[segmentation] = len(radii) + 1
    table = _class_statistics(array, labels, depth, radii, grid.voxel_volume_mm3, parameters.core_depth_mm)
    points_mm = grid.physical_from_index(centerlines.index_kji[:, ::-1]) if len(centerlines) else np.zeros((0, 3))
    truth_summary = None
    if truth is not None:
        if parameters.register_truth:
            transform = register_truth_to_image(truth, image, segmentation)
            truth = truth.transformed(transform)
            share = _check_truth_inside(truth, grid)
            if share < MIN_TRUTH_INSIDE:
                raise ValueError(
                    f"after registration only {100 * share:.0f}% of the truth lies inside the image; "
                    "the design does not match this image"
                )
        comparison = compare_with_truth(truth, segmentation, grid, points_mm, centerlines.radius_mm)
        unresolved = pd.DataFrame([dict.fromkeys(comparison.columns, np.nan)])
        table = pd.concat([table, pd.concat([comparison, unresolved], ignore_index=True)], axis=1)
        truth_summary = {
            "source": truth.source,
            "registered": bool(parameters.register_truth),
            "design_to_image_transform": None
            if transform is None
            else {
                "matrix": list(transform.GetMatrix()),
                "translation": list(transform.GetTranslation()),
                "center": list(transform.GetCenter()),
            },
            "true_total_volume_ml": float(sum(truth.class_volume_ml.values())) if truth.class_volume_ml else None,
        }
    extra = [c for c in table.columns if c not in BASE_COLUMNS + TRUTH_COLUMNS]
    table = table[[c for c in BASE_COLUMNS + TRUTH_COLUMNS if c in table.columns] + extra]
    lap("statistics", stamp)
    total_volume = float(segmentation.sum() * grid.voxel_volume_mm3 / 1000.0)
    runtime = time.perf_counter() - started
    summary = {
        "total_volume_ml": total_volume,
        "runtime_s": round(runtime, 3),
        "timings_s": timings,
        "region": {"source": region_source, "voxels": int(region.sum())},
        "levels_hu": {"background": background, "vessel": parameters.vessel_hu, "noise_sd": noise},
        "scales_mm": list(scales),
        "parameters": asdict(parameters),
        "classes": None,
        "centerline_points": int(len(centerlines)),
        "centerline_methods": {
            "distance_transform": int((centerlines.method == METHOD_DISTANCE).sum()),
            "intensity_integral": int((centerlines.method == METHOD_INTEGRAL).sum()),
            "unresolved": int((centerlines.method == 0).sum()),
        },
        "truth": truth_summary,
        "software": software_versions(),
        "image": {"size_ijk": list(grid.size_ijk), "spacing_mm": list(grid.spacing_mm)},
    }
    result = VesselQuantification(
        per_radius=table,
        labels=labels,
        grid=grid,
        radii_mm=radii,
        centerline_points_mm=points_mm,
        centerline_radius_mm=centerlines.radius_mm,
        centerline_method=centerlines.method,
        summary=summary,
    )
    summary["classes"] = result.class_table()
    report(100, "done")
    return result


#: How centrelines.json names each radius method.
_METHOD_NAMES = {METHOD_DISTANCE: "distance_transform", METHOD_INTEGRAL: "intensity_integral"}


def write_results(result: VesselQuantification, out_dir: str | Path) -> dict[str, Path]:
    """Write ``per_radius.csv``, ``summary.json``, ``vessels.nrrd`` and ``centerlines.json``.

    Each file appears whole or not at all.
    """
    out_dir = Path(out_dir)
    paths = {
        "per_radius": out_dir / "per_radius.csv",
        "summary": out_dir / "summary.json",
        "labels": out_dir / "vessels.nrrd",
        "centerlines": out_dir / "centerlines.json",
    }
    centerlines = {
        "coordinate_system": "LPS",
        "units": "mm",
        "points": [
            {
                "position_mm": [round(float(v), 4) for v in point],
                "radius_mm": None if not np.isfinite(radius) else round(float(radius), 4),
                "method": _METHOD_NAMES.get(int(method), "unresolved"),
            }
            for point, radius, method in zip(
                result.centerline_points_mm, result.centerline_radius_mm, result.centerline_method, strict=True
            )
        ],
    }
    write_atomically(paths["per_radius"], lambda p: result.per_radius.to_csv(p, index=False, float_format="%.6g"))
    write_atomically(paths["labels"], lambda p: write_image(result.grid.to_sitk(result.labels), p))
    write_atomically(paths["centerlines"], lambda p: p.write_text(json.dumps(centerlines)))
    write_atomically(
        paths["summary"], lambda p: p.write_text(json.dumps(result.summary, indent=1, default=json_default))
    )
    return paths


def read_results(out_dir: str | Path) -> VesselQuantification:
    """Read back what :func:`write_results` wrote (how a Slicer module gets the child process's result).

    Raises
    ------
    FileNotFoundError
        When one of the four files is missing (the run did not finish).
    """
    out_dir = Path(out_dir)
    paths = {name: out_dir / name for name in ("per_radius.csv", "summary.json", "vessels.nrrd", "centerlines.json")}
    missing = [name for name, path in paths.items() if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"{out_dir} lacks {', '.join(missing)}: the vessel quantification did not finish")
    summary = json.loads(paths["summary.json"].read_text())
    labels_image = sitk.ReadImage(str(paths["vessels.nrrd"]))
    centerlines = json.loads(paths["centerlines.json"].read_text())["points"]
    method_codes = {name: code for code, name in _METHOD_NAMES.items()}
    radii = tuple(float(c["radius_mm"]) for c in summary["classes"] if c["radius_mm"] is not None)
    return VesselQuantification(
        per_radius=pd.read_csv(paths["per_radius.csv"]),
        labels=sitk.GetArrayFromImage(labels_image).astype(np.uint8),
        grid=ImageGrid.from_sitk(labels_image),
        radii_mm=radii,
        centerline_points_mm=np.array([p["position_mm"] for p in centerlines], dtype=float).reshape(-1, 3),
        centerline_radius_mm=np.array(
            [np.nan if p["radius_mm"] is None else p["radius_mm"] for p in centerlines], dtype=float
        ),
        centerline_method=np.array([method_codes.get(p["method"], 0) for p in centerlines], dtype=np.uint8),
        summary=summary,
    )
