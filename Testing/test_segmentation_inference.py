"""The inference engine: model space round trips, MONAI's blending, slabs, memory, devices and bad input.

Networks with known outputs: a 1×1×1 convolution whose logits rank the labels by
intensity thresholds (labels equal the thresholded input voxel by voxel), a shifted
version (reads the neighbour along the model's X axis, so the orientation is checked
physically), and a small MONAI UNet with seeded random weights compared with MONAI's
own ``sliding_window_inference`` on the same tensor.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.inferers import sliding_window_inference
from monai.networks.nets import UNet
from scipy import ndimage

from ImagInfoExtension.progress import Cancelled
from ImagInfoExtension.segmentation import inference
from ImagInfoExtension.segmentation.catalogue import Postprocessing, entry_from_json
from ImagInfoExtension.segmentation.inference import (
    InsufficientMemoryError,
    Segmenter,
    decide_labels,
    plan_memory,
    plan_slabs,
    postprocess_labels,
    prepare_input,
    segment_image,
    select_device,
    stitch_outputs,
    traced_activation_bytes,
    window_starts,
)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread: on a shared machine, spinning OpenMP threads make timings erratic."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


#: Thresholds of the threshold network, in HU; the test images avoid them by at least 50 HU.
THRESHOLDS_HU = (-500.0, 0.0, 500.0)
CLIP_HU = (-1000.0, 1000.0)
VALUES_HU = np.array([-950.0, -650.0, -250.0, 250.0, 650.0, 950.0])


def make_entry(**changes) -> object:
    """A catalogue entry; ``changes`` replace top-level keys or, as ``section__key``, keys of a section."""
    data = {
        "id": "test-model",
        "version": "1.0.0",
        "title": "test",
        "task": "segmentation",
        "modality": "CT",
        "input_channels": 1,
        "preprocessing": {
            "orientation": "RAS",
            "target_spacing_mm": None,
            "spacing_tolerance": 0.02,
            "intensity": {"clip_min": CLIP_HU[0], "clip_max": CLIP_HU[1], "normalisation": "range"},
        },
        "network": {
            "format": "monai",
            "class": "UNet",
            "args": {"spatial_dims": 3, "in_channels": 1, "out_channels": 4, "channels": [4, 8], "strides": [2]},
        },
        "inference": {"roi_size": [16, 16, 16], "overlap": 0.25, "blend_mode": "gaussian", "sw_batch_size": 1},
        "postprocessing": {"activation": "softmax", "decision": "argmax"},
        "labels": [{"value": v, "name": f"class {v}", "color": "#aa0000"} for v in (1, 2, 3)],
        "license": "Apache-2.0",
        "weights": {"file": "model.pt", "format": "state_dict", "sha256": "0" * 64, "size_bytes": 1},
    }
    for key, value in changes.items():
        section, _, inner = key.partition("__")
        if inner:
            data[section][inner] = value
        else:
            data[key] = value
    return entry_from_json(data)


class ThresholdNet(torch.nn.Module):
    """Logits ``α(k·x − Σ_{m≤k} t_m)``: their argmax is the number of thresholds ``x`` exceeds.

    ``shift`` reads the voxel one step further along the model's X axis instead.
    """

    def __init__(self, thresholds_hu=THRESHOLDS_HU, shift: bool = False) -> None:
        super().__init__()
        t = [(h - CLIP_HU[0]) / (CLIP_HU[1] - CLIP_HU[0]) for h in thresholds_hu]
        k = len(t) + 1
        size, pad = ((3, 1, 1), (1, 0, 0)) if shift else (1, 0)
        self.conv = torch.nn.Conv3d(1, k, size, padding=pad)
        alpha = 100.0
        with torch.no_grad():
            self.conv.weight.zero_()
            centre = (2, 0, 0) if shift else (0, 0, 0)  # kernel tap 2 of 3 along X reads x + 1
            for c in range(k):
                self.conv.weight[(c, 0, *centre)] = alpha * c
                self.conv.bias[c] = -alpha * sum(t[:c])
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.conv(x)


def expected_labels(array_hu: np.ndarray) -> np.ndarray:
    return np.digitize(array_hu, THRESHOLDS_HU).astype(np.uint8)


def rotation(axis: int, degrees: float) -> np.ndarray:
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    a, b = [i for i in range(3) if i != axis]
    matrix = np.eye(3)
    matrix[a, a], matrix[a, b], matrix[b, a], matrix[b, b] = c, -s, s, c
    return matrix


GRIDS = {
    "identity": np.eye(3),
    "flipped": np.diag([-1.0, 1.0, -1.0]),
    "permuted": np.eye(3)[:, [2, 0, 1]],
    "permuted_flipped": np.eye(3)[:, [1, 2, 0]] @ np.diag([1.0, -1.0, -1.0]),
    "oblique": rotation(2, 25.0) @ rotation(0, -15.0) @ np.eye(3)[:, [1, 0, 2]],
}


def make_image(direction: np.ndarray, size=(14, 11, 9), spacing=(1.0, 1.0, 1.0), seed: int = 0) -> sitk.Image:
    rng = np.random.default_rng(seed)
    array = rng.choice(VALUES_HU, size=size[::-1]).astype(np.float32)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin((12.5, -40.25, 7.0))
    image.SetDirection(tuple(float(d) for d in direction.ravel()))
    return image


def assert_same_grid(labels: sitk.Image, image: sitk.Image) -> None:
    assert labels.GetSize() == image.GetSize()
    assert labels.GetSpacing() == image.GetSpacing()
    assert labels.GetOrigin() == image.GetOrigin()
    assert labels.GetDirection() == image.GetDirection()
    assert labels.GetPixelID() == sitk.sitkUInt8


# ----------------------------------------------------------------------------- model space round trips


@pytest.mark.parametrize("name", list(GRIDS))
def test_threshold_network_overlays_the_input_exactly(name):
    image = make_image(GRIDS[name])
    network = ThresholdNet()
    result = segment_image(image, make_entry(), network=network, device="cpu")
    assert_same_grid(result.labels, image)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(result.labels), expected_labels(sitk.GetArrayFromImage(image)))
    assert result.device == "cpu" and result.entry == "test-model@1.0.0" and network.calls > 0


@pytest.mark.parametrize("name", ["identity", "permuted_flipped", "oblique"])
def test_model_x_axis_points_right_in_physical_space(name):
    """The shifted network labels each voxel by its neighbour towards the patient's right (RAS's X)."""
    image = make_image(GRIDS[name], size=(9, 8, 7))
    entry = make_entry(inference__roi_size=[16, 16, 16])  # one window: no window edges inside the volume
    result = segment_image(image, entry, network=ThresholdNet(shift=True), device="cpu")
    assert_same_grid(result.labels, image)
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    right_lps = np.array([-1.0, 0.0, 0.0])
    alignment = right_lps @ direction  # per input axis i, j, k
    axis = int(np.argmax(np.abs(alignment)))
    step = int(np.sign(alignment[axis]))
    array = sitk.GetArrayFromImage(image)  # [k, j, i]
    expected = np.zeros(array.shape, dtype=np.uint8)
    source = [slice(None)] * 3
    target = [slice(None)] * 3
    dim = 2 - axis  # numpy axis of input axis `axis`
    if step > 0:
        target[dim], source[dim] = slice(0, -1), slice(1, None)
    else:
        target[dim], source[dim] = slice(1, None), slice(0, -1)
    expected[tuple(target)] = expected_labels(array[tuple(source)])
    np.testing.assert_array_equal(sitk.GetArrayFromImage(result.labels), expected)
    assert any("smaller than the model's window" in w and "padding" in w for w in result.warnings)


def blocky_image(direction: np.ndarray, spacing) -> tuple[sitk.Image, np.ndarray]:
    """Boxes of constant HU on an oblique grid; returns the image and the physical labels expected."""
    size = (24, 20, 10)
    array = np.full(size[::-1], -950.0, dtype=np.float32)
    array[2:8, 3:15, 4:20] = 250.0
    array[3:7, 6:12, 8:14] = 950.0
    array[1:9, 14:18, 2:7] = -250.0
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin((-3.0, 5.5, 20.0))
    image.SetDirection(tuple(float(d) for d in direction.ravel()))
    return image, expected_labels(array)


def test_resampling_path_matches_within_one_voxel_at_edges():
    image, expected = blocky_image(GRIDS["oblique"], spacing=(0.8, 0.7, 2.0))
    entry = make_entry(preprocessing__target_spacing_mm=[1.0, 1.0, 1.0])
    result = segment_image(image, entry, network=ThresholdNet(), device="cpu")
    assert_same_grid(result.labels, image)
    space = inference.model_geometry(inference.ImageGrid.from_sitk(image), entry.preprocessing)
    assert space.resampled and space.grid.spacing_mm == (1.0, 1.0, 1.0)
    model_spacing = space.reorientation.model_grid.spacing_mm
    model_size = space.reorientation.model_grid.size_ijk
    assert result.memory.model_shape == tuple(int(np.round((n - 1) * s)) + 1 for n, s in zip(model_size, model_spacing))
    labels = sitk.GetArrayFromImage(result.labels)
    wrong = labels != expected
    # Voxels within one voxel of a label edge in the input (26-neighbourhood).
    edges = np.zeros_like(wrong)
    for value in np.unique(expected):
        mask = expected == value
        edges |= ndimage.binary_dilation(mask, np.ones((3, 3, 3))) & ~mask
        edges |= mask & ~ndimage.binary_erosion(mask, np.ones((3, 3, 3)), border_value=1)
    assert not (wrong & ~edges).any()
    assert wrong.mean() < 0.15


def test_spacing_within_tolerance_is_not_resampled():
    image = make_image(GRIDS["identity"], spacing=(1.01, 0.99, 1.0))
    entry = make_entry(preprocessing__target_spacing_mm=[1.0, 1.0, 1.0])
    result = segment_image(image, entry, network=ThresholdNet(), device="cpu")
    assert result.memory.model_shape == (14, 11, 9)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(result.labels), expected_labels(sitk.GetArrayFromImage(image)))


# ----------------------------------------------------------------------------- MONAI's sliding window


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(3)
    return UNet(3, 1, 4, (4, 8), (2,), num_res_units=1).eval()


def test_window_starts_are_monais():
    from monai.data.utils import dense_patch_slices

    for size in (1, 7, 16, 17, 40, 95, 96, 97, 250):
        for roi in (8, 16, 96):
            for overlap in (0.0, 0.25, 0.5, 0.7):
                extent = max(size, roi)
                interval = roi if roi == extent else max(int(roi * (1 - overlap)), 1)
                monai_starts = sorted({s[0].start for s in dense_patch_slices((extent,), (roi,), (interval,))})
                assert list(window_starts(size, roi, overlap)) == monai_starts


def test_engine_equals_monai_gaussian_sliding_window(unet):
    entry = make_entry(inference__roi_size=[12, 10, 8], inference__overlap=0.5)
    image = make_image(GRIDS["oblique"], size=(26, 21, 17), seed=4)
    tensor = prepare_input(image, entry)
    settings = entry.inference
    with torch.inference_mode():
        gaussian = sliding_window_inference(tensor, settings.roi_size, 1, unet, 0.5, "gaussian", settings.sigma_scale)
        constant = sliding_window_inference(tensor, settings.roi_size, 1, unet, 0.5, "constant")
    assert not torch.allclose(gaussian, constant, atol=1e-4)  # the blend mode matters on this input
    space = inference.model_geometry(inference.ImageGrid.from_sitk(image), entry.preprocessing)
    expected = space.reorientation.to_input(torch.argmax(gaussian[0], dim=0).numpy().astype(np.uint8))
    result = segment_image(image, entry, network=unet, device="cpu")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(result.labels), expected)


@pytest.fixture(scope="module")
def convnet():
    """Two 3×3×3 convolutions with seeded random weights: outputs depend on context, so window edges show."""
    torch.manual_seed(5)
    return torch.nn.Sequential(
        torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(4, 3, 3, padding=1)
    ).eval()


@pytest.mark.parametrize(("overlap", "batch"), [(0.25, 1), (0.6, 1), (0.5, 3)])
def test_slabs_reproduce_one_sliding_window_pass(convnet, overlap, batch, monkeypatch):
    blocks = []
    hold = inference._WindowRunner._hold

    def counting_hold(self, key, output):
        hold(self, key, output)
        blocks.append(len(self.blocks))

    monkeypatch.setattr(inference._WindowRunner, "_hold", counting_hold)
    torch.manual_seed(1)
    tensor = torch.rand(1, 1, 45, 20, 15)
    entry = make_entry(inference__roi_size=[12, 9, 8], inference__overlap=overlap, inference__sw_batch_size=batch)
    settings = entry.inference
    with torch.inference_mode():
        plain = sliding_window_inference(tensor, settings.roi_size, batch, convnet, overlap, "gaussian", 0.125)
    for axis, per_slab in ((0, 1), (0, 2), (0, 3), (1, 1), (2, 2)):
        plan = plan_slabs(tensor.shape[2:], settings, per_slab, axis)
        owned = np.concatenate([np.arange(*slab.owned) for slab in plan.slabs])
        np.testing.assert_array_equal(owned, np.arange(tensor.shape[2 + axis]))  # each voxel exactly once
        counted = []
        blocks.clear()
        network = _Counting(convnet, counted)
        stitched = stitch_outputs(tensor, network, settings, starts_per_slab=per_slab, axis=axis)
        assert sum(counted) == plan.windows  # every window runs once, shared ones included
        assert max(blocks, default=0) == plan.shared  # the memory estimate's count of held blocks
        if batch == 1:
            assert torch.equal(stitched, plain)  # same windows, weights and order: bit for bit
        else:  # the network's own arithmetic differs slightly with the batch's make-up
            torch.testing.assert_close(stitched, plain, rtol=0, atol=1e-5)


class _Counting(torch.nn.Module):
    def __init__(self, network, counted):
        super().__init__()
        self.network = network
        self.counted = counted

    def forward(self, x):
        self.counted.append(x.shape[0])
        return self.network(x)


def test_segmenter_loads_verified_weights_once(tmp_path, monkeypatch, unet):
    import hashlib

    from ImagInfoExtension.segmentation import weights

    monkeypatch.setenv("IMAGINFO_MODEL_CACHE", str(tmp_path / "cache"))
    file = tmp_path / "model.pt"
    torch.save(unet.state_dict(), file)
    data = file.read_bytes()
    spec = {"file": "model.pt", "format": "state_dict", "sha256": hashlib.sha256(data).hexdigest()}
    entry = make_entry(
        weights={**spec, "size_bytes": len(data)}, network__args={**make_entry().network.args, "num_res_units": 1}
    )
    weights.side_load_weights(entry, file)
    loads = []
    real = weights.load_network
    monkeypatch.setattr(weights, "load_network", lambda *a, **k: loads.append(a) or real(*a, **k))
    segmenter = Segmenter(entry, device="cpu")
    assert not loads  # nothing is loaded before the first image
    images = [make_image(GRIDS["oblique"], size=(20, 17, 13), seed=seed) for seed in (8, 9)]
    for image in images:
        expected = segment_image(image, entry, network=unet, device="cpu").labels
        result = segmenter(image)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(result.labels), sitk.GetArrayFromImage(expected))
    assert len(loads) == 1


def test_slabs_chosen_from_the_memory_budget_give_the_same_labels(unet, monkeypatch):
    entry = make_entry(inference__roi_size=[10, 10, 8])
    image = make_image(GRIDS["flipped"], size=(40, 22, 18), seed=2)
    whole = segment_image(image, entry, network=unet, device="cpu")
    monkeypatch.setattr(inference, "DEFAULT_STITCH_LIMIT_MB", 0.01)
    sliced = segment_image(image, entry, network=unet, device="cpu")
    assert whole.memory.slab_count == 1 and sliced.memory.slab_count > 2
    assert sliced.memory.stitching_bytes < whole.memory.stitching_bytes
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sliced.labels), sitk.GetArrayFromImage(whole.labels))


def test_progress_counts_windows_and_cancel_propagates():
    image = make_image(GRIDS["identity"], size=(30, 20, 18))
    entry = make_entry(inference__roi_size=[12, 12, 12])
    events = []
    result = segment_image(image, entry, network=ThresholdNet(), progress=lambda *e: events.append(e))
    total = result.memory.windows
    assert total == math.prod(len(window_starts(n, 12, 0.25)) for n in result.memory.model_shape) > 1
    assert all(event[1] == total for event in events)
    assert [e[0] for e in events[1:-1]] == list(range(1, total + 1)) and events[-1][0] == total

    network = ThresholdNet()

    def cancel(done, total, message):
        if done >= 2:
            raise Cancelled("stop")

    with pytest.raises(Cancelled):
        segment_image(image, entry, network=network, progress=cancel)
    assert network.calls == 2


# ----------------------------------------------------------------------------- labels


def logits(probabilities):
    p = torch.tensor(probabilities, dtype=torch.float32).T  # [C, voxels]
    return torch.log(p / (1 - p))


def test_thresholds_pick_the_most_probable_label_that_passes():
    entry = make_entry(
        postprocessing={"activation": "sigmoid", "decision": "thresholds", "thresholds": {"1": 0.5, "2": 0.7}},
        labels=[{"value": v, "name": f"c{v}", "color": "#00aa00"} for v in (1, 2)],
    )
    voxels = [(0.6, 0.8), (0.9, 0.8), (0.6, 0.65), (0.4, 0.6), (0.5, 0.3)]
    labels = decide_labels(logits(voxels), entry)
    assert labels.tolist() == [2, 1, 1, 0, 1]
    assert labels.dtype == torch.uint8


def test_argmax_maps_channels_to_label_values():
    entry = make_entry(labels=[{"value": v, "name": f"c{v}", "color": "#00aa00"} for v in (3, 7, 200)])
    outputs = torch.tensor([[5.0, 0.0, 0.0, 0.0], [0.0, 5.0, 0.0, 0.0], [0.0, 0.0, 5.0, 0.0], [0.0, 0.0, 0.0, 5.0]])
    assert decide_labels(outputs, entry).tolist() == [0, 3, 7, 200]
    ties = torch.tensor([[1.0, 0.0], [1.0, 2.0], [0.0, 2.0], [-1.0, 2.0]])  # equal maxima: the first channel wins
    assert decide_labels(ties, entry).tolist() == [0, 3]
    torch.manual_seed(0)
    random = torch.randn(4, 6, 7, 5).round(decimals=1)  # rounded: many ties
    table = torch.tensor([0, 3, 7, 200], dtype=torch.uint8)
    assert torch.equal(decide_labels(random, entry), table[torch.argmax(random, dim=0)])


def test_threshold_entry_end_to_end():
    entry = make_entry(
        postprocessing={"activation": "sigmoid", "decision": "thresholds", "thresholds": {"1": 0.5, "2": 0.5}},
        labels=[{"value": v, "name": f"c{v}", "color": "#00aa00"} for v in (1, 2)],
    )

    class TwoSigmoids(torch.nn.Module):
        """Label 1 passes above -500 HU (x > 0.25), label 2 above 500 HU (x > 0.7), and is then the more probable."""

        def forward(self, x):
            return torch.cat([10 * (x - 0.25), 100 * (x - 0.7)], dim=1)

    image = make_image(GRIDS["permuted"])
    result = segment_image(image, entry, network=TwoSigmoids())
    array = sitk.GetArrayFromImage(image)
    expected = np.where(array > 500, 2, np.where(array > -500, 1, 0))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(result.labels), expected)


def test_largest_component_is_26_connected_and_others_untouched():
    labels = np.zeros((12, 12, 12), dtype=np.uint8)
    labels[0:2, 0:2, 0:2] = 1  # 8 voxels
    labels[2, 2, 2] = 1  # touches the first block at a corner only: same component
    labels[6:10, 6:10, 6:10] = 1  # 64 voxels, the largest
    labels[0:2, 9:11, 0:2] = 2  # label 2 is not listed: kept whole
    labels[9:11, 0:2, 9:11] = 2
    post = Postprocessing(largest_component=(1,))
    result = postprocess_labels(labels.copy(), post, (1.0, 1.0, 1.0))
    assert np.count_nonzero(result == 1) == 64 and result[7, 7, 7] == 1 and result[0, 0, 0] == 0
    assert np.count_nonzero(result == 2) == 16
    labels[6:10, 6:10, 6:10] = 0
    result = postprocess_labels(labels.copy(), post, (1.0, 1.0, 1.0))
    assert np.count_nonzero(result == 1) == 9  # block plus its corner neighbour


def test_small_components_removed_by_volume():
    labels = np.zeros((20, 20, 20), dtype=np.uint8)
    labels[0:5, 0:5, 0:4] = 1  # 100 voxels × 8 mm³ = 0.8 ml: removed
    labels[10:15, 10:15, 10:18] = 1  # 200 voxels = 1.6 ml: kept
    labels[0:5, 10:15, 10:14] = 3  # 0.8 ml of another label: removed too
    result = postprocess_labels(labels, Postprocessing(min_component_volume_ml=1.0), (2.0, 2.0, 2.0))
    assert np.count_nonzero(result == 1) == 200 and result[12, 12, 12] == 1
    assert np.count_nonzero(result == 3) == 0


# ----------------------------------------------------------------------------- memory and devices


def test_traced_activation_bytes_follow_tensor_lifetimes():
    x = (1, 1, 8, 8, 8)
    conv = torch.nn.Conv3d(1, 4, 1)
    # 4 channels × 512 voxels × 4 bytes, plus slow_conv3d's im2col of 1 × 512 × 4 bytes (a small 1×1×1 conv).
    assert traced_activation_bytes(conv, x) == 4 * 512 * 4 + 512 * 4
    # ReLU's output is born while the convolution's still lives; the input tensor itself is not counted.
    assert traced_activation_bytes(torch.nn.Sequential(conv, torch.nn.ReLU()), x) == 2 * 4 * 512 * 4


def test_placement_follows_free_memory():
    entry = make_entry()
    shape = (200, 160, 120)
    gib = 2**30
    everything = plan_memory(shape, entry, "cuda", available_cpu=64 * gib, available_device=64 * gib)
    assert everything.placement == "device" and everything.stitch_device == "cuda"
    windows_only = plan_memory(
        shape, entry, "cuda", available_cpu=64 * gib, available_device=int(everything.activation_bytes * 1.5)
    )
    assert windows_only.placement == "windows" and windows_only.stitch_device == "cpu"
    assert windows_only.device == "cuda" and windows_only.device_bytes == windows_only.activation_bytes
    cpu_only = plan_memory(shape, entry, "cuda", available_cpu=64 * gib, available_device=1024)
    assert cpu_only.placement == "cpu" and cpu_only.device == "cpu"


def test_memory_refused_before_anything_runs():
    network = ThresholdNet()
    image = make_image(GRIDS["identity"], size=(40, 40, 30))
    with pytest.raises(MemoryError) as caught:
        segment_image(image, make_entry(), network=network, memory_limit_mb=1)
    message = str(caught.value)
    assert isinstance(caught.value, InsufficientMemoryError)
    assert "needs about" in message and "only 1 MB" in message and "Nothing was run" in message
    assert "crop" in message and "smaller ROI" in message
    assert caught.value.estimate.cpu_bytes > 2**20
    assert network.calls == 0


def test_cuda_out_of_memory_falls_back_to_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(inference, "available_memory", lambda device="cpu": 64 * 2**30)
    emptied = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(True))
    real = inference._run_inference
    devices = []

    def run(tensor, network, entry, estimate, progress):
        devices.append(estimate.device)
        if estimate.device.startswith("cuda"):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(tensor, network, entry, estimate, progress)

    monkeypatch.setattr(inference, "_run_inference", run)
    image = make_image(GRIDS["oblique"])
    result = Segmenter(make_entry(), network=ThresholdNet(), device="cuda")(image)
    assert devices == ["cuda", "cpu"] and emptied
    assert result.device == "cpu" and result.memory.placement == "cpu"
    assert any("ran out of memory" in w and "repeated on the CPU" in w for w in result.warnings)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(result.labels), expected_labels(sitk.GetArrayFromImage(image)))


def test_gpu_too_small_for_one_window_batch_runs_on_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(
        inference, "available_memory", lambda device="cpu": 2**10 if torch.device(device).type == "cuda" else 2**34
    )
    image = make_image(GRIDS["permuted"])
    result = segment_image(image, make_entry(), network=ThresholdNet(), device="cuda")
    assert result.device == "cpu" and result.memory.placement == "cpu"
    assert any("too little free memory even for one window batch" in w for w in result.warnings)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(result.labels), expected_labels(sitk.GetArrayFromImage(image)))


def test_device_selection(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(inference, "_mps_available", lambda: False)
    assert select_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match=r"'cuda' is not available here \(available: cpu\).*CUDA build"):
        select_device("cuda")
    with pytest.raises(ValueError, match=r"'mps' is not available.*Apple"):
        select_device("mps")
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        select_device("tpu")
    with pytest.raises(ValueError, match="unknown device"):
        select_device("cpu:1")
    monkeypatch.setattr(inference, "_mps_available", lambda: True)
    assert select_device("auto") == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert select_device("auto") == torch.device("cuda")
    assert select_device("CUDA:1") == torch.device("cuda", 1)
    with pytest.raises(ValueError, match=r"'cuda:2' is not available here \(available: cpu, cuda:0, cuda:1, mps\)"):
        select_device("cuda:2")


def test_available_memory_is_positive_and_bounded():
    free = inference.available_memory("cpu")
    assert 0 < free <= inference._system_available()


# ----------------------------------------------------------------------------- bad input


def test_2d_image_refused():
    with pytest.raises(ValueError, match=r"the image is 2D \(30×20 pixels\).*needs a 3D volume.*whole series"):
        segment_image(sitk.Image(30, 20, sitk.sitkFloat32), make_entry(), network=ThresholdNet())


def test_single_slice_refused():
    with pytest.raises(ValueError, match=r"single slice along k \(slices\).*2D image"):
        segment_image(sitk.Image(30, 20, 1, sitk.sitkInt16), make_entry(), network=ThresholdNet())


def test_nan_and_infinite_values_refused():
    image = make_image(GRIDS["identity"])
    array = sitk.GetArrayFromImage(image)
    array.flat[[3, 50, 70]] = np.nan
    array.flat[[4, 90]] = [np.inf, -np.inf]
    bad = sitk.GetImageFromArray(array)
    bad.CopyInformation(image)
    network = ThresholdNet()
    with pytest.raises(ValueError, match=r"5 voxel value\(s\) that are not numbers \(3 NaN, 2 infinite\).*nan_to_num"):
        segment_image(bad, make_entry(), network=network)
    assert network.calls == 0


def test_channel_mismatch_refused():
    image = make_image(GRIDS["identity"])
    two = sitk.Compose(image, image)
    with pytest.raises(ValueError, match=r"needs 1 input channel\(s\); this image has 2.*VectorIndexSelectionCast"):
        segment_image(two, make_entry(), network=ThresholdNet())
    with pytest.raises(ValueError, match=r"needs 2 input channel\(s\); this image has 1.*Compose"):
        segment_image(image, make_entry(input_channels=2), network=ThresholdNet())


def test_two_channel_model_sees_both_channels():
    image = make_image(GRIDS["oblique"], seed=5)
    other = make_image(GRIDS["oblique"], seed=6)
    entry = make_entry(input_channels=2)

    class Second(torch.nn.Module):  # thresholds the second channel only
        def __init__(self):
            super().__init__()
            self.net = ThresholdNet()

        def forward(self, x):
            return self.net(x[:, 1:2])

    result = segment_image(sitk.Compose(image, other), entry, network=Second())
    np.testing.assert_array_equal(sitk.GetArrayFromImage(result.labels), expected_labels(sitk.GetArrayFromImage(other)))


def test_modality_mismatch_refused():
    image = make_image(GRIDS["identity"])
    with pytest.raises(ValueError, match=r"is a CT model and the input is MR.*`imaginfo models list`"):
        segment_image(image, make_entry(), network=ThresholdNet(), modality="MRI")
    result = segment_image(image, make_entry(modality="PT"), network=ThresholdNet(), modality="pet")
    assert result.labels.GetSize() == image.GetSize()


def test_wrong_output_channels_named():
    with pytest.raises(ValueError, match="gives 3 output channels; the catalogue entry expects 4"):
        segment_image(make_image(GRIDS["identity"]), make_entry(), network=ThresholdNet(thresholds_hu=(-500, 0)))
