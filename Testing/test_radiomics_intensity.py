"""IBSI-1 intensity families: local intensity, statistics, intensity histogram, intensity-volume histogram.

Checked against the IBSI-1 reference values (digital phantom, CT configurations A-E) with IBSI's
matching rule, and against small cases worked out by hand.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from ibsi_reference import ibsi_reference, mismatches
from scipy import stats

from ImagInfoExtension.radiomics.intensity import (
    LOCAL_PEAK_RADIUS_MM,
    histogram_features,
    ivh_features,
    local_intensity_features,
    statistics_features,
)

FAMILY_PREFIXES = ("loc_", "stat_", "ih_", "ivh_")

# IVH discretisation of each IBSI-1 configuration (IBSI-1 manual, table of configurations; oncoray/mirp's
# test/ibsi_1_test.py). A, B and D use the rounded HU as they are: their reference I10 values (96, 92, 87 HU)
# are integers, which bin centres 2.5 HU apart never are; C's 88.8 HU is the bin centre 88.75.
IVH_SETTINGS = {
    "A": {"method": "none", "range_min": -500.0, "range_max": 400.0},
    "B": {"method": "none", "range_min": -500.0, "range_max": 400.0},
    "C": {"method": "fixed_bin_size", "bin_width": 2.5, "range_min": -1000.0, "range_max": 400.0},
    "D": {"method": "none"},
    "E": {"method": "fixed_bin_number", "n_bins": 1000},
}


def test_digital_phantom_matches_every_reference_value(ibsi_phantom):
    image, mask = ibsi_phantom
    values = image[mask]
    features = local_intensity_features(image, mask, (2.0, 2.0, 2.0))
    features |= statistics_features(values)
    # No discretisation: the grey levels are the image values, on the range 1..6 (levels 2 and 5 are empty,
    # and the histogram gradient must see them: ih_min_grad is -50 only with an empty level 2).
    features |= histogram_features(values.astype(int), 6)
    features |= ivh_features(values, method="none")
    assert len(ibsi_reference("phantom", FAMILY_PREFIXES)) == 49
    assert mismatches(features, "phantom", FAMILY_PREFIXES) == []
    assert 0.0 < features["ivh_auc"] < 1.0


@pytest.mark.parametrize("config", ["A", "B", "C", "D", "E"])
def test_chest_configuration_matches_every_reference_value(ibsi_roi, config):
    roi = ibsi_roi(config)
    values = roi.intensity[roi.int_mask]
    features = local_intensity_features(roi.intensity, roi.int_mask, roi.spacing_mm)
    features |= statistics_features(values)
    features |= histogram_features(roi.levels[roi.int_mask], roi.n_levels)
    features |= ivh_features(values, **IVH_SETTINGS[config])
    assert len(ibsi_reference(config, FAMILY_PREFIXES)) == 49
    assert mismatches(features, config, FAMILY_PREFIXES) == []


def test_statistics_of_a_small_array_by_hand():
    values = np.array([1.0, 2.0, 2.0, 3.0, 7.0])
    features = statistics_features(values)
    assert features["stat_mean"] == pytest.approx(3.0)
    assert features["stat_var"] == pytest.approx(4.4)  # (4 + 1 + 1 + 0 + 16) / 5
    assert features["stat_skew"] == pytest.approx(stats.skew(values))
    assert features["stat_kurt"] == pytest.approx(stats.kurtosis(values))
    assert features["stat_median"] == 2.0
    # Linear interpolation between order statistics: p10 at rank 0.4, p90 at rank 3.6.
    assert features["stat_p10"] == pytest.approx(1.4)
    assert features["stat_p90"] == pytest.approx(5.4)
    assert features["stat_iqr"] == pytest.approx(1.0)  # p75 = 3, p25 = 2
    assert features["stat_range"] == 6.0
    assert features["stat_mad"] == pytest.approx(1.6)  # (2 + 1 + 1 + 0 + 4) / 5
    assert features["stat_rmad"] == pytest.approx(4.0 / 9.0)  # {2, 2, 3}: mean 7/3, deviations 1/3, 1/3, 2/3
    assert features["stat_medad"] == pytest.approx(1.4)  # (1 + 0 + 0 + 1 + 5) / 5
    assert features["stat_cov"] == pytest.approx(math.sqrt(4.4) / 3.0)
    assert features["stat_qcod"] == pytest.approx(1.0 / 5.0)
    assert features["stat_energy"] == pytest.approx(67.0)
    assert features["stat_rms"] == pytest.approx(math.sqrt(67.0 / 5.0))
    assert len(features) == 18


def test_undefined_statistics_are_nan():
    features = statistics_features(np.full(10, 5.0))
    assert math.isnan(features["stat_skew"]) and math.isnan(features["stat_kurt"])
    assert features["stat_cov"] == 0.0
    two = statistics_features(np.array([-1.0, 1.0]))
    assert math.isnan(two["stat_cov"]) and math.isnan(two["stat_qcod"])
    assert math.isnan(two["stat_rmad"])  # nothing lies between p10 = -0.8 and p90 = 0.8


def test_two_level_histogram_by_hand():
    # Levels 1 and 3 of 4, equally often: entropy 1 bit, uniformity 1/2; level 2 and 4 empty.
    features = histogram_features(np.array([1, 1, 3, 3]), 4)
    assert features["ih_entropy"] == pytest.approx(1.0)
    assert features["ih_uniformity"] == pytest.approx(0.5)
    # Counts (2, 0, 2, 0): gradient (0 - 2, (2 - 2) / 2, (0 - 0) / 2, 0 - 2) = (-2, 0, 0, -2).
    assert features["ih_max_grad"] == 0.0 and features["ih_max_grad_g"] == 2.0
    assert features["ih_min_grad"] == -2.0 and features["ih_min_grad_g"] == 1.0
    # A tie between modes goes to the one nearest the mean (2), then the lower.
    assert features["ih_mode"] == 1.0
    assert histogram_features(np.array([1, 1, 3, 4, 4]), 4)["ih_mode"] == 4.0  # mean 2.6
    assert len(features) == 23


def test_local_intensity_of_a_uniform_image_is_that_value():
    image = np.full((6, 9, 9), 42.0)
    mask = np.zeros(image.shape, dtype=bool)
    mask[0, 0, 0] = mask[3, 4, 4] = True  # a corner voxel: its sphere is truncated by the array border
    features = local_intensity_features(image, mask, (3.0, 0.8, 0.8))
    assert features["loc_peak_loc"] == pytest.approx(42.0)
    assert features["loc_peak_glob"] == pytest.approx(42.0)


def test_local_intensity_sphere_counts_voxel_centres_by_physical_distance():
    # At 2 mm the 6.2 mm sphere holds the lattice points with i² + j² + k² <= 9: 123 of them.
    image = np.zeros((11, 11, 15))
    image[5, 5, 5] = 123.0
    mask = np.zeros(image.shape, dtype=bool)
    mask[5, 5, 5] = mask[5, 5, 8] = mask[5, 5, 9] = True
    features = local_intensity_features(image, mask, (2.0, 2.0, 2.0))
    assert LOCAL_PEAK_RADIUS_MM == pytest.approx(6.2035, abs=1e-4)
    assert features["loc_peak_loc"] == pytest.approx(1.0)
    # A voxel 6 mm away still sees the bright one, one 8 mm away does not; the global peak is the centre.
    assert features["loc_peak_glob"] == pytest.approx(1.0)
    mask[5, 5, 5] = False
    image[5, 5, 8] = 1e-9  # the maximum inside the mask, 6 mm from the bright voxel
    assert local_intensity_features(image, mask, (2.0, 2.0, 2.0))["loc_peak_loc"] == pytest.approx(1.0)
    # At 4 mm along z the reach there is one slice: 29 voxels in the plane (j² + k² <= 9) and 21 in each
    # neighbouring slice (16 + 4 (j² + k²) <= 38.5 mm²).
    assert local_intensity_features(image, mask, (4.0, 2.0, 2.0))["loc_peak_loc"] == pytest.approx(123.0 / 71.0)


def test_ivh_of_uniform_integers_by_hand():
    values = np.arange(100.0)  # 0..99 HU, one voxel each
    features = ivh_features(values, method="none")
    assert features["ivh_v10"] == pytest.approx(0.90)  # >= 9.9 HU: 10..99
    assert features["ivh_v90"] == pytest.approx(0.10)  # >= 89.1 HU: 90..99
    assert features["ivh_i10"] == 90.0  # 10 % of the volume at or above 90 HU
    assert features["ivh_i90"] == 10.0
    assert features["ivh_diff_v10_v90"] == pytest.approx(0.80)
    assert features["ivh_diff_i10_i90"] == 80.0
    assert features["ivh_auc"] == pytest.approx(4999.5 / 9900.0)
    # A resegmentation range wider than the ROI stretches the intensity fraction: 10 % of [-100, 99] is -80.
    assert ivh_features(values, method="none", range_min=-100, range_max=99)["ivh_v10"] == 1.0


def test_ivh_fixed_bins_by_hand():
    values = np.arange(100.0)
    # 10 HU bins from 0: ceil(99 / 10) + 1 = 11 bins with centres 5, 15, ..., 105 (the last one empty).
    sized = ivh_features(values, method="fixed_bin_size", bin_width=10.0)
    assert sized["ivh_i10"] == 95.0 and sized["ivh_i90"] == 15.0
    # 4 bins of the ROI range, numbered 1..4, 25 voxels each.
    numbered = ivh_features(values, method="fixed_bin_number", n_bins=4)
    assert numbered["ivh_v10"] == pytest.approx(0.75)  # bins >= 1.3: 2, 3, 4
    assert numbered["ivh_i10"] == 5.0  # no bin holds <= 10 % of the volume above it
    assert numbered["ivh_i90"] == 2.0
    # Continuous intensities have no unit grid: "none" falls back to 1000 fixed bins.
    continuous = ivh_features(values / 7.0, method="none", is_discrete=False)
    assert continuous == ivh_features(values / 7.0, method="fixed_bin_number", n_bins=1000)


@pytest.mark.parametrize(
    "call",
    [
        lambda: statistics_features(np.array([])),
        lambda: histogram_features(np.array([], dtype=int), 4),
        lambda: histogram_features(np.array([1, 5]), 4),
        lambda: histogram_features(np.array([1, 2]), 0),
        lambda: ivh_features(np.array([]), method="none"),
        lambda: ivh_features(np.array([0.5, 1.0]), method="none"),
        lambda: ivh_features(np.array([1.0, 2.0]), method="fixed_bin_size"),
        lambda: ivh_features(np.array([1.0, 2.0]), method="quantile"),
        lambda: ivh_features(np.array([1.0, 2.0]), method="none", range_min=1.5),
        lambda: local_intensity_features(np.zeros((3, 3, 3)), np.zeros((3, 3, 3), dtype=bool), (1.0, 1.0, 1.0)),
        lambda: local_intensity_features(np.zeros((3, 3, 3)), np.ones((3, 3, 2), dtype=bool), (1.0, 1.0, 1.0)),
        lambda: local_intensity_features(np.zeros((3, 3, 3)), np.ones((3, 3, 3), dtype=bool), (1.0, 0.0, 1.0)),
    ],
)
def test_bad_input_raises_value_error(call):
    with pytest.raises(ValueError):
        call()
