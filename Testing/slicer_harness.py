"""The smallest stand-in for what slicer-core lacks, so modules run under pytest on real MRML.

slicer-core gives real MRML and ``slicer.util`` but not the scripted-module base
classes, the typed parameter-node wrapper, Slicer's translation helpers, the
application or Qt. This module supplies them:

- ``slicer.ScriptedLoadableModule``, ``slicer.parameterNodeWrapper`` (values and node
  references stored in a real vtkMRMLScriptedModuleNode, with Slicer's serialisation
  rules for bool, int, float, str and ``pathlib.Path``) and ``slicer.i18n``;
- with :func:`install_application`: ``slicer.app`` of a chosen version (with a
  ``bin/PythonSlicer`` that is this Python), a ``qt`` module with QTimer and QLabel,
  ``loadUI`` that builds stand-in widgets from a module's ``.ui`` file (wiring its
  ``<connections>``), the dialogs of ``slicer.util`` (recorded, answered by
  :data:`ANSWERS`), ``slicer.packaging`` from 5.12 on (``pip_ensure`` behaving like
  Slicer's: it raises RuntimeError when the user declines), and a ``SampleData``
  module that records registrations.

Widgets are stand-ins: they keep properties and signal connections, so the widget
base class's logic (apply-enabling, start/poll/cancel, scene observers) runs for
real, while painting does not exist.
"""

from __future__ import annotations

import os
import pathlib
import sys
import tempfile
import types
import typing
import xml.etree.ElementTree as ElementTree
from contextlib import contextmanager
from typing import Annotated, Any, get_args, get_origin, get_type_hints

#: Recorded calls of the stand-in dialogs and Slicer functions: list of (kind, text or arguments).
EVENTS: list[tuple[str, Any]] = []
#: How the stand-in dialogs answer (``confirm``: the answer of OK/Cancel questions).
ANSWERS: dict[str, Any] = {"confirm": False}


def _scripted_loadable_module(slicer: Any) -> types.ModuleType:
    module = types.ModuleType("slicer.ScriptedLoadableModule")

    def _module_file(instance: Any) -> str:
        return sys.modules[type(instance).__module__].__file__

    class ScriptedLoadableModule:
        def __init__(self, parent: Any = None) -> None:
            self.parent = parent
            self.moduleName = type(self).__name__

        def resourcePath(self, filename: str) -> str:
            return os.path.join(os.path.dirname(_module_file(self)), "Resources", filename)

    class ScriptedLoadableModuleWidget:
        def __init__(self, parent: Any = None) -> None:
            self.moduleName = type(self).__name__.removesuffix("Widget")
            self.parent = parent if parent is not None else ModulePanel()
            self.layout = self.parent.layout()

        def resourcePath(self, filename: str) -> str:
            return os.path.join(os.path.dirname(_module_file(self)), "Resources", filename)

        def setup(self) -> None:
            pass

        def cleanup(self) -> None:
            pass

    class ScriptedLoadableModuleLogic:
        """Parameter-node handling as in Slicer: one singleton node per module."""

        def __init__(self, parent: Any = None) -> None:
            self.moduleName = type(self).__name__.removesuffix("Logic")

        def getParameterNode(self) -> Any:
            scene = slicer.mrmlScene
            node = scene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
            if node is None:
                node = slicer.vtkMRMLScriptedModuleNode()
                node.SetSingletonTag(self.moduleName)
                node.SetName(self.moduleName)
                node.SetAttribute("ModuleName", self.moduleName)
                scene.AddNode(node)
            return node

    class ScriptedLoadableModuleTest:
        def setUp(self) -> None:
            slicer.mrmlScene.Clear(0)

        def delayDisplay(self, message: str, msec: int = 0) -> None:
            print(message)

    module.ScriptedLoadableModule = ScriptedLoadableModule
    module.ScriptedLoadableModuleWidget = ScriptedLoadableModuleWidget
    module.ScriptedLoadableModuleLogic = ScriptedLoadableModuleLogic
    module.ScriptedLoadableModuleTest = ScriptedLoadableModuleTest
    module.__all__ = [n for n in vars(module) if n.startswith("Scripted")]
    return module


