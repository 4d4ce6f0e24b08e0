"""Segmentation: deep-learning models from a safe catalogue, rule-based methods, evaluation and biomarkers."""
