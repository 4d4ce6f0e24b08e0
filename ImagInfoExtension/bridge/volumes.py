"""Scalar volume nodes <-> SimpleITK images, exactly to the voxel and to the millimetre.

Also the VTK matrix and image-data helpers the other bridge modules share. ``slicer``
and ``vtk`` are imported on first use.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import SimpleITK as sitk

from ImagInfoExtension.bridge.compat import import_slicer
from ImagInfoExtension.geometry import ImageGrid

#: MRML's RAS from SimpleITK's and DICOM's LPS (and back: it is its own inverse).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

# numpy dtype -> VTK scalar type constant (values from vtkType.h).
_VTK_TYPES = {
    np.dtype(np.int8): 15,
    np.dtype(np.uint8): 3,
    np.dtype(np.int16): 4,
    np.dtype(np.uint16): 5,
    np.dtype(np.int32): 6,
    np.dtype(np.uint32): 7,
    np.dtype(np.int64): 16,
    np.dtype(np.uint64): 17,
    np.dtype(np.float32): 10,
    np.dtype(np.float64): 11,
}


def vtk_module() -> Any:
    import vtk

    return vtk


def numpy_support() -> Any:
    from vtk.util import numpy_support

    return numpy_support


# --------------------------------------------------------------------------------------
# Matrices


def matrix_to_numpy(matrix: Any) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def numpy_to_matrix(array: np.ndarray) -> Any:
    matrix = vtk_module().vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r, c]))
    return matrix


def ijk_to_ras_from_grid(grid: ImageGrid) -> np.ndarray:
    """The 4x4 IJK-to-RAS matrix MRML uses for a grid defined in LPS."""
    return LPS_TO_RAS @ grid.index_to_physical_matrix


def grid_from_ijk_to_ras(ijk_to_ras: np.ndarray, size_ijk: Sequence[int]) -> ImageGrid:
    """The LPS grid of an IJK-to-RAS matrix (which holds spacing, direction, origin)."""
    ijk_to_lps = LPS_TO_RAS @ ijk_to_ras
    axes = ijk_to_lps[:3, :3]
    spacing = np.linalg.norm(axes, axis=0)
    if np.any(spacing <= 0):
        raise ValueError("the volume's IJK-to-RAS matrix has a zero-length axis")
    direction = axes / spacing
    return ImageGrid(
        size_ijk=tuple(int(s) for s in size_ijk),
        spacing_mm=tuple(float(s) for s in spacing),
        origin_mm=tuple(float(o) for o in ijk_to_lps[:3, 3]),
        direction=tuple(float(d) for d in direction.ravel()),
    )


def world_matrix(node: Any) -> np.ndarray:
    """4x4 transform from the node's local RAS to world RAS (identity if untransformed)."""
    parent = node.GetParentTransformNode()
    if parent is None:
        return np.eye(4)
    if not parent.IsTransformToWorldLinear():
        raise ValueError(
            f"{node.GetName()} is under a non-linear transform; harden it first "
            "(Transforms module > Harden transform) so its voxels have a fixed geometry"
        )
    matrix = vtk_module().vtkMatrix4x4()
    parent.GetMatrixTransformToWorld(matrix)
    return matrix_to_numpy(matrix)


# --------------------------------------------------------------------------------------
# Voxels


def image_data_to_array(image_data: Any, what: str) -> np.ndarray:
    """The voxels of a vtkImageData as ``[k, j, i]`` (a copy)."""
    scalars = image_data.GetPointData().GetScalars()
    if scalars is None:
        raise ValueError(f"{what} has no voxel data")
    if scalars.GetNumberOfComponents() != 1:
        raise ValueError(
            f"{what} has {scalars.GetNumberOfComponents()} components per voxel; ImagInfo needs a scalar "
            "volume (convert a colour or vector volume with the Vector to Scalar Volume module)"
        )
    nx, ny, nz = image_data.GetDimensions()
    return numpy_support().vtk_to_numpy(scalars).reshape(nz, ny, nx).copy()


def array_to_image_data(array_kji: np.ndarray, image_data_class: Any) -> Any:
    """A new ``image_data_class`` (vtkImageData, vtkOrientedImageData) holding ``[k, j, i]`` voxels."""
    dtype = array_kji.dtype
    if dtype == np.bool_:
        array_kji = array_kji.astype(np.uint8)
        dtype = array_kji.dtype
    if dtype not in _VTK_TYPES:
        raise ValueError(f"voxel type {dtype} has no VTK equivalent")
    image_data = image_data_class()
    nz, ny, nx = array_kji.shape
    image_data.SetDimensions(nx, ny, nz)
    flat = np.ascontiguousarray(array_kji).ravel()
    vtk_array = numpy_support().numpy_to_vtk(flat, deep=True, array_type=_VTK_TYPES[dtype])
    image_data.GetPointData().SetScalars(vtk_array)
    return image_data


