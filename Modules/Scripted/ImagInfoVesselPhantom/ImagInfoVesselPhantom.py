"""ImagInfo vessel phantom: automatic vessel extraction and per-radius quantification.

The computation is ``imaginfo vessels`` (``ImagInfoExtension.vessels``), run as a child
process; everything a module shares (widget behaviour, jobs, requirements, output
nodes) is in ``ImagInfoExtension.bridge.scaffolding``. This file holds what is this
module's own: its description, parameter node, Apply rules, how the inputs become
the command's files and arguments, how its outputs become nodes, and its self-test.
"""

import os
from pathlib import Path
from typing import Annotated

from ImagInfoExtension.bridge.sampledata import GeneratedSample
from ImagInfoExtension.bridge.scaffolding import (
    Default,
    ImagInfoModule,
    ImagInfoModuleLogic,
    ImagInfoModuleTest,
    ImagInfoModuleWidget,
    WithinRange,
    optionalPath,
    parameterNodeWrapper,
    parseMillimetres,
    vtkMRMLMarkupsROINode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLSegmentationNode,
    vtkMRMLTableNode,
)
from ImagInfoExtension.bridge.scaffolding import tr as _

#: The sample data set: the small phantom scanned with FBP at 1 mGy, with its truth.
#: ``imaginfo sample`` writes these files into Slicer's cache when the user asks for it.
SAMPLE = GeneratedSample(
    sample_name="ImagInfoVesselPhantom",
    requester="ImagInfoVesselPhantom",
    file_names=("ImagInfoVesselPhantom_FBP_1mGy_rep1.nrrd", "ImagInfoVesselPhantom_truth_labels.nrrd"),
    node_names=("ImagInfoVesselPhantom", "ImagInfoVesselPhantom truth"),
    load_file_types=("VolumeFile", "SegmentationFile"),
    thumbnail=os.path.join(os.path.dirname(__file__), "Resources", "Icons", "ImagInfoVesselPhantom.png"),
)


#
# ImagInfoVesselPhantom
#


class ImagInfoVesselPhantom(ImagInfoModule):
    def __init__(self, parent):
        ImagInfoModule.__init__(self, parent)
        self.describe(
            _("ImagInfo Vessel Phantom"),
            _(
                "Extracts the vessels of the 3D-printed lung-vessel phantom from a CT (Hessian vesselness, "
                "graph-cut segmentation, centrelines) and reports, per vessel radius, the voxel count, volume, "
                "median HU (MPV) and HU inter-quartile range (noise). Given the phantom's design it also reports "
                "detection and radius accuracy. The work runs as a separate process with Slicer's Python; Cancel "
                "stops it. From the Python console: "
                "<code>slicer.util.getModuleLogic('ImagInfoVesselPhantom').quantify(volumeNode)</code>."
            ),
        )
        self.registerSampleDataOnStartup(registerSampleData)


def registerSampleData():
    """Add "ImagInfoVesselPhantom" to Sample Data; its files are generated when first loaded."""
    SAMPLE.register()


#
# ImagInfoVesselPhantomParameterNode
#


