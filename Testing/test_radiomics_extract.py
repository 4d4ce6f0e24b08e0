"""Radiomics extraction end to end: segments, lesions, bad input, command line, batch, study plugin."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from ImagInfoExtension.cli import main
from ImagInfoExtension.radiomics.extract import FEATURE_COLUMNS, RadiomicsInputError, extract_features
from ImagInfoExtension.radiomics.settings import RadiomicsSettingsError, load_parameter_file, load_preset

#: A quick settings set for tests that do not check every family.
QUICK = ("stat", "ih", "cm", "szm")


def _image(shape_kji=(20, 32, 32), spacing=(0.8, 0.8, 2.0), seed=0, direction=None) -> sitk.Image:
    rng = np.random.default_rng(seed)
    array = rng.normal(40.0, 15.0, shape_kji).round()
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin((-12.0, 30.0, 5.0))
    if direction is not None:
        image.SetDirection(direction)
    return image


def _labels(image: sitk.Image, boxes: dict[int, list[tuple[slice, slice, slice]]]) -> sitk.Image:
    array = np.zeros(sitk.GetArrayViewFromImage(image).shape, dtype=np.uint8)
    for label, regions in boxes.items():
        for region in regions:
            array[region] = label
    labels = sitk.GetImageFromArray(array)
    labels.CopyInformation(image)
    return labels


def _quick(preset: str = "ct"):
    return load_preset(preset).with_changes(families=QUICK, resampled_spacing_mm=None)


def test_each_segment_gives_its_own_tidy_rows_with_the_direct_computation():
    from ImagInfoExtension.radiomics.extract import ibsi_feature_values
    from ImagInfoExtension.radiomics.preprocess import prepare_roi

    image = _image()
    labels = _labels(image, {1: [np.s_[4:12, 5:15, 5:15]], 2: [np.s_[8:16, 18:28, 16:30]]})
    settings = _quick()
    result = extract_features(image, labels, settings, case="c1", segment_names={1: "tumour", 2: "node"})
    frame = result.frame()
    assert list(frame.columns) == list(FEATURE_COLUMNS)
    assert set(frame["segment"]) == {"tumour", "node"} and (frame["lesion"] == "").all()
    assert (frame["feature"] == frame["ibsi_tag"]).all() and set(frame["image_type"]) == {"original"}
    assert set(frame["feature_class"]) == {"intensity_statistics", "intensity_histogram", "glcm", "glszm"}
    # The node's values are the engine's on that segment alone.
    node_mask = sitk.Cast(labels == 2, sitk.sitkUInt8)
    direct = ibsi_feature_values(prepare_roi(image, node_mask, settings), settings)
    node = frame[frame["segment"] == "node"].set_index("feature")["value"]
    assert node.to_dict() == pytest.approx(direct, rel=1e-12, nan_ok=True)
    assert node["stat_mean"] == pytest.approx(sitk.GetArrayViewFromImage(image)[8:16, 18:28, 16:30].mean())
    assert result.provenance["settings_sha256"] == settings.digest() and result.provenance["mode"] == "ibsi"


def test_per_lesion_mode_numbers_lesions_by_volume_with_centroids_in_lps_and_ras():
    image = _image(direction=(0, -1, 0, 1, 0, 0, 0, 0, 1))
    small, large = np.s_[2:5, 3:6, 3:6], np.s_[10:16, 15:25, 12:22]
    labels = _labels(image, {1: [small, large]})
    result = extract_features(image, labels, _quick(), per_lesion=True, min_lesion_volume_ml=0.0)
    lesions = pd.DataFrame(result.lesions)
    assert list(lesions["lesion"]) == [1, 2]
    spacing = np.array(image.GetSpacing())
    assert lesions["volume_ml"].tolist() == pytest.approx([600 * spacing.prod() / 1000, 27 * spacing.prod() / 1000])
    centre_ijk = np.array([(12 + 21) / 2, (15 + 24) / 2, (10 + 15) / 2])
    lps = np.array(image.TransformContinuousIndexToPhysicalPoint(centre_ijk.tolist()))
    first = lesions.iloc[0]
    assert [first.centroid_lps_x_mm, first.centroid_lps_y_mm, first.centroid_lps_z_mm] == pytest.approx(lps)
    assert [first.centroid_ras_x_mm, first.centroid_ras_y_mm, first.centroid_ras_z_mm] == pytest.approx(
        [-lps[0], -lps[1], lps[2]]
    )
    frame = result.frame()
    assert set(frame["lesion"]) == {"1", "2"}
    # Dropping the small lesion keeps the numbering of the large one and says so.
    kept = extract_features(image, labels, _quick(), per_lesion=True, min_lesion_volume_ml=0.05)
    assert [lesion["lesion"] for lesion in kept.lesions] == [1] and "left out" in kept.warnings[0]


def test_bad_rois_are_reported_and_the_other_segments_still_extracted():
    image = _image()
    array = sitk.GetArrayFromImage(image)
    array[10, 20, 20] = np.nan
    image_with_nan = sitk.GetImageFromArray(array)
    image_with_nan.CopyInformation(image)
    labels = _labels(image, {1: [np.s_[4:12, 5:15, 5:15]], 2: [np.s_[3, 3, 3]], 3: [np.s_[9:12, 18:22, 18:22]]})
    result = extract_features(image_with_nan, labels, _quick(), labels=[1, 2, 3, 4])
    errors = {f["segment"]: f["error"] for f in result.failures}
    assert set(result.frame()["segment"]) == {"label_1"}
    assert "1 voxel" in errors["label_2"] and "at least 2 voxels" in errors["label_2"]
    assert "NaN" in errors["label_3"] and "fill or mask" in errors["label_3"]
    assert "empty" in errors["label_4"]


def test_masks_on_other_grids_are_resampled_with_a_warning_or_refused_when_apart():
    image = _image()
    labels = _labels(image, {1: [np.s_[4:12, 5:15, 5:15]]})
    finer = sitk.Resample(
        labels,
        [s * 2 for s in image.GetSize()],
        sitk.Transform(),
        sitk.sitkNearestNeighbor,
        image.GetOrigin(),
        [s / 2 for s in image.GetSpacing()],
        image.GetDirection(),
        0,
    )
    result = extract_features(image, finer, _quick())
    assert "resampled onto the image" in result.warnings[0] and len(result.rows) > 0
    far = sitk.Image(labels)
    far.SetOrigin((500.0, 500.0, 500.0))
    with pytest.raises(RadiomicsInputError, match="does not overlap"):
        extract_features(image, far, _quick())
    with pytest.raises(RadiomicsInputError, match="no segment"):
        extract_features(image, labels * 0, _quick())


def test_a_single_slice_refuses_3d_features_and_gives_2d_ones():
    image = _image(shape_kji=(1, 32, 32))
    labels = _labels(image, {1: [np.s_[0, 5:20, 5:20]]})
    result = extract_features(image, labels, _quick().with_changes(families=("stat", "cm", "morph")))
    assert "single slice" in result.failures[0]["error"] and "texture_dimensions: [2D]" in result.failures[0]["error"]
    two_d = _quick().with_changes(families=("stat", "cm"), texture_dimensions=("2D",))
    frame = extract_features(image, labels, two_d).frame()
    assert "cm_joint_max_2D_avg" in set(frame["feature"])


def test_parameter_files_name_their_bad_keys_and_values(tmp_path):
    own = tmp_path / "own.yaml"
    own.write_text("imaginfo_radiomics: 1\nbin_widht: 25\n")
    with pytest.raises(RadiomicsSettingsError, match="unknown key.*bin_widht"):
        load_parameter_file(own)
    for value in (0, -5):
        own.write_text(f"imaginfo_radiomics: 1\ndiscretisation: fixed_bin_size\nbin_width: {value}\n")
        with pytest.raises(RadiomicsSettingsError, match="bin width > 0"):
            load_parameter_file(own)
    own.write_text("imaginfo_radiomics: 1\ndiscretisation: fixed_bin_number\nn_bins: 0\n")
    with pytest.raises(RadiomicsSettingsError, match="n_bins is 0"):
        load_parameter_file(own)
    pyrad = tmp_path / "params.json"
    pyrad.write_text(json.dumps({"setting": {"binWidht": 25}}))
    with pytest.raises(RadiomicsSettingsError, match="unknown setting key.*binWidht"):
        load_parameter_file(pyrad)
    pyrad.write_text(json.dumps({"setting": {"binWidth": -1}}))
    with pytest.raises(RadiomicsSettingsError, match="binWidth is -1"):
        load_parameter_file(pyrad)
    unsafe = tmp_path / "unsafe.yaml"
    unsafe.write_text("!!python/object/apply:os.system ['echo owned']\n")
    with pytest.raises(RadiomicsSettingsError, match="cannot be read as YAML"):
        load_parameter_file(unsafe)
    # A pyradiomics file in IBSI mode: its discretisation and resampling become the IBSI chain's.
    pyrad.write_text(
        json.dumps(
            {
                "setting": {
                    "binWidth": 10,
                    "resampledPixelSpacing": [1, 1, 1],
                    "interpolator": "sitkLinear",
                    "resegmentRange": [-100, 200],
                }
            }
        )
    )
    settings = load_parameter_file(pyrad, mode="ibsi")
    assert (settings.bin_width, settings.resampled_spacing_mm, settings.resegment_range) == (
        10.0,
        (1.0, 1.0, 1.0),
        (-100.0, 200.0),
    )
    pyrad.write_text(
        json.dumps({"setting": {"binCount": 16, "force2D": True}, "featureClass": {"glcm": [], "firstorder": []}})
    )
    settings = load_parameter_file(pyrad, mode="ibsi")
    assert settings.families == ("stat", "ih", "cm") and settings.texture_dimensions == ("2_5D",)
    assert (settings.discretisation, settings.n_bins) == ("fixed_bin_number", 16)


def test_command_line_single_case_and_resumable_manifest_with_a_failing_row(tmp_path):
    image = _image()
    labels = _labels(image, {1: [np.s_[4:12, 5:15, 5:15]], 2: [np.s_[8:16, 18:28, 16:30]]})
    sitk.WriteImage(image, str(tmp_path / "ct.nrrd"))
    sitk.WriteImage(labels, str(tmp_path / "seg.nrrd"))
    params = tmp_path / "quick.json"
    params.write_text(json.dumps({"imaginfo_radiomics": 1, "families": list(QUICK), "bin_width": 10}))
    out = tmp_path / "single" / "features.csv"
    code = main(
        [
            "radiomics",
            str(tmp_path / "ct.nrrd"),
            str(tmp_path / "seg.nrrd"),
            "--params",
            str(params),
            "--segment-names",
            "1=tumour,2=node",
            "--per-lesion",
            "--out",
            str(out),
            "--progress",
            "none",
        ]
    )
    assert code == 0
    features = pd.read_csv(out, keep_default_na=False)
    assert list(features.columns) == list(FEATURE_COLUMNS)
    assert set(features["segment"]) == {"tumour", "node"} and set(features["lesion"]) == {1}
    wide = pd.read_csv(out.parent / "features_wide.csv")
    assert len(wide) == 2 and "original_stat_mean" in wide.columns
    provenance = json.loads((out.parent / "features.provenance.json").read_text())
    assert provenance["settings_sha256"] and provenance["software"]["numpy"]
    assert (out.parent / "lesions.csv").exists()

    empty = _labels(image, {1: []})
    sitk.WriteImage(empty, str(tmp_path / "empty.nrrd"))
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(
        "case,image,mask,dose_mgy\nA,ct.nrrd,seg.nrrd,1.0\nB,ct.nrrd,seg.nrrd,4.0\nC,ct.nrrd,empty.nrrd,4.0\n"
    )
    batch_out = tmp_path / "batch" / "features.csv"
    arguments = [
        "radiomics",
        "--manifest",
        str(manifest),
        "--params",
        str(params),
        "--out",
        str(batch_out),
        "--workers",
        "0",
        "--progress",
        "none",
    ]
    assert main(arguments) == 3
    features = pd.read_csv(batch_out)
    assert list(features.columns[:2]) == ["case", "dose_mgy"] and set(features["case"]) == {"A", "B"}
    failures = pd.read_csv(batch_out.parent / "failures.csv")
    assert list(failures["case"]) == ["C"] and "no segment" in failures["error"].iloc[0]
    records = sorted((batch_out.parent / ".features-cases").glob("*.json"))
    finished = [r for r in records if json.loads(r.read_text())["status"] == "ok"]
    stamps = [r.stat().st_mtime_ns for r in finished]
    assert len(finished) == 2 and main(arguments) == 3
    assert [r.stat().st_mtime_ns for r in finished] == stamps  # resumed: finished cases are not recomputed
    assert pd.read_csv(batch_out).equals(features)


def test_radiomics_plugin_measures_classes_and_pmma_for_robustness(tiny_study, tmp_path):
    from ImagInfoExtension.radiomics.plugin import robustness_input
    from ImagInfoExtension.study.runner import measure_series, plugin_parameters

    manifest = pd.read_csv(tiny_study / "manifest.csv")
    row = manifest.iloc[0]
    payload = {"path": str(tiny_study / row["path"]), "truth": str(tiny_study / "truth.json")}
    settings = {"radiomics": {"families": ["stat", "cm"], "radii_mm": [1.0, 3.0]}}
    result = measure_series(payload, {"plugins": plugin_parameters(["radiomics"], settings)})
    long = pd.DataFrame(result["rows"]).assign(recon=row["recon"], dose_mgy=row["dose_mgy"])
    assert set(long["radius_mm"].dropna()) == {1.0, 3.0}
    pmma = long[long["metric"] == "radiomics_pmma_stat_mean"]["value"]
    assert len(pmma) == 1 and 80 < pmma.iloc[0] < 160  # PMMA ≈ 120 HU
    tidy = robustness_input(long, ["recon", "dose_mgy"])
    assert set(tidy["segment"]) == {"vessel r=1 mm", "vessel r=3 mm", "pmma"}
    assert (tidy["feature"] == tidy["ibsi_tag"]).all()
