"""Quality-assurance test phantoms with a known noise model.

Small CT volumes of the kind a user scans to check a scanner (a uniform slab, a
water cylinder), rendered in HU on physical grids, with stationary correlated noise
whose noise power spectrum (NPS) is known exactly. They test measurements that must
work on any scan, not only on ImagInfo's own vessel phantom: automatic placement of
uniform noise ROIs, noise SD, NPS.

The noise is white Gaussian noise, filtered slice by slice by a ramp times a
Gaussian, the radial transfer function

    H(f) = (f / f_p) exp((1 - f² / f_p²) / 2),

so that its NPS is ``NPS(f) ∝ f² exp(-f² / f_p²)``: band-pass noise with no power at
zero frequency, as filtered back projection gives (a ramp filter apodised by a
smooth window), whose peak lies exactly at ``f_p``. The noise is scaled so that its
pixel SD on the grid is ``noise_sd_hu``; slices are independent (a white NPS along z).

Objects are prisms along z, blurred in-plane by a Gaussian point-spread function
(erf edge profiles, exact for straight boundaries); the noise is added, and air is
clipped at -1024 HU as a scanner's reconstruction does, so that the lower half of
the air's noise is cut off.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.fft
import SimpleITK as sitk
from scipy.spatial import cKDTree
from scipy.special import erf

from ImagInfoExtension.geometry import ImageGrid

#: Lowest value a CT reconstruction stores (HU); air noise below it is clipped.
CT_CLIP_HU = -1024.0
#: Highest value of a 12-bit CT reconstruction (HU).
CT_MAX_HU = 3071.0
AIR_HU = -1000.0
WATER_HU = 0.0
PMMA_HU = 120.0

_FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))


@dataclass(frozen=True)
class QaNoiseModel:
    """Stationary noise filtered by a ramp times a Gaussian, exact on one grid.

    Attributes
    ----------
    noise_sd_hu : float
        Pixel SD of the noise (before the air is clipped).
    peak_frequency_per_mm : float
        Where the radial NPS peaks (``f_p``, exact).
    pixel_spacing_ji_mm : (float, float)
        In-plane pixel spacing of the grid.
    white_scale_hu : float
        Factor applied to the filtered unit white noise (HU).
    """

    noise_sd_hu: float
    peak_frequency_per_mm: float
    pixel_spacing_ji_mm: tuple[float, float]
    white_scale_hu: float

    def transfer(self, frequency_per_mm: np.ndarray) -> np.ndarray:
        """``H(f)`` of the noise filter (1 at the peak)."""
        return _transfer(np.asarray(frequency_per_mm, dtype=float), self.peak_frequency_per_mm)

    def nps_hu2_mm2(self, frequency_per_mm: np.ndarray) -> np.ndarray:
        """The 2D NPS (HU² mm²) at radial frequencies: ``scale² H(f)² dy dx``.

        Exact on the grid's frequency lattice: its sum over the lattice, times the area
        of a lattice cell, is ``noise_sd_hu²``.
        """
        dy, dx = self.pixel_spacing_ji_mm
        return self.white_scale_hu**2 * self.transfer(frequency_per_mm) ** 2 * dy * dx

    @property
    def average_frequency_per_mm(self) -> float:
        """NPS-weighted mean radial frequency of the continuous spectrum, ``3 sqrt(pi) / 4 f_p``.

        The grid's band (up to its Nyquist frequency) cuts a little of the tail off.
        """
        return float(0.75 * np.sqrt(np.pi) * self.peak_frequency_per_mm)


@dataclass(frozen=True)
class QaPhantom:
    """A QA phantom scan and its truth.

    Attributes
    ----------
    image : SimpleITK.Image
        The scan, HU, float32, clipped at -1024 HU.
    noise : QaNoiseModel
    object_hu : ndarray of float32, ``[k, j, i]``
        The noise-free blurred object.
    edge_distance_mm : ndarray of float32, ``[k, j, i]``
        In-plane distance of each voxel from the nearest object boundary (the objects
        are prisms along z, so boundaries are in-plane).
    uniform_hu : float
        HU of the phantom's main uniform material.
    description : str
    """

    image: sitk.Image
    noise: QaNoiseModel
    object_hu: np.ndarray
    edge_distance_mm: np.ndarray
    uniform_hu: float
    description: str

    @property
    def array(self) -> np.ndarray:
        """The scan as a ``[k, j, i]`` array (a copy)."""
        return sitk.GetArrayFromImage(self.image)

    @property
    def spacing_kji_mm(self) -> tuple[float, float, float]:
        return tuple(float(s) for s in self.image.GetSpacing()[::-1])


def _transfer(frequency_per_mm: np.ndarray, peak_per_mm: float) -> np.ndarray:
    ratio = frequency_per_mm / peak_per_mm
    return ratio * np.exp(0.5 * (1.0 - ratio * ratio))


def correlated_noise(
    shape_kji: tuple[int, int, int],
    pixel_spacing_ji_mm: tuple[float, float],
    noise_sd_hu: float,
    peak_frequency_per_mm: float,
    seed: int = 0,
) -> tuple[np.ndarray, QaNoiseModel]:
    """Stationary Gaussian noise filtered by a ramp times a Gaussian, independent per slice.

    Parameters
    ----------
    shape_kji : (int, int, int)
    pixel_spacing_ji_mm : (float, float)
    noise_sd_hu : float
        Pixel SD of the noise (its expectation over realisations).
    peak_frequency_per_mm : float
        Peak of the radial NPS; below the grid's Nyquist frequency.
    seed : int

    Returns
    -------
    noise : ndarray of float32, ``[k, j, i]``
    model : QaNoiseModel
    """
    dy, dx = (float(v) for v in pixel_spacing_ji_mm)
    nyquist = 0.5 / max(dy, dx)
    if not 0 < peak_frequency_per_mm < nyquist:
        raise ValueError(
            f"the NPS peak {peak_frequency_per_mm} mm⁻¹ must lie between 0 and the grid's Nyquist "
            f"frequency {nyquist:.3f} mm⁻¹; choose a lower peak or a finer pixel spacing"
        )
    fy = np.fft.fftfreq(shape_kji[1], dy)[:, None]
    fx = np.fft.rfftfreq(shape_kji[2], dx)[None, :]
    transfer = _transfer(np.hypot(fy, fx), peak_frequency_per_mm)
    # The pixel variance of unit white noise filtered by H is the mean of H² over the
    # full (two-sided) lattice; the rfft half counts its interior columns twice.
    full_fx = np.fft.fftfreq(shape_kji[2], dx)[None, :]
    mean_power = float(np.mean(_transfer(np.hypot(fy, full_fx), peak_frequency_per_mm) ** 2))
    scale = noise_sd_hu / np.sqrt(mean_power)
    rng = np.random.default_rng(seed)
    white = rng.standard_normal(shape_kji, dtype=np.float32)
    spectrum = scipy.fft.rfft2(white, axes=(1, 2))
    spectrum *= (scale * transfer).astype(np.float32)
    noise = scipy.fft.irfft2(spectrum, s=shape_kji[1:], axes=(1, 2)).astype(np.float32)
    model = QaNoiseModel(
        noise_sd_hu=float(noise_sd_hu),
        peak_frequency_per_mm=float(peak_frequency_per_mm),
        pixel_spacing_ji_mm=(dy, dx),
        white_scale_hu=float(scale),
    )
    return noise, model


def _centred_grid(size_ij: tuple[int, int], slices: int, spacing_mm: tuple[float, float, float]) -> ImageGrid:
    size = np.array([size_ij[1], size_ij[0], slices])
    origin = -(size - 1) * np.asarray(spacing_mm, dtype=float) / 2
    return ImageGrid(
        size_ijk=tuple(int(s) for s in size),
        spacing_mm=tuple(float(s) for s in spacing_mm),
        origin_mm=tuple(float(o) for o in origin),
    )


def _plane_coordinates(grid: ImageGrid) -> tuple[np.ndarray, np.ndarray]:
    """LPS x and y (mm) of the in-plane pixel centres, ``[j, i]``."""
    x = grid.origin_mm[0] + np.arange(grid.size_ijk[0]) * grid.spacing_mm[0]
    y = grid.origin_mm[1] + np.arange(grid.size_ijk[1]) * grid.spacing_mm[1]
    y_ji, x_ji = np.meshgrid(y, x, indexing="ij")
    return x_ji, y_ji


def _blurred_step(signed_distance_mm: np.ndarray, sigma_mm: float) -> np.ndarray:
    """Fraction inside an object whose boundary is locally straight, blurred by a Gaussian PSF.

    ``signed_distance_mm`` is positive inside.
    """
    return 0.5 * (1.0 + erf(signed_distance_mm / (np.sqrt(2.0) * sigma_mm)))


def _disk_distance(x: np.ndarray, y: np.ndarray, centre_xy: tuple[float, float], radius_mm: float) -> np.ndarray:
    return radius_mm - np.hypot(x - centre_xy[0], y - centre_xy[1])


def _box_distance(x: np.ndarray, y: np.ndarray, centre_xy: tuple[float, float], half_xy: tuple[float, float]):
    """Signed distance (positive inside) from an axis-aligned rectangle's boundary."""
    qx = np.abs(x - centre_xy[0]) - half_xy[0]
    qy = np.abs(y - centre_xy[1]) - half_xy[1]
    outside = np.hypot(np.maximum(qx, 0.0), np.maximum(qy, 0.0))
    inside = np.minimum(np.maximum(qx, qy), 0.0)
    return -(outside + inside)


