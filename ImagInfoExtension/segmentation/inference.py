"""The inference engine: an image in, a label map on the image's own grid out.

:func:`segment_image` (or a reusable :class:`Segmenter`, which loads its network once)
runs one catalogue entry on one SimpleITK image:

1. **Checks.** A 2D image, a single slice, NaN or infinite intensities, a channel
   count or a stated modality other than the model's are refused with a message that
   names the problem and its fix (:func:`check_input`).
2. **Model space.** The voxel axes are permuted and flipped to the entry's orientation
   (:func:`~ImagInfoExtension.segmentation.space.reorientation`), resampled linearly
   through physical coordinates to ``target_spacing_mm`` only when some axis differs
   by more than ``spacing_tolerance`` (:func:`model_geometry`), and the intensities
   are clipped and scaled (:func:`prepare_input`): the float32 tensor ``[1, C, X, Y, Z]``
   that MONAI's ``Orientation`` + ``Spacing`` + ``ScaleIntensityRange`` would give.
3. **Memory.** What the run needs is estimated and compared with the free memory
   before anything runs (:func:`plan_memory`): all on the GPU when it fits, windows on
   the GPU and stitching on the CPU when only the windows fit, the CPU otherwise, and a
   refusal (:class:`InsufficientMemoryError`, a :class:`MemoryError`) with the estimate,
   the free memory and the fix when even the CPU is too small. A CUDA out-of-memory
   error during the run frees the GPU cache and repeats the run on the CPU, with a
   warning in the result.
4. **Sliding window.** MONAI's ``sliding_window_inference`` with the entry's blend
   mode (Gaussian), ``sigma_scale``, overlap, batch size and padding; AMP
   (``torch.autocast('cuda', float16)``) on CUDA only; ``torch.inference_mode``.
   Large volumes are stitched in overlapping slabs along the axis with the most windows
   (:func:`plan_slabs`), each turned into uint8 labels at once, so only one slab's
   float accumulator lives at a time. Slab borders sit on MONAI's own window grid and
   every slab keeps only the voxels whose windows all lie inside it; the windows two
   slabs share run once and are handed on. Each kept voxel therefore sums the same
   windows with the same Gaussian weights in the same order as one plain
   ``sliding_window_inference`` call over the whole volume, at no extra network cost:
   bit for bit with ``sw_batch_size`` 1; with larger batches the network's own
   arithmetic may differ in the last bits (~1e-6) as the batches are made up of other
   windows.
5. **Labels.** At model resolution in uint8 (:func:`decide_labels`): argmax (channel 0
   is the background, channel ``c`` is ``entry.labels[c - 1]``) or per-label thresholds
   (one channel per label, in the entry's order; where several labels pass, the most
   probable wins); then the largest connected component of the listed labels and the
   removal of components smaller than ``min_component_volume_ml``
   (:func:`postprocess_labels`, 26-connected as MONAI's ``KeepLargestConnectedComponent``).
   Back to the input by nearest neighbour through physical coordinates (when resampled)
   and the exact inverse axis permutation: the label map has exactly the input's size,
   spacing, origin and direction.

Memory model (:func:`estimate_memory`), in bytes, for a model-space shape ``X·Y·Z = V``
(``V_in`` voxels of ``b`` bytes per channel on the input grid), ``C_in`` input and
``C_out`` output channels, a slab of ``S`` voxels (its cross-section padded to the ROI
where MONAI pads), windows of ``W`` voxels, ``B = sw_batch_size``, ``P`` windows per
plane across the slab axis::

    input          4·C_in·V                          the model-space tensor
    preprocessing  b·V_in + 8·V per channel          the reoriented copy and normalise_intensity's two
                   (b·V_in + 12·V_in + 4·V resampled)  float32 arrays; SimpleITK's copies when resampling
    stitching      4·(C_out + 1)·S + decision chunk  MONAI's output and count map for one slab
    cache          4·C_out·W·P·blocks                window outputs handed to the next slab
    activations    1.25·traced(B) + 96 MiB (CPU)     one window batch through the network,
                   + 4·B·W·(C_in + C_out)            and its input and output
    labels         V + 2·V_in (+ 4·V with            the labels, their reordered copy and the
                   components, + V + 2·V_in resampled) output image; components; the way back

The CPU peak is the largest of three phases: preprocessing; inference (input, labels,
stitching, cache and, on the CPU, activations); labels. ``blocks`` is the number of
planes of handed-on window outputs alive at once: 1 when the slab axis is MONAI's
outermost (X: a slab reads the windows it was handed before it makes those it hands
on), 2 otherwise (overlap < 0.5). The slab is the largest whose accumulator stays
within ``DEFAULT_STITCH_LIMIT_MB`` and whose run fits the free memory.

``traced(B)`` is the peak of the bytes of tensors alive during one forward pass of the
network over a window batch, found by running that forward pass on PyTorch's meta
device (shapes only: no data, no arithmetic, no memory) and following each tensor's
lifetime, plus each convolution's work buffer under PyTorch's CPU rule (the im2col
columns of ``slow_conv3d`` and ``slow_conv_transpose3d``, an output-sized reorder for
oneDNN). The factor 1.25 and the 96 MiB (allocator slack and the first call's one-time
buffers) were calibrated against the resident-memory peak of the first forward pass of
eight MONAI UNets in fresh processes on the CPU (``benchmarks/
bench_segmentation_inference.py --sections calibration`` repeats it): over widths
8–256, 2–10 output channels, 0–2 residual units, batches 1–2 and ROIs 64³ and
96×96×64, measured / traced lay between 1.00 and 2.60 in four runs (the high end a
deep network whose fixed costs dominate; first calls vary by tens of MB from run to
run), and measured − 1.25·traced never exceeded 78 MiB (charge / measured ≥ 1.12 in
the last run). On CUDA the same formula is used without the fixed allowance (the CUDA
context lies outside the free memory it is compared with); not calibrated there (no
GPU here), it is conservative because AMP halves the activations. A network that
cannot be traced on the meta device is charged ``FALLBACK_ACTIVATION_BYTES_PER_VOXEL`` per window voxel.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import os
import re
import subprocess
import sys
import time
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from monai.inferers import sliding_window_inference
from scipy import ndimage

from ImagInfoExtension.geometry import ImageGrid
from ImagInfoExtension.progress import ProgressCallback
from ImagInfoExtension.segmentation.catalogue import InferenceSettings, ModelEntry, Postprocessing, Preprocessing
from ImagInfoExtension.segmentation.space import Reorientation, normalise_intensity, reorientation

MIB = 2**20
#: The slab accumulator (float outputs and count map) is kept below this by default, whatever the free memory,
#: so a 512×512×400 CT with a 10-channel network peaks well under 8 GB.
DEFAULT_STITCH_LIMIT_MB = 2048.0
#: Share of the free memory a run may plan to use (the rest absorbs the estimate's error and other programs).
MEMORY_SAFETY_FRACTION = 0.9
#: Calibrated factor on the traced activation peak (see the module docstring).
ACTIVATION_FACTOR = 1.25
#: Fixed CPU allowance per run for allocator slack and one-time buffers of the first forward pass.
ACTIVATION_OVERHEAD_CPU_BYTES = 96 * MIB
#: Activation bytes charged per window voxel (and batch item) for a network that cannot be traced on the meta device.
FALLBACK_ACTIVATION_BYTES_PER_VOXEL = 1024
#: Voxels per decision chunk: bounds the int64/probability transients of argmax and thresholds.
DECISION_CHUNK_VOXELS = 2**22
#: DICOM modality codes and the names people also give them.
MODALITY_ALIASES = {"PET": "PT", "MRI": "MR", "CBCT": "CT", "ULTRASOUND": "US"}


class InsufficientMemoryError(MemoryError):
    """A run refused before it starts because it would not fit in memory; the message gives the estimate and fix.

    Attributes
    ----------
    estimate : MemoryEstimate
        The smallest plan found (the fewest bytes the run could use).
    """

    def __init__(self, message: str, estimate: MemoryEstimate | None = None) -> None:
        super().__init__(message)
        self.estimate = estimate


# ----------------------------------------------------------------------------- devices


def available_devices() -> list[str]:
    """The devices PyTorch can use here: ``cpu``, then ``cuda:0`` ... and ``mps`` when present."""
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{index}" for index in range(torch.cuda.device_count())]
    if _mps_available():
        devices.append("mps")
    return devices


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def select_device(requested: str | torch.device = "auto") -> torch.device:
    """The torch device a run uses.

    Parameters
    ----------
    requested : str
        ``auto`` (CUDA, else MPS, else CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.

    Raises
    ------
    ValueError
        When the device is unknown or not available here; the message lists the devices
        that are and the fix.
    """
    text = str(requested).strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    match = re.fullmatch(r"(cpu|cuda|mps)(?::(\d+))?", text)
    if match is None or (match.group(2) is not None and match.group(1) != "cuda"):
        raise ValueError(f"unknown device {requested!r}; use auto, cpu, cuda, cuda:N or mps")
    kind, index = match.group(1), match.group(2)
    here = ", ".join(available_devices())
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {text!r} is not available here (available: {here}): PyTorch sees no CUDA GPU. Use "
                "--device auto or cpu, or install a CUDA build of PyTorch (in Slicer: the PyTorch extension's "
                "installer picks the right one) and an NVIDIA driver"
            )
        if index is not None and int(index) >= torch.cuda.device_count():
            raise ValueError(
                f"device {text!r} is not available here (available: {here}); choose one of those CUDA devices"
            )
        return torch.device("cuda", int(index)) if index is not None else torch.device("cuda")
    if kind == "mps":
        if not _mps_available():
            raise ValueError(
                f"device 'mps' is not available here (available: {here}): MPS needs an Apple-silicon Mac with "
                "macOS 12.3 or newer and a PyTorch built with MPS; use --device auto or cpu"
            )
        return torch.device("mps")
    return torch.device("cpu")


def _read_int(path: str) -> int | None:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _cgroup_available() -> int | None:
    """Memory left under this process's cgroup limit (containers), or None when there is no limit."""
    limit = _read_int("/sys/fs/cgroup/memory.max")  # cgroup v2 ('max' when unlimited -> None)
    usage = _read_int("/sys/fs/cgroup/memory.current")
    stat_file = "/sys/fs/cgroup/memory.stat"
    if limit is None:
        limit = _read_int("/sys/fs/cgroup/memory/memory.limit_in_bytes")  # cgroup v1
        usage = _read_int("/sys/fs/cgroup/memory/memory.usage_in_bytes")
        stat_file = "/sys/fs/cgroup/memory/memory.stat"
    if limit is None or usage is None or limit >= 2**60:
        return None
    reclaimable = 0  # the page cache the kernel drops before it kills anything
    try:
        for line in Path(stat_file).read_text().splitlines():
            key, _, value = line.partition(" ")
            if key in ("inactive_file", "total_inactive_file"):
                reclaimable = int(value)
    except (OSError, ValueError):
        pass
    return max(0, limit - usage + reclaimable)


def _system_available() -> int:
    """Free physical memory as the operating system reports it (MemAvailable on Linux)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    if sys.platform == "darwin":
        try:  # free, inactive, speculative and purgeable pages can all be handed out
            text = subprocess.run(["vm_stat"], capture_output=True, text=True, timeout=5, check=True).stdout
            page = int(re.search(r"page size of (\d+) bytes", text).group(1))
            pages = {m.group(1): int(m.group(2)) for m in re.finditer(r"Pages (\w+):\s+(\d+)", text)}
            return page * sum(pages.get(key, 0) for key in ("free", "inactive", "speculative", "purgeable"))
        except (OSError, subprocess.SubprocessError, AttributeError, ValueError):
            pass
    if sys.platform == "win32":
        import ctypes

        class _MemoryStatus(ctypes.Structure):
            _fields_ = [
                ("length", ctypes.c_ulong),
                ("load", ctypes.c_ulong),
                ("total_physical", ctypes.c_ulonglong),
                ("available_physical", ctypes.c_ulonglong),
                ("total_page_file", ctypes.c_ulonglong),
                ("available_page_file", ctypes.c_ulonglong),
                ("total_virtual", ctypes.c_ulonglong),
                ("available_virtual", ctypes.c_ulonglong),
                ("available_extended_virtual", ctypes.c_ulonglong),
            ]

        status = _MemoryStatus()
        status.length = ctypes.sizeof(_MemoryStatus)
        if ctypes.windll.kernel32.GlobalMemoryStatusEx(ctypes.byref(status)):
            return int(status.available_physical)
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 0


def available_memory(device: str | torch.device = "cpu") -> int:
    """Bytes a run can still allocate on ``device``.

    CPU: ``MemAvailable`` of ``/proc/meminfo`` (limited by a container's cgroup), else
    ``vm_stat`` on macOS, ``GlobalMemoryStatusEx`` on Windows, ``os.sysconf`` elsewhere.
    CUDA: ``torch.cuda.mem_get_info`` plus what PyTorch's caching allocator holds unused.
    MPS: the smaller of the CPU's and Metal's recommended working set left.
    """
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + max(cached, 0))
    cpu = _system_available()
    cgroup = _cgroup_available()
    if cgroup is not None:
        cpu = min(cpu, cgroup)
    if device.type == "mps":
        try:
            return int(min(cpu, torch.mps.recommended_max_memory() - torch.mps.driver_allocated_memory()))
        except (AttributeError, RuntimeError):
            return int(cpu)
    return int(cpu)


# ----------------------------------------------------------------------------- input checks


_AXIS_NAMES = ("i (columns)", "j (rows)", "k (slices)")


def normalise_modality(modality: str) -> str:
    """The DICOM modality code of a name (``PET`` -> ``PT``, ``MRI`` -> ``MR``), upper case."""
    code = str(modality).strip().upper()
    return MODALITY_ALIASES.get(code, code)


def check_entry(entry: ModelEntry) -> None:
    """Refuse an entry this engine cannot run (a non-3D network, label values beyond uint8).

    Raises
    ------
    ValueError
    """
    dims = dict(entry.network.args).get("spatial_dims", 3)
    if dims != 3:
        raise ValueError(
            f"{entry.key}: network.args.spatial_dims is {dims}; ImagInfo runs 3D networks only (spatial_dims 3)"
        )
    if len(entry.inference.roi_size) != 3:
        raise ValueError(f"{entry.key}: inference.roi_size must give 3 sizes, got {entry.inference.roi_size}")
    too_large = [label.value for label in entry.labels if not 1 <= label.value <= 255]
    if too_large:
        raise ValueError(f"{entry.key}: label values {too_large} do not fit a uint8 label map (1..255)")


def check_input(image: sitk.Image, entry: ModelEntry, modality: str | None = None) -> list[str]:
    """Refuse an image the model cannot segment; return warnings about one it can.

    Raises
    ------
    ValueError
        A 2D image or a single slice, a 4D image, NaN or infinite intensities, a channel
        count other than ``entry.input_channels``, or a stated ``modality`` other than
        the model's; each message names the problem and its fix.
    """
    dimension = image.GetDimension()
    size = tuple(image.GetSize())
    shape = "×".join(str(n) for n in size)
    if dimension == 2:
        raise ValueError(
            f"the image is 2D ({shape} pixels); {entry.key} is a 3D model and needs a 3D volume. Load the whole "
            "series (the DICOM folder or a 3D NRRD/NIfTI file), not a single slice"
        )
    if dimension != 3:
        raise ValueError(
            f"the image is {dimension}D ({shape}); {entry.key} needs one 3D volume. Extract one volume first "
            "(one time point; several channels go in one vector image)"
        )
    single = [axis for axis in range(3) if size[axis] < 2]
    if single:
        raise ValueError(
            f"the image ({shape} voxels) has a single slice along {_AXIS_NAMES[single[0]]}: it is a 2D image, and "
            f"{entry.key} is a 3D model that needs several slices along every axis. Load the whole series"
        )
    channels = image.GetNumberOfComponentsPerPixel()
    if channels != entry.input_channels:
        if channels > entry.input_channels:
            fix = (
                "select the channel(s) it was trained on, e.g. SimpleITK.VectorIndexSelectionCast(image, 0) for the "
                "first"
            )
        else:
            fix = "compose the channels it needs into one vector image (SimpleITK.Compose) in its training order"
        raise ValueError(
            f"{entry.key} needs {entry.input_channels} input channel(s); this image has {channels} per voxel: {fix}"
        )
    if modality is not None and normalise_modality(modality) != normalise_modality(entry.modality):
        raise ValueError(
            f"{entry.key} is a {entry.modality} model and the input is {normalise_modality(modality)}: segment a "
            f"{entry.modality} image with it, or choose a model made for {normalise_modality(modality)} "
            "(`imaginfo models list` shows each model's modality)"
        )
    view = sitk.GetArrayViewFromImage(image)
    if np.issubdtype(view.dtype, np.floating) or np.issubdtype(view.dtype, np.complexfloating):
        bad = int(view.size - np.count_nonzero(np.isfinite(view)))
        if bad:
            nan = int(np.count_nonzero(np.isnan(view)))
            raise ValueError(
                f"the image has {bad} voxel value(s) that are not numbers ({nan} NaN, {bad - nan} infinite) of "
                f"{view.size}; the model cannot use them. Replace them first (e.g. with the background intensity: "
                "numpy.nan_to_num(array, nan=-1000, posinf=..., neginf=...) for CT) or crop them away"
            )
    return []


# ----------------------------------------------------------------------------- model space


@dataclass(frozen=True)
class ModelGeometry:
    """Where the network's array lies.

    Attributes
    ----------
    reorientation : Reorientation
        The axis permutation and flips from the input grid to the model axes.
    grid : ImageGrid
        The grid of the network's array ``[X, Y, Z]`` (indexed as its i, j, k): the
        reoriented input grid, or that grid resampled to the target spacing.
    resampled : bool
        Whether ``grid`` has another spacing than the input.
    """

    reorientation: Reorientation
    grid: ImageGrid
    resampled: bool

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(X, Y, Z)``: the model-space array's shape."""
        return self.grid.size_ijk


def model_geometry(grid: ImageGrid, preprocessing: Preprocessing) -> ModelGeometry:
    """The model-space grid of an input grid, as MONAI's ``Orientation`` then ``Spacing`` would give it.

    No resampling happens when every model axis's spacing is within
    ``spacing_tolerance`` (relative) of ``target_spacing_mm``. Otherwise the grid keeps
    the first voxel centre and the axes, takes the target spacing, and has
    ``round((n - 1)·spacing / target) + 1`` voxels per axis (MONAI's
    ``compute_shape_offset`` without ``scale_extent``).
    """
    space = reorientation(grid, preprocessing.orientation)
    model = space.model_grid
    target = preprocessing.target_spacing_mm
    if target is None or all(
        abs(s - t) <= preprocessing.spacing_tolerance * t for s, t in zip(model.spacing_mm, target)
    ):
        return ModelGeometry(space, model, False)
    size = tuple(int(np.round((n - 1) * s / t)) + 1 for n, s, t in zip(model.size_ijk, model.spacing_mm, target))
    resampled = ImageGrid(size, tuple(float(t) for t in target), model.origin_mm, model.direction)
    return ModelGeometry(space, resampled, True)


def _sitk_on(array_xyz: np.ndarray, grid: ImageGrid) -> sitk.Image:
    """A model-space array ``[X, Y, Z]`` as a SimpleITK image on ``grid`` (whose i, j, k are X, Y, Z)."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(array_xyz.T))
    image.SetSpacing(grid.spacing_mm)
    image.SetOrigin(grid.origin_mm)
    image.SetDirection(grid.direction)
    return image


def _resample(array_xyz: np.ndarray, source: ImageGrid, target: ImageGrid, interpolator: int) -> np.ndarray:
    """Resample a model-space array through physical coordinates onto ``target`` (edges extend the nearest voxel)."""
    resampler = sitk.ResampleImageFilter()
    resampler.SetSize(target.size_ijk)
    resampler.SetOutputSpacing(target.spacing_mm)
    resampler.SetOutputOrigin(target.origin_mm)
    resampler.SetOutputDirection(target.direction)
    resampler.SetInterpolator(interpolator)
    resampler.SetDefaultPixelValue(0)
    # The target's outermost centres may lie a fraction of a voxel beyond the source's (rounding of its size).
    resampler.SetUseNearestNeighborExtrapolator(True)
    result = resampler.Execute(_sitk_on(array_xyz, source))
    return np.ascontiguousarray(sitk.GetArrayViewFromImage(result).T)


def prepare_input(image: sitk.Image, entry: ModelEntry, geometry: ModelGeometry | None = None) -> torch.Tensor:
    """The network's input: a float32 tensor ``[1, C, X, Y, Z]`` in model space.

    Axes permuted and flipped to the entry's orientation, resampled linearly to its
    target spacing when needed, intensities clipped and scaled.
    """
    geometry = geometry or model_geometry(ImageGrid.from_sitk(image), entry.preprocessing)
    intensity = entry.preprocessing.intensity
    view = sitk.GetArrayViewFromImage(image)
    channels = []
    for channel in range(image.GetNumberOfComponentsPerPixel()):
        array = view if view.ndim == 3 else view[..., channel]
        model = geometry.reorientation.to_model(array)
        if geometry.resampled:
            model = _resample(
                model.astype(np.float32, copy=False), geometry.reorientation.model_grid, geometry.grid, sitk.sitkLinear
            )
        channels.append(
            normalise_intensity(
                model, intensity.clip_min, intensity.clip_max, intensity.normalisation, intensity.mean, intensity.sd
            )
        )
        del model
    stacked = channels[0][None] if len(channels) == 1 else np.stack(channels)
    return torch.from_numpy(np.ascontiguousarray(stacked, dtype=np.float32))[None]


# ----------------------------------------------------------------------------- slabs


def window_starts(size: int, roi: int, overlap: float) -> tuple[int, ...]:
    """The first voxels of MONAI's sliding windows along one axis (``dense_patch_slices`` of MONAI 1.x).

    An axis shorter than the ROI is padded by MONAI to the ROI and holds one window.
    """
    extent = max(size, roi)
    interval = roi if roi == extent else max(int(roi * (1 - overlap)), 1)
    count = next((d + 1 for d in range(math.ceil(extent / interval)) if d * interval + roi >= extent), 1)
    return tuple(d * interval - max(d * interval + roi - extent, 0) for d in range(count))


@dataclass(frozen=True)
class Slab:
    """One slab: its windows along the slab axis, the voxels it reads and those it gives.

    Attributes
    ----------
    windows : tuple of int
        ``(first, last)`` indices into :attr:`SlabPlan.starts` of its windows.
    read : tuple of int
        ``[start, stop)`` voxels along the slab axis passed to MONAI.
    owned : tuple of int
        ``[start, stop)`` voxels along the slab axis whose windows all lie in this slab.
    """

    windows: tuple[int, int]
    read: tuple[int, int]
    owned: tuple[int, int]


@dataclass(frozen=True)
class SlabPlan:
    """How a model-space volume is stitched: slabs along one axis on MONAI's window grid.

    Attributes
    ----------
    shape : tuple of int
        ``(X, Y, Z)``.
    padded_shape : tuple of int
        The shape MONAI stitches (axes shorter than the ROI are padded to it).
    axis : int
        The slab axis (0, 1, 2 = X, Y, Z).
    starts : tuple of int
        MONAI's window starts along the slab axis.
    slabs : tuple of Slab
    windows : int
        The number of windows over the whole volume (each runs once).
    windows_per_plane : int
        Windows sharing one start along the slab axis.
    shared : int
        The most blocks of window outputs held for a later slab at once (a block: the
        outputs of the windows at one start along the slab axis).
    """

    shape: tuple[int, int, int]
    padded_shape: tuple[int, int, int]
    axis: int
    starts: tuple[int, ...]
    slabs: tuple[Slab, ...]
    windows: int
    windows_per_plane: int
    shared: int

    @property
    def slab_voxels(self) -> int:
        """Voxels of the largest slab as MONAI holds it (padded cross-section)."""
        cross = math.prod(n for a, n in enumerate(self.padded_shape) if a != self.axis)
        return cross * max(max(s.read[1] - s.read[0], 1) for s in self.slabs)

    @property
    def owned_voxels(self) -> int:
        """Voxels of the largest owned part of a slab (unpadded)."""
        cross = math.prod(n for a, n in enumerate(self.shape) if a != self.axis)
        return cross * max(s.owned[1] - s.owned[0] for s in self.slabs)


def plan_slabs(
    shape_xyz: Sequence[int], settings: InferenceSettings, starts_per_slab: int | None = None, axis: int | None = None
) -> SlabPlan:
    """Cut a model-space volume into slabs that reproduce one plain sliding-window pass.

    Parameters
    ----------
    shape_xyz : sequence of int
        The model-space shape.
    settings : InferenceSettings
        ROI and overlap.
    starts_per_slab : int, optional
        Window starts along the slab axis per slab; None puts the whole volume in one
        slab. Raised to the smallest that still lets every voxel's windows lie in one slab.
    axis : int, optional
        The slab axis; by default the one with the most window starts, of those the
        longest, of those the first (:func:`slab_axis`).

    Notes
    -----
    A slab reads the voxels of consecutive MONAI window starts ``g_p ... g_q`` along the
    axis, ``[g_p, g_q + roi)``; MONAI's own window grid on that slab is then exactly
    those global windows. A voxel belongs to the first slab holding every window that
    covers it, so its blended value is the same sum, with the same weights, in the same
    order as in one pass over the whole volume.
    """
    shape = tuple(int(n) for n in shape_xyz)
    roi = settings.roi_size
    per_axis = [window_starts(n, r, settings.overlap) for n, r in zip(shape, roi)]
    padded = tuple(max(n, r) for n, r in zip(shape, roi))
    if axis is None:
        axis = slab_axis(shape, settings)
    starts = per_axis[axis]
    count = len(starts)
    windows = math.prod(len(s) for s in per_axis)
    per_plane = windows // count
    size, width = shape[axis], roi[axis]
    if count == 1:
        slab = Slab((0, 0), (0, size), (0, size))
        return SlabPlan(shape, padded, axis, starts, (slab,), windows, per_plane, 0)
    voxels = np.arange(size)
    first = np.searchsorted(np.asarray(starts) + width, voxels, side="right")  # first window covering each voxel
    last = np.searchsorted(np.asarray(starts), voxels, side="right") - 1  # last window covering each voxel
    run = int((last - first).max()) + 1
    per_slab = count if starts_per_slab is None else min(count, max(int(starts_per_slab), run))
    if per_slab >= count:
        groups = [(0, count - 1)]
    else:
        step = per_slab - run + 1
        firsts = list(range(0, count - per_slab + 1, step))
        if firsts[-1] + per_slab < count:
            firsts.append(count - per_slab)
        groups = [(p, p + per_slab - 1) for p in firsts]
    owner = np.full(size, -1)
    for number in range(len(groups) - 1, -1, -1):  # the first slab holding all of a voxel's windows owns it
        p, q = groups[number]
        owner[(first >= p) & (last <= q)] = number
    assert (owner >= 0).all(), "slab plan leaves voxels without a slab"
    slabs = []
    for number, (p, q) in enumerate(groups):
        mine = np.flatnonzero(owner == number)
        if mine.size:
            slabs.append(Slab((p, q), (starts[p], starts[q] + width), (int(mine[0]), int(mine[-1]) + 1)))
    # MONAI runs windows with the first axis outermost: along X, a slab reads its handed-on windows before
    # it makes those for the next slab; along another axis both sets are in use at once.
    held = _peak_blocks(slabs, _holders(slabs, count), sequential=axis == 0)
    return SlabPlan(shape, padded, axis, starts, tuple(slabs), windows, per_plane, held)


def slab_axis(shape_xyz: Sequence[int], settings: InferenceSettings) -> int:
    """The axis slabs are cut along: the most window starts, then the longest, then the first."""
    counts = [len(window_starts(int(n), r, settings.overlap)) for n, r in zip(shape_xyz, settings.roi_size)]
    return max(range(3), key=lambda a: (counts[a], int(shape_xyz[a]), -a))


def _peak_blocks(slabs: Sequence[Slab], holders: Sequence[tuple[int, int]], sequential: bool) -> int:
    """The most blocks of handed-on window outputs alive at once (see :class:`_WindowRunner`)."""
    alive: set[int] = set()
    peak = 0
    for number, slab in enumerate(slabs):
        indices = range(slab.windows[0], slab.windows[1] + 1)
        made = [j for j in indices if holders[j][0] == number < holders[j][1]]
        done = [j for j in indices if holders[j][0] < number == holders[j][1]]
        if sequential:
            for j in indices:
                if j in made:
                    alive.add(j)
                peak = max(peak, len(alive))
                if j in done:
                    alive.discard(j)
        else:
            alive.update(made)
            peak = max(peak, len(alive))
            alive.difference_update(done)
    return peak


def _holders(slabs: Sequence[Slab], count: int) -> list[tuple[int, int]]:
    """For each window start along the slab axis: the first and the last slab that uses it."""
    result = []
    for index in range(count):
        numbers = [n for n, s in enumerate(slabs) if s.windows[0] <= index <= s.windows[1]] or [-1]
        result.append((min(numbers), max(numbers)))
    return result


# ----------------------------------------------------------------------------- memory


try:  # PyTorch's hook for following every operation of a forward pass (private, stable since 1.13)
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten
except ImportError:  # pragma: no cover  (very old PyTorch: the fallback charge applies)
    TorchDispatchMode = None


def _convolution_work_bytes(name: str, args: tuple, output: torch.Tensor) -> int:
    """The work buffer PyTorch's CPU kernels allocate for one convolution (ATen's ``use_mkldnn`` rule)."""
    x, weight = args[0], args[1]
    if not (isinstance(x, torch.Tensor) and isinstance(weight, torch.Tensor)) or x.dim() < 4:
        return 0
    kernel = math.prod(weight.shape[2:])
    transposed = "transpose" in name or (name.startswith("aten.convolution") and bool(args[6]))
    if transposed:  # slow_conv_transpose: columns of (C_out·k) × input voxels, one sample at a time
        return weight.shape[1] * kernel * math.prod(x.shape[2:]) * x.element_size()
    stride = args[3] if len(args) > 3 else 1
    dilation = args[5] if len(args) > 5 else 1
    groups = (args[8] if name.startswith("aten.convolution") else args[6]) if len(args) > 6 else 1
    strided = any(s != 1 for s in (stride if isinstance(stride, Sequence) else [stride]))
    dilated = any(d != 1 for d in (dilation if isinstance(dilation, Sequence) else [dilation]))
    n = x.shape[0]
    onednn = (
        strided or dilated or n >= 16 or weight.shape[-1] != 1 or weight.shape[-2] != 1 or torch.get_num_threads() > 1
    ) and (groups > 1 or (weight.shape[-1] > 3 and weight.shape[-2] > 3) or n > 1 or math.prod(x.shape[:4]) > 20480)
    if onednn:  # a reorder of the output to and from oneDNN's blocked layout
        return output.numel() * output.element_size()
    return n * weight.shape[1] * kernel * math.prod(output.shape[2:]) * x.element_size()  # slow_conv3d's im2col


if TorchDispatchMode is not None:

    class _LiveBytes(TorchDispatchMode):
        """Follows the bytes of tensors alive during a forward pass on the meta device, and their peak."""

        def __init__(self) -> None:
            super().__init__()
            self.live = 0
            self.peak = 0

        def _free(self, nbytes: int) -> None:
            self.live -= nbytes

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            output = func(*args, **(kwargs or {}))
            inputs = {id(t) for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
            for tensor in tree_flatten(output)[0]:
                if isinstance(tensor, torch.Tensor) and id(tensor) not in inputs and not tensor._is_view():
                    nbytes = tensor.numel() * tensor.element_size()
                    self.live += nbytes
                    weakref.finalize(tensor, self._free, nbytes)
            name = str(func)
            work = 0
            if name.startswith(("aten.conv", "aten.convolution")) and isinstance(output, torch.Tensor):
                work = _convolution_work_bytes(name, args, output)
            self.peak = max(self.peak, self.live + work)
            return output


def traced_activation_bytes(network: torch.nn.Module, batch_shape: Sequence[int]) -> int:
    """Peak bytes alive during one forward pass of ``network`` over a batch, traced on the meta device.

    The network is copied to the meta device (shapes only: nothing is computed and no
    memory is taken); the trace counts every tensor the forward pass creates for as
    long as it lives, plus each convolution's work buffer (see the module docstring).

    Raises
    ------
    RuntimeError
        When the network cannot run on the meta device (TorchScript, custom kernels).
    """
    if TorchDispatchMode is None:
        raise RuntimeError("this PyTorch cannot trace on the meta device")
    if isinstance(network, torch.jit.ScriptModule):
        raise RuntimeError("TorchScript networks cannot be traced on the meta device")
    meta = network if _on_meta(network) else copy.deepcopy(network).to("meta")
    batch = torch.empty(tuple(batch_shape), device="meta")  # the window batch is charged apart from the trace
    tracer = _LiveBytes()
    try:
        with torch.inference_mode(), tracer:
            output = meta(batch)
            del output
    except Exception as error:  # noqa: BLE001  (any failure on meta means: not traceable)
        raise RuntimeError(f"the network cannot be traced on the meta device: {error}") from error
    return int(tracer.peak)


def _on_meta(network: torch.nn.Module) -> bool:
    tensors = [*network.parameters(), *network.buffers()]
    return bool(tensors) and all(t.is_meta for t in tensors)


@functools.lru_cache(maxsize=64)
def _traced_spec_bytes(class_name: str, args_json: str, batch_shape: tuple[int, ...]) -> int:
    try:
        from ImagInfoExtension.segmentation.weights import network_class
    except ImportError:  # pragma: no cover  (weights.py absent)
        from monai.networks import nets

        def network_class(name: str) -> type:
            return getattr(nets, name)

    with torch.device("meta"):
        network = network_class(class_name)(**json.loads(args_json)).eval()
    return traced_activation_bytes(network, batch_shape)


def activation_bytes(
    entry: ModelEntry, device: str | torch.device = "cpu", network: torch.nn.Module | None = None
) -> tuple[int, str]:
    """The calibrated memory one window batch takes in the network, and how it was found.

    Returns
    -------
    bytes : int
        ``ACTIVATION_FACTOR·traced + overhead`` plus the batch's input and output.
    source : str
        ``traced`` or ``fallback`` (``FALLBACK_ACTIVATION_BYTES_PER_VOXEL``).
    """
    settings = entry.inference
    window = math.prod(settings.roi_size)
    batch_shape = (settings.sw_batch_size, entry.input_channels, *settings.roi_size)
    traced, source = None, "traced"
    try:
        if entry.network.format == "monai" and entry.network.class_name:
            args = json.dumps(dict(entry.network.args), sort_keys=True)
            traced = _traced_spec_bytes(entry.network.class_name, args, batch_shape)
        elif network is not None:
            traced = traced_activation_bytes(network, batch_shape)
    except Exception:  # noqa: BLE001  (an untraceable network is charged the fallback)
        traced = None
    if traced is None:
        traced = FALLBACK_ACTIVATION_BYTES_PER_VOXEL * settings.sw_batch_size * window
        source = "fallback"
    overhead = ACTIVATION_OVERHEAD_CPU_BYTES if torch.device(device).type != "cuda" else 0
    buffers = 4 * settings.sw_batch_size * window * (entry.input_channels + entry.output_channels)
    return int(ACTIVATION_FACTOR * traced + overhead + buffers), source


@dataclass(frozen=True)
class MemoryEstimate:
    """What a run needs, in bytes, where it runs, and how the volume is stitched.

    Attributes
    ----------
    model_shape : tuple of int
        ``(X, Y, Z)``.
    device : str
        Where the network runs.
    stitch_device : str
        Where MONAI stitches the windows (``device`` or ``cpu``).
    placement : str
        ``device`` (all on the accelerator), ``windows`` (windows on the accelerator,
        stitching on the CPU) or ``cpu``.
    input_bytes, preprocessing_bytes, stitching_bytes, cache_bytes, activation_bytes, labels_bytes : int
        The terms of the module docstring's memory model.
    cpu_bytes : int
        The CPU peak: the largest of the preprocessing, inference and postprocessing phases.
    device_bytes : int
        The accelerator's peak (0 on the CPU).
    slab_axis, slab_count, slab_voxels, windows : int
        The slab plan: axis, number of slabs, voxels of the largest, windows in all.
    starts_per_slab : int or None
        The slab size in window starts (:func:`plan_slabs`; None = one slab).
    activation_source : str
        ``traced`` or ``fallback``.
    available_cpu_bytes, available_device_bytes : int or None
        The memory the run may use (free memory × safety fraction, or the limit), when compared.
    """

    model_shape: tuple[int, int, int]
    device: str
    stitch_device: str
    placement: str
    input_bytes: int
    preprocessing_bytes: int
    stitching_bytes: int
    cache_bytes: int
    activation_bytes: int
    labels_bytes: int
    cpu_bytes: int
    device_bytes: int
    slab_axis: int
    slab_count: int
    slab_voxels: int
    windows: int
    starts_per_slab: int | None = None
    activation_source: str = "traced"
    available_cpu_bytes: int | None = None
    available_device_bytes: int | None = None

    @property
    def cpu_mb(self) -> float:
        return self.cpu_bytes / MIB

    @property
    def device_mb(self) -> float:
        return self.device_bytes / MIB

    def describe(self) -> str:
        """One line: the peaks and their terms in MB."""
        terms = (
            f"input {self.input_bytes / MIB:.0f}, preprocessing {self.preprocessing_bytes / MIB:.0f}, "
            f"stitching {self.stitching_bytes / MIB:.0f} ({self.slab_count} slab(s)), window cache "
            f"{self.cache_bytes / MIB:.0f}, network per window batch {self.activation_bytes / MIB:.0f}, labels "
            f"{self.labels_bytes / MIB:.0f} MB"
        )
        where = f"CPU peak {self.cpu_mb:.0f} MB"
        if self.placement != "cpu":
            where += f", {self.device} peak {self.device_mb:.0f} MB ({self.placement})"
        return f"{where}: {terms}"

    def to_json(self) -> dict:
        return {key: (list(value) if isinstance(value, tuple) else value) for key, value in self.__dict__.items()}


def estimate_memory(
    model_shape_xyz: Sequence[int],
    entry: ModelEntry,
    device: str | torch.device = "cpu",
    *,
    placement: str | None = None,
    starts_per_slab: int | None = None,
    input_shape_ijk: Sequence[int] | None = None,
    input_itemsize: int = 4,
    resampled: bool | None = None,
    network: torch.nn.Module | None = None,
) -> MemoryEstimate:
    """The memory a run needs under one plan (see the module docstring for the model).

    Parameters
    ----------
    model_shape_xyz : sequence of int
        The model-space shape (after resampling).
    entry : ModelEntry
    device : str or torch.device
        Where the network runs.
    placement : {'device', 'windows', 'cpu'}, optional
        Everything on ``device``, windows there and stitching on the CPU, or all on the
        CPU; by default ``cpu`` for a CPU device and ``device`` otherwise.
    starts_per_slab : int, optional
        The slab size in window starts (see :func:`plan_slabs`); None = one slab.
    input_shape_ijk : sequence of int, optional
        The input grid's size (default: as many voxels as the model space).
    input_itemsize : int
        Bytes per voxel and channel of the input image (2 for int16 CT).
    resampled : bool, optional
        Whether the input is resampled to the model grid (default: when the voxel counts differ).
    network : torch.nn.Module, optional
        Traced when the entry does not name a MONAI class.
    """
    device = torch.device(device)
    placement = placement or ("cpu" if device.type == "cpu" else "device")
    if placement not in ("device", "windows", "cpu"):
        raise ValueError(f"placement {placement!r}: choose device, windows or cpu")
    run_device = torch.device("cpu") if placement == "cpu" else device
    stitch_device = run_device if placement == "device" else torch.device("cpu")
    shape = tuple(int(n) for n in model_shape_xyz)
    volume = math.prod(shape)
    volume_in = math.prod(input_shape_ijk) if input_shape_ijk is not None else volume
    c_in, c_out = entry.input_channels, entry.output_channels
    plan = plan_slabs(shape, entry.inference, starts_per_slab)
    window = math.prod(entry.inference.roi_size)

    resampled = volume != volume_in if resampled is None else resampled
    input_bytes = 4 * c_in * volume
    # prepare_input per channel: the reoriented copy, then normalise_intensity's two float32 arrays (numpy reuses
    # the temporary of `(x - a) / b`); resampling adds a float32 copy, its transpose and SimpleITK's image of the
    # input, and the resampled image and its transpose. Earlier channels wait as float32; several are stacked.
    channel = input_itemsize * volume_in + 8 * volume
    if resampled:
        channel = max(input_itemsize * volume_in + 12 * volume_in + 4 * volume, 12 * volume)
    preprocessing = 4 * (c_in - 1) * volume + channel + (input_bytes if c_in > 1 else 0)
    padding_copy = 4 * c_in * plan.slab_voxels if plan.padded_shape != shape else 0
    decision_voxels = min(plan.owned_voxels, DECISION_CHUNK_VOXELS)
    per_decision = 9 if entry.postprocessing.decision == "argmax" else 4 * c_out + 10
    stitching = 4 * (c_out + 1) * plan.slab_voxels + padding_copy + per_decision * decision_voxels
    cache = 4 * c_out * window * plan.windows_per_plane * plan.shared
    activations, source = activation_bytes(entry, run_device, network)
    post = entry.postprocessing
    # The model-space labels, int32 components when postprocessing asks for them, and the way back: SimpleITK's
    # copy and the resampled labels (and its transpose) when resampled, the reordered copy and the output image.
    labels = volume + (4 * volume if post.largest_component or post.min_component_volume_ml > 0 else 0)
    labels += 2 * volume_in + (volume + 2 * volume_in if resampled else 0)

    on_cpu_inference = volume  # the labels, written slab by slab
    on_device = 0
    if placement == "cpu":
        on_cpu_inference += input_bytes + stitching + cache + activations
    elif placement == "windows":
        on_cpu_inference += input_bytes + stitching + cache
        on_device = activations
    else:
        on_cpu_inference += input_bytes  # the tensor is built on the CPU first
        on_device = input_bytes + stitching + cache + activations
    cpu = max(preprocessing, on_cpu_inference, labels)
    return MemoryEstimate(
        model_shape=shape,
        device=str(run_device),
        stitch_device=str(stitch_device),
        placement=placement,
        input_bytes=int(input_bytes),
        preprocessing_bytes=int(preprocessing),
        stitching_bytes=int(stitching),
        cache_bytes=int(cache),
        activation_bytes=int(activations),
        labels_bytes=int(labels),
        cpu_bytes=int(cpu),
        device_bytes=int(on_device),
        slab_axis=plan.axis,
        slab_count=len(plan.slabs),
        slab_voxels=plan.slab_voxels,
        windows=plan.windows,
        starts_per_slab=None if len(plan.slabs) == 1 else starts_per_slab,
        activation_source=source,
    )


def _slab_sizes(model_shape_xyz: Sequence[int], settings: InferenceSettings) -> list[int | None]:
    """Candidate ``starts_per_slab``, largest first (None = one slab)."""
    shape = tuple(int(n) for n in model_shape_xyz)
    axis = slab_axis(shape, settings)
    count = len(window_starts(shape[axis], settings.roi_size[axis], settings.overlap))
    return [None, *range(count - 1, 1, -1)] if count > 2 else [None]


def plan_memory(
    model_shape_xyz: Sequence[int],
    entry: ModelEntry,
    device: str | torch.device = "cpu",
    *,
    memory_limit_mb: float | None = None,
    input_shape_ijk: Sequence[int] | None = None,
    input_itemsize: int = 4,
    resampled: bool | None = None,
    network: torch.nn.Module | None = None,
    available_cpu: int | None = None,
    available_device: int | None = None,
    stitch_limit_mb: float | None = None,
) -> MemoryEstimate:
    """Choose where a run goes and how large its slabs are, before anything runs.

    On an accelerator: everything there when it fits, else the windows there and the
    stitching on the CPU, else the CPU. Within a placement, the largest slab whose
    accumulator stays within ``stitch_limit_mb`` and whose peaks fit.

    Parameters
    ----------
    memory_limit_mb : float, optional
        The most memory the run may use on any device (default: the free memory ×
        ``MEMORY_SAFETY_FRACTION``).
    available_cpu, available_device : int, optional
        Free bytes (default: :func:`available_memory`).

    stitch_limit_mb : float, optional
        The most a slab's accumulator may take (default ``DEFAULT_STITCH_LIMIT_MB``).

    Raises
    ------
    InsufficientMemoryError
        When even the smallest slab on the CPU does not fit; the message gives the
        estimate, the free memory and the fix.
    """
    device = torch.device(device)
    stitch_limit_mb = DEFAULT_STITCH_LIMIT_MB if stitch_limit_mb is None else float(stitch_limit_mb)
    limit = None if memory_limit_mb is None else float(memory_limit_mb) * MIB
    free_cpu = available_memory("cpu") if available_cpu is None else int(available_cpu)
    budget_cpu = int(MEMORY_SAFETY_FRACTION * free_cpu if limit is None else min(limit, free_cpu))
    placements = ["cpu"]
    budget_device = None
    if device.type != "cpu":
        free_device = available_memory(device) if available_device is None else int(available_device)
        budget_device = int(MEMORY_SAFETY_FRACTION * free_device if limit is None else min(limit, free_device))
        placements = ["device", "windows", "cpu"]
    sizes = _slab_sizes(model_shape_xyz, entry.inference)
    smallest = None
    for placement in placements:
        candidates = []
        for size in sizes:
            estimate = estimate_memory(
                model_shape_xyz,
                entry,
                device,
                placement=placement,
                starts_per_slab=size,
                input_shape_ijk=input_shape_ijk,
                input_itemsize=input_itemsize,
                resampled=resampled,
                network=network,
            )
            candidates.append(estimate)
            fits = estimate.cpu_bytes <= budget_cpu and (
                placement == "cpu" or budget_device is None or estimate.device_bytes <= budget_device
            )
            accumulator = estimate.stitching_bytes <= stitch_limit_mb * MIB or size == sizes[-1]
            if fits and accumulator:
                return _with_budget(estimate, budget_cpu, budget_device)
        if placement == "cpu":
            smallest = min(candidates, key=lambda e: e.cpu_bytes)
    smallest = _with_budget(smallest, budget_cpu, budget_device)
    shape = "×".join(str(n) for n in smallest.model_shape)
    stated = f" (the limit given, {memory_limit_mb:g} MB)" if limit is not None else f" of {free_cpu / MIB:.0f} MB free"
    raise InsufficientMemoryError(
        f"{entry.key} on this image (a {shape} volume in model space) needs about {smallest.cpu_mb:.0f} MB of CPU "
        f"memory even in the smallest slabs ({smallest.describe()}), but the run may use only "
        f"{budget_cpu / MIB:.0f} MB{stated}. Nothing was run. Fix: crop the image to the region to segment, use a "
        "model version with a smaller ROI (inference.roi_size) or fewer output channels, free memory by closing "
        "other programs, or run on a machine with more memory",
        smallest,
    )


def _with_budget(estimate: MemoryEstimate, cpu: int, device: int | None) -> MemoryEstimate:
    return replace(estimate, available_cpu_bytes=cpu, available_device_bytes=device)


# ----------------------------------------------------------------------------- sliding window


class _WindowRunner:
    """The predictor MONAI calls: runs the network (AMP on CUDA), counts windows, hands shared windows on."""

    def __init__(
        self,
        network: torch.nn.Module,
        device: torch.device,
        plan: SlabPlan,
        expected_channels: int | None,
        progress: ProgressCallback | None,
        cache_device: torch.device,
    ) -> None:
        self.network = network
        self.device = device
        self.cache_device = cache_device
        self.plan = plan
        self.expected_channels = expected_channels
        self.progress = progress
        self.done = 0
        # The outputs of the windows at one start along the slab axis that a later slab needs, in one block
        # [windows_per_plane, C, *roi] each: one large allocation is returned to the system whole when freed,
        # where thousands of window-sized ones would fragment the allocator's heap and keep the memory.
        self.blocks: dict[int, torch.Tensor] = {}
        self.slots: dict[tuple[int, ...], int] = {}  # a window's place in its plane (its starts on the other axes)
        self.held: set[tuple[int, ...]] = set()
        self.unread: dict[int, int] = {}  # windows of a block its last slab has still to read
        self.slab = 0
        self.offset = 0
        self.index_of = {start: index for index, start in enumerate(plan.starts)}
        self.holders = _holders(plan.slabs, len(plan.starts))

    def begin(self, slab_number: int) -> None:
        self.slab = slab_number
        self.offset = self.plan.slabs[slab_number].read[0]
        for index in [j for j in self.blocks if self.holders[j][1] < slab_number]:  # their last user has finished
            del self.blocks[index]
            self.unread.pop(index, None)
            self.held = {key for key in self.held if self.index_of[key[self.plan.axis]] != index}

    def _slot(self, key: tuple[int, ...]) -> int:
        across = tuple(start for axis, start in enumerate(key) if axis != self.plan.axis)
        return self.slots.setdefault(across, len(self.slots))

    def _hold(self, key: tuple[int, ...], output: torch.Tensor) -> None:
        index = self.index_of[key[self.plan.axis]]
        if index not in self.blocks:
            shape = (self.plan.windows_per_plane, *output.shape)
            self.blocks[index] = torch.empty(shape, dtype=output.dtype, device=self.cache_device)
        self.blocks[index][self._slot(key)].copy_(output)
        self.held.add(key)
        self.unread[index] = self.unread.get(index, 0) + 1

    def _held(self, key: tuple[int, ...]) -> torch.Tensor | None:
        index = self.index_of[key[self.plan.axis]]
        if key not in self.held or self.holders[index][0] >= self.slab:
            return None
        output = self.blocks[index][self._slot(key)]
        if self.holders[index][1] != self.slab:
            return output.clone()  # MONAI scales what it gets in place, and a later slab reads this window again
        output = output.clone()
        self.held.discard(key)
        self.unread[index] -= 1
        if not self.unread[index]:  # the whole block has been read for the last time: free it now
            del self.blocks[index], self.unread[index]
        return output

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda":
            with torch.autocast("cuda", dtype=torch.float16):
                output = self.network(batch)
        else:
            output = self.network(batch)
        if isinstance(output, (tuple, list)):  # deep supervision: the first output is the prediction
            output = output[0]
        elif isinstance(output, dict):
            output = next(iter(output.values()))
        output = output.float()
        if self.expected_channels is not None and output.shape[1] != self.expected_channels:
            raise ValueError(
                f"the network gives {output.shape[1]} output channels; the catalogue entry expects "
                f"{self.expected_channels} (background plus one per label for argmax, one per label for thresholds): "
                "fix network.args or the labels"
            )
        return output

    def __call__(self, windows: torch.Tensor, coordinates: list) -> torch.Tensor:
        axis = self.plan.axis
        keys = []
        for coordinate in coordinates:
            starts = [int(s.start) for s in coordinate[2:]]
            starts[axis] += self.offset
            keys.append(tuple(starts))
        outputs: list[torch.Tensor | None] = [self._held(key) for key in keys]
        todo = [number for number, output in enumerate(outputs) if output is None]
        computed = None
        if todo:
            computed = self._forward(windows if len(todo) == len(keys) else windows[todo])
            for number, output in zip(todo, computed):
                outputs[number] = output
                key = keys[number]
                if self.holders[self.index_of[key[axis]]][1] > self.slab:  # a later slab needs it too
                    self._hold(key, output)
            self.done += len(todo)
            if self.progress is not None:
                self.progress(self.done, self.plan.windows, f"window {self.done} of {self.plan.windows}")
        if len(todo) == len(keys):
            return computed
        return torch.stack([output.to(windows.device) for output in outputs])


def iter_slab_outputs(
    tensor: torch.Tensor,
    network: torch.nn.Module,
    settings: InferenceSettings,
    plan: SlabPlan,
    *,
    sw_device: torch.device | str = "cpu",
    device: torch.device | str = "cpu",
    expected_channels: int | None = None,
    progress: ProgressCallback | None = None,
) -> Iterator[tuple[tuple[int, int], torch.Tensor]]:
    """Blended network outputs slab by slab: ``((start, stop), outputs [C, ...])`` of each slab's owned voxels.

    Each slab runs MONAI's ``sliding_window_inference`` with the entry's settings; the
    outputs are those one call over the whole ``tensor`` would give at those voxels.
    """
    sw_device, device = torch.device(sw_device), torch.device(device)
    runner = _WindowRunner(network, sw_device, plan, expected_channels, progress, device)
    for number, slab in enumerate(plan.slabs):
        runner.begin(number)
        start, stop = slab.read
        with torch.inference_mode():
            outputs = sliding_window_inference(
                tensor.narrow(2 + plan.axis, start, stop - start),
                roi_size=settings.roi_size,
                sw_batch_size=settings.sw_batch_size,
                predictor=runner,
                overlap=settings.overlap,
                mode=settings.blend_mode,
                sigma_scale=settings.sigma_scale,
                padding_mode=settings.padding_mode,
                cval=settings.padding_value,
                sw_device=sw_device,
                device=device,
                with_coord=True,
            )
        owned = slab.owned
        yield owned, outputs[0].narrow(1 + plan.axis, owned[0] - start, owned[1] - owned[0])
        del outputs


def stitch_outputs(
    tensor: torch.Tensor,
    network: torch.nn.Module,
    settings: InferenceSettings,
    *,
    starts_per_slab: int | None = None,
    axis: int | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """The blended outputs ``[1, C, X, Y, Z]`` of the whole volume, stitched in slabs (for checks and small volumes)."""
    plan = plan_slabs(tensor.shape[2:], settings, starts_per_slab, axis)
    result = None
    for (start, stop), outputs in iter_slab_outputs(tensor, network, settings, plan, sw_device=device, device=device):
        if result is None:
            result = torch.empty((outputs.shape[0], *tensor.shape[2:]), dtype=outputs.dtype, device=outputs.device)
        result.narrow(1 + plan.axis, start, stop - start).copy_(outputs)
    return result[None]


def decide_labels(outputs: torch.Tensor, entry: ModelEntry) -> torch.Tensor:
    """uint8 labels of blended network outputs ``[C, ...]`` (any spatial shape), as the entry's postprocessing states.

    Argmax ignores the activation (softmax and sigmoid keep each voxel's channel order):
    channel 0 is the background, channel ``c`` the entry's ``c``-th label; of equal
    outputs the first channel wins, as with ``torch.argmax``. Thresholds
    apply the activation and give each voxel the most probable label at or above its
    threshold (channel ``c`` is the entry's ``c + 1``-th label), else 0.
    """
    post = entry.postprocessing
    values = [label.value for label in entry.labels]
    if post.decision == "argmax":
        # torch.argmax over the outermost dimension is slow on the CPU (0.9 s for 10×250×184×108 on one thread);
        # a running maximum gives the same first-maximum indices in a quarter of the time and a uint8 result.
        best = outputs[0].clone()
        labels = torch.zeros(outputs.shape[1:], dtype=torch.uint8, device=outputs.device)
        for channel, value in enumerate(values, start=1):
            labels.masked_fill_(outputs[channel] > best, value)
            torch.maximum(best, outputs[channel], out=best)
        return labels
    if post.activation == "softmax":
        probabilities = torch.softmax(outputs, dim=0)
    elif post.activation == "sigmoid":
        probabilities = torch.sigmoid(outputs)
    else:
        probabilities = outputs
    thresholds = torch.tensor([post.thresholds[v] for v in values], dtype=probabilities.dtype, device=outputs.device)
    passed = probabilities >= thresholds.reshape(-1, *([1] * (outputs.dim() - 1)))
    best = torch.argmax(torch.where(passed, probabilities, torch.full_like(probabilities, -math.inf)), dim=0)
    table = torch.tensor(values, dtype=torch.uint8, device=outputs.device)
    return torch.where(passed.any(dim=0), table[best], torch.zeros((), dtype=torch.uint8, device=outputs.device))


def sliding_window_labels(
    tensor: torch.Tensor,
    network: torch.nn.Module,
    entry: ModelEntry,
    plan: SlabPlan,
    *,
    sw_device: torch.device | str = "cpu",
    device: torch.device | str = "cpu",
    progress: ProgressCallback | None = None,
) -> np.ndarray:
    """uint8 labels ``[X, Y, Z]`` at model resolution: slab by slab, each decided as soon as it is stitched."""
    labels = np.zeros(plan.shape, dtype=np.uint8)
    axis = plan.axis
    cross = max(1, math.prod(n for a, n in enumerate(plan.shape) if a != axis))
    chunk = max(1, DECISION_CHUNK_VOXELS // cross)
    slabs = iter_slab_outputs(
        tensor,
        network,
        entry.inference,
        plan,
        sw_device=sw_device,
        device=device,
        expected_channels=entry.output_channels,
        progress=progress,
    )
    with torch.inference_mode():
        for (start, stop), outputs in slabs:
            for first in range(0, stop - start, chunk):
                count = min(chunk, stop - start - first)
                decided = decide_labels(outputs.narrow(1 + axis, first, count), entry).cpu().numpy()
                index = [slice(None)] * 3
                index[axis] = slice(start + first, start + first + count)
                labels[tuple(index)] = decided
            del outputs
    return labels


# ----------------------------------------------------------------------------- postprocessing


_FULL_CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)


def postprocess_labels(labels: np.ndarray, postprocessing: Postprocessing, spacing_mm: Sequence[float]) -> np.ndarray:
    """Keep the largest component of the listed labels, then remove components below the minimum volume.

    Components are 26-connected (MONAI's ``KeepLargestConnectedComponent`` default);
    volumes use ``spacing_mm`` (the model grid's). Works in place on ``labels`` (uint8)
    and returns it; removed voxels become background (0).
    """
    keep_largest = set(postprocessing.largest_component)
    minimum_ml = postprocessing.min_component_volume_ml
    if not keep_largest and minimum_ml <= 0:
        return labels
    voxel_ml = float(np.prod(spacing_mm)) / 1000.0
    boxes = ndimage.find_objects(labels)
    for value, box in enumerate(boxes, start=1):
        if box is None or (value not in keep_largest and minimum_ml <= 0):
            continue
        region = labels[box]
        mask = region == value
        components, count = ndimage.label(mask, structure=_FULL_CONNECTIVITY)
        if count == 0:
            continue
        sizes = np.bincount(components.ravel(), minlength=count + 1)
        sizes[0] = 0
        keep = np.ones(count + 1, dtype=bool)
        keep[0] = False
        if value in keep_largest:
            keep[:] = False
            keep[int(np.argmax(sizes))] = True  # ties: the first in raster order
        if minimum_ml > 0:
            keep &= sizes * voxel_ml >= minimum_ml
        region[mask & ~keep[components]] = 0
    return labels


def labels_to_input(labels_xyz: np.ndarray, geometry: ModelGeometry, image: sitk.Image) -> sitk.Image:
    """Model-space labels as a uint8 label map with exactly ``image``'s size, spacing, origin and direction."""
    if geometry.resampled:
        labels_xyz = _resample(labels_xyz, geometry.grid, geometry.reorientation.model_grid, sitk.sitkNearestNeighbor)
    result = sitk.GetImageFromArray(geometry.reorientation.to_input(labels_xyz).astype(np.uint8, copy=False))
    result.SetSpacing(image.GetSpacing())
    result.SetOrigin(image.GetOrigin())
    result.SetDirection(image.GetDirection())
    return result


# ----------------------------------------------------------------------------- the engine


@dataclass
class SegmentationResult:
    """A label map and how it was made.

    Attributes
    ----------
    labels : SimpleITK.Image
        uint8, on the input's grid, labelled as the catalogue entry.
    device : str
        Where the network actually ran (``cpu`` after a fallback).
    runtime_s : float
        Wall time of the call: checks, preprocessing, inference, postprocessing and
        resampling back (and the network's loading when the call loaded it).
    memory : MemoryEstimate
        The plan the run used.
    warnings : list of str
        What the user should know (a GPU that ran out of memory, padding, ...).
    entry : str
        ``id@version`` of the model.
    stitch_device : str
        Where the windows were stitched.
    """

    labels: sitk.Image
    device: str
    runtime_s: float
    memory: MemoryEstimate
    warnings: list[str]
    entry: str
    stitch_device: str = "cpu"


class Segmenter:
    """One model on one device, loaded once, applied to any number of images (one per batch worker).

    Parameters
    ----------
    entry : ModelEntry
    network : torch.nn.Module, optional
        The network; by default loaded (verified) with
        :func:`ImagInfoExtension.segmentation.weights.load_network` at the first call.
    device : str
        ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
    memory_limit_mb : float, optional
        The most memory a run may use on any device.
    """

    def __init__(
        self,
        entry: ModelEntry,
        network: torch.nn.Module | None = None,
        device: str | torch.device = "auto",
        memory_limit_mb: float | None = None,
    ) -> None:
        check_entry(entry)
        self.entry = entry
        self.device = select_device(device)
        self.memory_limit_mb = memory_limit_mb
        self._network = network.eval() if network is not None else None

    @property
    def network(self) -> torch.nn.Module:
        """The network (loaded with its weights verified on first use)."""
        if self._network is None:
            from ImagInfoExtension.segmentation.weights import load_network

            self._network = load_network(self.entry, "cpu").eval()
        return self._network

    def __call__(
        self,
        image: sitk.Image,
        *,
        modality: str | None = None,
        progress: ProgressCallback | None = None,
        memory_limit_mb: float | None = None,
    ) -> SegmentationResult:
        """Segment one image (see :func:`segment_image`)."""
        started = time.perf_counter()
        entry = self.entry
        warnings = check_input(image, entry, modality)
        geometry = model_geometry(ImageGrid.from_sitk(image), entry.preprocessing)
        warnings += _padding_warnings(geometry.shape, entry)
        limit = memory_limit_mb if memory_limit_mb is not None else self.memory_limit_mb
        estimate = plan_memory(
            geometry.shape,
            entry,
            self.device,
            memory_limit_mb=limit,
            **_image_facts(image, geometry),
            network=self._network,
        )
        if estimate.placement == "windows":
            warnings.append(
                f"{self.device} has too little free memory to stitch this volume ({estimate.describe()}): the windows "
                "run there and are stitched on the CPU"
            )
        elif estimate.placement == "cpu" and self.device.type != "cpu":
            warnings.append(
                f"{self.device} has too little free memory even for one window batch "
                f"({estimate.activation_bytes / MIB:.0f} MB): the model runs on the CPU, which is slower"
            )
        tensor = prepare_input(image, entry, geometry)
        network = self.network
        if progress is not None:
            progress(0, estimate.windows, f"{entry.key}: {estimate.windows} windows on {estimate.device}")
        out_of_memory = False
        try:
            labels = _run_inference(tensor, network, entry, estimate, progress)
        except torch.cuda.OutOfMemoryError:
            if torch.device(estimate.device).type != "cuda":
                raise
            out_of_memory = True  # handled below, once this frame no longer holds the GPU tensors
        if out_of_memory:
            network.to("cpu")
            torch.cuda.empty_cache()
            failed = estimate
            estimate = plan_memory(
                geometry.shape,
                entry,
                "cpu",
                memory_limit_mb=limit,
                **_image_facts(image, geometry),
                network=self._network,
            )
            warnings.append(
                f"the GPU ({failed.device}) ran out of memory during the run although the estimate said it would fit "
                f"({failed.describe()}); the GPU cache was freed and the whole run was repeated on the CPU, which is "
                "slower. To stay on the GPU: close other programs using it, or run with --device cpu to skip the try"
            )
            if progress is not None:
                progress(0, estimate.windows, f"{entry.key}: GPU out of memory, repeating on the CPU")
            labels = _run_inference(tensor, network, entry, estimate, progress)
        del tensor
        labels = postprocess_labels(labels, entry.postprocessing, geometry.grid.spacing_mm)
        result = labels_to_input(labels, geometry, image)
        if progress is not None:
            progress(estimate.windows, estimate.windows, f"{entry.key}: done")
        return SegmentationResult(
            labels=result,
            device=estimate.device,
            runtime_s=time.perf_counter() - started,
            memory=estimate,
            warnings=warnings,
            entry=entry.key,
            stitch_device=estimate.stitch_device,
        )


def _image_facts(image: sitk.Image, geometry: ModelGeometry) -> dict:
    """What the memory estimate needs to know of the input: its size, bytes per voxel and channel, resampling."""
    itemsize = sitk.GetArrayViewFromImage(image).itemsize
    return {"input_shape_ijk": image.GetSize(), "input_itemsize": itemsize, "resampled": geometry.resampled}


def _padding_warnings(shape: Sequence[int], entry: ModelEntry) -> list[str]:
    short = [(a, n, r) for a, (n, r) in enumerate(zip(shape, entry.inference.roi_size)) if n < r]
    if not short:
        return []
    what = ", ".join(f"{'XYZ'[a]} has {n} voxels (ROI {r})" for a, n, r in short)
    return [
        f"the image is smaller than the model's window along some axes in model space ({what}); MONAI pads it with "
        f"{entry.inference.padding_mode} padding, so the model sees less context than in training near those faces"
    ]


def _run_inference(
    tensor: torch.Tensor,
    network: torch.nn.Module,
    entry: ModelEntry,
    estimate: MemoryEstimate,
    progress: ProgressCallback | None,
) -> np.ndarray:
    """Labels ``[X, Y, Z]`` of one prepared tensor under a memory plan."""
    run_device = torch.device(estimate.device)
    stitch_device = torch.device(estimate.stitch_device)
    network.to(run_device)
    plan = plan_slabs(tensor.shape[2:], entry.inference, estimate.starts_per_slab)
    source = tensor.to(stitch_device) if estimate.placement == "device" else tensor
    return sliding_window_labels(
        source, network, entry, plan, sw_device=run_device, device=stitch_device, progress=progress
    )


def segment_image(
    image: sitk.Image,
    entry: ModelEntry,
    network: torch.nn.Module | None = None,
    device: str = "auto",
    modality: str | None = None,
    progress: ProgressCallback | None = None,
    memory_limit_mb: float | None = None,
) -> SegmentationResult:
    """Segment one image with one catalogue model.

    Parameters
    ----------
    image : SimpleITK.Image
        A 3D image (a vector image for several channels), any orientation.
    entry : ModelEntry
        The catalogue entry.
    network : torch.nn.Module, optional
        The network; by default its verified weights are loaded.
    device : str
        ``auto`` (CUDA, MPS, CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
    modality : str, optional
        The input's modality, checked against the model's.
    progress : callable, optional
        ``progress(done, total, message)`` over windows; raise
        :class:`~ImagInfoExtension.progress.Cancelled` from it to stop.
    memory_limit_mb : float, optional
        The most memory the run may use on any device.

    Returns
    -------
    SegmentationResult
        ``labels`` has exactly the input's size, spacing, origin and direction.

    Raises
    ------
    ValueError
        Bad input (2D, NaN, channels, modality) or an unavailable device.
    InsufficientMemoryError
        When the run cannot fit in memory (before anything runs).
    """
    return Segmenter(entry, network, device, memory_limit_mb)(image, modality=modality, progress=progress)
