"""What every ImagInfo scripted module shares: base classes for its module, widget, logic and test.

A module file (``Modules/Scripted/<Name>/<Name>.py``) keeps Slicer's template layout
and only what is its own: its title and help, its parameter node, the rules that
enable Apply, how its inputs become an ``imaginfo`` command, and how the command's
outputs become nodes. Everything else lives here:

- :class:`ImagInfoModule`: category, contributors, acknowledgement; on a Slicer older
  than 5.10 the help says so (see :mod:`~ImagInfoExtension.bridge.compat`).
- :class:`ImagInfoModuleWidget` (the widget mixin of the template's behaviour): loads
  the ``.ui``, connects the parameter node (``connectGui`` on enter, ``disconnectGui``
  on exit), observes the scene's StartClose/EndClose, enables Apply only when the
  logic finds the inputs valid (the reason shows as the button's tooltip), runs the
  job as a child process with progress, Cancel and a status line, and builds the
  outputs when it succeeds. No Python thread is involved: a QTimer polls the child.
- :class:`ImagInfoModuleLogic` (the logic mixin): typed parameter node, the module's
  Python requirements (installed on first use), the child-process runner (blocking
  for the console, or a handle), and output nodes that a re-run reuses and a failed
  run rolls back.
- :class:`ImagInfoModuleTest`: runs every ``test_*`` method on a clean scene.

Helpers for what several modules read from their panels: :func:`optionalPath`,
:func:`requiredPath` and :func:`parseMillimetres`.

It also re-exports what module files need from Slicer (the parameter-node wrapper
and validators, the MRML node classes of parameters, translation), so that only the
bridge imports ``slicer``, ``qt`` or ``vtk``.

This file keeps to Python 3.9 syntax and imports nothing from ImagInfo's core at
import time: Slicer 5.8 (Python 3.9) must be able to load a module and show why it
cannot run, and a fresh Slicer must be able to load it before pandas & co. exist.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import slicer
import vtk
from slicer import (
    vtkMRMLMarkupsROINode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLSegmentationNode,
    vtkMRMLTableNode,
)
from slicer.i18n import tr, translate
from slicer.parameterNodeWrapper import Choice, Default, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from ImagInfoExtension.bridge import compat

__all__ = [
    "Choice",
    "Default",
    "ImagInfoModule",
    "ImagInfoModuleLogic",
    "ImagInfoModuleTest",
    "ImagInfoModuleWidget",
    "WithinRange",
    "optionalPath",
    "parameterNodeWrapper",
    "parseMillimetres",
    "requiredPath",
    "tr",
    "translate",
    "vtkMRMLMarkupsROINode",
    "vtkMRMLScalarVolumeNode",
    "vtkMRMLSegmentationNode",
    "vtkMRMLTableNode",
]

_ = tr
logger = logging.getLogger(__name__)


def optionalPath(path: Any) -> Path | None:
    """A ``pathlib.Path`` parameter as an optional path: an empty path widget reads back as ``Path('.')``."""
    if path is None or str(path).strip() in ("", "."):
        return None
    return Path(path)


def requiredPath(path: Any, message: str) -> Path:
    """A ``pathlib.Path`` parameter that a run needs: ``ValueError(message)`` when the widget is empty."""
    chosen = optionalPath(path)
    if chosen is None:
        raise ValueError(message)
    return chosen


def parseMillimetres(text: str | None, what: str, example: str) -> list[float]:
    """``"0.5, 1 2"`` → ``[0.5, 1.0, 2.0]``: positive lengths in mm typed into a text field; empty → ``[]``.

    Commas, spaces and semicolons separate the numbers. The ``ValueError`` names the
    field (``what``) and shows a valid ``example``, so that it can be the Apply tooltip.
    """
    parts = [p for p in re.split(r"[,\s;]+", text or "") if p]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise ValueError(f"{what} {text!r} must be numbers in mm separated by commas, e.g. {example}") from None
    if values and min(values) <= 0:
        raise ValueError(f"{what} must be positive millimetres, e.g. {example}")
    return values


def processEvents() -> None:
    """Let the GUI repaint while the console waits for a job (nothing when headless)."""
    app = compat.application()
    if app is not None:
        app.processEvents()


#
# Module
#


class ImagInfoModule(ScriptedLoadableModule):
    """The module description every ImagInfo module shares."""

    def __init__(self, parent: Any) -> None:
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Quantification")]
        self.parent.dependencies = []
        self.parent.contributors = ["ImagInfo developers"]
        self.parent.acknowledgementText = _("ImagInfo, a 3D Slicer extension for quantitative imaging research.")

    def describe(self, title: str, helpText: str) -> None:
        """Set the title and help; on an unsupported Slicer the help starts with why and what to do."""
        self.parent.title = title
        reason = compat.unsupported_reason()
        self.parent.helpText = (f"<p><b>{reason}</b></p>" if reason else "") + helpText

    def registerSampleDataOnStartup(self, register: Callable[[], None]) -> None:
        """Register sample data once Slicer has started (registration is cheap; data is made on demand)."""
        app = compat.application()
        if app is not None and compat.unsupported_reason() is None:
            app.connect("startupCompleted()", register)


#
# Widget
#


class ImagInfoModuleWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Slicer's scripted-module widget template, plus running the module's job as a child process.

    The logic is the module's ``<Module>Logic`` class; a module's widget overrides
    :meth:`setupModule` for buttons of its own (see :meth:`connectAction` and
    :meth:`connectJob`). Its ``.ui`` has ``applyButton``, ``progressBar`` and
    ``statusLabel``.
    """

    #: Milliseconds between two reads of the child's progress.
    pollIntervalMs = 250

    def __init__(self, parent: Any = None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic: Any = None
        self.ui: Any = None
        self.unsupportedLabel: Any = None
        self._parameterNode: Any = None
        self._parameterNodeGuiTag: Any = None
        self._job: Any = None
        self._onJobSucceeded: Callable[[Any], str] | None = None
        self._cancelledText = ""
        self._timer: Any = None

    # What a module provides -------------------------------------------------------------

    def createLogic(self) -> ImagInfoModuleLogic:
        """A new ``<Module>Logic`` from the widget's own module file, the name Slicer's template gives it."""
        logicClass = getattr(sys.modules.get(type(self).__module__), f"{self.moduleName}Logic", None)
        if logicClass is None:
            raise NotImplementedError(
                f"{type(self).__name__} must create its logic: no {self.moduleName}Logic beside it"
            )
        return logicClass()

    def setupModule(self) -> None:
        """Connect the module's own widgets (beyond Apply); the parameter node binds the rest."""

    # Template behaviour ---------------------------------------------------------------

    def setup(self) -> None:
        import qt  # only a widget needs Qt; logic and tests run without it

        ScriptedLoadableModuleWidget.setup(self)
        reason = compat.unsupported_reason()
        if reason:
            self.unsupportedLabel = qt.QLabel(reason)
            self.unsupportedLabel.wordWrap = True
            self.layout.addWidget(self.unsupportedLabel)
            self.layout.addStretch(1)
            return
        uiWidget = slicer.util.loadUI(self.resourcePath(f"UI/{self.moduleName}.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = self.createLogic()
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self._timer = qt.QTimer()
        self._timer.setInterval(self.pollIntervalMs)
        self._timer.connect("timeout()", self.pollJob)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.progressBar.visible = False
        self.setupModule()
        self.initializeParameterNode()

    def cleanup(self) -> None:
        if self._job is not None:
            self._job.close()
            self._job = None
        if self._timer is not None:
            self._timer.stop()
        self.removeObservers()
        self.setParameterNode(None)

    def enter(self) -> None:
        if self.logic is not None:
            self.initializeParameterNode()

    def exit(self) -> None:
        self._disconnectParameterNode()

    def _disconnectParameterNode(self) -> None:
        if self._parameterNode is None:
            return
        if self._parameterNodeGuiTag is not None:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
        if self.hasObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply):
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)

    def onSceneStartClose(self, caller: Any, event: Any) -> None:
        if self._job is not None:
            # The job's inputs are leaving with the scene; its outputs would have no home.
            self._job.cancel()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller: Any, event: Any) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        self.logic.setDefaultParameters(self._parameterNode)

    def setParameterNode(self, inputParameterNode: Any) -> None:
        self._disconnectParameterNode()
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # Widgets with a "SlicerParameterName" property in the .ui follow the parameter node.
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self._checkCanApply()

    def _checkCanApply(self, caller: Any = None, event: Any = None) -> None:
        if self.ui is None:
            return
        if self._job is not None:
            self.ui.applyButton.enabled = True
            self.ui.applyButton.toolTip = _("Stop the run; finished work that can be resumed is kept.")
            return
        reason = self.logic.applyBlocker(self._parameterNode) if self._parameterNode else _("No parameter node.")
        self.ui.applyButton.enabled = not reason
        self.ui.applyButton.toolTip = reason or self.logic.applyDescription()

    # Jobs -----------------------------------------------------------------------------

    def setStatus(self, text: str) -> None:
        self.ui.statusLabel.text = text

    def requirementsReady(self) -> bool:
        """Offer to install the module's missing packages; after a decline, the status says which.

        No wait cursor: installing asks the user first.
        """
        with slicer.util.tryWithErrorDisplay(_("Cannot install the Python packages this module needs.")):
            if self.logic.ensureRequirements():
                return True
            self.setStatus(
                _("Nothing was run: these Python packages are needed first: {packages}.").format(
                    packages=", ".join(self.logic.missingRequirements())
                )
            )
            return False

    def runAction(self, action: Callable[[], str | None], errorMessage: str) -> None:
        """What a button does: refused while a job runs, only once the module's packages are there,
        errors shown. ``action`` returns the status text, or starts a job with :meth:`runJob`."""
        if self._job is not None:
            self.setStatus(_("A run is in progress: let it finish, or cancel it first."))
            return
        if not self.requirementsReady():
            return
        with slicer.util.tryWithErrorDisplay(errorMessage, waitCursor=True):
            status = action()
            if status:
                self.setStatus(status)

    def connectAction(self, button: Any, action: Callable[[], str | None], errorMessage: str) -> None:
        """Make a button of the module's own run ``action`` as :meth:`runAction` does."""
        button.connect("clicked(bool)", lambda: self.runAction(action, errorMessage))

    def connectJob(self, button: Any, start: Callable[[Any], Any], errorMessage: str) -> None:
        """Make a button of the module's own start a job of the logic (``start(parameterNode)``), as Apply does."""
        self.connectAction(button, lambda: self.startLogicJob(start), errorMessage)

    def startLogicJob(self, start: Callable[[Any], Any]) -> None:
        """Start a job of the logic (``start(parameterNode)`` returns it) and follow it as Apply's:
        the logic's ``finishJob`` builds its outputs, ``cancelledDescription`` says what Cancel kept."""
        self.runJob(
            start(self._parameterNode),
            lambda finished: self.logic.finishJob(finished, self._parameterNode),
            self.logic.cancelledDescription(),
        )

    def onApplyButton(self) -> None:
        if self._job is not None:
            self.cancelJob()
            return
        self.runAction(lambda: self.startLogicJob(self.logic.startJob), _("Cannot start."))

    def runJob(self, job: Any, onSucceeded: Callable[[Any], str], cancelledText: str | None = None) -> None:
        """Follow a started child job: progress, Cancel, then ``onSucceeded(job)`` (which returns the status text)."""
        if self._job is not None:
            job.close()
            raise RuntimeError("a run is in progress: let it finish, or cancel it first")
        self._job = job
        self._onJobSucceeded = onSucceeded
        self._cancelledText = cancelledText or _("Cancelled; the scene is unchanged.")
        self.ui.applyButton.text = _("Cancel")
        self.ui.progressBar.value = 0
        self.ui.progressBar.visible = True
        self.setStatus(_("Starting..."))
        self._checkCanApply()
        self._timer.start()

    def cancelJob(self) -> None:
        if self._job is not None:
            self._job.cancel()
            self.setStatus(_("Cancelling..."))

    def pollJob(self) -> None:
        """One timer tick: show the child's progress; when it has ended, report or build the outputs."""
        job = self._job
        if job is None:
            self._timer.stop()
            return
        event = job.poll()
        self.ui.progressBar.value = int(round(100 * event.fraction))
        if event.message and not job.finished:
            self.setStatus(event.message)
        if not job.finished:
            return
        from ImagInfoExtension.bridge.process import CANCELLED, FAILED

        self._timer.stop()
        self._job = None
        self.ui.applyButton.text = _("Apply")
        self.ui.progressBar.visible = False
        try:
            if job.state == CANCELLED:
                self.setStatus(self._cancelledText)
            elif job.state == FAILED:
                self.setStatus(_("Failed: {error}").format(error=job.error_message))
                slicer.util.errorDisplay(
                    _("{module} failed: {error}").format(module=self.moduleName, error=job.error_message),
                    detailedText=job.log,
                )
            else:
                with slicer.util.tryWithErrorDisplay(_("Could not load the results."), waitCursor=True):
                    self.setStatus(self._onJobSucceeded(job))
        finally:
            job.close()
            self._onJobSucceeded = None
            self._checkCanApply()