def _compose(
    objects: list[tuple[np.ndarray, float]], background_hu: float, psf_fwhm_mm: float
) -> tuple[np.ndarray, np.ndarray]:
    """Blurred in-plane image (HU) of non-overlapping objects, and each pixel's distance from their boundaries.

    ``objects`` are (signed distance in mm, positive inside; HU) pairs.
    """
    sigma = psf_fwhm_mm / _FWHM_PER_SIGMA
    plane = np.full(objects[0][0].shape, background_hu, dtype=np.float64)
    edge = np.full(plane.shape, np.inf)
    for distance, hu in objects:
        # Objects do not overlap, so each adds its own contrast against the background.
        plane += (hu - background_hu) * _blurred_step(distance, sigma)
        edge = np.minimum(edge, np.abs(distance))
    return plane, edge


def _render(
    grid: ImageGrid,
    plane_hu: np.ndarray,
    edge_mm: np.ndarray,
    noise_sd_hu: float,
    peak_frequency_per_mm: float,
    seed: int,
    uniform_hu: float,
    description: str,
) -> QaPhantom:
    """The in-plane object on every slice, plus noise, clipped as a scanner stores it."""
    shape = grid.shape_kji
    object_hu = np.broadcast_to(plane_hu.astype(np.float32), shape).copy()
    noise, model = correlated_noise(shape, grid.spacing_mm[1::-1], noise_sd_hu, peak_frequency_per_mm, seed)
    scan = np.clip(object_hu + noise, CT_CLIP_HU, CT_MAX_HU).astype(np.float32)
    return QaPhantom(
        image=grid.to_sitk(scan),
        noise=model,
        object_hu=object_hu,
        edge_distance_mm=np.broadcast_to(edge_mm.astype(np.float32), shape).copy(),
        uniform_hu=float(uniform_hu),
        description=description,
    )


