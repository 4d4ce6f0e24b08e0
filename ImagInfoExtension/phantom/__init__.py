"""The digital replica of the 3D-printed lung-vessel phantom and its virtual CT scans."""

from ImagInfoExtension.phantom.acquisition import (
    DEFAULT_RECONSTRUCTIONS,
    AcquisitionCalibration,
    AcquisitionModel,
    AcquisitionSettings,
    ReconstructionModel,
    default_calibration,
)
from ImagInfoExtension.phantom.design import DEFAULT_RADII_MM, PhantomDesign, VesselSegment, default_design
from ImagInfoExtension.phantom.scanner import PHANTOM_SIZES, PhantomTruth, VirtualScanner
from ImagInfoExtension.phantom.study import StudyRequest, generate_study

__all__ = [
    "DEFAULT_RADII_MM",
    "DEFAULT_RECONSTRUCTIONS",
    "PHANTOM_SIZES",
    "AcquisitionCalibration",
    "AcquisitionModel",
    "AcquisitionSettings",
    "PhantomDesign",
    "PhantomTruth",
    "ReconstructionModel",
    "StudyRequest",
    "VesselSegment",
    "VirtualScanner",
    "default_calibration",
    "default_design",
    "generate_study",
]
