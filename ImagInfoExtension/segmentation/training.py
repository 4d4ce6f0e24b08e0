"""The seeded training of the shipped model ``imaginfo-phantom-vessels`` and its MONAI bundle.

The model segments the digital lung-vessel phantom's tree by radius class: ten output
channels, background and labels 1..9 for the radius classes 0.1 ... 4.25 mm in
ascending order, exactly as the virtual scanner's truth
(:attr:`ImagInfoExtension.phantom.scanner.PhantomTruth.labels`).

Training data come from the virtual scanner alone: the phantom rendered on the
axis-aligned small grid (0.9 × 0.9 × 1.25 mm) and on randomly rotated (oblique) grids
of the same spacing, each acquired at every training dose with FBP, IR and DL. A
validation grid, drawn apart, is acquired at a dose between the training doses and at
4 mGy with its own noise seed. The arrays are prepared exactly as the inference engine
prepares its input (:mod:`ImagInfoExtension.segmentation.space`): permuted and
flipped to RAS without interpolation, windowed and scaled to [0, 1]. The network sees
patches centred on voxels of each class in set ratios (the thin classes are rare), with
random mirror flips and swaps of the two in-plane axes, and learns with Dice + cross
entropy and Adam. Everything is seeded; the whole run takes minutes on two CPU cores.

Run it as::

    python -m ImagInfoExtension.segmentation.training --out Resources/Models/imaginfo-phantom-vessels

which writes the bundle: ``configs/metadata.json``, ``configs/inference.json``,
``models/model.pt`` (a plain state dict), ``docs/README.md`` and ``LICENSE``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import date
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from ImagInfoExtension.geometry import ImageGrid
from ImagInfoExtension.io import write_atomically
from ImagInfoExtension.phantom.acquisition import AcquisitionSettings
from ImagInfoExtension.phantom.design import DEFAULT_RADII_MM, default_design
from ImagInfoExtension.phantom.scanner import PHANTOM_SIZES, VirtualScanner
from ImagInfoExtension.segmentation.space import normalise_intensity, reorientation
from ImagInfoExtension.truth import MaskTruth, dice_per_class, radius_classes

#: The shipped model's identifier and version.
MODEL_ID = "imaginfo-phantom-vessels"
MODEL_VERSION = "1.0.0"
#: Model-space axes and voxel spacing (X, Y, Z in mm): the phantom's small grid.
ORIENTATION = "RAS"
TARGET_SPACING_MM = PHANTOM_SIZES["small"]
SPACING_TOLERANCE = 0.02
#: Background plus one channel per radius class.
NUM_CLASSES = 1 + len(DEFAULT_RADII_MM)
#: SNOMED CT codes of every label.
TERMINOLOGY = {
    "category": {"scheme": "SCT", "code": "91723000", "meaning": "Anatomical Structure"},
    "type": {"scheme": "SCT", "code": "59820001", "meaning": "Blood vessel"},
}
#: LPS box (mm) of the validation grid: the tree's vessels of r >= 0.75 mm with a margin, and a slice
#: of the holder's base (y > 60 mm), which keeps validation to a minute.
VALIDATION_BOX_MM = ((-72.0, -46.0, -63.0), (72.0, 67.0, 52.0))
#: Where the shipped bundle lives, relative to the repository.
BUNDLE_PATH = Path("Resources/Models") / MODEL_ID


@dataclass(frozen=True)
class TrainingConfig:
    """Everything that sets the trained weights.

    Parameters
    ----------
    seed : int
        Seeds the grid rotations, the noise of every acquisition, the patch sampler,
        the augmentation and the network's initialisation.
    oblique_grids : int
        Random rotations of the small grid rendered for training, besides the axis-aligned one.
    rotation_deg : tuple of float
        Range of the rotation angle (about a random axis) of the oblique grids. Below
        45°, the grid's k axis stays nearest the phantom's z, so the model axes keep the
        0.9 × 0.9 × 1.25 mm spacing and no resampling is needed.
    doses_mgy, recons : tuple
        Every grid is acquired at every dose with every reconstruction.
    validation_doses_mgy : tuple of float
        Doses of the validation acquisitions (3 mGy lies between the training doses).
    clip_hu : tuple of float
        Intensity window mapped to [0, 1].
    patch_size : tuple of int
        Training patch, model axes X, Y, Z (each divisible by the product of the strides).
    batch_size, steps, learning_rate, warmup_steps : int, int, float, int
        Adam's learning rate rises linearly over ``warmup_steps``, then falls linearly to
        zero at ``steps``.
    class_ratios : tuple of float
        Relative chance of a patch being centred on a voxel of each label (0 = background,
        anywhere in the volume).
    centre_jitter : float
        The patch centre moves up to this fraction of the patch size from the sampled voxel.
    channels, strides, num_res_units, norm : network
        Arguments of :class:`monai.networks.nets.UNet`.
    roi_size, overlap, sigma_scale, sw_batch_size : sliding window
        Inference settings written into the bundle.
    threads : int
        Torch CPU threads.
    """

    seed: int = 0
    oblique_grids: int = 5
    rotation_deg: tuple[float, float] = (5.0, 20.0)
    doses_mgy: tuple[float, ...] = (0.5, 1.0, 2.1, 4.0)
    recons: tuple[str, ...] = ("FBP", "IR", "DL")
    validation_doses_mgy: tuple[float, ...] = (3.0, 4.0)
    clip_hu: tuple[float, float] = (-1024.0, 400.0)
    patch_size: tuple[int, int, int] = (64, 64, 48)
    batch_size: int = 4
    steps: int = 1500
    learning_rate: float = 2e-3
    warmup_steps: int = 30
    class_ratios: tuple[float, ...] = (2.0, 0.5, 0.5, 1.0, 1.5, 1.5, 1.5, 1.0, 1.0, 1.0)
    centre_jitter: float = 0.25
    channels: tuple[int, ...] = (16, 32, 64, 128)
    strides: tuple[int, ...] = (2, 2, 2)
    num_res_units: int = 1
    norm: str = "batch"
    roi_size: tuple[int, int, int] = (96, 96, 64)
    overlap: float = 0.25
    sigma_scale: float = 0.125
    sw_batch_size: int = 2
    threads: int = 2

    def __post_init__(self) -> None:
        if len(self.class_ratios) != NUM_CLASSES or min(self.class_ratios) < 0 or sum(self.class_ratios) <= 0:
            raise ValueError(f"class_ratios needs {NUM_CLASSES} non-negative numbers, not all zero")
        factor = int(np.prod(self.strides))
        for name in ("patch_size", "roi_size"):
            if any(n % factor for n in getattr(self, name)):
                raise ValueError(f"{name} {getattr(self, name)} must be divisible by {factor} (the strides' product)")
        if not 0 <= self.rotation_deg[0] <= self.rotation_deg[1] < 45:
            raise ValueError("rotation_deg must be an ascending range within [0, 45) degrees")
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("steps and batch_size must be positive")

    def network_args(self) -> dict:
        """The keyword arguments of :class:`monai.networks.nets.UNet`, as JSON values."""
        return {
            "spatial_dims": 3,
            "in_channels": 1,
            "out_channels": NUM_CLASSES,
            "channels": list(self.channels),
            "strides": list(self.strides),
            "num_res_units": self.num_res_units,
            "norm": self.norm,
        }


@dataclass(frozen=True)
class PhantomGrid:
    """A grid the phantom is rendered on, with the seed of its acquisitions' noise."""

    name: str
    grid: ImageGrid
    noise_seed: int
    rotation_deg: float = 0.0
    rotation_axis: tuple[float, float, float] = (0.0, 0.0, 1.0)


