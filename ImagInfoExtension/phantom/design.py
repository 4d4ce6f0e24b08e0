"""Geometry of the digital lung-vessel phantom.

The phantom replicates a 3D-printed lung-vessel tree (material about 100 HU) held in
a thorax-shaped PMMA shell (about 120 HU) and surrounded by air. The tree is a union
of capsules (cylinders with hemispherical ends), so it has an exact signed distance
and its partial-volume image can be rendered to any precision.

The tree branches dichotomously from a 4.25 mm trunk down to 1.0 mm, splits once more
into 0.75 mm branches, then each branch tapers through 0.5, 0.25 and 0.1 mm: every
radius class has well over 20 mm of centreline and the whole tree holds about 6 ml.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ImagInfoExtension.geometry import ImageGrid

#: The radius classes of the published phantom, in mm, ascending.
DEFAULT_RADII_MM: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.25)

# Dichotomous levels (trunk first): radius and branch length in mm.
_BRANCHING_LEVELS: tuple[tuple[float, float], ...] = (
    (4.25, 32.0),
    (3.0, 26.0),
    (2.0, 20.0),
    (1.5, 15.0),
    (1.0, 12.0),
    (0.75, 9.0),
)
# Tapering chain after the last split: radius and length in mm.
_TAPER_LEVELS: tuple[tuple[float, float], ...] = ((0.5, 8.0), (0.25, 7.0), (0.1, 6.0))


@dataclass(frozen=True)
class VesselSegment:
    """One straight vessel piece: a capsule of constant radius.

    Parameters
    ----------
    id : int
        Identifier, unique within the tree.
    radius_mm : float
        Vessel radius.
    start_mm, end_mm : tuple of float
        LPS centreline end points.
    parent_id : int or None
        The segment this one branches from.
    """

    id: int
    radius_mm: float
    start_mm: tuple[float, float, float]
    end_mm: tuple[float, float, float]
    parent_id: int | None = None

    @property
    def length_mm(self) -> float:
        return float(np.linalg.norm(np.subtract(self.end_mm, self.start_mm)))

    def centerline_points(self, step_mm: float = 0.25) -> np.ndarray:
        """Evenly spaced centreline points (N, 3), both ends included."""
        count = max(2, int(np.ceil(self.length_mm / step_mm)) + 1)
        fractions = np.linspace(0.0, 1.0, count)[:, None]
        return np.asarray(self.start_mm) + fractions * np.subtract(self.end_mm, self.start_mm)


@dataclass(frozen=True)
class HolderDesign:
    """Thorax-shaped PMMA holder: a superelliptic shell along the z axis, on a flat base.

    The outer boundary is ``(|x|/a)^n + (|y|/b)^n = 1``; the inner boundary is the same
    curve shrunk by ``wall_thickness_mm``. The posterior side (+y, LPS) is solid PMMA
    for ``base_thickness_mm`` from the outer boundary: the base the phantom rests on,
    and a uniform region large enough for TG-233 noise-power ROIs.
    """

    outer_semi_axes_mm: tuple[float, float] = (108.0, 78.0)
    wall_thickness_mm: float = 8.0
    base_thickness_mm: float = 18.0
    exponent: float = 2.6
    centre_xy_mm: tuple[float, float] = (0.0, 0.0)

    def normalised_radius(self, x_mm: np.ndarray, y_mm: np.ndarray, shrink_mm: float = 0.0) -> np.ndarray:
        """Superelliptic 'radius' of points: < 1 inside the (shrunk) boundary."""
        a = self.outer_semi_axes_mm[0] - shrink_mm
        b = self.outer_semi_axes_mm[1] - shrink_mm
        u = np.abs(x_mm - self.centre_xy_mm[0]) / a
        v = np.abs(y_mm - self.centre_xy_mm[1]) / b
        return (u**self.exponent + v**self.exponent) ** (1.0 / self.exponent)

    def pmma_mask(self, x_mm: np.ndarray, y_mm: np.ndarray) -> np.ndarray:
        """True where a point lies in the PMMA wall."""
        outer = self.normalised_radius(x_mm, y_mm) <= 1.0
        inner = self.normalised_radius(x_mm, y_mm, self.wall_thickness_mm) <= 1.0
        return outer & (~inner | (y_mm >= self.base_top_y_mm))

    @property
    def base_top_y_mm(self) -> float:
        """LPS y of the base's inner (anterior) face."""
        return self.centre_xy_mm[1] + self.outer_semi_axes_mm[1] - max(self.base_thickness_mm, self.wall_thickness_mm)


