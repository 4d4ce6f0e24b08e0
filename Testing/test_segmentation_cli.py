"""`imaginfo segment`, `imaginfo evaluate` and `imaginfo models` end to end, on a tiny MONAI bundle made here."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

torch = pytest.importorskip("torch")
pytest.importorskip("monai")

from ImagInfoExtension.cli import main  # noqa: E402
from ImagInfoExtension.segmentation import run as segmentation_run  # noqa: E402
from ImagInfoExtension.segmentation.evaluation import evaluate_label_maps  # noqa: E402

NETWORK_ARGS = {"spatial_dims": 3, "in_channels": 1, "out_channels": 3, "channels": [4, 8], "strides": [2]}


def _write_bundle(folder: Path, weights: bytes | None = None) -> Path:
    from monai.networks.nets import UNet

    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    torch.manual_seed(0)
    if weights is None:
        torch.save(UNet(**NETWORK_ARGS).state_dict(), folder / "models" / "model.pt")
    else:
        (folder / "models" / "model.pt").write_bytes(weights)
    inference = {
        "network_def": {"_target_": "monai.networks.nets.UNet", **NETWORK_ARGS},
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
                {
                    "_target_": "ScaleIntensityRanged",
                    "keys": "image",
                    "a_min": -1000,
                    "a_max": 400,
                    "b_min": 0,
                    "b_max": 1,
                    "clip": True,
                },
            ],
        },
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [32, 32, 32], "overlap": 0.25, "mode": "gaussian"},
    }
    image_format = {
        "type": "image",
        "format": "hounsfield",
        "modality": "CT",
        "num_channels": 1,
        "spatial_shape": [32, 32, 32],
        "dtype": "float32",
        "value_range": [0, 1],
        "is_patch_data": True,
        "channel_def": {"0": "image"},
    }
    prediction_format = image_format | {
        "format": "segmentation",
        "num_channels": 3,
        "channel_def": {"0": "background", "1": "lesion", "2": "organ"},
    }
    prediction_format.pop("modality")
    metadata = {
        "version": "0.1.0",
        "monai_version": "1.6.1",
        "pytorch_version": "2.13.0",
        "numpy_version": "2",
        "task": "test",
        "description": "random weights",
        "authors": "ImagInfo tests",
        "copyright": "ImagInfo",
        "license": "Apache-2.0",
        "network_data_format": {"inputs": {"image": image_format}, "outputs": {"pred": prediction_format}},
    }
    (folder / "configs" / "inference.json").write_text(json.dumps(inference))
    (folder / "configs" / "metadata.json").write_text(json.dumps(metadata))
    return folder


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A model cache with the tiny bundle imported, and an image with its truth on an oblique grid."""
    root = tmp_path_factory.mktemp("segcli")
    previous = os.environ.get("IMAGINFO_MODEL_CACHE")
    os.environ["IMAGINFO_MODEL_CACHE"] = str(root / "cache")
    bundle = _write_bundle(root / "bundle")
    assert main(["models", "import", str(bundle), "--id", "cli-test", "--progress", "none"]) == 0
    rng = np.random.default_rng(1)
    image = sitk.GetImageFromArray(rng.normal(-400, 400, (30, 40, 36)).astype(np.int16))
    image.SetSpacing((0.8, 0.9, 1.5))
    image.SetOrigin((10.0, -5.0, 3.0))
    image.SetDirection((0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    truth = sitk.GetImageFromArray(
        (sitk.GetArrayFromImage(image) > 0).astype(np.uint8) + (sitk.GetArrayFromImage(image) > 300)
    )
    truth.CopyInformation(image)
    sitk.WriteImage(image, str(root / "image.nrrd"))
    sitk.WriteImage(truth, str(root / "truth.nrrd"))
    yield root
    if previous is None:
        os.environ.pop("IMAGINFO_MODEL_CACHE", None)
    else:
        os.environ["IMAGINFO_MODEL_CACHE"] = previous


def test_segment_writes_the_contract_on_the_input_grid(workspace, capsys):
    out = workspace / "one"
    code = main(
        [
            "segment",
            str(workspace / "image.nrrd"),
            "--model",
            "cli-test",
            "--device",
            "cpu",
            "--truth",
            str(workspace / "truth.nrrd"),
            "--out",
            str(out),
            "--progress",
            "none",
        ]
    )
    assert code == 0
    image = sitk.ReadImage(str(workspace / "image.nrrd"))
    labels = sitk.ReadImage(str(out / "segmentation.nrrd"))
    assert labels.GetSize() == image.GetSize()
    assert labels.GetSpacing() == image.GetSpacing()
    assert labels.GetOrigin() == image.GetOrigin()
    assert labels.GetDirection() == image.GetDirection()
    assert set(np.unique(sitk.GetArrayFromImage(labels))) <= {0, 1, 2}

    summary = json.loads((out / "summary.json").read_text())
    from ImagInfoExtension.segmentation.catalogue import load_catalogue

    entry = load_catalogue().get("cli-test")
    assert summary["model"] == {"id": "cli-test", "version": "0.1.0", "sha256": entry.weights.sha256}
    assert summary["device"] == "cpu" and summary["runtime_s"] > 0
    assert [label["name"] for label in summary["labels"]] == ["lesion", "organ"]

    evaluation = pd.read_csv(out / "evaluation.csv")
    assert list(evaluation.columns) == [
        "label",
        "name",
        "dice",
        "hd95_mm",
        "assd_mm",
        "nsd",
        "volume_ml",
        "true_volume_ml",
    ]
    direct = evaluate_label_maps(labels, sitk.ReadImage(str(workspace / "truth.nrrd")), labels=entry.label_names)
    for row, expected in zip(evaluation.itertuples(), direct):
        assert row.dice == pytest.approx(expected.dice, nan_ok=True)
        assert row.hd95_mm == pytest.approx(expected.hd95_mm, nan_ok=True)
        assert row.true_volume_ml == pytest.approx(expected.true_volume_ml)
    biomarkers = pd.read_csv(out / "biomarkers.csv")
    segment_rows = biomarkers[biomarkers["scope"] == "segment"].set_index("label")
    voxel_ml = np.prod(image.GetSpacing()) / 1000.0
    for value in (1, 2):
        count = int((sitk.GetArrayFromImage(labels) == value).sum())
        assert segment_rows.loc[value, "volume_ml"] == pytest.approx(count * voxel_ml)

    # The evaluation command alone gives the same table.
    assert (
        main(["evaluate", str(out / "segmentation.nrrd"), str(workspace / "truth.nrrd"), "--out", str(out / "e.csv")])
        == 0
    )
    again = pd.read_csv(out / "e.csv")
    np.testing.assert_allclose(again["dice"], evaluation["dice"])


def test_a_manifest_goes_on_past_a_failed_row_and_resumes(workspace):
    (workspace / "not_an_image.txt").write_text("no image here")
    manifest = workspace / "manifest.csv"
    manifest.write_text("path,truth,recon\nimage.nrrd,truth.nrrd,FBP\nnot_an_image.txt,,IR\n")
    arguments = ["segment", "--manifest", str(manifest), "--model", "cli-test", "--out", str(workspace / "batch")]
    assert main([*arguments, "--workers", "0", "--progress", "none"]) == 3
    cases = pd.read_csv(workspace / "batch" / "cases.csv")
    assert list(cases["status"]) == ["ok", "failed"]
    assert "could not be read as an image" in cases.loc[1, "error"]
    assert (Path(cases.loc[0, "folder"]) / "summary.json").exists()
    assert not (Path(cases.loc[1, "folder"]) / "summary.json").exists()
    evaluation = pd.read_csv(workspace / "batch" / "evaluation.csv")
    assert set(evaluation["recon"]) == {"FBP"} and len(evaluation) == 2
    stamp = (Path(cases.loc[0, "folder"]) / "summary.json").stat().st_mtime_ns
    assert main([*arguments, "--workers", "0", "--progress", "none"]) == 3
    assert (Path(cases.loc[0, "folder"]) / "summary.json").stat().st_mtime_ns == stamp


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_models_commands_refuse_unsafe_or_altered_weights(workspace, capsys, tmp_path, monkeypatch):
    assert main(["models", "verify", "cli-test", "--progress", "none"]) == 0
    assert main(["models", "list", "--progress", "none"]) == 0
    assert "cli-test@0.1.0" in capsys.readouterr().out

    marker = tmp_path / "pwned"
    bundle = _write_bundle(tmp_path / "evil", weights=pickle.dumps({"weight": _RunsCode(marker)}))
    assert main(["models", "import", str(bundle), "--id", "evil", "--progress", "none"]) == 1
    assert "pickle" in capsys.readouterr().err.lower()
    assert not marker.exists()
    assert main(["models", "verify", "evil", "--progress", "none"]) == 1

    from ImagInfoExtension.segmentation.catalogue import load_catalogue
    from ImagInfoExtension.segmentation.weights import weights_location

    cached = weights_location(load_catalogue().get("cli-test"))
    original = cached.read_bytes()
    try:
        cached.write_bytes(original[:-10] + b"0123456789")
        assert main(["models", "verify", "cli-test", "--progress", "none"]) == 1
        # A network already in memory came from verified bytes; a new process loads the file again.
        monkeypatch.setattr(segmentation_run, "_SEGMENTERS", {})
        with pytest.raises(SystemExit) as exit_info:
            main(["segment", str(workspace / "image.nrrd"), "--model", "cli-test", "--out", str(tmp_path / "x")])
        assert exit_info.value.code == 2
        assert "sha256" in capsys.readouterr().err.lower()
        assert not (tmp_path / "x" / "summary.json").exists()
    finally:
        cached.write_bytes(original)
