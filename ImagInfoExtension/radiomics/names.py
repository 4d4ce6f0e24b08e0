"""pyradiomics 3.0.1 feature names and their IBSI-1 counterparts.

Every feature pyradiomics 3.0.1 defines (``radiomics.getFeatureClasses()``, with the
deprecated ones) is one :class:`PyradiomicsName` row of :data:`PYRADIOMICS_NAMES`:
the IBSI-1 tag stem it corresponds to (``None`` where IBSI-1 has no such feature), the
conditions under which pyradiomics' value equals the IBSI one, and what happened when
pyradiomics was run on the IBSI-1 digital phantom and compared with its reference
values (``phantom``).

How pyradiomics' settings select the IBSI aggregation (checked on the phantom and CT):

* GLCM and GLRLM: pyradiomics computes one matrix per direction (13 in 3D), the
  features of each and their mean: ``_3D_avg``. With ``weightingNorm: no_weighting``
  the directional matrices are summed first: ``_3D_comb``. With ``force2D`` (axial,
  ``force2Ddimension: 0``) there are 4 in-plane directions, each direction's matrix
  counting all slices: ``_2_5D_avg`` (``_2_5D_comb`` with ``no_weighting``). The other
  weighting norms weight directions by distance and have no IBSI counterpart;
  pyradiomics has no per-slice (``_2D``) aggregation.
* GLSZM, GLDM, NGTDM: one matrix for the volume, ``_3D``; with ``force2D`` zones and
  neighbourhoods are found per slice and counted in one matrix: ``_2_5D``.
* firstorder and shape: no aggregation.

The phantom check (``Testing/test_radiomics_pyradiomics.py`` repeats it): the phantom
as it is (grey levels 1, 3, 4, 6 on a 2 mm grid), ``binWidth: 1`` (pyradiomics' bins
then start at 1 and each integer is its own level, so its discretisation is the
identity and Ng = 6 as in IBSI), all features including the deprecated ones, in the
four settings 3D, 3D + ``no_weighting``, ``force2D``, ``force2D`` + ``no_weighting``;
a value passes when, rounded to 3 significant digits, it lies within the reference
tolerance. Of the 105 features that have an IBSI counterpart and a value, 102 pass in
every setting they apply to (254 of 257 comparisons); the three that fail are
firstorder Kurtosis (pyradiomics reports the non-excess kurtosis) and shape
MinorAxisLength and LeastAxisLength (population instead of sample covariance).

The CT check (configurations A-E, by hand; the test repeats B): pyradiomics is
given the ROI that ImagInfo's IBSI chain prepares (``prepare_roi`` with the presets
``ibsi-A`` ... ``ibsi-E``): the intensities in the morphological mask for shape, in the
intensity mask for the firstorder statistics, and the discretised levels with
``binWidth: 1`` for Entropy, Uniformity and texture; ``force2D`` for A and B (the
``_2_5D`` tags), 3D for C-E, each with and without ``no_weighting``. Reference tags
passed (the MANIFEST's rule, :func:`ImagInfoExtension.radiomics.ibsi.within_tolerance`):
A 143/144, B 143/144, C 112/144, D 143/144, E 143/144; 81 of the 105 features pass in all
five. Besides Kurtosis (every configuration): NGTDM Contrast in B sits on its
tolerance's edge (0.0511 against 0.0506 ± 0.0005), because 19 voxels have no in-slice
neighbour in the ROI (pyradiomics counts them, IBSI does not);
in C the ROI's lowest grey level is 3 (the bins of 25 HU start at the re-segmentation
bound, -1000 HU, and the ROI's lowest intensity lies in the third), pyradiomics' binning
relabels it 1, and the 22 features weighted by the grey level itself (JointAverage,
SumAverage, Autocorrelation, the low/high grey level emphases, Busyness) fail: the
binWidth condition below (Idn, also weighted, moves just within its tolerance).

This module imports nothing beyond the standard library.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

#: ``phantom`` values of :class:`PyradiomicsName`.
PHANTOM_PASS = "pass"
PHANTOM_FAIL = "fail"
PHANTOM_NO_VALUE = "no value"
PHANTOM_UNMAPPED = "unmapped"

#: Classes whose features are aggregated over directions (avg/comb suffixes).
DIRECTIONAL_CLASSES = ("glcm", "glrlm")
#: Classes with one matrix per volume (or per stack of slices with force2D).
VOLUME_TEXTURE_CLASSES = ("glszm", "gldm", "ngtdm")
#: Classes whose features pyradiomics computes from ``distances`` neighbourhoods.
DISTANCE_CLASSES = ("glcm", "gldm", "ngtdm")

_PREPROCESSED = (
    "pyradiomics is given the image and mask as the IBSI chain leaves them (resampled, rounded, "
    "re-segmented), with no resampledPixelSpacing, normalize or filter of its own (imageType Original)"
)
_DISCRETISED = (
    "the grey levels are IBSI's: binCount N is IBSI's fixed bin number N (up to floating-point ties at bin edges); "
    "binWidth W is IBSI's fixed bin size W only when IBSI's bin origin (the re-segmentation lower bound, else the ROI "
    "minimum) is a multiple of W and lies in the ROI minimum's bin, since pyradiomics counts bins from the largest "
    "multiple of W at or below the ROI minimum (on levels 1..N already discretised, binWidth 1 is the identity)"
)

#: Conditions that hold for a whole feature class, before the feature's own note.
CLASS_CONDITIONS: dict[str, str] = {
    "firstorder": f"{_PREPROCESSED}; computed on the intensities inside the (re-segmented) mask",
    "shape": (
        "computed on the mask before re-segmentation (resegmentShape false, the default), which is IBSI's "
        "morphological mask, with the voxel spacing of the grid pyradiomics is given"
    ),
    "shape2D": "IBSI-1 defines no 2D morphology",
    "glcm": (
        f"{_PREPROCESSED}; {_DISCRETISED}; symmetricalGLCM true and distances [1] (the defaults); 3D: _3D_avg, "
        "weightingNorm no_weighting: _3D_comb, force2D (force2Ddimension 0): _2_5D_avg, force2D with no_weighting: "
        "_2_5D_comb; no IBSI counterpart with the other weighting norms"
    ),
    "glrlm": (
        f"{_PREPROCESSED}; {_DISCRETISED}; 3D: _3D_avg, weightingNorm no_weighting: _3D_comb, force2D "
        "(force2Ddimension 0): _2_5D_avg, force2D with no_weighting: _2_5D_comb; no IBSI counterpart with the "
        "other weighting norms"
    ),
    "glszm": (
        f"{_PREPROCESSED}; {_DISCRETISED}; 26-connected zones: _3D; force2D (force2Ddimension 0): 8-connected "
        "zones per slice counted in one matrix: _2_5D"
    ),
    "gldm": (
        f"{_PREPROCESSED}; {_DISCRETISED}; the GLDM is IBSI's NGLDM with coarseness alpha = gldm_a (IBSI and "
        "pyradiomics default 0) and distances [1]: _3D; force2D (force2Ddimension 0): _2_5D"
    ),
    "ngtdm": (
        f"{_PREPROCESSED}; {_DISCRETISED}; distances [1]: _3D; force2D (force2Ddimension 0): _2_5D; every ROI voxel "
        "has a neighbour in the ROI (in its slice with force2D): pyradiomics counts a voxel without one in p_i and "
        "N_v (with no grey tone difference), IBSI leaves it out (IBSI configuration B: 19 such voxels of 27 359 move "
        "Contrast by 0.8 %, the others by under 0.1 %)"
    ),
}


@dataclass(frozen=True)
class PyradiomicsName:
    """One pyradiomics feature and its IBSI-1 counterpart.

    Attributes
    ----------
    feature_class : str
        pyradiomics feature class (``firstorder``, ``shape``, ``shape2D``, ``glcm``,
        ``glrlm``, ``glszm``, ``gldm``, ``ngtdm``).
    feature : str
        pyradiomics feature name, e.g. ``JointAverage``.
    ibsi_stem : str or None
        IBSI-1 tag without the aggregation suffix (``cm_joint_avg``); None when
        IBSI-1 has no such feature.
    note : str
        The feature's own conditions or differences, beyond its class's.
    phantom : str
        On the IBSI digital phantom: ``"pass"`` (within the reference tolerance in every
        setting that applies), ``"fail"`` (why in ``note``), ``"no value"``
        (pyradiomics 3.0.1 computes none: a deprecated feature) or ``"unmapped"``.
    deprecated : bool
        pyradiomics marks it deprecated (computed only when named in ``featureClass``).
    ct : str
        On the IBSI CT phantom, configurations A-E: ``"pass"`` (every configuration),
        ``"fails B"``, ``"fails C"``, ``"fails A, B, C, D, E"``, ``"no value"`` or
        ``"unmapped"``.
    """

    feature_class: str
    feature: str
    ibsi_stem: str | None
    note: str = ""
    phantom: str = PHANTOM_PASS
    deprecated: bool = False
    ct: str = ""

    @property
    def equal_when(self) -> str:
        """When pyradiomics' value equals the IBSI one, as a sentence."""
        if self.ibsi_stem is None:
            reason = self.note or CLASS_CONDITIONS.get(self.feature_class, "")
            return f"never: IBSI-1 has no such feature ({reason})" if reason else "never: IBSI-1 has no such feature"
        condition = CLASS_CONDITIONS[self.feature_class]
        return f"{condition}; {self.note}" if self.note else condition