@dataclass(frozen=True)
class PhantomDesign:
    """Everything needed to render the phantom: tree, holder and materials."""

    segments: tuple[VesselSegment, ...]
    holder: HolderDesign = field(default_factory=HolderDesign)
    vessel_hu: float = 100.0
    holder_hu: float = 120.0
    background_hu: float = -1000.0
    z_margin_mm: float = 6.0

    @property
    def radius_classes_mm(self) -> tuple[float, ...]:
        return tuple(sorted({s.radius_mm for s in self.segments}))

    def class_label(self, radius_mm: float) -> int:
        """Label k (1-based) of a radius class, ascending by radius."""
        return self.radius_classes_mm.index(radius_mm) + 1

    def centerline_length_mm(self) -> dict[float, float]:
        lengths = dict.fromkeys(self.radius_classes_mm, 0.0)
        for segment in self.segments:
            lengths[segment.radius_mm] += segment.length_mm
        return lengths

    def field_of_view_mm(self) -> tuple[np.ndarray, np.ndarray]:
        """LPS box holding the holder in-plane and the tree along z, with margins."""
        ends = np.array([s.start_mm for s in self.segments] + [s.end_mm for s in self.segments])
        radii = np.array([s.radius_mm for s in self.segments] * 2)
        z_low = float(np.min(ends[:, 2] - radii)) - self.z_margin_mm
        z_high = float(np.max(ends[:, 2] + radii)) + self.z_margin_mm
        a, b = self.holder.outer_semi_axes_mm
        cx, cy = self.holder.centre_xy_mm
        margin = 4.0
        lower = np.array([cx - a - margin, cy - b - margin, z_low])
        upper = np.array([cx + a + margin, cy + b + margin, z_high])
        return lower, upper

    def default_grid(self, spacing_mm: tuple[float, float, float]) -> ImageGrid:
        lower, upper = self.field_of_view_mm()
        return ImageGrid.covering_box(lower, upper, spacing_mm)


def _rotate(vector: np.ndarray, axis: np.ndarray, angle_rad: float) -> np.ndarray:
    """Rodrigues rotation of ``vector`` about the unit ``axis``."""
    axis = axis / np.linalg.norm(axis)
    return (
        vector * np.cos(angle_rad)
        + np.cross(axis, vector) * np.sin(angle_rad)
        + axis * np.dot(axis, vector) * (1 - np.cos(angle_rad))
    )


