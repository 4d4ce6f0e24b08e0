"""The model space: the array a network sees, and the exact way back to the input grid.

A network trained on MONAI pipelines sees channel-first arrays ``[C, X, Y, Z]`` whose
axes follow an orientation code such as ``RAS`` (what ``monai.transforms.Orientation``
gives). :func:`reorientation` finds the permutation and flips of the input's voxel axes
that come closest to that code. Only axes are permuted and reversed, so no voxel is
interpolated and the way back is exact, on oblique grids too.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import permutations

import numpy as np

from ImagInfoExtension.geometry import ImageGrid

#: LPS unit vector named by each letter of an orientation code.
AXIS_LETTERS: dict[str, tuple[float, float, float]] = {
    "L": (1.0, 0.0, 0.0),
    "R": (-1.0, 0.0, 0.0),
    "P": (0.0, 1.0, 0.0),
    "A": (0.0, -1.0, 0.0),
    "S": (0.0, 0.0, 1.0),
    "I": (0.0, 0.0, -1.0),
}


def orientation_vectors(code: str) -> np.ndarray:
    """The LPS unit vectors (rows) of the three axes an orientation code names.

    Raises
    ------
    ValueError
        When the code is not three letters of L/R, P/A, I/S with one of each pair.
    """
    letters = code.upper()
    pairs = ({"L", "R"}, {"P", "A"}, {"I", "S"})
    if len(letters) != 3 or any(letter not in AXIS_LETTERS for letter in letters):
        raise ValueError(f"orientation {code!r} must be three letters from L/R, P/A, I/S, e.g. 'RAS'")
    if any(len(pair & set(letters)) != 1 for pair in pairs):
        raise ValueError(f"orientation {code!r} must name each of the pairs L/R, P/A and I/S once, e.g. 'RAS'")
    return np.array([AXIS_LETTERS[letter] for letter in letters])


@dataclass(frozen=True)
class Reorientation:
    """How the voxel axes of an input grid map onto model axes.

    Attributes
    ----------
    input_grid : ImageGrid
        The grid of the input image.
    permutation : tuple of int
        Model axis ``a`` is input axis ``permutation[a]`` (0 = i, 1 = j, 2 = k).
    flips : tuple of bool
        Whether model axis ``a`` runs against its input axis.
    orientation : str
        The orientation code the model axes approximate.
    """

    input_grid: ImageGrid
    permutation: tuple[int, int, int]
    flips: tuple[bool, bool, bool]
    orientation: str

    def to_model(self, array_kji: np.ndarray) -> np.ndarray:
        """The model-space view ``[X, Y, Z]`` of a ``[k, j, i]`` array on the input grid."""
        if array_kji.shape != self.input_grid.shape_kji:
            raise ValueError(f"array shape {array_kji.shape} is not the input grid's {self.input_grid.shape_kji}")
        array_ijk = np.transpose(array_kji, (2, 1, 0))
        model = np.transpose(array_ijk, self.permutation)
        flipped = tuple(axis for axis, flip in enumerate(self.flips) if flip)
        return np.ascontiguousarray(np.flip(model, axis=flipped) if flipped else model)

    def to_input(self, array_xyz: np.ndarray) -> np.ndarray:
        """The ``[k, j, i]`` array on the input grid of a model-space array ``[X, Y, Z]``."""
        if array_xyz.shape != self.model_grid.size_ijk:
            raise ValueError(f"array shape {array_xyz.shape} is not the model grid's {self.model_grid.size_ijk}")
        flipped = tuple(axis for axis, flip in enumerate(self.flips) if flip)
        model = np.flip(array_xyz, axis=flipped) if flipped else array_xyz
        array_ijk = np.transpose(model, np.argsort(self.permutation))
        return np.ascontiguousarray(np.transpose(array_ijk, (2, 1, 0)))

    @property
    def model_grid(self) -> ImageGrid:
        """The grid of the model-space array, indexed ``[X, Y, Z]``: the same voxel centres as the input."""
        grid = self.input_grid
        size = np.asarray(grid.size_ijk)[list(self.permutation)]
        spacing = np.asarray(grid.spacing_mm)[list(self.permutation)]
        columns = grid.direction_matrix[:, list(self.permutation)].copy()
        first_index = np.zeros(3)
        for axis, flip in enumerate(self.flips):
            if flip:
                columns[:, axis] *= -1.0
                first_index[self.permutation[axis]] = grid.size_ijk[self.permutation[axis]] - 1
        origin = grid.physical_from_index(first_index[None, :])[0]
        return ImageGrid(
            size_ijk=tuple(int(n) for n in size),
            spacing_mm=tuple(float(s) for s in spacing),
            origin_mm=tuple(float(o) for o in origin),
            direction=tuple(float(d) for d in columns.ravel()),
        )


def reorientation(grid: ImageGrid, orientation: str = "RAS") -> Reorientation:
    """The permutation and flips of ``grid``'s axes closest to ``orientation``.

    Each model axis takes the input axis most nearly parallel to the code's axis; on
    an oblique grid, the assignment maximises the summed alignment of all three.

    Examples
    --------
    >>> from ImagInfoExtension.geometry import ImageGrid
    >>> grid = ImageGrid((4, 5, 6), (1.0, 1.0, 2.0))  # LPS axes
    >>> r = reorientation(grid, "RAS")
    >>> r.permutation, r.flips
    ((0, 1, 2), (True, True, False))
    """
    targets = orientation_vectors(orientation)
    alignment = targets @ grid.direction_matrix  # [model axis, input axis]
    best = max(permutations(range(3)), key=lambda p: sum(abs(alignment[a, p[a]]) for a in range(3)))
    flips = tuple(bool(alignment[a, best[a]] < 0) for a in range(3))
    return Reorientation(
        input_grid=grid,
        permutation=tuple(int(p) for p in best),
        flips=flips,
        orientation=orientation.upper(),
    )


def normalise_intensity(
    array: np.ndarray,
    clip_min: float | None,
    clip_max: float | None,
    mode: str = "range",
    mean: float | None = None,
    sd: float | None = None,
) -> np.ndarray:
    """Clip, then scale intensities as a catalogue entry's preprocessing states.

    Parameters
    ----------
    array : ndarray
        Intensities (HU, SUV, ...).
    clip_min, clip_max : float or None
        The intensity window; ``None`` leaves that side open.
    mode : {'range', 'zscore', 'fixed', 'none'}
        ``range`` maps the clip window to [0, 1] (both bounds needed); ``zscore``
        subtracts the array's mean and divides by its SD; ``fixed`` uses the given
        ``mean`` and ``sd``; ``none`` only clips.

    Returns
    -------
    ndarray of float32
    """
    values = np.asarray(array, dtype=np.float32)
    if clip_min is not None or clip_max is not None:
        values = np.clip(values, clip_min, clip_max)
    if mode == "range":
        if clip_min is None or clip_max is None or clip_max <= clip_min:
            raise ValueError("'range' normalisation needs clip_min < clip_max")
        return (values - np.float32(clip_min)) / np.float32(clip_max - clip_min)
    if mode == "zscore":
        spread = float(values.std())
        return (values - np.float32(values.mean())) / np.float32(spread if spread > 0 else 1.0)
    if mode == "fixed":
        if mean is None or sd is None or sd <= 0:
            raise ValueError("'fixed' normalisation needs a mean and a positive sd")
        return (values - np.float32(mean)) / np.float32(sd)
    if mode == "none":
        return values
    raise ValueError(f"unknown normalisation {mode!r}; choose range, zscore, fixed or none")