def _rows(feature_class: str, entries: tuple[tuple, ...]) -> tuple[PyradiomicsName, ...]:
    return tuple(PyradiomicsName(feature_class, *entry) for entry in entries)


_NO_VALUE = "pyradiomics 3.0.1 computes no value for it (it raises a DeprecationWarning): read {} instead"
_PERCENTILE = "numpy's linearly interpolated percentiles, as the IBSI reference implementations"
_SHIFT = "voxelArrayShift 0 (the default): pyradiomics adds the shift to every intensity first"
_AXIS = (
    "4 sqrt(lambda) of the covariance of the voxel centres; pyradiomics divides by N voxels, the IBSI reference "
    "values by N - 1, so pyradiomics = IBSI x sqrt((N - 1)/N): 0.7 % low on the 74-voxel phantom, under 0.005 % "
    "above 10 000 voxels"
)

#: Every pyradiomics 3.0.1 feature, class by class in pyradiomics' alphabetical order.
PYRADIOMICS_NAMES: tuple[PyradiomicsName, ...] = (
    *_rows(
        "firstorder",
        (
            ("10Percentile", "stat_p10", _PERCENTILE),
            ("90Percentile", "stat_p90", _PERCENTILE),
            ("Energy", "stat_energy", _SHIFT),
            (
                "Entropy",
                "ih_entropy",
                "log2 entropy of the discretised grey levels (binWidth/binCount), i.e. of IBSI's intensity "
                "histogram, which must use the same discretisation",
            ),
            ("InterquartileRange", "stat_iqr", _PERCENTILE),
            (
                "Kurtosis",
                "stat_kurt",
                "never equal: pyradiomics reports the kurtosis m4/m2^2 and IBSI the excess kurtosis, "
                "stat_kurt = Kurtosis - 3 (on the phantom 2.645 - 3 = -0.355 passes)",
                PHANTOM_FAIL,
            ),
            ("Maximum", "stat_max"),
            ("MeanAbsoluteDeviation", "stat_mad"),
            ("Mean", "stat_mean"),
            ("Median", "stat_median", _PERCENTILE),
            ("Minimum", "stat_min"),
            ("Range", "stat_range"),
            ("RobustMeanAbsoluteDeviation", "stat_rmad", f"over the voxels between the 10th and 90th {_PERCENTILE}"),
            ("RootMeanSquared", "stat_rms", _SHIFT),
            ("Skewness", "stat_skew"),
            ("StandardDeviation", None, "sqrt(Variance); IBSI-1 defines the variance only", PHANTOM_UNMAPPED, True),
            ("TotalEnergy", None, "Energy times the voxel volume in mm^3", PHANTOM_UNMAPPED),
            (
                "Uniformity",
                "ih_uniformity",
                "of the discretised grey levels (binWidth/binCount), i.e. of IBSI's intensity histogram, which must "
                "use the same discretisation",
            ),
            ("Variance", "stat_var", "population variance (divided by N), as IBSI"),
        ),
    ),
    *_rows(
        "glcm",
        (
            ("Autocorrelation", "cm_auto_corr"),
            ("ClusterProminence", "cm_clust_prom"),
            ("ClusterShade", "cm_clust_shade"),
            ("ClusterTendency", "cm_clust_tend", "equal to IBSI's sum variance (cm_sum_var) too"),
            ("Contrast", "cm_contrast"),
            ("Correlation", "cm_corr"),
            ("DifferenceAverage", "cm_diff_avg", "equal to IBSI's dissimilarity (cm_dissimilarity) too"),
            ("DifferenceEntropy", "cm_diff_entr"),
            ("DifferenceVariance", "cm_diff_var"),
            ("Dissimilarity", "cm_dissimilarity", _NO_VALUE.format("DifferenceAverage"), PHANTOM_NO_VALUE, True),
            ("Homogeneity1", "cm_inv_diff", _NO_VALUE.format("Id"), PHANTOM_NO_VALUE, True),
            ("Homogeneity2", "cm_inv_diff_mom", _NO_VALUE.format("Idm"), PHANTOM_NO_VALUE, True),
            ("Id", "cm_inv_diff"),
            ("Idm", "cm_inv_diff_mom"),
            (
                "Idmn",
                "cm_inv_diff_mom_norm",
                "Ng is the highest grey level in the ROI: equal when IBSI's number of levels is that too",
            ),
            (
                "Idn",
                "cm_inv_diff_norm",
                "Ng is the highest grey level in the ROI: equal when IBSI's number of levels is that too",
            ),
            ("Imc1", "cm_info_corr1"),
            ("Imc2", "cm_info_corr2"),
            ("InverseVariance", "cm_inv_var"),
            ("JointAverage", "cm_joint_avg"),
            ("JointEnergy", "cm_energy"),
            ("JointEntropy", "cm_joint_entr"),
            ("MCC", None, "the maximal correlation coefficient", PHANTOM_UNMAPPED),
            ("MaximumProbability", "cm_joint_max"),
            ("SumAverage", "cm_sum_avg"),
            ("SumEntropy", "cm_sum_entr"),
            ("SumSquares", "cm_joint_var"),
            ("SumVariance", "cm_sum_var", _NO_VALUE.format("ClusterTendency"), PHANTOM_NO_VALUE, True),
        ),
    ),
    *_rows(
        "gldm",
        (
            ("DependenceEntropy", "ngl_dc_entr"),
            ("DependenceNonUniformity", "ngl_dcnu"),
            ("DependenceNonUniformityNormalized", "ngl_dcnu_norm"),
            (
                "DependencePercentage",
                "ngl_dc_perc",
                "pyradiomics 3.0.1 computes no value for it (always 1; it raises a DeprecationWarning)",
                PHANTOM_NO_VALUE,
                True,
            ),
            ("DependenceVariance", "ngl_dc_var"),
            ("GrayLevelNonUniformity", "ngl_glnu"),
            (
                "GrayLevelNonUniformityNormalized",
                "ngl_glnu_norm",
                _NO_VALUE.format("firstorder Uniformity"),
                PHANTOM_NO_VALUE,
                True,
            ),
            ("GrayLevelVariance", "ngl_gl_var"),
            ("HighGrayLevelEmphasis", "ngl_hgce"),
            ("LargeDependenceEmphasis", "ngl_hde"),
            ("LargeDependenceHighGrayLevelEmphasis", "ngl_hdhge"),
            ("LargeDependenceLowGrayLevelEmphasis", "ngl_hdlge"),
            ("LowGrayLevelEmphasis", "ngl_lgce"),
            ("SmallDependenceEmphasis", "ngl_lde"),
            ("SmallDependenceHighGrayLevelEmphasis", "ngl_ldhge"),
            ("SmallDependenceLowGrayLevelEmphasis", "ngl_ldlge"),
        ),
    ),
    *_rows(
        "glrlm",
        (
            ("GrayLevelNonUniformity", "rlm_glnu"),
            ("GrayLevelNonUniformityNormalized", "rlm_glnu_norm"),
            ("GrayLevelVariance", "rlm_gl_var"),
            ("HighGrayLevelRunEmphasis", "rlm_hgre"),
            ("LongRunEmphasis", "rlm_lre"),
            ("LongRunHighGrayLevelEmphasis", "rlm_lrhge"),
            ("LongRunLowGrayLevelEmphasis", "rlm_lrlge"),
            ("LowGrayLevelRunEmphasis", "rlm_lgre"),
            ("RunEntropy", "rlm_rl_entr"),
            ("RunLengthNonUniformity", "rlm_rlnu"),
            ("RunLengthNonUniformityNormalized", "rlm_rlnu_norm"),
            ("RunPercentage", "rlm_r_perc"),
            ("RunVariance", "rlm_rl_var"),
            ("ShortRunEmphasis", "rlm_sre"),
            ("ShortRunHighGrayLevelEmphasis", "rlm_srhge"),
            ("ShortRunLowGrayLevelEmphasis", "rlm_srlge"),
        ),
    ),
    *_rows(
        "glszm",
        (
            ("GrayLevelNonUniformity", "szm_glnu"),
            ("GrayLevelNonUniformityNormalized", "szm_glnu_norm"),
            ("GrayLevelVariance", "szm_gl_var"),
            ("HighGrayLevelZoneEmphasis", "szm_hgze"),
            ("LargeAreaEmphasis", "szm_lze"),
            ("LargeAreaHighGrayLevelEmphasis", "szm_lzhge"),
            ("LargeAreaLowGrayLevelEmphasis", "szm_lzlge"),
            ("LowGrayLevelZoneEmphasis", "szm_lgze"),
            ("SizeZoneNonUniformity", "szm_zsnu"),
            ("SizeZoneNonUniformityNormalized", "szm_zsnu_norm"),
            ("SmallAreaEmphasis", "szm_sze"),
            ("SmallAreaHighGrayLevelEmphasis", "szm_szhge"),
            ("SmallAreaLowGrayLevelEmphasis", "szm_szlge"),
            ("ZoneEntropy", "szm_zs_entr"),
            ("ZonePercentage", "szm_z_perc"),
            ("ZoneVariance", "szm_zs_var"),
        ),
    ),
    *_rows(
        "ngtdm",
        (
            ("Busyness", "ngt_busyness"),
            ("Coarseness", "ngt_coarseness"),
            ("Complexity", "ngt_complexity"),
            ("Contrast", "ngt_contrast"),
            ("Strength", "ngt_strength"),
        ),
    ),
    *_rows(
        "shape",
        (
            ("Compactness1", "morph_comp_1", "deprecated in pyradiomics: computed only when named", PHANTOM_PASS, True),
            ("Compactness2", "morph_comp_2", "deprecated in pyradiomics: computed only when named", PHANTOM_PASS, True),
            (
                "Elongation",
                "morph_pca_elongation",
                "sqrt(lambda_minor/lambda_major), as IBSI; the ratio cancels the covariance normalisation",
            ),
            (
                "Flatness",
                "morph_pca_flatness",
                "sqrt(lambda_least/lambda_major), as IBSI; the ratio cancels the covariance normalisation",
            ),
            ("LeastAxisLength", "morph_pca_least_axis", _AXIS, PHANTOM_FAIL),
            ("MajorAxisLength", "morph_pca_maj_axis", _AXIS),
            ("Maximum2DDiameterColumn", None, "largest diameter in a coronal plane", PHANTOM_UNMAPPED),
            ("Maximum2DDiameterRow", None, "largest diameter in a sagittal plane", PHANTOM_UNMAPPED),
            ("Maximum2DDiameterSlice", None, "largest diameter in an axial plane", PHANTOM_UNMAPPED),
            ("Maximum3DDiameter", "morph_diam", "largest distance between mesh vertices, as IBSI"),
            ("MeshVolume", "morph_volume", "volume of the marching-cubes mesh, as IBSI"),
            ("MinorAxisLength", "morph_pca_min_axis", _AXIS, PHANTOM_FAIL),
            (
                "SphericalDisproportion",
                "morph_sph_dispr",
                "deprecated in pyradiomics: computed only when named",
                PHANTOM_PASS,
                True,
            ),
            ("Sphericity", "morph_sphericity"),
            ("SurfaceArea", "morph_area_mesh", "area of the marching-cubes mesh, as IBSI"),
            ("SurfaceVolumeRatio", "morph_av"),
            ("VoxelVolume", "morph_vol_approx", "number of voxels times the voxel volume, as IBSI"),
        ),
    ),
    *_rows(
        "shape2D",
        (
            ("Elongation", None, "", PHANTOM_UNMAPPED),
            ("MajorAxisLength", None, "", PHANTOM_UNMAPPED),
            ("MaximumDiameter", None, "", PHANTOM_UNMAPPED),
            ("MeshSurface", None, "", PHANTOM_UNMAPPED),
            ("MinorAxisLength", None, "", PHANTOM_UNMAPPED),
            ("Perimeter", None, "", PHANTOM_UNMAPPED),
            ("PerimeterSurfaceRatio", None, "", PHANTOM_UNMAPPED),
            ("PixelSurface", None, "", PHANTOM_UNMAPPED),
            ("SphericalDisproportion", None, "", PHANTOM_UNMAPPED, True),
            ("Sphericity", None, "", PHANTOM_UNMAPPED),
        ),
    ),
)

