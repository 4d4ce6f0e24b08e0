"""Which Slicer this is, and whether ImagInfo can run in it.

This file (like the package root and :mod:`ImagInfoExtension.bridge.scaffolding`) keeps
to Python 3.9 syntax: Slicer 5.8 bundles Python 3.9, and there a module must be able to
import it and say "this Slicer is too old" instead of failing with a traceback.
"""

from __future__ import annotations

import sys
from typing import Any

#: Slicer 5.8 bundles Python 3.9; ImagInfo's core needs Python 3.11 or later.
MINIMUM_SLICER_VERSION = (5, 10)
MINIMUM_PYTHON_VERSION = (3, 11)


def import_slicer() -> Any:
    """``slicer``, or an ImportError that says how to get it."""
    try:
        import slicer
    except ImportError as error:
        raise ImportError(
            "this needs 3D Slicer: run it inside Slicer, or install the headless MRML wheel with "
            "`pip install imaginfo[slicer-core]`"
        ) from error
    return slicer


def application() -> Any:
    """The running Slicer application, or None (headless, e.g. the slicer-core wheel)."""
    try:
        import slicer
    except ImportError:
        return None
    return getattr(slicer, "app", None)


def slicer_version() -> tuple[int, int] | None:
    """``(major, minor)`` of the running Slicer application; None when headless."""
    app = application()
    if app is None:
        return None
    try:
        return int(app.majorVersion), int(app.minorVersion)
    except (AttributeError, TypeError, ValueError):
        return None


def slicer_version_at_least(major: int, minor: int) -> bool:
    """Whether the running Slicer is ``major.minor`` or later.

    Calls into Slicer's Python API that exist only in later releases are guarded by
    this test (``Testing/test_slicer_api.py`` checks every guarded call against the
    releases it allows). Headless, the API of the pinned ``slicer-core`` wheel is the
    newest one, so the answer is yes.
    """
    version = slicer_version()
    return version is None or version >= (major, minor)


def unsupported_reason() -> str | None:
    """Why ImagInfo cannot run here (a sentence naming the fix), or None."""
    version = slicer_version()
    python = sys.version_info[:2]
    if (version is not None and version < MINIMUM_SLICER_VERSION) or python < MINIMUM_PYTHON_VERSION:
        found = f"Slicer {version[0]}.{version[1]}" if version is not None else "this Slicer"
        return (
            f"ImagInfo needs 3D Slicer {MINIMUM_SLICER_VERSION[0]}.{MINIMUM_SLICER_VERSION[1]} or later "
            f"(Python {MINIMUM_PYTHON_VERSION[0]}.{MINIMUM_PYTHON_VERSION[1]} or later); {found} runs Python "
            f"{python[0]}.{python[1]}. Install a current Slicer from https://download.slicer.org and add the "
            "ImagInfo extension there."
        )
    return None
