"""ImagInfo: quantitative CT and PET imaging for 3D Slicer.

The core package is pure Python over SimpleITK images and numpy arrays; only
:mod:`ImagInfoExtension.bridge` touches Slicer's MRML.
"""

from collections.abc import Callable

__version__ = "0.1.0"

#: ``progress(done, total, message)``: how long jobs report; it may raise to cancel.
ProgressCallback = Callable[[int, int, str], None]
