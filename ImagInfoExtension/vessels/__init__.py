"""Automatic vessel extraction and per-radius quantification of the lung-vessel phantom."""

from ImagInfoExtension.vessels.quantify import (
    BASE_COLUMNS,
    TRUTH_COLUMNS,
    VesselParameters,
    VesselQuantification,
    quantify_vessels,
    read_results,
    validate_ct_image,
    write_results,
)
from ImagInfoExtension.vessels.truth import (
    VesselTruth,
    load_truth,
    register_truth_to_image,
    truth_from_design,
    truth_from_document,
    truth_from_label_map,
)

__all__ = [
    "BASE_COLUMNS",
    "TRUTH_COLUMNS",
    "VesselParameters",
    "VesselQuantification",
    "VesselTruth",
    "load_truth",
    "quantify_vessels",
    "read_results",
    "register_truth_to_image",
    "truth_from_design",
    "truth_from_document",
    "truth_from_label_map",
    "validate_ct_image",
    "write_results",
]
