"""pyradiomics-compatible mode stays exact through MRML: a volume and a segmentation put
into Slicer nodes and read back give plain pyradiomics' values (oblique, anisotropic grid)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

slicer = pytest.importorskip(
    "slicer", reason="MRML tests need the slicer-core wheel (pip install imaginfo[slicer-core])"
)
radiomics = pytest.importorskip("radiomics", reason="pyradiomics is not installed (see the README: a source build)")

from ImagInfoExtension import bridge  # noqa: E402
from ImagInfoExtension.bridge import SegmentDescription  # noqa: E402
from ImagInfoExtension.radiomics.extract import extract_features  # noqa: E402
from ImagInfoExtension.radiomics.settings import settings_from_pyradiomics  # noqa: E402

PARAMETERS = {
    "setting": {"binWidth": 10, "label": 1, "resampledPixelSpacing": [1.0, 1.0, 1.0], "interpolator": "sitkBSpline"},
    "imageType": {"Original": {}, "LoG": {"sigma": [1.5]}},
    "featureClass": {c: [] for c in ("shape", "firstorder", "glcm", "glrlm", "glszm", "gldm", "ngtdm")},
}


def _oblique_case() -> tuple[sitk.Image, sitk.Image]:
    a, b = np.deg2rad([25.0, -15.0])
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rz = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    shape_kji = (14, 30, 34)
    rng = np.random.default_rng(7)
    k, j, i = np.indices(shape_kji)
    blob = ((i - 16) / 9.0) ** 2 + ((j - 14) / 7.0) ** 2 + ((k - 7) / 4.0) ** 2 <= 1
    array = (rng.normal(0.0, 20.0, shape_kji) + 60.0 * blob).astype(np.int16)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.7, 0.9, 2.5))
    image.SetOrigin((-40.0, 12.5, -80.0))
    image.SetDirection(tuple((rz @ rx).ravel()))
    labels = sitk.GetImageFromArray(blob.astype(np.uint8))
    labels.CopyInformation(image)
    return image, labels


def test_compatible_mode_equals_plain_pyradiomics_after_an_mrml_round_trip():
    from radiomics.featureextractor import RadiomicsFeatureExtractor

    image, labels = _oblique_case()
    plain = {
        k: float(v)
        for k, v in RadiomicsFeatureExtractor(PARAMETERS).execute(image, labels, label=1).items()
        if not k.startswith("diagnostics_")
    }

    scene = bridge.new_scene()
    volume = bridge.volume_node_from_sitk(image, scene, "oblique CT")
    segmentation = bridge.segmentation_node_from_label_map(
        labels, scene, [SegmentDescription(label=1, name="blob")], "segmentation", volume
    )
    image_back = bridge.sitk_from_volume_node(volume)
    labels_back = bridge.label_map_from_segmentation_node(segmentation, volume).image
    assert np.array_equal(sitk.GetArrayViewFromImage(image_back), sitk.GetArrayViewFromImage(image))
    # Bit for bit: pyradiomics moves its resampling grid on a 1e-16 change of a direction cosine.
    assert image_back.GetDirection() == image.GetDirection() and image_back.GetOrigin() == image.GetOrigin()

    settings = settings_from_pyradiomics(PARAMETERS, name="test", mode="pyradiomics")
    rows = extract_features(image_back, labels_back, settings, segment_names={1: "blob"}).rows
    ours = {f"{r['image_type']}_{r['feature_class']}_{r['feature']}": r["value"] for r in rows}
    assert set(ours) == set(plain) and len(plain) >= 200
    worst = max(abs(ours[k] - plain[k]) / max(abs(plain[k]), 1e-300) for k in plain)
    assert worst <= 1e-9
    mapped = {r["feature"]: r["ibsi_tag"] for r in rows if r["image_type"] == "original"}
    assert mapped["JointAverage"] == "cm_joint_avg_3D_avg" and mapped["MeshVolume"] == "morph_volume"
