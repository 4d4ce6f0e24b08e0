"""Radiomics: IBSI-1-compliant feature extraction and a pyradiomics-compatible mode.

Submodules are imported where used, so that importing the package needs nothing
beyond the standard library.
"""
