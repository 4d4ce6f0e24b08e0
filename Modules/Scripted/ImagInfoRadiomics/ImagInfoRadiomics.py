"""ImagInfo radiomics: IBSI-1 features of every segment (or lesion) of a segmentation.

The computation is ``imaginfo radiomics --manifest`` (``ImagInfoExtension.radiomics``),
run as a child process: the logic writes the volume and one binary mask per segment
(segments may overlap, so a single label map would lose voxels) with a manifest, and
reads the tidy feature table back. ``logic.extract`` runs the same engine in-process
for scripts. What modules share is in ``ImagInfoExtension.bridge.scaffolding``; this
file holds what is this module's own: its description, parameter node, how the panel's
choices become settings and the command's arguments, how the outputs become a table
node with provenance, the reproducibility analysis of a feature table (in-process:
``ImagInfoExtension.radiomics.robustness``, as ``imaginfo radiomics-robustness``), and
its self-test.
"""

import re
from collections import Counter
from pathlib import Path
from typing import Annotated

from ImagInfoExtension.bridge.scaffolding import (
    Choice,
    ImagInfoModule,
    ImagInfoModuleLogic,
    ImagInfoModuleTest,
    ImagInfoModuleWidget,
    WithinRange,
    optionalPath,
    parameterNodeWrapper,
    parseMillimetres,
    requiredPath,
    vtkMRMLScalarVolumeNode,
    vtkMRMLSegmentationNode,
    vtkMRMLTableNode,
)
from ImagInfoExtension.bridge.scaffolding import tr as _

# Only the standard library behind these names: a fresh Slicer loads the module before
# PyYAML, pandas & co. are installed.
from ImagInfoExtension.radiomics.settings import FAMILIES, IMAGE_TYPES, PRESET_NAMES

#: Parameter-node field of each feature family's check box (``familyMorph``, ``familyCm``, ...).
FAMILY_PARAMETERS = {family: "family" + family.capitalize() for family in FAMILIES}

#: Parameter-node field of each image type's check box.
IMAGE_TYPE_PARAMETERS = {"Original": "imageOriginal", "LoG": "imageLoG", "Wavelet": "imageWavelet"}

#: Prefix of the provenance attributes of a feature table node.
PROVENANCE_ATTRIBUTE = "ImagInfo.radiomics."

#: Prefix of the attributes of a reproducibility table node (group-by, reference, threshold, input).
ROBUSTNESS_ATTRIBUTE = "ImagInfo.robustness."

#: Node reference from a reproducibility summary table to its per-condition CCC table.
CCC_TABLE_REFERENCE = "ImagInfo.robustness.ccc"


#: Columns of the manifest the logic writes (``imaginfo radiomics --manifest``).
MANIFEST_COLUMNS = ["case", "image", "mask", "label", "segment"]

#: Exit code of ``imaginfo radiomics`` when some ROIs gave no features (the others are written).
EXIT_SOME_ROIS_FAILED = 3


#
# ImagInfoRadiomics
#


class ImagInfoRadiomics(ImagInfoModule):
    def __init__(self, parent):
        ImagInfoModule.__init__(self, parent)
        self.describe(
            _("ImagInfo Radiomics"),
            _(
                "Radiomics features of every segment of a segmentation, or of each lesion (connected component) "
                "of it, with ImagInfo's IBSI-1 compliant engine (validated on the IBSI-1 digital phantom and "
                "configurations A-E): morphology, local intensity, intensity statistics and histograms, GLCM, "
                "GLRLM, GLSZM, GLDZM, NGTDM and NGLDM, on the original image and optionally LoG and wavelet "
                "images. Settings come from a preset (IBSI configurations, CT, MR, PET SUV) or a parameter file "
                "(ImagInfo or pyradiomics YAML/JSON); a pyradiomics-compatible mode runs pyradiomics itself where "
                "it is installed. The Batch tab extracts every volume/segmentation pair of the scene, or a "
                "manifest of files. Results go to a table node with the engine, settings hash and inputs as "
                "attributes, and can be saved as CSV. The work runs as a separate process with Slicer's Python; "
                "Cancel stops it. The Reproducibility section reads a feature table with factor columns (a "
                "manifest batch's, or a CSV) and gives each feature's ICC(2,1), ICC(3,1) and Lin's CCC of every "
                "condition against a reference, and whether it is robust. From the Python console (in-process, "
                "synchronous): <code>frame, table = slicer.util.getModuleLogic('ImagInfoRadiomics').extract("
                "volumeNode, segmentationNode, preset='ibsi-C')</code>; <code>summary, table = logic.robustness("
                "features, groupBy=['recon', 'dose_mgy'], reference={'recon': 'FBP', 'dose_mgy': '4.0'})</code>."
            ),
        )


#
# ImagInfoRadiomicsParameterNode
#


