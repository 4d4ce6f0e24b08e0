"""Virtual CT acquisition of the digital phantom.

An acquisition is the partial-volume object image, blurred by the reconstruction's
point-spread function, plus stationary correlated Gaussian noise whose noise power
spectrum (NPS) has the reconstruction's texture and whose magnitude follows the dose.
Both are applied in one Fourier pass. Three nonlinear effects of low dose are added
where the reconstruction has them: iterative reconstruction fades thin bright detail
(``shrink_fine_detail``); filtered back projection shows photon-starvation streaks,
and the log of its few-photon readings overestimates line integrals, the more so the
longer the path, which raises the HU of the vessels (by about 1100 × (N̄ + 2σ²)/(2N̄²)
for the counts N̄ and electronic noise σ of the rays through them) and biases the
holder's image (``starvation``, ``FourierObject.log_bias_hu``). In the default
phantom's 3 mm vessels that is +14 HU of gain less 3 HU of holder bias at 0.2 mGy,
under 1 HU from 1 mGy up: the published FBP median pixel value rises as dose falls.

The noise magnitude for each reconstruction follows

    sigma(D)^2 = a / D + b / D^2 + c,

quantum noise, electronic noise and a dose-independent floor (all >= 0), fitted to a
calibration table of the HU inter-quartile range inside 3 mm vessels; the electronic
part comes from the lateral views, so it has a streaky texture. The HU offset of each
reconstruction is fitted to the table's median pixel values. The models are
phenomenological: they reproduce the published noise level, texture and blur of
each reconstruction class, not any vendor's algorithm.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.fft
from scipy import ndimage
from scipy.optimize import nnls

from ImagInfoExtension.geometry import ImageGrid
from ImagInfoExtension.phantom.starvation import (
    PhotonStarvation,
    attenuation_map,
    line_integrals,
    log_bias,
    ray_geometry,
    starvation_streaks,
)

#: IQR of a normal distribution, in units of its standard deviation.
GAUSSIAN_IQR_PER_SD = 1.3489795003921634

#: Spacing (i, j, k) in mm on which the calibration is defined: the default phantom grid.
REFERENCE_SPACING_MM: tuple[float, float, float] = (0.7, 0.7, 1.0)

#: Dose of the reference (highest-dose) scan in the published protocol, mGy.
REFERENCE_DOSE_MGY = 4.0

_FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))


@dataclass(frozen=True)
class ReconstructionModel:
    """Blur and noise texture of one reconstruction method.

    Parameters
    ----------
    name : str
        Short name used in file names and tables (``FBP``, ``IR``, ``DL``).
    kernel : str
        Value written to ConvolutionKernel (0018,1210).
    algorithm : str
        Value for ReconstructionAlgorithm (0018,9315); empty where DICOM has no term.
    description : str
        Human-readable description, written to SeriesDescription.
    psf_fwhm_inplane_mm, psf_fwhm_z_mm : float
        Gaussian point-spread function at the reference dose.
    nps_peak_per_mm : float
        In-plane frequency of the NPS peak at the reference dose.
    nps_ramp_power : float
        Low-frequency slope of the in-plane NPS (1 for a ramp-filtered FBP texture;
        smaller values give the blotchier texture of model-based methods).
    nps_z_fwhm_per_mm : float
        Width of the NPS along z (set by the slice sensitivity profile).
    blur_gain_per_decade : float
        Relative PSF widening per decade of dose below the reference dose.
    nps_shift_per_decade : float
        Relative lowering of the NPS peak frequency per decade of dose below the
        reference dose.
    detail_shrinkage_hu_mgy : float
        Soft threshold applied to the signal's fine bright detail (its white top-hat),
        in HU at 1 mGy; it scales as 1/dose, as a regulariser of fixed weight does
        against a data term that, like the photon count, is proportional to dose.
        Thin vessels lose contrast and width at low dose while wide ones keep their
        edges: the contrast- and dose-dependent resolution of iterative reconstruction.
    detail_scale_mm : float
        Half-width of the box whose grey-scale opening separates fine detail.
    electronic_noise_spread_deg : float
        Angular half-width at half-maximum of the views that carry the electronic
        noise term ``b/D²``. Electronic noise dominates only where counts are lowest,
        in the lateral views through the long axis and the base of the thorax-shaped
        holder; each view's noise is back-projected along its rays, so this part of
        the noise forms laterally oriented streaks (its NPS lies in a wedge about the
        anterior-posterior frequency axis). 0 spreads it over all views.
    photon_starvation : PhotonStarvation, optional
        Streaks from readings with too few photons, and the bias of the log of every
        reading; only for reconstructions that ignore the raw-data statistics (FBP).
    """

    name: str
    kernel: str
    algorithm: str
    description: str
    psf_fwhm_inplane_mm: float
    psf_fwhm_z_mm: float
    nps_peak_per_mm: float
    nps_ramp_power: float = 1.0
    nps_z_fwhm_per_mm: float = 0.9
    blur_gain_per_decade: float = 0.0
    nps_shift_per_decade: float = 0.0
    detail_shrinkage_hu_mgy: float = 0.0
    detail_scale_mm: float = 1.0
    electronic_noise_spread_deg: float = 12.0
    photon_starvation: PhotonStarvation | None = None

    def _decades_below_reference(self, dose_mgy: float) -> float:
        return max(0.0, float(np.log10(REFERENCE_DOSE_MGY / dose_mgy)))

    def psf_fwhm_mm(self, dose_mgy: float) -> tuple[float, float]:
        """In-plane and z FWHM of the PSF at a dose."""
        gain = 1.0 + self.blur_gain_per_decade * self._decades_below_reference(dose_mgy)
        return self.psf_fwhm_inplane_mm * gain, self.psf_fwhm_z_mm * gain

    def nps_peak_at(self, dose_mgy: float) -> float:
        """In-plane NPS peak frequency (mm⁻¹) at a dose."""
        return self.nps_peak_per_mm / (1.0 + self.nps_shift_per_decade * self._decades_below_reference(dose_mgy))

    def detail_shrinkage_hu(self, dose_mgy: float) -> float:
        """Soft threshold (HU) on the signal's fine detail at a dose."""
        return self.detail_shrinkage_hu_mgy / dose_mgy