def build_vessel_tree(
    branch_half_angle_deg: float = 38.0,
    taper_bend_deg: float = 12.0,
    trunk_top_mm: tuple[float, float, float] = (0.0, 0.0, 44.0),
) -> tuple[VesselSegment, ...]:
    """The phantom's vessel tree.

    Each dichotomous split sends two children at ``±branch_half_angle_deg`` from the
    parent direction, in a plane turned 90° from the parent's own branching plane, the
    pattern of real bronchovascular trees. After the last split each branch tapers
    through the thin radius classes with a gentle bend.

    Returns
    -------
    tuple of VesselSegment
        Segments in depth-first order; ids are 0-based.
    """
    segments: list[VesselSegment] = []
    half_angle = np.deg2rad(branch_half_angle_deg)
    bend = np.deg2rad(taper_bend_deg)

    def add(radius: float, start: np.ndarray, end: np.ndarray, parent: int | None) -> int:
        segments.append(
            VesselSegment(
                id=len(segments),
                radius_mm=radius,
                start_mm=tuple(float(v) for v in start),
                end_mm=tuple(float(v) for v in end),
                parent_id=parent,
            )
        )
        return len(segments) - 1

    def grow(
        level: int, start: np.ndarray, direction: np.ndarray, normal: np.ndarray, parent: int | None, side: float
    ) -> None:
        if level < len(_BRANCHING_LEVELS):
            radius, length = _BRANCHING_LEVELS[level]
            end = start + direction * length
            me = add(radius, start, end, parent)
            # The next split happens in the plane spanned by `direction` and `normal`;
            # its own children split in the perpendicular plane.
            next_normal = np.cross(direction, normal)
            for sign in (-1.0, 1.0):
                child = _rotate(direction, normal, sign * half_angle)
                grow(level + 1, end, child / np.linalg.norm(child), next_normal, me, sign)
            return
        taper(start, direction, normal, parent, side)

    def taper(start: np.ndarray, direction: np.ndarray, normal: np.ndarray, parent: int | None, side: float) -> None:
        # Bending towards the side the branch left its sibling keeps twigs apart.
        for radius, length in _TAPER_LEVELS:
            end = start + direction * length
            parent = add(radius, start, end, parent)
            start = end
            direction = _rotate(direction, normal, side * bend)
            direction /= np.linalg.norm(direction)

    grow(0, np.asarray(trunk_top_mm, dtype=float), np.array([0.0, 0.0, -1.0]), np.array([0.0, 1.0, 0.0]), None, 1.0)
    return tuple(segments)


def default_design() -> PhantomDesign:
    """The built-in phantom: the vessel tree in its PMMA holder."""
    return PhantomDesign(segments=build_vessel_tree())


# --------------------------------------------------------------------------------------
# Rendering


