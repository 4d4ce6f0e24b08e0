"""ImagInfo dose comparison: CT dose levels and reconstructions across repeated scans.

All computation lives in ``ImagInfoExtension.dose`` and ``ImagInfoExtension.batch``;
MRML conversion lives in ``ImagInfoExtension.bridge``. This file holds the module
description, the typed parameter node, a thin widget, the logic (callable from the
Python console) and the self-test.
"""

from pathlib import Path
from typing import Annotated

import slicer
from slicer import vtkMRMLTableNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import *

#: Columns of the editable study table.
STUDY_TABLE_COLUMNS = ["path", "dose_mgy", "recon", "repetition", "series_uid"]

#: Metrics charted against dose (metric, per radius).
CHARTED_METRICS = (
    ("iqr_hu", True),
    ("mpv_hu", True),
    ("total_volume_ml", False),
    ("noise_sd_hu", False),
    ("ttf50_per_mm", False),
    ("dprime_npwe", False),
)


#
# ImagInfoDoseComparison
#


class ImagInfoDoseComparison(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("ImagInfo Dose Comparison")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Quantification")]
        self.parent.dependencies = []
        self.parent.contributors = ["ImagInfo developers"]
        self.parent.helpText = _(
            "Compares CT dose levels (CTDIvol) and reconstructions (FBP, iterative, deep learning) across repeated "
            "scans of the vessel phantom: vessel quantification per radius and AAPM TG-233 image quality (noise, "
            "NPS, TTF, CNR, d') of every series, mean ± SD over repetitions, tests between reconstructions, and a "
            "report with tables and plots. From the Python console: "
            "<code>slicer.util.getModuleLogic('ImagInfoDoseComparison').compare(study, outputFolder=...)</code>."
        )
        self.parent.acknowledgementText = _("ImagInfo, a 3D Slicer extension for quantitative imaging research.")


#
# ImagInfoDoseComparisonParameterNode
#


@parameterNodeWrapper
class ImagInfoDoseComparisonParameterNode:
    """The module's inputs and settings.

    manifestFile, dicomFolder - where the study's series come from.
    studyTable - one row per series (path, dose_mgy, recon, repetition, series_uid), editable.
    truthFile - optional phantom design.
    radiusMm, statisticalTest, referenceRecon - what is tabulated and tested.
    workers, schedulerAddress - where the series are measured.
    outputFolder - report, tables, plots and the per-series cache.
    """

    manifestFile: str = ""
    dicomFolder: str = ""
    studyTable: vtkMRMLTableNode
    truthFile: str = ""
    radiusMm: Annotated[float, WithinRange(0.1, 20.0)] = 3.0
    statisticalTest: Annotated[str, Choice(["welch", "kruskal"])] = "welch"
    referenceRecon: str = "FBP"
    workers: Annotated[int, WithinRange(0, 64)] = 0
    schedulerAddress: str = ""
    outputFolder: str = ""


#
# ImagInfoDoseComparisonWidget
#


class ImagInfoDoseComparisonWidget(ScriptedLoadableModuleWidget):
    """Thin GUI: builds the study table, starts the logic's background job, shows progress."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job = None
        self._timer = None

    def setup(self) -> None:
        import qt

        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/ImagInfoDoseComparison.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = ImagInfoDoseComparisonLogic()
        self.ui.testComboBox.addItems(["welch", "kruskal"])
        self._timer = qt.QTimer()
        self._timer.setInterval(300)
        self._timer.connect("timeout()", self._poll)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.loadStudyButton.connect("clicked(bool)", self.onLoadStudy)
        self.ui.addSceneVolumesButton.connect("clicked(bool)", self.onAddSceneVolumes)
        self.ui.studyTableSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.ui.studyTableView.setMRMLTableNode)
        self.ui.progressBar.setVisible(False)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        if self._job is not None:
            self._job.cancel()
        if self._parameterNode and self._parameterNodeGuiTag:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)

    def enter(self) -> None:
        self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        parameterNode = self.logic.getParameterNode()
        if self._parameterNode and self._parameterNodeGuiTag:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
        self._parameterNode = parameterNode
        self._parameterNodeGuiTag = parameterNode.connectGui(self.ui)

    def onLoadStudy(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Could not group the series."), waitCursor=True):
            table, unmatched = self.logic.studyFromParameterNode(self._parameterNode)
            self._parameterNode.studyTable = table
            self.ui.statusLabel.text = _("{count} series grouped; {left} left out").format(
                count=table.GetNumberOfRows(), left=len(unmatched)
            )
            if len(unmatched):
                slicer.util.infoDisplay(
                    _("Series left out (no rule or no CTDIvol):") + "\n" + unmatched.to_string(index=False)
                )

    def onAddSceneVolumes(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Could not add the scene's volumes."), waitCursor=True):
            folder = self.logic.outputFolderOf(self._parameterNode)
            self._parameterNode.studyTable = self.logic.studyTableFromVolumes(
                slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode"), folder, self._parameterNode.studyTable
            )

    def onApplyButton(self) -> None:
        if self._job is not None:
            self._job.cancel()
            self.ui.statusLabel.text = _("Cancelling after the series now running...")
            return
        with slicer.util.tryWithErrorDisplay(_("Cannot start the comparison."), waitCursor=True):
            if not self.logic.ensureRequirements():
                return
            self._job = self.logic.startComparison(**self.logic.inputsFromParameterNode(self._parameterNode))
            self.ui.applyButton.text = _("Cancel")
            self.ui.progressBar.setVisible(True)
            self.ui.progressBar.value = 0
            self._timer.start()

    def _poll(self) -> None:
        job = self._job
        done, total, message = job.progress
        self.ui.progressBar.value = int(100 * done / max(total, 1))
        self.ui.statusLabel.text = message
        if job.is_alive():
            return
        self._timer.stop()
        self._job = None
        self.ui.applyButton.text = _("Apply")
        self.ui.progressBar.setVisible(False)
        if job.cancelled:
            self.ui.statusLabel.text = _("Cancelled; finished series are kept and a new run goes on from them.")
            return
        if job.error is not None:
            self.ui.statusLabel.text = _("Failed.")
            slicer.util.errorDisplay(str(job.error))
            return
        with slicer.util.tryWithErrorDisplay(_("Could not create the output nodes."), waitCursor=True):
            nodes = self.logic.createOutputNodes(job.result)
            self.logic.showResults(nodes)
            result = job.result
            self.ui.statusLabel.text = _("{ok} series measured, {failed} failed. Report: {report}").format(
                ok=len(result.batch.succeeded), failed=len(result.failures), report=result.files["report"]
            )


#
# ImagInfoDoseComparisonLogic
#


class ImagInfoDoseComparisonLogic(ScriptedLoadableModuleLogic):
    """Dose and reconstruction comparison on files, the DICOM database or the scene.

    Example, from Slicer's Python console::

        logic = slicer.util.getModuleLogic("ImagInfoDoseComparison")
        study = logic.readStudy(manifest="/data/study/manifest.csv")
        result = logic.compare(study, outputFolder="/data/comparison", truth="/data/study/truth.json")
        print(result.tables["iqr_hu"])
        logic.createOutputNodes(result)
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return ImagInfoDoseComparisonParameterNode(super().getParameterNode())

    def ensureRequirements(self) -> bool:
        """Install missing Python packages (dask, openpyxl, ...) on first use."""
        from ImagInfoExtension import bridge

        return bridge.ensure_python_requirements(requester="ImagInfo Dose Comparison")

    # Study --------------------------------------------------------------------------

    def readStudy(self, manifest=None, dicomFolder=None, rules=None):
        """A study table (pandas) from a manifest CSV or a DICOM folder; also the series left out."""
        import pandas as pd

        from ImagInfoExtension.dose.study import DEFAULT_RULES, read_manifest, study_from_dicom

        if manifest:
            return read_manifest(manifest), pd.DataFrame()
        if dicomFolder:
            return study_from_dicom(dicomFolder, rules or DEFAULT_RULES)
        raise ValueError("give a manifest CSV or a DICOM folder, or add volumes from the scene")

    def studyFromDicomDatabase(self, seriesUIDs, rules=None):
        """A study from series of Slicer's DICOM database, grouped from their tags."""
        import pandas as pd

        from ImagInfoExtension.dose.study import (
            DEFAULT_RULES,
            classify_reconstruction,
            number_repetitions,
            validate_study,
        )

        database = slicer.dicomDatabase
        tags = {
            "dose": "0018,9345",
            "convolution_kernel": "0018,1210",
            "manufacturer": "0008,0070",
            "series_description": "0008,103e",
            "series_number": "0020,0011",
            "time": "0008,0032",
        }
        rows, unmatched = [], []
        for uid in seriesUIDs:
            files = database.filesForSeries(uid)
            if not files:
                continue
            value = {key: database.fileValue(files[0], tag) for key, tag in tags.items()}
            attributes = {k: value[k] for k in ("convolution_kernel", "manufacturer", "series_description")}
            recon = classify_reconstruction(attributes, rules or DEFAULT_RULES)
            row = {"path": str(Path(files[0]).parent), "series_uid": uid, **attributes}
            if not value["dose"] or recon is None:
                unmatched.append({**row, "reason": "no CTDIvol" if not value["dose"] else "no rule matched"})
                continue
            rows.append({**row, "dose_mgy": float(value["dose"]), "recon": recon, "time": value["time"]})
        if not rows:
            raise ValueError("none of the selected series has a CTDIvol and a recognised reconstruction")
        return validate_study(number_repetitions(pd.DataFrame(rows), ("time",))), pd.DataFrame(unmatched)

    def studyTableNode(self, study, tableNode=None):
        """Show a study in an editable table node (created when not given)."""
        from ImagInfoExtension import bridge

        return bridge.table_node_from_dataframe(
            study[STUDY_TABLE_COLUMNS].astype({"series_uid": str}), slicer.mrmlScene, "Dose study", tableNode
        )

    def studyFromTableNode(self, tableNode):
        """The (possibly edited) study table as pandas, validated."""
        from ImagInfoExtension import bridge
        from ImagInfoExtension.dose.study import validate_study

        if tableNode is None or tableNode.GetNumberOfRows() == 0:
            raise ValueError("the study table is empty: group a manifest or DICOM folder, or add the scene's volumes")
        frame = bridge.dataframe_from_table_node(tableNode)
        missing = [c for c in ("path", "dose_mgy", "recon", "repetition") if c not in frame.columns]
        if missing:
            raise ValueError(f"the study table lacks the column(s) {', '.join(missing)}")
        if "series_uid" not in frame.columns:
            frame["series_uid"] = ""
        return validate_study(frame)

    def studyFromParameterNode(self, parameterNode):
        study, unmatched = self.readStudy(parameterNode.manifestFile or None, parameterNode.dicomFolder or None)
        return self.studyTableNode(study, parameterNode.studyTable), unmatched

    def outputFolderOf(self, parameterNode) -> Path:
        if not parameterNode.outputFolder:
            raise ValueError("choose an output folder")
        return Path(parameterNode.outputFolder)

    def studyTableFromVolumes(self, volumeNodes, outputFolder, tableNode=None):
        """Rows for scene volumes: each is saved once as NRRD under ``outputFolder/inputs``.

        Dose, reconstruction and repetition come from the volume's DICOM series when it
        has one in the database; otherwise they are left for the user to fill in.
        """
        import pandas as pd

        from ImagInfoExtension import bridge
        from ImagInfoExtension.io import write_atomically, write_image

        rows = []
        for node in volumeNodes:
            path = Path(outputFolder) / "inputs" / f"{node.GetName()}.nrrd"
            if not path.exists():
                image = bridge.sitk_from_volume_node(node)
                write_atomically(path, lambda p, image=image: write_image(image, p))
            rows.append({"path": str(path), "dose_mgy": float("nan"), "recon": "", "repetition": 1, "series_uid": ""})
        frame = pd.DataFrame(rows, columns=STUDY_TABLE_COLUMNS)
        if tableNode is not None and tableNode.GetNumberOfRows():
            frame = pd.concat([bridge.dataframe_from_table_node(tableNode), frame], ignore_index=True)
        return bridge.table_node_from_dataframe(frame, slicer.mrmlScene, "Dose study", tableNode)

    def inputsFromParameterNode(self, parameterNode) -> dict:
        """Keyword arguments of :meth:`compare` from the module's parameter node."""
        return {
            "study": self.studyFromTableNode(parameterNode.studyTable),
            "outputFolder": str(self.outputFolderOf(parameterNode)),
            "truth": parameterNode.truthFile or None,
            "workers": parameterNode.workers,
            "scheduler": parameterNode.schedulerAddress or None,
            "radius_mm": parameterNode.radiusMm,
            "test": parameterNode.statisticalTest,
            "reference_recon": parameterNode.referenceRecon or "FBP",
        }

    # Computation --------------------------------------------------------------------

    def compare(
        self, study, outputFolder, truth=None, workers=0, scheduler=None, progress=None, cancel=None, **parameters
    ):
        """Run the comparison in the calling thread.

        Parameters
        ----------
        study : pandas.DataFrame or vtkMRMLTableNode
            ``path,dose_mgy,recon,repetition[,series_uid]``; see :meth:`readStudy`.
        outputFolder : str
            Gets report.html, results_long.csv, iq_metrics.csv, table_*.csv, tables.xlsx,
            plots and the per-series cache (a re-run skips finished series).
        truth : str, optional
            The phantom design (truth.json).
        workers : int
            0 measures the series one after the other in Slicer's process; n > 0 starts
            a local Dask cluster with n worker processes.
        scheduler : str, optional
            Address of a running Dask scheduler.
        progress : callable, optional
            ``progress(done, total, message)``.
        cancel : threading.Event, optional
        **parameters
            Fields of ``ImagInfoExtension.dose.measure.ComparisonParameters``
            (``radius_mm``, ``test``, ``reference_recon``, ``reference_dose_mgy``, ...).

        Returns
        -------
        ImagInfoExtension.dose.compare.ComparisonResult
        """
        from ImagInfoExtension.dose.compare import compare_study
        from ImagInfoExtension.dose.measure import ComparisonParameters

        if hasattr(study, "IsA"):
            study = self.studyFromTableNode(study)
        return compare_study(
            study,
            outputFolder,
            ComparisonParameters(**parameters),
            truth,
            workers=workers,
            scheduler=scheduler,
            progress=progress,
            cancel=cancel,
        )

    def startComparison(self, study, outputFolder, truth=None, workers=0, scheduler=None, **parameters):
        """Start :meth:`compare` on a worker thread; returns an ``ImagInfoExtension.batch.BackgroundJob``."""
        from ImagInfoExtension.batch import BackgroundJob

        if hasattr(study, "IsA"):
            study = self.studyFromTableNode(study)

        def run(progress, cancel):
            return self.compare(study, outputFolder, truth, workers, scheduler, progress, cancel, **parameters)

        return BackgroundJob(run)

    # Outputs ------------------------------------------------------------------------

    def createOutputNodes(self, result) -> dict:
        """Table nodes (published-style tables, IQ metrics, statistics) and chart nodes (metric against dose).

        Everything is built first and removed again on failure, so no half-made nodes remain.
        """
        from ImagInfoExtension import bridge
        from ImagInfoExtension.dose.analysis import rows_at_radius

        scene = slicer.mrmlScene
        created = []
        nodes = {"tables": {}, "charts": {}}
        radius = result.parameters.radius_mm
        try:
            for metric, table in result.tables.items():
                node = bridge.table_node_from_dataframe(table.reset_index(), scene, f"Dose table {metric}")
                created.append(node)
                nodes["tables"][metric] = node
            for name, frame in (("iq_metrics", result.iq), *result.statistics.items()):
                node = bridge.table_node_from_dataframe(frame, scene, f"Dose {name}")
                created.append(node)
                nodes["tables"][name] = node
            summary = result.summary
            for metric, perRadius in CHARTED_METRICS:
                rows = rows_at_radius(summary, metric, radius if perRadius else None)
                if rows.empty:
                    continue
                wide = rows.pivot(index="dose_mgy", columns="recon", values="mean").reset_index()
                tableNode = bridge.table_node_from_dataframe(wide, scene, f"Dose chart data {metric}")
                created.append(tableNode)
                chart = bridge.chart_node_from_table(
                    tableNode,
                    scene,
                    "dose_mgy",
                    [c for c in wide.columns if c != "dose_mgy"],
                    metric,
                    "CTDIvol (mGy)",
                    metric,
                )
                chart.SetXAxisLogScale(True)
                created.append(chart)
                nodes["charts"][metric] = chart
        except Exception:
            for node in created:
                scene.RemoveNode(node)
            raise
        return nodes

    def showResults(self, nodes: dict) -> None:
        """The IQR chart and table in the plot and table views (GUI only)."""
        layoutManager = slicer.app.layoutManager()
        layoutManager.setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpPlotTableView)
        selection = slicer.app.applicationLogic().GetSelectionNode()
        first = next(iter(nodes["charts"].values()), None)
        if first is not None:
            selection.SetActivePlotChartID(first.GetID())
            slicer.app.applicationLogic().PropagatePlotChartSelection()
        table = nodes["tables"].get("iqr_hu")
        if table is not None:
            selection.SetActiveTableID(table.GetID())
            slicer.app.applicationLogic().PropagateTableSelection()