#: The three reconstruction classes of the published study.
DEFAULT_RECONSTRUCTIONS: dict[str, ReconstructionModel] = {
    "FBP": ReconstructionModel(
        name="FBP",
        kernel="FC08",
        algorithm="FILTER_BACK_PROJ",
        description="filtered back projection (modelled)",
        psf_fwhm_inplane_mm=0.95,
        psf_fwhm_z_mm=1.0,
        nps_peak_per_mm=0.32,
        nps_ramp_power=1.0,
        photon_starvation=PhotonStarvation(counts_per_mgy=1500.0, electronic_noise_counts=18.0),
    ),
    "IR": ReconstructionModel(
        name="IR",
        kernel="FC08",
        algorithm="ITERATIVE",
        description="hybrid iterative reconstruction (modelled)",
        psf_fwhm_inplane_mm=0.95,
        psf_fwhm_z_mm=1.0,
        nps_peak_per_mm=0.22,
        nps_ramp_power=0.7,
        nps_shift_per_decade=0.3,
        detail_shrinkage_hu_mgy=60.0,
    ),
    "DL": ReconstructionModel(
        name="DL",
        kernel="LUNG",
        algorithm="",
        description="deep-learning reconstruction (modelled)",
        psf_fwhm_inplane_mm=0.8,
        psf_fwhm_z_mm=0.9,
        nps_peak_per_mm=0.27,
        nps_ramp_power=1.2,
    ),
}


@dataclass(frozen=True)
class DoseNoiseModel:
    """Noise SD of one reconstruction against dose: ``sqrt(a/D + b/D² + c)``."""

    quantum_hu2_mgy: float
    electronic_hu2_mgy2: float
    floor_hu2: float

    def noise_sd_hu(self, dose_mgy: float) -> float:
        return float(np.sqrt(sum(self.variance_parts_hu2(dose_mgy))))

    def variance_parts_hu2(self, dose_mgy: float) -> tuple[float, float]:
        """Noise variance (HU²) spread over all views, and the electronic part ``b/D²``."""
        if dose_mgy <= 0:
            raise ValueError(f"dose must be positive, got {dose_mgy} mGy")
        return self.quantum_hu2_mgy / dose_mgy + self.floor_hu2, self.electronic_hu2_mgy2 / dose_mgy**2

    @classmethod
    def fit(cls, dose_mgy: np.ndarray, noise_sd_hu: np.ndarray) -> DoseNoiseModel:
        """Non-negative least squares on the variance, weighted to relative error."""
        dose = np.asarray(dose_mgy, dtype=float)
        variance = np.asarray(noise_sd_hu, dtype=float) ** 2
        design = np.stack([1 / dose, 1 / dose**2, np.ones_like(dose)], axis=1)
        weight = 1 / variance
        coefficients, _ = nnls(design * weight[:, None], variance * weight)
        return cls(*(float(c) for c in coefficients))