def _distance_to_segment(points: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Euclidean distance of points (..., 3) to the line segment [start, end]."""
    axis = end - start
    length_sq = float(axis @ axis)
    relative = points - start
    if length_sq == 0.0:
        return np.linalg.norm(relative, axis=-1)
    t = np.clip(relative @ axis / length_sq, 0.0, 1.0)
    return np.linalg.norm(relative - t[..., None] * axis, axis=-1)


def _segment_index_box(grid: ImageGrid, segment: VesselSegment, margin_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Inclusive index bounds (i, j, k) of the voxels within ``margin_mm`` of a capsule."""
    reach = segment.radius_mm + margin_mm
    corners = []
    for point in (segment.start_mm, segment.end_mm):
        for offset in np.array(np.meshgrid([-1, 1], [-1, 1], [-1, 1])).T.reshape(-1, 3):
            corners.append(np.asarray(point) + offset * reach)
    index = grid.index_from_physical(np.array(corners))
    lower = np.maximum(np.floor(index.min(axis=0)).astype(int), 0)
    upper = np.minimum(np.ceil(index.max(axis=0)).astype(int), np.asarray(grid.size_ijk) - 1)
    return lower, upper


def _subsample_offsets(subsamples: int) -> np.ndarray:
    """Offsets (S, 3) in voxel units of a regular subsample lattice inside one voxel."""
    ticks = (np.arange(subsamples) + 0.5) / subsamples - 0.5
    return np.array(np.meshgrid(ticks, ticks, ticks, indexing="ij")).reshape(3, -1).T


def _jitter(voxel_keys: np.ndarray, count: int, subsamples: int) -> np.ndarray:
    """Reproducible stratified jitter (V, S, 3) inside each subsample cell.

    A regular lattice biases the area of a vessel aligned with the grid; jittering
    each point within its cell makes the errors independent, so they average out.
    The jitter is a hash of (voxel, point), identical whichever capsule asks.
    """
    keys = voxel_keys[:, None, None] * np.uint64(count * 3) + np.arange(count * 3, dtype=np.uint64).reshape(1, count, 3)
    with np.errstate(over="ignore"):
        keys = (keys + np.uint64(0x9E3779B97F4A7C15)) * np.uint64(0xBF58476D1CE4E5B9)
        keys ^= keys >> np.uint64(31)
        keys *= np.uint64(0x94D049BB133111EB)
        keys ^= keys >> np.uint64(29)
    uniform = (keys >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    return (uniform - 0.5) / subsamples


@dataclass
class VesselRendering:
    """Partial-volume rendering of the tree on a grid.

    Attributes
    ----------
    fraction : ndarray of float32, ``[k, j, i]``
        Fraction of each voxel's volume inside the tree.
    nearest_class : ndarray of uint8, ``[k, j, i]``
        Label of the radius class of the capsule whose surface is deepest around the
        voxel centre (0 where no capsule is within reach).
    class_volume_mm3 : dict
        Volume of the tree attributed to each radius class, integrated from the
        subsamples.
    signed_distance_mm : ndarray of float32, ``[k, j, i]``
        Signed distance of each voxel centre to the tree surface (negative inside;
        +inf beyond half a voxel diagonal outside every capsule's box).
    """

    fraction: np.ndarray
    nearest_class: np.ndarray
    class_volume_mm3: dict[float, float]
    signed_distance_mm: np.ndarray


def render_vessels(design: PhantomDesign, grid: ImageGrid, subsamples: int = 4) -> VesselRendering:
    """Render the fraction of each voxel inside the vessel tree.

    Voxels whose centre lies deeper than half a voxel diagonal inside (or outside)
    every capsule are wholly inside (or outside); the others are integrated on a
    ``subsamples``³ lattice. Each point of the union is attributed to the capsule in
    which it lies deepest (smallest signed distance), hence to one radius class.

    Parameters
    ----------
    design : PhantomDesign
    grid : ImageGrid
        Any grid, oblique and anisotropic included.
    subsamples : int
        Lattice points per axis in boundary voxels.
    """
    shape = grid.shape_kji
    half_diagonal = 0.5 * float(np.linalg.norm(grid.spacing_mm))
    signed = np.full(shape, np.inf, dtype=np.float32)
    owner = np.full(shape, -1, dtype=np.int32)
    segments = design.segments
    boxes = [_segment_index_box(grid, s, half_diagonal) for s in segments]

    for number, (segment, (lower, upper)) in enumerate(zip(segments, boxes, strict=True)):
        if np.any(upper < lower):
            continue
        ii, jj, kk = (np.arange(lower[a], upper[a] + 1) for a in range(3))
        index = np.stack(np.meshgrid(ii, jj, kk, indexing="ij"), axis=-1)
        points = grid.physical_from_index(index.reshape(-1, 3))
        distance = _distance_to_segment(points, np.asarray(segment.start_mm), np.asarray(segment.end_mm))
        distance = (distance - segment.radius_mm).reshape(index.shape[:3]).transpose(2, 1, 0)
        view = (slice(kk[0], kk[-1] + 1), slice(jj[0], jj[-1] + 1), slice(ii[0], ii[-1] + 1))
        better = distance < signed[view]
        signed[view] = np.where(better, distance, signed[view])
        owner[view] = np.where(better, number, owner[view])

    class_of_segment = np.array([design.class_label(s.radius_mm) for s in segments], dtype=np.uint8)
    fraction = (signed <= -half_diagonal).astype(np.float32)
    nearest_class = np.where(owner >= 0, class_of_segment[np.maximum(owner, 0)], 0).astype(np.uint8)
    inside_owner = owner[signed <= -half_diagonal]
    voxel_volume = grid.voxel_volume_mm3
    class_volume = np.bincount(class_of_segment[inside_owner], minlength=len(design.radius_classes_mm) + 1)
    class_volume = class_volume.astype(float) * voxel_volume

    boundary = np.argwhere(np.abs(signed) < half_diagonal)  # rows of (k, j, i)
    if len(boundary):
        offsets = _subsample_offsets(subsamples)
        best = np.full((len(boundary), len(offsets)), np.inf, dtype=np.float32)
        best_owner = np.full((len(boundary), len(offsets)), -1, dtype=np.int32)
        boundary_ijk = boundary[:, ::-1]
        linear = np.ravel_multi_index(tuple(boundary.T), shape).astype(np.uint64)
        for number, (segment, (lower, upper)) in enumerate(zip(segments, boxes, strict=True)):
            rows = np.flatnonzero(np.all((boundary_ijk >= lower) & (boundary_ijk <= upper), axis=1))
            if len(rows) == 0:
                continue
            index = (
                boundary_ijk[rows][:, None, :] + offsets[None, :, :] + _jitter(linear[rows], len(offsets), subsamples)
            )
            points = grid.physical_from_index(index.reshape(-1, 3)).reshape(len(rows), len(offsets), 3)
            distance = _distance_to_segment(points, np.asarray(segment.start_mm), np.asarray(segment.end_mm))
            distance = (distance - segment.radius_mm).astype(np.float32)
            better = distance < best[rows]
            best[rows] = np.where(better, distance, best[rows])
            best_owner[rows] = np.where(better, number, best_owner[rows])
        inside = best < 0
        fraction[tuple(boundary.T)] = inside.mean(axis=1)
        counted = class_of_segment[best_owner[inside]]
        class_volume += np.bincount(counted, minlength=len(class_volume)) * (voxel_volume / len(offsets))

    volumes = {radius: float(class_volume[k + 1]) for k, radius in enumerate(design.radius_classes_mm)}
    return VesselRendering(
        fraction=fraction, nearest_class=nearest_class, class_volume_mm3=volumes, signed_distance_mm=signed
    )


def render_holder_fraction(holder: HolderDesign, grid: ImageGrid, subsamples: int = 4) -> np.ndarray:
    """Fraction of each voxel inside the PMMA wall, ``[k, j, i]`` float32.

    When the grid's k axis runs along z (any in-plane rotation), one slice is
    integrated and repeated; otherwise every voxel near a wall surface is integrated.
    """
    direction = grid.direction_matrix
    offsets = _subsample_offsets(subsamples)
    if abs(abs(direction[2, 2]) - 1.0) < 1e-9:
        i, j = np.meshgrid(np.arange(grid.size_ijk[0]), np.arange(grid.size_ijk[1]), indexing="xy")
        offsets_2d = np.unique(offsets[:, :2], axis=0)
        total = np.zeros(i.shape, dtype=np.float32)
        for di, dj in offsets_2d:
            index = np.stack([i + di, j + dj, np.zeros_like(i, dtype=float)], axis=-1).reshape(-1, 3)
            points = grid.physical_from_index(index)
            total += holder.pmma_mask(points[:, 0], points[:, 1]).reshape(i.shape)
        slice_fraction = total / len(offsets_2d)
        return np.broadcast_to(slice_fraction, grid.shape_kji).astype(np.float32)

    k, j, i = np.indices(grid.shape_kji)
    centres = grid.physical_from_index(np.stack([i, j, k], axis=-1).reshape(-1, 3))
    fraction = holder.pmma_mask(centres[:, 0], centres[:, 1]).astype(np.float32)
    # Points within a voxel diagonal of either wall surface get integrated.
    reach = float(np.linalg.norm(grid.spacing_mm))
    scale = min(holder.outer_semi_axes_mm) - holder.wall_thickness_mm
    outer = holder.normalised_radius(centres[:, 0], centres[:, 1])
    inner = holder.normalised_radius(centres[:, 0], centres[:, 1], holder.wall_thickness_mm)
    near = (
        (np.abs(outer - 1) * scale < 2 * reach)
        | (np.abs(inner - 1) * scale < 2 * reach)
        | (np.abs(centres[:, 1] - holder.base_top_y_mm) < 2 * reach)
    )
    rows = np.flatnonzero(near)
    index = np.stack([i, j, k], axis=-1).reshape(-1, 3)[rows]
    inside = np.zeros(len(rows), dtype=np.float32)
    for offset in offsets:
        points = grid.physical_from_index(index + offset)
        inside += holder.pmma_mask(points[:, 0], points[:, 1])
    fraction[rows] = inside / len(offsets)
    return fraction.reshape(grid.shape_kji)
