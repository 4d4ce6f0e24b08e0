"""Figures for people: image montages (and, later, study reports)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

#: The "turbo" colour map sampled at 0.1, 0.2, ..., 0.9 (from matplotlib), so that the
#: radius-class colours need no plotting library: the vessel module runs without one.
_TURBO_ANCHORS = np.array(
    [
        (0.2697, 0.3488, 0.7963),
        (0.2443, 0.6094, 0.9970),
        (0.0975, 0.8371, 0.8034),
        (0.2760, 0.9709, 0.5165),
        (0.6436, 0.9900, 0.2336),
        (0.8833, 0.8655, 0.2172),
        (0.9961, 0.6428, 0.1916),
        (0.9408, 0.3557, 0.0703),
        (0.7648, 0.1437, 0.0104),
    ]
)


def radius_class_colours(count: int) -> list[tuple[float, float, float]]:
    """RGB colours (0-1) of ``count`` radius classes, thin (blue) to thick (red), as all ImagInfo views show them."""
    if count <= 0:
        return []
    position = np.linspace(0.0, len(_TURBO_ANCHORS) - 1.0, count) if count > 1 else np.array([0.0])
    channels = [np.interp(position, np.arange(len(_TURBO_ANCHORS)), _TURBO_ANCHORS[:, c]) for c in range(3)]
    return [tuple(round(float(channel[n]), 4) for channel in channels) for n in range(count)]


def save_montage(
    slices: Mapping[tuple[str, float], np.ndarray],
    recons: Sequence[str],
    doses_mgy: Sequence[float],
    path: str | Path,
    pixel_spacing_mm: tuple[float, float] = (1.0, 1.0),
    window_hu: tuple[float, float] = (-600.0, 1500.0),
    title: str = "",
) -> Path:
    """Save a grid of axial slices: one row per reconstruction, one column per dose.

    Parameters
    ----------
    slices : mapping
        ``(recon, dose_mgy) -> 2D array`` in HU, rows along y.
    window_hu : (centre, width)
        Display window.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    centre, width = window_hu
    rows, cols = len(recons), len(doses_mgy)
    height, breadth = next(iter(slices.values())).shape
    aspect = (height * pixel_spacing_mm[0]) / (breadth * pixel_spacing_mm[1])
    figure, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows * aspect + 0.6), squeeze=False)
    for r, recon in enumerate(recons):
        for c, dose in enumerate(doses_mgy):
            axis = axes[r][c]
            axis.imshow(
                slices[(recon, dose)],
                cmap="gray",
                vmin=centre - width / 2,
                vmax=centre + width / 2,
                aspect=pixel_spacing_mm[0] / pixel_spacing_mm[1],
                interpolation="nearest",
            )
            axis.set_xticks([])
            axis.set_yticks([])
            if r == 0:
                axis.set_title(f"{dose:g} mGy")
            if c == 0:
                axis.set_ylabel(recon)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