@dataclass
class ModelSpaceCase:
    """The acquisitions of one grid in model space, with their labels.

    Attributes
    ----------
    images_hu : dict
        ``(dose_mgy, recon)`` → int16 HU array ``[X, Y, Z]``.
    labels : ndarray of uint8, ``[X, Y, Z]``
    class_voxels : list of ndarray
        Flat indices of each label's voxels (index 0 empty: background is drawn anywhere).
    """

    name: str
    grid: ImageGrid
    images_hu: dict[tuple[float, str], np.ndarray]
    labels: np.ndarray
    class_voxels: list[np.ndarray] = field(default_factory=list)


@dataclass
class TrainingResult:
    """What a run produced: the weights, the validation Dice and the costs."""

    state_dict: dict
    validation_dice: dict[str, dict[str, float]]
    steps_done: int
    losses: list[float]
    timings_s: dict[str, float]
    cpu_time_s: float
    parameter_count: int
    config: TrainingConfig
    grids: list[PhantomGrid]


# ----------------------------------------------------------------------------- grids


def rotation_matrix(axis: Sequence[float], angle_deg: float) -> np.ndarray:
    """The rotation by ``angle_deg`` about ``axis`` (Rodrigues), a 3x3 matrix."""
    unit = np.asarray(axis, dtype=float)
    unit = unit / np.linalg.norm(unit)
    cross = np.array([[0.0, -unit[2], unit[1]], [unit[2], 0.0, -unit[0]], [-unit[1], unit[0], 0.0]])
    angle = np.deg2rad(angle_deg)
    return np.eye(3) + np.sin(angle) * cross + (1.0 - np.cos(angle)) * cross @ cross


def oblique_grid(
    axis: Sequence[float],
    angle_deg: float,
    spacing_mm: Sequence[float] = TARGET_SPACING_MM,
    box_mm: tuple[Sequence[float], Sequence[float]] | None = None,
) -> ImageGrid:
    """A grid covering an LPS box (default: the phantom's field of view), rotated by ``angle_deg`` about ``axis``."""
    lower, upper = default_design().field_of_view_mm() if box_mm is None else box_mm
    direction = rotation_matrix(axis, angle_deg)
    return ImageGrid.covering_box(lower, upper, tuple(spacing_mm), tuple(float(d) for d in direction.ravel()))


def _random_axis(rng: np.random.Generator) -> tuple[float, float, float]:
    vector = rng.standard_normal(3)
    return tuple(float(v) for v in vector / np.linalg.norm(vector))