#: Mapped features that fail some IBSI configurations A-E (why: the module docstring); the others pass all five.
_CT_FAILURES: dict[tuple[str, str], str] = {
    ("firstorder", "Kurtosis"): "A, B, C, D, E",
    **{
        (feature_class, feature): "C"
        for feature_class, features in {
            "glcm": ("Autocorrelation", "JointAverage", "SumAverage"),
            "glrlm": (
                "HighGrayLevelRunEmphasis", "LongRunHighGrayLevelEmphasis", "LongRunLowGrayLevelEmphasis",
                "LowGrayLevelRunEmphasis", "ShortRunHighGrayLevelEmphasis", "ShortRunLowGrayLevelEmphasis",
            ),
            "glszm": (
                "HighGrayLevelZoneEmphasis", "LargeAreaHighGrayLevelEmphasis", "LargeAreaLowGrayLevelEmphasis",
                "LowGrayLevelZoneEmphasis", "SmallAreaHighGrayLevelEmphasis", "SmallAreaLowGrayLevelEmphasis",
            ),
            "gldm": (
                "HighGrayLevelEmphasis", "LargeDependenceHighGrayLevelEmphasis", "LargeDependenceLowGrayLevelEmphasis",
                "LowGrayLevelEmphasis", "SmallDependenceHighGrayLevelEmphasis", "SmallDependenceLowGrayLevelEmphasis",
            ),
            "ngtdm": ("Busyness",),
        }.items()
        for feature in features
    },
}  # fmt: skip


