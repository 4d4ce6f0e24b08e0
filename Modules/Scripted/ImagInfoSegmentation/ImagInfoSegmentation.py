"""ImagInfo segmentation: catalogue models (MONAI) on CPU or GPU, rules, follow-up, batches.

A model runs as ``imaginfo segment`` (``ImagInfoExtension.segmentation.run``) in a child
process, with progress and Cancel: the logic writes the volume (and a reference
segmentation as a label map labelled as the model), and turns the command's outputs
(``segmentation.nrrd``, ``biomarkers.csv``, ``evaluation.csv``, ``summary.json``) into a
segmentation node with the catalogue's names, colours and DICOM terminology, a biomarker
table and an evaluation table. Weights are fetched by ``imaginfo models fetch`` (also a
child). The rule-based mode (HU window within a mask, region growing from points) and
the follow-up comparison run in this process: they take a second. What modules share
is in ``ImagInfoExtension.bridge.scaffolding``; this file holds what is this module's
own.

Python packages: torch comes through Slicer's PyTorch extension (it picks the CUDA or
CPU build that fits the computer), the rest through the module's requirements list,
all on first use (``ImagInfoExtension.bridge.pytorch``). The module loads without any
of them.
"""

import contextlib
import logging
import re
from pathlib import Path
from typing import Annotated

from ImagInfoExtension.bridge.pointlists import vtkMRMLMarkupsFiducialNode
from ImagInfoExtension.bridge.scaffolding import (
    Choice,
    ImagInfoModule,
    ImagInfoModuleLogic,
    ImagInfoModuleTest,
    ImagInfoModuleWidget,
    WithinRange,
    optionalPath,
    parameterNodeWrapper,
    requiredPath,
    vtkMRMLScalarVolumeNode,
    vtkMRMLSegmentationNode,
    vtkMRMLTableNode,
)
from ImagInfoExtension.bridge.scaffolding import tr as _

#: The model the panel and ``logic.segment`` choose unless told otherwise.
DEFAULT_MODEL_ID = "imaginfo-phantom-vessels"
DEVICES = ["auto", "cpu", "cuda", "mps"]
RULE_MODES = ["window", "growing"]
CONNECTIVITIES = ["6", "18", "26"]

#: Requirements that depend on torch: installed only once torch is there, without touching it.
TORCH_DEPENDENT = ("monai",)

#: Exit code of ``imaginfo segment --manifest`` when some cases failed (the others are written).
EXIT_SOME_CASES_FAILED = 3

#: Prefix of the provenance attributes of the output nodes.
PROVENANCE_ATTRIBUTE = "ImagInfo.segmentation."
#: Node references from an output segmentation to its tables.
BIOMARKERS_REFERENCE = "ImagInfo.segmentation.biomarkers"
EVALUATION_REFERENCE = "ImagInfo.segmentation.evaluation"


def _modelChoices():
    """Every catalogue model as ``id@version`` (newest version first), and the default one.

    Read once, when Slicer loads the module: a model imported later
    (``imaginfo models import``) appears after a restart; ``logic.segment`` takes any
    catalogue model at once. A damaged catalogue must not stop the module from loading:
    it leaves the list empty and the panel says why.
    """
    try:
        from ImagInfoExtension.segmentation.catalogue import load_catalogue

        catalogue = load_catalogue()
    except Exception as error:  # noqa: BLE001 - shown by the panel (applyBlocker reloads it)
        logging.getLogger(__name__).warning("ImagInfoSegmentation: the model catalogue could not be read: %s", error)
        return [""], ""
    keys = [f"{modelId}@{version}" for modelId in catalogue.ids() for version in reversed(catalogue.versions(modelId))]
    if not keys:
        return [""], ""
    default = next((k for k in keys if k.startswith(DEFAULT_MODEL_ID + "@")), keys[0])
    return keys, default


MODEL_CHOICES, DEFAULT_MODEL = _modelChoices()


def _requirementName(requirement):
    return re.split(r"[\[<>=!~ ;]", requirement, maxsplit=1)[0].lower()


def _readCsv(path, **options):
    """A CSV written with every digit, read back to the same floats (pandas 3 does by default, 2 when asked)."""
    import pandas as pd

    if int(pd.__version__.split(".")[0]) < 3:
        options.setdefault("float_precision", "round_trip")
    return pd.read_csv(path, **options)


def _rgb(color):
    """``#rrggbb`` → three floats in [0, 1]."""
    return tuple(int(color[i : i + 2], 16) / 255.0 for i in (1, 3, 5))


#
# ImagInfoSegmentation
#


class ImagInfoSegmentation(ImagInfoModule):
    def __init__(self, parent):
        ImagInfoModule.__init__(self, parent)
        self.describe(
            _("ImagInfo Segmentation"),
            _(
                "Segments a volume with a model of ImagInfo's catalogue (MONAI networks, e.g. the shipped lung-vessel "
                "phantom model that labels vessels by radius class), on the CPU or a GPU (CUDA, Apple MPS). The "
                "model picker shows each model's licence, weights size, expected time and memory, and whether its "
                "weights are present and verified (SHA-256); Download weights fetches them into the per-user cache. "
                "Outputs: a segmentation with one segment per label (names, colours and DICOM terminology), a "
                "biomarker table (volume, lesion count, centroid, bounding box, maximum diameter and intensities per "
                "segment and lesion), and with a reference segmentation an evaluation table (Dice, HD95, ASSD, "
                "normalised surface Dice). The model runs as a separate process with Slicer's Python; Cancel stops "
                "it. Rule-based: an HU window within a mask segment (e.g. 40-90 HU in the brain for acute blood), or "
                "region growing from points. Follow-up: registers a follow-up scan to its baseline and matches "
                "lesions (volume change, new and vanished lesions). Batch: every volume of the scene, or a "
                "manifest of files. PyTorch is installed through the PyTorch extension, which picks the build for "
                "this computer. From the Python console: <code>segmentation = slicer.util.getModuleLogic("
                "'ImagInfoSegmentation').segment(volumeNode, model='imaginfo-phantom-vessels', device='auto')</code>."
            ),
        )


#
# ImagInfoSegmentationParameterNode
#


