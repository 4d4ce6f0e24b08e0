"""Sample data that ImagInfo generates locally when the user asks for it (nothing is downloaded).

Registration (at Slicer's startup) only tells the Sample Data module the file names
in Slicer's cache folder; it generates nothing and imports nothing beyond the
bridge. When the user clicks the sample, the ``customDownloader`` installs the
module's requirements if needed, runs ``imaginfo sample --out <cache folder>`` as a
child process (once: the files stay in the cache) and loads the nodes that the
folder's ``sample.json`` lists. Once generated, ``SampleData.downloadSample(name)``
finds the same files in the cache.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ImagInfoExtension.bridge.compat import application, import_slicer

#: What ``imaginfo sample`` writes beside the data: the nodes to load. The same name as
#: ``phantom.study.SAMPLE_MANIFEST``, spelled again because importing that module needs
#: pandas, which a fresh Slicer lacks when it registers and checks the sample.
SAMPLE_MANIFEST = "sample.json"


def sample_data_folder() -> Path:
    """Where generated sample data is kept: Slicer's download cache, else ``~/.imaginfo``."""
    cache = ""
    if application() is not None:
        manager = import_slicer().mrmlScene.GetCacheManager()
        cache = manager.GetRemoteCacheDirectory() if manager is not None else ""
    return Path(cache or Path.home() / ".imaginfo") / "ImagInfo"


@dataclass(frozen=True)
class GeneratedSample:
    """One Sample Data entry whose files a child job writes into the cache folder.

    Parameters
    ----------
    sample_name : str
        Unique name in the Sample Data module.
    requester : str
        The module whose Python requirements the generator needs.
    file_names, node_names, load_file_types : sequences of str
        What the generator writes and how Sample Data loads it ("VolumeFile",
        "SegmentationFile"); ``Testing/test_sample_data.py`` checks them against it.
    thumbnail : str
        Path of the thumbnail image.
    command : sequence of str
        The ``imaginfo`` command that writes the files into ``--out``.
    category : str
    """

    sample_name: str
    requester: str
    file_names: tuple[str, ...]
    node_names: tuple[str, ...]
    load_file_types: tuple[str, ...]
    thumbnail: str
    command: tuple[str, ...] = ("sample",)
    category: str = "ImagInfo"

    def register(self) -> None:
        """Add the entry to Slicer's Sample Data module (cheap; nothing is generated)."""
        import SampleData

        folder = sample_data_folder()
        SampleData.SampleDataLogic.registerCustomSampleDataSource(
            category=self.category,
            sampleName=self.sample_name,
            uris=[(folder / name).as_uri() for name in self.file_names],
            fileNames=list(self.file_names),
            nodeNames=list(self.node_names),
            thumbnailFileName=self.thumbnail,
            loadFileTypes=list(self.load_file_types),
            customDownloader=self.download,
        )

    def download(self, source: Any = None) -> list[Any]:
        """Sample Data's button: offer the packages, generate if needed, load.

        Declining the packages is not an error (nothing happens); a failure is shown and,
        as ``slicer.util.tryWithErrorDisplay`` does, raised again.
        """
        from ImagInfoExtension.bridge.requirements import ensure_requirements, module_requirements

        slicer = import_slicer()
        with slicer.util.tryWithErrorDisplay(f"Could not install what the {self.sample_name} sample data needs."):
            if not ensure_requirements(module_requirements(self.requester), self.requester):
                return []
        with slicer.util.tryWithErrorDisplay(f"Could not make the {self.sample_name} sample data.", waitCursor=True):
            return self.load()

    def generate(self, folder: Path | None = None) -> Path:
        """Write the files into ``folder`` (default the cache) unless they are there; returns the folder."""
        from ImagInfoExtension.bridge.process import ChildJob
        from ImagInfoExtension.bridge.requirements import ensure_requirements, module_requirements
        from ImagInfoExtension.bridge.scaffolding import processEvents

        folder = Path(folder) if folder is not None else sample_data_folder()
        if all((folder / name).is_file() for name in (*self.file_names, SAMPLE_MANIFEST)):
            return folder
        needed = module_requirements(self.requester)
        if not ensure_requirements(needed, self.requester):
            raise RuntimeError(
                f"the {self.sample_name} sample data is generated on this computer and needs {', '.join(needed)}; "
                "accept their installation to make it"
            )
        with ChildJob(self.command[0], [*self.command[1:], "--out", str(folder)]) as job:
            job.wait(idle=processEvents)
            job.result()
        return folder

    def load(self, folder: Path | None = None, scene: Any = None) -> list[Any]:
        """Generate if needed and load the sample's nodes into ``scene`` (default the application's)."""
        folder = self.generate(folder)
        return load_sample_nodes(folder, scene if scene is not None else import_slicer().mrmlScene)


def load_sample_nodes(folder: Path, scene: Any) -> list[Any]:
    """Load what ``folder/sample.json`` lists; a failure leaves no node behind."""
    from ImagInfoExtension.bridge.scenes import OutputNodes
    from ImagInfoExtension.bridge.segmentations import SegmentDescription, segmentation_node_from_label_map
    from ImagInfoExtension.bridge.volumes import volume_node_from_sitk
    from ImagInfoExtension.io import read_image

    entries: Sequence[dict] = json.loads((folder / SAMPLE_MANIFEST).read_text())["nodes"]
    images = {entry["file"]: read_image(folder / entry["file"]) for entry in entries}
    nodes: dict[str, Any] = {}
    with OutputNodes(scene, "SampleData"):
        for entry in entries:
            image = images[entry["file"]]
            if entry["kind"] == "volume":
                node = volume_node_from_sitk(image, scene, entry["name"])
                if "window_level" in entry:
                    node.GetDisplayNode().SetAutoWindowLevel(False)
                    node.GetDisplayNode().SetWindowLevel(*entry["window_level"])
            elif entry["kind"] == "segmentation":
                segments = [
                    SegmentDescription(label=s["label"], name=s["name"], color=tuple(s["color"]))
                    for s in entry["segments"]
                ]
                node = segmentation_node_from_label_map(
                    image, scene, segments, entry["name"], reference_volume_node=nodes.get(entry.get("reference"))
                )
            else:
                raise ValueError(f"{folder / SAMPLE_MANIFEST}: unknown node kind {entry['kind']!r}")
            nodes[entry["name"]] = node
    return list(nodes.values())