#
# ImagInfoDoseComparisonTest
#


class ImagInfoDoseComparisonTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer (Reload and Test) and under pytest with the slicer-core harness."""

    def setUp(self):
        slicer.mrmlScene.Clear(0)

    def runTest(self):
        self.setUp()
        self.test_compare_virtual_study()

    def test_compare_virtual_study(self):
        import tempfile

        from ImagInfoExtension.phantom.study import StudyRequest, generate_study

        self.delayDisplay("Scanning the phantom at two doses, two reconstructions, two repetitions")
        folder = Path(tempfile.mkdtemp(prefix="imaginfo-dose-test-"))
        request = StudyRequest(doses_mgy=(0.5, 4.0), recons=("FBP", "IR"), repetitions=2, size="small")
        generate_study(request, folder / "study")
        logic = ImagInfoDoseComparisonLogic()
        study, _unmatched = logic.readStudy(manifest=folder / "study" / "manifest.csv")
        tableNode = logic.studyTableNode(study)
        assert tableNode.GetNumberOfRows() == 8
        self.delayDisplay("Comparing")
        result = logic.compare(tableNode, str(folder / "out"), truth=str(folder / "study" / "truth.json"))
        assert result.failures.empty and len(result.batch.succeeded) == 8
        iqr = result.summary[(result.summary["metric"] == "iqr_hu") & (result.summary["radius_mm"] == 3.0)]
        means = iqr.set_index(["recon", "dose_mgy"])["mean"]
        assert means[("FBP", 0.5)] > means[("FBP", 4.0)] and means[("IR", 4.0)] < means[("FBP", 4.0)]
        assert (folder / "out" / "report.html").exists()
        nodes = logic.createOutputNodes(result)
        assert nodes["tables"]["iqr_hu"].GetNumberOfRows() == 2
        assert nodes["charts"]["noise_sd_hu"].GetNumberOfPlotSeriesNodes() == 2
        self.delayDisplay("Test passed")