def _parameter_node_wrapper(slicer: Any) -> types.ModuleType:
    module = types.ModuleType("slicer.parameterNodeWrapper")

    class WithinRange:
        def __init__(self, minimum: float, maximum: float) -> None:
            self.minimum, self.maximum = minimum, maximum

    class Default:
        def __init__(self, value: Any) -> None:
            self.value = value

    class Choice:
        def __init__(self, choices: typing.Sequence[Any]) -> None:
            self.choices = list(choices)

    def _base_type(hint: Any) -> tuple[Any, list[Any]]:
        metadata: list[Any] = []
        if get_origin(hint) is Annotated:
            hint, *metadata = get_args(hint)
        if get_origin(hint) in (typing.Union, types.UnionType):
            hint = next(a for a in get_args(hint) if a is not type(None))
        return hint, metadata

    def _is_node(kind: Any) -> bool:
        return isinstance(kind, type) and issubclass(kind, slicer.vtkMRMLNode)

    def _is_path(kind: Any) -> bool:
        return isinstance(kind, type) and issubclass(kind, pathlib.PurePath)

    def parameterNodeWrapper(cls: type) -> type:
        """Typed fields stored in a vtkMRMLScriptedModuleNode (values as parameters,
        MRML nodes as references), as Slicer's wrapper does."""
        hints = get_type_hints(cls, include_extras=True)
        fields = {name: _base_type(hint) for name, hint in hints.items()}

        def __init__(self: Any, parameterNode: Any) -> None:
            object.__setattr__(self, "parameterNode", parameterNode)
            object.__setattr__(self, "guiConnections", {})
            for name, (kind, metadata) in fields.items():
                if _is_node(kind) or parameterNode.GetParameter(name) != "":
                    continue
                default = next((m.value for m in metadata if isinstance(m, Default)), getattr(cls, name, None))
                if default is None:
                    # Slicer's serialisers' defaults: False, 0, 0.0, "" and Path() (that is, ".").
                    default = kind() if kind in (int, float, bool, str) or _is_path(kind) else None
                if default is not None:
                    setattr(self, name, default)

        def __getattr__(self: Any, name: str) -> Any:
            if name not in fields:
                raise AttributeError(name)
            kind, _ = fields[name]
            node = object.__getattribute__(self, "parameterNode")
            if _is_node(kind):
                return node.GetNodeReference(name)
            text = node.GetParameter(name)
            if kind is bool:
                return text == "true"
            if _is_path(kind):
                return kind(text)
            return kind(text) if kind in (int, float) else text

        def __setattr__(self: Any, name: str, value: Any) -> None:
            if name not in fields:
                raise AttributeError(f"{cls.__name__} has no parameter {name!r}")
            kind, metadata = fields[name]
            node = object.__getattribute__(self, "parameterNode")
            if _is_node(kind):
                node.SetNodeReferenceID(name, value.GetID() if value is not None else None)
                return
            if _is_path(kind) and not isinstance(value, pathlib.PurePath):
                raise TypeError(f"{name} is a {kind.__name__}; got {type(value).__name__} {value!r}")
            for rule in metadata:
                if isinstance(rule, WithinRange) and not rule.minimum <= value <= rule.maximum:
                    raise ValueError(f"{name}={value} is outside [{rule.minimum}, {rule.maximum}]")
                if isinstance(rule, Choice) and value not in rule.choices:
                    raise ValueError(f"{name}={value!r} is not one of {rule.choices}")
            node.SetParameter(name, ("true" if value else "false") if kind is bool else str(value))

        def connectGui(self: Any, ui: Any) -> int:
            """Parameter -> widget, as Slicer's GuiConnectors write: node selectors change their current
            node (emitting currentNodeChanged), other widgets take the value."""
            node = object.__getattribute__(self, "parameterNode")
            widgets = {
                w.properties["SlicerParameterName"]: w
                for w in vars(ui).values()
                if isinstance(w, Widget) and "SlicerParameterName" in w.properties
            }

            def write(caller: Any = None, event: Any = None) -> None:
                for name, widget in widgets.items():
                    value = getattr(self, name)
                    if widget.className == "qMRMLNodeComboBox":
                        if widget.properties.get("currentNode") is not value:
                            widget.properties["currentNode"] = value
                            widget.emit("currentNodeChanged(vtkMRMLNode*)", value)
                    else:
                        widget.properties["value"] = value

            connections = object.__getattribute__(self, "guiConnections")
            tag = max(connections, default=0) + 1
            connections[tag] = node.AddObserver("ModifiedEvent", write)
            write()
            EVENTS.append(("connectGui", tag))
            return tag

        def disconnectGui(self: Any, tag: int) -> None:
            observer = object.__getattribute__(self, "guiConnections").pop(tag)
            object.__getattribute__(self, "parameterNode").RemoveObserver(observer)
            EVENTS.append(("disconnectGui", tag))

        def AddObserver(self: Any, event: Any, callback: Any, priority: float = 0.0) -> int:
            return object.__getattribute__(self, "parameterNode").AddObserver(event, callback, priority)

        def RemoveObserver(self: Any, tag: int) -> None:
            object.__getattribute__(self, "parameterNode").RemoveObserver(tag)

        namespace = {
            "__init__": __init__,
            "__getattr__": __getattr__,
            "__setattr__": __setattr__,
            "connectGui": connectGui,
            "disconnectGui": disconnectGui,
            "AddObserver": AddObserver,
            "RemoveObserver": RemoveObserver,
            "allParameters": dict(fields),
            "__doc__": cls.__doc__,
        }
        return type(cls.__name__, (), namespace)

    module.parameterNodeWrapper = parameterNodeWrapper
    module.WithinRange = WithinRange
    module.Default = Default
    module.Choice = Choice
    return module


