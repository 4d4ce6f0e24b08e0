"""ImagInfo: quantitative CT and PET imaging for 3D Slicer.

The core package is pure Python over SimpleITK images and numpy arrays; only
:mod:`ImagInfoExtension.bridge` touches Slicer's MRML.
"""

__version__ = "0.1.0"
