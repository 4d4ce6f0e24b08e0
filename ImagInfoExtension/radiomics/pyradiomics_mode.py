"""pyradiomics-compatible mode: pyradiomics itself runs the parameter file.

The values are pyradiomics' own, unchanged (float64, bit for bit what
``RadiomicsFeatureExtractor(parameters).execute(image, mask, label=label)`` returns);
ImagInfo only splits the feature keys, adds the IBSI-1 tag where one corresponds
(:mod:`ImagInfoExtension.radiomics.names`) and turns pyradiomics' errors into
messages that say what to fix.

pyradiomics is optional: it is imported when a function here runs, never when this
module is imported.
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from ImagInfoExtension.radiomics.names import ibsi_tag_for_setting

if TYPE_CHECKING:
    import SimpleITK as sitk

    from ImagInfoExtension.radiomics.settings import RadiomicsSettings

INSTALL_HINT = (
    "In 3D Slicer, install the SlicerRadiomics extension with the Extensions Manager (recent Slicer releases do not "
    "offer it on macOS). Outside Slicer: 'pip install numpy setuptools wheel versioneer', then "
    "'pip install --no-build-isolation pyradiomics' (PyPI has no pyradiomics wheels for Python 3.12, so it is built "
    "from source and needs a C compiler)."
)

_FEATURE_KEY = re.compile(r"^(?P<image_type>.+)_(?P<feature_class>[A-Za-z0-9]+)_(?P<feature>[A-Za-z0-9]+)$")


def pyradiomics_available() -> tuple[bool, str]:
    """Whether pyradiomics can be imported, and a message saying which or how to get it.

    Returns
    -------
    available : bool
    message : str
        ``"pyradiomics v3.0.1"`` when available; otherwise why not and how to install it.
    """
    try:
        import radiomics  # noqa: PLC0415  (optional, heavy)
        import radiomics.featureextractor  # noqa: F401, PLC0415
    except Exception as error:  # noqa: BLE001  (a broken build fails with more than ImportError)
        return (
            False,
            f"pyradiomics-compatible mode needs pyradiomics, which cannot be imported ({error}). {INSTALL_HINT}",
        )
    return True, f"pyradiomics {getattr(radiomics, '__version__', 'of unknown version')}"


#: Warnings pyradiomics repeats for every image type although nothing is wrong.
_BENIGN_WARNINGS = {
    "radiomics.glcm": ("GLCM is symmetrical, therefore Sum Average = 2 * Joint Average",),
    # An empty featureClass enables shape2D too, which then warns on every 3D run.
    "radiomics.featureextractor": ("parameter force2D must be set to True to enable shape2D extraction",),
}


class _DropMessages(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


@contextmanager
def _quiet_pyradiomics(shape2d_requested: bool) -> Iterator[None]:
    # pyradiomics sets its logger to DEBUG on import, so every debug message is formatted
    # and handed to the handlers of whoever propagates it (Slicer's log window included).
    # Only pyradiomics' own loggers are touched, and restored afterwards.
    radiomics_logger = logging.getLogger("radiomics")
    previous = radiomics_logger.level
    radiomics_logger.setLevel(logging.WARNING)
    filters = []
    for name, prefixes in _BENIGN_WARNINGS.items():
        if shape2d_requested and name == "radiomics.featureextractor":
            continue
        filters.append((logging.getLogger(name), _DropMessages(prefixes)))
    for child, message_filter in filters:
        child.addFilter(message_filter)
    try:
        yield
    finally:
        for child, message_filter in filters:
            child.removeFilter(message_filter)
        radiomics_logger.setLevel(previous)


def split_feature_key(key: str) -> tuple[str, str, str]:
    """``"log-sigma-1-0-mm-3D_firstorder_Mean"`` → ``("log-sigma-1-0-mm-3D", "firstorder", "Mean")``.

    Raises
    ------
    ValueError
        For a key that is not ``<image type>_<class>_<feature>``.
    """
    match = _FEATURE_KEY.match(key)
    if match is None:
        raise ValueError(f"pyradiomics returned the key {key!r}, which is not <image type>_<class>_<feature>")
    return match["image_type"], match["feature_class"], match["feature"]


def _plain(value: Any) -> Any:
    """A diagnostics value as JSON types (numpy scalars and arrays, tuples, nested dicts)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "tolist"):
        return _plain(value.tolist())
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _numeric(value: Any) -> float | None:
    """The float64 of a feature value, or None for anything that is not one number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if getattr(value, "shape", None) == () and getattr(value, "dtype", None) is not None:
        if value.dtype.kind in "fiu":
            return float(value)
    return None


def _labels_in(mask: sitk.Image) -> list[int]:
    import numpy as np  # noqa: PLC0415
    import SimpleITK as sitk  # noqa: PLC0415

    values = np.unique(sitk.GetArrayViewFromImage(mask))
    return [int(v) for v in values if v != 0]


def _explain(error: Exception, mask: sitk.Image, label: int, setting: Mapping[str, Any]) -> ValueError:
    """A ValueError naming pyradiomics' problem and its fix."""
    text = str(error.args[0]) if error.args else str(error)
    if "not present in mask" in text or "No labels found" in text:
        labels = _labels_in(mask)
        if not labels:
            return ValueError("pyradiomics: the mask is empty (no voxel is labelled); draw or choose a segment first")
        return ValueError(
            f"pyradiomics: label {label} is not in the mask, which holds label(s) {', '.join(map(str, labels))}; "
            "pass one of those as label"
        )
    if "only contains 1 segmented voxel" in text:
        return ValueError(f"pyradiomics: the ROI (label {label}) is a single voxel; features need a larger segment")
    if "too few dimensions" in text:
        return ValueError(
            f"pyradiomics: the ROI (label {label}) is too flat ({text.split('(', 1)[-1].rstrip(')')}); "
            "enlarge the segment, or lower setting minimumROIDimensions (2 allows a single-slice ROI with force2D)"
        )
    if "ROI is too small" in text:
        return ValueError(
            f"pyradiomics: the ROI (label {label}) has fewer voxels than setting minimumROISize "
            f"({setting.get('minimumROISize')}); enlarge the segment or lower minimumROISize"
        )
    if "geometry mismatch" in text or "datatype or size mismatch" in text:
        return ValueError(
            "pyradiomics: the mask's grid (size, spacing, origin or direction) differs from the image's; resample "
            "the mask onto the image grid, or set 'correctMask: true' in the parameter file's setting section "
            "(pyradiomics then resamples it, nearest neighbour)"
        )
    if "larger than image space" in text:
        return ValueError("pyradiomics: the ROI reaches outside the image; crop the segment to the image")
    if "Resegmentation excluded too many voxels" in text:
        return ValueError(
            f"pyradiomics: setting resegmentRange {setting.get('resegmentRange')} leaves too few voxels of label "
            f"{label}; widen the range"
        )
    return ValueError(f"pyradiomics failed: {text}")