@parameterNodeWrapper
class ImagInfoSegmentationParameterNode:
    """The module's inputs and settings.

    inputVolume, model, device - what is segmented, by which catalogue model (id@version), on which device.
    referenceSegmentation - optional reference (truth) whose segments are named as the model's labels.
    outputSegmentation, biomarkerTable, evaluationTable - the latest run's outputs (reused when set).
    ruleMode, lowerHu, upperHu, maskSegmentation, maskSegment, seedPoints, connectivity, minVolumeMl,
        ruleSegmentation - the rule-based section: an HU window (within the mask's segment, or all its
        segments when maskSegment is empty) or region growing from the seed points; its output.
    baselineVolume, baselineSegmentation, followupVolume, followupSegmentation, maxCentroidDistanceMm,
        followupTable - the follow-up section and its lesion table.
    batchManifest, batchOutputFolder, workers - the batch section (0 workers: one process, the model loaded once).
    """

    inputVolume: vtkMRMLScalarVolumeNode
    model: Annotated[str, Choice(MODEL_CHOICES)] = DEFAULT_MODEL
    device: Annotated[str, Choice(DEVICES)] = "auto"
    referenceSegmentation: vtkMRMLSegmentationNode
    outputSegmentation: vtkMRMLSegmentationNode
    biomarkerTable: vtkMRMLTableNode
    evaluationTable: vtkMRMLTableNode
    ruleMode: Annotated[str, Choice(RULE_MODES)] = "window"
    lowerHu: Annotated[float, WithinRange(-100000.0, 100000.0)] = 40.0
    upperHu: Annotated[float, WithinRange(-100000.0, 100000.0)] = 90.0
    maskSegmentation: vtkMRMLSegmentationNode
    maskSegment: str = ""
    seedPoints: vtkMRMLMarkupsFiducialNode
    connectivity: Annotated[str, Choice(CONNECTIVITIES)] = "26"
    minVolumeMl: Annotated[float, WithinRange(0.0, 100000.0)] = 0.0
    ruleSegmentation: vtkMRMLSegmentationNode
    baselineVolume: vtkMRMLScalarVolumeNode
    baselineSegmentation: vtkMRMLSegmentationNode
    followupVolume: vtkMRMLScalarVolumeNode
    followupSegmentation: vtkMRMLSegmentationNode
    maxCentroidDistanceMm: Annotated[float, WithinRange(0.0, 1000.0)] = 10.0
    followupTable: vtkMRMLTableNode
    batchManifest: Path
    batchOutputFolder: Path
    workers: Annotated[int, WithinRange(0, 64)] = 0


#
# ImagInfoSegmentationWidget
#


class ImagInfoSegmentationWidget(ImagInfoModuleWidget):
    def setupModule(self):
        self.connectWithoutDeepLearning(
            self.ui.downloadWeightsButton, self.downloadWeights, _("Cannot download the weights.")
        )
        self.connectWithoutDeepLearning(
            self.ui.ruleButton,
            lambda: self.logic.segmentByRuleFrom(self._parameterNode),
            _("Rule-based segmentation failed."),
        )
        self.connectWithoutDeepLearning(
            self.ui.followupButton,
            lambda: self.logic.compareFollowupFrom(self._parameterNode),
            _("The follow-up comparison failed."),
        )
        batchFailed = _("Cannot start the batch.")
        self.connectJob(self.ui.batchSceneButton, self.logic.startSceneBatch, batchFailed)
        self.connectJob(self.ui.batchManifestButton, self.logic.startManifestBatch, batchFailed)

    def connectWithoutDeepLearning(self, button, action, errorMessage):
        """A button whose work needs the module's packages but not PyTorch and MONAI."""

        def run():
            with self.logic.deepLearningNotNeeded():
                self.runAction(action, errorMessage)

        button.connect("clicked(bool)", run)

    def downloadWeights(self):
        status = self.logic.weightsStatus(self.logic.modelEntry(self._parameterNode.model))
        if status.ok:
            return _("The weights are already there and verified: {path}").format(path=status.path)
        self.startLogicJob(self.logic.startWeightsDownload)
        return None

    def setParameterNode(self, inputParameterNode):
        if self._parameterNode is not None and self.hasObserver(
            self._parameterNode, "ModifiedEvent", self.updateModelInfo
        ):
            self.removeObserver(self._parameterNode, "ModifiedEvent", self.updateModelInfo)
        ImagInfoModuleWidget.setParameterNode(self, inputParameterNode)
        if self._parameterNode is not None:
            self.addObserver(self._parameterNode, "ModifiedEvent", self.updateModelInfo)
            self.updateModelInfo()

    def updateModelInfo(self, caller=None, event=None):
        """The model picker's details: licence, size, expected time and memory, and the weights' state."""
        if self.ui is None or self._parameterNode is None:
            return
        self.ui.modelInfoLabel.text = self.logic.modelDescription(self._parameterNode.model)

    def pollJob(self):
        ImagInfoModuleWidget.pollJob(self)
        if self._job is None:
            # A download may have just verified the weights.
            self.updateModelInfo()


#
# ImagInfoSegmentationLogic
#