#
# Logic
#


class ImagInfoModuleLogic(ScriptedLoadableModuleLogic):
    """Parameter node, requirements, child jobs and output nodes, shared by every ImagInfo module.

    A module's logic sets :attr:`parameterNodeClass` and provides
    :meth:`applyBlocker`, :meth:`startJob` and :meth:`finishJob` (and, where it
    helps, :meth:`setDefaultParameters`). Console methods run the same jobs with
    :meth:`runJob`.
    """

    #: The module's ``@parameterNodeWrapper`` class.
    parameterNodeClass: Any = None

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self) -> Any:
        return self.parameterNodeClass(super().getParameterNode())

    @property
    def scene(self) -> Any:
        return slicer.mrmlScene

    def sceneNodes(self, className: str) -> list:
        """The scene's nodes of a class (subclasses included), in the scene's order."""
        collection = self.scene.GetNodesByClass(className)
        try:
            return [collection.GetItemAsObject(n) for n in range(collection.GetNumberOfItems())]
        finally:
            collection.UnRegister(None)

    def sceneVolumes(self) -> list:
        """The scene's scalar volumes that are images, not label maps."""
        return [v for v in self.sceneNodes("vtkMRMLScalarVolumeNode") if not v.IsA("vtkMRMLLabelMapVolumeNode")]

    def firstVolume(self) -> Any:
        """The volume to preselect as a module's input: the scene's first image (not a label map), or None."""
        return next(iter(self.sceneVolumes()), None)

    # What a module provides -------------------------------------------------------------

    def setDefaultParameters(self, parameterNode: Any) -> None:
        """Fill in sensible inputs when the module is entered (e.g. the first volume)."""

    def applyBlocker(self, parameterNode: Any) -> str:
        """Why Apply cannot run with these parameters (shown as its tooltip), or ``""`` when it can."""
        return ""

    def applyDescription(self) -> str:
        return _("Run in the background; click again to cancel.")

    def startJob(self, parameterNode: Any) -> Any:
        """Write the inputs and start the module's ``imaginfo`` command; returns the ChildJob."""
        raise NotImplementedError(f"{type(self).__name__} must start its job")

    def finishJob(self, job: Any, parameterNode: Any) -> str:
        """Build the output nodes from a finished job's result; returns the status text.

        Nodes the run was started for are in ``job.context`` (the parameter node may have
        changed while it ran)."""
        raise NotImplementedError(f"{type(self).__name__} must build its outputs")

    def cancelledDescription(self) -> str:
        return _("Cancelled; the scene is unchanged.")

    # Requirements ---------------------------------------------------------------------

    def requirements(self) -> list[str]:
        """This module's Python requirements (``bridge/python_requirements/<Module>.txt``)."""
        from ImagInfoExtension.bridge.requirements import module_requirements

        return module_requirements(self.moduleName)

    def missingRequirements(self) -> list[str]:
        from ImagInfoExtension.bridge.requirements import missing_requirements

        return missing_requirements(self.requirements())

    def ensureRequirements(self, confirm: Callable[[str], bool] | None = None) -> bool:
        """Offer to install what is missing; False when the user declined."""
        from ImagInfoExtension.bridge.requirements import ensure_requirements

        return ensure_requirements(self.requirements(), requester=self.moduleName, confirm=confirm)

    # Jobs -----------------------------------------------------------------------------

    def startChildJob(
        self,
        command: str,
        arguments: list[str],
        readResult: Callable[[], Any] | None = None,
        workDir: Path | None = None,
        outputDir: Path | None = None,
        removeWorkDir: bool = True,
        successCodes: tuple = (0,),
        context: dict | None = None,
    ) -> Any:
        """Start ``imaginfo <command>`` as a child process (see :class:`~ImagInfoExtension.bridge.process.ChildJob`).

        The work folder (by default a new temporary one) is removed when the job is closed.
        """
        from ImagInfoExtension.bridge.process import ChildJob

        return ChildJob(
            command,
            arguments,
            work_dir=workDir,
            read_result=readResult,
            output_dir=outputDir,
            remove_work_dir=workDir is None or removeWorkDir,
            success_codes=successCodes,
            context=context,
        )

    def runJob(self, job: Any, wait: bool = True) -> Any:
        """The console's way to run: ``wait=True`` blocks (the GUI keeps repainting) and
        returns the result, closing the job; ``wait=False`` returns the job itself
        (``poll()``, ``cancel()``, ``wait()``, ``result()``, ``close()``)."""
        if not wait:
            return job
        try:
            job.wait(idle=processEvents)
            return job.result()
        finally:
            job.close()

    def newWorkFolder(self) -> Path:
        """A fresh temporary folder for a job's inputs and outputs (the job removes it when closed)."""
        import tempfile

        return Path(tempfile.mkdtemp(prefix=f"imaginfo-{self.moduleName}-"))

    @contextlib.contextmanager
    def startingWorkFolder(self) -> Iterator[Path]:
        """A :meth:`newWorkFolder` for writing a job's inputs: removed again when starting the job fails
        (once started, the job owns it)."""
        import shutil

        folder = self.newWorkFolder()
        try:
            yield folder
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise

    # Outputs --------------------------------------------------------------------------

    def outputNodes(self, key: str = "") -> Any:
        """Output nodes of this module for ``key``: reused by role, rolled back on failure."""
        from ImagInfoExtension.bridge.scenes import OutputNodes

        return OutputNodes(self.scene, self.moduleName, key)

    def writeVolume(self, volumeNode: Any, path: Path) -> Any:
        """Save a volume node's voxels and geometry (LPS) for a child job; returns the image written,
        so that masks and designs can be put on its grid without converting the volume again."""
        from ImagInfoExtension.bridge.volumes import sitk_from_volume_node
        from ImagInfoExtension.io import write_image

        image = sitk_from_volume_node(volumeNode)
        write_image(image, path, compress=False)
        return image

    def showTableAndPlot(self, tableNode: Any, chartNode: Any) -> None:
        """Show a table and a chart in the plot-and-table layout (GUI only)."""
        app = compat.application()
        if app is None or not hasattr(app, "layoutManager") or app.layoutManager() is None:
            return
        app.layoutManager().setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpPlotTableView)
        selection = app.applicationLogic().GetSelectionNode()
        if tableNode is not None:
            selection.SetActiveTableID(tableNode.GetID())
            app.applicationLogic().PropagateTableSelection()
        if chartNode is not None:
            selection.SetActivePlotChartID(chartNode.GetID())
            app.applicationLogic().PropagatePlotChartSelection()


#
# Test
#


class ImagInfoModuleTest(ScriptedLoadableModuleTest):
    """Runs every ``test_*`` method of the module's test class, each on a cleared scene."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear(0)

    @property
    def scene(self) -> Any:
        return slicer.mrmlScene

    def runTest(self) -> None:
        for name in sorted(n for n in dir(self) if n.startswith("test_")):
            self.setUp()
            getattr(self, name)()