def extract_pyradiomics(
    image: sitk.Image,
    mask: sitk.Image,
    settings: RadiomicsSettings,
    *,
    label: int = 1,
    return_diagnostics: bool = False,
) -> list[dict] | tuple[list[dict], dict[str, Any]]:
    """Features of one ROI computed by pyradiomics with the settings' parameter document.

    Runs ``radiomics.featureextractor.RadiomicsFeatureExtractor(parameters)
    .execute(image, mask, label=label)`` with ``settings.pyradiomics_parameters``
    (pyradiomics' defaults when there are none) and keeps its values unchanged.

    Parameters
    ----------
    image, mask : SimpleITK.Image
        As pyradiomics takes them (the mask on the image's grid unless the parameter
        file sets ``correctMask``).
    settings : RadiomicsSettings
        Usually from a pyradiomics parameter file (``mode="pyradiomics"``).
    label : int
        The mask value of the ROI.
    return_diagnostics : bool
        Also return pyradiomics' ``diagnostics_*`` entries (versions, settings, image
        and mask hashes) as plain JSON types, for provenance.

    Returns
    -------
    rows : list of dict
        One per numeric feature, in pyradiomics' order: ``image_type``
        (``"original"``, ``"log-sigma-1-0-mm-3D"``, ``"wavelet-LLH"``, …),
        ``feature_class``, ``feature``, ``value`` (float, pyradiomics' float64 as it
        is, NaN where pyradiomics failed a feature) and ``ibsi_tag`` (None where no
        IBSI-1 feature corresponds under these settings).
    diagnostics : dict
        Only with ``return_diagnostics``.

    Raises
    ------
    ValueError
        When pyradiomics is not installed (with how to install it), when it refuses
        the parameters, or when it refuses the image or mask (a label not in the mask,
        a single-voxel or flat ROI, grids that differ, …), naming the fix.
    """
    available, message = pyradiomics_available()
    if not available:
        raise ValueError(message)
    from radiomics import featureextractor  # noqa: PLC0415

    # pyradiomics keeps (and may update) the dictionaries it is given; the settings must not change.
    parameters = copy.deepcopy(settings.pyradiomics_parameters or {})
    setting = dict(parameters.get("setting") or {})
    with _quiet_pyradiomics("shape2D" in (parameters.get("featureClass") or {})):
        try:
            extractor = featureextractor.RadiomicsFeatureExtractor(parameters)
        except Exception as error:  # noqa: BLE001  (pykwalify's schema errors have their own classes)
            raise ValueError(f"pyradiomics refuses the parameters of '{settings.name}': {error}") from None
        try:
            result = extractor.execute(image, mask, label=label)
        except (ValueError, RuntimeError) as error:
            raise _explain(error, mask, label, setting) from None

    rows: list[dict] = []
    diagnostics: dict[str, Any] = {}
    for key, value in result.items():
        if key.startswith("diagnostics_"):
            diagnostics[key] = _plain(value)
            continue
        number = _numeric(value)
        if number is None:
            continue
        image_type, feature_class, feature = split_feature_key(key)
        try:
            tag = ibsi_tag_for_setting(feature_class, feature, setting, image_type=image_type)
        except ValueError:
            tag = None  # a feature class of a newer pyradiomics than the table knows
        rows.append(
            {
                "image_type": image_type,
                "feature_class": feature_class,
                "feature": feature,
                "value": number,
                "ibsi_tag": tag,
            }
        )
    if return_diagnostics:
        return rows, diagnostics
    return rows
