"""Run in a child Python by test_fresh_slicer.py: a fresh Slicer, with only the packages Slicer bundles.

Usage: ``python fresh_slicer_check.py MAJOR.MINOR BUNDLED_JSON``. Every installed
distribution that the given Slicer release does not bundle is hidden: importing it
fails as it would in a fresh Slicer, and ``importlib.metadata`` does not know it.
Then, for each module under Modules/Scripted, it does what a new user does: Slicer
loads the module, registers its sample data at startup, shows its panel, the user
fills in the inputs, clicks Apply and declines the offer to install packages; then
asks for the sample data. It prints a JSON report on stdout.
"""

from __future__ import annotations

import importlib.abc
import importlib.metadata as metadata
import importlib.util
import json
import re
import sys
import traceback
from pathlib import Path

RELEASE = tuple(int(v) for v in sys.argv[1].split("."))
BUNDLED = json.loads(Path(sys.argv[2]).read_text())
REPOSITORY = Path(__file__).resolve().parent.parent


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


#: Distributions present in the Slicer release, plus what Slicer builds itself (SimpleITK,
#: VTK and its MRML), this extension, and the stand-in for what slicer-core lacks.
ALLOWED = {_normalise(d) for d in BUNDLED} | {"simpleitk", "vtk", "slicer-core", "imaginfo"}
IMPORT_OWNERS = metadata.packages_distributions()
BLOCKED_ATTEMPTS: list[str] = []


def _hidden(distribution: str) -> bool:
    return _normalise(distribution) not in ALLOWED


class FreshSlicerFinder(importlib.abc.MetaPathFinder):
    """Refuses every installed package the Slicer release does not bundle."""

    def find_spec(self, name, path=None, target=None):
        top = name.split(".")[0]
        owners = IMPORT_OWNERS.get(top, [])
        if owners and all(_hidden(owner) for owner in owners):
            BLOCKED_ATTEMPTS.append(top)
            raise ModuleNotFoundError(f"No module named {top!r} (a fresh Slicer does not bundle it)", name=top)
        return None


_from_name = metadata.Distribution.from_name.__func__


def _from_name_in_fresh_slicer(cls, name: str):
    if _hidden(name):
        raise metadata.PackageNotFoundError(name)
    return _from_name(cls, name)


sys.meta_path.insert(0, FreshSlicerFinder())
metadata.Distribution.from_name = classmethod(_from_name_in_fresh_slicer)
sys.path.insert(0, str(REPOSITORY / "Testing"))
sys.path.insert(0, str(REPOSITORY))

import slicer_harness  # noqa: E402


def _load(module_dir: Path):
    spec = importlib.util.spec_from_file_location(module_dir.name, module_dir / f"{module_dir.name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_dir.name] = module
    spec.loader.exec_module(module)
    return module


def _image(image_class, scalar_type):
    """An 8 x 8 x 8 image of one component (a volume's voxels, or a segment's binary label map)."""
    image = image_class()
    image.SetDimensions(8, 8, 8)
    image.AllocateScalars(scalar_type, 1)
    return image


def _volume(slicer, vtk):
    """A CT volume node in the scene, as loading a file gives."""
    volume = slicer.vtkMRMLScalarVolumeNode()
    volume.SetAndObserveImageData(_image(vtk.vtkImageData, vtk.VTK_SHORT))
    slicer.mrmlScene.AddNode(volume)
    return volume


def _fill_inputs(name: str, slicer, parameters) -> None:
    """What the user selects before Apply."""
    import vtk

    if name == "ImagInfoVesselPhantom":
        parameters.inputVolume = _volume(slicer, vtk)
    elif name == "ImagInfoDoseComparison":
        table = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTableNode", "study")
        for array_class, column, value in (
            (vtk.vtkStringArray, "path", "/data/FBP_1mGy.nrrd"),
            (vtk.vtkStringArray, "recon", "FBP"),
            (vtk.vtkDoubleArray, "dose_mgy", 1.0),
            (vtk.vtkDoubleArray, "repetition", 1.0),
        ):
            array = array_class()
            array.SetName(column)
            array.InsertNextValue(value)
            table.AddColumn(array)
        parameters.studyTable = table
        parameters.outputFolder = Path("/tmp/imaginfo-fresh-slicer-out")
    elif name == "ImagInfoRadiomics":
        volume = _volume(slicer, vtk)
        mask = _image(slicer.vtkOrientedImageData, vtk.VTK_UNSIGNED_CHAR)
        segment = slicer.vtkSegment()
        segment.SetName("tumour")
        segment.AddRepresentation(slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName(), mask)
        segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "tumour segmentation")
        segmentation.GetSegmentation().AddSegment(segment, "tumour")
        parameters.inputVolume = volume
        parameters.inputSegmentation = segmentation
    elif name == "ImagInfoSegmentation":
        parameters.inputVolume = _volume(slicer, vtk)