def _ct_outcome(row: PyradiomicsName) -> str:
    if row.phantom in (PHANTOM_UNMAPPED, PHANTOM_NO_VALUE):
        return row.phantom
    failed = _CT_FAILURES.get((row.feature_class, row.feature))
    return f"fails {failed}" if failed else PHANTOM_PASS


PYRADIOMICS_NAMES = tuple(replace(row, ct=_ct_outcome(row)) for row in PYRADIOMICS_NAMES)

_BY_NAME: dict[tuple[str, str], PyradiomicsName] = {(r.feature_class, r.feature): r for r in PYRADIOMICS_NAMES}
FEATURE_CLASSES = tuple(dict.fromkeys(r.feature_class for r in PYRADIOMICS_NAMES))


def pyradiomics_name(feature_class: str, feature: str) -> PyradiomicsName:
    """The table row of a pyradiomics feature.

    Raises
    ------
    ValueError
        For a class or feature pyradiomics 3.0.1 does not define, naming the valid ones.
    """
    row = _BY_NAME.get((feature_class, feature))
    if row is not None:
        return row
    if feature_class not in FEATURE_CLASSES:
        raise ValueError(
            f"'{feature_class}' is not a pyradiomics feature class; use one of {', '.join(FEATURE_CLASSES)}"
        )
    known = [r.feature for r in PYRADIOMICS_NAMES if r.feature_class == feature_class]
    raise ValueError(f"pyradiomics' {feature_class} has no feature '{feature}'; it has {', '.join(known)}")


