"""Scenes, Slicer data bundles (``.mrb``), and the output nodes of a module run."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from ImagInfoExtension.bridge.compat import import_slicer

#: Node attributes that mark a node as an ImagInfo output: which module and role made
#: it, and for which input, so that a re-run finds it again.
OUTPUT_ROLE_ATTRIBUTE = "ImagInfo.OutputRole"
OUTPUT_KEY_ATTRIBUTE = "ImagInfo.OutputKey"


class OutputNodes:
    """The output nodes of one run: reused when an earlier run made them, rolled back on failure.

    Use it as a context manager. Inside, :meth:`node` gives the node for a role: the
    one the user chose, else the one an earlier run with the same owner and key made,
    else a new one. If the block raises, every node added to the scene inside it is
    removed again (with its display, storage and plot-series nodes), so a failed run
    leaves no half-made nodes. A node reused from an earlier run cannot be put back:
    the bridge's converters therefore check their input completely before they change a
    node, and callers read and validate all outputs before entering the block.

    Parameters
    ----------
    scene : vtkMRMLScene
    owner : str
        The module (``"ImagInfoVesselPhantom"``).
    key : str
        What the outputs belong to, e.g. the input volume's node ID; runs on another
        input get their own nodes.

    Examples
    --------
    >>> with OutputNodes(scene, "ImagInfoVesselPhantom", volume.GetID()) as outputs:  # doctest: +SKIP
    ...     table = outputs.node("table", "vtkMRMLTableNode", "CT per radius")
    ...     table_node_from_dataframe(frame, scene, "CT per radius", node=table)
    """

    def __init__(self, scene: Any, owner: str, key: str = "") -> None:
        self.scene = scene
        self.owner = owner
        self.key = key
        self.created: list[Any] = []
        self.reused: list[Any] = []
        self._before: set[str] = set()

    def __enter__(self) -> OutputNodes:
        self._before = {self.scene.GetNthNode(n).GetID() for n in range(self.scene.GetNumberOfNodes())}
        return self

    def __exit__(self, kind: Any, error: Any, traceback: Any) -> None:
        if kind is None:
            return
        added = [
            self.scene.GetNthNode(n)
            for n in range(self.scene.GetNumberOfNodes())
            if self.scene.GetNthNode(n).GetID() not in self._before
        ]
        for node in reversed(added):
            if node.GetScene() is self.scene:
                self.scene.RemoveNode(node)

    def _role(self, role: str) -> str:
        return f"{self.owner}:{role}"

    def find(self, role: str, class_name: str) -> Any:
        """The node an earlier run made for ``role`` (same owner and key), or None."""
        nodes = self.scene.GetNodesByClass(class_name)
        try:
            for index in range(nodes.GetNumberOfItems()):
                node = nodes.GetItemAsObject(index)
                if (
                    node.GetAttribute(OUTPUT_ROLE_ATTRIBUTE) == self._role(role)
                    and (node.GetAttribute(OUTPUT_KEY_ATTRIBUTE) or "") == self.key
                ):
                    return node
        finally:
            nodes.UnRegister(None)
        return None

    def node(self, role: str, class_name: str, name: str, preferred: Any = None) -> Any:
        """The node to fill for ``role``: ``preferred`` (the user's choice), an earlier run's, or a new one."""
        node = None
        if preferred is not None and preferred.GetScene() is self.scene and preferred.IsA(class_name):
            node = preferred
        if node is None:
            node = self.find(role, class_name)
        if node is None:
            node = self.scene.AddNewNodeByClass(class_name, name)
            self.created.append(node)
        else:
            self.reused.append(node)
        node.SetAttribute(OUTPUT_ROLE_ATTRIBUTE, self._role(role))
        node.SetAttribute(OUTPUT_KEY_ATTRIBUTE, self.key)
        return node


def new_scene() -> Any:
    """An empty MRML scene (headless)."""
    return import_slicer().vtkMRMLScene()


def save_scene_bundle(scene: Any, path: str | Path) -> Path:
    """Save a scene and all its data as a Slicer data bundle (``.mrb``).

    The bundle is written to a temporary folder and zipped in place only once it is
    complete, so a failure leaves no partial file.
    """
    slicer = import_slicer()
    path = Path(path).resolve()  # Slicer's bundle writer needs absolute paths
    if path.suffix.lower() != ".mrb":
        raise ValueError(f"a scene bundle needs the .mrb suffix, got {path.name}")
    path.parent.mkdir(parents=True, exist_ok=True)
    for index in range(scene.GetNumberOfNodes()):
        node = scene.GetNthNode(index)
        if node.IsA("vtkMRMLStorableNode") and node.GetStorageNode() is None:
            node.AddDefaultStorageNode()
    logic = slicer.vtkMRMLApplicationLogic()
    logic.SetMRMLScene(scene)
    work = Path(tempfile.mkdtemp(prefix=".mrb-", dir=path.parent))
    try:
        bundle = work / path.stem
        bundle.mkdir()
        if not logic.SaveSceneToSlicerDataBundleDirectory(str(bundle)):
            raise OSError(f"Slicer could not save the scene to {bundle}")
        partial = work / path.name
        if not logic.Zip(str(partial), str(bundle)):
            raise OSError(f"could not zip the scene bundle {partial}")
        partial.replace(path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return path


def load_scene_bundle(path: str | Path) -> Any:
    """Open a ``.mrb`` into a new scene (for checks and headless batch work)."""
    slicer = import_slicer()
    scene = slicer.vtkMRMLScene()
    logic = slicer.vtkMRMLApplicationLogic()
    logic.SetMRMLScene(scene)
    work = tempfile.mkdtemp(prefix="imaginfo-mrb-")
    try:
        if not logic.OpenSlicerDataBundle(str(Path(path).resolve()), work):
            raise OSError(f"Slicer could not open the scene bundle {path}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return scene