def training_grids(config: TrainingConfig) -> tuple[list[PhantomGrid], PhantomGrid]:
    """The training grids (axis-aligned first, then the oblique ones) and the validation grid.

    Acquisition noise seeds are ``10000 * (seed + 1) + n``: a test that acquires with
    a seed below 10000 uses noise no training run has seen.
    """
    streams = np.random.SeedSequence(config.seed).spawn(2)
    rng = np.random.default_rng(streams[0])
    base = 10_000 * (config.seed + 1)
    grids = [PhantomGrid("axial", default_design().default_grid(TARGET_SPACING_MM), base)]
    for number in range(1, config.oblique_grids + 1):
        axis = _random_axis(rng)
        angle = float(rng.uniform(*config.rotation_deg))
        grids.append(PhantomGrid(f"oblique{number}", oblique_grid(axis, angle), base + number, angle, axis))
    validation_rng = np.random.default_rng(streams[1])
    axis = _random_axis(validation_rng)
    angle = float(validation_rng.uniform(*config.rotation_deg))
    grid = oblique_grid(axis, angle, box_mm=VALIDATION_BOX_MM)
    validation = PhantomGrid("validation", grid, base + 9_999, angle, axis)
    return grids, validation


def angle_between_deg(first: ImageGrid, second: ImageGrid) -> float:
    """The angle of the rotation between two grids' directions, in degrees."""
    relative = first.direction_matrix.T @ second.direction_matrix
    return float(np.rad2deg(np.arccos(np.clip((np.trace(relative) - 1.0) / 2.0, -1.0, 1.0))))


# ----------------------------------------------------------------------------- data


def _check_model_spacing(grid: ImageGrid) -> None:
    spacing = np.asarray(reorientation(grid, ORIENTATION).model_grid.spacing_mm)
    if np.any(np.abs(spacing / np.asarray(TARGET_SPACING_MM) - 1.0) > SPACING_TOLERANCE):
        raise ValueError(
            f"the grid's model-space spacing {tuple(spacing)} mm is not the model's {TARGET_SPACING_MM} mm; "
            "render the phantom with the small spacing and rotations below 45 degrees"
        )


def _cache_file(cache_dir: Path, grid: PhantomGrid, doses: Sequence[float], recons: Sequence[str]) -> Path:
    key = json.dumps([asdict(grid.grid), grid.noise_seed, list(doses), list(recons)], sort_keys=True)
    return cache_dir / f"{grid.name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"


def render_case(
    phantom_grid: PhantomGrid,
    doses_mgy: Sequence[float],
    recons: Sequence[str],
    cache_dir: Path | None = None,
) -> ModelSpaceCase:
    """Acquire the phantom on one grid at every dose and reconstruction, in model space.

    Parameters
    ----------
    phantom_grid : PhantomGrid
    doses_mgy, recons : sequence
    cache_dir : Path, optional
        Keeps the arrays between runs (keyed by grid, seed, doses and reconstructions).
    """
    _check_model_spacing(phantom_grid.grid)
    space = reorientation(phantom_grid.grid, ORIENTATION)
    cached = _cache_file(cache_dir, phantom_grid, doses_mgy, recons) if cache_dir is not None else None
    if cached is not None and cached.is_file():
        with np.load(cached) as stored:
            labels = stored["labels"]
            images = {(dose, recon): stored[f"{recon}_{dose:g}"] for dose in doses_mgy for recon in recons}
    else:
        scanner = VirtualScanner(grid=phantom_grid.grid)
        labels = space.to_model(scanner.truth.labels)
        images = {}
        for dose in doses_mgy:
            for recon in recons:
                settings = AcquisitionSettings(dose_mgy=dose, recon=recon, repetition=1, seed=phantom_grid.noise_seed)
                images[(dose, recon)] = space.to_model(sitk.GetArrayFromImage(scanner.acquire(settings)))
        if cached is not None:
            arrays = {f"{recon}_{dose:g}": image for (dose, recon), image in images.items()}
            write_atomically(cached, lambda path: np.savez(path, labels=labels, **arrays))
    flat = labels.ravel()
    class_voxels = [np.zeros(0, dtype=np.int64)] + [np.flatnonzero(flat == label) for label in range(1, NUM_CLASSES)]
    return ModelSpaceCase(phantom_grid.name, phantom_grid.grid, images, labels, class_voxels)