def _i18n() -> types.ModuleType:
    module = types.ModuleType("slicer.i18n")
    module.tr = lambda text: text
    module.translate = lambda context, text: text
    return module


def install() -> Any:
    """Register the stand-ins and a fresh ``slicer.mrmlScene``; returns ``slicer``."""
    import slicer

    for name, module in (
        ("ScriptedLoadableModule", _scripted_loadable_module(slicer)),
        ("parameterNodeWrapper", _parameter_node_wrapper(slicer)),
        ("i18n", _i18n()),
    ):
        sys.modules[f"slicer.{name}"] = module
        setattr(slicer, name, module)
    slicer.mrmlScene = slicer.vtkMRMLScene()
    return slicer


# ----------------------------------------------------------------------------------------
# The application, Qt and the widgets of a .ui file


class Signals:
    """PythonQt-style ``connect("signal(args)", slot)`` and ``emit``."""

    def __init__(self) -> None:
        self._slots: dict[str, list[Any]] = {}

    def connect(self, signal: str, slot: Any) -> bool:
        self._slots.setdefault(signal, []).append(slot)
        return True

    def disconnect(self, signal: str, slot: Any) -> bool:
        self._slots.get(signal, []).remove(slot)
        return True

    def emit(self, signal: str, *arguments: Any) -> None:
        # Like PythonQt, a slot that takes fewer arguments than the signal carries gets the first ones.
        for slot in list(self._slots.get(signal, [])):
            slot(*arguments[: _positional_count(slot, len(arguments))])


def _positional_count(slot: Any, available: int) -> int:
    import inspect

    try:
        parameters = inspect.signature(slot).parameters.values()
    except (TypeError, ValueError):
        return available
    if any(p.kind is p.VAR_POSITIONAL for p in parameters):
        return available
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return min(available, len(positional))


