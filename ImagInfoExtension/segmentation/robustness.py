"""How a segmentation model holds up as image quality falls: perturb an image step by step and score it.

An image with its truth is degraded by controlled amounts of

- ``noise_sd_hu``: correlated Gaussian noise of this pixel SD (HU) whose noise power
  spectrum (NPS) is a chosen one: the phantom's (the virtual scanner's reconstruction
  model, :mod:`ImagInfoExtension.phantom.acquisition`), white, or a measured radial
  NPS read from a CSV;
- ``blur_fwhm_mm``: an isotropic Gaussian blur of this FWHM in millimetres, whatever
  the voxel spacing;
- ``dose_mgy``: a lower dose, simulated by inserting the noise that takes the image
  from its dose to this one. Quantum noise variance scales as 1/dose, so the inserted
  SD is ``σ_ref · sqrt(d_ref / d − 1)`` for an image of noise SD ``σ_ref`` at dose
  ``d_ref`` (both stated by the caller);

and each degraded image is segmented by the model and scored against the truth by
the study runner (:func:`ImagInfoExtension.study.runner.run_study`) with the
``segmentation`` measurement plugin (:mod:`ImagInfoExtension.segmentation.plugin`).
The study table's factors are ``noise_sd_hu``, ``blur_fwhm_mm`` (and ``dose_mgy`` when
used) and ``repetition``.

Choices, stated once:

- **Design.** By default each factor is varied alone from the unperturbed baseline
  (noise 0, blur 0, the reference dose): ``1 + Σ (levels − 1)`` conditions, which is
  what a curve of each metric against each factor needs. ``design="grid"`` runs every
  combination instead (interactions; ``Π levels`` conditions). The baseline is always
  among the conditions, whether or not the levels list it.
- **Order.** Blur first, then noise: a scanner's noise is not blurred by the object's
  blur, and noise inserted into an image already carries its NPS.
- **Randomness.** The noise of repetition ``r`` with seed ``s`` is one field drawn from
  ``SeedSequence([s, r])``, scaled to each level's SD (common random numbers): two
  levels differ by their level only, not by a new draw, so a metric's curve against
  severity is not blurred by sampling. Every image is a pure function of (level,
  repetition, seed): a rerun writes the same bytes and the runner's cache holds.
  Conditions without noise are deterministic and run once whatever ``repetitions``.
- **Noise SD.** ``noise_sd_hu`` is the expected pixel SD of the inserted noise (the
  filter is normalised exactly over the image's frequency lattice); the values are
  not clipped, so the inserted noise has exactly that SD even in air.
- **A measured NPS** (CSV ``frequency_per_mm,nps``) is a radial in-plane NPS: it
  shapes each axial slice, and slices are independent (white along the slice
  axis), as a 2D NPS measured by AAPM TG-233's method says nothing about z. It is
  interpolated linearly between its rows and zero outside them.

Perturbed images are written (atomically, and left untouched when a rerun gives the
same bytes) into ``out_dir/series/<series>/image.nrrd``, the folder the runner gives
that series; the plugin's ``segmentation.nrrd`` lands beside it.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.fft
import SimpleITK as sitk

from ImagInfoExtension.io import json_default, write_atomically, write_if_changed, write_image
from ImagInfoExtension.progress import ProgressCallback

log = logging.getLogger(__name__)

#: The perturbations, and the level at which each leaves the image as it is (dose: the reference dose).
NOISE = "noise_sd_hu"
BLUR = "blur_fwhm_mm"
DOSE = "dose_mgy"
PERTURBATIONS = (NOISE, BLUR, DOSE)
DESIGNS = ("one_at_a_time", "grid")
#: NPS choices by name; anything else is a CSV path.
NPS_CHOICES = ("phantom", "white")
#: Reconstruction of the phantom NPS when none is named (``phantom:IR`` names one).
DEFAULT_PHANTOM_RECON = "FBP"
FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
#: Blur padding, in Gaussian SDs: the kernel's weight beyond is below 1e-4.
_BLUR_PADDING_SD = 4.0
IMAGE_FILE = "image.nrrd"
TRUTH_FILE = "truth_labels.nrrd"


# --------------------------------------------------------------------------- noise spectra


@dataclass(frozen=True)
class NoiseSpectrum:
    """The shape of the inserted noise's NPS (its magnitude is set by the SD asked for).

    Attributes
    ----------
    kind : {'phantom', 'white', 'table'}
    recon : str, optional
        For ``phantom``: the reconstruction model whose NPS it is.
    dose_mgy : float, optional
        For ``phantom``: the dose at which its texture is taken (the reference dose).
    frequency_per_mm, nps : tuple of float
        For ``table``: the radial in-plane NPS (any unit; only its shape matters).
    source : str
        Where it came from (``phantom:FBP``, ``white``, the CSV's path).
    """

    kind: str
    recon: str | None = None
    dose_mgy: float | None = None
    frequency_per_mm: tuple[float, ...] = ()
    nps: tuple[float, ...] = ()
    source: str = ""

    def power(self, fk: np.ndarray, fj: np.ndarray, fi: np.ndarray) -> np.ndarray:
        """The unnormalised 3D NPS at broadcastable frequencies (cycles/mm) along k, j, i."""
        shape = np.broadcast_shapes(fk.shape, fj.shape, fi.shape)
        if self.kind == "white":
            return np.ones(shape, dtype=np.float32)
        if self.kind == "phantom":
            from ImagInfoExtension.phantom.acquisition import AcquisitionModel, noise_power_spectrum

            model = AcquisitionModel()
            recon = model.model_for(self.recon)
            return noise_power_spectrum(recon, model.calibration.noise[self.recon], self.dose_mgy, fk, fj, fi)
        radial = np.sqrt(fi.astype(np.float64) ** 2 + fj.astype(np.float64) ** 2)
        in_plane = np.interp(radial, self.frequency_per_mm, self.nps, left=0.0, right=0.0)
        return np.broadcast_to(in_plane, shape).astype(np.float32)

    @property
    def peak_frequency_per_mm(self) -> float | None:
        """Where the radial in-plane NPS peaks (None for white noise)."""
        if self.kind == "white":
            return None
        if self.kind == "phantom":
            from ImagInfoExtension.phantom.acquisition import AcquisitionModel

            return float(AcquisitionModel().model_for(self.recon).nps_peak_at(self.dose_mgy))
        return float(self.frequency_per_mm[int(np.argmax(self.nps))])

    def to_json(self) -> dict:
        return asdict(self)


def noise_spectrum(nps: str | Path | NoiseSpectrum = "phantom") -> NoiseSpectrum:
    """The NPS named by ``nps``.

    Parameters
    ----------
    nps : str, path or NoiseSpectrum
        ``phantom`` (the virtual scanner's FBP texture at its reference dose),
        ``phantom:<recon>`` (``phantom:IR``, ``phantom:DL``), ``white``, or the path of a
        CSV with columns ``frequency_per_mm,nps`` (a radial in-plane NPS).
    """
    if isinstance(nps, NoiseSpectrum):
        return nps
    text = str(nps)
    if text == "white":
        return NoiseSpectrum("white", source="white")
    if text == "phantom" or text.startswith("phantom:"):
        from ImagInfoExtension.phantom.acquisition import REFERENCE_DOSE_MGY, AcquisitionModel

        recon = text.partition(":")[2] or DEFAULT_PHANTOM_RECON
        AcquisitionModel().model_for(recon)  # an unknown reconstruction is named with the known ones
        return NoiseSpectrum("phantom", recon=recon, dose_mgy=REFERENCE_DOSE_MGY, source=f"phantom:{recon}")
    return read_nps_csv(text)


def read_nps_csv(path: str | Path) -> NoiseSpectrum:
    """A radial NPS from a CSV with columns ``frequency_per_mm,nps`` (e.g. ``imaginfo compare``'s curves)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(
            f"NPS {str(path)!r} is neither 'phantom', 'phantom:<recon>', 'white' nor an existing CSV file "
            "with columns frequency_per_mm,nps"
        )
    try:
        table = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not a readable CSV ({error}); give columns frequency_per_mm,nps") from None
    missing = [c for c in ("frequency_per_mm", "nps") if c not in table.columns]
    if missing:
        raise ValueError(f"{path} lacks the column(s) {', '.join(missing)}; an NPS CSV has frequency_per_mm,nps")
    frequency = pd.to_numeric(table["frequency_per_mm"], errors="coerce").to_numpy(float)
    power = pd.to_numeric(table["nps"], errors="coerce").to_numpy(float)
    if len(frequency) < 2 or not (np.isfinite(frequency).all() and np.isfinite(power).all()):
        raise ValueError(f"{path}: the NPS needs at least two rows of finite numbers")
    if (frequency < 0).any() or (np.diff(frequency) <= 0).any():
        raise ValueError(f"{path}: frequency_per_mm must be non-negative and increase from row to row")
    if (power < 0).any() or not (power > 0).any():
        raise ValueError(f"{path}: nps must be non-negative and somewhere positive")
    return NoiseSpectrum(
        "table", frequency_per_mm=tuple(frequency.tolist()), nps=tuple(power.tolist()), source=str(path.resolve())
    )


def _frequencies(shape_kji: Sequence[int], spacing_kji: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Broadcastable frequencies (cycles/mm) of an ``rfftn`` over ``[k, j, i]``."""
    fk = np.fft.fftfreq(shape_kji[0], d=spacing_kji[0]).astype(np.float32)[:, None, None]
    fj = np.fft.fftfreq(shape_kji[1], d=spacing_kji[1]).astype(np.float32)[None, :, None]
    fi = np.fft.rfftfreq(shape_kji[2], d=spacing_kji[2]).astype(np.float32)[None, None, :]
    return fk, fj, fi


def _rfft_weights(n: int) -> np.ndarray:
    """How often each ``rfft`` bin stands in the full spectrum: 1 for 0 (and Nyquist when n is even), else 2."""
    weights = np.full(n // 2 + 1, 2.0)
    weights[0] = 1.0
    if n % 2 == 0:
        weights[-1] = 1.0
    return weights


def unit_noise(
    shape_kji: Sequence[int],
    spacing_kji: Sequence[float],
    spectrum: NoiseSpectrum,
    rng: np.random.Generator,
) -> np.ndarray:
    """Stationary Gaussian noise of expected pixel SD 1 with the NPS ``spectrum`` on this grid.

    White noise filtered by ``sqrt(NPS)``: the pixel variance of unit white noise
    filtered by ``A`` is the mean of ``A²`` over the grid's full frequency lattice,
    which sets the scale exactly (the realisation's SD differs from 1 only by
    sampling).

    Parameters
    ----------
    shape_kji : (int, int, int)
    spacing_kji : (float, float, float)
        Voxel spacing (mm) along k, j, i.
    spectrum : NoiseSpectrum
    rng : numpy.random.Generator

    Returns
    -------
    ndarray of float32, ``[k, j, i]``
    """
    shape_kji = tuple(int(n) for n in shape_kji)
    white = rng.standard_normal(shape_kji, dtype=np.float32)
    if spectrum.kind == "white":
        return white
    power = np.asarray(spectrum.power(*_frequencies(shape_kji, spacing_kji)), dtype=np.float64)
    mean_power = float(np.sum(power * _rfft_weights(shape_kji[2])) / np.prod(shape_kji))
    if not mean_power > 0:
        nyquist = 0.5 / max(float(s) for s in spacing_kji[1:])
        raise ValueError(
            f"the NPS {spectrum.source} has no power below this image's Nyquist frequency ({nyquist:.3g} mm⁻¹); "
            "give an NPS measured on a similar grid"
        )
    transfer = np.sqrt(power / mean_power).astype(np.float32)
    del power
    field_spectrum = scipy.fft.rfftn(white, workers=-1)
    del white
    field_spectrum *= transfer
    return scipy.fft.irfftn(field_spectrum, s=shape_kji, workers=-1).astype(np.float32)


# --------------------------------------------------------------------------- blur and dose


def gaussian_blur(array_kji: np.ndarray, spacing_kji: Sequence[float], fwhm_mm: float) -> np.ndarray:
    """Blur by an isotropic Gaussian of ``fwhm_mm`` (mm), applied as its transfer function.

    The image is padded by mirroring (4 SD of the kernel on each side, so that nothing
    wraps around) and multiplied in Fourier space by ``exp(-2π²σ²|f|²)``, with
    frequencies in cycles/mm: anisotropic voxels get the same blur in millimetres
    along every axis, and a blur narrower than a voxel is applied as exactly as the
    grid can carry it (a sampled kernel of sub-voxel width would not be Gaussian).

    Returns
    -------
    ndarray of float32
    """
    if fwhm_mm < 0 or not math.isfinite(fwhm_mm):
        raise ValueError(f"blur FWHM must be a non-negative number of mm, got {fwhm_mm}")
    array = np.asarray(array_kji, dtype=np.float32)
    if fwhm_mm == 0:
        return array.copy()
    sigma_mm = fwhm_mm / FWHM_PER_SIGMA
    spacing = np.asarray(spacing_kji, dtype=float)
    before = np.ceil(_BLUR_PADDING_SD * sigma_mm / spacing).astype(int)
    padded_shape = [scipy.fft.next_fast_len(int(n + 2 * b), real=True) for n, b in zip(array.shape, before)]
    padding = [(int(b), int(p - n - b)) for n, b, p in zip(array.shape, before, padded_shape)]
    padded = np.pad(array, padding, mode="symmetric")
    fk, fj, fi = _frequencies(padded.shape, spacing)
    transfer = np.exp(np.float32(-2.0 * math.pi**2 * sigma_mm**2) * (fk**2 + fj**2 + fi**2))
    blurred = scipy.fft.irfftn(scipy.fft.rfftn(padded, workers=-1) * transfer, s=padded.shape, workers=-1)
    inside = tuple(slice(b, b + n) for b, n in zip(before, array.shape))
    return np.ascontiguousarray(blurred[inside], dtype=np.float32)


def dose_noise_sd_hu(dose_mgy: float, reference_dose_mgy: float, reference_noise_sd_hu: float) -> float:
    """SD (HU) of the noise that takes an image from ``reference_dose_mgy`` to ``dose_mgy``.

    Quantum noise variance scales as 1/dose: ``σ(d)² = σ_ref² d_ref / d``, so the added
    variance is ``σ_ref² (d_ref / d − 1)``. A dose above the reference would need noise
    taken away, which no insertion can do.
    """
    if not (reference_dose_mgy > 0 and math.isfinite(reference_dose_mgy)):
        raise ValueError(f"the reference dose must be a positive number of mGy, got {reference_dose_mgy}")
    if not (reference_noise_sd_hu >= 0 and math.isfinite(reference_noise_sd_hu)):
        raise ValueError(f"the reference noise SD must be a non-negative number of HU, got {reference_noise_sd_hu}")
    if not (0 < dose_mgy <= reference_dose_mgy * (1 + 1e-9)):
        raise ValueError(
            f"dose {dose_mgy:g} mGy cannot be simulated from an image at {reference_dose_mgy:g} mGy: noise insertion "
            "only lowers the dose; give doses in (0, reference dose]"
        )
    return float(reference_noise_sd_hu * math.sqrt(max(0.0, reference_dose_mgy / dose_mgy - 1.0)))


@dataclass(frozen=True)
class DoseReference:
    """The image's own dose and noise, which ``dose_mgy`` levels are simulated from."""

    dose_mgy: float
    noise_sd_hu: float


def perturb_array(
    array_kji: np.ndarray,
    spacing_kji: Sequence[float],
    noise_sd_hu: float = 0.0,
    blur_fwhm_mm: float = 0.0,
    unit_noise_field: np.ndarray | None = None,
) -> np.ndarray:
    """Blur, then add ``noise_sd_hu`` times a unit-SD noise field (see :func:`unit_noise`)."""
    image = gaussian_blur(array_kji, spacing_kji, blur_fwhm_mm)
    if noise_sd_hu > 0:
        if unit_noise_field is None:
            raise ValueError("noise was asked for without a noise field")
        image += np.float32(noise_sd_hu) * unit_noise_field
    return image


def perturb_image(
    image: sitk.Image,
    noise_sd_hu: float = 0.0,
    blur_fwhm_mm: float = 0.0,
    dose_mgy: float | None = None,
    nps: str | Path | NoiseSpectrum = "phantom",
    dose_reference: DoseReference | None = None,
    repetition: int = 1,
    seed: int = 0,
) -> sitk.Image:
    """One degraded copy of ``image`` (float32, same grid): blurred, then correlated noise added.

    Parameters
    ----------
    image : SimpleITK.Image
    noise_sd_hu : float
        Pixel SD of the inserted noise.
    blur_fwhm_mm : float
        FWHM of the isotropic Gaussian blur.
    dose_mgy : float, optional
        A lower dose: adds the noise of :func:`dose_noise_sd_hu` (needs ``dose_reference``),
        independent of ``noise_sd_hu``'s (the variances add).
    nps : see :func:`noise_spectrum`
    dose_reference : DoseReference, optional
    repetition, seed : int
        The noise field is drawn from ``SeedSequence([seed, repetition])``.
    """
    levels = {NOISE: noise_sd_hu, BLUR: blur_fwhm_mm}
    if dose_mgy is not None:
        levels[DOSE] = dose_mgy
    added_sd = _added_noise_sd(levels, dose_reference)
    array = sitk.GetArrayViewFromImage(image)
    spacing_kji = tuple(image.GetSpacing()[::-1])
    field = None
    if added_sd > 0:
        field = unit_noise(array.shape, spacing_kji, noise_spectrum(nps), _noise_generator(seed, repetition))
    out = sitk.GetImageFromArray(perturb_array(array, spacing_kji, added_sd, blur_fwhm_mm, field))
    out.CopyInformation(image)
    return out


def _noise_generator(seed: int, repetition: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(repetition)]))


def _added_noise_sd(levels: Mapping[str, float], dose_reference: DoseReference | None) -> float:
    """The SD of all inserted noise of a condition: its noise level and its dose's, variances added."""
    variance = float(levels.get(NOISE, 0.0)) ** 2
    if DOSE in levels:
        if dose_reference is None:
            raise ValueError(
                "dose_mgy levels need the image's own dose and noise SD (reference_dose_mgy, reference_noise_sd_hu)"
            )
        variance += dose_noise_sd_hu(float(levels[DOSE]), dose_reference.dose_mgy, dose_reference.noise_sd_hu) ** 2
    return math.sqrt(variance)


# --------------------------------------------------------------------------- the design


def check_perturbations(
    perturbations: Mapping[str, Sequence[float]], dose_reference: DoseReference | None = None
) -> dict[str, list[float]]:
    """The levels of each perturbation, checked, sorted and without repeats.

    Raises
    ------
    ValueError
        Naming the perturbation, the level and the fix.
    """
    if not perturbations:
        raise ValueError(f"no perturbation given; vary some of {', '.join(PERTURBATIONS)}, e.g. noise_sd_hu=0,10,20")
    checked: dict[str, list[float]] = {}
    for name, levels in perturbations.items():
        if name not in PERTURBATIONS:
            raise ValueError(f"unknown perturbation {name!r}; use {', '.join(PERTURBATIONS)}")
        if isinstance(levels, str | bytes) or not isinstance(levels, Sequence | np.ndarray) or len(levels) == 0:
            raise ValueError(f"{name}: give a list of levels, e.g. {name}=0,10,20")
        try:
            values = [float(v) for v in levels]
        except (TypeError, ValueError):
            raise ValueError(f"{name}: levels {list(levels)} are not all numbers") from None
        bad = [v for v in values if not math.isfinite(v) or v < 0]
        if bad:
            raise ValueError(f"{name}: level {bad[0]:g} is not a non-negative number; severity levels are ≥ 0")
        if name == DOSE:
            if dose_reference is None:
                raise ValueError(
                    "dose_mgy levels need the image's own dose and noise SD: give reference_dose_mgy and "
                    "reference_noise_sd_hu (e.g. the acquisition's CTDIvol and the noise SD of a uniform region)"
                )
            for value in values:
                dose_noise_sd_hu(value, dose_reference.dose_mgy, dose_reference.noise_sd_hu)
        checked[name] = sorted(set(values))
    return checked


def neutral_levels(factors: Sequence[str], dose_reference: DoseReference | None) -> dict[str, float]:
    """The level at which each perturbation leaves the image as it is."""
    neutral = {NOISE: 0.0, BLUR: 0.0}
    if DOSE in factors and dose_reference is not None:
        neutral[DOSE] = float(dose_reference.dose_mgy)
    return {f: neutral[f] for f in factors}


def perturbation_design(
    perturbations: Mapping[str, Sequence[float]],
    design: str = "one_at_a_time",
    repetitions: int = 1,
    dose_reference: DoseReference | None = None,
) -> pd.DataFrame:
    """The conditions to run: one row per (condition, repetition).

    Columns ``noise_sd_hu``, ``blur_fwhm_mm`` (always), ``dose_mgy`` (when varied) and
    ``repetition``. See the module docstring for the designs; conditions that insert
    no noise run once.
    """
    if design not in DESIGNS:
        raise ValueError(f"unknown design {design!r}; use {' or '.join(DESIGNS)}")
    if isinstance(repetitions, bool) or not isinstance(repetitions, int | np.integer) or repetitions < 1:
        raise ValueError(f"repetitions must be a whole number ≥ 1, got {repetitions!r}")
    levels = check_perturbations(perturbations, dose_reference)
    factors = [f for f in PERTURBATIONS if f in (NOISE, BLUR) or f in levels]
    neutral = neutral_levels(factors, dose_reference)
    for factor in factors:
        levels[factor] = sorted(set(levels.get(factor, [])) | {neutral[factor]})
    if design == "grid":
        conditions = [dict(zip(factors, values)) for values in itertools.product(*(levels[f] for f in factors))]
    else:
        conditions = [dict(neutral)]
        for factor in factors:
            conditions += [{**neutral, factor: value} for value in levels[factor] if value != neutral[factor]]
    rows = []
    for condition in conditions:
        noisy = _added_noise_sd(condition, dose_reference) > 0
        for repetition in range(1, (repetitions if noisy else 1) + 1):
            rows.append({**condition, "repetition": repetition})
    return pd.DataFrame(rows, columns=[*factors, "repetition"])


# --------------------------------------------------------------------------- the study


@dataclass
class RobustnessResult:
    """What a robustness run produced.

    Attributes
    ----------
    long : DataFrame
        The runner's long table, ``<factors>,radius_mm,metric,value`` (``results_long.csv``).
    summary : DataFrame
        Mean, SD and count over repetitions per (condition, radius, metric) (``robustness_summary.csv``).
    design : DataFrame
        The study table that ran (``study.csv``): the factors and each image's path.
    factors : list of str
        The study's factors (``repetition`` last).
    varied : list of str
        The perturbations given (one plot panel each).
    failures, warnings : DataFrame
        As the runner gives them.
    files : dict of str to Path
    model : dict
        The model's id, version and weights' sha256.
    spectrum : NoiseSpectrum
    notes : list of str
        What was done to the inputs (a truth on another grid resampled onto the image's).
    """

    long: pd.DataFrame
    summary: pd.DataFrame
    design: pd.DataFrame
    factors: list[str]
    varied: list[str]
    failures: pd.DataFrame
    warnings: pd.DataFrame
    files: dict[str, Path] = field(default_factory=dict)
    model: dict = field(default_factory=dict)
    spectrum: NoiseSpectrum | None = None
    notes: list[str] = field(default_factory=list)


def _as_input_type(array: np.ndarray, image: sitk.Image) -> sitk.Image:
    """The perturbed voxels as an image on the input's grid, in its pixel type when that is an integer type.

    A CT stored as whole HU is given back as whole HU (rounded, within the type's
    range), as a scanner would store it; the rounding adds 1/12 HU² of variance.
    """
    source = sitk.GetArrayViewFromImage(image).dtype
    if np.issubdtype(source, np.integer):
        limits = np.iinfo(source)
        array = np.clip(np.rint(array), limits.min, limits.max).astype(source)
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(image)
    return out


def write_perturbed_images(
    image: sitk.Image,
    table: pd.DataFrame,
    paths: Sequence[str | Path],
    nps: str | Path | NoiseSpectrum = "phantom",
    dose_reference: DoseReference | None = None,
    seed: int = 0,
    progress: ProgressCallback | None = None,
) -> None:
    """Write the perturbed image of each design row (:func:`perturbation_design`) to its path.

    One repetition's noise field is drawn once and scaled for each of its levels. A
    file that already holds the same bytes is left untouched (its modification time
    too), so that a rerun finds the runner's cache valid.
    """
    spectrum = noise_spectrum(nps)
    array = sitk.GetArrayViewFromImage(image)
    spacing_kji = tuple(image.GetSpacing()[::-1])
    rows = list(zip(table.to_dict("records"), paths, strict=True))
    done = 0
    for repetition in sorted({row["repetition"] for row, _ in rows}):
        field_ = None
        for row, path in rows:
            if row["repetition"] != repetition:
                continue
            sd = _added_noise_sd(row, dose_reference)
            if sd > 0 and field_ is None:
                field_ = unit_noise(array.shape, spacing_kji, spectrum, _noise_generator(seed, repetition))
            perturbed = _as_input_type(perturb_array(array, spacing_kji, sd, row[BLUR], field_), image)
            write_if_changed(Path(path), lambda p, i=perturbed: write_image(i, p))
            done += 1
            if progress is not None:
                progress(0, len(rows), f"perturbed image {done} of {len(rows)} written")


def run_robustness(
    image: sitk.Image,
    truth: sitk.Image,
    model: object,
    perturbations: Mapping[str, Sequence[float]],
    out_dir: str | Path,
    *,
    nps: str | Path | NoiseSpectrum = "phantom",
    repetitions: int = 1,
    seed: int = 0,
    design: str = "one_at_a_time",
    device: str = "auto",
    reference_dose_mgy: float | None = None,
    reference_noise_sd_hu: float | None = None,
    radii_mm: Sequence[float] | None = None,
    nsd_tolerance_mm: float = 1.0,
    graph_cut: bool = False,
    workers: int | None = None,
    scheduler: str | None = None,
    progress: ProgressCallback | None = None,
) -> RobustnessResult:
    """Degrade ``image`` step by step, segment each level with ``model`` and score it against ``truth``.

    Parameters
    ----------
    image : SimpleITK.Image
        The unperturbed image (HU for CT).
    truth : SimpleITK.Image
        Label map labelled as the model (on any grid that overlaps the image: it is
        resampled onto it by nearest neighbour, with a warning).
    model : str or ModelEntry
        Catalogue ``id`` or ``id@version``, or an entry.
    perturbations : dict of str to list of float
        Levels per perturbation: ``noise_sd_hu`` (HU), ``blur_fwhm_mm`` (mm), ``dose_mgy`` (mGy, ≤ the
        reference dose), e.g. ``{"noise_sd_hu": [0, 10, 20, 40], "blur_fwhm_mm": [0, 0.5, 1, 2]}``.
    out_dir : path
        Gets ``study.csv``, ``truth_labels.nrrd``, ``results_long.csv``, ``robustness_summary.csv``,
        ``robustness.png``/``.svg``, ``robustness_section.html`` (a fragment), ``robustness_report.html``,
        ``provenance.json``, ``warnings.csv``/``failures.csv`` when there are any; ``series/<name>/`` the
        perturbed image and its segmentation; ``cases/`` the runner's cache (a rerun goes on where one stopped).
    nps : str, path or NoiseSpectrum
        See :func:`noise_spectrum` (default the phantom's FBP texture).
    repetitions : int
        Noise realisations per noisy condition.
    seed : int
    design : {'one_at_a_time', 'grid'}
    device : {'auto', 'cpu', 'cuda', 'mps'}
    reference_dose_mgy, reference_noise_sd_hu : float, optional
        The image's dose and noise SD; needed for ``dose_mgy`` levels.
    radii_mm : sequence of float, optional
        Radius of truth label k (the long table keys classes by radius); by default
        those the model's label names state (``vessel r=1 mm``), else the phantom's classes.
    nsd_tolerance_mm : float
        Tolerance of the normalised surface Dice.
    graph_cut : bool
        Also score the vessel graph cut on each level (the vessel phantom only; slow).
    workers, scheduler, progress
        See :func:`ImagInfoExtension.batch.run_batch`.

    Returns
    -------
    RobustnessResult
    """
    from ImagInfoExtension.dose.analysis import aggregate
    from ImagInfoExtension.provenance import provenance_document
    from ImagInfoExtension.segmentation.plugin import model_settings, truth_radii
    from ImagInfoExtension.study.runner import run_study
    from ImagInfoExtension.study.table import series_name, study_factors, validate_study

    out_dir = Path(out_dir)
    if image.GetDimension() != 3:
        raise ValueError(f"the image is {image.GetDimension()}D; a robustness study needs a 3D volume")
    if not np.isfinite(sitk.GetArrayViewFromImage(image)).all():
        raise ValueError("the image holds NaN or infinite values; fill or crop them before perturbing it")
    from ImagInfoExtension.segmentation.evaluation import align_truth

    # Once here rather than on every level: each perturbed image keeps the input's grid.
    truth, notes = align_truth(truth, image)
    for note in notes:
        log.warning("%s", note)
    dose_reference = None
    if reference_dose_mgy is not None or reference_noise_sd_hu is not None:
        if reference_dose_mgy is None or reference_noise_sd_hu is None:
            raise ValueError("give both reference_dose_mgy and reference_noise_sd_hu, or neither")
        dose_reference = DoseReference(float(reference_dose_mgy), float(reference_noise_sd_hu))
        dose_noise_sd_hu(dose_reference.dose_mgy, dose_reference.dose_mgy, dose_reference.noise_sd_hu)
    table = perturbation_design(perturbations, design, repetitions, dose_reference)
    spectrum = noise_spectrum(nps)
    model_part = model_settings(model)
    radii = list(radii_mm) if radii_mm is not None else truth_radii(model_part)
    settings = {
        **model_part,
        "device": device,
        "nsd_tolerance_mm": nsd_tolerance_mm,
        "graph_cut": bool(graph_cut),
        "radii_mm": radii,
    }
    # The runner names each series' folder from the factors in this order; the image goes into that folder.
    factors = study_factors(table)
    truth_path = out_dir / TRUTH_FILE
    write_if_changed(truth_path, lambda p: write_image(truth, p))

    paths = [str(out_dir / "series" / series_name(row, factors) / IMAGE_FILE) for row in table.to_dict("records")]
    write_perturbed_images(image, table, paths, spectrum, dose_reference, seed, progress)
    study = validate_study(table.assign(path=paths), source="the robustness design")
    run = run_study(
        study,
        ["segmentation"],
        out_dir,
        {"segmentation": settings},
        truth=truth_path,
        workers=workers,
        scheduler=scheduler,
        progress=progress,
    )
    conditions = [f for f in run.factors if f != "repetition"]
    summary = aggregate(run.long, conditions) if not run.long.empty else pd.DataFrame()
    varied = [f for f in PERTURBATIONS if f in perturbations]
    files: dict[str, Path] = {}

    def table_file(name: str, frame: pd.DataFrame) -> None:
        path = out_dir / f"{name}.csv"
        write_atomically(path, lambda p: frame.to_csv(p, index=False))
        files[name] = path

    table_file("study", study)
    table_file("results_long", run.long)
    table_file("robustness_summary", summary)
    if not run.failures.empty:
        table_file("failures", run.failures)
    if not run.warnings.empty:
        table_file("warnings", run.warnings)
    model_info = {
        key: value
        for key, value in (next(iter(run.records.values()), {}).get("segmentation") or {}).items()
        if key in ("model", "version", "sha256")
    }
    result = RobustnessResult(
        long=run.long,
        summary=summary,
        design=study,
        factors=run.factors,
        varied=varied,
        failures=run.failures,
        warnings=run.warnings,
        files=files,
        model=model_info,
        spectrum=spectrum,
        notes=list(notes),
    )
    source = provenance_document(
        {
            "perturbations": {k: list(map(float, v)) for k, v in perturbations.items()},
            "design": design,
            "repetitions": repetitions,
            "seed": seed,
            "nps": spectrum.to_json(),
            "dose_reference": None if dose_reference is None else asdict(dose_reference),
            "segmentation": settings,
        },
        [{"truth": str(truth_path)}],
        model=model_info,
        notes=list(notes),
        batch={"workers": run.batch.workers, "wall_s": run.batch.wall_s},
    )
    provenance = out_dir / "provenance.json"
    write_atomically(provenance, lambda p: p.write_text(json.dumps(source, indent=1, default=json_default)))
    files["provenance"] = provenance
    files.update(write_robustness_outputs(result, out_dir))
    if run.long.empty:
        first = run.failures["error"].iloc[0] if not run.failures.empty else "-"
        raise ValueError(
            f"no perturbed image could be segmented ({len(run.failures)} failed; see {out_dir / 'failures.csv'}); "
            f"first error: {first}"
        )
    return result


def write_robustness_outputs(result: RobustnessResult, out_dir: Path) -> dict[str, Path]:
    """The plot, the report section (HTML fragment) and a page that holds it."""
    from ImagInfoExtension.dose.report import robustness_figure, robustness_page, robustness_section_html

    files: dict[str, Path] = {}
    plots: dict[str, Path] = {}
    if not result.summary.empty:
        figure = robustness_figure(result.summary, result.varied, result.factors)
        if figure is not None:
            from ImagInfoExtension.dose.report import _pyplot, _save

            plots = _save(figure, out_dir, "robustness")
            _pyplot().close(figure)
    files.update(plots)
    section = robustness_section_html(result.summary, result.varied, plots, result.model, _describe(result))
    path = out_dir / "robustness_section.html"
    write_atomically(path, lambda p: p.write_text(section, encoding="utf-8"))
    files["section"] = path
    page = out_dir / "robustness_report.html"
    text = robustness_page(section, result.failures, result.warnings, result.factors)
    write_atomically(page, lambda p: p.write_text(text, encoding="utf-8"))
    files["report"] = page
    return files


def _describe(result: RobustnessResult) -> str:
    spectrum = result.spectrum
    if spectrum is None:
        return ""
    texture = {
        "white": "white noise",
        "phantom": f"the phantom's {spectrum.recon} noise texture",
        "table": f"the NPS of {Path(spectrum.source).name}",
    }[spectrum.kind]
    repetitions = int(result.design["repetition"].max()) if "repetition" in result.design else 1
    return (
        f"Inserted noise has {texture}; blur is an isotropic Gaussian (FWHM in mm), applied before the noise. "
        f"Each noisy condition has {repetitions} noise realisation(s)."
    )
