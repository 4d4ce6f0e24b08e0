"""GLSZM, GLDZM, NGTDM and NGLDM features: hand-computed cases and the IBSI-1 reference values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from ibsi_reference import ibsi_reference, mismatches

from ImagInfoExtension.radiomics.ibsi import within_tolerance
from ImagInfoExtension.radiomics.texture.neighbourhood import ngldm_features, ngtdm_features
from ImagInfoExtension.radiomics.texture.zones import gldzm_features, glszm_features

FAMILIES = ("szm_", "dzm_", "ngt_", "ngl_")


def _ring_slice() -> np.ndarray:
    """5x5 slice: a ring of level 1 around a 3x3 block of level 2."""
    levels = np.ones((1, 5, 5), dtype=int)
    levels[0, 1:4, 1:4] = 2
    return levels


def _approx(value: float, expected: float) -> bool:
    return math.isclose(value, expected, rel_tol=1e-12, abs_tol=1e-12)


# --- hand-computed cases --------------------------------------------------------------


def test_glszm_two_zones_by_hand():
    levels = _ring_slice()
    mask = np.ones(levels.shape, dtype=bool)
    f = glszm_features(levels, mask, 2)
    # Zones (level, size): (1, 16) and (2, 9); 25 voxels.
    for dim in ("2D", "2_5D", "3D"):
        assert _approx(f[f"szm_sze_{dim}"], (1 / 256 + 1 / 81) / 2)
        assert _approx(f[f"szm_lze_{dim}"], (256 + 81) / 2)
        assert _approx(f[f"szm_lgze_{dim}"], (1 + 1 / 4) / 2)
        assert _approx(f[f"szm_hgze_{dim}"], (1 + 4) / 2)
        assert _approx(f[f"szm_lzhge_{dim}"], (256 + 4 * 81) / 2)
        assert _approx(f[f"szm_glnu_{dim}"], 1.0)
        assert _approx(f[f"szm_zsnu_norm_{dim}"], 0.5)
        assert _approx(f[f"szm_z_perc_{dim}"], 2 / 25)
        assert _approx(f[f"szm_gl_var_{dim}"], 0.25)
        assert _approx(f[f"szm_zs_var_{dim}"], 3.5**2)
        assert _approx(f[f"szm_zs_entr_{dim}"], 1.0)


def test_gldzm_two_zones_by_hand():
    levels = _ring_slice()
    mask = np.ones(levels.shape, dtype=bool)
    f = gldzm_features(levels, mask, 2)
    # Ring zone touches the edge (distance 1); the 3x3 block's border is 2 steps in.
    for dim in ("2D", "2_5D"):
        assert _approx(f[f"dzm_sde_{dim}"], (1 + 1 / 4) / 2)
        assert _approx(f[f"dzm_lde_{dim}"], (1 + 4) / 2)
        assert _approx(f[f"dzm_sdlge_{dim}"], (1 + 1 / 16) / 2)
        assert _approx(f[f"dzm_ldhge_{dim}"], (1 + 16) / 2)
        assert _approx(f[f"dzm_zd_var_{dim}"], 0.25)
        assert _approx(f[f"dzm_z_perc_{dim}"], 2 / 25)
    # A single slice seen in 3D: every voxel borders the space above and below it.
    assert _approx(f["dzm_sde_3D"], 1.0)

    # Two such slices: in 3D every voxel lies on the top or bottom face (distance 1) and
    # the zones join across slices; per slice the distances stay 1 and 2.
    stacked = np.concatenate([levels, levels])
    f = gldzm_features(stacked, np.ones(stacked.shape, dtype=bool), 2)
    assert _approx(f["dzm_sde_3D"], 1.0)
    assert _approx(f["dzm_z_perc_3D"], 2 / 50)
    assert _approx(f["dzm_sde_2D"], 0.625)
    assert _approx(f["dzm_sde_2_5D"], 0.625)
    assert _approx(f["dzm_glnu_2_5D"], (4 + 4) / 4)
    assert _approx(f["dzm_z_perc_2_5D"], 4 / 50)


def test_gldzm_distance_from_morphological_mask():
    # A hole in the intensity mask (resegmentation) is not an edge when morph_mask is given.
    levels = np.ones((1, 7, 7), dtype=int)
    morph = np.ones(levels.shape, dtype=bool)
    intensity = morph.copy()
    intensity[0, 3, 3] = False
    levels[0, 3, 2] = 2  # one-voxel zone beside the hole, 3 steps from the outer edge
    on_morph = gldzm_features(levels, intensity, 2, morph_mask=morph, dimensions=("2D",))
    on_int = gldzm_features(levels, intensity, 2, dimensions=("2D",))
    # Zones: level 1 (distance 1) and level 2 (distance 3 on the morph mask, 1 next to the hole).
    assert _approx(on_morph["dzm_lde_2D"], (1 + 9) / 2)
    assert _approx(on_int["dzm_lde_2D"], 1.0)


def test_zone_connectivity():
    # Diagonal neighbours join in a slice (8-connectivity) and across slices only in 3D.
    levels = np.full((2, 2, 2), 2)
    levels[0, 0, 0] = levels[0, 1, 1] = levels[1, 0, 1] = 1
    mask = np.ones(levels.shape, dtype=bool)
    f = glszm_features(levels, mask, 2)
    # Per slice: slice 0 has zones of size 2 and 2, slice 1 zones of size 1 and 3.
    assert _approx(f["szm_z_perc_2_5D"], 4 / 8)
    assert _approx(f["szm_lze_2D"], ((4 + 4) / 2 + (1 + 9) / 2) / 2)
    # 3D: the level-1 voxels all touch diagonally, and so do the level-2 voxels.
    assert _approx(f["szm_z_perc_3D"], 2 / 8)


def test_ngtdm_by_hand():
    levels = np.ones((1, 3, 3), dtype=int)
    levels[0, 1, 1] = 2
    f = ngtdm_features(levels, np.ones(levels.shape, dtype=bool), 2)
    # Corners: |1 - 4/3|, edges: |1 - 6/5|, centre: |2 - 1|.
    s1, s2 = 4 / 3 + 4 / 5, 1.0
    p1, p2 = 8 / 9, 1 / 9
    sum_ps = p1 * s1 + p2 * s2
    for dim in ("2D", "2_5D"):
        assert _approx(f[f"ngt_coarseness_{dim}"], 1 / sum_ps)
        assert _approx(f[f"ngt_contrast_{dim}"], (2 * p1 * p2) / 2 * (s1 + s2) / 9)
        assert _approx(f[f"ngt_busyness_{dim}"], sum_ps / (2 * abs(p1 - 2 * p2)))
        assert _approx(f[f"ngt_complexity_{dim}"], 2 * (p1 * s1 + p2 * s2) / (p1 + p2) / 9)
        assert _approx(f[f"ngt_strength_{dim}"], 2 * (p1 + p2) / (s1 + s2))


def test_ngtdm_uniform_roi_takes_ibsi_values():
    levels = np.full((3, 4, 4), 3)
    f = ngtdm_features(levels, np.ones(levels.shape, dtype=bool), 4, dimensions=("3D",))
    assert f == {
        "ngt_coarseness_3D": 1.0e6,
        "ngt_contrast_3D": 0.0,
        "ngt_busyness_3D": 0.0,
        "ngt_complexity_3D": 0.0,
        "ngt_strength_3D": 0.0,
    }


def test_ngtdm_skips_voxels_without_neighbours():
    levels = np.ones((1, 5, 5), dtype=int)
    levels[0, 0, 0] = 2
    mask = np.zeros(levels.shape, dtype=bool)
    mask[0, 0, 0] = True  # isolated voxel: no neighbour, left out
    mask[0, 3:5, 3:5] = True  # 2x2 block of level 1: s = 0
    f = ngtdm_features(levels, mask, 2, dimensions=("2D",))
    assert f["ngt_coarseness_2D"] == 1.0e6
    assert f["ngt_contrast_2D"] == 0.0


def test_ngldm_by_hand():
    levels = np.ones((1, 3, 3), dtype=int)
    levels[0, 1, 1] = 2
    f = ngldm_features(levels, np.ones(levels.shape, dtype=bool), 2)
    # (level, dependence): centre (2, 1), corners (1, 3) x4, edges (1, 5) x4.
    for dim in ("2D", "2_5D", "3D"):
        assert _approx(f[f"ngl_lde_{dim}"], (1 + 4 / 9 + 4 / 25) / 9)
        assert _approx(f[f"ngl_hde_{dim}"], (1 + 36 + 100) / 9)
        assert _approx(f[f"ngl_glnu_{dim}"], (64 + 1) / 9)
        assert _approx(f[f"ngl_dcnu_{dim}"], (1 + 16 + 16) / 9)
        assert _approx(f[f"ngl_dc_perc_{dim}"], 1.0)
        assert _approx(f[f"ngl_dc_energy_{dim}"], (1 + 16 + 16) / 81)
    # With coarseness 1 every neighbour is dependent: 1 + 3, 1 + 5 and 1 + 8.
    f = ngldm_features(levels, np.ones(levels.shape, dtype=bool), 2, coarseness=1, dimensions=("3D",))
    assert _approx(f["ngl_hde_3D"], (4 * 16 + 4 * 36 + 81) / 9)


@pytest.mark.parametrize("function", [glszm_features, gldzm_features, ngtdm_features, ngldm_features])
def test_bad_arguments_raise(function):
    levels = np.ones((2, 3, 3), dtype=int)
    mask = np.ones((2, 3, 3), dtype=bool)
    with pytest.raises(ValueError, match="differ in shape"):
        function(levels, mask[:1], 1)
    with pytest.raises(ValueError, match="n_levels"):
        function(levels, mask, 0)
    with pytest.raises(ValueError, match="empty"):
        function(levels, np.zeros_like(mask), 1)
    with pytest.raises(ValueError, match="outside 1..1"):
        function(levels + 1, mask, 1)
    with pytest.raises(ValueError, match="3-D"):
        function(levels[0], mask[0], 1)
    with pytest.raises(ValueError, match="unknown dimensions"):
        function(levels, mask, 1, dimensions=("4D",))


def test_morph_mask_must_contain_int_mask():
    levels = np.ones((1, 3, 3), dtype=int)
    mask = np.ones(levels.shape, dtype=bool)
    with pytest.raises(ValueError, match="subset"):
        gldzm_features(levels, mask, 1, morph_mask=np.zeros_like(mask))
    with pytest.raises(ValueError, match="differ in shape"):
        gldzm_features(levels, mask, 1, morph_mask=mask[:, :2])


# --- IBSI-1 reference values ----------------------------------------------------------


def test_digital_phantom_reference_values(ibsi_phantom):
    image, mask = ibsi_phantom
    # No discretisation: the grey levels are the image values 1..6 (levels 2 and 5 unused).
    levels = image.astype(np.int64)
    ours = {}
    ours.update(glszm_features(levels, mask, 6))
    ours.update(gldzm_features(levels, mask, 6, morph_mask=mask))
    ours.update(ngtdm_features(levels, mask, 6))
    ours.update(ngldm_features(levels, mask, 6))
    reference = ibsi_reference("phantom", FAMILIES)
    assert len(reference) == 3 * (16 + 16 + 5 + 17)
    assert set(ours) == set(reference)
    assert mismatches(ours, "phantom", FAMILIES) == []


@pytest.mark.parametrize("config", list("ABCDE"))
def test_chest_configuration_reference_values(ibsi_roi, config):
    roi = ibsi_roi(config)
    dims = ("2D", "2_5D") if config in "AB" else ("3D",)
    args = (roi.levels, roi.int_mask, roi.n_levels)
    ours = {}
    ours.update(glszm_features(*args, dimensions=dims))
    ours.update(gldzm_features(*args, morph_mask=roi.morph_mask, dimensions=dims))
    ours.update(ngtdm_features(*args, dimensions=dims))
    ours.update(ngldm_features(*args, dimensions=dims))
    assert len(ibsi_reference(config, FAMILIES)) == len(dims) * (16 + 16 + 5 + 17)
    assert mismatches(ours, config, FAMILIES) == []


def test_gldzm_reference_needs_the_morphological_mask(ibsi_roi):
    # Configuration D's outlier resegmentation punches holes in the intensity mask; the
    # reference distances are those to the edge of the morphological mask, not of the holes.
    roi = ibsi_roi("D")
    assert np.any(roi.morph_mask & ~roi.int_mask)
    on_int = gldzm_features(roi.levels, roi.int_mask, roi.n_levels, dimensions=("3D",))
    assert not within_tolerance(on_int["dzm_lde_3D"], *ibsi_reference("D", "dzm_lde_3D")["dzm_lde_3D"])
