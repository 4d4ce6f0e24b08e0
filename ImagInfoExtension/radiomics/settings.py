"""Radiomics settings: one validated dataclass, presets and parameter files.

Two kinds of parameter file are read, both as YAML (``yaml.safe_load``: no Python
objects are ever built from a file) or JSON:

* ImagInfo's own (``imaginfo_radiomics: 1`` at the top), which spells out the IBSI-1
  image processing: resampling grid and interpolator, rounding, mask interpolation,
  resegmentation, discretisation of texture, histogram and IVH, texture dimensions.
  The presets in ``Resources/Radiomics/`` (``ibsi-phantom``, ``ibsi-A`` … ``ibsi-E``,
  ``ct``, ``mr``, ``pet-suv``) are such files.
* pyradiomics' (``setting``, ``imageType``, ``featureClass``, ``voxelSetting``), whose
  keys are checked against pyradiomics' own schema before anything runs. In
  pyradiomics-compatible mode it goes to pyradiomics as it is; in IBSI mode its
  settings are translated (``binWidth`` → fixed bin size counted from the range's
  lower bound, ``resegmentRange`` → range resegmentation, …).

Every bad key or value raises :class:`RadiomicsSettingsError` naming the key, the
file and the fix.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

#: Feature families of the IBSI engine, in output order.
FAMILIES = ("morph", "loc", "stat", "ih", "ivh", "cm", "rlm", "szm", "dzm", "ngt", "ngl")
FAMILY_TITLES = {
    "morph": "morphology",
    "loc": "local intensity",
    "stat": "intensity statistics",
    "ih": "intensity histogram",
    "ivh": "intensity-volume histogram",
    "cm": "grey level co-occurrence matrix",
    "rlm": "grey level run length matrix",
    "szm": "grey level size zone matrix",
    "dzm": "grey level distance zone matrix",
    "ngt": "neighbourhood grey tone difference matrix",
    "ngl": "neighbouring grey level dependence matrix",
}
TEXTURE_DIMENSIONS = ("2D", "2_5D", "3D")
DISCRETISATIONS = ("fixed_bin_size", "fixed_bin_number", "none")
INTERPOLATORS = ("linear", "bspline", "nearest")
IMAGE_TYPES = ("Original", "LoG", "Wavelet")
MODES = ("ibsi", "pyradiomics")

PRESET_NAMES = ("ibsi-phantom", "ibsi-A", "ibsi-B", "ibsi-C", "ibsi-D", "ibsi-E", "ct", "mr", "pet-suv")


class RadiomicsSettingsError(ValueError):
    """A parameter file or setting that cannot be used, with the reason and the fix."""


@dataclass(frozen=True)
class RadiomicsSettings:
    """How features are computed: the IBSI-1 image-processing chain and the families.

    Attributes
    ----------
    name : str
        Preset or file name, for provenance.
    mode : {"ibsi", "pyradiomics"}
        The IBSI engine, or pyradiomics itself (compatible mode).
    resampled_spacing_mm : tuple of float or None
        New voxel spacing (x, y, z) in mm on a grid centred on the original one;
        0 keeps an axis as it is (in-plane resampling of 2D configurations). None:
        no resampling.
    interpolator : {"linear", "bspline", "nearest"}
        Image interpolation (bspline is cubic).
    round_intensities : bool
        Round intensities to integers after interpolation (CT in HU).
    mask_threshold : float
        The mask is interpolated linearly and voxels at or above this partial-volume
        fraction are kept.
    resegment_range : tuple or None
        ``(lower, upper)`` intensity range kept in the intensity mask; either bound may
        be None (open).
    resegment_outlier_sigma : float or None
        Remove intensities further than this many SD from the ROI mean (after the range).
    discretisation, bin_width, n_bins :
        Texture and intensity-histogram discretisation. Fixed bins count from the
        resegmentation range's lower bound when there is one, else from the ROI minimum.
    ivh_discretisation, ivh_bin_width, ivh_n_bins :
        The intensity-volume histogram's own discretisation.
    texture_dimensions : tuple of {"2D", "2_5D", "3D"}
        Aggregations computed for texture features.
    glcm_distance, ngtdm_distance, ngldm_distance : int
        Chebyshev neighbourhood distances in voxels.
    ngldm_coarseness : int
        NGLDM coarseness parameter (alpha).
    families : tuple of str
        Feature families (:data:`FAMILIES`).
    image_types : dict
        ``{"Original": {}, "LoG": {"sigma_mm": [1.0, 3.0]}, "Wavelet": {}}``.
    modality : str
        "CT" (cast to float and rounded to HU before processing, as IBSI does), "MR",
        "PET", "other" (e.g. the IBSI phantom's grey levels) or "filtered" (a filter's
        response map).
    pyradiomics_parameters : dict or None
        The pyradiomics parameter document (compatible mode).
    """

    name: str = "custom"
    mode: str = "ibsi"
    resampled_spacing_mm: tuple[float, float, float] | None = None
    interpolator: str = "linear"
    round_intensities: bool = False
    mask_threshold: float = 0.5
    resegment_range: tuple[float | None, float | None] | None = None
    resegment_outlier_sigma: float | None = None
    discretisation: str = "fixed_bin_size"
    bin_width: float | None = 25.0
    n_bins: int | None = None
    ivh_discretisation: str = "none"
    ivh_bin_width: float | None = None
    ivh_n_bins: int | None = None
    texture_dimensions: tuple[str, ...] = ("3D",)
    glcm_distance: int = 1
    ngtdm_distance: int = 1
    ngldm_distance: int = 1
    ngldm_coarseness: int = 0
    families: tuple[str, ...] = FAMILIES
    image_types: dict[str, dict[str, Any]] = field(default_factory=lambda: {"Original": {}})
    modality: str = "CT"
    pyradiomics_parameters: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        _validate(self)

    def as_dict(self) -> dict[str, Any]:
        """The settings as plain JSON types, in a stable order."""
        document = asdict(self)
        for key, value in document.items():
            if isinstance(value, tuple):
                document[key] = list(value)
        return document

    def digest(self) -> str:
        """SHA-256 of the settings (without the name): the settings hash in provenance."""
        document = self.as_dict()
        document.pop("name")
        return hashlib.sha256(json.dumps(document, sort_keys=True, default=str).encode()).hexdigest()

    @classmethod
    def from_dict(cls, document: Mapping[str, Any]) -> RadiomicsSettings:
        """The settings :meth:`as_dict` wrote (e.g. sent to a batch worker)."""
        values = dict(document)
        for key in _TUPLE_KEYS & set(values):
            if values[key] is not None:
                values[key] = tuple(values[key])
        return cls(**values)

    def with_changes(self, **changes: Any) -> RadiomicsSettings:
        """A copy with some settings changed (validated again)."""
        return replace(self, **changes)


def _fail(source: str, message: str) -> RadiomicsSettingsError:
    return RadiomicsSettingsError(f"{source}: {message}")


def _validate(settings: RadiomicsSettings, source: str | None = None) -> None:
    where = source or f"radiomics settings '{settings.name}'"
    if settings.mode not in MODES:
        raise _fail(where, f"mode '{settings.mode}' is unknown; use one of {', '.join(MODES)}")
    if settings.resampled_spacing_mm is not None:
        spacing = tuple(settings.resampled_spacing_mm)
        if len(spacing) != 3 or any(not math.isfinite(s) or s < 0 for s in spacing):
            raise _fail(
                where,
                f"resampled_spacing_mm {list(spacing)} must be three spacings (x, y, z) in mm, ≥ 0 (0 keeps an axis)",
            )
    if settings.interpolator not in INTERPOLATORS:
        raise _fail(where, f"interpolator '{settings.interpolator}' is unknown; use one of {', '.join(INTERPOLATORS)}")
    if not 0.0 < settings.mask_threshold <= 1.0:
        raise _fail(where, f"mask_threshold {settings.mask_threshold} must lie in (0, 1]; IBSI uses 0.5")
    if settings.resegment_range is not None:
        if len(settings.resegment_range) != 2:
            raise _fail(where, "resegment_range must be [lower, upper] (either may be null)")
        lower, upper = settings.resegment_range
        if lower is not None and upper is not None and lower >= upper:
            raise _fail(where, f"resegment_range [{lower}, {upper}] is empty: the lower bound must be below the upper")
    if settings.resegment_outlier_sigma is not None and settings.resegment_outlier_sigma <= 0:
        raise _fail(where, f"resegment_outlier_sigma {settings.resegment_outlier_sigma} must be > 0 (IBSI uses 3)")
    _validate_discretisation(where, "", settings.discretisation, settings.bin_width, settings.n_bins)
    _validate_discretisation(where, "ivh_", settings.ivh_discretisation, settings.ivh_bin_width, settings.ivh_n_bins)
    unknown = [d for d in settings.texture_dimensions if d not in TEXTURE_DIMENSIONS]
    if unknown or not settings.texture_dimensions:
        raise _fail(where, f"texture_dimensions {list(settings.texture_dimensions)}: use some of {TEXTURE_DIMENSIONS}")
    for key in ("glcm_distance", "ngtdm_distance", "ngldm_distance"):
        if int(getattr(settings, key)) < 1:
            raise _fail(where, f"{key} must be a whole number of voxels ≥ 1")
    if settings.ngldm_coarseness < 0:
        raise _fail(where, "ngldm_coarseness must be ≥ 0")
    unknown = [f for f in settings.families if f not in FAMILIES]
    if unknown:
        raise _fail(where, f"feature families {unknown} are unknown; use some of {', '.join(FAMILIES)}")
    for image_type, options in settings.image_types.items():
        if image_type not in IMAGE_TYPES:
            raise _fail(where, f"image type '{image_type}' is unknown; use some of {', '.join(IMAGE_TYPES)}")
        if image_type == "LoG":
            sigmas = (options or {}).get("sigma_mm")
            if not sigmas or any(float(s) <= 0 for s in sigmas):
                raise _fail(where, "LoG needs sigma_mm: a list of positive widths in mm, e.g. [1.0, 2.0, 3.0]")


def _validate_discretisation(where: str, prefix: str, method: str, bin_width: float | None, n_bins: int | None) -> None:
    if method not in DISCRETISATIONS:
        raise _fail(where, f"{prefix}discretisation '{method}' is unknown; use one of {', '.join(DISCRETISATIONS)}")
    if method == "fixed_bin_size" and (bin_width is None or not bin_width > 0):
        raise _fail(where, f"{prefix}bin_width is {bin_width}: a fixed bin size needs a bin width > 0 (e.g. 25 HU)")
    if method == "fixed_bin_number" and (n_bins is None or int(n_bins) < 1 or int(n_bins) != n_bins):
        raise _fail(where, f"{prefix}n_bins is {n_bins}: a fixed bin number needs a whole number of bins ≥ 1 (e.g. 32)")


# --- files -------------------------------------------------------------------------

_OWN_KEYS = {f.name for f in fields(RadiomicsSettings)} - {"pyradiomics_parameters", "name"}
_TUPLE_KEYS = {"resampled_spacing_mm", "resegment_range", "texture_dimensions", "families"}


def preset_directories() -> list[Path]:
    """Where presets are looked for: beside the package (installed) and in the source tree."""
    package = Path(__file__).resolve().parent
    return [package / "presets", package.parents[1] / "Resources" / "Radiomics"]


def preset_path(name: str) -> Path:
    """The parameter file of a preset.

    Raises
    ------
    RadiomicsSettingsError
        When there is no preset of that name.
    """
    for directory in preset_directories():
        candidate = directory / f"{name}.yaml"
        if candidate.is_file():
            return candidate
    raise RadiomicsSettingsError(
        f"there is no radiomics preset '{name}'; use one of {', '.join(PRESET_NAMES)} or give a parameter file"
    )


def load_preset(name: str) -> RadiomicsSettings:
    """The settings of a preset (``ibsi-phantom``, ``ibsi-A`` … ``ibsi-E``, ``ct``, ``mr``, ``pet-suv``)."""
    return load_parameter_file(preset_path(name), name=name)


def read_document(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON parameter file safely into plain types."""
    path = Path(path)
    if not path.is_file():
        raise RadiomicsSettingsError(f"the parameter file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".json":
            document = json.loads(text)
        else:
            import yaml  # noqa: PLC0415  (PyYAML is installed on first use inside Slicer)

            document = yaml.safe_load(text)
    except Exception as error:  # noqa: BLE001  (any parser error is the file's problem)
        raise RadiomicsSettingsError(
            f"{path}: cannot be read as {'JSON' if path.suffix == '.json' else 'YAML'}: {error}"
        ) from None
    if not isinstance(document, dict):
        raise RadiomicsSettingsError(
            f"{path}: a parameter file must hold a mapping of settings, not {type(document).__name__}"
        )
    return document


def load_parameter_file(path: str | Path, *, name: str | None = None, mode: str | None = None) -> RadiomicsSettings:
    """Settings from an ImagInfo or pyradiomics parameter file.

    Parameters
    ----------
    path : path
        ``.yaml``/``.yml`` or ``.json``.
    name : str, optional
        Name kept in provenance (default: the file's stem).
    mode : {"ibsi", "pyradiomics"}, optional
        Force a mode. A pyradiomics file runs in pyradiomics-compatible mode unless
        ``mode="ibsi"`` (then its settings are translated).
    """
    path = Path(path)
    document = read_document(path)
    label = name or path.stem
    if "imaginfo_radiomics" in document:
        return settings_from_document(document, source=str(path), name=label, mode=mode)
    return settings_from_pyradiomics(document, source=str(path), name=label, mode=mode or "pyradiomics")


def settings_from_document(
    document: Mapping[str, Any], *, source: str = "settings", name: str = "custom", mode: str | None = None
) -> RadiomicsSettings:
    """Settings from ImagInfo's own document (a mapping of :class:`RadiomicsSettings` fields)."""
    version = document.get("imaginfo_radiomics", 1)
    if version != 1:
        raise _fail(
            source, f"imaginfo_radiomics version {version} is newer than this ImagInfo reads (1); update ImagInfo"
        )
    values = {k: v for k, v in document.items() if k not in ("imaginfo_radiomics", "description")}
    unknown = sorted(set(values) - _OWN_KEYS)
    if unknown:
        raise _fail(source, f"unknown key(s) {', '.join(unknown)}; the keys are: {', '.join(sorted(_OWN_KEYS))}")
    for key in _TUPLE_KEYS & set(values):
        if values[key] is not None:
            values[key] = tuple(values[key])
    if mode is not None:
        values["mode"] = mode
    try:
        settings = RadiomicsSettings(name=name, **values)
    except RadiomicsSettingsError as error:
        raise _fail(source, str(error).split(": ", 1)[-1]) from None
    except (TypeError, ValueError) as error:
        raise _fail(source, f"a value has the wrong type: {error}") from None
    return settings


# --- pyradiomics parameter files -------------------------------------------------------

#: Keys of pyradiomics' ``setting`` section (its paramSchema.yaml, v3.0.1).
PYRADIOMICS_SETTING_KEYS = frozenset(
    {
        "minimumROIDimensions", "minimumROISize", "geometryTolerance", "correctMask", "additionalInfo", "label",
        "label_channel", "binWidth", "binCount", "normalize", "normalizeScale", "removeOutliers",
        "resampledPixelSpacing", "interpolator", "padDistance", "distances", "force2D", "force2Ddimension",
        "resegmentRange", "resegmentMode", "resegmentShape", "preCrop", "sigma", "start_level", "level", "wavelet",
        "gradientUseSpacing", "lbp2DRadius", "lbp2DSamples", "lbp2DMethod", "lbp3DLevels", "lbp3DIcosphereRadius",
        "lbp3DIcosphereSubdivision", "weightingNorm", "symmetricalGLCM", "gldm_a", "voxelArrayShift",
        "kernelRadius", "maskedKernel", "initValue", "voxelBatch", "dtype",
    }
)  # fmt: skip
PYRADIOMICS_SECTIONS = frozenset({"setting", "imageType", "featureClass", "voxelSetting"})
PYRADIOMICS_IMAGE_TYPES = frozenset(
    {"Original", "LoG", "Wavelet", "Square", "SquareRoot", "Logarithm", "Exponential", "Gradient", "LBP2D", "LBP3D"}
)
PYRADIOMICS_CLASSES = frozenset({"firstorder", "shape", "shape2D", "glcm", "glrlm", "glszm", "gldm", "ngtdm"})
#: The IBSI families that hold each pyradiomics feature class's features.
PYRADIOMICS_FAMILIES = {
    "firstorder": ("stat", "ih"),
    "shape": ("morph",),
    "shape2D": ("morph",),
    "glcm": ("cm",),
    "glrlm": ("rlm",),
    "glszm": ("szm",),
    "gldm": ("ngl",),
    "ngtdm": ("ngt",),
}
_PYRADIOMICS_INTERPOLATORS = {
    "sitkLinear": "linear",
    "sitkBSpline": "bspline",
    "sitkNearestNeighbor": "nearest",
    2: "linear",
    3: "bspline",
    1: "nearest",
}


def check_pyradiomics_document(document: Mapping[str, Any], source: str) -> None:
    """Check a pyradiomics parameter document's keys, naming any bad one."""
    unknown = sorted(set(document) - PYRADIOMICS_SECTIONS)
    if unknown:
        raise _fail(
            source,
            f"unknown top-level key(s) {', '.join(map(str, unknown))}; a pyradiomics parameter file has "
            f"{', '.join(sorted(PYRADIOMICS_SECTIONS))} (an ImagInfo file starts with 'imaginfo_radiomics: 1')",
        )
    for section in ("setting", "voxelSetting"):
        values = document.get(section) or {}
        if not isinstance(values, Mapping):
            raise _fail(source, f"'{section}' must be a mapping of setting: value")
        bad = sorted(set(values) - PYRADIOMICS_SETTING_KEYS)
        if bad:
            raise _fail(source, f"unknown {section} key(s) {', '.join(map(str, bad))} (pyradiomics would refuse them)")
    image_types = document.get("imageType") or {}
    bad = sorted(set(image_types) - PYRADIOMICS_IMAGE_TYPES)
    if bad:
        raise _fail(
            source, f"unknown imageType(s) {', '.join(map(str, bad))}; use {', '.join(sorted(PYRADIOMICS_IMAGE_TYPES))}"
        )
    classes = document.get("featureClass") or {}
    bad = sorted(set(classes) - PYRADIOMICS_CLASSES)
    if bad:
        raise _fail(
            source, f"unknown featureClass(es) {', '.join(map(str, bad))}; use {', '.join(sorted(PYRADIOMICS_CLASSES))}"
        )
    setting = document.get("setting") or {}
    for key in ("binWidth", "binCount"):
        if key in setting and not (isinstance(setting[key], (int, float)) and setting[key] > 0):
            raise _fail(source, f"setting {key} is {setting[key]!r}: it must be a number > 0")


def settings_from_pyradiomics(
    document: Mapping[str, Any], *, source: str = "parameters", name: str = "custom", mode: str = "pyradiomics"
) -> RadiomicsSettings:
    """Settings from a pyradiomics parameter document.

    In ``mode="pyradiomics"`` the document is kept as it is and pyradiomics runs it.
    In ``mode="ibsi"`` its image processing is translated to the IBSI chain; keys with
    no IBSI counterpart (``normalize``, ``voxelArrayShift``, …) are refused with the
    reason, so that nothing is silently dropped. IBSI's choices then apply where
    pyradiomics differs: fixed bins count from the resegmentation range's lower bound
    (pyradiomics starts at a multiple of ``binWidth`` below the ROI minimum), and
    ``force2D`` becomes 2.5D texture (in-plane matrices merged over slices).
    """
    check_pyradiomics_document(document, source)
    setting = dict(document.get("setting") or {})
    image_types = document.get("imageType") or {"Original": {}}
    if mode == "pyradiomics":
        return RadiomicsSettings(name=name, mode="pyradiomics", pyradiomics_parameters=json.loads(json.dumps(document)))
    untranslatable = sorted(
        set(setting)
        - {
            "binWidth", "binCount", "resampledPixelSpacing", "interpolator", "resegmentRange", "resegmentMode",
            "force2D", "force2Ddimension", "distances", "label", "geometryTolerance", "correctMask",
            "minimumROIDimensions", "minimumROISize", "padDistance", "preCrop", "additionalInfo", "sigma", "gldm_a",
        }
    )  # fmt: skip
    if untranslatable:
        raise _fail(source, f"setting(s) {', '.join(untranslatable)} have no IBSI counterpart; run in pyradiomics mode")
    values: dict[str, Any] = {"name": name, "mode": "ibsi"}
    if "binCount" in setting:
        values.update(discretisation="fixed_bin_number", n_bins=int(setting["binCount"]), bin_width=None)
    else:
        values.update(discretisation="fixed_bin_size", bin_width=float(setting.get("binWidth", 25.0)))
    if setting.get("resampledPixelSpacing"):
        values["resampled_spacing_mm"] = tuple(float(s) for s in setting["resampledPixelSpacing"])
        interpolator = setting.get("interpolator", "sitkBSpline")
        if interpolator not in _PYRADIOMICS_INTERPOLATORS:
            raise _fail(source, f"interpolator {interpolator!r}: use sitkLinear, sitkBSpline or sitkNearestNeighbor")
        values["interpolator"] = _PYRADIOMICS_INTERPOLATORS[interpolator]
    if setting.get("resegmentRange"):
        if setting.get("resegmentMode", "absolute") == "sigma":
            values["resegment_outlier_sigma"] = float(max(abs(v) for v in setting["resegmentRange"]))
        elif setting.get("resegmentMode", "absolute") == "absolute":
            bounds = [float(v) for v in setting["resegmentRange"]]
            values["resegment_range"] = (bounds[0], bounds[1] if len(bounds) > 1 else None)
        else:
            raise _fail(source, "resegmentMode 'relative' has no IBSI counterpart; use 'absolute' or 'sigma'")
    if setting.get("force2D"):
        if int(setting.get("force2Ddimension", 0)) != 0:
            raise _fail(source, "force2Ddimension other than 0 (axial) is not supported in IBSI mode")
        # pyradiomics' force2D merges the in-plane matrices over slices: IBSI's 2.5D.
        values["texture_dimensions"] = ("2_5D",)
    distances = setting.get("distances") or [1]
    if len(distances) != 1:
        raise _fail(source, f"distances {distances}: IBSI mode computes one distance; give one, e.g. [1]")
    values["glcm_distance"] = int(distances[0])
    if "gldm_a" in setting:
        values["ngldm_coarseness"] = int(setting["gldm_a"])
    translated_types: dict[str, dict[str, Any]] = {}
    for image_type, options in image_types.items():
        if image_type not in IMAGE_TYPES:
            raise _fail(source, f"imageType {image_type} has no IBSI-mode counterpart; use Original, LoG or Wavelet")
        options = dict(options or {})
        if image_type == "LoG":
            options = {"sigma_mm": [float(s) for s in options.get("sigma", setting.get("sigma", []))]}
        translated_types[image_type] = options
    values["image_types"] = translated_types
    classes = document.get("featureClass") or {}
    if classes:
        values["families"] = tuple(f for f in FAMILIES if any(f in PYRADIOMICS_FAMILIES[c] for c in classes))
    try:
        return RadiomicsSettings(**values)
    except RadiomicsSettingsError as error:
        raise _fail(source, str(error).split(": ", 1)[-1]) from None


def settings_from(
    preset: str | None = None, params: str | Path | None = None, mode: str | None = None
) -> RadiomicsSettings:
    """The settings a user asked for: a preset name or a parameter file (not both)."""
    if preset and params:
        raise RadiomicsSettingsError("give a preset or a parameter file, not both")
    if params:
        return load_parameter_file(params, mode=mode)
    settings = load_preset(preset or "ct")
    return settings.with_changes(mode=mode) if mode and mode != settings.mode else settings


def dimensions_of(settings: RadiomicsSettings) -> Sequence[str]:
    """Texture dimensions, in IBSI order."""
    return [d for d in TEXTURE_DIMENSIONS if d in settings.texture_dimensions]