def ibsi_tag(
    feature_class: str, feature: str, *, force2d: bool = False, weighting_norm: str | None = None
) -> str | None:
    """The IBSI-1 tag of a pyradiomics feature, with its aggregation suffix.

    Parameters
    ----------
    feature_class, feature : str
        pyradiomics names, e.g. ``("glcm", "JointAverage")``.
    force2d : bool
        pyradiomics' ``force2D`` (axial slices, ``force2Ddimension: 0``).
    weighting_norm : str, optional
        pyradiomics' ``weightingNorm`` (GLCM and GLRLM): None averages the
        directional features (``_avg``), ``"no_weighting"`` sums the directional
        matrices (``_comb``); any other norm has no IBSI counterpart.

    Returns
    -------
    str or None
        E.g. ``"cm_joint_avg_3D_avg"``, ``"stat_p10"``, ``"ngl_dcnu_2_5D"``; None
        where IBSI-1 has no such feature or aggregation.

    Raises
    ------
    ValueError
        For a class or feature pyradiomics does not define.
    """
    row = pyradiomics_name(feature_class, feature)
    if row.ibsi_stem is None:
        return None
    if feature_class not in DIRECTIONAL_CLASSES + VOLUME_TEXTURE_CLASSES:
        return row.ibsi_stem
    dimension = "2_5D" if force2d else "3D"
    if feature_class in VOLUME_TEXTURE_CLASSES:
        return f"{row.ibsi_stem}_{dimension}"
    if weighting_norm is None:
        return f"{row.ibsi_stem}_{dimension}_avg"
    if weighting_norm == "no_weighting":
        return f"{row.ibsi_stem}_{dimension}_comb"
    return None