@dataclass(frozen=True)
class AcquisitionCalibration:
    """Noise level and HU offset of each reconstruction, fitted to a study table."""

    noise: Mapping[str, DoseNoiseModel]
    hu_offset: Mapping[str, float]
    source: str = ""
    iqr_to_sd: float = GAUSSIAN_IQR_PER_SD

    @property
    def reconstructions(self) -> tuple[str, ...]:
        return tuple(self.noise)

    @classmethod
    def from_table(cls, table: pd.DataFrame, material_hu: float = 100.0, source: str = "") -> AcquisitionCalibration:
        """Fit from a table with columns ``metric,recon,dose_mgy,mean``.

        ``metric`` ``iqr_hu`` rows (at least two doses per reconstruction) set the
        noise; ``mpv_hu`` rows, when present, set the HU offset against
        ``material_hu``.
        """
        required = {"metric", "recon", "dose_mgy", "mean"}
        missing = required - set(table.columns)
        if missing:
            raise ValueError(
                f"calibration table lacks column(s) {sorted(missing)}; "
                "it needs metric,recon,dose_mgy,mean (the layout of phantom_study_2021.csv)"
            )
        iqr = table[table["metric"] == "iqr_hu"]
        if iqr.empty:
            raise ValueError("calibration table has no 'iqr_hu' rows: add the measured HU IQR per recon and dose")
        noise: dict[str, DoseNoiseModel] = {}
        offsets: dict[str, float] = {}
        for recon, rows in iqr.groupby("recon", sort=False):
            if rows["dose_mgy"].nunique() < 2:
                raise ValueError(f"calibration for {recon} needs iqr_hu at two or more doses")
            if (rows["dose_mgy"] <= 0).any() or (rows["mean"] <= 0).any():
                raise ValueError(f"calibration for {recon} has a non-positive dose or IQR")
            sd = rows["mean"].to_numpy(float) / GAUSSIAN_IQR_PER_SD
            noise[str(recon)] = DoseNoiseModel.fit(rows["dose_mgy"].to_numpy(float), sd)
            mpv = table[(table["metric"] == "mpv_hu") & (table["recon"] == recon)]
            offsets[str(recon)] = float(mpv["mean"].mean() - material_hu) if len(mpv) else 0.0
        return cls(noise=noise, hu_offset=offsets, source=source)

    @classmethod
    def from_csv(cls, path: str | Path, material_hu: float = 100.0) -> AcquisitionCalibration:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"calibration table {path} does not exist")
        return cls.from_table(pd.read_csv(path), material_hu=material_hu, source=str(path))


def default_calibration() -> AcquisitionCalibration:
    """Calibration fitted to the published 2021 phantom study (shipped with the package)."""
    path = Path(__file__).with_name("phantom_study_2021_calibration.csv")
    return AcquisitionCalibration.from_csv(path)


@dataclass(frozen=True)
class AcquisitionSettings:
    """One virtual scan."""

    dose_mgy: float
    recon: str
    repetition: int = 1
    seed: int = 0


@dataclass
class AcquisitionModel:
    """Reconstruction models plus their calibration."""

    reconstructions: dict[str, ReconstructionModel] = field(default_factory=lambda: dict(DEFAULT_RECONSTRUCTIONS))
    calibration: AcquisitionCalibration = field(default_factory=default_calibration)

    def model_for(self, recon: str) -> ReconstructionModel:
        if recon not in self.reconstructions:
            known = ", ".join(self.reconstructions)
            raise ValueError(f"unknown reconstruction {recon!r}; choose one of {known}")
        if recon not in self.calibration.noise:
            raise ValueError(f"the calibration table has no iqr_hu rows for {recon!r}")
        return self.reconstructions[recon]

    def noise_sd_hu(self, recon: str, dose_mgy: float) -> float:
        """Noise SD (HU) on the reference grid for a reconstruction and dose."""
        self.model_for(recon)
        return self.calibration.noise[recon].noise_sd_hu(dose_mgy)

    def with_reconstruction(self, model: ReconstructionModel) -> AcquisitionModel:
        return replace(self, reconstructions={**self.reconstructions, model.name: model})


