"""ImagInfo: quantitative CT and PET imaging for 3D Slicer.

The core package is pure Python over SimpleITK images and numpy arrays; only the
:mod:`ImagInfoExtension.bridge` package touches Slicer (``slicer``, ``qt``, MRML).
This file stays importable by any Python 3 and imports nothing, so that an
unsupported Slicer can say so instead of failing on an import.
"""

__version__ = "0.1.0"