class ImagInfoSegmentationLogic(ImagInfoModuleLogic):
    """Segmentation of MRML volumes with catalogue models, rules and follow-up comparison.

    From Slicer's Python console::

        logic = slicer.util.getModuleLogic("ImagInfoSegmentation")
        segmentation = logic.segment(getNode("CT"), model="imaginfo-phantom-vessels", device="auto")
        biomarkers = segmentation.GetNodeReference("ImagInfo.segmentation.biomarkers")
        nodes = logic.segmentByRule(getNode("CT"), 40, 90, maskSegmentation=getNode("Brain"))
        nodes = logic.compareFollowup(baseline, baselineSegmentation, followup, followupSegmentation)

    ``segment`` runs ``imaginfo segment`` as a child process and waits (the GUI
    repaints); ``segment(..., wait=False)`` returns the running job, whose outputs
    :meth:`createOutputNodes` turns into nodes. The rule-based mode and the follow-up
    run in this process.
    """

    parameterNodeClass = ImagInfoSegmentationParameterNode

    def __init__(self):
        ImagInfoModuleLogic.__init__(self)
        self._withDeepLearning = True
        self._catalogue = None
        self._catalogueStamp = None

    # Requirements -------------------------------------------------------------------

    @contextlib.contextmanager
    def deepLearningNotNeeded(self):
        """Inside, the module's requirements leave out torch and MONAI (rules, follow-up, downloads)."""
        self._withDeepLearning = False
        try:
            yield
        finally:
            self._withDeepLearning = True

    def requirements(self):
        found = ImagInfoModuleLogic.requirements(self)
        if self._withDeepLearning:
            return found
        return [r for r in found if _requirementName(r) not in TORCH_DEPENDENT]

    def missingRequirements(self):
        from ImagInfoExtension.bridge.pytorch import TORCH_REQUIREMENT, torch_satisfied

        missing = ImagInfoModuleLogic.missingRequirements(self)
        if self._withDeepLearning and not torch_satisfied():
            missing.append(TORCH_REQUIREMENT)
        return missing

    def ensureRequirements(self, confirm=None):
        """Offer to install what is missing; False when the user declined.

        The packages that do not need torch come first, then torch through the PyTorch
        extension (which picks the CUDA or CPU build), then MONAI, installed so that pip
        never replaces that torch.
        """
        from ImagInfoExtension.bridge.pytorch import ensure_torch, ensure_torch_dependents
        from ImagInfoExtension.bridge.requirements import ensure_requirements

        requirements = self.requirements()
        dependents = [r for r in requirements if _requirementName(r) in TORCH_DEPENDENT]
        others = [r for r in requirements if r not in dependents]
        if not ensure_requirements(others, requester=self.moduleName, confirm=confirm):
            return False
        if not self._withDeepLearning:
            return True
        if not ensure_torch(self.moduleName):
            return False
        return ensure_torch_dependents(dependents, requester=self.moduleName, confirm=confirm)

    # The catalogue ------------------------------------------------------------------

    def catalogue(self):
        """The model catalogue (shipped and user), read again only when one of its files changed."""
        from ImagInfoExtension.segmentation.catalogue import (
            load_catalogue,
            shipped_catalogue_path,
            user_catalogue_path,
        )

        stamp = []
        for path in (shipped_catalogue_path(), user_catalogue_path()):
            info = path.stat() if path.is_file() else None
            stamp.append((str(path), info.st_mtime_ns if info else None, info.st_size if info else None))
        if stamp != self._catalogueStamp:
            self._catalogue = load_catalogue()
            self._catalogueStamp = stamp
        return self._catalogue

    def modelEntry(self, model):
        """The catalogue entry of ``id``, ``id@version`` or an entry; ValueError saying what the catalogue holds."""
        if hasattr(model, "weights") and hasattr(model, "key"):
            return model
        if not model:
            raise ValueError(
                _(
                    "Choose a model. The catalogue has none yet: import a MONAI bundle with `imaginfo models import "
                    "PATH --id ID`, then restart Slicer."
                )
            )
        return self.catalogue().get(str(model))

    @staticmethod
    def weightsStatus(entry):
        from ImagInfoExtension.segmentation.weights import verify_weights

        return verify_weights(entry)

    def modelDescription(self, model):
        """What the model picker shows of a model: title, licence, size, cost and the weights' state."""
        try:
            entry = self.modelEntry(model)
        except ValueError as error:
            return str(error)
        status = self.weightsStatus(entry)
        if status.ok:
            weights = _("verified (SHA-256)")
        elif not status.present:
            weights = _("not downloaded: click Download weights") if entry.weights.urls else _("not present")
        else:
            weights = _("damaged or another file: click Download weights")
        lines = [
            entry.title,
            _("{key} · {modality} · licence {license} · {count} labels").format(
                key=entry.key, modality=entry.modality, license=entry.license, count=len(entry.labels)
            ),
            _("Weights: {size:.1f} MB, {state}").format(size=entry.weights.size_bytes / 1e6, state=weights),
        ]
        costs = []
        for device, label in (("cpu", _("CPU")), ("gpu", _("GPU"))):
            seconds = entry.requirements.time_s.get(device)
            memory = entry.requirements.memory_mb.get(device)
            if seconds is None and memory is None:
                continue
            parts = []
            if seconds is not None:
                parts.append(_("about {seconds:.0f} s").format(seconds=seconds))
            if memory is not None:
                parts.append(_("{memory:.0f} MB").format(memory=memory))
            costs.append(_("{device}: {parts}").format(device=label, parts=", ".join(parts)))
        if costs:
            shape = entry.requirements.reference_shape
            where = _(" (for {shape} voxels)").format(shape="×".join(str(s) for s in shape)) if shape else ""
            lines.append(_("Expected: {costs}{where}").format(costs="; ".join(costs), where=where))
        return "\n".join(lines)

    # Parameters ---------------------------------------------------------------------

    def setDefaultParameters(self, parameterNode):
        firstVolume = self.firstVolume()
        if firstVolume and not parameterNode.inputVolume:
            parameterNode.inputVolume = firstVolume

    @staticmethod
    def volumeProblem(volumeNode):
        """Why a volume node cannot be segmented (2D, no voxels, not scalar), or ``""``."""
        if volumeNode is None:
            return _("Select the input volume.")
        if volumeNode.IsA("vtkMRMLVectorVolumeNode") or volumeNode.IsA("vtkMRMLLabelMapVolumeNode"):
            return _("{name} is not a grey-level volume; select a scalar image (CT, MR, PET).").format(
                name=volumeNode.GetName()
            )
        imageData = volumeNode.GetImageData()
        if imageData is None or imageData.GetNumberOfPoints() == 0:
            return _("{name} has no voxels; load the image again.").format(name=volumeNode.GetName())
        dimensions = imageData.GetDimensions()
        if min(dimensions) < 2:
            return _(
                "{name} is 2D ({size} voxels); segmentation needs a 3D volume: load the whole series, not one slice."
            ).format(name=volumeNode.GetName(), size="×".join(str(d) for d in dimensions))
        return ""

    def applyBlocker(self, parameterNode):
        problem = self.volumeProblem(parameterNode.inputVolume)
        if problem:
            return problem
        try:
            entry = self.modelEntry(parameterNode.model)
        except ValueError as error:
            return str(error)
        status = self.weightsStatus(entry)
        if not status.ok:
            return _("The model's weights are not ready ({status}). Click Download weights.").format(status=status)
        reference = parameterNode.referenceSegmentation
        if reference is not None:
            if reference.GetSegmentation().GetNumberOfSegments() == 0:
                return _("The reference segmentation {name} has no segment.").format(name=reference.GetName())
            output = parameterNode.outputSegmentation
            if output is not None and output.GetID() == reference.GetID():
                return _("The output segmentation is the reference: choose another output (or none: one is made).")
        return ""

    def applyDescription(self):
        return _("Segment the volume with the model in the background; click again to cancel.")

    # Inputs of a model run ----------------------------------------------------------

    @staticmethod
    def referenceLabels(segmentationNode, image, entry):
        """A reference segmentation as a label map on ``image``'s grid, labelled as the model.

        A segment goes to the label of the same name (case and surrounding spaces
        ignored). When no segment names a label, segment k is taken as the catalogue's
        label k (with a warning). Returns ``(label image, warnings)``.

        Raises
        ------
        ValueError
            When some segments name a label and others name none (the message lists the
            model's label names), or the reference has no segment.
        """
        import numpy as np
        import SimpleITK as sitk

        from ImagInfoExtension.bridge.segmentations import label_map_from_segmentation_node

        segmentation = segmentationNode.GetSegmentation()
        segmentIds = [segmentation.GetNthSegmentID(n) for n in range(segmentation.GetNumberOfSegments())]
        if not segmentIds:
            raise ValueError(f"the reference segmentation {segmentationNode.GetName()} has no segment")
        names = [segmentation.GetSegment(s).GetName() for s in segmentIds]
        byName = {label.name.strip().lower(): label.value for label in entry.labels}
        values = [byName.get(name.strip().lower()) for name in names]
        warnings = []
        if any(v is None for v in values):
            if all(v is None for v in values) and len(segmentIds) <= len(entry.labels):
                values = [label.value for label in entry.labels[: len(segmentIds)]]
                warnings.append(
                    "the reference's segments name none of the model's labels; segment k was taken as label k "
                    f"({', '.join(f'{n} = {label.name}' for n, label in zip(names, entry.labels))})"
                )
            else:
                unknown = [n for n, v in zip(names, values) if v is None]
                raise ValueError(
                    f"reference segment(s) {unknown} name no label of {entry.key} "
                    f"({', '.join(label.name for label in entry.labels)}); rename them so that each is compared with "
                    "its label (Segment Editor: double-click the name)"
                )
        conversion = label_map_from_segmentation_node(segmentationNode, image, segmentIds)
        lookup = np.zeros(len(segmentIds) + 1, dtype=np.uint16 if max(values) > 255 else np.uint8)
        lookup[1:] = values
        truth = sitk.GetImageFromArray(lookup[sitk.GetArrayViewFromImage(conversion.image)])
        truth.CopyInformation(conversion.image)
        if conversion.overlapping_voxels:
            warnings.append(
                f"{conversion.overlapping_voxels} voxel(s) of the reference belong to several segments; "
                "the later segment's label was kept"
            )
        if conversion.empty_segments:
            warnings.append(f"reference segment(s) {conversion.empty_segments} have no voxel on the volume's grid")
        return truth, warnings

    def startSegmentation(
        self, volumeNode, model=DEFAULT_MODEL_ID, device="auto", referenceSegmentation=None, context=None
    ):
        """Write the inputs and start ``imaginfo segment``; returns the running job (see :meth:`segment`)."""
        from ImagInfoExtension.bridge.modality import volume_modality
        from ImagInfoExtension.io import write_image

        problem = self.volumeProblem(volumeNode)
        if problem:
            raise ValueError(problem)
        if device not in DEVICES and not re.fullmatch(r"cuda:\d+", str(device)):
            raise ValueError(f"device {device!r} is not one of {', '.join(DEVICES)} (or cuda:N)")
        entry = self.modelEntry(model)
        status = self.weightsStatus(entry)
        if not status.ok:
            raise ValueError(f"{entry.key}: {status}")
        with self.startingWorkFolder() as folder:
            image = self.writeVolume(volumeNode, folder / "image.nrrd")
            arguments = [str(folder / "image.nrrd"), "--model", entry.key, "--device", str(device)]
            modality = volume_modality(volumeNode)
            if modality:
                # The child refuses a model trained on another modality, saying which.
                arguments += ["--modality", modality]
            warnings = []
            if referenceSegmentation is not None:
                truth, warnings = self.referenceLabels(referenceSegmentation, image, entry)
                write_image(truth, folder / "truth.nrrd")
                arguments += ["--truth", str(folder / "truth.nrrd")]
            out = folder / "out"
            arguments += ["--out", str(out)]
            jobContext = {
                "kind": "segment",
                "key": f"segment:{volumeNode.GetID()}",
                "volumeNode": volumeNode,
                "referenceSegmentation": referenceSegmentation,
                "model": entry.key,
                "warnings": warnings,
            }
            jobContext.update(context or {})
            return self.startChildJob(
                "segment",
                arguments,
                readResult=lambda: self.readOutputs(out),
                workDir=folder,
                outputDir=out,
                context=jobContext,
            )

    @staticmethod
    def readOutputs(folder):
        """What ``imaginfo segment`` wrote in ``folder``: ``labels`` (SimpleITK), ``biomarkers`` and
        ``evaluation`` (pandas; None without a truth) and ``summary`` (dict)."""
        import json

        from ImagInfoExtension.io import read_image
        from ImagInfoExtension.segmentation.run import (
            BIOMARKERS_FILE,
            EVALUATION_FILE,
            SEGMENTATION_FILE,
            SUMMARY_FILE,
        )

        folder = Path(folder)
        evaluation = None
        if (folder / EVALUATION_FILE).is_file():
            evaluation = _readCsv(folder / EVALUATION_FILE)
        return {
            "labels": read_image(folder / SEGMENTATION_FILE),
            "biomarkers": _readCsv(folder / BIOMARKERS_FILE),
            "evaluation": evaluation,
            "summary": json.loads((folder / SUMMARY_FILE).read_text()),
        }

    # Outputs of a model run ---------------------------------------------------------

    @staticmethod
    def segmentDescriptions(labels):
        """Segment descriptions (and their IDs) of the summary's label table: one segment per label."""
        from ImagInfoExtension.bridge.segmentations import SegmentDescription

        counts = {}
        for label in labels:
            counts[label["name"]] = counts.get(label["name"], 0) + 1
        return [
            SegmentDescription(
                label=int(label["value"]),
                name=label["name"],
                color=_rgb(label["color"]),
                segment_id=label["name"] if counts[label["name"]] == 1 else f"{label['name']} ({label['value']})",
            )
            for label in labels
        ]

    def provenanceAttributes(self, summary, context):
        import json

        model = summary.get("model", {})
        attributes = {
            "model": f"{model.get('id', '')}@{model.get('version', '')}",
            "model_sha256": model.get("sha256", ""),
            "device": str(summary.get("device", "")),
            "runtime_s": repr(float(summary.get("runtime_s") or 0.0)),
            "warnings": json.dumps(list(context.get("warnings") or []) + list(summary.get("warnings") or [])),
        }
        volumeNode = context.get("volumeNode")
        if volumeNode is not None:
            attributes["volume"] = volumeNode.GetName()
            attributes["volume_id"] = volumeNode.GetID()
        reference = context.get("referenceSegmentation")
        if reference is not None:
            attributes["reference"] = reference.GetName()
        return {PROVENANCE_ATTRIBUTE + key: value for key, value in attributes.items()}

    @staticmethod
    def _setAttributes(node, attributes):
        for attribute in list(node.GetAttributeNames() or ()):
            if attribute.startswith(PROVENANCE_ATTRIBUTE):
                node.RemoveAttribute(attribute)
        for attribute, value in attributes.items():
            node.SetAttribute(attribute, value)

    def createOutputNodes(self, outputs, context):
        """The segmentation (one segment per label, with name, colour and terminology), the biomarker
        table and, with a reference, the evaluation table.

        A re-run on the same volume updates the same nodes (or those in ``context``:
        ``outputSegmentation``, ``biomarkerTable``, ``evaluationTable``); everything is
        checked before a node changes, and a failure removes what it added.
        """
        from ImagInfoExtension.bridge.segmentations import segmentation_node_from_label_map
        from ImagInfoExtension.bridge.tables import table_node_from_dataframe
        from ImagInfoExtension.bridge.terminology import set_segment_terminology, terminology_entry

        volumeNode = context["volumeNode"]
        if volumeNode.GetScene() is not self.scene:
            raise ValueError(f"{volumeNode.GetName()} left the scene during the run; no outputs were added")
        summary = outputs["summary"]
        labels = list(summary["labels"])
        descriptions = self.segmentDescriptions(labels)
        for label in labels:
            if label.get("terminology"):
                terminology_entry(label["terminology"])  # a bad code stops here, before any node changes
        attributes = self.provenanceAttributes(summary, context)
        name = f"{volumeNode.GetName()} {summary['model']['id']}"
        scene = self.scene
        with self.outputNodes(context.get("key", "")) as nodes:
            segmentation = segmentation_node_from_label_map(
                outputs["labels"],
                scene,
                descriptions,
                name,
                reference_volume_node=volumeNode,
                node=nodes.node("segmentation", "vtkMRMLSegmentationNode", name, context.get("outputSegmentation")),
            )
            for label, description in zip(labels, descriptions):
                if label.get("terminology"):
                    set_segment_terminology(segmentation, description.segment_id, label["terminology"])
            biomarkers = table_node_from_dataframe(
                outputs["biomarkers"],
                scene,
                f"{name} biomarkers",
                node=nodes.node("biomarkers", "vtkMRMLTableNode", f"{name} biomarkers", context.get("biomarkerTable")),
            )
            evaluation = None
            if outputs["evaluation"] is not None:
                evaluation = table_node_from_dataframe(
                    outputs["evaluation"],
                    scene,
                    f"{name} evaluation",
                    node=nodes.node(
                        "evaluation", "vtkMRMLTableNode", f"{name} evaluation", context.get("evaluationTable")
                    ),
                )
            else:
                stale = nodes.find("evaluation", "vtkMRMLTableNode")
                if stale is not None:
                    scene.RemoveNode(stale)
            for node in (segmentation, biomarkers, evaluation):
                if node is not None:
                    self._setAttributes(node, attributes)
            segmentation.SetNodeReferenceID(BIOMARKERS_REFERENCE, biomarkers.GetID())
            segmentation.SetNodeReferenceID(
                EVALUATION_REFERENCE, evaluation.GetID() if evaluation is not None else None
            )
        return {"segmentation": segmentation, "biomarkers": biomarkers, "evaluation": evaluation}

    @staticmethod
    def statusText(outputs, context):
        """What a run found, how it scored against the reference, and every warning."""
        import math

        summary, biomarkers, evaluation = outputs["summary"], outputs["biomarkers"], outputs["evaluation"]
        segments = biomarkers[biomarkers["scope"] == "segment"]
        found = segments[segments["voxel_count"] > 0]
        model = summary.get("model", {})
        text = _("{model} on {device} in {seconds:.1f} s: {found} of {labels} labels found, {volume:.3f} ml.").format(
            model=f"{model.get('id')}@{model.get('version')}",
            device=summary.get("device"),
            seconds=float(summary.get("runtime_s") or 0.0),
            found=len(found),
            labels=len(summary.get("labels", [])),
            volume=float(found["volume_ml"].sum()),
        )
        if evaluation is not None:
            scored = evaluation[[math.isfinite(float(d)) for d in evaluation["dice"]]]
            if len(scored):
                lowest = scored.loc[scored["dice"].idxmin()]
                text += " " + _("Dice {mean:.3f} (mean of {count} labels; lowest {name} {lowest:.3f}).").format(
                    mean=float(scored["dice"].mean()), count=len(scored), name=lowest["name"], lowest=lowest["dice"]
                )
        warnings = list(context.get("warnings") or []) + list(summary.get("warnings") or [])
        if warnings:
            text += " " + _("Warnings: {warnings}").format(warnings="; ".join(warnings))
        return text

    # Running a model ----------------------------------------------------------------

    def startJob(self, parameterNode):
        # The outputs belong to the inputs of this run, whatever the panel shows when it ends.
        return self.startSegmentation(
            parameterNode.inputVolume,
            parameterNode.model,
            parameterNode.device,
            parameterNode.referenceSegmentation,
            context={
                "outputSegmentation": parameterNode.outputSegmentation,
                "biomarkerTable": parameterNode.biomarkerTable,
                "evaluationTable": parameterNode.evaluationTable,
            },
        )

    def finishJob(self, job, parameterNode):
        kind = job.context.get("kind")
        if kind == "fetch":
            job.result()
            entry = self.modelEntry(job.context["model"])
            return _("{key}: {status}").format(key=entry.key, status=self.weightsStatus(entry))
        if kind in ("scene", "manifest"):
            return self.finishBatch(job, parameterNode)
        outputs = job.result()
        nodes = self.createOutputNodes(outputs, job.context)
        parameterNode.outputSegmentation = nodes["segmentation"]
        parameterNode.biomarkerTable = nodes["biomarkers"]
        parameterNode.evaluationTable = nodes["evaluation"]
        shown = nodes["evaluation"] if nodes["evaluation"] is not None else nodes["biomarkers"]
        self.showTableAndPlot(shown, None)
        return self.statusText(outputs, job.context)

    def segment(self, volumeNode, model=DEFAULT_MODEL_ID, device="auto", referenceSegmentation=None, wait=True):
        """Segment a volume node with a catalogue model (as a child process); returns the segmentation node.

        Parameters
        ----------
        volumeNode : vtkMRMLScalarVolumeNode
            A 3D image in the model's modality (HU for CT).
        model : str
            Catalogue id (its newest version) or ``id@version``.
        device : {"auto", "cpu", "cuda", "mps"} or "cuda:N"
            ``auto`` takes CUDA, then MPS, then the CPU.
        referenceSegmentation : vtkMRMLSegmentationNode, optional
            Segments named as the model's labels; adds the evaluation table.
        wait : bool
            True: block (the GUI repaints) and return the segmentation node; False:
            return the running job (``createOutputNodes(job.result(), job.context)``
            makes its nodes).

        Returns
        -------
        vtkMRMLSegmentationNode
            One segment per label; ``GetNodeReference(BIOMARKERS_REFERENCE)`` is its
            biomarker table, ``GetNodeReference(EVALUATION_REFERENCE)`` the evaluation.

        Raises
        ------
        ValueError
            No volume, a 2D one, an unknown model, weights missing or not matching their
            SHA-256 (nothing is started or added then).
        ImagInfoExtension.bridge.process.JobFailedError
            The child's own message (NaNs, too little memory, a modality the model does
            not take, ...); nothing is added.
        RuntimeError
            The user declined installing the packages.
        """
        if not self.ensureRequirements():
            raise RuntimeError(
                _("Nothing was run: these Python packages are needed first: {packages}.").format(
                    packages=", ".join(self.missingRequirements())
                )
            )
        job = self.startSegmentation(volumeNode, model, device, referenceSegmentation)
        if not wait:
            return job
        outputs = self.runJob(job, True)
        return self.createOutputNodes(outputs, job.context)["segmentation"]

    def startWeightsDownload(self, parameterNode):
        return self.startWeightsFetch(parameterNode.model)

    def startWeightsFetch(self, model):
        """Start ``imaginfo models fetch`` (download into the cache, checked against SHA-256)."""
        entry = self.modelEntry(model)
        if not entry.weights.urls:
            raise ValueError(
                f"{entry.key} lists no download URL; side-load a copy of its weights with `imaginfo models fetch "
                f"{entry.key} --file FILE`"
            )
        return self.startChildJob("models", ["fetch", entry.key], context={"kind": "fetch", "model": entry.key})

    # Batch --------------------------------------------------------------------------

    def startManifestBatch(self, parameterNode):
        """Start ``imaginfo segment --manifest`` on a CSV of files (path[,truth][,case][,factors])."""
        manifest = requiredPath(
            parameterNode.batchManifest, _("Choose a manifest CSV (path[, truth, case, factor columns]) first.")
        )
        outputFolder = requiredPath(parameterNode.batchOutputFolder, _("Choose the batch's output folder first."))
        return self.startBatch(
            manifest=manifest,
            outputFolder=outputFolder,
            model=parameterNode.model,
            device=parameterNode.device,
            workers=parameterNode.workers,
        )

    def startSceneBatch(self, parameterNode):
        """Start the segmentation of every 3D volume of the scene."""
        volumes = [v for v in self.sceneVolumes() if not self.volumeProblem(v)]
        if not volumes:
            raise ValueError(_("No 3D volume in the scene to segment."))
        return self.startBatch(
            volumes=volumes,
            outputFolder=optionalPath(parameterNode.batchOutputFolder),
            model=parameterNode.model,
            device=parameterNode.device,
            workers=parameterNode.workers,
        )

    def startBatch(
        self, volumes=None, manifest=None, outputFolder=None, model=DEFAULT_MODEL_ID, device="auto", workers=0
    ):
        """Start ``imaginfo segment --manifest`` on volume nodes (written to a work folder) or a manifest CSV.

        With volume nodes each successful case becomes a segmentation and a biomarker
        table for its volume (as a single run's); both kinds give a table of the cases
        (status, device, runtime, error) and, where truths were given, the evaluations.
        ``workers=0`` runs the cases one after the other in one process (the model loads
        once and has every core, or the GPU, to itself); ``workers=N`` starts N worker
        processes, each loading the model once.
        """
        import csv

        if (volumes is None) == (manifest is None):
            raise ValueError("give volume nodes or a manifest CSV")
        entry = self.modelEntry(model)
        status = self.weightsStatus(entry)
        if not status.ok:
            raise ValueError(f"{entry.key}: {status}")
        with self.startingWorkFolder() as folder:
            cases = {}
            if volumes is not None:
                manifest = folder / "manifest.csv"
                with open(manifest, "w", newline="", encoding="utf-8") as handle:
                    writer = csv.writer(handle)
                    writer.writerow(["case", "path"])
                    for number, volume in enumerate(volumes, start=1):
                        case = f"{number:03d}"
                        path = folder / f"volume_{case}.nrrd"
                        self.writeVolume(volume, path)
                        writer.writerow([case, str(path)])
                        cases[case] = volume
                kind, key, name = "scene", "scene batch", _("Segmentation scene batch")
            else:
                manifest = Path(manifest).resolve()
                if not manifest.is_file():
                    raise ValueError(f"the manifest {manifest} does not exist")
                kind, key, name = "manifest", f"manifest:{manifest}", f"Segmentation {manifest.stem}"
            out = Path(outputFolder).resolve() if outputFolder else folder / "out"
            arguments = ["--manifest", str(manifest), "--model", entry.key, "--device", str(device), "--out", str(out)]
            arguments += ["--workers", str(int(workers or 0))]
            return self.startChildJob(
                "segment",
                arguments,
                readResult=lambda: self.readBatchOutputs(out),
                workDir=folder,
                outputDir=out,
                successCodes=(0, EXIT_SOME_CASES_FAILED),
                context={"kind": kind, "key": key, "name": name, "model": entry.key, "cases": cases},
            )

    def readBatchOutputs(self, folder):
        """``cases`` (one row per case: status, device, runtime, folder, error) and ``evaluation`` (or None)."""
        folder = Path(folder)
        cases = _readCsv(folder / "cases.csv", dtype=str, keep_default_na=False)
        evaluation = None
        if (folder / "evaluation.csv").is_file():
            evaluation = _readCsv(folder / "evaluation.csv")
        return {"cases": cases, "evaluation": evaluation, "folder": folder}

    def finishBatch(self, job, parameterNode):
        """The batch's tables, and for the scene's volumes their segmentations; the status text."""
        from ImagInfoExtension.bridge.tables import table_node_from_dataframe

        outputs = job.result()
        cases, context = outputs["cases"], job.context
        succeeded = cases[cases["status"] == "ok"]
        # Every case's files are read before any node is made.
        perVolume = []
        for _index, row in succeeded.iterrows():
            volume = context["cases"].get(row["case"])
            if volume is not None and volume.GetScene() is self.scene:
                perVolume.append((volume, self.readOutputs(row["folder"])))
        with self.outputNodes(context["key"]) as nodes:
            table = table_node_from_dataframe(
                cases, self.scene, context["name"], node=nodes.node("cases", "vtkMRMLTableNode", context["name"])
            )
            if outputs["evaluation"] is not None:
                evaluationName = f"{context['name']} evaluation"
                table_node_from_dataframe(
                    outputs["evaluation"],
                    self.scene,
                    evaluationName,
                    node=nodes.node("evaluation", "vtkMRMLTableNode", evaluationName),
                )
            for volume, volumeOutputs in perVolume:
                self.createOutputNodes(
                    volumeOutputs, {"volumeNode": volume, "key": f"segment:{volume.GetID()}", "warnings": []}
                )
        self.showTableAndPlot(table, None)
        text = _("{done} of {total} case(s) segmented with {model}.").format(
            done=len(succeeded), total=len(cases), model=context["model"]
        )
        failed = cases[cases["status"] != "ok"]
        if len(failed):
            text += " " + _("Failed: {failures}").format(
                failures="; ".join(f"{r['case']}: {r['error']}" for _i, r in failed.iterrows())
            )
        return text

    # Rule-based ---------------------------------------------------------------------

    @staticmethod
    def segmentIdsByName(segmentationNode, segment=""):
        """The IDs of a segmentation's segment named (or with ID) ``segment``, or of all its segments."""
        segmentation = segmentationNode.GetSegmentation()
        ids = [segmentation.GetNthSegmentID(n) for n in range(segmentation.GetNumberOfSegments())]
        if not ids:
            raise ValueError(f"the segmentation {segmentationNode.GetName()} has no segment")
        if not segment:
            return ids
        chosen = [s for s in ids if s == segment or segmentation.GetSegment(s).GetName() == segment]
        if not chosen:
            names = ", ".join(segmentation.GetSegment(s).GetName() for s in ids)
            raise ValueError(f"{segmentationNode.GetName()} has no segment {segment!r}; its segments: {names}")
        return chosen[:1]

    def segmentByRule(
        self,
        volumeNode,
        lowerHu,
        upperHu,
        mode="window",
        maskSegmentation=None,
        maskSegment="",
        seedPoints=None,
        connectivity=26,
        minVolumeMl=0.0,
        outputSegmentation=None,
    ):
        """Rule-based segmentation in this process: an HU window (within a mask), or region growing.

        Parameters
        ----------
        volumeNode : vtkMRMLScalarVolumeNode
        lowerHu, upperHu : float
            The inclusive window.
        mode : {"window", "growing"}
            ``window``: every in-window voxel (inside the mask), by connected component;
            ``growing``: the in-window region connected to the seed points.
        maskSegmentation : vtkMRMLSegmentationNode, optional
            Where to look: its segment ``maskSegment`` (name or ID), or all its segments.
        seedPoints : vtkMRMLMarkupsFiducialNode
            The seeds of region growing.
        connectivity : {6, 18, 26}
        minVolumeMl : float
            Window mode: components smaller than this are left out.
        outputSegmentation : vtkMRMLSegmentationNode, optional
            Filled instead of this volume's earlier rule output.

        Returns
        -------
        dict
            ``segmentation`` and ``biomarkers`` (nodes), ``result`` (the rule's RuleResult).

        Raises
        ------
        ValueError
            A 2D volume, an inverted window, a mask segment that is absent or does not
            overlap the volume, no seed, a seed outside the window; nothing is added then.
        """
        import numpy as np
        import pandas as pd
        import SimpleITK as sitk

        from ImagInfoExtension.bridge.pointlists import points_lps_from_point_list
        from ImagInfoExtension.bridge.segmentations import (
            SegmentDescription,
            label_map_from_segmentation_node,
            segmentation_node_from_label_map,
        )
        from ImagInfoExtension.bridge.tables import table_node_from_dataframe
        from ImagInfoExtension.bridge.volumes import sitk_from_volume_node
        from ImagInfoExtension.segmentation.biomarkers import BIOMARKER_COLUMNS, segment_biomarkers
        from ImagInfoExtension.segmentation.rules import region_growing, window_segmentation

        problem = self.volumeProblem(volumeNode)
        if problem:
            raise ValueError(problem)
        if mode not in RULE_MODES:
            raise ValueError(f"mode {mode!r} is not one of {', '.join(RULE_MODES)}")
        lowerHu, upperHu, connectivity = float(lowerHu), float(upperHu), int(connectivity)
        image = sitk_from_volume_node(volumeNode)
        mask = None
        if maskSegmentation is not None:
            ids = self.segmentIdsByName(maskSegmentation, maskSegment)
            region = sitk.GetArrayViewFromImage(label_map_from_segmentation_node(maskSegmentation, image, ids).image)
            if not region.any():
                raise ValueError(
                    f"the mask {maskSegmentation.GetName()} does not overlap {volumeNode.GetName()}; draw it on this "
                    "volume"
                )
            mask = sitk.GetImageFromArray((region != 0).astype(np.uint8))
            mask.CopyInformation(image)
        if mode == "growing":
            if seedPoints is None:
                raise ValueError("region growing needs seed points: place a point inside the structure")
            result = region_growing(
                image, points_lps_from_point_list(seedPoints), lowerHu, upperHu, connectivity=connectivity, mask=mask
            )
            name = f"grown {lowerHu:g} to {upperHu:g} HU"
        else:
            result = window_segmentation(
                image, lowerHu, upperHu, mask=mask, connectivity=connectivity, min_volume_ml=float(minVolumeMl)
            )
            name = f"{lowerHu:g} to {upperHu:g} HU"
        if maskSegmentation is not None:
            name += f" in {maskSegment or maskSegmentation.GetName()}"
        rows = segment_biomarkers(
            result.labels, image, names={result.label: name}, connectivity=connectivity, min_lesion_volume_ml=0.0
        )
        frame = pd.DataFrame([row.as_dict() for row in rows], columns=list(BIOMARKER_COLUMNS))
        attributes = {
            PROVENANCE_ATTRIBUTE + "rule": mode,
            PROVENANCE_ATTRIBUTE + "window_hu": f"{lowerHu!r},{upperHu!r}",
            PROVENANCE_ATTRIBUTE + "connectivity": str(connectivity),
            PROVENANCE_ATTRIBUTE + "min_volume_ml": repr(float(minVolumeMl)),
            PROVENANCE_ATTRIBUTE + "mask": maskSegmentation.GetName() if maskSegmentation is not None else "",
            PROVENANCE_ATTRIBUTE + "volume": volumeNode.GetName(),
        }
        title = f"{volumeNode.GetName()} {mode}"
        with self.outputNodes(f"rule:{volumeNode.GetID()}") as nodes:
            segmentation = segmentation_node_from_label_map(
                result.labels,
                self.scene,
                [SegmentDescription(label=result.label, name=name, color=(0.85, 0.25, 0.2))],
                title,
                reference_volume_node=volumeNode,
                node=nodes.node("rule segmentation", "vtkMRMLSegmentationNode", title, outputSegmentation),
            )
            table = table_node_from_dataframe(
                frame,
                self.scene,
                f"{title} biomarkers",
                node=nodes.node("rule biomarkers", "vtkMRMLTableNode", f"{title} biomarkers"),
            )
            for node in (segmentation, table):
                self._setAttributes(node, attributes)
            segmentation.SetNodeReferenceID(BIOMARKERS_REFERENCE, table.GetID())
        return {"segmentation": segmentation, "biomarkers": table, "result": result}

    def segmentByRuleFrom(self, parameterNode):
        """The rule-based section's button: returns the status text."""
        p = parameterNode
        nodes = self.segmentByRule(
            p.inputVolume,
            p.lowerHu,
            p.upperHu,
            mode=p.ruleMode,
            maskSegmentation=p.maskSegmentation,
            maskSegment=p.maskSegment.strip(),
            seedPoints=p.seedPoints,
            connectivity=int(p.connectivity),
            minVolumeMl=p.minVolumeMl,
            outputSegmentation=p.ruleSegmentation,
        )
        p.ruleSegmentation = nodes["segmentation"]
        result = nodes["result"]
        self.showTableAndPlot(nodes["biomarkers"], None)
        text = _("{volume:.3f} ml in {count} component(s) ({voxels} voxels).").format(
            volume=result.volume_ml, count=result.component_count, voxels=result.voxel_count
        )
        if result.removed_count:
            text += " " + _("{removed} smaller component(s) left out.").format(removed=result.removed_count)
        return text

    # Follow-up ----------------------------------------------------------------------

    @staticmethod
    def _namedLabelMaps(baseline, followup):
        """The two segmentations as label maps on their volumes' grids, one label per segment name (shared)."""
        import numpy as np
        import SimpleITK as sitk

        from ImagInfoExtension.bridge.segmentations import label_map_from_segmentation_node

        values, maps = {}, []
        for segmentationNode, image in (baseline, followup):
            segmentation = segmentationNode.GetSegmentation()
            ids = [segmentation.GetNthSegmentID(n) for n in range(segmentation.GetNumberOfSegments())]
            if not ids:
                raise ValueError(f"the segmentation {segmentationNode.GetName()} has no segment")
            for segmentId in ids:
                values.setdefault(segmentation.GetSegment(segmentId).GetName(), len(values) + 1)
            lookup = np.array([0] + [values[segmentation.GetSegment(s).GetName()] for s in ids], dtype=np.uint16)
            conversion = label_map_from_segmentation_node(segmentationNode, image, ids)
            labels = sitk.GetImageFromArray(lookup[sitk.GetArrayViewFromImage(conversion.image)])
            labels.CopyInformation(image)
            maps.append(labels)
        return maps[0], maps[1], {value: name for name, value in values.items()}

    def compareFollowup(
        self,
        baselineVolume,
        baselineSegmentation,
        followupVolume,
        followupSegmentation,
        maxCentroidDistanceMm=10.0,
        minLesionVolumeMl=0.0,
        outputTable=None,
    ):
        """Register the follow-up to the baseline (rigid), match lesions, and tabulate their change (in this process).

        Segments of the two segmentations with the same name are the same structure;
        lesions are their connected components.

        Returns
        -------
        dict
            ``table`` (one row per matched, new or vanished lesion, with the segment
            name) and ``result`` (the FollowupResult: registration, lesions, summary).

        Raises
        ------
        ValueError
            Missing inputs, 2D volumes, segmentations without segments, a pair that does
            not overlap in space; nothing is added then.
        """
        import pandas as pd

        from ImagInfoExtension.bridge.tables import table_node_from_dataframe
        from ImagInfoExtension.bridge.volumes import sitk_from_volume_node
        from ImagInfoExtension.segmentation.followup import FOLLOWUP_COLUMNS, compare_followup

        for node, what in (
            (baselineVolume, _("the baseline volume")),
            (baselineSegmentation, _("the baseline segmentation")),
            (followupVolume, _("the follow-up volume")),
            (followupSegmentation, _("the follow-up segmentation")),
        ):
            if node is None:
                raise ValueError(_("Select {what}.").format(what=what))
        for volume in (baselineVolume, followupVolume):
            problem = self.volumeProblem(volume)
            if problem:
                raise ValueError(problem)
        baselineImage = sitk_from_volume_node(baselineVolume)
        followupImage = sitk_from_volume_node(followupVolume)
        baselineLabels, followupLabels, names = self._namedLabelMaps(
            (baselineSegmentation, baselineImage), (followupSegmentation, followupImage)
        )
        result = compare_followup(
            baselineImage,
            baselineLabels,
            followupImage,
            followupLabels,
            max_centroid_distance_mm=float(maxCentroidDistanceMm),
            min_lesion_volume_ml=float(minLesionVolumeMl),
        )
        frame = pd.DataFrame(result.table(), columns=list(FOLLOWUP_COLUMNS))
        frame.insert(1, "name", [names[int(v)] for v in frame["label"]])
        registration = result.registration
        attributes = {
            PROVENANCE_ATTRIBUTE + "baseline": baselineVolume.GetName(),
            PROVENANCE_ATTRIBUTE + "followup": followupVolume.GetName(),
            PROVENANCE_ATTRIBUTE + "translation_mm": ",".join(repr(float(v)) for v in registration.translation_mm),
            PROVENANCE_ATTRIBUTE + "rotation_deg": ",".join(repr(float(v)) for v in registration.rotation_deg),
            PROVENANCE_ATTRIBUTE + "registration_metric": registration.metric,
        }
        title = f"{baselineVolume.GetName()} to {followupVolume.GetName()} follow-up"
        with self.outputNodes(f"followup:{baselineVolume.GetID()}:{followupVolume.GetID()}") as nodes:
            table = table_node_from_dataframe(
                frame, self.scene, title, node=nodes.node("followup", "vtkMRMLTableNode", title, outputTable)
            )
            self._setAttributes(table, attributes)
        return {"table": table, "result": result}

    def compareFollowupFrom(self, parameterNode):
        """The follow-up section's button: returns the status text."""
        p = parameterNode
        nodes = self.compareFollowup(
            p.baselineVolume,
            p.baselineSegmentation,
            p.followupVolume,
            p.followupSegmentation,
            maxCentroidDistanceMm=p.maxCentroidDistanceMm,
            outputTable=p.followupTable,
        )
        p.followupTable = nodes["table"]
        self.showTableAndPlot(nodes["table"], None)
        return self.followupStatus(nodes["result"])

    @staticmethod
    def followupStatus(result):
        counts = {"matched": 0, "new": 0, "vanished": 0}
        baselineMl = followupMl = 0.0
        for entry in result.summary().values():
            for status in counts:
                counts[status] += int(entry[status])
            baselineMl += float(entry["baseline_volume_ml"])
            followupMl += float(entry["followup_volume_ml"])
        shift = ", ".join(f"{v:.1f}" for v in result.registration.translation_mm)
        return _(
            "{matched} matched, {new} new, {vanished} vanished lesion(s); {before:.3f} ml → {after:.3f} ml. "
            "Follow-up registered to the baseline with a shift of ({shift}) mm."
        ).format(before=baselineMl, after=followupMl, shift=shift, **counts)


