"""ImagInfo dose comparison: CT dose levels and reconstructions across repeated scans.

The computation is ``imaginfo compare`` (``ImagInfoExtension.dose`` on the batch
engine), run as a child process; grouping a DICOM folder is ``imaginfo study``. What
modules share is in ``ImagInfoExtension.bridge.scaffolding``. This file holds what
is this module's own: its description, parameter node, the study table, how a run
becomes the command's arguments, how its outputs become nodes, and its self-test.
"""

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
    requiredPath,
    vtkMRMLMarkupsROINode,
    vtkMRMLSegmentationNode,
    vtkMRMLTableNode,
)
from ImagInfoExtension.bridge.scaffolding import tr as _

#: Columns of a new study table; a manifest's further factor columns are kept.
STUDY_TABLE_COLUMNS = ["path", "dose_mgy", "recon", "repetition", "series_uid"]

#: Metrics charted against dose (titles and units come from ImagInfoExtension.metrics).
CHARTED_METRICS = ("iqr_hu", "mpv_hu", "total_volume_ml", "noise_sd_hu", "ttf50_per_mm", "dprime_npwe")

#: ``imaginfo compare`` flag of each console keyword.
COMPARE_FLAGS = {
    "radius_mm": "--radius",
    "test": "--test",
    "reference_recon": "--reference",
    "reference_dose_mgy": "--reference-dose",
}


#
# ImagInfoDoseComparison
#


class ImagInfoDoseComparison(ImagInfoModule):
    def __init__(self, parent):
        ImagInfoModule.__init__(self, parent)
        self.describe(
            _("ImagInfo Dose Comparison"),
            _(
                "Compares CT dose levels (CTDIvol) and reconstructions (FBP, iterative, deep learning) across "
                "repeated scans of the vessel phantom: vessel quantification per radius and AAPM TG-233 image "
                "quality (noise, NPS, TTF, CNR, d') of every series, mean ± SD over repetitions, tests between "
                "reconstructions, and a report with tables and plots. The work runs as a separate process with "
                "Slicer's Python; Cancel keeps the finished series. From the Python console: "
                "<code>slicer.util.getModuleLogic('ImagInfoDoseComparison').compare(study, outputFolder=...)</code>."
            ),
        )


#
# ImagInfoDoseComparisonParameterNode
#


@parameterNodeWrapper
class ImagInfoDoseComparisonParameterNode:
    """The module's inputs and settings.

    manifestFile, dicomFolder - where the study's series come from.
    studyTable - one row per series (path, dose_mgy, recon, repetition, series_uid), editable.
    truthFile - optional phantom design.
    noiseRoiSegmentation, noiseRoiBox - optional uniform region for noise SD and NPS (else found automatically).
    radiusMm, statisticalTest, referenceRecon - what is tabulated and tested.
    workers, schedulerAddress - where the series are measured (0 workers: one per core).
    outputFolder - report, tables, plots and the per-series cache.
    """

    manifestFile: Path
    dicomFolder: Path
    studyTable: vtkMRMLTableNode
    truthFile: Path
    noiseRoiSegmentation: vtkMRMLSegmentationNode
    noiseRoiBox: vtkMRMLMarkupsROINode
    radiusMm: Annotated[float, WithinRange(0.1, 20.0)] = 3.0
    statisticalTest: Annotated[str, Choice(["welch", "kruskal"])] = "welch"
    referenceRecon: str = "FBP"
    workers: Annotated[int, WithinRange(0, 64)] = 0
    schedulerAddress: str = ""
    outputFolder: Path


#
# ImagInfoDoseComparisonWidget
#