class PatchSampler:
    """Draws training patches: class-weighted centres, random flips and in-plane swaps.

    A patch is centred, up to a jitter, on a voxel of a label drawn with the configured
    ratios among the labels present; label 0 means anywhere in the volume (mostly air
    and the holder, which the model must leave unlabelled). Intensities are prepared with
    :func:`~ImagInfoExtension.segmentation.space.normalise_intensity`, voxel by voxel,
    so a patch equals the same window of the whole prepared volume.
    """

    def __init__(self, cases: Sequence[ModelSpaceCase], config: TrainingConfig, rng: np.random.Generator) -> None:
        self.entries = [(case, key) for case in cases for key in sorted(case.images_hu)]
        self.config = config
        self.rng = rng
        self.size = np.asarray(config.patch_size)

    def _centre(self, case: ModelSpaceCase) -> np.ndarray:
        shape = np.asarray(case.labels.shape)
        ratios = np.array(
            [r if (n == 0 or len(case.class_voxels[n])) else 0.0 for n, r in enumerate(self.config.class_ratios)]
        )
        label = int(self.rng.choice(NUM_CLASSES, p=ratios / ratios.sum()))
        if label == 0:
            centre = self.rng.integers(0, shape)
        else:
            voxels = case.class_voxels[label]
            centre = np.array(np.unravel_index(voxels[self.rng.integers(len(voxels))], shape))
        reach = np.floor(self.config.centre_jitter * self.size).astype(int)
        return centre + self.rng.integers(-reach, reach + 1)

    def patch(self) -> tuple[np.ndarray, np.ndarray]:
        """One patch: float32 image ``[1, X, Y, Z]`` in [0, 1] and int64 labels ``[1, X, Y, Z]``."""
        case, key = self.entries[self.rng.integers(len(self.entries))]
        shape = np.asarray(case.labels.shape)
        start = np.clip(self._centre(case) - self.size // 2, 0, np.maximum(shape - self.size, 0))
        window = tuple(slice(int(s), int(s + n)) for s, n in zip(start, self.size, strict=True))
        image = case.images_hu[key][window]
        labels = case.labels[window]
        short = self.size - np.asarray(image.shape)
        if short.any():
            # A volume smaller than the patch is padded with air (0 after scaling) and background.
            pad = [(0, int(n)) for n in short]
            image = np.pad(image, pad, constant_values=int(self.config.clip_hu[0]))
            labels = np.pad(labels, pad, constant_values=0)
        image = normalise_intensity(image, *self.config.clip_hu, "range")
        flips = tuple(axis for axis in range(3) if self.rng.random() < 0.5)
        image, labels = np.flip(image, flips), np.flip(labels, flips)
        if self.rng.random() < 0.5 and self.size[0] == self.size[1]:
            # X and Y share their spacing: a swap is another plausible orientation of the tree.
            image, labels = image.transpose(1, 0, 2), labels.transpose(1, 0, 2)
        return np.ascontiguousarray(image)[None], np.ascontiguousarray(labels, dtype=np.int64)[None]

    def batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = [self.patch() for _ in range(self.config.batch_size)]
        return torch.from_numpy(np.stack([p[0] for p in pairs])), torch.from_numpy(np.stack([p[1] for p in pairs]))


# ----------------------------------------------------------------------------- network


def build_network(config: TrainingConfig | None = None) -> torch.nn.Module:
    """The untrained network (:class:`monai.networks.nets.UNet`) of a configuration."""
    from monai.networks.nets import UNet

    return UNet(**(config or TrainingConfig()).network_args())


def predict_labels(network: torch.nn.Module, image: sitk.Image, config: TrainingConfig) -> np.ndarray:
    """Labels ``[k, j, i]`` of an image on a grid of the model's spacing, prepared as the inference engine does.

    The training script's own check of its weights (the inference engine,
    :mod:`ImagInfoExtension.segmentation.inference`, also resamples, postprocesses and
    estimates memory).
    """
    from monai.inferers import sliding_window_inference

    grid = ImageGrid.from_sitk(image)
    _check_model_spacing(grid)
    space = reorientation(grid, ORIENTATION)
    prepared = normalise_intensity(space.to_model(sitk.GetArrayFromImage(image)), *config.clip_hu, "range")
    network.eval()
    with torch.inference_mode():
        logits = sliding_window_inference(
            torch.from_numpy(prepared)[None, None],
            roi_size=config.roi_size,
            sw_batch_size=config.sw_batch_size,
            predictor=network,
            overlap=config.overlap,
            mode="gaussian",
            sigma_scale=config.sigma_scale,
            padding_mode="constant",
            cval=0.0,
        )
    labels = torch.argmax(logits[0], dim=0).to(torch.uint8).numpy()
    return space.to_input(labels)


def label_dice(truth_labels: np.ndarray, predicted_labels: np.ndarray, grid: ImageGrid) -> dict[str, float]:
    """Dice of each radius class (keyed ``"0.1"`` ... ``"4.25"``), by :func:`ImagInfoExtension.truth.dice_per_class`."""
    truth = MaskTruth.from_label_map(grid.to_sitk(truth_labels), DEFAULT_RADII_MM, "phantom truth")
    scores = dice_per_class(truth, grid.to_sitk(predicted_labels.astype(np.uint8)))
    return {f"{radius:g}": float(score) for radius, score in scores.items()}


# ----------------------------------------------------------------------------- training


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def render_training_data(
    config: TrainingConfig, cache_dir: Path | None = None, log: Callable[[str], None] = print
) -> list[ModelSpaceCase]:
    """Every training acquisition, in model space (see :func:`training_grids`)."""
    grids, _ = training_grids(config)
    cases = []
    for phantom_grid in grids:
        stamp = time.perf_counter()
        cases.append(render_case(phantom_grid, config.doses_mgy, config.recons, cache_dir))
        counts = [len(v) for v in cases[-1].class_voxels[1:]]
        log(
            f"[data] {phantom_grid.name}: grid {phantom_grid.grid.size_ijk}, rotation {phantom_grid.rotation_deg:.1f}"
            f" deg, {len(cases[-1].images_hu)} acquisitions, class voxels {counts}"
            f" ({time.perf_counter() - stamp:.1f} s)"
        )
    return cases


def optimise(
    cases: Sequence[ModelSpaceCase],
    config: TrainingConfig,
    deadline: float | None = None,
    log: Callable[[str], None] = print,
) -> tuple[torch.nn.Module, list[float]]:
    """Train a fresh network on patches of ``cases``; seeded by ``config.seed``.

    Parameters
    ----------
    deadline : float, optional
        ``time.perf_counter()`` value after which no further step starts.

    Returns
    -------
    network, losses
        The network (in eval mode) and the loss of each step done.
    """
    from monai.losses import DiceCELoss
    from monai.utils import set_determinism

    torch.set_num_threads(config.threads)
    # Weights decaying towards zero reach subnormal floats, which slow the CPU's arithmetic many times over.
    torch.set_flush_denormal(True)
    set_determinism(seed=config.seed)
    torch.manual_seed(config.seed)
    network = build_network(config).to(memory_format=torch.channels_last_3d)
    optimiser = torch.optim.Adam(network.parameters(), lr=config.learning_rate)
    warmup = max(1, min(config.warmup_steps, config.steps // 2))

    def factor(step: int) -> float:
        # A short warm-up keeps the first large steps from wrecking the batch statistics, then a linear fall to 0.
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, 1.0 - (step - warmup) / max(1, config.steps - warmup))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, factor)
    loss_function = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)
    sampler = PatchSampler(cases, config, np.random.default_rng(np.random.SeedSequence([config.seed, 1])))
    parameter_count = sum(p.numel() for p in network.parameters())
    log(f"[train] UNet {config.network_args()}: {parameter_count} parameters; {config.steps} steps")
    losses: list[float] = []
    started, cpu_started = time.perf_counter(), _cpu_seconds()
    network.train()
    for step in range(config.steps):
        if deadline is not None and time.perf_counter() > deadline:
            log(f"[train] stopped at step {step} of {config.steps}: the time limit was reached")
            break
        images, labels = sampler.batch()
        optimiser.zero_grad(set_to_none=True)
        loss = loss_function(network(images.to(memory_format=torch.channels_last_3d)), labels)
        loss.backward()
        optimiser.step()
        schedule.step()
        losses.append(float(loss.detach()))
        done = step + 1
        if done % 50 == 0 or done == config.steps:
            elapsed = time.perf_counter() - started
            log(
                f"[train] step {done}/{config.steps} loss {np.mean(losses[-50:]):.4f}"
                f" lr {schedule.get_last_lr()[0]:.2e} ({elapsed / done:.2f} s/step wall,"
                f" {(_cpu_seconds() - cpu_started) / done:.2f} s/step CPU, {elapsed:.0f} s)"
            )
    network.eval()
    return network.to(memory_format=torch.contiguous_format), losses


