"""Radiomics extraction: an image and a label map in, a tidy feature table out.

Each segment (a label of the label map) gives its own rows; in per-lesion mode each
connected component of a segment gives its own row group, with its id, volume and
centroid. Two engines compute the values:

* ``ibsi``: ImagInfo's own, IBSI-1 compliant on all six IBSI-1 cases. It needs only
  numpy, scipy, SimpleITK and scikit-image, so it runs in every Slicer on every platform.
* ``pyradiomics``: pyradiomics itself, given the same image, mask and parameter file,
  so our values are plain pyradiomics' values.

The table is tidy: one row per value, with the columns :data:`FEATURE_COLUMNS`.
``feature`` is pyradiomics' name in compatible mode and the IBSI tag in IBSI mode;
``lesion`` is empty outside per-lesion mode and ``ibsi_tag`` where no IBSI feature
exists.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk

from ImagInfoExtension import __version__
from ImagInfoExtension.geometry import ImageGrid
from ImagInfoExtension.radiomics.settings import FAMILIES, RadiomicsSettings, dimensions_of

logger = logging.getLogger(__name__)

FEATURE_COLUMNS = ("case", "segment", "lesion", "image_type", "feature_class", "feature", "value", "ibsi_tag")
LESION_COLUMNS = (
    "case",
    "segment",
    "lesion",
    "voxel_count",
    "volume_ml",
    "centroid_lps_x_mm",
    "centroid_lps_y_mm",
    "centroid_lps_z_mm",
    "centroid_ras_x_mm",
    "centroid_ras_y_mm",
    "centroid_ras_z_mm",
)
FAILURE_COLUMNS = ("case", "segment", "lesion", "error")

#: The feature class written for each IBSI family.
FEATURE_CLASSES = {
    "morph": "morphology",
    "loc": "local_intensity",
    "stat": "intensity_statistics",
    "ih": "intensity_histogram",
    "ivh": "intensity_volume_histogram",
    "cm": "glcm",
    "rlm": "glrlm",
    "szm": "glszm",
    "dzm": "gldzm",
    "ngt": "ngtdm",
    "ngl": "ngldm",
}
#: Families whose values do not depend on the image type (computed on the original only).
SHAPE_FAMILIES = ("morph",)
TEXTURE_FAMILIES = ("cm", "rlm", "szm", "dzm", "ngt", "ngl")
#: Minimum number of voxels in a ROI: below it most features are undefined.
MIN_ROI_VOXELS = 2


class RadiomicsInputError(ValueError):
    """An image or mask that cannot give features, with the reason and the fix."""


@dataclass
class RadiomicsResult:
    """What one extraction produced.

    Attributes
    ----------
    rows : list of dict
        Tidy rows with :data:`FEATURE_COLUMNS`.
    lesions : list of dict
        One row per lesion (:data:`LESION_COLUMNS`) in per-lesion mode.
    failures : list of dict
        ``{case, segment, lesion, error}`` for each ROI that gave no features; the
        other ROIs are still extracted.
    warnings : list of str
    timings_s : dict
        Seconds per step (``preprocess``, each family), summed over the ROIs.
    provenance : dict
    """

    rows: list[dict] = field(default_factory=list)
    lesions: list[dict] = field(default_factory=list)
    failures: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    timings_s: dict[str, float] = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)

    def frame(self):
        """The tidy table as a pandas DataFrame (columns in :data:`FEATURE_COLUMNS` order)."""
        import pandas as pd

        return pd.DataFrame(self.rows, columns=list(FEATURE_COLUMNS))


# --- the IBSI engine ---------------------------------------------------------------


def _timed(timings: dict[str, float] | None, key: str, compute: Callable[[], dict[str, float]]) -> dict[str, float]:
    start = time.perf_counter()
    values = compute()
    if timings is not None:
        timings[key] = timings.get(key, 0.0) + time.perf_counter() - start
    return values


def ibsi_feature_values(
    roi: Any,
    settings: RadiomicsSettings,
    *,
    families: Sequence[str] | None = None,
    timings: dict[str, float] | None = None,
) -> dict[str, float]:
    """Every IBSI feature of a prepared ROI, keyed by IBSI tag.

    Parameters
    ----------
    roi : PreparedRoi
        From :func:`ImagInfoExtension.radiomics.preprocess.prepare_roi`.
    settings : RadiomicsSettings
    families : sequence of str, optional
        A subset of ``settings.families``.
    timings : dict, optional
        Filled with seconds per family.
    """
    from ImagInfoExtension.radiomics import intensity, morphology
    from ImagInfoExtension.radiomics.texture import cooccurrence, neighbourhood, runlength, zones

    chosen = [f for f in FAMILIES if f in (families or settings.families)]
    dimensions = dimensions_of(settings)
    aggregations = [f"{d}_{kind}" for d in dimensions for kind in ("avg", "comb")]
    values_in_roi = roi.intensity[roi.int_mask]
    levels, n_levels, mask = roi.levels, roi.n_levels, roi.int_mask
    range_min, range_max = settings.resegment_range or (None, None)
    compute: dict[str, Callable[[], dict[str, float]]] = {
        "morph": lambda: morphology.morphology_features(roi.intensity, roi.morph_mask, mask, roi.spacing_mm),
        "loc": lambda: intensity.local_intensity_features(roi.intensity, mask, roi.spacing_mm),
        "stat": lambda: intensity.statistics_features(values_in_roi),
        "ih": lambda: intensity.histogram_features(levels[mask], n_levels),
        "ivh": lambda: intensity.ivh_features(
            values_in_roi,
            method=settings.ivh_discretisation,
            bin_width=settings.ivh_bin_width,
            n_bins=settings.ivh_n_bins,
            range_min=range_min,
            range_max=range_max,
            # Integer intensities (CT rounded to HU, the phantom's grey levels) keep their unit
            # steps; others (interpolated and not rounded, MR, PET) get IBSI's 1000 bins.
            is_discrete=bool(np.array_equal(values_in_roi, np.round(values_in_roi))),
        ),
        "cm": lambda: cooccurrence.glcm_features(
            levels, mask, n_levels, distance=settings.glcm_distance, aggregations=aggregations
        ),
        "rlm": lambda: runlength.glrlm_features(levels, mask, n_levels, aggregations=aggregations),
        "szm": lambda: zones.glszm_features(levels, mask, n_levels, dimensions=dimensions),
        "dzm": lambda: zones.gldzm_features(levels, mask, n_levels, morph_mask=roi.morph_mask, dimensions=dimensions),
        "ngt": lambda: neighbourhood.ngtdm_features(
            levels, mask, n_levels, distance=settings.ngtdm_distance, dimensions=dimensions
        ),
        "ngl": lambda: neighbourhood.ngldm_features(
            levels,
            mask,
            n_levels,
            distance=settings.ngldm_distance,
            coarseness=settings.ngldm_coarseness,
            dimensions=dimensions,
        ),
    }
    values: dict[str, float] = {}
    for family in chosen:
        values.update(_timed(timings, family, compute[family]))
    return values


def _family_of(tag: str) -> str:
    return tag.split("_", 1)[0]


# --- inputs ------------------------------------------------------------------------


def align_mask(image: sitk.Image, mask: sitk.Image, warnings: list[str]) -> sitk.Image:
    """The mask on the image's grid: resampled (nearest neighbour) with a warning when
    the grids differ, refused when nothing of it falls inside the image."""
    if image.GetDimension() != 3 or mask.GetDimension() != 3:
        raise RadiomicsInputError(
            f"the image is {image.GetDimension()}D and the mask {mask.GetDimension()}D; both must be 3D volumes "
            "(a single slice is a 3D volume with one slice)"
        )
    if mask.GetNumberOfComponentsPerPixel() != 1:
        raise RadiomicsInputError("the mask has several components per voxel; give a scalar label map")
    image_grid, mask_grid = ImageGrid.from_sitk(image), ImageGrid.from_sitk(mask)
    if not np.issubdtype(sitk.GetArrayViewFromImage(mask).dtype, np.integer):
        values = sitk.GetArrayViewFromImage(mask)
        if not np.array_equal(values, np.round(values)) or (values < 0).any():
            raise RadiomicsInputError(
                "the mask holds fractional or negative values; a label map holds whole label numbers 0, 1, 2, ..."
            )
        mask = sitk.Cast(mask, sitk.sitkUInt32)
    if image_grid.same_as(mask_grid):
        if mask.GetOrigin() != image.GetOrigin() or mask.GetSpacing() != image.GetSpacing():
            mask = sitk.Image(mask)
            mask.CopyInformation(image)
        return mask
    labels_before = sitk.GetArrayViewFromImage(mask)
    had_voxels = int(np.count_nonzero(labels_before))
    resampled = sitk.Resample(mask, image, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    kept = int(np.count_nonzero(sitk.GetArrayViewFromImage(resampled)))
    if had_voxels and kept == 0:
        raise RadiomicsInputError(
            "the mask does not overlap the image: none of its voxels falls inside the image's grid. "
            "Check that the mask belongs to this image (same patient position and orientation)"
        )
    warnings.append(
        f"the mask's grid ({mask_grid.size_ijk} voxels of {tuple(round(s, 4) for s in mask_grid.spacing_mm)} mm) "
        f"differs from the image's ({image_grid.size_ijk} of {tuple(round(s, 4) for s in image_grid.spacing_mm)} mm); "
        "it was resampled onto the image with nearest-neighbour interpolation"
    )
    return resampled


def labels_present(label_array: np.ndarray) -> list[int]:
    """The non-zero labels of a label map, ascending.

    A count per label rather than a sort of every voxel: this runs once per image, and
    in pyradiomics-compatible mode it is part of our overhead over plain pyradiomics.
    """
    if label_array.size == 0:
        return []
    lowest, highest = int(label_array.min()), int(label_array.max())
    if lowest < 0:
        raise RadiomicsInputError("the mask holds negative labels; a label map holds 0 (background) and 1, 2, ...")
    if highest <= 1:
        return [1] if highest == 1 else []
    counts = np.bincount(label_array.ravel(), minlength=highest + 1)
    return [int(v) for v in np.flatnonzero(counts[1:]) + 1]


def check_roi(image_array: np.ndarray, roi_mask: np.ndarray, name: str, settings: RadiomicsSettings) -> None:
    """Refuse a ROI that cannot give the asked-for features, saying why and what to do."""
    count = int(np.count_nonzero(roi_mask))
    if count == 0:
        raise RadiomicsInputError(
            f"{name} is empty on the image's grid (0 voxels); draw it or leave it out of the extraction"
        )
    if count < MIN_ROI_VOXELS:
        raise RadiomicsInputError(
            f"{name} has {count} voxel; radiomics needs at least {MIN_ROI_VOXELS} voxels "
            "(most features of a single voxel are undefined). Check the segment, or leave it out"
        )
    nan_count = int(np.count_nonzero(~np.isfinite(image_array[roi_mask])))
    if nan_count:
        raise RadiomicsInputError(
            f"{name} covers {nan_count} voxel(s) whose intensity is NaN or infinite; fill or mask them "
            "(e.g. outside the reconstructed field of view) before extracting features"
        )
    slices = image_array.shape[0]
    if slices == 1 and settings.mode == "ibsi":
        needs_volume = [d for d in settings.texture_dimensions if d != "2D"]
        needs_volume += [f for f in ("morph",) if f in settings.families]
        if needs_volume:
            raise RadiomicsInputError(
                f"the image has a single slice, but {', '.join(needs_volume)} "
                "features need a volume; use texture_dimensions: [2D] and leave 'morph' out of families"
            )


def _image_types(image: sitk.Image, settings: RadiomicsSettings):
    """(image_type, image, settings for it, families) for each asked-for image type."""
    from ImagInfoExtension.radiomics import filters

    derived_settings = settings.with_changes(
        # A response map is neither HU nor grey levels: never rounded.
        modality="filtered",
        round_intensities=False,
        resegment_range=None,
        resegment_outlier_sigma=None,
        discretisation="fixed_bin_number",
        bin_width=None,
        n_bins=settings.n_bins or 32,
        ivh_discretisation="fixed_bin_number",
        ivh_bin_width=None,
        ivh_n_bins=settings.ivh_n_bins or 1000,
    )
    derived_families = [f for f in settings.families if f not in SHAPE_FAMILIES and f != "loc"]
    for image_type, options in settings.image_types.items():
        if image_type == "Original":
            yield "original", image, settings, list(settings.families)
        elif image_type == "LoG":
            for sigma in options["sigma_mm"]:
                name = f"log-sigma-{float(sigma):g}-mm".replace(".", "-")
                yield name, filters.log_filter(image, float(sigma)), derived_settings, derived_families
        elif image_type == "Wavelet":
            for band, filtered in filters.wavelet_bands(image, options.get("wavelet", "coif1")):
                yield f"wavelet-{band}", filtered, derived_settings, derived_families


def _roi_rows(
    image: sitk.Image,
    mask_image: sitk.Image,
    settings: RadiomicsSettings,
    identity: dict[str, object],
    timings: dict[str, float],
    label: int = 1,
) -> list[dict]:
    from ImagInfoExtension.radiomics.preprocess import prepare_roi

    rows: list[dict] = []
    for image_type, typed_image, typed_settings, families in _image_types(image, settings):
        if settings.mode == "pyradiomics":
            break
        start = time.perf_counter()
        # The whole-image diagnostics are for the IBSI check; on a full CT they cost seconds.
        roi = prepare_roi(typed_image, mask_image, typed_settings, whole_image_diagnostics=False)
        timings["preprocess"] = timings.get("preprocess", 0.0) + time.perf_counter() - start
        if int(np.count_nonzero(roi.int_mask)) < MIN_ROI_VOXELS:
            raise RadiomicsInputError(
                f"{identity['segment']} keeps {int(np.count_nonzero(roi.int_mask))} voxel(s) after resampling and "
                "resegmentation; widen the resegmentation range or use a finer resampled spacing"
            )
        values = ibsi_feature_values(roi, typed_settings, families=families, timings=timings)
        for tag, value in values.items():
            rows.append(
                {
                    **identity,
                    "image_type": image_type,
                    "feature_class": FEATURE_CLASSES[_family_of(tag)],
                    "feature": tag,
                    "value": float(value),
                    "ibsi_tag": tag,
                }
            )
    if settings.mode == "pyradiomics":
        from ImagInfoExtension.radiomics.pyradiomics_mode import extract_pyradiomics

        start = time.perf_counter()
        for row in extract_pyradiomics(image, mask_image, settings, label=label):
            rows.append({**identity, **{k: row[k] for k in FEATURE_COLUMNS[3:]}})
        timings["pyradiomics"] = timings.get("pyradiomics", 0.0) + time.perf_counter() - start
    return rows


def _binary(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.CopyInformation(reference)
    return image


def image_digest(image: sitk.Image) -> str:
    """SHA-256 of an image's voxels and geometry: the input identity in provenance."""
    digest = hashlib.sha256()
    digest.update(memoryview(np.ascontiguousarray(sitk.GetArrayViewFromImage(image))).cast("B"))
    digest.update(repr((image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection())).encode())
    return digest.hexdigest()