@parameterNodeWrapper
class ImagInfoRadiomicsParameterNode:
    """The module's inputs and settings.

    inputVolume, inputSegmentation - the image and its segments (one feature set per segment).
    batchManifest, workers - the Batch tab: a manifest CSV (case,image,mask[,label,segment,factors]); worker processes.
    preset, parameterFile - where the settings come from (a parameter file wins).
    mode - "ibsi" (ImagInfo's engine) or "pyradiomics" (pyradiomics itself, where installed).
    family<Code> - feature families computed (they narrow the preset's or file's families).
    imageOriginal, imageLoG (with logSigmasMm), imageWavelet - image types computed.
    perLesion, minLesionVolumeMl - one feature set per connected component of at least this volume.
    outputTable - the latest run's feature table (saved by "Save as CSV" to csvFile).
    robustnessFeatures, robustnessFeaturesFile - the Reproducibility section's feature table (a file wins).
    robustnessGroupBy, robustnessReference - factor columns ("recon, dose_mgy") and the reference
        condition ("recon=FBP, dose_mgy=4.0"); both empty for a test-retest table (repetition column).
    robustnessCccThreshold - a feature is robust when its CCC is at least this under every condition.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    inputSegmentation: vtkMRMLSegmentationNode
    batchManifest: Path
    workers: Annotated[int, WithinRange(0, 64)] = 0
    preset: Annotated[str, Choice(list(PRESET_NAMES))] = "ct"
    parameterFile: Path
    mode: Annotated[str, Choice(["ibsi", "pyradiomics"])] = "ibsi"
    familyMorph: bool = True
    familyLoc: bool = True
    familyStat: bool = True
    familyIh: bool = True
    familyIvh: bool = True
    familyCm: bool = True
    familyRlm: bool = True
    familySzm: bool = True
    familyDzm: bool = True
    familyNgt: bool = True
    familyNgl: bool = True
    imageOriginal: bool = True
    imageLoG: bool = False
    logSigmasMm: str = "1, 2, 3"
    imageWavelet: bool = False
    perLesion: bool = False
    minLesionVolumeMl: Annotated[float, WithinRange(0.0, 100000.0)] = 0.0
    outputTable: vtkMRMLTableNode
    csvFile: Path
    robustnessFeatures: vtkMRMLTableNode
    robustnessFeaturesFile: Path
    robustnessGroupBy: str = ""
    robustnessReference: str = ""
    robustnessCccThreshold: Annotated[float, WithinRange(0.0, 1.0)] = 0.90


#
# ImagInfoRadiomicsWidget
#


class ImagInfoRadiomicsWidget(ImagInfoModuleWidget):
    def setupModule(self):
        batchFailed = _("Cannot start the batch.")
        self.connectJob(self.ui.batchSceneButton, self.logic.startSceneBatch, batchFailed)
        self.connectJob(self.ui.batchManifestButton, self.logic.startManifestBatch, batchFailed)
        self.connectAction(self.ui.saveCsvButton, self.saveCsv, _("Could not save the table."))
        self.connectAction(
            self.ui.robustnessButton, self.analyseRobustness, _("Could not analyse the feature reproducibility.")
        )
        available, message = self.logic.pyradiomicsStatus()
        self.ui.modeComboBox.enabled = available
        if not available:
            self.ui.modeComboBox.toolTip = message
        self.ui.pyradiomicsLabel.text = "" if available else message
        self.ui.pyradiomicsLabel.visible = not available

    def saveCsv(self):
        parameters = self._parameterNode
        return self.logic.saveTableAsCsv(parameters.outputTable, optionalPath(parameters.csvFile))

    def analyseRobustness(self):
        try:
            return self.logic.analyseRobustness(self._parameterNode)
        except ValueError as error:
            # A column or value the table lacks is the user's to fix: the reason belongs in the status line.
            return _("Not analysed: {reason}").format(reason=error)


#
# ImagInfoRadiomicsLogic
#


class ImagInfoRadiomicsLogic(ImagInfoModuleLogic):
    """Radiomics features of segmentation nodes.

    Two ways to run the same engine:

    - :meth:`extract` computes in this process and returns when done: for scripts and
      the Python console::

          logic = slicer.util.getModuleLogic("ImagInfoRadiomics")
          frame, table = logic.extract(getNode("CT"), getNode("Segmentation"), preset="ibsi-C")
          frame = logic.extract(volume, segmentation, perLesion=True, createTable=False)

    - the module's panel (and :meth:`extractInBackground`, :meth:`startSceneBatch`,
      :meth:`startManifestBatch`) run ``imaginfo radiomics --manifest`` as a child
      process with progress and Cancel, so that Slicer stays responsive.

    :meth:`robustness` assesses the reproducibility of the features of a table with
    factor columns (ICC and Lin's CCC across conditions), in-process: it takes a second.
    """

    parameterNodeClass = ImagInfoRadiomicsParameterNode

    def __init__(self):
        ImagInfoModuleLogic.__init__(self)
        self._pyradiomicsStatus = None

    # Parameters ---------------------------------------------------------------------

    def setDefaultParameters(self, parameterNode):
        firstVolume = self.firstVolume()
        if firstVolume and not parameterNode.inputVolume:
            parameterNode.inputVolume = firstVolume
        if not parameterNode.inputSegmentation:
            pairs = self.scenePairs()
            volume = parameterNode.inputVolume
            chosen = [s for v, s in pairs if volume and v.GetID() == volume.GetID()] or [s for _v, s in pairs]
            if chosen:
                parameterNode.inputSegmentation = chosen[0]
            else:
                first = self.scene.GetFirstNodeByClass("vtkMRMLSegmentationNode")
                if first:
                    parameterNode.inputSegmentation = first

    def pyradiomicsStatus(self):
        """``(available, message)`` of pyradiomics-compatible mode, checked once.

        An installed distribution is asked first (without importing anything), so that
        showing the panel never imports pyradiomics where it is absent.
        """
        if self._pyradiomicsStatus is None:
            from importlib import metadata

            from ImagInfoExtension.radiomics.pyradiomics_mode import INSTALL_HINT, pyradiomics_available

            try:
                metadata.version("pyradiomics")
            except metadata.PackageNotFoundError:
                self._pyradiomicsStatus = (False, _("pyradiomics-compatible mode needs pyradiomics. ") + INSTALL_HINT)
            else:
                available, message = pyradiomics_available()
                self._pyradiomicsStatus = (bool(available), message)
        return self._pyradiomicsStatus

    @staticmethod
    def parseSigmas(text):
        """``"1, 2.5 3"`` → ``[1.0, 2.5, 3.0]`` (LoG widths in mm)."""
        sigmas = parseMillimetres(text, "LoG sigmas", "1, 2, 3")
        if not sigmas:
            raise ValueError("LoG needs at least one positive sigma in mm, e.g. 1, 2, 3")
        return sigmas

    @staticmethod
    def familiesFrom(parameterNode):
        return [family for family, name in FAMILY_PARAMETERS.items() if getattr(parameterNode, name)]

    def imageTypesFrom(self, parameterNode):
        """``RadiomicsSettings.image_types`` from the panel's check boxes."""
        imageTypes = {}
        if parameterNode.imageOriginal:
            imageTypes["Original"] = {}
        if parameterNode.imageLoG:
            imageTypes["LoG"] = {"sigma_mm": self.parseSigmas(parameterNode.logSigmasMm)}
        if parameterNode.imageWavelet:
            imageTypes["Wavelet"] = {}
        return imageTypes

    def settingsChoicesFrom(self, parameterNode):
        """Keyword arguments of :meth:`settingsFor` (and :meth:`extract`) from the panel."""
        parameterFile = optionalPath(parameterNode.parameterFile)
        return {
            "preset": None if parameterFile else parameterNode.preset,
            "parameterFile": parameterFile,
            "mode": parameterNode.mode,
            "families": self.familiesFrom(parameterNode),
            "imageTypes": self.imageTypesFrom(parameterNode),
        }

    def applyBlocker(self, parameterNode):
        if not parameterNode.inputVolume:
            return _("Select the volume.")
        segmentation = parameterNode.inputSegmentation
        if not segmentation:
            return _("Select the segmentation: each of its segments gets its own features.")
        if segmentation.GetSegmentation().GetNumberOfSegments() == 0:
            return _("The segmentation {name} has no segment; draw one in Segment Editor.").format(
                name=segmentation.GetName()
            )
        return self.settingsBlocker(parameterNode)

    def settingsBlocker(self, parameterNode):
        """Why the settings part of the panel cannot run (for Apply and the batch buttons), or ``""``."""
        parameterFile = optionalPath(parameterNode.parameterFile)
        if parameterFile is not None and not parameterFile.is_file():
            return _("The parameter file {path} does not exist.").format(path=parameterFile)
        if not self.familiesFrom(parameterNode):
            return _("Tick at least one feature class.")
        try:
            if not self.imageTypesFrom(parameterNode):
                return _("Tick at least one image type (Original, LoG or Wavelet).")
        except ValueError as error:
            return str(error)
        if parameterNode.mode == "pyradiomics":
            available, message = self.pyradiomicsStatus()
            if not available:
                return message
            if parameterFile is None:
                return _(
                    "pyradiomics mode runs a pyradiomics parameter file: choose one (presets are for the IBSI mode)."
                )
        return ""

    def applyDescription(self):
        return _("Extract the features of every segment in the background; click again to cancel.")

    # Settings -----------------------------------------------------------------------

    def settingsFor(self, preset=None, parameterFile=None, mode=None, families=None, imageTypes=None):
        """The settings a run uses, and those of the preset or file it started from.

        ``families`` narrows the families of the preset or file; ``imageTypes``
        (``{"Original": {}, "LoG": {"sigma_mm": [1, 2]}, "Wavelet": {}}``) replaces its
        image types. In pyradiomics mode a pyradiomics parameter file goes to pyradiomics
        as it is: its featureClass and imageType decide, and ``families`` and
        ``imageTypes`` are not used. Changed settings are named ``<preset or file>-custom``.

        Returns
        -------
        settings, base : RadiomicsSettings
        """
        from ImagInfoExtension.radiomics.settings import RadiomicsSettingsError, settings_from

        if preset and parameterFile:
            raise ValueError("give a preset or a parameter file, not both")
        base = settings_from(preset or (None if parameterFile else "ct"), parameterFile, mode or None)
        if base.mode == "pyradiomics":
            if base.pyradiomics_parameters is None:
                raise RadiomicsSettingsError(
                    f"{base.name} describes the IBSI image processing, which pyradiomics does not run; give a "
                    "pyradiomics parameter file for pyradiomics mode, or use the IBSI mode"
                )
            return base, base
        changes = {}
        if families is not None:
            narrowed = tuple(f for f in base.families if f in families)
            if not narrowed:
                raise RadiomicsSettingsError(
                    f"none of the feature classes {sorted(families)} is among those of {base.name} "
                    f"({', '.join(base.families)}); tick one of those"
                )
            changes["families"] = narrowed
        if imageTypes is not None:
            unknown = sorted(set(imageTypes) - set(IMAGE_TYPES))
            if unknown:
                raise RadiomicsSettingsError(f"image types {unknown} are unknown; use {', '.join(IMAGE_TYPES)}")
            changes["image_types"] = {
                kind: dict(options or base.image_types.get(kind) or {}) for kind, options in imageTypes.items()
            }
        settings = base.with_changes(**changes)
        if settings != base:
            settings = settings.with_changes(name=f"{base.name}-custom")
        return settings, base

    @staticmethod
    def settingsArguments(settings, base, preset, parameterFile, folder):
        """``--preset``/``--params``/``--mode`` that give the child exactly ``settings``.

        Unchanged settings are passed as the preset or file; changed ones as an ImagInfo
        JSON document named after them (so the child's provenance names them alike).
        """
        import json

        if settings == base:
            arguments = ["--params", str(Path(parameterFile).resolve())] if parameterFile else ["--preset", preset]
            return arguments + ["--mode", settings.mode]
        document = {"imaginfo_radiomics": 1}
        document.update({k: v for k, v in settings.as_dict().items() if k not in ("name", "pyradiomics_parameters")})
        path = Path(folder) / f"{settings.name}.json"
        path.write_text(json.dumps(document, indent=1))
        return ["--params", str(path)]

    # Inputs -------------------------------------------------------------------------

    def scenePairs(self):
        """Every (volume, segmentation) pair of the scene, in the segmentations' order.

        A segmentation pairs with the volume its reference image geometry comes from (the
        volume it was drawn on in Segment Editor); otherwise with the volume of the same
        name, or whose name starts its name (``CT`` for ``CT segmentation``).
        """
        volumeNodes = self.sceneVolumes()
        volumeIds = {v.GetID() for v in volumeNodes}
        pairs = []
        for segmentation in self.sceneNodes("vtkMRMLSegmentationNode"):
            reference = segmentation.GetNodeReference("referenceImageGeometryRef")
            if reference is None or reference.GetID() not in volumeIds:
                name = segmentation.GetName()
                named = [
                    v for v in volumeNodes if name == v.GetName() or re.match(re.escape(v.GetName()) + r"[\s_.-]", name)
                ]
                reference = max(named, key=lambda v: len(v.GetName()), default=None)
            if reference is not None:
                pairs.append((reference, segmentation))
        return pairs

    @staticmethod
    def segmentNames(segmentationNode, segmentIds=None):
        """``{segment ID: name}``, names made unique (a repeated name gets its segment ID)."""
        segmentation = segmentationNode.GetSegmentation()
        if segmentIds is None:
            segmentIds = [segmentation.GetNthSegmentID(n) for n in range(segmentation.GetNumberOfSegments())]
        names = {}
        for segmentId in segmentIds:
            segment = segmentation.GetSegment(segmentId)
            if segment is None:
                raise ValueError(f"segment {segmentId!r} is not in {segmentationNode.GetName()}")
            names[segmentId] = segment.GetName()
        counts = Counter(names.values())
        return {i: (n if counts[n] == 1 else f"{n} ({i})") for i, n in names.items()}

    def inputDescription(self, volumeNode, segmentationNode, case, segmentIds=None):
        """What identifies one volume/segmentation input in a table's provenance."""
        return {
            "case": case,
            "volume": volumeNode.GetName(),
            "volume_id": volumeNode.GetID(),
            "segmentation": segmentationNode.GetName(),
            "segmentation_id": segmentationNode.GetID(),
            "segments": list(self.segmentNames(segmentationNode, segmentIds).values()),
        }

    @staticmethod
    def segmentMask(segmentationNode, image, segmentId):
        """One segment as a binary mask (label 1) on the grid of ``image`` (SimpleITK)."""
        from ImagInfoExtension.bridge.segmentations import label_map_from_segmentation_node

        return label_map_from_segmentation_node(segmentationNode, image, [segmentId]).image

    def writeInputs(self, pairs, folder):
        """Each volume and one binary mask per segment, plus ``manifest.csv``; returns the manifest and
        what identifies each input (``inputs`` provenance)."""
        import pandas as pd

        from ImagInfoExtension.io import write_image

        if not pairs:
            raise ValueError("no volume and segmentation to extract")
        volumeCount = Counter(volume.GetID() for volume, _segmentation in pairs)
        nameCount = Counter(volume.GetName() for volume, _segmentation in pairs)
        rows, inputs = [], []
        for number, (volume, segmentation) in enumerate(pairs, start=1):
            case = volume.GetName() if nameCount[volume.GetName()] == 1 else f"{volume.GetName()} ({volume.GetID()})"
            if volumeCount[volume.GetID()] > 1:
                case = f"{case} / {segmentation.GetName()}"
            names = self.segmentNames(segmentation)
            if not names:
                continue
            imagePath = folder / f"image_{number}.nrrd"
            image = self.writeVolume(volume, imagePath)
            for index, (segmentId, name) in enumerate(names.items(), start=1):
                maskPath = folder / f"mask_{number}_{index}.nrrd"
                write_image(self.segmentMask(segmentation, image, segmentId), maskPath)
                rows.append([case, str(imagePath), str(maskPath), "1", name])
            inputs.append(self.inputDescription(volume, segmentation, case))
        if not rows:
            raise ValueError("the segmentations have no segment; draw segments in Segment Editor first")
        manifest = folder / "manifest.csv"
        pd.DataFrame(rows, columns=MANIFEST_COLUMNS).to_csv(manifest, index=False)
        return manifest, inputs

    # The job ------------------------------------------------------------------------

    def startExtraction(
        self,
        pairs=None,
        manifest=None,
        preset=None,
        parameterFile=None,
        mode=None,
        families=None,
        imageTypes=None,
        perLesion=False,
        minLesionVolumeMl=0.0,
        workers=None,
        context=None,
    ):
        """Write the inputs and start ``imaginfo radiomics --manifest``; returns the running job.

        ``pairs`` (volume and segmentation nodes) are written to a temporary folder;
        a ``manifest`` CSV of files is run as it is. The job's result is the dict of
        :meth:`readOutputs`.
        """
        from ImagInfoExtension.radiomics.run import output_paths

        if (pairs is None) == (manifest is None):
            raise ValueError("give volume/segmentation pairs or a manifest CSV")
        if not preset and not parameterFile:
            preset = "ct"
        settings, base = self.settingsFor(preset, parameterFile, mode, families, imageTypes)
        with self.startingWorkFolder() as folder:
            if pairs is not None:
                manifest, inputs = self.writeInputs(list(pairs), folder)
            else:
                manifest = Path(manifest).resolve()
                if not manifest.is_file():
                    raise ValueError(f"the manifest {manifest} does not exist")
                inputs = None
            out = folder / "out" / "features.csv"
            arguments = ["--manifest", str(manifest), "--out", str(out)]
            arguments += self.settingsArguments(settings, base, preset, parameterFile, folder)
            if perLesion:
                arguments += ["--per-lesion", "--min-lesion-volume-ml", repr(float(minLesionVolumeMl))]
            if workers is not None:
                arguments += ["--workers", str(int(workers))]
            jobContext = {"inputs": inputs, "perLesion": bool(perLesion), "minLesionVolumeMl": minLesionVolumeMl}
            jobContext.update(context or {})
            return self.startChildJob(
                "radiomics",
                arguments,
                readResult=lambda: self.readOutputs(out),
                workDir=folder,
                outputDir=output_paths(out)["features"].parent,
                successCodes=(0, EXIT_SOME_ROIS_FAILED),
                context=jobContext,
            )

    @staticmethod
    def readOutputs(featuresPath):
        """What ``imaginfo radiomics`` wrote: ``features`` (the tidy table), ``failures``,
        ``lesions`` (pandas) and ``provenance`` (dict)."""
        import json

        import pandas as pd

        from ImagInfoExtension.radiomics.extract import FAILURE_COLUMNS, LESION_COLUMNS
        from ImagInfoExtension.radiomics.run import output_paths

        paths = output_paths(featuresPath)
        features = pd.read_csv(paths["features"], dtype=str, keep_default_na=False)
        # Python's float() reads back exactly the shortest repr pandas wrote ("" is NaN).
        features["value"] = [float(v) if v else float("nan") for v in features["value"]]
        if paths["failures"].is_file():
            failures = pd.read_csv(paths["failures"], dtype=str, keep_default_na=False)
        else:
            failures = pd.DataFrame(columns=list(FAILURE_COLUMNS))
        if paths["lesions"].is_file():
            lesions = pd.read_csv(
                paths["lesions"],
                dtype={"case": str, "segment": str},
                keep_default_na=False,
                float_precision="round_trip",
            )
        else:
            lesions = pd.DataFrame(columns=list(LESION_COLUMNS))
        return {
            "features": features,
            "failures": failures,
            "lesions": lesions,
            "provenance": json.loads(paths["provenance"].read_text()),
        }

    @staticmethod
    def pairContext(volumeNode, segmentationNode):
        """The job context of one volume/segmentation: a re-run on the same nodes reuses the same table."""
        return {
            "key": f"{volumeNode.GetID()}:{segmentationNode.GetID()}",
            "name": f"{volumeNode.GetName()} {segmentationNode.GetName()} radiomics",
        }

    def optionsFrom(self, parameterNode, workers):
        """Keyword arguments of :meth:`startExtraction` for the panel's settings and lesion choices."""
        return {
            **self.settingsChoicesFrom(parameterNode),
            "perLesion": parameterNode.perLesion,
            "minLesionVolumeMl": parameterNode.minLesionVolumeMl,
            "workers": workers,
        }

    def inputsFromParameterNode(self, parameterNode):
        """Keyword arguments of :meth:`startExtraction` for the panel's volume and segmentation."""
        volume, segmentation = parameterNode.inputVolume, parameterNode.inputSegmentation
        if volume is None or segmentation is None:
            raise ValueError("select a volume and a segmentation")
        # A few segments of one image: one after the other in the child, without starting Dask.
        return {"pairs": [(volume, segmentation)], **self.optionsFrom(parameterNode, workers=0)}

    def startJob(self, parameterNode):
        return self.startExtraction(
            **self.inputsFromParameterNode(parameterNode),
            context=self.pairContext(parameterNode.inputVolume, parameterNode.inputSegmentation),
        )

    def _batchOptions(self, parameterNode):
        blocker = self.settingsBlocker(parameterNode)
        if blocker:
            raise ValueError(blocker)
        return self.optionsFrom(parameterNode, workers=parameterNode.workers or None)

    def startSceneBatch(self, parameterNode):
        """Start the extraction of every volume/segmentation pair of the scene (see :meth:`scenePairs`)."""
        pairs = self.scenePairs()
        if not pairs:
            raise ValueError(
                _(
                    "No volume/segmentation pair in the scene: a segmentation pairs with the volume it was drawn on, "
                    "or with the volume whose name starts its name."
                )
            )
        return self.startExtraction(
            pairs=pairs,
            **self._batchOptions(parameterNode),
            context={"key": "scene batch", "name": "Radiomics scene batch"},
        )

    def startManifestBatch(self, parameterNode):
        """Start the extraction of a manifest CSV (case,image,mask plus optional label, segment, factors)."""
        manifest = requiredPath(
            parameterNode.batchManifest, _("Choose a manifest CSV (case,image,mask[,label,segment,factors]) first.")
        )
        return self.startExtraction(
            manifest=manifest,
            **self._batchOptions(parameterNode),
            context={"key": f"manifest:{manifest.resolve()}", "name": f"Radiomics {manifest.stem}"},
        )

    def extractInBackground(self, pairs=None, manifest=None, wait=True, createTable=True, **options):
        """The panel's way from the console: ``imaginfo radiomics`` as a child process.

        ``pairs`` is a list of (volume node, segmentation node); ``options`` are those of
        :meth:`startExtraction`. ``wait=True`` blocks (the GUI repaints) and returns the
        outputs (:meth:`readOutputs`, plus ``table`` with ``createTable``); ``wait=False``
        returns the running job.
        """
        context = {"key": "console", "name": "Radiomics features"}
        if pairs is not None and len(pairs) == 1:
            context = self.pairContext(*pairs[0])
        job = self.startExtraction(pairs=pairs, manifest=manifest, context=context, **options)
        if not wait:
            return job
        outputs = self.runJob(job, True)
        if createTable:
            outputs["table"] = self.createOutputNodes(outputs, job.context)["table"]
        return outputs

    def finishJob(self, job, parameterNode):
        outputs = job.result()
        nodes = self.createOutputNodes(outputs, job.context)
        if nodes["table"] is not None:
            parameterNode.outputTable = nodes["table"]
            if str(job.context.get("key", "")).startswith("manifest:"):
                # A manifest's factor columns are what the Reproducibility section analyses.
                parameterNode.robustnessFeatures = nodes["table"]
            self.showTableAndPlot(nodes["table"], None)
        return self.statusText(outputs)

    # In-process ---------------------------------------------------------------------

    def extract(
        self,
        volumeNode,
        segmentationNode,
        preset="ibsi-C",
        perLesion=False,
        createTable=True,
        parameterFile=None,
        mode=None,
        families=None,
        imageTypes=None,
        minLesionVolumeMl=0.0,
        segmentIds=None,
    ):
        """Features of every segment of a segmentation, computed in this process (synchronous).

        For scripts: it returns when done and blocks Slicer meanwhile. The module's panel
        runs the same engine as a child process instead, with progress and Cancel.

        Parameters
        ----------
        volumeNode : vtkMRMLScalarVolumeNode
        segmentationNode : vtkMRMLSegmentationNode
            Each segment is rasterised on its own onto the volume's grid (overlapping
            segments keep all their voxels).
        preset : str
            A preset (``ibsi-phantom``, ``ibsi-A`` ... ``ibsi-E``, ``ct``, ``mr``, ``pet-suv``);
            ignored when ``parameterFile`` is given.
        perLesion : bool
            One feature set per connected component of at least ``minLesionVolumeMl``.
        createTable : bool
            Also put the table into a table node (reused by a re-run on the same nodes),
            with the provenance as ``ImagInfo.radiomics.*`` attributes.
        parameterFile : str or Path, optional
            ImagInfo or pyradiomics parameter file (YAML or JSON).
        mode : {"ibsi", "pyradiomics"}, optional
        families : list of str, optional
            Feature families to keep (``morph``, ``stat``, ``cm``, ...), narrowing the settings'.
        imageTypes : dict, optional
            ``{"Original": {}, "LoG": {"sigma_mm": [1, 2]}, "Wavelet": {}}``, replacing the settings'.
        segmentIds : list of str, optional
            Only these segments (default: all).

        Returns
        -------
        pandas.DataFrame, or (pandas.DataFrame, vtkMRMLTableNode) with ``createTable``
            The tidy table: ``case, segment, lesion, image_type, feature_class, feature,
            value, ibsi_tag``. ``frame.attrs`` holds ``failures``, ``warnings``,
            ``lesions`` and ``provenance``.
        """
        settings, _base = self.settingsFor(None if parameterFile else preset, parameterFile, mode, families, imageTypes)
        outputs = self.extractInProcess(
            volumeNode, segmentationNode, settings, perLesion, minLesionVolumeMl, segmentIds
        )
        frame = outputs["features"]
        frame.attrs.update(
            failures=outputs["failures"].to_dict("records"),
            warnings=list(outputs["provenance"]["warnings"]),
            lesions=outputs["lesions"].to_dict("records"),
            provenance=outputs["provenance"],
        )
        if not createTable:
            return frame
        context = {
            **self.pairContext(volumeNode, segmentationNode),
            "inputs": [self.inputDescription(volumeNode, segmentationNode, volumeNode.GetName(), segmentIds)],
            "perLesion": bool(perLesion),
            "minLesionVolumeMl": minLesionVolumeMl,
        }
        return frame, self.createOutputNodes(outputs, context)["table"]

    def extractInProcess(
        self, volumeNode, segmentationNode, settings, perLesion=False, minLesionVolumeMl=0.0, segmentIds=None
    ):
        """:meth:`extract`'s computation with the settings of :meth:`settingsFor`; returns outputs
        shaped like :meth:`readOutputs`'."""
        import pandas as pd

        from ImagInfoExtension.bridge.volumes import sitk_from_volume_node
        from ImagInfoExtension.radiomics.extract import (
            FAILURE_COLUMNS,
            FEATURE_COLUMNS,
            LESION_COLUMNS,
            extract_features,
        )

        if volumeNode is None or segmentationNode is None:
            raise ValueError("give a volume node and a segmentation node")
        image = sitk_from_volume_node(volumeNode)
        names = self.segmentNames(segmentationNode, segmentIds)
        if not names:
            raise ValueError(f"{segmentationNode.GetName()} has no segment; draw segments in Segment Editor first")
        case = volumeNode.GetName()
        rows, lesions, failures, warnings, masks = [], [], [], [], {}
        provenance = {}
        for segmentId, name in names.items():
            result = extract_features(
                image,
                self.segmentMask(segmentationNode, image, segmentId),
                settings,
                case=case,
                segment_names={1: name},
                labels=[1],
                per_lesion=perLesion,
                min_lesion_volume_ml=minLesionVolumeMl,
            )
            rows += result.rows
            lesions += result.lesions
            failures += result.failures
            warnings += [f"{name}: {w}" for w in result.warnings]
            masks[name] = result.provenance["mask_sha256"]
            provenance = result.provenance
        inputs = [{"case": case, "image_sha256": provenance["image_sha256"], "mask_sha256": masks}]
        keep = ("engine", "engine_version", "mode", "settings_name", "settings_sha256", "per_lesion")
        return {
            "features": pd.DataFrame(rows, columns=list(FEATURE_COLUMNS)),
            "failures": pd.DataFrame(failures, columns=list(FAILURE_COLUMNS)),
            "lesions": pd.DataFrame(lesions, columns=list(LESION_COLUMNS)),
            "provenance": {
                **{k: provenance[k] for k in keep},
                "parameters": settings.as_dict(),
                "inputs": inputs,
                "warnings": warnings,
            },
        }

    # Reproducibility ----------------------------------------------------------------

    @staticmethod
    def parseColumns(text):
        """``"recon, dose_mgy"`` → ``["recon", "dose_mgy"]`` (commas or semicolons separate); empty → ``[]``."""
        return [part.strip() for part in re.split(r"[,;]", text or "") if part.strip()]

    @staticmethod
    def parseReference(text):
        """``"recon=FBP, dose_mgy=4.0"`` → ``{"recon": "FBP", "dose_mgy": "4.0"}``; empty → ``{}``."""
        from ImagInfoExtension.radiomics.robustness import parse_reference

        return parse_reference(text)

    def featuresFrame(self, features):
        """A features table given as a DataFrame, a table node or a CSV path, as
        ``(frame, name, key, attributes)``: its name and output key, and the provenance
        attributes a table node carries (kept on the reproducibility table)."""
        import pandas as pd

        from ImagInfoExtension.bridge.tables import dataframe_from_table_node

        if isinstance(features, pd.DataFrame):
            return features, "Radiomics", "frame", {}
        if isinstance(features, (str, Path)):
            from ImagInfoExtension.radiomics.robustness import read_features_csv

            path = Path(features)
            return read_features_csv(path), path.stem, f"file:{path.resolve()}", {}
        if features is not None and hasattr(features, "IsA") and features.IsA("vtkMRMLTableNode"):
            attributes = {
                name: features.GetAttribute(name)
                for name in (features.GetAttributeNames() or ())
                if name.startswith(PROVENANCE_ATTRIBUTE)
            }
            return dataframe_from_table_node(features), features.GetName(), f"table:{features.GetID()}", attributes
        raise ValueError("give the features as a DataFrame, a table node or the path of a features CSV")

    def robustness(self, features, groupBy, reference, cccThreshold=0.90, createTable=True, confidence=0.95):
        """Reproducibility of every feature across acquisition conditions, computed in this process.

        The same analysis as ``imaginfo radiomics-robustness``
        (:func:`ImagInfoExtension.radiomics.robustness.feature_robustness`)::

            logic = slicer.util.getModuleLogic("ImagInfoRadiomics")
            summary, table = logic.robustness(getNode("Radiomics study"), groupBy=["recon", "dose_mgy"],
                                              reference={"recon": "FBP", "dose_mgy": "4.0"})

        Parameters
        ----------
        features : pandas.DataFrame, vtkMRMLTableNode, str or Path
            Tidy features table (``case, segment, lesion, image_type, feature_class, feature,
            value, ibsi_tag``) with factor columns, e.g. a manifest batch's table, or its CSV.
        groupBy : list of str, or str
            Factor columns whose combinations are the conditions (``"recon, dose_mgy"`` is
            read as a list); empty for a test-retest table whose ``repetition`` is the rater.
        reference : dict, or str
            The reference condition, one value per ``groupBy`` column (``"recon=FBP,
            dose_mgy=4.0"`` is read as a dict).
        cccThreshold : float
            A feature is robust when its CCC against the reference is at least this under
            every other condition.
        createTable : bool
            Also put the summary into a table node, and each feature's CCC under each
            condition into a second one, referenced from the first as ``CCC_TABLE_REFERENCE``
            (``table.GetNodeReference("ImagInfo.robustness.ccc")``). A re-run on the same
            input updates both.
        confidence : float
            Coverage of the confidence intervals.

        Returns
        -------
        pandas.DataFrame, or (pandas.DataFrame, vtkMRMLTableNode) with ``createTable``
            One row per feature: the feature key, ``n_objects, n_conditions, icc21, icc21_low,
            icc21_high, icc31, icc31_low, icc31_high, ccc_min, ccc_min_condition, robust, reason``.

        Raises
        ------
        ValueError
            A group-by column the table lacks or that is no factor, a reference value the
            table does not hold, and the other design errors of ``feature_robustness``;
            nothing is added to the scene then.
        """
        import json

        from ImagInfoExtension.bridge.tables import table_node_from_dataframe
        from ImagInfoExtension.radiomics.robustness import feature_ccc, feature_robustness

        frame, name, key, inputAttributes = self.featuresFrame(features)
        groupBy = self.parseColumns(groupBy) if isinstance(groupBy, str) else list(groupBy or [])
        reference = self.parseReference(reference) if isinstance(reference, str) else dict(reference or {})
        cccThreshold = float(cccThreshold)
        summary = feature_robustness(frame, groupBy, reference, ccc_threshold=cccThreshold, confidence=confidence)
        if not createTable:
            return summary
        # Both tables are computed before any node is made, so that bad input leaves the scene as it was.
        ccc = feature_ccc(frame, groupBy, reference, confidence=confidence)
        attributes = dict(inputAttributes)
        attributes.update(
            {
                ROBUSTNESS_ATTRIBUTE + "features": name,
                ROBUSTNESS_ATTRIBUTE + "group_by": json.dumps(groupBy),
                ROBUSTNESS_ATTRIBUTE + "reference": json.dumps(reference, default=str),
                ROBUSTNESS_ATTRIBUTE + "ccc_threshold": repr(cccThreshold),
                ROBUSTNESS_ATTRIBUTE + "confidence": repr(float(confidence)),
            }
        )
        with self.outputNodes(f"robustness {key}") as nodes:
            table = nodes.node("robustness", "vtkMRMLTableNode", f"{name} robustness")
            table_node_from_dataframe(summary, self.scene, table.GetName(), node=table)
            cccTable = nodes.node("robustness CCC", "vtkMRMLTableNode", f"{name} robustness CCC")
            table_node_from_dataframe(ccc, self.scene, cccTable.GetName(), node=cccTable)
            for node in (table, cccTable):
                for attribute in list(node.GetAttributeNames() or ()):
                    if attribute.startswith((ROBUSTNESS_ATTRIBUTE, PROVENANCE_ATTRIBUTE)):
                        node.RemoveAttribute(attribute)
                for attribute, value in attributes.items():
                    node.SetAttribute(attribute, value)
            table.SetNodeReferenceID(CCC_TABLE_REFERENCE, cccTable.GetID())
        return summary, table

    @staticmethod
    def robustnessStatus(summary, cccThreshold):
        """``"3 of 40 features robust (CCC ≥ 0.90 in every condition)."``, and how many could not be assessed."""
        threshold = f"{cccThreshold:.2f}" if round(cccThreshold, 2) == cccThreshold else f"{cccThreshold:g}"
        text = _("{robust} of {total} features robust (CCC ≥ {threshold} in every condition).").format(
            robust=int(summary["robust"].astype(bool).sum()), total=len(summary), threshold=threshold
        )
        unassessed = int((summary["reason"].astype(str) != "").sum())
        if unassessed:
            text += " " + _("{count} could not be assessed (see the reason column).").format(count=unassessed)
        return text

    def analyseRobustness(self, parameterNode):
        """The Reproducibility section's Analyse: its table (or CSV file) into two table nodes; the status text."""
        featuresFile = optionalPath(parameterNode.robustnessFeaturesFile)
        features = featuresFile if featuresFile is not None else parameterNode.robustnessFeatures
        if features is None:
            raise ValueError(_("Choose the feature table (or a features CSV) to analyse."))
        threshold = parameterNode.robustnessCccThreshold
        summary, table = self.robustness(
            features, parameterNode.robustnessGroupBy, parameterNode.robustnessReference, cccThreshold=threshold
        )
        self.showTableAndPlot(table, None)
        return self.robustnessStatus(summary, threshold)

    # Outputs ------------------------------------------------------------------------

    @staticmethod
    def provenanceAttributes(outputs, context):
        """The ``ImagInfo.radiomics.*`` attributes of a feature table: engine, settings, inputs."""
        import json

        provenance = outputs["provenance"]
        # The nodes a run was given; for a manifest, its files as the engine identified them.
        inputs = context.get("inputs") or provenance.get("inputs") or []
        imageHashes = list(dict.fromkeys(e.get("image_sha256", "") for e in (provenance.get("inputs") or [])))
        attributes = {
            "engine": provenance.get("engine", ""),
            "engine_version": provenance.get("engine_version", ""),
            "mode": provenance.get("mode", ""),
            "settings_name": provenance.get("settings_name", ""),
            "settings_sha256": provenance.get("settings_sha256", ""),
            "settings": json.dumps(provenance.get("parameters", {}), sort_keys=True, default=str),
            "per_lesion": str(bool(context.get("perLesion", provenance.get("per_lesion", False)))).lower(),
            "min_lesion_volume_ml": repr(float(context.get("minLesionVolumeMl") or 0.0)),
            "image_sha256": ",".join(h for h in imageHashes if h),
            "inputs": json.dumps(inputs, default=str),
            "failed_rois": str(len(outputs["failures"])),
            "warnings": json.dumps(list(provenance.get("warnings") or [])),
        }
        return {PROVENANCE_ATTRIBUTE + key: value for key, value in attributes.items()}

    def createOutputNodes(self, outputs, context):
        """The feature table node (and, per lesion, a lesion table), with provenance attributes.

        A re-run on the same inputs updates the same nodes. Nothing is made when no ROI
        gave a feature (the status lists why); a failure removes what it added.
        """
        from ImagInfoExtension.bridge.tables import table_node_from_dataframe

        features, lesions = outputs["features"], outputs["lesions"]
        if features.empty:
            return {"table": None, "lesions": None}
        attributes = self.provenanceAttributes(outputs, context)
        name = context.get("name") or "Radiomics features"
        with self.outputNodes(context.get("key", "")) as nodes:
            table = nodes.node("features", "vtkMRMLTableNode", name)
            table_node_from_dataframe(features, self.scene, name, node=table)
            for attribute in list(table.GetAttributeNames() or ()):
                if attribute.startswith(PROVENANCE_ATTRIBUTE):
                    table.RemoveAttribute(attribute)
            for attribute, value in attributes.items():
                table.SetAttribute(attribute, value)
            lesionTable = None
            if context.get("perLesion") and not lesions.empty:
                lesionTable = nodes.node("lesions", "vtkMRMLTableNode", f"{name} lesions")
                table_node_from_dataframe(lesions, self.scene, f"{name} lesions", node=lesionTable)
            else:
                stale = nodes.find("lesions", "vtkMRMLTableNode")
                if stale is not None:
                    self.scene.RemoveNode(stale)
        return {"table": table, "lesions": lesionTable}

    @staticmethod
    def statusText(outputs):
        """What a run gave: values and ROIs, then every ROI without features and the warnings."""
        features, failures = outputs["features"], outputs["failures"]
        provenance = outputs["provenance"]
        rois = len(features[["case", "segment", "lesion"]].drop_duplicates()) if len(features) else 0
        if rois:
            text = _("{values} values of {rois} ROI(s) ({mode} mode, settings {settings}).").format(
                values=len(features),
                rois=rois,
                mode=provenance.get("mode", ""),
                settings=provenance.get("settings_name"),
            )
        else:
            text = _("No ROI gave features; no table was made.")
        if len(failures):
            text += " " + _("Not extracted: {reasons}.").format(reasons="; ".join(failures["error"].astype(str)))
        warnings = list(provenance.get("warnings") or [])
        if warnings:
            text += " " + _("Warnings: {warnings}").format(warnings="; ".join(warnings))
        return text

    def saveTableAsCsv(self, tableNode, path):
        """Save a feature table as CSV, with its provenance beside it (``<name>.provenance.json``)."""
        import json

        from ImagInfoExtension.bridge.tables import dataframe_from_table_node
        from ImagInfoExtension.io import write_atomically

        if tableNode is None:
            raise ValueError(_("No feature table: run an extraction, or choose a table."))
        if path is None:
            raise ValueError(_("Choose the CSV file to save to."))
        path = Path(path)
        if path.suffix.lower() != ".csv":
            path = path.with_suffix(".csv")
        frame = dataframe_from_table_node(tableNode)
        write_atomically(path, lambda p: frame.to_csv(p, index=False))
        provenance = {
            name[len(PROVENANCE_ATTRIBUTE) :]: tableNode.GetAttribute(name)
            for name in (tableNode.GetAttributeNames() or ())
            if name.startswith(PROVENANCE_ATTRIBUTE)
        }
        if provenance:
            sidecar = path.with_name(f"{path.stem}.provenance.json")
            write_atomically(sidecar, lambda p: p.write_text(json.dumps(provenance, indent=1)))
        return _("Saved {rows} rows to {path}.").format(rows=len(frame), path=path)


#
# ImagInfoRadiomicsTest
#


class ImagInfoRadiomicsTest(ImagInfoModuleTest):
    """Runs inside Slicer (Reload and Test) and under pytest with the slicer-core harness."""

    def _volumeAndSegmentation(self):
        """A 24 x 24 x 12 voxel noisy volume and a segmentation with two boxes."""
        import numpy as np
        import SimpleITK as sitk

        from ImagInfoExtension.bridge.segmentations import SegmentDescription, segmentation_node_from_label_map
        from ImagInfoExtension.bridge.volumes import volume_node_from_sitk

        rng = np.random.default_rng(3)
        voxels = np.round(rng.normal(40.0, 25.0, (12, 24, 24))).astype(np.int16)
        image = sitk.GetImageFromArray(voxels)
        image.SetSpacing((1.0, 1.0, 2.0))
        labels = np.zeros(voxels.shape, dtype=np.uint8)
        labels[3:9, 3:11, 3:11] = 1
        labels[4:10, 13:21, 12:20] = 2
        labelImage = sitk.GetImageFromArray(labels)
        labelImage.CopyInformation(image)
        volumeNode = volume_node_from_sitk(image, self.scene, "radiomics test volume")
        segments = [SegmentDescription(label=1, name="left"), SegmentDescription(label=2, name="right")]
        segmentationNode = segmentation_node_from_label_map(
            labelImage, self.scene, segments, "radiomics test segments", reference_volume_node=volumeNode
        )
        return volumeNode, segmentationNode

    def test_extract_two_segments_into_a_table(self):
        self.delayDisplay("Extracting the features of two segments")
        volumeNode, segmentationNode = self._volumeAndSegmentation()
        logic = ImagInfoRadiomicsLogic()
        frame, table = logic.extract(volumeNode, segmentationNode, preset="ibsi-C", families=["stat", "cm"])
        assert sorted(frame["segment"].unique()) == ["left", "right"]
        perSegment = frame.groupby("segment").size()
        assert perSegment["left"] == perSegment["right"] > 0
        assert table.GetNumberOfRows() == len(frame)
        assert table.GetAttribute(PROVENANCE_ATTRIBUTE + "settings_name") == "ibsi-C-custom"
        assert table.GetAttribute(PROVENANCE_ATTRIBUTE + "engine").startswith("ImagInfo")
        count = self.scene.GetNumberOfNodes()
        _frame, again = logic.extract(volumeNode, segmentationNode, preset="ibsi-C", families=["stat"])
        assert again is table and self.scene.GetNumberOfNodes() == count, "a re-run updates the same table"
        self.delayDisplay("Test passed")

    def test_reproducibility_of_a_two_condition_study(self):
        self.delayDisplay("Assessing the reproducibility of two features")
        import numpy as np
        import pandas as pd

        rng = np.random.default_rng(7)
        truth = rng.normal(100.0, 20.0, 8)
        rows = [
            [recon, f"roi{n}", "", "original", "stat", feature, value, feature, recon]
            for recon in ("FBP", "IR")
            for n, t in enumerate(truth)
            for feature, value in (("stat_mean", t + rng.normal(0.0, 0.5)), ("stat_noise", rng.normal(100.0, 20.0)))
        ]
        columns = ["case", "segment", "lesion", "image_type", "feature_class", "feature", "value", "ibsi_tag", "recon"]
        summary, table = ImagInfoRadiomicsLogic().robustness(pd.DataFrame(rows, columns=columns), "recon", "recon=FBP")
        assert summary["robust"].tolist() == [True, False]
        assert table.GetNodeReference(CCC_TABLE_REFERENCE).GetNumberOfRows() == 2
        self.delayDisplay("Test passed")
