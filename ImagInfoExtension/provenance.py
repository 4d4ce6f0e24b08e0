"""Provenance: which software, settings and inputs produced a result.

Every output that carries provenance (``summary.json`` of a vessel run,
``provenance.json`` of a study) builds it here, so that they record the same things.
"""

from __future__ import annotations

import platform
import sys
from importlib import metadata

from ImagInfoExtension import __version__

#: Distributions whose versions can change a number ImagInfo reports. Read from the
#: installed metadata, so recording them imports nothing (torch takes seconds to import).
RECORDED_DISTRIBUTIONS = (
    "numpy",
    "scipy",
    "SimpleITK",
    "scikit-image",
    "pandas",
    "pydicom",
    "dask",
    "distributed",
    "matplotlib",
    "torch",
    "monai",
    "pyradiomics",
    "threadpoolctl",
)

NOT_INSTALLED = "not installed"


def software_versions() -> dict[str, str]:
    """The version of ImagInfo, Python and every library in :data:`RECORDED_DISTRIBUTIONS`.

    A library that is not installed is recorded as ``not installed``, so that a reader
    can tell "absent" from "forgotten".
    """
    versions = {"imaginfo": __version__, "python": platform.python_version(), "platform": sys.platform}
    for name in RECORDED_DISTRIBUTIONS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = NOT_INSTALLED
    return versions


def provenance_document(parameters: dict, inputs: list[dict], **details: object) -> dict:
    """The provenance record: software versions, the parameters, the inputs, and any further details."""
    return {"software": software_versions(), "parameters": parameters, "inputs": inputs, **details}