def train(
    config: TrainingConfig,
    cache_dir: Path | None = None,
    max_minutes: float | None = None,
    log: Callable[[str], None] = print,
) -> TrainingResult:
    """Render the data, train the network and validate it; everything seeded by ``config.seed``.

    Parameters
    ----------
    config : TrainingConfig
    cache_dir : Path, optional
        Keeps rendered acquisitions between runs (a fresh run renders everything).
    max_minutes : float, optional
        Stops the optimisation once this much wall time has passed since the start
        (the run is then shorter than ``config.steps``, which the result records).
    log : callable
        Receives progress lines.
    """
    started, cpu_started = time.perf_counter(), _cpu_seconds()
    timings: dict[str, float] = {}
    grids, validation_grid = training_grids(config)
    cases = render_training_data(config, cache_dir, log)
    timings["data_s"] = round(time.perf_counter() - started, 1)
    stamp = time.perf_counter()
    deadline = None if max_minutes is None else started + 60.0 * max_minutes
    network, losses = optimise(cases, config, deadline, log)
    timings["training_s"] = round(time.perf_counter() - stamp, 1)
    del cases
    stamp = time.perf_counter()
    validation = validate(network, validation_grid, config, cache_dir, log=log)
    timings["validation_s"] = round(time.perf_counter() - stamp, 1)
    timings["total_s"] = round(time.perf_counter() - started, 1)
    state = {key: value.detach().clone().contiguous() for key, value in network.state_dict().items()}
    return TrainingResult(
        state_dict=state,
        validation_dice=validation,
        steps_done=len(losses),
        losses=losses,
        timings_s=timings,
        cpu_time_s=round(_cpu_seconds() - cpu_started, 1),
        parameter_count=sum(p.numel() for p in network.parameters()),
        config=config,
        grids=[*grids, validation_grid],
    )


def validate(
    network: torch.nn.Module,
    phantom_grid: PhantomGrid,
    config: TrainingConfig,
    cache_dir: Path | None = None,
    recons: Sequence[str] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, dict[str, float]]:
    """Dice per radius class of each validation acquisition, keyed ``"<recon> <dose> mGy"``."""
    case = render_case(phantom_grid, config.validation_doses_mgy, recons or config.recons, cache_dir)
    space = reorientation(phantom_grid.grid, ORIENTATION)
    truth = space.to_input(case.labels)
    scores = {}
    for dose, recon in sorted(case.images_hu, key=lambda key: (key[1], key[0])):
        image = phantom_grid.grid.to_sitk(space.to_input(case.images_hu[(dose, recon)]))
        predicted = predict_labels(network, image, config)
        scores[f"{recon} {dose:g} mGy"] = dice = label_dice(truth, predicted, phantom_grid.grid)
        log(f"[validation] {recon} {dose:g} mGy: " + " ".join(f"r={r}:{d:.3f}" for r, d in dice.items()))
    return scores