def ibsi_tag_for_setting(
    feature_class: str, feature: str, setting: Mapping[str, Any] | None, *, image_type: str = "original"
) -> str | None:
    """The IBSI-1 tag of a feature pyradiomics computed with a ``setting`` section.

    Like :func:`ibsi_tag`, and None where the settings leave IBSI-1: a filtered image
    type (IBSI-1 defines features of the original image only), ``force2D`` on a
    dimension other than 0 (IBSI's 2D is axial), ``distances`` other than ``[1]``
    for GLCM, GLDM and NGTDM, and a ``voxelArrayShift`` other than 0 for Energy and
    RootMeanSquared.
    """
    setting = setting or {}
    row = pyradiomics_name(feature_class, feature)
    if row.ibsi_stem is None or image_type != "original":
        return None
    force2d = bool(setting.get("force2D", False))
    if force2d and int(setting.get("force2Ddimension", 0)) != 0 and feature_class not in ("firstorder", "shape"):
        return None
    if feature_class in DISTANCE_CLASSES and list(setting.get("distances") or [1]) != [1]:
        return None
    if feature in ("Energy", "RootMeanSquared") and feature_class == "firstorder":
        if float(setting.get("voxelArrayShift", 0) or 0) != 0:
            return None
    return ibsi_tag(feature_class, feature, force2d=force2d, weighting_norm=setting.get("weightingNorm"))


def pyradiomics_table() -> list[dict[str, Any]]:
    """The table as rows for the README and the documentation.

    Each row: ``feature_class``, ``feature``, ``ibsi_tag`` (the 3D tag, with ``_avg``
    for GLCM and GLRLM; None where IBSI-1 has no such feature), ``ibsi_tag_force2d``
    (the tag with ``force2D``), ``equal_when``, ``phantom`` (digital phantom), ``ct``
    (CT configurations A-E) and ``deprecated``.
    """
    return [
        {
            "feature_class": row.feature_class,
            "feature": row.feature,
            "ibsi_tag": ibsi_tag(row.feature_class, row.feature),
            "ibsi_tag_force2d": ibsi_tag(row.feature_class, row.feature, force2d=True),
            "equal_when": row.equal_when,
            "phantom": row.phantom,
            "ct": row.ct,
            "deprecated": row.deprecated,
        }
        for row in PYRADIOMICS_NAMES
    ]
