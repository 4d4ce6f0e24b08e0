"""Texture matrices (GLCM, GLRLM, GLSZM, GLDZM, NGTDM, NGLDM) and their IBSI features."""