# ----------------------------------------------------------------------------- the bundle


def _versions() -> dict[str, str]:
    import monai

    return {
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
    }


def _labels() -> list[dict]:
    return [
        {
            "value": c.label,
            "name": c.name,
            "color": "#" + "".join(f"{round(255 * v):02x}" for v in c.colour),
            "terminology": TERMINOLOGY,
        }
        for c in radius_classes(DEFAULT_RADII_MM)
    ]


def _mean_dice(result: TrainingResult, dose_mgy: float) -> dict[str, float]:
    """Per class, the mean over the reconstructions of the validation Dice at one dose."""
    rows = [scores for name, scores in result.validation_dice.items() if name.endswith(f" {dose_mgy:g} mGy")]
    if not rows:
        return {}
    return {radius: round(float(np.mean([row[radius] for row in rows])), 4) for radius in rows[0]}


def metadata_document(result: TrainingResult, sha256: str, size_bytes: int, command: str) -> dict:
    """``configs/metadata.json``: MONAI bundle metadata plus the catalogue's ``imaginfo`` block."""
    config = result.config
    channel_def = {"0": "background", **{str(label["value"]): label["name"] for label in _labels()}}
    return {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json",
        "version": MODEL_VERSION,
        "changelog": {MODEL_VERSION: "first release, trained by the seeded script"},
        **_versions(),
        "required_packages_version": {},
        "name": "ImagInfo lung-vessel phantom: vessels by radius class",
        "task": "Segmentation of the digital lung-vessel phantom's vessels by radius class",
        "description": (
            "A small 3D UNet that labels the vessel tree of ImagInfo's digital lung-vessel phantom by radius class "
            "(0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3 and 4.25 mm) on CT of 0.9 x 0.9 x 1.25 mm voxels, from FBP, "
            "iterative and deep-learning reconstructions at 0.5 to 4 mGy. Trained on simulated acquisitions only."
        ),
        "authors": "ImagInfo",
        "copyright": "Copyright (c) ImagInfo contributors",
        "data_source": (
            "ImagInfo virtual scanner (ImagInfoExtension.phantom), rendered and acquired by the training script"
        ),
        "data_type": "nrrd",
        "image_classes": "single-channel CT in Hounsfield units",
        "label_classes": "0 background; k = the k-th radius class in ascending order",
        "pred_classes": "0 background; k = the k-th radius class in ascending order",
        "intended_use": "the ImagInfo phantom only; not for clinical images",
        "license": "Apache-2.0",
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "hounsfield",
                    "modality": "CT",
                    "num_channels": 1,
                    "spatial_shape": list(config.roi_size),
                    "dtype": "float32",
                    "value_range": [0, 1],
                    "is_patch_data": True,
                    "channel_def": {"0": "image"},
                }
            },
            "outputs": {
                "pred": {
                    "type": "image",
                    "format": "segmentation",
                    "num_channels": NUM_CLASSES,
                    "spatial_shape": list(config.roi_size),
                    "dtype": "float32",
                    "value_range": [0, 1],
                    "is_patch_data": True,
                    "channel_def": channel_def,
                }
            },
        },
        "imaginfo": imaginfo_block(result, sha256, size_bytes, command),
    }


def imaginfo_block(result: TrainingResult, sha256: str, size_bytes: int, command: str) -> dict:
    """The catalogue's extra block: labels, postprocessing, requirements, provenance and reported metrics."""
    config = result.config
    return {
        "id": MODEL_ID,
        "title": "Lung-vessel phantom: vessels by radius class",
        "modality": "CT",
        "preprocessing": {
            "orientation": ORIENTATION,
            "target_spacing_mm": list(TARGET_SPACING_MM),
            "spacing_tolerance": SPACING_TOLERANCE,
            "intensity": {
                "clip_min": config.clip_hu[0],
                "clip_max": config.clip_hu[1],
                "normalisation": "range",
                "mean": None,
                "sd": None,
            },
        },
        "labels": _labels(),
        "postprocessing": {
            "activation": "softmax",
            "decision": "argmax",
            "thresholds": None,
            "largest_component": [],
            "min_component_volume_ml": 0.0,
        },
        "requirements": {
            "reference_shape": list(PHANTOM_REFERENCE_SHAPE),
            "memory_mb": {"cpu": 1500, "gpu": 800},
            "time_s": {"cpu": 30.0, "gpu": None},
        },
        "provenance": {
            "trained_by": "ImagInfo",
            "script": "ImagInfoExtension/segmentation/training.py",
            "command": command,
            "data": (
                f"virtual scanner: the phantom on the axis-aligned small grid and {config.oblique_grids} "
                f"random oblique grids (rotations {config.rotation_deg[0]:g}-{config.rotation_deg[1]:g} deg), doses "
                f"{', '.join(f'{d:g}' for d in config.doses_mgy)} mGy, reconstructions {', '.join(config.recons)}"
            ),
            "seed": config.seed,
            "steps": result.steps_done,
            "training_time_s": result.timings_s["total_s"],
            "cpu_time_s": result.cpu_time_s,
            "machine": f"{platform.machine()} {platform.system()}, {config.threads} torch threads, CPU",
            "weights_sha256": sha256,
            "weights_size_bytes": size_bytes,
        },
        "reported_metrics": {
            "dice": _mean_dice(result, 4.0),
            "dice_by_acquisition": result.validation_dice,
            "validation": (
                f"unseen oblique grid rotated {result.grids[-1].rotation_deg:.1f} deg, noise seed "
                f"{result.grids[-1].noise_seed}; 'dice' is the mean over FBP, IR and DL at 4 mGy"
            ),
        },
    }