def _grid_frequencies(shape_kji: tuple[int, int, int], spacing_ijk: tuple[float, float, float]) -> tuple:
    """Broadcastable frequency axes (cycles/mm) of an ``rfftn`` over ``[k, j, i]``."""
    fk = np.fft.fftfreq(shape_kji[0], d=spacing_ijk[2]).astype(np.float32)[:, None, None]
    fj = np.fft.fftfreq(shape_kji[1], d=spacing_ijk[1]).astype(np.float32)[None, :, None]
    fi = np.fft.rfftfreq(shape_kji[2], d=spacing_ijk[0]).astype(np.float32)[None, None, :]
    return fk, fj, fi


def _nps_shape(model: ReconstructionModel, dose_mgy: float, fk, fj, fi, directional: bool = False) -> np.ndarray:
    """Unnormalised NPS; 1 at the in-plane peak and fz = 0.

    ``directional`` restricts it to the wedge of the electronic-noise views: a view
    whose rays run along i puts its noise at frequencies along j.
    """
    peak = model.nps_peak_at(dose_mgy)
    power = model.nps_ramp_power
    radial_sq = (fi**2 + fj**2) / peak**2
    in_plane = radial_sq ** (0.5 * power) * np.exp(0.5 * power * (1.0 - radial_sq))
    sigma_z = model.nps_z_fwhm_per_mm / _FWHM_PER_SIGMA
    shape = in_plane * np.exp(-0.5 * (fk / sigma_z) ** 2)
    if directional and model.electronic_noise_spread_deg > 0:
        # von Mises weight on the doubled angle from the j axis, half-maximum at the spread.
        concentration = np.log(2.0) / (1.0 - np.cos(2.0 * np.radians(model.electronic_noise_spread_deg)))
        with np.errstate(invalid="ignore", divide="ignore"):
            cos_double = np.nan_to_num((fj**2 - fi**2) / (fi**2 + fj**2), nan=1.0)
        shape = shape * np.exp(concentration * (cos_double - 1.0))
    return shape.astype(np.float32)


@lru_cache(maxsize=128)
def _reference_mean_shape(model: ReconstructionModel, dose_mgy: float, directional: bool = False) -> float:
    """Mean of the NPS shape over the reference grid's frequency band."""
    shape = (96, 96, 96)
    fk, fj, fi = _grid_frequencies(shape, REFERENCE_SPACING_MM)
    values = _nps_shape(model, dose_mgy, fk, fj, fi, directional)
    # rfftn stores the non-negative half along i; weight the doubled bins twice.
    weights = np.full(values.shape[2], 2.0)
    weights[0] = 1.0
    weights[-1] = 1.0
    return float((values * weights).sum() / (np.prod(shape)))


def noise_power_spectrum(model: ReconstructionModel, noise: DoseNoiseModel, dose_mgy: float, fk, fj, fi) -> np.ndarray:
    """The physical NPS in HU²·mm³ at the given frequencies.

    Normalised so that on the reference grid the pixel variance is ``noise``'s: the
    quantum and floor terms spread over all views, the electronic term over the
    lateral views only (see ``ReconstructionModel.electronic_noise_spread_deg``).
    """
    reference_volume = float(np.prod(REFERENCE_SPACING_MM))
    spectrum = np.zeros(np.broadcast_shapes(fk.shape, fj.shape, fi.shape), dtype=np.float32)
    for directional, variance in zip((False, True), noise.variance_parts_hu2(dose_mgy)):
        if variance > 0:
            scale = variance * reference_volume / _reference_mean_shape(model, dose_mgy, directional)
            spectrum += np.float32(scale) * _nps_shape(model, dose_mgy, fk, fj, fi, directional)
    return spectrum