def slab_and_cylinders_phantom(
    noise_sd_hu: float = 15.0,
    peak_frequency_per_mm: float = 0.3,
    spacing_mm: tuple[float, float, float] = (0.6, 0.6, 2.5),
    size_ij: tuple[int, int] = (320, 320),
    slices: int = 24,
    slab_hu: float = PMMA_HU,
    psf_fwhm_mm: float = 0.9,
    seed: int = 0,
) -> QaPhantom:
    """A flat PMMA slab with three cylinders (water, fat, bone) in air beside it.

    The slab is 160 mm wide (along x, ``i``) and 70 mm thick (along y, ``j``), in the
    lower part of the field of view; the cylinders (25 mm diameter; 0, -100 and
    +800 HU) stand in air above it. All objects run through every slice.

    Parameters
    ----------
    noise_sd_hu, peak_frequency_per_mm : float
        The noise (see :func:`correlated_noise`).
    spacing_mm : (float, float, float)
        Voxel spacing along i, j, k.
    size_ij : (int, int)
        Pixels along ``j`` and ``i``; the default covers 192 mm.
    slices : int
    slab_hu : float
    psf_fwhm_mm : float
        In-plane Gaussian blur of the edges.
    seed : int
    """
    grid = _centred_grid(size_ij, slices, spacing_mm)
    x, y = _plane_coordinates(grid)
    objects = [(_box_distance(x, y, (0.0, 50.0), (80.0, 35.0)), slab_hu)]
    for centre_x, hu in ((-50.0, WATER_HU), (0.0, -100.0), (50.0, 800.0)):
        objects.append((_disk_distance(x, y, (centre_x, -45.0), 12.5), hu))
    plane, edge = _compose(objects, AIR_HU, psf_fwhm_mm)
    return _render(
        grid,
        plane,
        edge,
        noise_sd_hu,
        peak_frequency_per_mm,
        seed,
        slab_hu,
        "PMMA slab with water, fat and bone cylinders in air",
    )