@parameterNodeWrapper
class ImagInfoVesselPhantomParameterNode:
    """The module's inputs and settings.

    inputVolume - the phantom CT (HU).
    roi, maskSegmentation - optional search region (otherwise the holder cavity).
    designFile, designSegmentation - optional phantom design (truth.json or label map).
    radii - radius classes (mm, comma-separated) when no design is given.
    vesselHU, wallMarginMm, coreDepthMm, minimumScaleMm, maximumScaleMm, sensitivity - advanced.
    outputSegmentation, outputTable - reused when set, created otherwise.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    roi: vtkMRMLMarkupsROINode
    maskSegmentation: vtkMRMLSegmentationNode
    designSegmentation: vtkMRMLSegmentationNode
    designFile: Path
    registerDesign: bool = False
    radii: str = ""
    vesselHU: Annotated[float, WithinRange(-500.0, 3000.0)] = 100.0
    wallMarginMm: Annotated[float, WithinRange(0.0, 20.0)] = 2.0
    coreDepthMm: Annotated[float, WithinRange(0.0, 5.0)] = 1.0
    minimumScaleMm: Annotated[float, WithinRange(0.0, 10.0)] = 0.0
    maximumScaleMm: Annotated[float, WithinRange(0.0, 10.0)] = 0.0
    sensitivity: Annotated[float, WithinRange(0.05, 1.0), Default(0.25)]
    outputSegmentation: vtkMRMLSegmentationNode
    outputTable: vtkMRMLTableNode


#
# ImagInfoVesselPhantomWidget
#


class ImagInfoVesselPhantomWidget(ImagInfoModuleWidget):
    """The shared panel: Apply runs :meth:`ImagInfoVesselPhantomLogic.startJob`."""


#
# ImagInfoVesselPhantomLogic
#


class ImagInfoVesselPhantomLogic(ImagInfoModuleLogic):
    """Vessel quantification on MRML nodes.

    Example, from Slicer's Python console::

        logic = slicer.util.getModuleLogic("ImagInfoVesselPhantom")
        result = logic.quantify(getNode("ImagInfoVesselPhantom"), truth="/path/to/truth.json")
        print(result.per_radius)
        nodes = logic.createOutputNodes(result, getNode("ImagInfoVesselPhantom"))

    ``quantify(..., wait=False)`` returns the running job instead (``poll()``,
    ``cancel()``, ``wait()``, ``result()``).
    """

    parameterNodeClass = ImagInfoVesselPhantomParameterNode

    # Parameters ---------------------------------------------------------------------

    def setDefaultParameters(self, parameterNode):
        firstVolume = self.firstVolume()
        if firstVolume and not parameterNode.inputVolume:
            parameterNode.inputVolume = firstVolume

    def applyBlocker(self, parameterNode):
        if not parameterNode.inputVolume:
            return _("Select the input volume (the phantom CT).")
        try:
            self.parseRadii(parameterNode.radii)
        except ValueError as error:
            return str(error)
        design = optionalPath(parameterNode.designFile)
        if design is not None and not design.is_file():
            return _("The design file {path} does not exist.").format(path=design)
        low, high = parameterNode.minimumScaleMm, parameterNode.maximumScaleMm
        if 0 < high < low:
            return _("The smallest vesselness scale exceeds the largest.")
        return ""

    def applyDescription(self):
        return _("Quantify the vessels in the background; click again to cancel.")

    @staticmethod
    def parseRadii(text):
        """``"0.5, 1, 2"`` → ``[0.5, 1.0, 2.0]``; empty → None."""
        return parseMillimetres(text, "radii", "0.5,1,2,3") or None

    @staticmethod
    def parametersFrom(parameterNode):
        """Keyword arguments of :meth:`quantify` for the advanced settings."""
        scales = None
        low, high = parameterNode.minimumScaleMm, parameterNode.maximumScaleMm
        if low > 0 and high >= low:
            scales = [low * (high / low) ** (n / 4) for n in range(5)] if high > low else [low]
        return {
            "vessel_hu": parameterNode.vesselHU,
            "wall_margin_mm": parameterNode.wallMarginMm,
            "core_depth_mm": parameterNode.coreDepthMm,
            "register_truth": parameterNode.registerDesign,
            "scales_mm": scales,
            "sensitivity": parameterNode.sensitivity,
        }

    def inputsFromParameterNode(self, parameterNode):
        """Keyword arguments of :meth:`quantify` from the module's parameter node."""
        if parameterNode.inputVolume is None:
            raise ValueError("select an input volume")
        radii = self.parseRadii(parameterNode.radii)
        return {
            "volumeNode": parameterNode.inputVolume,
            "truth": parameterNode.designSegmentation or optionalPath(parameterNode.designFile),
            "roi": parameterNode.roi,
            "mask": parameterNode.maskSegmentation,
            "radii_mm": radii,
            **self.parametersFrom(parameterNode),
        }

    # The job ------------------------------------------------------------------------

    #: ``imaginfo vessels`` flag of each console keyword.
    FLAGS = {
        "vessel_hu": "--vessel-hu",
        "wall_margin_mm": "--wall-margin",
        "core_depth_mm": "--core-depth",
        "sensitivity": "--sensitivity",
    }

    def _arguments(self, parameters):
        unknown = set(parameters) - set(self.FLAGS) - {"register_truth", "scales_mm"}
        if unknown:
            accepted = sorted([*self.FLAGS, "register_truth", "scales_mm"])
            raise ValueError(f"unknown setting(s) {sorted(unknown)}; use {', '.join(accepted)}")
        arguments = []
        for key, flag in self.FLAGS.items():
            if parameters.get(key) is not None:
                arguments += [flag, repr(float(parameters[key]))]
        if parameters.get("register_truth"):
            arguments.append("--register-truth")
        if parameters.get("scales_mm"):
            arguments += ["--scales", ",".join(repr(float(s)) for s in parameters["scales_mm"])]
        return arguments

    def designArguments(self, truth, reference, radii_mm, folder):
        """``--truth`` (and ``--radii``) for a path, a design segmentation or a VesselTruth.

        ``reference`` (the input volume node, or the image written from it) gives the grid
        a design segmentation is rasterised onto.
        """
        import json

        if truth is None:
            return ["--radii", ",".join(repr(float(r)) for r in radii_mm)] if radii_mm else []
        if isinstance(truth, (str, Path)):
            arguments = ["--truth", str(Path(truth).resolve())]
            return arguments + (["--radii", ",".join(repr(float(r)) for r in radii_mm)] if radii_mm else [])
        if hasattr(truth, "IsA") and truth.IsA("vtkMRMLSegmentationNode"):
            from ImagInfoExtension.bridge.segmentations import label_map_from_segmentation_node
            from ImagInfoExtension.io import write_image
            from ImagInfoExtension.truth import radius_from_segment_name

            conversion = label_map_from_segmentation_node(truth, reference)
            if radii_mm is None:
                radii_mm = []
                for segment in conversion.segments:
                    radius = radius_from_segment_name(segment.name)
                    if radius is None:
                        raise ValueError(
                            f"segment {segment.name!r} does not name its radius (e.g. 'r = 1.5 mm'); "
                            "give the radii in label order"
                        )
                    radii_mm.append(radius)
            write_image(conversion.image, folder / "design_labels.nrrd")
            radii = ",".join(repr(float(r)) for r in radii_mm)
            return ["--truth", str(folder / "design_labels.nrrd"), "--radii", radii]
        if hasattr(truth, "to_document"):
            (folder / "truth.json").write_text(json.dumps(truth.to_document()))
            return ["--truth", str(folder / "truth.json")]
        raise ValueError(f"unsupported design {truth!r}: give truth.json, a label map file or a segmentation")

    def _maskArguments(self, image, roi, mask, folder):
        """``--mask`` on the input image's grid from a markups ROI and/or a segmentation (both: their overlap)."""
        if roi is None and mask is None:
            return []
        import numpy as np
        import SimpleITK as sitk

        from ImagInfoExtension.bridge.markups import mask_from_roi_node
        from ImagInfoExtension.bridge.segmentations import label_map_from_segmentation_node
        from ImagInfoExtension.geometry import ImageGrid
        from ImagInfoExtension.io import write_image

        grid = ImageGrid.from_sitk(image)
        region = np.ones(grid.shape_kji, dtype=bool)
        if roi is not None:
            region &= mask_from_roi_node(roi, grid)
        if mask is not None:
            region &= sitk.GetArrayViewFromImage(label_map_from_segmentation_node(mask, image).image) > 0
        if not region.any():
            raise ValueError("the ROI or mask does not overlap the volume; place it around the vessels")
        write_image(grid.to_sitk(region.astype(np.uint8)), folder / "mask.nrrd")
        return ["--mask", str(folder / "mask.nrrd")]

    def startQuantification(self, volumeNode, truth=None, roi=None, mask=None, radii_mm=None, **parameters):
        """Write the inputs and start ``imaginfo vessels``; returns the running job (see :meth:`quantify`)."""
        from ImagInfoExtension.vessels.quantify import read_results

        if volumeNode is None:
            raise ValueError("select an input volume")
        with self.startingWorkFolder() as folder:
            image = self.writeVolume(volumeNode, folder / "input.nrrd")
            arguments = [str(folder / "input.nrrd")]
            arguments += self.designArguments(truth, image, radii_mm, folder)
            arguments += self._maskArguments(image, roi, mask, folder)
            arguments += self._arguments(parameters)
            out = folder / "out"
            return self.startChildJob(
                "vessels", [*arguments, "--out", str(out)], readResult=lambda: read_results(out), workDir=folder
            )

    def quantify(self, volumeNode, truth=None, roi=None, mask=None, radii_mm=None, wait=True, **parameters):
        """Quantify the phantom's vessels in a volume node (as a child process).

        Parameters
        ----------
        volumeNode : vtkMRMLScalarVolumeNode
            CT in HU.
        truth : str, Path, vtkMRMLSegmentationNode or VesselTruth, optional
            The phantom's design: ``truth.json``, a truth label map file, or a
            segmentation whose segment k is radius class k (named like ``r = 1.5 mm``).
        roi : vtkMRMLMarkupsROINode, optional
            Search only inside this box.
        mask : vtkMRMLSegmentationNode, optional
            Search only inside these segments.
        radii_mm : list of float, optional
            Radius classes when no design is given.
        wait : bool
            True: block (the GUI repaints) and return the result; False: return the
            running job.
        **parameters
            ``vessel_hu``, ``wall_margin_mm``, ``core_depth_mm``, ``sensitivity``,
            ``register_truth``, ``scales_mm``.

        Returns
        -------
        ImagInfoExtension.vessels.VesselQuantification
            ``per_radius`` (a pandas table), ``labels``, centrelines and ``summary``.
        """
        job = self.startQuantification(volumeNode, truth, roi, mask, radii_mm, **parameters)
        return self.runJob(job, wait)

    def startJob(self, parameterNode):
        job = self.startQuantification(**self.inputsFromParameterNode(parameterNode))
        # The outputs belong to the inputs of this run, whatever the panel shows when it ends.
        job.context.update(
            volumeNode=parameterNode.inputVolume,
            outputSegmentation=parameterNode.outputSegmentation,
            outputTable=parameterNode.outputTable,
        )
        return job

    def finishJob(self, job, parameterNode):
        result = job.result()
        volumeNode = job.context["volumeNode"]
        if volumeNode.GetScene() is not self.scene:
            raise ValueError(f"{volumeNode.GetName()} left the scene during the run; no outputs were added")
        nodes = self.createOutputNodes(
            result, volumeNode, job.context["outputSegmentation"], job.context["outputTable"]
        )
        parameterNode.outputSegmentation = nodes["segmentation"]
        parameterNode.outputTable = nodes["table"]
        nodes["segmentation"].CreateClosedSurfaceRepresentation()
        self.showTableAndPlot(nodes["table"], nodes["chart"])
        return _("Total vessel volume {volume:.3f} ml in {seconds:.1f} s").format(
            volume=result.total_volume_ml, seconds=result.summary["runtime_s"]
        )

    def loadSampleData(self):
        """Generate (once, into Slicer's cache) and load the sample phantom: ``[volumeNode, truthSegmentationNode]``."""
        return SAMPLE.load()

    # Outputs ------------------------------------------------------------------------

    def createOutputNodes(self, result, volumeNode, segmentationNode=None, tableNode=None):
        """Segmentation (one segment per radius class, coloured by radius), centreline model
        (radius scalar), per-radius table and an MPV/IQR-versus-radius plot.

        A re-run on the same volume updates the same nodes; a failure removes what it
        added, leaving no half-made nodes.
        """
        import numpy as np

        from ImagInfoExtension.bridge.markups import model_node_from_centerlines
        from ImagInfoExtension.bridge.segmentations import SegmentDescription, segmentation_node_from_label_map
        from ImagInfoExtension.bridge.tables import chart_node_from_table, table_node_from_dataframe
        from ImagInfoExtension.metrics import metric

        scene = self.scene
        name = volumeNode.GetName() if volumeNode is not None else "vessels"
        present = set(int(v) for v in np.unique(result.labels)) - {0}
        segments = [
            SegmentDescription(label=row["index"], name=row["name"], color=tuple(row["color"]))
            for row in result.summary["classes"]
            if row["index"] in present
        ]
        labelImage = result.grid.to_sitk(result.labels)
        with self.outputNodes(volumeNode.GetID() if volumeNode is not None else "") as outputs:
            segmentation = segmentation_node_from_label_map(
                labelImage,
                scene,
                segments,
                f"{name} vessels",
                reference_volume_node=volumeNode,
                node=outputs.node("segmentation", "vtkMRMLSegmentationNode", f"{name} vessels", segmentationNode),
            )
            model = model_node_from_centerlines(
                result.centerline_points_mm,
                result.centerline_radius_mm,
                scene,
                f"{name} centrelines",
                node=outputs.node("centerlines", "vtkMRMLModelNode", f"{name} centrelines"),
            )
            table = table_node_from_dataframe(
                result.per_radius,
                scene,
                f"{name} per radius",
                node=outputs.node("table", "vtkMRMLTableNode", f"{name} per radius", tableNode),
            )
            chart = chart_node_from_table(
                table,
                scene,
                "radius_mm",
                ["mpv_hu", "iqr_hu"],
                f"{name} MPV and IQR",
                "radius ({unit})".format(unit=metric("est_radius_mm").unit),
                metric("mpv_hu").unit,
                node=outputs.node("chart", "vtkMRMLPlotChartNode", f"{name} MPV and IQR"),
            )
        return {"segmentation": segmentation, "centerlines": model, "table": table, "chart": chart}