class ImagInfoDoseComparisonWidget(ImagInfoModuleWidget):
    def setupModule(self):
        self.connectAction(self.ui.loadStudyButton, self.loadStudy, _("Could not group the series."))
        self.connectAction(self.ui.addSceneVolumesButton, self.addSceneVolumes, _("Could not add the scene's volumes."))
        self.ui.studyTableSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.ui.studyTableView.setMRMLTableNode)

    def loadStudy(self):
        """A manifest is read here; a DICOM folder is grouped by a child job (it reads every header)."""
        parameters = self._parameterNode
        manifest, dicomFolder = optionalPath(parameters.manifestFile), optionalPath(parameters.dicomFolder)
        if manifest is None and dicomFolder is not None:
            self.runJob(
                self.logic.startGrouping(dicomFolder),
                self._onStudyGrouped,
                _("Grouping cancelled; the study table is unchanged."),
            )
            return None
        return self._onStudyGrouped(None, self.logic.readStudy(manifest=manifest))

    def _onStudyGrouped(self, job, grouped=None):
        study, unmatched = grouped if grouped is not None else job.result()
        self._parameterNode.studyTable = self.logic.studyTableNode(study, self._parameterNode.studyTable)
        left = ""
        if len(unmatched):
            left = " " + _("Left out: {series}.").format(
                series="; ".join(f"{row.path} ({row.reason})" for row in unmatched.itertuples())
            )
        return _("{count} series grouped.").format(count=len(study)) + left

    def addSceneVolumes(self):
        folder = optionalPath(self._parameterNode.outputFolder)
        if folder is None:
            return _("Choose the output folder first: the scene's volumes are saved under it.")
        self._parameterNode.studyTable = self.logic.studyTableFromVolumes(
            self.logic.sceneVolumes(), folder, self._parameterNode.studyTable
        )
        return _("Fill in each volume's dose, reconstruction and repetition in the table.")


#
# ImagInfoDoseComparisonLogic
#


