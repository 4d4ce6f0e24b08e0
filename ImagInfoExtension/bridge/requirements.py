"""The Python packages each ImagInfo module installs inside Slicer, on first use.

A fresh Slicer bundles numpy, scipy, SimpleITK and pydicom but not pandas, dask,
matplotlib, scikit-image, tqdm or openpyxl. Each module asks only for what it needs:
its list is ``python_requirements/<ModuleName>.txt`` inside this package, so it is
found wherever the package is (a source tree, a build tree, an installed extension).
Lines are pip requirements; ``-r other.txt`` includes another list.

Nothing here runs at import time: modules call :func:`ensure_requirements` when the
user starts a job.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path

from ImagInfoExtension.bridge.compat import application, import_slicer, slicer_version_at_least, unsupported_reason

logger = logging.getLogger(__name__)

REQUIREMENTS_FOLDER = Path(__file__).resolve().parent / "python_requirements"

VersionLookup = Callable[[str], str]
RequiresLookup = Callable[[str], "list[str] | None"]


def requirements_file(module_name: str) -> Path:
    """The requirements list of a module; FileNotFoundError names the ones that exist."""
    path = REQUIREMENTS_FOLDER / f"{module_name}.txt"
    if not path.is_file():
        known = sorted(p.stem for p in REQUIREMENTS_FOLDER.glob("*.txt"))
        raise FileNotFoundError(f"no requirements list for {module_name!r} in {REQUIREMENTS_FOLDER}; known: {known}")
    return path


def read_requirements(path: str | Path, _seen: frozenset[Path] = frozenset()) -> list[str]:
    """The requirements of a pip requirements file, following ``-r`` includes, in order, without repeats."""
    path = Path(path).resolve()
    if path in _seen:
        raise ValueError(f"{path.name} includes itself through -r")
    found: list[str] = []
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith(("-r ", "--requirement ")):
            included = path.parent / line.split(None, 1)[1]
            entries = read_requirements(included, _seen | {path})
        elif line.startswith("-"):
            raise ValueError(f"{path.name}: only requirements and -r includes are supported, not {line!r}")
        else:
            entries = [line]
        found.extend(e for e in entries if e not in found)
    return found


def module_requirements(module_name: str) -> list[str]:
    return read_requirements(requirements_file(module_name))


def _is_satisfied(
    text: str,
    installed_version: VersionLookup,
    installed_requires: RequiresLookup,
    extras_of_parent: tuple[str, ...] = ("",),
    seen: set[str] | None = None,
) -> bool:
    from packaging.requirements import Requirement

    requirement = Requirement(text)
    if requirement.marker is not None and not any(
        requirement.marker.evaluate({"extra": extra}) for extra in extras_of_parent
    ):
        return True  # not needed on this platform, or for these extras
    try:
        version = installed_version(requirement.name)
    except metadata.PackageNotFoundError:
        return False
    if requirement.specifier and not requirement.specifier.contains(version, prereleases=True):
        return False
    if not requirement.extras:
        return True
    # "dask[distributed]" also needs what the "distributed" extra pulls in.
    seen = set() if seen is None else seen
    key = f"{requirement.name.lower()}[{','.join(sorted(requirement.extras))}]"
    if key in seen:
        return True
    seen.add(key)
    extras = tuple(sorted(requirement.extras))
    for dependency in installed_requires(requirement.name) or []:
        marker_text = dependency.split(";", 1)[1] if ";" in dependency else ""
        if "extra" not in marker_text:
            continue  # a base dependency, which pip installed with the package itself
        if not _is_satisfied(dependency, installed_version, installed_requires, extras, seen):
            return False
    return True


def missing_requirements(
    requirements: Sequence[str],
    installed_version: VersionLookup = metadata.version,
    installed_requires: RequiresLookup = metadata.requires,
) -> list[str]:
    """The requirements the running Python does not satisfy, extras included.

    ``dask[distributed]`` counts as missing when dask is installed but the packages of
    its ``distributed`` extra are not. The lookups default to :mod:`importlib.metadata`.
    """
    return [text for text in requirements if not _is_satisfied(text, installed_version, installed_requires)]


def ensure_requirements(
    requirements: Sequence[str],
    requester: str,
    confirm: Callable[[str], bool] | None = None,
    installed_version: VersionLookup = metadata.version,
    installed_requires: RequiresLookup = metadata.requires,
) -> bool:
    """Install missing requirements inside Slicer after asking the user; never at import.

    On Slicer 5.12 and later this is ``slicer.packaging.pip_ensure`` (which asks,
    installs with a progress dialog and offers a restart when a loaded package
    changed). On 5.10, which has no ``slicer.packaging``, one confirmation dialog, then
    ``slicer.util.pip_install``.

    ``installed_version`` and ``installed_requires`` look packages up (default
    :mod:`importlib.metadata`).

    Returns
    -------
    bool
        True when everything is there; False when the user declined.

    Raises
    ------
    RuntimeError
        When this Slicer is too old, or the installation did not provide the packages.
    """
    reason = unsupported_reason()
    if reason:
        raise RuntimeError(reason)
    missing = missing_requirements(requirements, installed_version, installed_requires)
    if not missing:
        return True
    slicer = import_slicer()
    if application() is None:
        raise RuntimeError(
            f"{requester} needs {', '.join(missing)}, which this Python lacks; install them with "
            f"`pip install {' '.join(repr(m) for m in missing)}` (or `pip install imaginfo`)"
        )
    if slicer_version_at_least(5, 12):
        import slicer.packaging

        try:
            slicer.packaging.pip_ensure(list(missing), requester=requester)
        except RuntimeError as error:
            if "declined" not in str(error).lower():
                raise
            logger.info("%s: the user declined installing %s", requester, ", ".join(missing))
            return False
    else:
        message = (
            f"{requester} needs these Python packages, which are not installed yet:\n\n"
            + "\n".join(f"- {m}" for m in missing)
            + "\n\nInstall them now? This takes a minute or two, once."
        )
        ask = confirm or slicer.util.confirmOkCancelDisplay
        if not ask(message):
            logger.info("%s: the user declined installing %s", requester, ", ".join(missing))
            return False
        slicer.util.pip_install(list(missing))
    importlib.invalidate_caches()
    still_missing = missing_requirements(missing, installed_version, installed_requires)
    if still_missing:
        raise RuntimeError(
            f"{requester} still lacks {', '.join(still_missing)} after the installation; see the Python console "
            "for pip's messages, or install them with slicer.util.pip_install"
        )
    return True