#
# ImagInfoVesselPhantomTest
#


class ImagInfoVesselPhantomTest(ImagInfoModuleTest):
    """Runs inside Slicer (Reload and Test) and under pytest with the slicer-core harness."""

    def _cylinderVolume(self):
        from ImagInfoExtension.bridge.volumes import volume_node_from_sitk
        from ImagInfoExtension.phantom.cylinders import make_cylinder_phantom
        from ImagInfoExtension.vessels import truth_from_design

        phantom = make_cylinder_phantom((0.75, 1.5, 3.0), copies=1, seed=2)
        volumeNode = volume_node_from_sitk(phantom.image, self.scene, "cylinders")
        return volumeNode, truth_from_design(phantom.design, phantom.class_volume_ml), phantom

    def test_quantify_cylinders_and_reuse_outputs(self):
        self.delayDisplay("Quantifying a cylinder phantom")
        volumeNode, truth, phantom = self._cylinderVolume()
        logic = ImagInfoVesselPhantomLogic()
        result = logic.quantify(volumeNode, truth=truth)
        table = result.per_radius.dropna(subset=["true_length_mm"]).set_index("radius_mm")
        assert (table["detection_rate"] >= 0.95).all(), table
        assert abs(table.loc[3.0, "volume_ml"] / phantom.class_volume_ml[3.0] - 1) < 0.1
        assert abs(table.loc[3.0, "mpv_hu"] - 100.0) < 15.0
        nodes = logic.createOutputNodes(result, volumeNode)
        segmentation = nodes["segmentation"].GetSegmentation()
        assert segmentation.GetNumberOfSegments() == 3
        assert nodes["table"].GetNumberOfRows() == len(result.per_radius)
        assert nodes["centerlines"].GetPolyData().GetNumberOfPoints() == len(result.centerline_radius_mm)
        assert nodes["chart"].GetNumberOfPlotSeriesNodes() == 2
        count = self.scene.GetNumberOfNodes()
        again = logic.createOutputNodes(result, volumeNode)
        assert all(again[role] is nodes[role] for role in nodes), "a re-run updates the same nodes"
        assert self.scene.GetNumberOfNodes() == count
        self.delayDisplay("Test passed")

    def test_cancel_leaves_scene_unchanged(self):
        self.delayDisplay("Cancelling a background run")
        volumeNode, truth, _phantom = self._cylinderVolume()
        logic = ImagInfoVesselPhantomLogic()
        before = self.scene.GetNumberOfNodes()
        job = logic.quantify(volumeNode, truth=truth, wait=False)
        job.cancel(wait=True)
        assert job.state == "cancelled"
        assert self.scene.GetNumberOfNodes() == before
        job.close()
        assert not job.work_dir.exists(), "a cancelled run leaves no files"
        self.delayDisplay("Test passed")