#
# ImagInfoSegmentationTest
#


class ImagInfoSegmentationTest(ImagInfoModuleTest):
    """Runs inside Slicer (Reload and Test) and under pytest with the slicer-core harness."""

    def _volume(self, array, name="synthetic CT", spacing=(0.8, 0.8, 1.5)):
        import SimpleITK as sitk

        from ImagInfoExtension.bridge.volumes import volume_node_from_sitk

        image = sitk.GetImageFromArray(array)
        image.SetSpacing(spacing)
        image.SetOrigin((-12.0, 20.0, -30.0))
        return volume_node_from_sitk(image, self.scene, name), image

    def test_hu_window_within_a_mask_gives_the_known_box(self):
        self.delayDisplay("HU window within a mask segment")
        import numpy as np
        import SimpleITK as sitk

        from ImagInfoExtension.bridge.segmentations import SegmentDescription, segmentation_node_from_label_map

        array = np.zeros((20, 30, 30), dtype=np.int16)
        array[5:11, 8:14, 8:14] = 60  # 216 voxels of "blood" inside the "brain"
        array[5:11, 20:26, 20:26] = 60  # the same outside it
        array[2, 2, 2] = 70  # one stray voxel inside, removed by the minimum volume
        volumeNode, image = self._volume(array)
        brain = np.zeros(array.shape, dtype=np.uint8)
        brain[1:19, 1:18, 1:18] = 1
        brainImage = sitk.GetImageFromArray(brain)
        brainImage.CopyInformation(image)
        mask = segmentation_node_from_label_map(
            brainImage, self.scene, [SegmentDescription(1, "brain")], "brain", reference_volume_node=volumeNode
        )
        logic = ImagInfoSegmentationLogic()
        voxelMl = 0.8 * 0.8 * 1.5 / 1000.0
        nodes = logic.segmentByRule(
            volumeNode, 40, 90, maskSegmentation=mask, maskSegment="brain", minVolumeMl=2 * voxelMl
        )
        result = nodes["result"]
        assert (result.voxel_count, result.component_count, result.removed_count) == (216, 1, 1), result
        assert abs(result.volume_ml - 216 * voxelMl) < 1e-12
        segment = nodes["segmentation"].GetSegmentation().GetNthSegment(0)
        assert segment.GetName() == "40 to 90 HU in brain"
        table = nodes["biomarkers"]
        assert table.GetCellText(0, 2) == "segment" and int(table.GetCellText(0, 4)) == 216
        count = self.scene.GetNumberOfNodes()
        again = logic.segmentByRule(volumeNode, 40, 90, maskSegmentation=mask, maskSegment="brain")
        assert again["segmentation"] is nodes["segmentation"] and self.scene.GetNumberOfNodes() == count
        assert again["result"].voxel_count == 217, "without a minimum volume the stray voxel counts"
        self.delayDisplay("Test passed")

    def test_bad_input_says_why_and_adds_nothing(self):
        self.delayDisplay("Bad input")
        import numpy as np

        logic = ImagInfoSegmentationLogic()
        flat, _image = self._volume(np.zeros((1, 16, 16), dtype=np.int16), "one slice")
        before = self.scene.GetNumberOfNodes()
        for call, expected in (
            (lambda: logic.startSegmentation(None), "Select the input volume"),
            (lambda: logic.startSegmentation(flat), "is 2D (16×16×1 voxels)"),
            (lambda: logic.segmentByRule(flat, 40, 90), "is 2D"),
            (lambda: logic.modelEntry("no-such-model"), "no model 'no-such-model'"),
        ):
            try:
                call()
            except ValueError as error:
                assert expected in str(error), (expected, str(error))
            else:
                raise AssertionError(f"no error for {expected!r}")
        assert self.scene.GetNumberOfNodes() == before
        self.delayDisplay("Test passed")