class ImagInfoDoseComparisonLogic(ImagInfoModuleLogic):
    """Dose and reconstruction comparison on files, the DICOM database or the scene.

    Example, from Slicer's Python console::

        logic = slicer.util.getModuleLogic("ImagInfoDoseComparison")
        study, leftOut = logic.readStudy(manifest="/data/study/manifest.csv")
        result = logic.compare(study, outputFolder="/data/comparison", truth="/data/study/truth.json")
        print(result.tables["iqr_hu"])
        logic.createOutputNodes(result)

    ``compare(..., wait=False)`` returns the running job instead (``poll()``,
    ``cancel()``, ``wait()``, ``result()``).
    """

    parameterNodeClass = ImagInfoDoseComparisonParameterNode

    def applyBlocker(self, parameterNode):
        table = parameterNode.studyTable
        if table is None or table.GetNumberOfRows() == 0:
            return _("Group a manifest or DICOM folder, or add the scene's volumes, to fill the study table.")
        if optionalPath(parameterNode.outputFolder) is None:
            return _("Choose an output folder.")
        return ""

    def applyDescription(self):
        return _("Compare the study's series in the background; click again to cancel.")

    def cancelledDescription(self):
        return _("Cancelled; finished series are kept and a new run goes on from them.")

    # Study --------------------------------------------------------------------------

    def readStudy(self, manifest=None, dicomFolder=None, rules=None):
        """A study table (pandas) from a manifest CSV or a DICOM folder; also the series left out."""
        import pandas as pd

        from ImagInfoExtension.study.table import DOSE_FACTORS, read_manifest

        if manifest:
            return read_manifest(manifest, DOSE_FACTORS), pd.DataFrame(
                columns=["path", "series_uid", "series_description", "reason"]
            )
        if dicomFolder:
            return self.runJob(self.startGrouping(dicomFolder, rules))
        raise ValueError("give a manifest CSV or a DICOM folder, or add volumes from the scene")

    def startGrouping(self, dicomFolder, rules=None):
        """Start ``imaginfo study`` on a DICOM folder; its result is ``(study, leftOut)``."""
        import pandas as pd

        from ImagInfoExtension.study.dicom import rules_to_json
        from ImagInfoExtension.study.table import DOSE_FACTORS, left_out_path, validate_study

        def read(out):
            study = pd.read_csv(out, dtype={"series_uid": str}, keep_default_na=False)
            left_out = pd.read_csv(left_out_path(out), dtype=str, keep_default_na=False)
            return validate_study(study, DOSE_FACTORS, str(dicomFolder)), left_out

        with self.startingWorkFolder() as folder:
            out = folder / "study.csv"
            arguments = [str(Path(dicomFolder).resolve()), "--out", str(out)]
            if rules:
                (folder / "rules.json").write_text(rules_to_json(rules))
                arguments += ["--rules", str(folder / "rules.json")]
            return self.startChildJob("study", arguments, readResult=lambda: read(out), workDir=folder)

    def studyFromDicomDatabase(self, seriesUIDs, rules=None, database=None):
        """A study from series of Slicer's DICOM database (``slicer.dicomDatabase`` by default),
        grouped from their tags by the same code as a folder; returns ``(study, leftOut)``."""
        from ImagInfoExtension.bridge.dicom import study_from_database

        return study_from_database(seriesUIDs, rules, database)

    def studyTableNode(self, study, tableNode=None):
        """Show a study in an editable table node (reused on the next grouping): the path, the factors, the UID."""
        from ImagInfoExtension.bridge.tables import table_node_from_dataframe
        from ImagInfoExtension.study.table import study_factors

        columns = ["path", *study_factors(study), "series_uid"]
        with self.outputNodes() as outputs:
            node = outputs.node("study", "vtkMRMLTableNode", "Dose study", tableNode)
            return table_node_from_dataframe(study[columns].astype({"series_uid": str}), self.scene, "", node)

    def studyFromTableNode(self, tableNode):
        """The (possibly edited) study table as pandas, validated."""
        from ImagInfoExtension.bridge.tables import dataframe_from_table_node
        from ImagInfoExtension.study.table import DOSE_FACTORS, validate_study

        if tableNode is None or tableNode.GetNumberOfRows() == 0:
            raise ValueError("the study table is empty: group a manifest or DICOM folder, or add the scene's volumes")
        return validate_study(dataframe_from_table_node(tableNode), DOSE_FACTORS, "the study table")

    def studyTableFromVolumes(self, volumeNodes, outputFolder, tableNode=None):
        """Rows for scene volumes, each saved as ``outputFolder/inputs/<name>_<node ID>.nrrd``.

        A file is rewritten only when the volume's voxels or geometry changed, so that
        finished series stay cached. Dose, reconstruction and repetition are left for the
        user to fill in.
        """
        import re

        import pandas as pd

        from ImagInfoExtension.bridge.tables import dataframe_from_table_node
        from ImagInfoExtension.io import write_if_changed

        rows = []
        for node in volumeNodes:
            safe = re.sub(r"[^A-Za-z0-9._-]+", "_", node.GetName()).strip("._") or "volume"
            path = Path(outputFolder) / "inputs" / f"{safe}_{node.GetID()}.nrrd"
            write_if_changed(path, lambda p, node=node: self.writeVolume(node, p))
            rows.append({"path": str(path), "dose_mgy": float("nan"), "recon": "", "repetition": 1, "series_uid": ""})
        frame = pd.DataFrame(rows, columns=STUDY_TABLE_COLUMNS)
        if tableNode is not None and tableNode.GetNumberOfRows():
            frame = pd.concat([dataframe_from_table_node(tableNode), frame], ignore_index=True)
        return self.studyTableNode(frame, tableNode)

    # The job ------------------------------------------------------------------------

    def inputsFromParameterNode(self, parameterNode):
        """Keyword arguments of :meth:`compare` from the module's parameter node."""
        folder = requiredPath(parameterNode.outputFolder, "choose an output folder")
        study = self.studyFromTableNode(parameterNode.studyTable)
        return {
            "study": study,
            "outputFolder": folder,
            "truth": optionalPath(parameterNode.truthFile),
            "noiseRoi": self.noiseRoiFile(study, folder, parameterNode.noiseRoiSegmentation, parameterNode.noiseRoiBox),
            "workers": parameterNode.workers or None,
            "scheduler": parameterNode.schedulerAddress or None,
            "radius_mm": parameterNode.radiusMm,
            "test": parameterNode.statisticalTest,
            "reference_recon": parameterNode.referenceRecon or "FBP",
        }

    def noiseRoiFile(self, study, outputFolder, segmentationNode=None, roiNode=None):
        """The user's uniform region as ``outputFolder/noise_roi.nrrd`` (None when neither node is given).

        A segmentation's segments, or the inside of a markups ROI (any orientation), are
        rasterised on the first series' grid; ``imaginfo compare --noise-roi`` resamples
        the mask onto each series.
        """
        if segmentationNode is None and roiNode is None:
            return None
        import numpy as np

        from ImagInfoExtension.geometry import ImageGrid
        from ImagInfoExtension.io import read_dicom_series, read_image, write_if_changed, write_image

        first = study.iloc[0]
        path = Path(first["path"])
        uid = first["series_uid"] or None
        reference = read_dicom_series(path, uid) if path.is_dir() else read_image(path)
        grid = ImageGrid.from_sitk(reference)
        if segmentationNode is not None:
            import SimpleITK as sitk

            from ImagInfoExtension.bridge.segmentations import label_map_from_segmentation_node

            labels = label_map_from_segmentation_node(segmentationNode, reference).image
            mask = sitk.GetArrayFromImage(labels) > 0
            what = _("the noise ROI segmentation {name}").format(name=segmentationNode.GetName())
        else:
            from ImagInfoExtension.bridge.markups import mask_from_roi_node

            mask = mask_from_roi_node(roiNode, grid)
            what = _("the noise ROI box {name}").format(name=roiNode.GetName())
        if not mask.any():
            raise ValueError(
                _("{what} covers no voxel of the first series; place it on a uniform region of the scans").format(
                    what=what
                )
            )
        target = Path(outputFolder) / "noise_roi.nrrd"
        target.parent.mkdir(parents=True, exist_ok=True)
        # Rewritten only when the region changed: the file's identity keys every series' cache.
        write_if_changed(target, lambda p: write_image(grid.to_sitk(mask.astype(np.uint8)), p))
        return target

    def startComparison(
        self, study, outputFolder, truth=None, workers=None, scheduler=None, noiseRoi=None, **parameters
    ):
        """Write the study table and start ``imaginfo compare``; returns the running job (see :meth:`compare`)."""
        import json
        from dataclasses import asdict

        from ImagInfoExtension.dose.compare import EXIT_SOME_SERIES_FAILED
        from ImagInfoExtension.dose.results import ComparisonParameters, read_comparison
        from ImagInfoExtension.io import write_atomically

        if hasattr(study, "IsA"):
            study = self.studyFromTableNode(study)
        settings = ComparisonParameters(**parameters)
        out = Path(outputFolder).resolve()
        out.mkdir(parents=True, exist_ok=True)
        manifest, settingsFile = out / "study.csv", out / "parameters.json"
        write_atomically(manifest, lambda p: study.to_csv(p, index=False))
        write_atomically(settingsFile, lambda p: p.write_text(json.dumps(asdict(settings), indent=1)))
        arguments = ["--manifest", str(manifest), "--out", str(out), "--parameters", str(settingsFile)]
        if truth:
            arguments += ["--truth", str(Path(truth).resolve())]
        if noiseRoi:
            arguments += ["--noise-roi", str(Path(noiseRoi).resolve())]
        if workers is not None:
            arguments += ["--workers", str(int(workers))]
        if scheduler:
            arguments += ["--scheduler", scheduler]
        return self.startChildJob(
            "compare",
            arguments,
            readResult=lambda: read_comparison(out),
            outputDir=out,
            successCodes=(0, EXIT_SOME_SERIES_FAILED),
        )

    def compare(
        self, study, outputFolder, truth=None, workers=None, scheduler=None, noiseRoi=None, wait=True, **parameters
    ):
        """Run the comparison as a child process.

        Parameters
        ----------
        study : pandas.DataFrame or vtkMRMLTableNode
            ``path,dose_mgy,recon,repetition[,series_uid]``; see :meth:`readStudy`.
        outputFolder : str or Path
            Gets report.html, results_long.csv, iq_metrics.csv, table_*.csv, tables.xlsx,
            plots, the study and parameters it ran with, and the per-series cache (a
            re-run, or a run after Cancel, skips finished series).
        truth : str or Path, optional
            The phantom design (truth.json).
        noiseRoi : str or Path, optional
            A label map or mask of a uniform region for noise SD and NPS (see
            :meth:`noiseRoiFile` for a segmentation or markups ROI); found automatically by default.
        workers : int, optional
            Local worker processes (default one per core; 0: one series after the other).
        scheduler : str, optional
            Address of a running Dask scheduler.
        wait : bool
            True: block (the GUI repaints) and return the result; False: return the job.
        **parameters
            Fields of ``ImagInfoExtension.dose.results.ComparisonParameters``
            (``radius_mm``, ``test``, ``reference_recon``, ``reference_dose_mgy``, ...).

        Returns
        -------
        ImagInfoExtension.dose.results.ComparisonResult
        """
        job = self.startComparison(study, outputFolder, truth, workers, scheduler, noiseRoi, **parameters)
        return self.runJob(job, wait)

    def startJob(self, parameterNode):
        return self.startComparison(**self.inputsFromParameterNode(parameterNode))

    def finishJob(self, job, parameterNode):
        result = job.result()
        nodes = self.createOutputNodes(result)
        self.showTableAndPlot(nodes["tables"].get("iqr_hu"), next(iter(nodes["charts"].values()), None))
        status = _("{ok} series measured, {failed} failed. Report: {report}").format(
            ok=len(result.batch.succeeded), failed=len(result.failures), report=result.files["report"]
        )
        if not result.warnings.empty:
            status += " " + _("Not measured: {metrics} (reasons in warnings.csv and the report).").format(
                metrics=", ".join(sorted(result.warnings["metric"].unique()))
            )
        return status

    # Outputs ------------------------------------------------------------------------

    def createOutputNodes(self, result):
        """Table nodes (published-style tables, IQ metrics, statistics) and chart nodes (metric against dose).

        A re-run updates the same nodes; a failure removes what it added.
        """
        from ImagInfoExtension.bridge.tables import chart_node_from_table, table_node_from_dataframe
        from ImagInfoExtension.dose.analysis import rows_at_radius
        from ImagInfoExtension.metrics import metric

        scene = self.scene
        nodes = {"tables": {}, "charts": {}}
        radius = result.parameters.radius_mm
        frames = {f"Dose table {metric}": (metric, table.reset_index()) for metric, table in result.tables.items()}
        for name, frame in (("iq_metrics", result.iq), ("warnings", result.warnings), *result.statistics.items()):
            if name != "warnings" or not frame.empty:
                frames[f"Dose {name}"] = (name, frame)
        with self.outputNodes() as outputs:
            for title, (key, frame) in frames.items():
                node = outputs.node(f"table:{key}", "vtkMRMLTableNode", title)
                nodes["tables"][key] = table_node_from_dataframe(frame, scene, title, node)
            for key in CHARTED_METRICS:
                entry = metric(key)
                rows = rows_at_radius(result.summary, key, radius if entry.per_class else None)
                if rows.empty:
                    continue
                wide = rows.pivot(index="dose_mgy", columns="recon", values="mean").reset_index()
                data = outputs.node(f"chart data:{key}", "vtkMRMLTableNode", f"Dose chart data {key}")
                table_node_from_dataframe(wide, scene, "", data)
                title = f"{entry.title}, r = {radius:g} mm" if entry.per_class else entry.title
                chart = outputs.node(f"chart:{key}", "vtkMRMLPlotChartNode", title)
                nodes["charts"][key] = chart_node_from_table(
                    data,
                    scene,
                    "dose_mgy",
                    [c for c in wide.columns if c != "dose_mgy"],
                    title,
                    "CTDIvol (mGy)",
                    entry.label,
                    log_x=True,
                    node=chart,
                )
        return nodes


