"""PyTorch inside Slicer: installed by the PyTorch extension, never by a plain pip requirement.

A bare ``pip install torch`` (or a package that depends on torch, such as monai) pulls
PyPI's default build: several GB of CUDA libraries on Linux, which may not even fit the
computer's GPU driver, and a CPU-only build elsewhere. Slicer's PyTorch extension
(module *PyTorch Utils*) picks the build that fits the driver (CUDA or CPU) with
light-the-torch. So a module that needs torch:

1. installs its other packages first (:func:`ImagInfoExtension.bridge.requirements.ensure_requirements`);
2. installs torch with :func:`ensure_torch`, through ``PyTorchUtilsLogic().installTorch``;
3. installs the packages that depend on torch with :func:`ensure_torch_dependents`,
   which never lets pip touch torch (``skip_packages`` on Slicer 5.12+, ``--no-deps``
   on 5.10).

Nothing here imports torch: whether it is installed is read from its distribution's
metadata, as PyTorch Utils does, so that checking does not load several hundred MB.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Sequence
from importlib import metadata

from ImagInfoExtension.bridge.compat import application, import_slicer, slicer_version_at_least, unsupported_reason

logger = logging.getLogger(__name__)

#: The oldest torch ImagInfo's inference runs on (monai 1.4 and later support it).
MINIMUM_TORCH = "2.4"
#: How a missing torch is listed among a module's missing packages.
TORCH_REQUIREMENT = f"torch>={MINIMUM_TORCH} (through the PyTorch extension)"

PYTORCH_EXTENSION_HINT = (
    "PyTorch comes through Slicer's PyTorch extension, which installs the build that fits this computer's GPU "
    "driver (CUDA) or the CPU build: install 'PyTorch' in View > Extensions Manager, restart Slicer, and run again"
)


def torch_version() -> str | None:
    """The installed torch's version, or None (from its metadata, without importing it)."""
    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return None


def _at_least(version: str, minimum: str) -> bool:
    from packaging.version import Version

    # Local labels (2.13.0+cpu, +cu126) do not change the release.
    return Version(version.split("+", 1)[0]) >= Version(minimum)


def torch_satisfied(minimum: str = MINIMUM_TORCH) -> bool:
    """Whether a torch of at least ``minimum`` is installed."""
    version = torch_version()
    return version is not None and _at_least(version, minimum)


def ensure_torch(requester: str, minimum: str = MINIMUM_TORCH) -> bool:
    """Install torch through the PyTorch extension if it is missing; False when the user declined.

    Raises
    ------
    RuntimeError
        On an unsupported Slicer; when the PyTorch extension is not installed (the
        message says how to get it); when the installed torch is older than
        ``minimum`` (the message says how to update it); outside Slicer, with the pip
        command of the CPU build; when the installation did not deliver.
    """
    reason = unsupported_reason()
    if reason:
        raise RuntimeError(reason)
    version = torch_version()
    if version is not None:
        if _at_least(version, minimum):
            return True
        raise RuntimeError(
            f"{requester} needs torch {minimum} or later, and torch {version} is installed; update it in the "
            "PyTorch Utils module (Uninstall PyTorch, restart Slicer, Install PyTorch)"
        )
    if application() is None:
        raise RuntimeError(
            f"{requester} needs torch {minimum} or later, which this Python lacks; install the build for your "
            "hardware from https://pytorch.org (e.g. the CPU build: pip install torch --index-url "
            "https://download.pytorch.org/whl/cpu)"
        )
    try:
        import PyTorchUtils
    except ImportError:
        raise RuntimeError(f"{requester} needs torch. {PYTORCH_EXTENSION_HINT}.") from None
    torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=True, torchVersionRequirement=f">={minimum}")
    if torch is None:
        logger.info("%s: the user declined installing PyTorch", requester)
        return False
    importlib.invalidate_caches()
    if not torch_satisfied(minimum):
        raise RuntimeError(
            f"{requester} still lacks torch {minimum} or later after the installation; see the Python console, or "
            "install it in the PyTorch Utils module"
        )
    return True


def ensure_torch_dependents(
    requirements: Sequence[str], requester: str, confirm: Callable[[str], bool] | None = None
) -> bool:
    """Install packages that depend on torch (monai) once torch is there, leaving torch as it is.

    Their other dependencies must already be installed (monai needs only torch and
    numpy). False when the user declined.

    Raises
    ------
    RuntimeError
        Without torch (call :func:`ensure_torch` first); outside Slicer, with the pip
        command; when the installation did not deliver.
    """
    from ImagInfoExtension.bridge.requirements import missing_requirements

    missing = missing_requirements(requirements)
    if not missing:
        return True
    if torch_version() is None:
        raise RuntimeError(f"{', '.join(missing)} need torch, which is not installed yet. {PYTORCH_EXTENSION_HINT}.")
    if application() is None:
        raise RuntimeError(
            f"{requester} needs {', '.join(missing)}; install with `pip install --no-deps "
            f"{' '.join(repr(m) for m in missing)}` (they use the torch already installed)"
        )
    slicer = import_slicer()
    if slicer_version_at_least(5, 12):
        import slicer.packaging

        try:
            # skip_packages: pip installs monai but never replaces the torch build PyTorch Utils chose.
            slicer.packaging.pip_ensure(list(missing), requester=requester, skip_packages=["torch"])
        except RuntimeError as error:
            if "declined" not in str(error).lower():
                raise
            logger.info("%s: the user declined installing %s", requester, ", ".join(missing))
            return False
    else:
        message = (
            f"{requester} needs these Python packages, which are not installed yet:\n\n"
            + "\n".join(f"- {m}" for m in missing)
            + "\n\nInstall them now (they use the PyTorch already installed)?"
        )
        ask = confirm or slicer.util.confirmOkCancelDisplay
        if not ask(message):
            logger.info("%s: the user declined installing %s", requester, ", ".join(missing))
            return False
        # --no-deps: their only dependencies, torch and numpy, are there; pip must not replace torch.
        slicer.util.pip_install(" ".join([*missing, "--no-deps"]))
    importlib.invalidate_caches()
    still_missing = missing_requirements(missing)
    if still_missing:
        raise RuntimeError(
            f"{requester} still lacks {', '.join(still_missing)} after the installation; see the Python console "
            "for pip's messages"
        )
    return True