#: The shape (i, j, k) of the phantom's small grid, whose cost ``requirements`` states.
PHANTOM_REFERENCE_SHAPE = (250, 184, 108)


def inference_document(config: TrainingConfig) -> dict:
    """``configs/inference.json``: the MONAI bundle's network and inference pipeline."""
    return {
        "imports": ["$import torch"],
        "bundle_root": ".",
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
        "network_def": {"_target_": "monai.networks.nets.UNet", **config.network_args()},
        "network": "$@network_def.to(@device)",
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "LoadImaged", "keys": "image"},
                {"_target_": "EnsureChannelFirstd", "keys": "image"},
                {"_target_": "Orientationd", "keys": "image", "axcodes": ORIENTATION},
                {"_target_": "Spacingd", "keys": "image", "pixdim": list(TARGET_SPACING_MM), "mode": "bilinear"},
                {
                    "_target_": "ScaleIntensityRanged",
                    "keys": "image",
                    "a_min": config.clip_hu[0],
                    "a_max": config.clip_hu[1],
                    "b_min": 0.0,
                    "b_max": 1.0,
                    "clip": True,
                },
                {"_target_": "EnsureTyped", "keys": "image"},
            ],
        },
        "inferer": {
            "_target_": "SlidingWindowInferer",
            "roi_size": list(config.roi_size),
            "sw_batch_size": config.sw_batch_size,
            "overlap": config.overlap,
            "mode": "gaussian",
            "sigma_scale": config.sigma_scale,
            "padding_mode": "constant",
            "cval": 0.0,
        },
        "postprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "Activationsd", "keys": "pred", "softmax": True},
                {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
            ],
        },
        "checkpoint": "$@bundle_root + '/models/model.pt'",
        "load_weights": "$@network.load_state_dict(torch.load(@checkpoint, weights_only=True))",
    }


LICENSE_TEXT = """Copyright (c) ImagInfo contributors

Licensed under the Apache License, Version 2.0 (the "License"); you may not use
these model weights and files except in compliance with the License. You may
obtain a copy of the License at

    http://www.apache.org/licenses/LICENSE-2.0

Unless required by applicable law or agreed to in writing, software distributed
under the License is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR
CONDITIONS OF ANY KIND, either express or implied. See the License for the
specific language governing permissions and limitations under the License.
"""