def _catalogue_with_one_model() -> None:
    """A user catalogue with one model whose weights are in the cache, as after `imaginfo models fetch`.

    The segmentation module lists the catalogue's models; a fresh clone ships none yet,
    and Apply needs one. The weights are placeholder bytes with their own sha256: the
    panel only verifies them, and the child that would load them is never started here.
    """
    import atexit
    import hashlib
    import os
    import shutil
    import tempfile

    cache = Path(tempfile.mkdtemp(prefix="imaginfo-fresh-models-"))
    atexit.register(shutil.rmtree, cache, ignore_errors=True)
    os.environ["IMAGINFO_MODEL_CACHE"] = str(cache)
    weights = b"stand-in weights of the fresh-Slicer check"
    (cache / "fresh-check" / "1.0.0").mkdir(parents=True)
    (cache / "fresh-check" / "1.0.0" / "model.pt").write_bytes(weights)
    code = {"scheme": "SCT", "code": "91723000", "meaning": "Anatomical Structure"}
    entry = {
        "id": "fresh-check",
        "version": "1.0.0",
        "title": "Fresh-Slicer check model",
        "task": "segmentation",
        "modality": "CT",
        "input_channels": 1,
        "preprocessing": {"orientation": "RAS", "intensity": {"normalisation": "none"}},
        "network": {"format": "monai", "class": "UNet", "args": {}},
        "inference": {"roi_size": [32, 32, 32]},
        "postprocessing": {"activation": "softmax", "decision": "argmax"},
        "labels": [
            {
                "value": 1,
                "name": "structure",
                "color": "#ff0000",
                "terminology": {
                    "category": code,
                    "type": {"scheme": "SCT", "code": "59820001", "meaning": "Blood vessel"},
                },
            }
        ],
        "weights": {
            "file": "model.pt",
            "format": "state_dict",
            "sha256": hashlib.sha256(weights).hexdigest(),
            "size_bytes": len(weights),
        },
        "license": "Apache-2.0",
    }
    (cache / "catalogue.json").write_text(json.dumps({"schema_version": 1, "models": [entry]}))


def main() -> dict:
    report: dict = {"release": list(RELEASE), "modules": {}}
    _catalogue_with_one_model()
    with slicer_harness.application(RELEASE) as app:
        import slicer

        modules = {}
        for module_dir in sorted((REPOSITORY / "Modules" / "Scripted").glob("*")):
            if not (module_dir / "CMakeLists.txt").is_file():
                continue
            entry = report["modules"].setdefault(module_dir.name, {})
            try:
                module = _load(module_dir)
                description = getattr(module, module_dir.name)(slicer_harness.ModuleParent(module.__file__))
                entry["title"] = description.parent.title
                entry["help"] = description.parent.helpText
                modules[module_dir.name] = module
            except Exception:  # noqa: BLE001 - reported to the test, which names it
                entry["load_error"] = traceback.format_exc()
        app.emit("startupCompleted()")
        registered = [args for kind, args in slicer_harness.EVENTS if kind == "registerCustomSampleDataSource"]
        report["sample_data"] = [
            {k: (v if isinstance(v, (str, list, int, float, bool, type(None))) else repr(v)) for k, v in a.items()}
            for a in registered
        ]
        for name, module in modules.items():
            entry = report["modules"][name]
            slicer_harness.EVENTS.clear()
            # Each panel opens on an empty scene, as a new user's would: no earlier module's inputs.
            slicer.mrmlScene.Clear(0)
            try:
                widget = getattr(module, f"{name}Widget")()
                widget.setup()
                entry["panel_widgets"] = sorted(vars(widget.ui)) if widget.ui is not None else []
                entry["apply_enabled_empty"] = widget.ui.applyButton.enabled
                entry["apply_tooltip_empty"] = widget.ui.applyButton.toolTip
                _fill_inputs(name, slicer, widget._parameterNode)
                entry["apply_enabled_filled"] = widget.ui.applyButton.enabled
                entry["missing"] = widget.logic.missingRequirements()
                widget.ui.applyButton.click()
                entry["status_after_decline"] = widget.ui.statusLabel.text
                entry["job_started"] = widget._job is not None
                entry["events"] = [[kind, str(args)] for kind, args in slicer_harness.EVENTS]
                widget.exit()
                widget.cleanup()
            except Exception:  # noqa: BLE001 - reported to the test, which names it
                entry["panel_error"] = traceback.format_exc()
        if registered:
            slicer_harness.EVENTS.clear()
            source = registered[0]
            try:
                nodes = source["customDownloader"](None)
                report["sample_download"] = f"loaded {len(nodes)} nodes" if nodes else "loaded nothing"
            except Exception as error:  # noqa: BLE001 - Slicer shows it; the test reads it
                report["sample_download"] = f"{type(error).__name__}: {error}"
            report["sample_events"] = [[kind, str(args)] for kind, args in slicer_harness.EVENTS]
    report["blocked_attempts"] = sorted(set(BLOCKED_ATTEMPTS))
    report["hidden_loaded"] = sorted(
        top
        for top in {m.split(".")[0] for m in sys.modules}
        if IMPORT_OWNERS.get(top) and all(_hidden(o) for o in IMPORT_OWNERS[top])
    )
    return report


if __name__ == "__main__":
    print(json.dumps(main()))