#
# ImagInfoDoseComparisonTest
#


class ImagInfoDoseComparisonTest(ImagInfoModuleTest):
    """Runs inside Slicer (Reload and Test) and under pytest with the slicer-core harness."""

    def test_compare_virtual_study(self):
        import tempfile

        from ImagInfoExtension.phantom.study import StudyRequest, generate_study

        self.delayDisplay("Scanning the phantom at two doses with two reconstructions")
        folder = Path(tempfile.mkdtemp(prefix="imaginfo-dose-test-"))
        request = StudyRequest(doses_mgy=(0.5, 4.0), recons=("FBP", "IR"), repetitions=1, size="small")
        generate_study(request, folder / "study")
        logic = ImagInfoDoseComparisonLogic()
        study, _unmatched = logic.readStudy(manifest=folder / "study" / "manifest.csv")
        tableNode = logic.studyTableNode(study)
        assert tableNode.GetNumberOfRows() == 4
        self.delayDisplay("Comparing")
        result = logic.compare(tableNode, folder / "out", truth=folder / "study" / "truth.json")
        assert result.failures.empty and len(result.batch.succeeded) == 4
        iqr = result.summary[(result.summary["metric"] == "iqr_hu") & (result.summary["radius_mm"] == 3.0)]
        means = iqr.set_index(["recon", "dose_mgy"])["mean"]
        assert means[("FBP", 0.5)] > means[("FBP", 4.0)] and means[("IR", 4.0)] < means[("FBP", 4.0)]
        assert (folder / "out" / "report.html").exists()
        nodes = logic.createOutputNodes(result)
        assert nodes["tables"]["iqr_hu"].GetNumberOfRows() == 2
        assert nodes["charts"]["noise_sd_hu"].GetNumberOfPlotSeriesNodes() == 2
        count = self.scene.GetNumberOfNodes()
        again = logic.createOutputNodes(result)
        assert again["tables"]["iqr_hu"] is nodes["tables"]["iqr_hu"] and self.scene.GetNumberOfNodes() == count
        self.delayDisplay("Test passed")
