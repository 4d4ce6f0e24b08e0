"""The shipped phantom model (Resources/Models/imaginfo-phantom-vessels) on acquisitions it never saw.

The virtual scanner renders the phantom on an oblique grid whose rotation no training
grid has, acquires it with a noise seed no training run uses, at 4 mGy (FBP, IR, DL)
and at 3 mGy (between the training doses 2.1 and 4), and the model runs for real
through the catalogue's bundle import, the verified weights loader and the inference
engine. Per radius class at 4 mGy, Dice must reach 0.90 for r >= 1 mm (labels 5..9).

The grid covers the tree's vessels of r >= 0.75 mm with a margin and a slice of the
holder's base (PMMA, which the model must leave unlabelled), so that rendering and four
inferences fit the test budget; ``benchmarks/bench_segmentation_dice.py`` runs the
whole field of view at six doses beside the graph cut.
"""

from __future__ import annotations

import hashlib
import json
import re

import numpy as np
import pytest
import SimpleITK as sitk

torch = pytest.importorskip("torch")
pytest.importorskip("monai")

from ImagInfoExtension.geometry import ImageGrid  # noqa: E402
from ImagInfoExtension.phantom.acquisition import AcquisitionSettings  # noqa: E402
from ImagInfoExtension.phantom.design import DEFAULT_RADII_MM  # noqa: E402
from ImagInfoExtension.phantom.scanner import VirtualScanner  # noqa: E402
from ImagInfoExtension.segmentation import training  # noqa: E402
from ImagInfoExtension.segmentation.bundle import entry_from_bundle  # noqa: E402
from ImagInfoExtension.segmentation.catalogue import resources_directories  # noqa: E402
from ImagInfoExtension.segmentation.inference import segment_image  # noqa: E402
from ImagInfoExtension.segmentation.weights import load_network  # noqa: E402

BUNDLE = resources_directories()[-1] / "Models" / training.MODEL_ID
if not (BUNDLE / "configs" / "metadata.json").is_file():
    pytest.skip(
        f"the phantom model is not shipped yet ({BUNDLE} has no bundle): `make train` writes it",
        allow_module_level=True,
    )
#: A rotation and a noise seed no training run uses (training seeds are 10000 and above).
TEST_AXIS = (0.38, -0.55, 0.74)
TEST_ANGLE_DEG = 17.0
TEST_SEED = 7
#: LPS box (mm) around the tree's vessels of r >= 0.75 mm, reaching into the holder's base (y > 60 mm).
TEST_BOX_MM = ((-70.0, -45.0, -62.0), (70.0, 66.0, 50.0))
#: Labels of r >= 1 mm, which must reach the Dice below at 4 mGy.
THICK_LABELS = (5, 6, 7, 8, 9)
MIN_DICE = 0.90
ACQUISITIONS = (("FBP", 4.0), ("IR", 4.0), ("DL", 4.0), ("FBP", 3.0))
MAX_WEIGHTS_BYTES = 5_000_000


def _test_grid() -> ImageGrid:
    direction = training.rotation_matrix(TEST_AXIS, TEST_ANGLE_DEG)
    lower, upper = TEST_BOX_MM
    return ImageGrid.covering_box(lower, upper, training.TARGET_SPACING_MM, tuple(direction.ravel()))


@pytest.fixture(scope="module")
def entry():
    """The catalogue entry of the shipped bundle, through the bundle import path."""
    return entry_from_bundle(BUNDLE, training.MODEL_ID)


@pytest.fixture(scope="module")
def segmented(entry):
    """Truth and model labels of each acquisition of the unseen oblique grid."""
    torch.set_num_threads(2)
    network = load_network(entry)
    scanner = VirtualScanner(grid=_test_grid())
    truth = scanner.truth.labels
    results = {}
    for recon, dose in ACQUISITIONS:
        image = scanner.acquire(AcquisitionSettings(dose_mgy=dose, recon=recon, repetition=1, seed=TEST_SEED))
        result = segment_image(image, entry, network=network, device="cpu")
        results[(recon, dose)] = (image, result)
    return scanner.grid, truth, results


def _dice(truth: np.ndarray, predicted: np.ndarray) -> dict[int, float]:
    """Dice of each label 1..9 (NaN where both are empty), counted directly."""
    scores = {}
    for label in range(1, len(DEFAULT_RADII_MM) + 1):
        expected, found = truth == label, predicted == label
        total = int(expected.sum() + found.sum())
        scores[label] = 2.0 * int((expected & found).sum()) / total if total else float("nan")
    return scores