def engine_description(settings: RadiomicsSettings) -> dict[str, str]:
    """The engine that computes the values, and its version."""
    if settings.mode == "pyradiomics":
        from importlib import metadata

        try:
            version = metadata.version("pyradiomics")
        except metadata.PackageNotFoundError:
            version = "not installed"
        return {"engine": "pyradiomics", "engine_version": version}
    return {"engine": "ImagInfo IBSI-1 engine", "engine_version": __version__}


def settings_provenance(settings: RadiomicsSettings) -> dict[str, object]:
    """What every radiomics output records of how it was computed: engine, version, mode, settings and hash."""
    return {
        **engine_description(settings),
        "mode": settings.mode,
        "settings_name": settings.name,
        "settings": settings.as_dict(),
        "settings_sha256": settings.digest(),
    }


def extract_features(
    image: sitk.Image,
    mask: sitk.Image,
    settings: RadiomicsSettings,
    *,
    case: str = "",
    segment_names: Mapping[int, str] | None = None,
    labels: Sequence[int] | None = None,
    per_lesion: bool = False,
    min_lesion_volume_ml: float = 0.0,
    connectivity: int = 26,
    progress: Callable[[int, int, str], None] | None = None,
) -> RadiomicsResult:
    """Features of every segment (or lesion) of a label map.

    Parameters
    ----------
    image : SimpleITK.Image
        3D image (CT in HU, PET in SUV, MR).
    mask : SimpleITK.Image
        Label map; each non-zero label is a segment. A mask on another grid is
        resampled onto the image (nearest neighbour) with a warning.
    settings : RadiomicsSettings
    case : str
        Case name written in the ``case`` column.
    segment_names : mapping, optional
        Label → segment name (default ``label_<n>``).
    labels : sequence of int, optional
        Only these labels (default: every label present).
    per_lesion : bool
        Split each segment into connected components (``connectivity``), dropping
        those below ``min_volume_ml``; one row group per lesion.
    progress : callable, optional
        ``progress(done, total, message)`` after each segment; it may raise
        :class:`~ImagInfoExtension.progress.Cancelled`.

    Returns
    -------
    RadiomicsResult
        A ROI that cannot give features (empty, one voxel, NaN voxels, …) is listed in
        ``failures`` with the reason; the others are still extracted.

    Raises
    ------
    RadiomicsInputError
        When the image and mask as a whole cannot be used (no overlap, not 3D, no
        segment at all).
    """
    from ImagInfoExtension.radiomics.lesions import split_lesions

    result = RadiomicsResult()
    mask = align_mask(image, mask, result.warnings)
    label_array = sitk.GetArrayViewFromImage(mask)
    present = labels_present(label_array)
    chosen = list(labels) if labels is not None else present
    if not chosen:
        raise RadiomicsInputError(
            "the mask holds no segment (every voxel is 0); give a label map with at least one labelled region"
        )
    image_array = sitk.GetArrayViewFromImage(image)
    grid = ImageGrid.from_sitk(image)
    names = {label: (segment_names or {}).get(label, f"label_{label}") for label in chosen}
    timings: dict[str, float] = {}
    for number, label in enumerate(chosen, start=1):
        name = names[label]
        segment_mask = label_array == label
        rois: list[tuple[str, np.ndarray]] = []
        try:
            check_roi(image_array, segment_mask, f"segment '{name}' (label {label})", settings)
            if per_lesion:
                lesions, left_out = split_lesions(
                    segment_mask, grid, connectivity=connectivity, min_volume_ml=min_lesion_volume_ml
                )
                if left_out:
                    result.warnings.append(
                        f"segment '{name}': {left_out} component(s) below {min_lesion_volume_ml} ml were left out"
                    )
                if not lesions:
                    raise RadiomicsInputError(
                        f"segment '{name}' has no lesion of at least {min_lesion_volume_ml} ml; "
                        "lower --min-lesion-volume-ml"
                    )
                for lesion in lesions:
                    result.lesions.append(
                        dict(
                            zip(
                                LESION_COLUMNS,
                                (case, name, lesion.lesion_id, lesion.voxel_count, lesion.volume_ml)
                                + lesion.centroid_lps_mm
                                + lesion.centroid_ras_mm,
                            )
                        )
                    )
                    rois.append((str(lesion.lesion_id), lesion.mask))
            else:
                rois.append(("", segment_mask))
        except RadiomicsInputError as error:
            result.failures.append({"case": case, "segment": name, "lesion": "", "error": str(error)})
            continue
        for lesion_id, roi_mask in rois:
            identity = {"case": case, "segment": name, "lesion": lesion_id}
            where = f"segment '{name}'" + (f" lesion {lesion_id}" if lesion_id else "")
            try:
                check_roi(image_array, roi_mask, where, settings)
                if settings.mode == "pyradiomics" and not lesion_id:
                    # pyradiomics takes the label map and the label as they are (no copy).
                    roi_image, roi_label = mask, label
                else:
                    roi_image, roi_label = _binary(roi_mask, image), 1
                result.rows.extend(_roi_rows(image, roi_image, settings, identity, timings, label=roi_label))
            except (RadiomicsInputError, ValueError) as error:
                result.failures.append({**identity, "error": f"{where}: {error}"})
        if progress is not None:
            progress(number, len(chosen), f"segment {name}")
    result.timings_s = timings
    result.provenance = {
        **settings_provenance(settings),
        "per_lesion": per_lesion,
        "min_lesion_volume_ml": min_lesion_volume_ml,
        "connectivity": connectivity,
        "image_sha256": image_digest(image),
        "mask_sha256": image_digest(mask),
        "segments": {str(label): names[label] for label in chosen},
    }
    return result


def wide_table(features):
    """One row per case/segment/lesion (plus factor columns), one column per
    ``<image_type>_<feature>``."""
    import pandas as pd

    features = features.copy()
    factor_columns = [c for c in features.columns if c not in FEATURE_COLUMNS]
    index = ["case", *factor_columns, "segment", "lesion"]
    features["column"] = features["image_type"].astype(str) + "_" + features["feature"].astype(str)
    for column in index:
        features[column] = features[column].fillna("").astype(str)
    wide = features.pivot_table(index=index, columns="column", values="value", aggfunc="first", sort=False)
    wide = wide.reindex(columns=pd.unique(features["column"]))
    return wide.reset_index()