def modulation_transfer(model: ReconstructionModel, dose_mgy: float, fk, fj, fi) -> np.ndarray:
    """Gaussian MTF of the reconstruction at a dose."""
    fwhm_xy, fwhm_z = model.psf_fwhm_mm(dose_mgy)
    sigma_xy = fwhm_xy / _FWHM_PER_SIGMA
    sigma_z = fwhm_z / _FWHM_PER_SIGMA
    return np.exp(-2 * np.pi**2 * (sigma_xy**2 * (fi**2 + fj**2) + sigma_z**2 * fk**2)).astype(np.float32)


def shrink_fine_detail(
    signal_hu: np.ndarray,
    spacing_ijk: tuple[float, float, float],
    scale_mm: float,
    threshold_hu: float,
    background_below_hu: float = -500.0,
) -> np.ndarray:
    """Bright detail finer than ``scale_mm`` on a dark background loses ``threshold_hu`` of its contrast.

    The fine detail is the white top-hat: the image minus its grey-scale opening by
    a box about ``2 × scale_mm`` wide. Where the opening (the local background) is
    below ``background_below_hu``, the top-hat is soft-thresholded (to no less than
    0): thin structures in air fade, while structures that hold the box, their edges
    and the inside of solid material pass unchanged. ``signal_hu`` is ``[k, j, i]``
    and is modified in place.
    """
    size = tuple(2 * max(1, int(scale_mm / spacing)) + 1 for spacing in spacing_ijk[::-1])
    opened = ndimage.grey_opening(signal_hu, size=size)
    loss = signal_hu - opened  # the top-hat, >= 0
    np.minimum(loss, np.float32(threshold_hu), out=loss)
    loss[opened >= background_below_hu] = 0
    signal_hu -= loss
    return signal_hu


def acquisition_seed(settings: AcquisitionSettings) -> np.random.SeedSequence:
    """Seed of one scan's noise: stable across runs, machines and versions.

    The reconstruction is not part of the seed: as on a real scanner, the FBP, IR and
    DL images of one scan come from the same raw data, so they share one quantum
    noise realisation, each filtered with its own texture.
    """
    dose_key = int(round(settings.dose_mgy * 1e6))
    return np.random.SeedSequence([settings.seed, dose_key, settings.repetition])