def readme_text(result: TrainingResult, sha256: str, size_bytes: int, command: str) -> str:
    """``docs/README.md``: what the model segments, how it was trained and how well it does."""
    config = result.config
    radii = [f"{r:g}" for r in DEFAULT_RADII_MM]
    header = "| acquisition | " + " | ".join(f"r={r} mm" for r in radii) + " |"
    rule = "|---|" + "---:|" * len(radii)
    rows = [
        f"| {name} | " + " | ".join(f"{scores[r]:.3f}" for r in radii) + " |"
        for name, scores in result.validation_dice.items()
    ]
    validation = result.grids[-1]
    training = result.grids[:-1]
    rotations = ", ".join(f"{g.rotation_deg:.1f}" for g in training[1:])
    timings = result.timings_s
    return f"""# {MODEL_ID} {MODEL_VERSION}

A small MONAI 3D UNet that segments the vessel tree of ImagInfo's digital lung-vessel
phantom by radius class. Output channel 0 is background; channel k is the k-th radius
class in ascending order ({", ".join(radii)} mm), exactly as the phantom's
`truth_labels.nrrd` (`VirtualScanner(...).truth.labels`). For the phantom only: it has
never seen anatomy.

## Input

CT in HU, one channel, on a grid of 0.9 x 0.9 x 1.25 mm voxels (any orientation: the
axes are permuted and flipped to {ORIENTATION} without interpolation; other spacings are
resampled). Intensities are clipped to [{config.clip_hu[0]:g}, {config.clip_hu[1]:g}] HU and scaled
to [0, 1]. Sliding window {list(config.roi_size)} voxels, overlap {config.overlap:g}, Gaussian
blending (sigma scale {config.sigma_scale:g}); softmax, argmax.

## Network

`monai.networks.nets.UNet` with `{json.dumps(config.network_args())}`:
{result.parameter_count} parameters. `models/model.pt` is a plain state dict
(`torch.load(path, weights_only=True)`), {size_bytes} bytes, sha256 `{sha256}`.

## Training

Data from the virtual scanner only: the phantom on the axis-aligned small grid
(250 x 184 x 108 voxels) and on {config.oblique_grids} oblique grids of the same spacing,
rotated by {rotations} degrees about random axes, each acquired at
{", ".join(f"{d:g}" for d in config.doses_mgy)} mGy with {", ".join(config.recons)}
({len(training) * len(config.doses_mgy) * len(config.recons)} acquisitions; noise seeds
{training[0].noise_seed}..{training[-1].noise_seed}). Patches of {list(config.patch_size)} voxels, batch
{config.batch_size}, centred on voxels of each label with ratios {list(config.class_ratios)} (label 0:
anywhere), random flips and in-plane axis swaps; Dice + cross-entropy loss; Adam, learning
rate {config.learning_rate:g} falling linearly to 0 over {config.steps} steps ({result.steps_done} done);
seed {config.seed}; {config.threads} torch threads on the CPU.

    {command}

(`make train`) rendered the data from scratch and trained in {timings["total_s"]:.0f} s wall time
({timings["data_s"]:.0f} s data, {timings["training_s"]:.0f} s training, {timings["validation_s"]:.0f} s
validation) and {result.cpu_time_s:.0f} s of CPU time on {platform.machine()}.

## Validation

Dice per radius class on acquisitions the model never saw: an oblique grid rotated
{validation.rotation_deg:.1f} degrees about another axis, noise seed {validation.noise_seed}, at
{" and ".join(f"{d:g}" for d in config.validation_doses_mgy)} mGy (3 mGy lies between the training doses).
The truth labels a voxel when at least half of it lies in the tree or a centreline
crosses it, so the sub-voxel classes (0.1 and 0.25 mm) are labelled on their centreline
voxels, which no CT at this resolution shows: their Dice stays low by construction.

{header}
{rule}
{chr(10).join(rows)}

`benchmarks/bench_segmentation_dice.py` sets these beside the graph cut's Dice on the
same acquisitions, at 0.2 to 4 mGy.

## Licence

Apache-2.0 (see `LICENSE`).
"""


def write_bundle(out_dir: Path, result: TrainingResult, command: str) -> dict:
    """Write the MONAI bundle whole (through a temporary sibling), replacing any bundle there.

    Returns
    -------
    dict
        ``sha256`` and ``size_bytes`` of ``models/model.pt``.
    """
    out_dir = Path(out_dir)
    weights: dict = {}

    def writer(folder: Path) -> None:
        (folder / "configs").mkdir(parents=True)
        (folder / "models").mkdir()
        (folder / "docs").mkdir()
        model_path = folder / "models" / "model.pt"
        torch.save(result.state_dict, model_path)
        data = model_path.read_bytes()
        weights.update(sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data))
        metadata = metadata_document(result, weights["sha256"], weights["size_bytes"], command)
        (folder / "configs" / "metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
        (folder / "configs" / "inference.json").write_text(
            json.dumps(inference_document(result.config), indent=2) + "\n"
        )
        (folder / "docs" / "README.md").write_text(
            readme_text(result, weights["sha256"], weights["size_bytes"], command)
        )
        (folder / "LICENSE").write_text(LICENSE_TEXT)

    write_atomically(out_dir, writer)
    return weights


# ----------------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ImagInfoExtension.segmentation.training",
        description=f"Train the shipped phantom model ({MODEL_ID}) from scratch and write its MONAI bundle.",
    )
    parser.add_argument("--out", type=Path, default=BUNDLE_PATH, help=f"bundle folder (default {BUNDLE_PATH})")
    parser.add_argument("--seed", type=int, default=0, help="seed of everything (default 0)")
    parser.add_argument("--steps", type=int, default=TrainingConfig.steps, help="optimisation steps")
    parser.add_argument(
        "--minutes",
        type=float,
        default=None,
        help="stop the optimisation once this much wall time has passed (a shorter, no longer reproducible run)",
    )
    parser.add_argument(
        "--cache", type=Path, default=None, help="keep rendered acquisitions here between runs (default: none)"
    )
    args = parser.parse_args(argv)
    if args.seed < 0:
        parser.error("--seed must be a non-negative integer")
    config = replace(TrainingConfig(), seed=args.seed, steps=args.steps)
    command = "python -m ImagInfoExtension.segmentation.training --out " + str(args.out) + f" --seed {args.seed}"
    if args.steps != TrainingConfig.steps:
        command += f" --steps {args.steps}"

    def log(line: str) -> None:
        print(line, flush=True)

    result = train(config, args.cache, args.minutes, log)
    weights = write_bundle(args.out, result, command)
    log(f"[bundle] {args.out}: models/model.pt {weights['size_bytes']} bytes, sha256 {weights['sha256']}")
    log(
        f"[done] {result.timings_s['total_s']:.0f} s wall ({result.timings_s}), {result.cpu_time_s:.0f} s CPU;"
        f" {result.steps_done} steps; {date.today().isoformat()} {sys.platform}"
    )
    for name, scores in result.validation_dice.items():
        log(f"[dice] {name}: " + " ".join(f"r={r}:{d:.3f}" for r, d in scores.items()))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    raise SystemExit(main())
