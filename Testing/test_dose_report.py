"""The dose report's plots: readable log axes, and legends that cover no data."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("matplotlib")

from ImagInfoExtension.dose.report import (  # noqa: E402
    figure_accuracy_against_radius,
    figure_metrics_against_dose,
    readable_log_ticks,
)
from ImagInfoExtension.phantom.design import DEFAULT_RADII_MM  # noqa: E402

RECONS = ("FBP", "IR", "DL")
DOSES = (0.2, 0.5, 1.0, 2.1, 4.0)


def _accuracy_long() -> pd.DataFrame:
    rows = []
    for recon, dose, radius in itertools.product(RECONS, DOSES, DEFAULT_RADII_MM):
        rows.append([recon, dose, 1, radius, "detection_rate", min(1.0, radius * dose)])
        rows.append([recon, dose, 1, radius, "radius_bias_mm", 0.1 / radius - 0.05])
    return pd.DataFrame(rows, columns=["recon", "dose_mgy", "repetition", "radius_mm", "metric", "value"])


def _summary() -> pd.DataFrame:
    rows = []
    for recon, dose in itertools.product(RECONS, DOSES):
        for key, radius in (("mpv_hu", 3.0), ("iqr_hu", 3.0), ("total_volume_ml", np.nan), ("noise_sd_hu", np.nan)):
            rows.append([recon, dose, radius, key, 50.0 / dose, 1.0, 2])
    return pd.DataFrame(rows, columns=["recon", "dose_mgy", "radius_mm", "metric", "mean", "sd", "n"])


def _boxes(fig, artists):
    renderer = fig.canvas.get_renderer()
    return [a.get_window_extent(renderer) for a in artists]


def _overlap(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def test_readable_log_ticks_keep_labels_apart():
    labelled = readable_log_ticks(DEFAULT_RADII_MM)
    assert labelled[0] == 0.1 and labelled[-1] == 4.25
    assert np.all(np.diff(np.log10(labelled)) >= 0.25 - 1e-12)
    assert readable_log_ticks([0.2, 0.5, 1.0, 2.1, 4.0]) == [0.2, 0.5, 1.0, 2.1, 4.0]
    assert readable_log_ticks([]) == []


@pytest.mark.parametrize("figure", ["accuracy", "metrics"])
def test_tick_labels_never_overlap_and_legends_cover_no_data(figure):
    import matplotlib.pyplot as plt

    fig = (
        figure_accuracy_against_radius(_accuracy_long())
        if figure == "accuracy"
        else figure_metrics_against_dose(_summary(), 3.0)
    )
    fig.canvas.draw()
    axes = [ax for ax in fig.axes if ax.get_visible()]
    labelled_axes = 0
    for ax in axes:
        # Panels sharing the x axis of the one below them show no labels of their own.
        labels = [t for t in ax.get_xticklabels() if t.get_visible() and t.get_text()]
        labelled_axes += len(labels) >= 2
        for a, b in itertools.combinations(_boxes(fig, labels), 2):
            assert not _overlap(a, b), f"tick labels overlap: {[t.get_text() for t in labels]}"
    assert labelled_axes >= (len(RECONS) if figure == "accuracy" else 4), "every bottom panel keeps its labels"
    legends = fig.legends
    assert len(legends) == 1 and not any(ax.get_legend() for ax in axes), "one legend, outside the panels"
    entries = len(legends[0].get_texts())
    assert entries == (len(DOSES) if figure == "accuracy" else len(RECONS))
    legend_box = _boxes(fig, legends)[0]
    for box in _boxes(fig, axes):
        assert not _overlap(legend_box, box), "the legend covers a panel"
    plt.close(fig)


def test_the_overlap_check_sees_crowded_labels():
    """Every radius labelled on a narrow log axis (the old plot's way) does overlap, and the check says so."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedFormatter, FixedLocator

    fig, ax = plt.subplots(figsize=(2.5, 2))
    ax.set_xscale("log")
    ax.set_xlim(0.08, 5)
    ax.xaxis.set_major_locator(FixedLocator(DEFAULT_RADII_MM))
    ax.xaxis.set_major_formatter(FixedFormatter([f"{r:g}" for r in DEFAULT_RADII_MM]))
    fig.canvas.draw()
    boxes = _boxes(fig, [t for t in ax.get_xticklabels() if t.get_text()])
    assert any(_overlap(a, b) for a, b in itertools.combinations(boxes, 2))
    from ImagInfoExtension.dose.report import log_axis

    log_axis(ax, DEFAULT_RADII_MM)
    fig.canvas.draw()
    boxes = _boxes(fig, [t for t in ax.get_xticklabels() if t.get_text()])
    assert not any(_overlap(a, b) for a, b in itertools.combinations(boxes, 2))
    plt.close(fig)