class FourierObject:
    """The object image's spectrum on one grid, shared by all acquisitions on it."""

    def __init__(self, object_hu: np.ndarray, grid: ImageGrid, workers: int = -1) -> None:
        if object_hu.shape != grid.shape_kji:
            raise ValueError("object image does not match its grid")
        self.grid = grid
        self.workers = workers
        self.spectrum = scipy.fft.rfftn(object_hu.astype(np.float32), workers=workers)
        self.frequencies = _grid_frequencies(grid.shape_kji, grid.spacing_mm)
        # The holder, which sets the longest ray paths, is uniform along z: it is what every
        # slice shares (the minimum along z, since the tree is brighter than the air it
        # displaces and no vessel runs through every slice).
        self._holder_slice_hu = np.array(object_hu.min(axis=0), dtype=np.float32)
        self._ray_paths: dict[PhotonStarvation, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._log_bias: dict[tuple[PhotonStarvation, float, float], tuple[np.ndarray, np.ndarray]] = {}

    def _paths(self, starvation: PhotonStarvation) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """View angles, channel offsets and line integrals through the holder (cached)."""
        if starvation not in self._ray_paths:
            spacing_ij = self.grid.spacing_mm[:2]
            angles, offsets = ray_geometry(self._holder_slice_hu.shape, spacing_ij, starvation)
            paths = line_integrals(attenuation_map(self._holder_slice_hu), spacing_ij, angles, offsets)
            self._ray_paths[starvation] = (angles, offsets, paths)
        return self._ray_paths[starvation]

    def log_bias_hu(self, recon: ReconstructionModel, dose_mgy: float, signal_hu: np.ndarray) -> np.ndarray:
        """Expected error (HU, ``[k, j, i]`` float32) that the log of low counts adds to an FBP image.

        The holder's biased line integrals add ``bias_hu`` to every slice; whatever a
        slice adds to the holder (its vessels: ``signal_hu`` less the blurred holder) is
        measured ``1 + contrast_gain`` times too dense (see
        :func:`ImagInfoExtension.phantom.starvation.log_bias`). Both grow as dose falls,
        roughly as 1/dose where the electronic noise dominates the reading's variance.
        The maps are cached per dose.

        Parameters
        ----------
        recon : ReconstructionModel
            An FBP-like model with ``photon_starvation`` set.
        dose_mgy : float
        signal_hu : ndarray, ``[k, j, i]``
            The noise-free image blurred by ``recon``'s MTF at this dose.
        """
        starvation = recon.photon_starvation
        if starvation is None:
            raise ValueError(f"{recon.name} models the raw-data statistics: it has no log bias")
        psf_sigma_mm = recon.psf_fwhm_mm(dose_mgy)[0] / _FWHM_PER_SIGMA
        key = (starvation, float(dose_mgy), float(psf_sigma_mm))
        if key not in self._log_bias:
            angles, offsets, paths = self._paths(starvation)
            self._log_bias[key] = log_bias(
                paths,
                angles,
                offsets,
                self._holder_slice_hu.shape,
                self.grid.spacing_mm[:2],
                dose_mgy,
                starvation,
                psf_sigma_mm,
            )
        bias_hu, gain = self._log_bias[key]
        # The holder is uniform along z, so its blurred image is its in-plane blur (the fz = 0 plane of the MTF).
        _, fj, fi = self.frequencies
        in_plane = modulation_transfer(recon, dose_mgy, np.zeros((1, 1, 1), np.float32), fj, fi)[0]
        shape_ji = self._holder_slice_hu.shape
        holder_hu = scipy.fft.irfft2(scipy.fft.rfft2(self._holder_slice_hu) * in_plane, s=shape_ji).astype(np.float32)
        added_hu = signal_hu - holder_hu
        added_hu *= gain
        added_hu += bias_hu
        return added_hu

    def acquire(self, model: AcquisitionModel, settings: AcquisitionSettings) -> np.ndarray:
        """One reconstructed image in HU, ``[k, j, i]`` int16 clipped to [-1024, 3071]."""
        recon = model.model_for(settings.recon)
        if settings.dose_mgy <= 0:
            raise ValueError(f"dose must be positive, got {settings.dose_mgy} mGy")
        fk, fj, fi = self.frequencies
        noise = model.calibration.noise[settings.recon]
        nps = noise_power_spectrum(recon, noise, settings.dose_mgy, fk, fj, fi)
        # White noise of unit variance filtered by sqrt(NPS / voxel volume) has
        # pixel variance equal to the NPS integrated over the grid's band.
        amplitude = np.sqrt(nps / np.float32(self.grid.voxel_volume_mm3))
        rng = np.random.default_rng(acquisition_seed(settings))
        white = rng.standard_normal(self.grid.shape_kji, dtype=np.float32)
        spectrum = scipy.fft.rfftn(white, workers=self.workers)
        spectrum *= amplitude
        signal = self.spectrum * modulation_transfer(recon, settings.dose_mgy, fk, fj, fi)
        threshold_hu = recon.detail_shrinkage_hu(settings.dose_mgy)
        psf_sigma_mm = recon.psf_fwhm_mm(settings.dose_mgy)[0] / _FWHM_PER_SIGMA
        if threshold_hu > 0 or recon.photon_starvation is not None:
            image = scipy.fft.irfftn(spectrum, s=self.grid.shape_kji, workers=self.workers)
            signal_hu = scipy.fft.irfftn(signal, s=self.grid.shape_kji, workers=self.workers)
            if recon.photon_starvation is not None:
                image += self.log_bias_hu(recon, settings.dose_mgy, signal_hu)
            if threshold_hu > 0:
                signal_hu = shrink_fine_detail(signal_hu, self.grid.spacing_mm, recon.detail_scale_mm, threshold_hu)
            image += signal_hu
        else:
            spectrum += signal
            image = scipy.fft.irfftn(spectrum, s=self.grid.shape_kji, workers=self.workers)
        if recon.photon_starvation is not None:
            angles, offsets, paths = self._paths(recon.photon_starvation)
            streaks = starvation_streaks(
                paths,
                angles,
                offsets,
                self.grid.shape_kji,
                self.grid.spacing_mm,
                settings.dose_mgy,
                recon.photon_starvation,
                psf_sigma_mm=psf_sigma_mm,
                rng=rng,
            )
            if streaks is not None:
                image += streaks
        image += np.float32(model.calibration.hu_offset.get(settings.recon, 0.0))
        return np.clip(np.rint(image), -1024, 3071).astype(np.int16)