def test_bundle_weights_are_small_verified_and_load_safely(entry):
    metadata = json.loads((BUNDLE / "configs" / "metadata.json").read_text())
    inference = json.loads((BUNDLE / "configs" / "inference.json").read_text())
    weights = BUNDLE / "models" / "model.pt"
    data = weights.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    assert len(data) <= MAX_WEIGHTS_BYTES
    provenance = metadata["imaginfo"]["provenance"]
    assert provenance["weights_sha256"] == digest == entry.weights.sha256
    assert provenance["weights_size_bytes"] == len(data) == entry.weights.size_bytes
    assert digest in (BUNDLE / "docs" / "README.md").read_text()
    # A plain state dict: only tensors, loaded without running any pickled code, fitting the stated network.
    state = torch.load(weights, weights_only=True, map_location="cpu")
    assert all(isinstance(value, torch.Tensor) for value in state.values())
    from monai.networks import nets

    definition = dict(inference["network_def"])
    network = getattr(nets, definition.pop("_target_").rsplit(".", 1)[-1])(**definition)
    network.load_state_dict(state, strict=True)
    assert sum(p.numel() for p in network.parameters()) * 4 <= MAX_WEIGHTS_BYTES
    assert entry.output_channels == 10
    labels = [(label.value, label.name) for label in entry.labels]
    assert labels == [(k, f"vessel r={r:g} mm") for k, r in enumerate(DEFAULT_RADII_MM, start=1)]
    assert metadata["network_data_format"]["outputs"]["pred"]["channel_def"]["5"] == "vessel r=1 mm"


def test_test_acquisitions_are_unseen_by_training():
    config = training.TrainingConfig()
    grids, validation = training.training_grids(config)
    test_grid = _test_grid()
    for phantom_grid in [*grids, validation]:
        assert training.angle_between_deg(phantom_grid.grid, test_grid) > 3.0
        assert phantom_grid.noise_seed >= 10_000 > TEST_SEED
    assert 3.0 not in config.doses_mgy and min(config.doses_mgy) < 3.0 < max(config.doses_mgy)
    assert 4.0 in config.doses_mgy


def test_labels_overlay_the_oblique_input_exactly(segmented):
    grid, truth, results = segmented
    for image, result in results.values():
        labels = result.labels
        assert labels.GetSize() == image.GetSize()
        assert np.allclose(labels.GetOrigin(), image.GetOrigin())
        assert np.allclose(labels.GetSpacing(), image.GetSpacing())
        assert np.allclose(labels.GetDirection(), image.GetDirection())
        assert sitk.GetArrayViewFromImage(labels).max() <= 9


@pytest.mark.parametrize(("recon", "dose_mgy"), ACQUISITIONS)
def test_dice_per_radius_class_on_unseen_oblique_acquisitions(segmented, recon, dose_mgy, record_property):
    grid, truth, results = segmented
    _, result = results[(recon, dose_mgy)]
    scores = _dice(truth, sitk.GetArrayFromImage(result.labels))
    record_property("dice", {f"{DEFAULT_RADII_MM[k - 1]:g}": round(v, 3) for k, v in scores.items()})
    print(f"{recon} {dose_mgy:g} mGy:", " ".join(f"r={DEFAULT_RADII_MM[k - 1]:g}:{v:.3f}" for k, v in scores.items()))
    low = {DEFAULT_RADII_MM[k - 1]: round(scores[k], 3) for k in THICK_LABELS if not scores[k] >= MIN_DICE}
    assert not low, f"{recon} {dose_mgy:g} mGy: Dice below {MIN_DICE} for radius classes {low}"
    # The thin classes are reported, not required; the model must still find the 0.75 mm twigs.
    assert scores[4] > 0.5


def test_reported_metrics_match_the_readme(entry):
    readme = (BUNDLE / "docs" / "README.md").read_text()
    reported = entry.reported_metrics["dice"]
    assert set(reported) == {f"{r:g}" for r in DEFAULT_RADII_MM}
    assert all(reported[f"{r:g}"] >= MIN_DICE for r in DEFAULT_RADII_MM if r >= 1.0)
    assert re.search(r"python -m ImagInfoExtension\.segmentation\.training --out \S+ --seed 0", readme)