# --------------------------------------------------------------------------------------
# Volume nodes


def sitk_from_volume_node(volume_node: Any) -> sitk.Image:
    """A SimpleITK image (LPS) with the voxels and geometry of a scalar volume node.

    Origin, spacing and the full direction matrix are kept, and a linear parent
    transform is applied. The voxel type is kept (int16, uint8, float32, ...).

    Raises
    ------
    ValueError
        For a vector, colour or tensor volume, a volume without voxels, or one under
        a non-linear transform.
    """
    if volume_node is None:
        raise ValueError("no volume given: select a scalar volume")
    vector_kinds = ("vtkMRMLVectorVolumeNode", "vtkMRMLTensorVolumeNode", "vtkMRMLDiffusionWeightedVolumeNode")
    if not volume_node.IsA("vtkMRMLScalarVolumeNode") or any(volume_node.IsA(kind) for kind in vector_kinds):
        raise ValueError(
            f"{volume_node.GetName()} is a {volume_node.GetClassName()}, not a scalar volume; "
            "ImagInfo needs a 3D scalar volume (split 4D sequences into single frames first)"
        )
    image_data = volume_node.GetImageData()
    if image_data is None:
        raise ValueError(f"{volume_node.GetName()} has no voxel data")
    array = image_data_to_array(image_data, volume_node.GetName())
    world = world_matrix(volume_node)
    if np.array_equal(world, np.eye(4)):
        # Spacing, origin and directions as the node stores them: decomposing the composed
        # IJK-to-RAS matrix would change the direction cosines in their last bits, enough to
        # move a resampling grid (pyradiomics' among them) by a voxel.
        grid = grid_from_volume_node(volume_node, image_data.GetDimensions())
    else:
        ijk_to_ras = vtk_module().vtkMatrix4x4()
        volume_node.GetIJKToRASMatrix(ijk_to_ras)
        grid = grid_from_ijk_to_ras(world @ matrix_to_numpy(ijk_to_ras), image_data.GetDimensions())
    return grid.to_sitk(array)


def grid_from_volume_node(volume_node: Any, size_ijk: Sequence[int]) -> ImageGrid:
    """The LPS grid of an untransformed volume node, bit for bit as the node stores it."""
    directions = vtk_module().vtkMatrix4x4()
    volume_node.GetIJKToRASDirectionMatrix(directions)
    ras_directions = matrix_to_numpy(directions)[:3, :3]
    origin = volume_node.GetOrigin()
    return ImageGrid(
        size_ijk=tuple(int(s) for s in size_ijk),
        spacing_mm=tuple(float(s) for s in volume_node.GetSpacing()),
        origin_mm=(-float(origin[0]), -float(origin[1]), float(origin[2])),
        direction=tuple(float(d) for d in (LPS_TO_RAS[:3, :3] @ ras_directions).ravel()),
    )


def volume_node_from_sitk(
    image: sitk.Image,
    scene: Any,
    name: str,
    node: Any = None,
    label_map: bool = False,
) -> Any:
    """Put a 3D scalar SimpleITK image into a (new or given) volume node.

    Parameters
    ----------
    image : SimpleITK.Image
        3D, one component per voxel.
    scene : vtkMRMLScene
    name : str
        Name of a new node (ignored when ``node`` is given).
    node : vtkMRMLScalarVolumeNode, optional
        Node to update in place.
    label_map : bool
        Create a vtkMRMLLabelMapVolumeNode.

    Raises
    ------
    ValueError
        For 4D or vector images. Nothing is added to the scene then.
    """
    if image.GetDimension() != 3:
        raise ValueError(f"expected a 3D image, got {image.GetDimension()}D; split 4D data into 3D frames")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(
            f"the image has {image.GetNumberOfComponentsPerPixel()} components per voxel; "
            "ImagInfo volumes are scalar (take one component with VectorIndexSelectionCast)"
        )
    slicer = import_slicer()
    grid = ImageGrid.from_sitk(image)
    image_data = array_to_image_data(sitk.GetArrayViewFromImage(image), vtk_module().vtkImageData)
    if node is None:
        node = slicer.vtkMRMLLabelMapVolumeNode() if label_map else slicer.vtkMRMLScalarVolumeNode()
        node.SetName(name)
        scene.AddNode(node)
    # Spacing, origin and directions are set one by one, so that they are stored exactly
    # (negating an LPS axis into RAS is exact; composing and decomposing a matrix is not).
    ras_directions = np.eye(4)
    ras_directions[:3, :3] = LPS_TO_RAS[:3, :3] @ grid.direction_matrix
    node.SetIJKToRASDirectionMatrix(numpy_to_matrix(ras_directions))
    node.SetSpacing(*grid.spacing_mm)
    node.SetOrigin(-grid.origin_mm[0], -grid.origin_mm[1], grid.origin_mm[2])
    node.SetAndObserveImageData(image_data)
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    return node