def water_cylinder_phantom(
    diameter_mm: float = 200.0,
    noise_sd_hu: float = 12.0,
    peak_frequency_per_mm: float = 0.25,
    spacing_mm: tuple[float, float, float] = (0.8, 0.8, 2.0),
    size_ij: tuple[int, int] = (300, 300),
    slices: int = 10,
    psf_fwhm_mm: float = 1.0,
    seed: int = 0,
) -> QaPhantom:
    """A water cylinder (0 HU) in air, centred in the field of view.

    Parameters
    ----------
    diameter_mm : float
        Cylinder diameter; the default field of view (300 × 0.8 mm) holds 200 mm
        with air around it.
    noise_sd_hu, peak_frequency_per_mm : float
        The noise (see :func:`correlated_noise`).
    spacing_mm : (float, float, float)
        Voxel spacing along i, j, k.
    size_ij : (int, int)
    slices : int
    psf_fwhm_mm : float
    seed : int
    """
    grid = _centred_grid(size_ij, slices, spacing_mm)
    x, y = _plane_coordinates(grid)
    extent = min(size_ij[0] * spacing_mm[1], size_ij[1] * spacing_mm[0])
    if diameter_mm >= extent:
        raise ValueError(
            f"a {diameter_mm} mm cylinder does not fit a {extent:.0f} mm field of view; enlarge size_ij or the spacing"
        )
    plane, edge = _compose([(_disk_distance(x, y, (0.0, 0.0), diameter_mm / 2), WATER_HU)], AIR_HU, psf_fwhm_mm)
    return _render(
        grid,
        plane,
        edge,
        noise_sd_hu,
        peak_frequency_per_mm,
        seed,
        WATER_HU,
        f"water cylinder, {diameter_mm:g} mm diameter, in air",
    )


def structured_phantom(
    noise_sd_hu: float = 10.0,
    peak_frequency_per_mm: float = 0.3,
    spacing_mm: tuple[float, float, float] = (0.6, 0.6, 2.5),
    size_ij: tuple[int, int] = (200, 200),
    slices: int = 6,
    rod_radius_mm: tuple[float, float] = (1.0, 2.5),
    rod_spacing_mm: float = 6.0,
    psf_fwhm_mm: float = 0.9,
    seed: int = 0,
) -> QaPhantom:
    """A water block filled with densely packed thin rods: no uniform region anywhere.

    Rods of random radius (in ``rod_radius_mm``) and random contrast (±100 to
    ±600 HU) sit on a jittered lattice of pitch ``rod_spacing_mm``, so that every
    neighbourhood a few millimetres wide holds an edge, as in a resolution or
    sensitometry insert or in lung parenchyma. The block fills the whole field of view.

    Parameters
    ----------
    noise_sd_hu, peak_frequency_per_mm : float
        The noise (see :func:`correlated_noise`).
    spacing_mm : (float, float, float)
        Voxel spacing along i, j, k.
    size_ij : (int, int)
    slices : int
    rod_radius_mm : (float, float)
        Range of the rods' radii.
    rod_spacing_mm : float
        Pitch of the lattice; more than twice the largest radius.
    psf_fwhm_mm : float
    seed : int
    """
    grid = _centred_grid(size_ij, slices, spacing_mm)
    x, y = _plane_coordinates(grid)
    rng = np.random.default_rng(seed)
    half_x = 0.5 * size_ij[1] * spacing_mm[0]
    half_y = 0.5 * size_ij[0] * spacing_mm[1]
    lattice_y, lattice_x = np.meshgrid(
        np.arange(-half_y, half_y + rod_spacing_mm, rod_spacing_mm),
        np.arange(-half_x, half_x + rod_spacing_mm, rod_spacing_mm),
        indexing="ij",
    )
    count = lattice_x.size
    # Each rod moves by at most a quarter of the narrowest gap, so rods never touch.
    room = max(0.0, 0.25 * (rod_spacing_mm - 2.0 * rod_radius_mm[1]))
    centres = np.stack([lattice_x.ravel(), lattice_y.ravel()], axis=1) + rng.uniform(-room, room, (count, 2))
    radii = rng.uniform(*rod_radius_mm, count)
    contrasts = rng.choice([-1.0, 1.0], count) * rng.uniform(100.0, 600.0, count)
    # Each pixel sees the few nearest rods; farther ones are beyond the blur's reach.
    points = np.stack([x.ravel(), y.ravel()], axis=1)
    distance, nearest = cKDTree(centres).query(points, k=4)
    signed = radii[nearest] - distance
    sigma = psf_fwhm_mm / _FWHM_PER_SIGMA
    plane = WATER_HU + np.sum(contrasts[nearest] * _blurred_step(signed, sigma), axis=1)
    edge = np.min(np.abs(signed), axis=1)
    return _render(
        grid,
        plane.reshape(x.shape),
        edge.reshape(x.shape),
        noise_sd_hu,
        peak_frequency_per_mm,
        seed,
        WATER_HU,
        "water block packed with thin rods (no uniform region)",
    )