class Widget(Signals):
    """A stand-in Qt widget: properties by attribute or setter, signals, children by name."""

    _DEFAULTS = {"enabled": True, "visible": True, "text": "", "toolTip": "", "value": 0, "checked": False}

    def __init__(self, class_name: str, name: str = "", properties: dict[str, Any] | None = None) -> None:
        super().__init__()
        object.__setattr__(self, "className", class_name)
        object.__setattr__(self, "objectName", name)
        object.__setattr__(self, "properties", {**self._DEFAULTS, **(properties or {})})
        object.__setattr__(self, "children", [])
        object.__setattr__(self, "mrmlScene", None)
        object.__setattr__(self, "tableNode", None)

    def __getattr__(self, name: str) -> Any:
        properties = object.__getattribute__(self, "properties")
        if name in properties:
            return properties[name]
        if name.startswith("set") and len(name) > 3:
            key = name[3].lower() + name[4:]
            return lambda value: self.__setattr__(key, value)
        raise AttributeError(f"{self.className} {self.objectName!r} has no property {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):
            object.__setattr__(self, name, value)
        else:
            self.properties[name] = value

    def setMRMLScene(self, scene: Any) -> None:
        object.__setattr__(self, "mrmlScene", scene)
        self.emit("mrmlSceneChanged(vtkMRMLScene*)", scene)

    def setMRMLTableNode(self, node: Any) -> None:
        object.__setattr__(self, "tableNode", node)

    def addWidget(self, widget: Any) -> None:
        self.children.append(widget)

    def addStretch(self, factor: int = 0) -> None:
        pass

    def layout(self) -> Widget:
        return self

    def descendants(self) -> list[Widget]:
        found = []
        for child in self.children:
            found += [child, *child.descendants()]
        return found

    def click(self) -> None:
        """What a user's click does: nothing when disabled, else ``clicked(bool)``."""
        if self.enabled:
            self.emit("clicked(bool)", False)


class ModulePanel(Widget):
    """The module panel ScriptedLoadableModuleWidget lays its widgets into."""

    def __init__(self) -> None:
        super().__init__("qSlicerScriptedLoadableModuleWidget", "panel", {"isEntered": True})


class QTimer(Signals):
    """A timer the test drives: :func:`tick` fires every active timer once."""

    active: list[QTimer] = []

    def __init__(self) -> None:
        super().__init__()
        self.interval = 0

    def setInterval(self, milliseconds: int) -> None:
        self.interval = milliseconds

    def start(self, milliseconds: int | None = None) -> None:
        if self not in QTimer.active:
            QTimer.active.append(self)

    def stop(self) -> None:
        if self in QTimer.active:
            QTimer.active.remove(self)

    def isActive(self) -> bool:
        return self in QTimer.active


def tick() -> None:
    """One event-loop turn: every active timer times out once."""
    for timer in list(QTimer.active):
        timer.emit("timeout()")


def _property_value(element: ElementTree.Element) -> Any:
    value = element[0]
    if value.tag == "bool":
        return value.text == "true"
    if value.tag == "number":
        return int(value.text)
    if value.tag == "double":
        return float(value.text)
    if value.tag == "stringlist":
        return [s.text for s in value]
    return value.text if value.tag in ("string", "enum", "set") else None


def load_ui(path: str) -> Widget:
    """Stand-in widgets for a .ui file, with its ``<connections>`` wired."""
    if not os.path.isfile(path):
        raise RuntimeError(f"Could not load UI file: file not found {path}")
    root = ElementTree.parse(path).getroot()

    def build(element: ElementTree.Element) -> Widget:
        properties = {p.get("name"): _property_value(p) for p in element.findall("property")}
        widget = Widget(element.get("class"), element.get("name"), properties)
        for child in element.iter("widget"):
            if child is element:
                continue
            # Direct widget children sit under <layout><item> or directly under the widget.
            parent = _parent_widget(element, child)
            if parent is element:
                widget.children.append(build(child))
        return widget

    top = root.find("widget")
    ui = build(top)
    named = {w.objectName: w for w in [ui, *ui.descendants()]}
    connections = root.find("connections")
    for connection in connections if connections is not None else []:
        sender = named[connection.find("sender").text]
        receiver = named[connection.find("receiver").text]
        slot = connection.find("slot").text.split("(")[0]
        sender.connect(connection.find("signal").text, getattr(receiver, slot))
    return ui


def _parent_widget(top: ElementTree.Element, target: ElementTree.Element) -> ElementTree.Element | None:
    """The nearest <widget> ancestor of ``target`` within ``top``."""
    parents = {child: parent for parent in top.iter() for child in parent}
    node = parents.get(target)
    while node is not None and node.tag != "widget":
        node = parents.get(node)
    return node


class Application(Signals):
    """``slicer.app`` of a chosen Slicer version, with a ``bin/PythonSlicer`` launcher of this Python.

    Like Slicer's launcher, ``PythonSlicer`` here is a parent process that runs the real
    Python as its child, so killing only the launcher's PID would leave Python running.
    """

    def __init__(self, version: tuple[int, int]) -> None:
        super().__init__()
        self.majorVersion, self.minorVersion = version
        self.slicerHome = tempfile.mkdtemp(prefix="slicer-home-")
        os.makedirs(os.path.join(self.slicerHome, "bin"))
        launcher = os.path.join(self.slicerHome, "bin", "PythonSlicer")
        with open(launcher, "w") as handle:
            handle.write(f'#!/bin/sh\n"{sys.executable}" "$@"\nexit $?\n')
        os.chmod(launcher, 0o755)
        self.testing = False

    def testingEnabled(self) -> bool:
        return self.testing

    def processEvents(self) -> None:
        pass

    def setOverrideCursor(self, cursor: Any) -> None:
        pass

    def restoreOverrideCursor(self) -> None:
        pass

    def layoutManager(self) -> None:
        return None

    def startupEnvironment(self) -> Any:
        environment = dict(os.environ)

        class Environment:
            def keys(self) -> list[str]:
                return list(environment)

            def value(self, key: str) -> str:
                return environment[key]

        return Environment()


def _qt_module() -> types.ModuleType:
    module = types.ModuleType("qt")
    module.QTimer = QTimer
    module.QLabel = lambda text="": Widget("QLabel", "", {"text": text})
    module.Qt = types.SimpleNamespace(WaitCursor=3)
    return module


def _packaging_module() -> types.ModuleType:
    """Slicer 5.12's ``slicer.packaging.pip_ensure``: asks, raises RuntimeError when declined, installs."""
    module = types.ModuleType("slicer.packaging")

    def pip_ensure(requirements: Any, requester: str | None = None, **options: Any) -> None:
        EVENTS.append(("pip_ensure", [str(r) for r in requirements]))
        if not ANSWERS["confirm"]:
            raise RuntimeError("User declined package installation")
        EVENTS.append(("pip_install", [str(r) for r in requirements]))

    module.pip_ensure = pip_ensure
    return module


def _sample_data_module() -> types.ModuleType:
    module = types.ModuleType("SampleData")

    class SampleDataLogic:
        @staticmethod
        def registerCustomSampleDataSource(**arguments: Any) -> None:
            EVENTS.append(("registerCustomSampleDataSource", arguments))

    module.SampleDataLogic = SampleDataLogic
    return module


@contextmanager
def application(version: tuple[int, int] = (5, 12)):
    """Install ``slicer.app``, ``qt``, the dialogs, ``slicer.packaging`` (5.12+) and ``SampleData``; undo after."""
    slicer = install()
    import slicer.util as util

    saved_util = {name: getattr(util, name) for name in _UTIL_STANDINS}
    saved_modules = {name: sys.modules.get(name) for name in ("qt", "SampleData", "slicer.packaging")}
    EVENTS.clear()
    ANSWERS["confirm"] = False
    QTimer.active.clear()
    app = Application(version)
    slicer.app = app
    sys.modules["qt"] = _qt_module()
    sys.modules["SampleData"] = _sample_data_module()
    if version >= (5, 12):
        sys.modules["slicer.packaging"] = slicer.packaging = _packaging_module()
    for name, standin in _UTIL_STANDINS.items():
        setattr(util, name, standin)
    try:
        yield app
    finally:
        for name, function in saved_util.items():
            setattr(util, name, function)
        for name, module in saved_modules.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
        for attribute in ("app", "packaging"):
            if hasattr(slicer, attribute):
                delattr(slicer, attribute)
        QTimer.active.clear()


@contextmanager
def _try_with_error_display(message: str | None = None, show: bool = True, waitCursor: bool = False):
    try:
        yield
    except Exception as error:
        EVENTS.append(("errorDisplay", f"{message}\n\n{error}" if message else str(error)))
        raise


def _record(kind: str):
    def display(text: str, *arguments: Any, **options: Any) -> None:
        EVENTS.append((kind, text))

    return display


def _confirm(text: str, *arguments: Any, **options: Any) -> bool:
    EVENTS.append(("confirmOkCancelDisplay", text))
    return bool(ANSWERS["confirm"])


def _child_widget_variables(widget: Widget) -> types.SimpleNamespace:
    return types.SimpleNamespace(**{w.objectName: w for w in widget.descendants() if w.objectName})


_UTIL_STANDINS = {
    "loadUI": load_ui,
    "childWidgetVariables": _child_widget_variables,
    "tryWithErrorDisplay": _try_with_error_display,
    "errorDisplay": _record("errorDisplay"),
    "infoDisplay": _record("infoDisplay"),
    "warningDisplay": _record("warningDisplay"),
    "confirmOkCancelDisplay": _confirm,
    "pip_install": lambda requirements: EVENTS.append(("pip_install", list(requirements))),
}


class ModuleParent(types.SimpleNamespace):
    """What Slicer hands a scripted module's class: the module's description fields and its path."""

    def __init__(self, path: str) -> None:
        super().__init__(
            path=path, title="", categories=[], dependencies=[], contributors=[], helpText="", acknowledgementText=""
        )
